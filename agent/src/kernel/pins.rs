//! Programs and counters that outlive the agent (`--bpffs-dir`): their maps and cgroup links are
//! pinned under `<bpffs-dir>/cgroup-<inode of the cgroup root>/`, stay attached and counting when
//! the agent exits, and the next agent on the same cgroup root takes them over.
//!
//! Layout of one cgroup root's directory:
//!
//! ```text
//! FLOWS LATENCY STATS CONNECTIONS PENDING ...  the programs' maps (reused by name at load)
//! CHECKPOINT                                CountKey -> the value the last agent booked
//! META                                      [layout version, build, checkpoint CLOCK_MONOTONIC ns]
//! link-podmeter_ingress, link-podmeter_egress, link-podmeter_sock_ops   the cgroup BPF links
//! ```
//!
//! A takeover keeps the pinned links when they run the same build, and otherwise swaps the
//! program inside each link with `BPF_LINK_UPDATE` (atomic: every packet runs exactly one of the
//! two). Pins of another layout version are detached and replaced, never read.

use std::{
    collections::HashMap as StdHashMap,
    ffi::CString,
    fs::File,
    io,
    os::{
        fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd},
        unix::{ffi::OsStrExt as _, fs::MetadataExt as _},
    },
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{Array, HashMap, Map, MapData},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SockOps, links::FdLink},
};
use podmeter_common::{CountKey, names};
use tracing::{info, warn};

use super::{
    counters::FlowKey,
    programs::{MapSizes, OBJECT, Probes, loader, program_error},
};
use crate::Error;

/// Version of what is pinned: the maps' key and value layouts, the META slots and the checkpoint's
/// meaning. Bump it with any change to them; pins of another version are replaced, not read.
pub const LAYOUT_VERSION: u64 = 4;

/// Maps of the eBPF object pinned by name: the programs and the agent share them.
const PINNED_MAPS: [&str; 8] = [
    names::FLOWS,
    names::LATENCY,
    names::STATS,
    names::CONNECTIONS,
    names::PENDING,
    names::NODE_CGROUPS,
    names::NODE_CLIENTS,
    // The kept programs of a takeover write their events here: the next agent reads them.
    names::EVENTS,
];
const CHECKPOINT: &str = "CHECKPOINT";
/// `BPF_F_NO_PREALLOC` (linux/bpf.h): a hash map's elements allocated as they are inserted.
const BPF_F_NO_PREALLOC: u32 = 1;
const META: &str = "META";
const LINK_PREFIX: &str = "link-";

/// Slots of the META array.
mod meta {
    pub const LAYOUT: u32 = 0;
    /// A hash of the embedded eBPF object: equal means the pinned programs are this build.
    pub const BUILD: u32 = 1;
    /// CLOCK_MONOTONIC ns of the read whose values CHECKPOINT holds.
    pub const CHECKPOINT_NS: u32 = 2;
    pub const SLOTS: u32 = 4;
}

/// bpffs' `f_type` (linux/magic.h).
const BPF_FS_MAGIC: u64 = 0xcafe_4a11;

#[derive(Debug, thiserror::Error)]
pub enum PinsError {
    #[error(
        "{path} is not on a BPF filesystem: mount one (`mount -t bpf bpf /sys/fs/bpf`) or drop --bpffs-dir"
    )]
    NotBpffs { path: PathBuf },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("pinned map {path}: {source}")]
    Map {
        path: PathBuf,
        source: aya::maps::MapError,
    },
    #[error("pinning {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("replacing the program of link {path} (BPF_LINK_UPDATE): {source}")]
    LinkUpdate { path: PathBuf, source: io::Error },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> PinsError + '_ {
    move |source| PinsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// The directory of `cgroup`'s pins under `bpffs_dir`: named by the cgroup's inode (its cgroup
