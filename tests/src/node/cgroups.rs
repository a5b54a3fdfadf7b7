//! The kubelet's cgroup root (`/<node name>`, holding `kubepods`) in every cgroup hierarchy of
//! this machine: every v1 controller's and the unified one. Created before the kubelet starts
//! (it refuses a root that does not exist), emptied and removed bottom-up at teardown.

use std::{
    fs, io,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use crate::wait::poll_until;

/// Mount points of every cgroup (v1) and cgroup2 hierarchy, from /proc/self/mounts.
pub fn hierarchies() -> Result<Vec<PathBuf>> {
    let mounts = fs::read_to_string("/proc/self/mounts").context("reading /proc/self/mounts")?;
    let mut found: Vec<PathBuf> = mounts
        .lines()
        .filter_map(|line| {
            let mut fields = line.split(' ');
            let _source = fields.next()?;
            let target = fields.next()?;
            let kind = fields.next()?;
            matches!(kind, "cgroup" | "cgroup2").then(|| PathBuf::from(target))
        })
        .collect();
    found.sort();
    found.dedup();
    Ok(found)
}

/// Creates `/<root>` in every hierarchy; cpuset's gets its parent's CPUs and memory nodes (an
/// empty cpuset cannot hold processes, and the kubelet's children copy from it).
pub fn create_root(root: &str) -> Result<()> {
    for hierarchy in hierarchies()? {
        let dir = hierarchy.join(root);
        fs::create_dir_all(&dir).with_context(|| format!("mkdir {}", dir.display()))?;
        for file in ["cpuset.cpus", "cpuset.mems"] {
            let parent = hierarchy.join(file);
            if dir.join(file).exists() && parent.exists() {
                let value = fs::read_to_string(&parent)?;
                fs::write(dir.join(file), value.trim())
                    .with_context(|| format!("writing {}", dir.join(file).display()))?;
            }
        }
    }
    Ok(())
}

/// Every directory of the tree at `dir`, children before parents.
fn tree_bottom_up(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Ok(entries) = fs::read_dir(dir) {
        for entry in entries.flatten() {
            if entry.file_type().is_ok_and(|kind| kind.is_dir()) {
                out.extend(tree_bottom_up(&entry.path()));
            }
        }
    }
    out.push(dir.to_owned());
    out
}

/// PIDs in `/<root>` and below, in any hierarchy.
pub fn pids_in(root: &str) -> Result<Vec<u32>> {
    let mut pids = Vec::new();
    for hierarchy in hierarchies()? {
        for dir in tree_bottom_up(&hierarchy.join(root)) {
            if let Ok(procs) = fs::read_to_string(dir.join("cgroup.procs")) {
                pids.extend(
                    procs
                        .lines()
                        .filter_map(|line| line.trim().parse::<u32>().ok()),
                );
            }
        }
    }
    pids.sort_unstable();
    pids.dedup();
    Ok(pids)
}

/// SIGKILLs every process in `/<root>` (containers a node of ours started and nobody stopped)
/// and waits for them to be gone.
pub fn kill_all(root: &str) -> Result<()> {
    let pids = pids_in(root)?;
    if pids.is_empty() {
        return Ok(());
    }
    eprintln!("podmeter-tests: killing processes left in cgroup /{root}: {pids:?}");
    for pid in &pids {
        // SAFETY: kill(2) with a PID read from our own cgroup; no memory is involved.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    if !poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        pids_in(root).is_ok_and(|left| left.is_empty())
    }) {
        bail!(
            "processes still in cgroup /{root} after SIGKILL: {:?}",
            pids_in(root)?
        );
    }
    Ok(())
}

/// Removes `/<root>` bottom-up in every hierarchy (retrying for a while: a cgroup whose last
/// process just died stays busy for a moment).
pub fn remove_root(root: &str) -> Result<()> {
    for hierarchy in hierarchies()? {
        let top = hierarchy.join(root);
        if !top.exists() {
            continue;
        }
        let mut last_error = None;
        let removed = poll_until(Duration::from_secs(10), Duration::from_millis(100), || {
            for dir in tree_bottom_up(&top) {
                match fs::remove_dir(&dir) {
                    Ok(()) => {}
                    Err(error) if error.kind() == io::ErrorKind::NotFound => {}
                    Err(error) => {
                        last_error = Some(format!("rmdir {}: {error}", dir.display()));
                        return false;
                    }
                }
            }
            true
        });
        if !removed {
            bail!("{}", last_error.unwrap_or_default());
        }
    }
    Ok(())
}

/// Names of cgroups at the top of any hierarchy that start with `prefix`.
pub fn roots_with_prefix(prefix: &str) -> Vec<String> {
    let mut roots = Vec::new();
    for hierarchy in hierarchies().unwrap_or_default() {
        let Ok(entries) = fs::read_dir(&hierarchy) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.starts_with(prefix) && !roots.contains(&name) {
                roots.push(name);
            }
        }
    }
    roots
}
