//! The agent library's error type: each variant says what is missing and how to fix it.

use std::path::PathBuf;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(
        "podmeter needs to load eBPF programs: run it as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN (missing: {missing})"
    )]
    MissingPrivileges { missing: String },

    #[error(
        "{path} is not a cgroup v2 directory: mount cgroup2 (e.g. `mount -t cgroup2 none /sys/fs/cgroup`) or pass --cgroup-root <a cgroup2 directory, or a hybrid host's cgroup mount with cgroup2 at unified/>"
    )]
    NotCgroup2 { path: PathBuf },

    #[error(
        "no cgroup v2 hierarchy is mounted (looked in /proc/self/mountinfo): mount one with `mount -t cgroup2 none /sys/fs/cgroup` or pass --cgroup-root"
    )]
    NoCgroup2Mount,

    #[error("cannot open cgroup {path}: {source}")]
    OpenCgroup {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error(
        "the kernel refused to load the eBPF object: {0}; podmeter needs Linux >= 5.8 with BTF and CONFIG_CGROUP_BPF"
    )]
    Load(#[from] aya::EbpfError),

    #[error("the kernel refused program {program}: {source}{hint}")]
    Program {
        program: &'static str,
        hint: &'static str,
        source: aya::programs::ProgramError,
    },

    #[error("map {map}: {source}")]
    Map {
        map: &'static str,
        source: aya::maps::MapError,
    },

    #[error(
        "map {0} is missing from the eBPF object (the agent and its kernel programs do not match)"
    )]
    MissingMap(&'static str),

    #[error(
        "program {0} is missing from the eBPF object (the agent and its kernel programs do not match)"
    )]
    MissingProgram(&'static str),

    #[error("identity file {path}: {reason}")]
    IdentityFile { path: PathBuf, reason: String },

    #[error("cannot listen on {addr}: {source}")]
    Listen {
        addr: String,
        source: std::io::Error,
    },

    #[error(transparent)]
    Pins(#[from] crate::kernel::pins::PinsError),

    #[error(transparent)]
    Io(#[from] std::io::Error),
}