/// id), so agents on different roots never share one.
pub fn dir_of(bpffs_dir: &Path, cgroup: &Path) -> Result<PathBuf, Error> {
    let ino = std::fs::metadata(cgroup)
        .map_err(|source| Error::OpenCgroup {
            path: cgroup.to_owned(),
            source,
        })?
        .ino();
    Ok(bpffs_dir.join(format!("{DIR_PREFIX}{ino}")))
}

/// The prefix of the directories podmeter pins under `--bpffs-dir`, one per cgroup root.
const DIR_PREFIX: &str = "cgroup-";

/// What the previous agent had booked, for the next one to continue from.
pub struct History {
    /// Each counter's value at the previous agent's last read.
    pub counts: Vec<(CountKey, u64)>,
    /// When that read was taken.
    pub since: Instant,
}

/// The pinned checkpoint: written at every read so that the next agent books exactly what this
/// one did not.
pub struct Checkpoint {
    booked: HashMap<MapData, CountKey, u64>,
    meta: Array<MapData, u64>,
    /// What `booked` holds, so a read writes only the counters that changed.
    written: StdHashMap<CountKey, u64>,
}

impl Checkpoint {
    /// Records the values of a read taken at CLOCK_MONOTONIC `read_ns` as booked.
    pub fn record(&mut self, current: &[(CountKey, u64)], read_ns: u64) -> Result<(), Error> {
        for (key, value) in current {
            if self.written.get(key) != Some(value) {
                // One key that cannot be written must not stop the others, nor the time.
                match self.booked.insert(key, value, 0) {
                    Ok(()) => {
                        self.written.insert(*key, *value);
                    }
                    Err(error) => warn!(%error, "a counter's checkpoint could not be written"),
                }
            }
        }
        self.meta
            .set(meta::CHECKPOINT_NS, &read_ns, 0)
            .map_err(|source| Error::Map {
                map: META_NAME,
                source,
            })
    }

    /// Forgets the counters of a flow deleted from the kernel map.
    pub fn forget_flow(&mut self, flow: &FlowKey) {
        let keys: Vec<CountKey> = self
            .written
            .keys()
            .filter(|key| FlowKey::of(key) == *flow)
            .copied()
            .collect();
        for key in keys {
            self.written.remove(&key);
            let _ = self.booked.remove(&key);
        }
    }
}

const META_NAME: &str = "META";

/// The programs attached through pinned links, the checkpoint and, on a takeover, what the
/// previous agent booked.
pub struct PinnedProbes {
    pub probes: Probes,
    pub checkpoint: Checkpoint,
    pub history: Option<History>,
}

