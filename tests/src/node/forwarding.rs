//! IPv4 forwarding on the node's bridge, confined to the pod network. A pod reaching another pod
//! (or itself) through a ClusterIP sends to the bridge's MAC; br_netfilter runs kube-proxy's DNAT
//! and then routes the packet, which needs forwarding on the bridge (`net.ipv4.conf.<bridge>.
//! forwarding=1`; the machine-wide `ip_forward` stays as it is). So that nothing from a pod is ever
//! routed off the machine, two policy-routing rules go with it: a packet that came in on the bridge
//! and is not for this host (the `local` table comes first) is routed only to the pod network; to
//! anything else it is unreachable.
//!
//! The sysctl goes with the bridge; the rules do not (they stay, detached, when their interface
//! goes), so [`disable`] deletes them, and [`remove_stale_rules`] deletes those naming a dead
//! run's bridge.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    names,
    process::{run, run_ok},
};

/// The rules' priorities: after `local` (0), before `main` (32766).
const ALLOW_PRIORITY: &str = "31000";
const UNREACHABLE_PRIORITY: &str = "31001";
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// Adds the rules for `bridge` (whose pods are `cidr`), then turns forwarding on for it.
pub fn enable(bridge: &str, cidr: &str) -> Result<()> {
    ip(&[
        "rule",
        "add",
        "priority",
        ALLOW_PRIORITY,
        "iif",
        bridge,
        "to",
        cidr,
        "lookup",
        "main",
    ])?;
    ip(&[
        "rule",
        "add",
        "priority",
        UNREACHABLE_PRIORITY,
        "iif",
        bridge,
        "unreachable",
    ])?;
    let sysctl = Path::new("/proc/sys/net/ipv4/conf")
        .join(bridge)
        .join("forwarding");
    std::fs::write(&sysctl, "1").with_context(|| format!("writing 1 to {}", sysctl.display()))
}

/// Deletes `bridge`'s rules (those that exist); its forwarding sysctl goes with the bridge.
pub fn disable(bridge: &str) -> Result<()> {
    let mut errors = Vec::new();
    for priority in rule_priorities(bridge)? {
        let mut command = Command::new("ip");
        command.args(["rule", "del", "priority", &priority, "iif", bridge]);
        if let Err(error) = run(command, IP_TIMEOUT).and_then(|output| output.check("ip rule del"))
        {
            errors.push(format!("{error:#}"));
        }
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

/// Deletes the rules naming a bridge of a dead test process.
pub(crate) fn remove_stale_rules() {
    let Ok(bridges) = rule_bridges() else {
        return;
    };
    for bridge in bridges {
        let Some(owner) = names::interface_owner(names::BRIDGE_PREFIX, &bridge) else {
            continue;
        };
        if Path::new("/proc").join(owner.to_string()).exists() {
            continue;
        }
        eprintln!(
            "podmeter-tests: removing ip rules of bridge {bridge} left by dead test process {owner}"
        );
        if let Err(error) = disable(&bridge) {
            eprintln!("podmeter-tests: {error:#}");
        }
    }
}

/// `ip -4 rule show`: lines like `31000:\tfrom all to 198.18.200.0/24 iif pmb1x2 lookup main`.
fn rules() -> Result<String> {
    let mut command = Command::new("ip");
    command.args(["-4", "rule", "show"]);
    Ok(run_ok(command, IP_TIMEOUT)?.stdout)
}

/// The priorities of our rules naming `bridge` as their input interface.
fn rule_priorities(bridge: &str) -> Result<Vec<String>> {
    Ok(rules()?
        .lines()
        .filter(|line| input_interface(line) == Some(bridge))
        .filter_map(|line| line.split(':').next())
        .filter(|priority| [ALLOW_PRIORITY, UNREACHABLE_PRIORITY].contains(priority))
        .map(str::to_owned)
        .collect())
}

/// The bridges (our names) that rules name as their input interface.
fn rule_bridges() -> Result<Vec<String>> {
    let mut bridges: Vec<String> = rules()?
        .lines()
        .filter_map(input_interface)
        .filter(|name| name.starts_with(names::BRIDGE_PREFIX))
        .map(str::to_owned)
        .collect();
    bridges.sort();
    bridges.dedup();
    Ok(bridges)
}

fn input_interface(rule: &str) -> Option<&str> {
    let mut words = rule.split_whitespace();
    words.find(|word| *word == "iif")?;
    words.next()
}

fn ip(args: &[&str]) -> Result<()> {
    let mut command = Command::new("ip");
    command.args(args);
    run_ok(command, IP_TIMEOUT)?;
    Ok(())
}
