//! Removal of what killed test runs left behind (a SIGKILLed test never runs its destructors).
//!
//! Only names made by [`crate::names`] whose owning PID no longer exists are touched; resources of
//! live runs and everything else on the machine are left alone. Processes are killed only when a
//! dead run's [`crate::node::RealNode`] started them (its containers, in the node's cgroups, and
//! containerd's shims, whose command lines name the node's directory); any other leftover cgroup
//! that still has processes is reported and kept. A dead node's kube-proxy recorded the host's
//! state before it ran in the node's directory: its `KUBE-*` iptables chains are removed and
//! `route_localnet` is restored from that record (unless some kube-proxy still runs); the pod logs
//! of a dead node's pods (UIDs from its kubelet's directory) go too.

use std::{fs, path::Path, process::Command, time::Duration};

use crate::{cgroup, names, netns, node, process::run};

fn pid_alive(pid: u32) -> bool {
    Path::new("/proc").join(pid.to_string()).exists()
}

/// Best effort: every failure is printed and skipped, so that a test still gets its chance to run.
pub(crate) fn remove_leftovers_of_dead_runs() {
    // First: its mounts and processes keep the others (directories, links, cgroups) busy.
    remove_stale_nodes();
    remove_stale_netns();
    remove_stale_links();
    node::forwarding::remove_stale_rules();
    remove_stale_cgroups();
    remove_stale_temp_dirs();
}

/// A killed run's node: shims and containers still run, overlay and netns mounts stay under its
/// directory, its kube-proxy's iptables rules stay, and its cgroup root stays in every hierarchy.
/// (Its bridge goes with the other links; its veths went when their network namespaces did.)
fn remove_stale_nodes() {
    for dir in stale_temp_dirs() {
        let name = dir.file_name().unwrap_or_default().to_string_lossy();
        if !name.contains("-node-") {
            continue;
        }
        eprintln!(
            "podmeter-tests: removing processes and mounts of dead run's node {}",
            dir.display()
        );
        if let Err(error) = node::kill_processes_naming(&dir) {
            eprintln!("podmeter-tests: {error:#}");
        }
        if let Err(error) = node::mounts::unmount_all_under(&dir) {
            eprintln!("podmeter-tests: {error:#}");
        }
        if let Err(error) = node::proxy::remove_leftovers(&dir.join("kube-proxy")) {
            eprintln!("podmeter-tests: {error:#}");
        }
        if let Err(error) = node::remove_pod_logs_of_dead_node(&dir) {
            eprintln!("podmeter-tests: {error:#}");
        }
    }
    for root in node::cgroups::roots_with_prefix(names::NODE_PREFIX) {
        let Some(owner) = names::decimal_owner(names::NODE_PREFIX, &root) else {
            continue;
        };
        if pid_alive(owner) {
            continue;
        }
        eprintln!(
            "podmeter-tests: removing cgroup /{root} (every hierarchy) left by dead test process {owner}"
        );
        if let Err(error) =
            node::cgroups::kill_all(&root).and_then(|()| node::cgroups::remove_root(&root))
        {
            eprintln!("podmeter-tests: {error:#}");
        }
    }
}

fn remove_stale_netns() {
    let Ok(entries) = fs::read_dir(netns::NETNS_DIR) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = names::decimal_owner(names::NETNS_PREFIX, &name) else {
            continue;
        };
        if pid_alive(owner) {
            continue;
        }
        eprintln!("podmeter-tests: removing netns {name} left by dead test process {owner}");
        let mut command = Command::new("ip");
        command.args(["netns", "delete", &name]);
        if let Err(error) =
            run(command, Duration::from_secs(10)).and_then(|output| output.check("ip netns delete"))
        {
            eprintln!("podmeter-tests: {error:#}");
        }
    }
}

fn remove_stale_links() {
    let Ok(entries) = fs::read_dir("/sys/class/net") else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let owner = names::interface_owner(names::BRIDGE_PREFIX, &name)
            .or_else(|| names::interface_owner(names::VETH_PREFIX, &name))
            .or_else(|| names::interface_owner(names::DUMMY_PREFIX, &name));
        let Some(owner) = owner else { continue };
        if pid_alive(owner) {
            continue;
        }
        eprintln!("podmeter-tests: removing link {name} left by dead test process {owner}");
        if let Err(error) = netns::delete_link(&name) {
            eprintln!("podmeter-tests: {error:#}");
        }
    }
}

fn remove_stale_cgroups() {
    let Ok(mount) = cgroup::cgroup2_mount() else {
        return;
    };
    let Ok(entries) = fs::read_dir(&mount) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = names::decimal_owner(names::CGROUP_PREFIX, &name) else {
            continue;
        };
        if pid_alive(owner) {
            continue;
        }
        let path = entry.path();
        let holds_processes = cgroup_has_processes(&path);
        if holds_processes {
            eprintln!(
                "podmeter-tests: keeping {} left by dead test process {owner}: it still has processes",
                path.display()
            );
            continue;
        }
        eprintln!(
            "podmeter-tests: removing cgroup {} left by dead test process {owner}",
            path.display()
        );
        if let Err(error) = cgroup::remove_subtree(&path) {
            eprintln!("podmeter-tests: {error:#}");
        }
    }
}

fn cgroup_has_processes(dir: &Path) -> bool {
    // cgroup.events says `populated 1` when any process is in the subtree.
    fs::read_to_string(dir.join("cgroup.events"))
        .map(|events| events.lines().any(|line| line == "populated 1"))
        .unwrap_or(true)
}

/// Temp dirs of dead test processes.
fn stale_temp_dirs() -> Vec<std::path::PathBuf> {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter(|entry| {
            let name = entry.file_name().to_string_lossy().into_owned();
            names::temp_dir_owner(&name).is_some_and(|owner| !pid_alive(owner))
                && entry.file_type().is_ok_and(|kind| kind.is_dir())
        })
        .map(|entry| entry.path())
        .collect()
}

fn remove_stale_temp_dirs() {
    for dir in stale_temp_dirs() {
        // Never recurse into a mount (a node's container root filesystem, a netns file).
        if node::mounts::mounts_under(&dir).is_ok_and(|mounts| !mounts.is_empty()) {
            eprintln!(
                "podmeter-tests: keeping {}: it still has mounts",
                dir.display()
            );
            continue;
        }
        if let Err(error) = fs::remove_dir_all(&dir) {
            eprintln!("podmeter-tests: removing {}: {error}", dir.display());
        }
    }
}