/// Loads the programs with their maps pinned under `dir` (reusing the pinned ones) and attaches
/// them to `cgroup` through pinned links, taking over a previous agent's pins.
pub fn attach(cgroup: &Path, sizes: &MapSizes, dir: &Path) -> Result<PinnedProbes, Error> {
    let parent = dir.parent().unwrap_or(dir);
    // `--bpffs-dir` may be made below a bpffs mount; anywhere else (e.g. a node without
    // /sys/fs/bpf mounted) say so rather than fail on the mkdir.
    if !parent.exists()
        && let Some(mount) = parent.parent()
    {
        check_bpffs(mount)?;
    }
    std::fs::create_dir_all(parent).map_err(io_at(parent))?;
    check_bpffs(parent)?;
    let mut previous = previous_checkpoint_ns(dir)?;
    std::fs::create_dir_all(dir).map_err(io_at(dir))?;

    let load_object = || {
        let mut loader = loader(sizes);
        for name in PINNED_MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
        loader.load(OBJECT)
    };
    let mut ebpf = match load_object() {
        Ok(ebpf) => ebpf,
        // Pinned maps of other sizes (`--ring-mib` or the table sizes changed) cannot be
        // reused: replace them rather than fail at every restart. The gap's counts are lost.
        Err(error) if previous.is_some() => {
            warn!(
                pins = %dir.display(),
                %error,
                "the pinned maps do not fit this agent (were --ring-mib or map sizes changed?): \
                 detaching and replacing them; the counts since the last agent's read are lost"
            );
            for removed in remove_dir(dir)? {
                info!(removed = %removed.display(), "unpinned");
            }
            previous = None;
            std::fs::create_dir_all(dir).map_err(io_at(dir))?;
            load_object()?
        }
        Err(error) => return Err(error.into()),
    };

    let (mut checkpoint, old_build, history) = open_checkpoint(dir, sizes, previous)?;
    // Events on or off is fixed in the program at load: a kept program must have the same.
    let build = build_hash().wrapping_add(u64::from(sizes.events));
    let cgroup_dir = File::open(cgroup).map_err(|source| Error::OpenCgroup {
        path: cgroup.to_owned(),
        source,
    })?;
    let mut kept = 0;
    let mut replaced = 0;
    for program in [names::INGRESS, names::EGRESS, names::SOCK_OPS] {
        let link = dir.join(format!("{LINK_PREFIX}{program}"));
        if link.exists() && history.is_some() {
            if old_build == Some(build) {
                kept += 1;
            } else {
                load(&mut ebpf, program)?;
                let prog_fd = program_fd(&ebpf, program)?;
                update_link(&link, prog_fd)?;
                replaced += 1;
            }
        } else {
            let _ = std::fs::remove_file(&link);
            load(&mut ebpf, program)?;
            attach_pinned(&mut ebpf, program, &cgroup_dir, &link)?;
        }
    }
    let meta_map = &mut checkpoint.meta;
    for (slot, value) in [(meta::LAYOUT, LAYOUT_VERSION), (meta::BUILD, build)] {
        meta_map.set(slot, &value, 0).map_err(|source| Error::Map {
            map: META_NAME,
            source,
        })?;
    }
    match &history {
        Some(h) => info!(
            pins = %dir.display(),
            kept,
            replaced,
            counters = h.counts.len(),
            gap_ms = h.since.elapsed().as_millis() as u64,
            "took over the pinned programs and counters{}",
            if replaced > 0 { " (programs of another build replaced in their links with BPF_LINK_UPDATE)" } else { "" }
        ),
        None => {
            info!(pins = %dir.display(), "pinned the programs and counters: they outlive this agent")
        }
    }

    Ok(PinnedProbes {
        probes: Probes::take_maps(ebpf)?,
        checkpoint,
        history,
    })
}

/// The previous agent's checkpoint time if `dir` holds compatible pins. Pins without META (an
/// agent died while pinning) or of another layout are detached and removed.
fn previous_checkpoint_ns(dir: &Path) -> Result<Option<u64>, Error> {
    if !dir.exists() {
        return Ok(None);
    }
    let meta = MapData::from_pin(dir.join(META))
        .ok()
        .and_then(|data| Array::<MapData, u64>::try_from(Map::Array(data)).ok());
    let layout = meta.as_ref().and_then(|m| m.get(&meta::LAYOUT, 0).ok());
    if layout == Some(LAYOUT_VERSION) {
        let ns = meta.and_then(|m| m.get(&meta::CHECKPOINT_NS, 0).ok());
        return Ok(Some(ns.unwrap_or(0)));
    }
    warn!(
        pins = %dir.display(),
        found = ?layout,
        expected = LAYOUT_VERSION,
        "pinned podmeter programs of another layout (or incomplete pins): detaching and replacing them; \
         their counts are not read"
    );
    for removed in remove_dir(dir)? {
        info!(removed = %removed.display(), "unpinned");
    }
    Ok(None)
}

