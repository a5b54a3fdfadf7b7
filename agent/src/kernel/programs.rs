//! Loading podmeter's kernel programs and attaching them to a cgroup v2 directory.
//!
//! The programs are attached with BPF links: the kernel runs link-attached cgroup programs next
//! to any others (multi-attach is implied; link_create takes no attach flags, hence
//! `CgroupAttachMode::Single`), and dropping [`Probes`], or the process dying, detaches them,
//! never leaving an attachment behind, unless `--bpffs-dir` pinned them so that the next agent
//! takes them over (`pins.rs`).

use std::{fs::File, path::Path};

use aya::{
    Ebpf, EbpfLoader,
    maps::{HashMap, MapData, PerCpuArray, PerCpuHashMap, RingBuf},
    programs::{CgroupAttachMode, CgroupSkb, CgroupSkbAttachType, SockOps},
};
use podmeter_common::{CountKey, FlowSums, names};

use crate::Error;

/// The kernel programs, built by build.rs from `agent-ebpf`.
pub(super) static OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/podmeter"));

/// Sizes of the kernel maps.
#[derive(Clone, Debug)]
pub struct MapSizes {
    /// Ring buffer bytes (a power of two, a multiple of the page size).
    pub ring_bytes: u32,
    /// Connections tracked at once (LRU: the least recently used are evicted).
    pub connections: u32,
    /// Entries of the pinned checkpoint: one per (cgroup, role, peer, counter kind) that counted.
    pub counters: u32,
    /// Whether the programs write per-request events (route labels need them; nothing else
    /// does). Not a size, but fixed at load like the sizes.
    pub events: bool,
}

impl Default for MapSizes {
    fn default() -> Self {
        Self {
            // 4 MiB holds ~22k events: about 0.2 s at 100k requests/s between drains.
            ring_bytes: 4 << 20,
            // Far above the connections one node serves; 32 bytes each plus overhead.
            connections: 131_072,
            // The counters that counted: a flow has 79 kinds, of which a few count (a GET and
            // its 2xx, say); 262,144 holds 3,318 flows even if every kind of each counted.
            counters: 262_144,
            events: false,
        }
    }
}

/// The loaded and attached programs and the maps the agent reads.
pub struct Probes {
    /// The programs and their links: dropping it detaches them.
    pub programs: Ebpf,
    /// Per flow: the exact counters, the in-flight integral, latency sum, bytes.
    pub flows: PerCpuHashMap<MapData, CountKey, FlowSums>,
    /// The latency histogram's buckets.
    pub latency: HashMap<MapData, CountKey, u64>,
    pub stats: PerCpuArray<MapData, u64>,
    pub events: RingBuf<MapData>,
    /// The node's own cgroups, which the agent writes.
    pub node_cgroups: HashMap<MapData, u64, u8>,
}

/// A loader for the object with `sizes` applied.
pub(super) fn loader(sizes: &MapSizes) -> EbpfLoader<'static> {
    static EVENTS_OFF: u32 = 0;
    static EVENTS_ON: u32 = 1;
    let mut loader = EbpfLoader::new();
    loader
        .map_max_entries(names::EVENTS, sizes.ring_bytes)
        .map_max_entries(names::CONNECTIONS, sizes.connections)
        .override_global(
            names::EVENTS_ON,
            if sizes.events {
                &EVENTS_ON
            } else {
                &EVENTS_OFF
            },
            true,
        );
    loader
}

impl Probes {
    /// Loads the programs and attaches them to `cgroup`, which then observes every socket of
    /// every process in it and in its descendants.
    pub fn attach(cgroup: &Path, sizes: &MapSizes) -> Result<Self, Error> {
        let mut ebpf = loader(sizes).load(OBJECT)?;
        let dir = File::open(cgroup).map_err(|source| Error::OpenCgroup {
            path: cgroup.to_owned(),
            source,
        })?;

        for (name, attach_type) in [
            (names::INGRESS, CgroupSkbAttachType::Ingress),
            (names::EGRESS, CgroupSkbAttachType::Egress),
        ] {
            let program: &mut CgroupSkb = ebpf
                .program_mut(name)
                .ok_or(Error::MissingProgram(name))?
                .try_into()
                .map_err(|source| program_error(name, source))?;
            program
                .load()
                .map_err(|source| program_error(name, source))?;
            program
                .attach(&dir, attach_type, CgroupAttachMode::Single)
                .map_err(|source| program_error(name, source))?;
        }
        let sock_ops: &mut SockOps = ebpf
            .program_mut(names::SOCK_OPS)
            .ok_or(Error::MissingProgram(names::SOCK_OPS))?
            .try_into()
            .map_err(|source| program_error(names::SOCK_OPS, source))?;
        sock_ops
            .load()
            .map_err(|source| program_error(names::SOCK_OPS, source))?;
        sock_ops
            .attach(&dir, CgroupAttachMode::Single)
            .map_err(|source| program_error(names::SOCK_OPS, source))?;

        Self::take_maps(ebpf)
    }

    /// Takes the maps the agent reads out of a loaded object.
    pub(super) fn take_maps(mut ebpf: Ebpf) -> Result<Self, Error> {
        Ok(Self {
            flows: take_map(&mut ebpf, names::FLOWS)?,
            latency: take_map(&mut ebpf, names::LATENCY)?,
            stats: take_map(&mut ebpf, names::STATS)?,
            events: take_map(&mut ebpf, names::EVENTS)?,
            node_cgroups: take_map(&mut ebpf, names::NODE_CGROUPS)?,
            programs: ebpf,
        })
    }
}

pub(super) fn take_map<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, Error>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(Error::MissingMap(name))?;
    T::try_from(map).map_err(|source| Error::Map { map: name, source })
}

pub(super) fn program_error(program: &'static str, source: aya::programs::ProgramError) -> Error {
    let hint = match &source {
        aya::programs::ProgramError::LoadError { .. } => {
            " (the verifier rejected it; the log above says where)"
        }
        aya::programs::ProgramError::SyscallError(e)
            if e.io_error.raw_os_error() == Some(libc::EPERM) =>
        {
            ": permission denied; run as root or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"
        }
        aya::programs::ProgramError::SyscallError(e)
            if e.io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            ": this kernel does not support this program type on cgroups (needs Linux >= 5.8 with CONFIG_CGROUP_BPF=y)"
        }
        _ => "",
    };
    Error::Program {
        program,
        hint,
        source,
    }
}
