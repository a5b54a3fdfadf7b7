//! cgroup v2 directories for tests: a per-test parent under the cgroup2 mount and the pod
//! directories below it, removed bottom-up on drop once their processes are gone.

use std::{
    ffi::CString,
    fs, io,
    os::unix::ffi::OsStrExt,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::{names, wait::poll_until};

/// Where this machine mounts the unified (v2) hierarchy; the v1 controllers live elsewhere.
pub const DEFAULT_CGROUP2_MOUNT: &str = "/sys/fs/cgroup/unified";

/// Environment variable that points the harness at another cgroup2 mount.
pub const CGROUP2_MOUNT_ENV: &str = "PODMETER_TESTS_CGROUP2";

/// How long a drop waits for a cgroup's processes to exit by themselves before killing them.
const DRAIN_GRACE: Duration = Duration::from_secs(5);
/// How long it then waits for the killed processes to disappear.
const KILL_GRACE: Duration = Duration::from_secs(3);

/// The cgroup2 mount point, checked to really be cgroup2 (statfs magic), not a v1 hierarchy.
pub fn cgroup2_mount() -> Result<PathBuf> {
    let mount = std::env::var_os(CGROUP2_MOUNT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CGROUP2_MOUNT));
    if !is_cgroup2(&mount)? {
        bail!(
            "{} is not a cgroup2 mount: these tests need cgroup v2 (mount it with \
             `mount -t cgroup2 none {}` or set {CGROUP2_MOUNT_ENV} to an existing cgroup2 mount)",
            mount.display(),
            DEFAULT_CGROUP2_MOUNT
        );
    }
    Ok(mount)
}

fn is_cgroup2(path: &Path) -> Result<bool> {
    let c_path = CString::new(path.as_os_str().as_bytes()).context("cgroup path contains NUL")?;
    // SAFETY: statfs only writes into the zeroed struct we pass; the path is a valid C string.
    let mut stat: libc::statfs = unsafe { std::mem::zeroed() };
    let rc = unsafe { libc::statfs(c_path.as_ptr(), &mut stat) };
    if rc != 0 {
        let error = io::Error::last_os_error();
        if error.kind() == io::ErrorKind::NotFound {
            return Ok(false);
        }
        return Err(error).with_context(|| format!("statfs {}", path.display()));
    }
    Ok(stat.f_type == libc::CGROUP2_SUPER_MAGIC)
}

/// A cgroup v2 directory this harness created; dropping it removes it and everything below it.
#[derive(Debug)]
pub struct CgroupGuard {
    path: PathBuf,
}

impl CgroupGuard {
    /// Creates a fresh test parent `<cgroup2 mount>/podmeter-test-<pid>-<n>`.
    pub fn create_test_parent() -> Result<Self> {
        let mount = cgroup2_mount()?;
        Self::create(mount.join(names::cgroup_parent_name(names::next_id())))
    }

    /// Creates `path` and any missing parents. Missing parents are not owned by this guard: they
    /// are removed by the guard of an ancestor (e.g. the test parent removes `<parent>/default`).
    pub fn create(path: PathBuf) -> Result<Self> {
        fs::create_dir_all(&path).with_context(|| format!("creating cgroup {}", path.display()))?;
        Ok(Self { path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// PIDs in this cgroup and all cgroups below it.
    pub fn pids_recursive(&self) -> Result<Vec<u32>> {
        let mut pids = Vec::new();
        for dir in subtree_bottom_up(&self.path)? {
            pids.extend(read_pids(&dir)?);
        }
        Ok(pids)
    }

    /// Waits (bounded) until no process is left in this subtree, then kills any that remain.
    ///
    /// Every process in a test cgroup was put there by this harness, so killing the leftovers by
    /// PID ends only processes the test started (e.g. ones whose guard was leaked).
    pub fn drain(&self) {
        let empty = || {
            self.pids_recursive()
                .map(|pids| pids.is_empty())
                .unwrap_or(true)
        };
        if poll_until(DRAIN_GRACE, Duration::from_millis(20), empty) {
            return;
        }
        let leftovers = self.pids_recursive().unwrap_or_default();
        eprintln!(
            "podmeter-tests: cgroup {} still has processes {leftovers:?} after {DRAIN_GRACE:?}; killing them",
            self.path.display()
        );
        for pid in leftovers {
            // SAFETY: kill(2) with a PID read from our own test cgroup; no memory is involved.
            unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
        }
        if !poll_until(KILL_GRACE, Duration::from_millis(20), empty) {
            eprintln!(
                "podmeter-tests: cgroup {} is still not empty",
                self.path.display()
            );
        }
    }
}

impl Drop for CgroupGuard {
    fn drop(&mut self) {
        if !self.path.exists() {
            return;
        }
        self.drain();
        if let Err(error) = remove_subtree(&self.path) {
            eprintln!(
                "podmeter-tests: could not remove cgroup {}: {error:#}",
                self.path.display()
            );
        }
    }
}

/// PIDs listed in `dir/cgroup.procs`; a directory that is already gone has none.
pub fn read_pids(dir: &Path) -> Result<Vec<u32>> {
    let procs = dir.join("cgroup.procs");
    let text = match fs::read_to_string(&procs) {
        Ok(text) => text,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(error) => return Err(error).with_context(|| format!("reading {}", procs.display())),
    };
    text.lines()
        .map(|line| {
            line.trim()
                .parse::<u32>()
                .with_context(|| format!("bad PID {line:?} in {}", procs.display()))
        })
        .collect()
}

/// The cgroup v2 path (relative to the mount, starting with `/`) of process `pid`.
pub fn cgroup_of_pid(pid: u32) -> Result<String> {
    let file = format!("/proc/{pid}/cgroup");
    let text = fs::read_to_string(&file).with_context(|| format!("reading {file}"))?;
    text.lines()
        .find_map(|line| line.strip_prefix("0::"))
        .map(str::to_owned)
        .with_context(|| format!("{file} has no cgroup v2 line"))
}

/// `dir` and all directories below it, children before parents (the order rmdir needs).
fn subtree_bottom_up(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut ordered = Vec::new();
    collect_bottom_up(dir, &mut ordered)?;
    Ok(ordered)
}

fn collect_bottom_up(dir: &Path, ordered: &mut Vec<PathBuf>) -> Result<()> {
    let entries = match fs::read_dir(dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(()),
        Err(error) => return Err(error).with_context(|| format!("listing {}", dir.display())),
    };
    for entry in entries {
        let entry = entry.with_context(|| format!("listing {}", dir.display()))?;
        if entry.file_type().map(|kind| kind.is_dir()).unwrap_or(false) {
            collect_bottom_up(&entry.path(), ordered)?;
        }
    }
    ordered.push(dir.to_path_buf());
    Ok(())
}

/// Removes `dir` and its sub-cgroups. rmdir of a cgroup whose last process just exited can fail
/// with EBUSY for a moment (the exit is still being accounted), so it is retried briefly.
pub(crate) fn remove_subtree(dir: &Path) -> Result<()> {
    for cgroup in subtree_bottom_up(dir)? {
        let mut last_error = None;
        let removed =
            poll_until(
                Duration::from_secs(2),
                Duration::from_millis(20),
                || match fs::remove_dir(&cgroup) {
                    Ok(()) => true,
                    Err(error) if error.kind() == io::ErrorKind::NotFound => true,
                    Err(error) => {
                        last_error = Some(error);
                        false
                    }
                },
            );
        if !removed {
            let error = last_error.map(|e| e.to_string()).unwrap_or_default();
            bail!("rmdir {}: {error}", cgroup.display());
        }
    }
    Ok(())
}