/// Opens (or creates and pins) CHECKPOINT and META; on a takeover reads the previous agent's
/// checkpoint and build.
fn open_checkpoint(
    dir: &Path,
    sizes: &MapSizes,
    previous_ns: Option<u64>,
) -> Result<(Checkpoint, Option<u64>, Option<History>), Error> {
    let booked_path = dir.join(CHECKPOINT);
    let meta_path = dir.join(META);
    let booked: HashMap<MapData, CountKey, u64> =
        open_or_create(&booked_path, Map::HashMap, || {
            // Allocated as counters appear (BPF_F_NO_PREALLOC): room for every counter that counted.
            HashMap::<MapData, CountKey, u64>::create(sizes.counters, BPF_F_NO_PREALLOC)?
                .pin(&booked_path)?;
            Ok(())
        })?;
    let meta: Array<MapData, u64> = open_or_create(&meta_path, Map::Array, || {
        Array::<MapData, u64>::create(meta::SLOTS, 0)?.pin(&meta_path)?;
        Ok(())
    })?;
    let mut written = StdHashMap::new();
    let mut old_build = None;
    let history = match previous_ns {
        Some(ns) => {
            for entry in booked.iter() {
                let (key, value) = entry.map_err(|source| Error::Map {
                    map: "CHECKPOINT",
                    source,
                })?;
                written.insert(key, value);
            }
            old_build = meta.get(&meta::BUILD, 0).ok();
            let ago = monotonic_ns().saturating_sub(ns);
            let now = Instant::now();
            Some(History {
                counts: written.iter().map(|(k, v)| (*k, *v)).collect(),
                since: now.checked_sub(Duration::from_nanos(ago)).unwrap_or(now),
            })
        }
        None => None,
    };
    let mut checkpoint = Checkpoint {
        booked,
        meta,
        written,
    };
    if history.is_none() {
        checkpoint
            .meta
            .set(meta::CHECKPOINT_NS, &monotonic_ns(), 0)
            .map_err(|source| Error::Map {
                map: META_NAME,
                source,
            })?;
    }
    Ok((checkpoint, old_build, history))
}

/// Opens the map pinned at `path`, creating and pinning it first with `create` when missing.
fn open_or_create<T>(
    path: &Path,
    wrap: fn(MapData) -> Map,
    create: impl FnOnce() -> Result<(), CreateError>,
) -> Result<T, Error>
where
    T: TryFrom<Map, Error = aya::maps::MapError>,
{
    if !path.exists() {
        create().map_err(|e| match e {
            CreateError::Map(source) => PinsError::Map {
                path: path.to_owned(),
                source,
            },
            CreateError::Pin(source) => PinsError::Pin {
                path: path.to_owned(),
                source,
            },
        })?;
    }
    let map_error = |source| PinsError::Map {
        path: path.to_owned(),
        source,
    };
    let data = MapData::from_pin(path).map_err(map_error)?;
    Ok(T::try_from(wrap(data)).map_err(map_error)?)
}

enum CreateError {
    Map(aya::maps::MapError),
    Pin(aya::pin::PinError),
}

impl From<aya::maps::MapError> for CreateError {
    fn from(e: aya::maps::MapError) -> Self {
        Self::Map(e)
    }
}

impl From<aya::pin::PinError> for CreateError {
    fn from(e: aya::pin::PinError) -> Self {
        Self::Pin(e)
    }
}

fn load(ebpf: &mut Ebpf, program: &'static str) -> Result<(), Error> {
    let prog = ebpf
        .program_mut(program)
        .ok_or(Error::MissingProgram(program))?;
    let err = |source| program_error(program, source);
    if program == names::SOCK_OPS {
        let sock_ops: &mut SockOps = prog.try_into().map_err(err)?;
        sock_ops.load().map_err(err)
    } else {
        let skb: &mut CgroupSkb = prog.try_into().map_err(err)?;
        skb.load().map_err(err)
    }
}

fn program_fd<'a>(ebpf: &'a Ebpf, program: &'static str) -> Result<BorrowedFd<'a>, Error> {
    let prog = ebpf
        .program(program)
        .ok_or(Error::MissingProgram(program))?;
    let fd = prog.fd().map_err(|source| program_error(program, source))?;
    Ok(fd.as_fd())
}

