//! Checks made before touching the kernel, so a missing privilege or cgroup2 gives one clear line.

use std::path::{Path, PathBuf};

use crate::Error;

const CGROUP2_SUPER_MAGIC: u64 = 0x6367_7270;

/// Capabilities the agent needs (bit numbers from linux/capability.h).
const NEEDED_CAPS: [(u32, &str); 3] = [(39, "CAP_BPF"), (38, "CAP_PERFMON"), (12, "CAP_NET_ADMIN")];
const CAP_SYS_ADMIN: u32 = 21;

/// Fails unless the effective capability set allows loading and attaching the programs.
pub fn check_privileges() -> Result<(), Error> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let effective = status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
        .unwrap_or(0);
    // CAP_SYS_ADMIN implies the BPF capabilities on every kernel that has them.
    if effective & (1 << CAP_SYS_ADMIN) != 0 {
        return Ok(());
    }
    let missing: Vec<&str> = NEEDED_CAPS
        .iter()
        .filter(|(bit, _)| effective & (1 << bit) == 0)
        .map(|(_, name)| *name)
        .collect();
    if missing.is_empty() {
        Ok(())
    } else {
        Err(Error::MissingPrivileges {
            missing: missing.join(", "),
        })
    }
}

/// The cgroup2 mount point from /proc/self/mountinfo (e.g. /sys/fs/cgroup, or
/// /sys/fs/cgroup/unified on hybrid hosts).
pub fn cgroup2_mount() -> Result<PathBuf, Error> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    mountinfo
        .lines()
        .find_map(|line| {
            // "<id> <parent> <dev> <root> <mount point> <opts> ... - <fstype> <source> <opts>"
            let (left, right) = line.split_once(" - ")?;
            let mount_point = left.split_whitespace().nth(4)?;
            (right.split_whitespace().next()? == "cgroup2").then(|| PathBuf::from(mount_point))
        })
        .ok_or(Error::NoCgroup2Mount)
}

/// Where hybrid hosts (cgroup v1 controllers, cgroup2 beside them) mount the cgroup2 tree,
/// relative to the cgroup mount: systemd's and runc's `unified`.
const HYBRID_UNIFIED: &str = "unified";

/// The cgroup2 directory to observe for `--cgroup-root DIR`: DIR itself when it is cgroup2 (a
/// cgroup v2 host), else its `unified` directory when that is (a hybrid host's mount, as a
/// DaemonSet mounts the host's `/sys/fs/cgroup` whatever the layout). So one manifest works on
/// both layouts.
pub fn cgroup2_root(given: &Path) -> Result<PathBuf, Error> {
    let is_cgroup2 = |p: &Path| check_cgroup2(p).is_ok();
    match within(given, is_cgroup2) {
        Some(root) => Ok(root),
        // The error of the directory given says what is wrong with it.
        None => check_cgroup2(given).map(|()| given.to_owned()),
    }
}

fn within(given: &Path, is_cgroup2: impl Fn(&Path) -> bool) -> Option<PathBuf> {
    if is_cgroup2(given) {
        return Some(given.to_owned());
    }
    let unified = given.join(HYBRID_UNIFIED);
    is_cgroup2(&unified).then_some(unified)
}

/// Fails unless `path` is a directory of a cgroup v2 hierarchy.
pub fn check_cgroup2(path: &Path) -> Result<(), Error> {
    match filesystem_magic(path) {
        Ok(CGROUP2_SUPER_MAGIC) => Ok(()),
        Ok(_) => Err(Error::NotCgroup2 {
            path: path.to_owned(),
        }),
        Err(source) => Err(Error::OpenCgroup {
            path: path.to_owned(),
            source,
        }),
    }
}

/// The magic number of the filesystem `path` is on (statfs `f_type`).
pub fn filesystem_magic(path: &Path) -> std::io::Result<u64> {
    let c_path = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: statfs writes into the zeroed struct; the path is NUL-terminated.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c_path.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // `f_type` is i64 with glibc and u64 with musl (the static image build).
    #[allow(
        clippy::unnecessary_cast,
        reason = "the cast is needed with glibc, not musl"
    )]
    Ok(st.f_type as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_hybrid_hosts_mount_is_observed_at_its_unified_tree() {
        let v2_host = |p: &Path| p == Path::new("/host/sys/fs/cgroup");
        assert_eq!(
            within(Path::new("/host/sys/fs/cgroup"), v2_host),
            Some(PathBuf::from("/host/sys/fs/cgroup"))
        );
        let hybrid = |p: &Path| p == Path::new("/host/sys/fs/cgroup/unified");
        assert_eq!(
            within(Path::new("/host/sys/fs/cgroup"), hybrid),
            Some(PathBuf::from("/host/sys/fs/cgroup/unified"))
        );
        assert_eq!(within(Path::new("/tmp"), |_| false), None);
    }

    #[test]
    fn a_directory_without_cgroup2_keeps_its_error() {
        let dir = std::env::temp_dir();
        assert!(matches!(
            cgroup2_root(&dir),
            Err(Error::NotCgroup2 { path }) if path == dir
        ));
    }
}