/// Attaches a loaded `program` to `cgroup` with a BPF link and pins the link at `link`.
fn attach_pinned(
    ebpf: &mut Ebpf,
    program: &'static str,
    cgroup: &File,
    link: &Path,
) -> Result<(), Error> {
    let prog = ebpf
        .program_mut(program)
        .ok_or(Error::MissingProgram(program))?;
    let err = |source| program_error(program, source);
    let fd_link: FdLink = if program == names::SOCK_OPS {
        let sock_ops: &mut SockOps = prog.try_into().map_err(err)?;
        let id = sock_ops
            .attach(cgroup, CgroupAttachMode::Single)
            .map_err(err)?;
        sock_ops
            .take_link(id)
            .map_err(err)?
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| err(e.into()))?
    } else {
        let skb: &mut CgroupSkb = prog.try_into().map_err(err)?;
        let attach_type = if program == names::INGRESS {
            CgroupSkbAttachType::Ingress
        } else {
            CgroupSkbAttachType::Egress
        };
        let id = skb
            .attach(cgroup, attach_type, CgroupAttachMode::Single)
            .map_err(err)?;
        skb.take_link(id)
            .map_err(err)?
            .try_into()
            .map_err(|e: aya::programs::links::LinkError| err(e.into()))?
    };
    // Dropping the pinned link closes this process's fd; the pin keeps it attached.
    fd_link.pin(link).map_err(|source| PinsError::Pin {
        path: link.to_owned(),
        source,
    })?;
    Ok(())
}

/// Replaces the program inside the link pinned at `link` with `prog` (BPF_LINK_UPDATE): the
/// kernel swaps them atomically, so no packet runs neither or both.
fn update_link(link: &Path, prog: BorrowedFd<'_>) -> Result<(), Error> {
    let fail = |source| PinsError::LinkUpdate {
        path: link.to_owned(),
        source,
    };
    let link_fd = obj_get(link).map_err(fail)?;
    let mut attr = LinkUpdateAttr {
        link_fd: raw_u32(link_fd.as_fd()),
        new_prog_fd: raw_u32(prog),
        flags: 0,
        old_prog_fd: 0,
    };
    sys_bpf(
        BPF_LINK_UPDATE,
        (&raw mut attr).cast(),
        size_of::<LinkUpdateAttr>(),
    )
    .map_err(fail)?;
    Ok(())
}

const BPF_OBJ_GET: libc::c_long = 7;
const BPF_LINK_UPDATE: libc::c_long = 29;

/// `union bpf_attr`'s `link_update` member.
#[repr(C)]
struct LinkUpdateAttr {
    link_fd: u32,
    new_prog_fd: u32,
    flags: u32,
    old_prog_fd: u32,
}

/// `union bpf_attr`'s `BPF_OBJ_*` member.
#[repr(C)]
struct ObjAttr {
    pathname: u64,
    bpf_fd: u32,
    file_flags: u32,
    path_fd: i32,
    _pad: u32,
}

fn raw_u32(fd: BorrowedFd<'_>) -> u32 {
    // File descriptors are never negative.
    fd.as_raw_fd().unsigned_abs()
}

fn sys_bpf(cmd: libc::c_long, attr: *mut libc::c_void, size: usize) -> io::Result<libc::c_long> {
    // SAFETY: `attr` points to a live, initialised `union bpf_attr` member of `size` bytes; the
    // kernel reads at most `size` bytes and treats the rest of the union as zero.
    let ret = unsafe { libc::syscall(libc::SYS_bpf, cmd, attr, size) };
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Opens the BPF object pinned at `path` (BPF_OBJ_GET).
fn obj_get(path: &Path) -> io::Result<OwnedFd> {
    let name = CString::new(path.as_os_str().as_bytes()).map_err(io::Error::other)?;
    let mut attr = ObjAttr {
        pathname: name.as_ptr() as u64,
        bpf_fd: 0,
        file_flags: 0,
        path_fd: 0,
        _pad: 0,
    };
    let fd = sys_bpf(BPF_OBJ_GET, (&raw mut attr).cast(), size_of::<ObjAttr>())?;
    let fd = i32::try_from(fd).map_err(io::Error::other)?;
    // SAFETY: BPF_OBJ_GET returned a new file descriptor that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check_bpffs(path: &Path) -> Result<(), Error> {
    let magic = super::preflight::filesystem_magic(path).map_err(io_at(path))?;
    if magic != BPF_FS_MAGIC {
        return Err(PinsError::NotBpffs {
            path: path.to_owned(),
        }
        .into());
    }
    Ok(())
}

/// CLOCK_MONOTONIC in ns: the clock of `Instant` and of `bpf_ktime_get_ns`, shared by every
/// process of the system, so a checkpoint time means the same to the next agent.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is writable; CLOCK_MONOTONIC always exists.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &raw mut ts) };
    u64::try_from(ts.tv_sec).unwrap_or(0) * 1_000_000_000 + u64::try_from(ts.tv_nsec).unwrap_or(0)
}

/// FNV-1a of the embedded eBPF object: tells whether pinned programs are this build.
fn build_hash() -> u64 {
    OBJECT.iter().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(*b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// Detaches and unpins everything under `dir` (links first, so the programs stop before their
/// maps go) and removes it; returns what was removed.
pub fn remove_dir(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io_at(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .collect();
    entries.sort_by_key(|p| {
        !p.file_name()
            .is_some_and(|n| n.as_bytes().starts_with(LINK_PREFIX.as_bytes()))
    });
    let mut removed = Vec::new();
    for path in entries {
        std::fs::remove_file(&path).map_err(io_at(&path))?;
        removed.push(path);
    }
    std::fs::remove_dir(dir).map_err(io_at(dir))?;
    removed.push(dir.to_owned());
    Ok(removed)
}

/// `podmeter agent-uninstall`: detaches and unpins the programs and counters of every cgroup root
/// under `bpffs_dir` (the `cgroup-*` directories podmeter made; anything else there is left
/// alone), then removes `bpffs_dir` if that left it empty. Returns what was removed.
pub fn uninstall(bpffs_dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut removed = Vec::new();
    if !bpffs_dir.exists() {
        return Ok(removed);
    }
    for entry in std::fs::read_dir(bpffs_dir).map_err(io_at(bpffs_dir))? {
        let path = entry.map_err(io_at(bpffs_dir))?.path();
        let ours = path
            .file_name()
            .is_some_and(|n| n.as_bytes().starts_with(DIR_PREFIX.as_bytes()));
        if ours && path.is_dir() {
            removed.extend(remove_dir(&path)?);
        }
    }
    removed.extend(remove_if_empty(bpffs_dir));
    Ok(removed)
}

/// What `podmeter agent-uninstall` does, for one cgroup root's directory `dir` (from [`dir_of`]):
/// the agent's own uninstall at exit, which leaves other cgroup roots' pins alone. Detaches and
/// unpins everything under `dir`, removes it, then its parent (the `--bpffs-dir`) if that left it
/// empty. Returns what was removed.
pub fn uninstall_root(dir: &Path) -> Result<Vec<PathBuf>, Error> {
    let mut removed = remove_dir(dir)?;
    if let Some(bpffs_dir) = dir.parent() {
        removed.extend(remove_if_empty(bpffs_dir));
    }
    Ok(removed)
}

/// Removes `bpffs_dir` if it is empty. Not empty: someone else's pins share the directory (or it
/// is the bpffs root): it stays.
fn remove_if_empty(bpffs_dir: &Path) -> Option<PathBuf> {
    std::fs::remove_dir(bpffs_dir)
        .is_ok()
        .then(|| bpffs_dir.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_ns_is_the_clock_of_instant() {
        let before = monotonic_ns();
        std::thread::sleep(Duration::from_millis(20));
        let after = monotonic_ns();
        assert!(after - before >= 20_000_000, "{before} {after}");
    }

    #[test]
    fn bpf_attr_members_have_the_kernel_sizes() {
        assert_eq!(size_of::<LinkUpdateAttr>(), 16);
        assert_eq!(size_of::<ObjAttr>(), 24);
    }

    #[test]
    fn the_build_hash_is_stable() {
        assert_eq!(build_hash(), build_hash());
        assert_ne!(build_hash(), 0);
    }
}
