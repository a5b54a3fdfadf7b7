//! The node's pod network: a bridge the harness creates (named so that the next run can remove a
//! killed run's), with the gateway address `198.18.N.1/24`, and a CNI conflist (Debian's `bridge`
//! and `host-local` plugins) that gives pods addresses from that /24, its IPAM state under the
//! node's directory. The plugins' `isGateway` stays off so that they never turn on IP forwarding
//! machine-wide; the bridge alone forwards, and only to the pod network (`forwarding.rs`), which a
//! pod reaching another pod through a ClusterIP needs: pod addresses are reachable from this host
//! only, and nothing from a pod is routed off the machine. Hairpin mode on the bridge's ports lets
//! a pod reach itself through a ClusterIP (kube-proxy's DNAT sends the frame back out the port it
//! came in on).

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::forwarding;
use crate::{names, netns, process::run_ok};

/// Node networks take a /24 from 198.18.200.0 up; the harness's other networks
/// ([`crate::netns::Cluster`]) take theirs from 198.18.1.0 up, so they never meet.
const FIRST_SUBNET: u8 = 200;
const LAST_SUBNET: u8 = 249;
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// The bridge and the conflist; [`CniNetwork::remove`] deletes the bridge and its veths.
#[derive(Debug)]
pub struct CniNetwork {
    bridge: String,
    subnet: u8,
    conf_dir: PathBuf,
    ipam_dir: PathBuf,
}

impl CniNetwork {
    /// Creates the bridge and writes `<dir>/net.d/10-podmeter.conflist`.
    pub fn create(dir: &Path, network_name: &str) -> Result<Self> {
        let subnet = free_subnet()?;
        let bridge = names::bridge_name(names::next_id());
        let conf_dir = dir.join("net.d");
        let ipam_dir = dir.join("ipam");
        fs::create_dir_all(&conf_dir)?;
        let this = Self {
            bridge,
            subnet,
            conf_dir,
            ipam_dir,
        };
        ip(&["link", "add", &this.bridge, "type", "bridge"])?;
        if let Err(error) = this.configure(network_name) {
            if let Err(removal) = this.remove() {
                eprintln!("podmeter-tests: removing {}: {removal:#}", this.bridge);
            }
            return Err(error);
        }
        Ok(this)
    }

    /// The bridge's address, forwarding and the conflist.
    fn configure(&self, network_name: &str) -> Result<()> {
        ip(&[
            "addr",
            "add",
            &format!("{}/24", self.gateway()),
            "dev",
            &self.bridge,
        ])?;
        ip(&["link", "set", &self.bridge, "up"])?;
        forwarding::enable(&self.bridge, &self.cidr())?;
        let conflist = serde_json::json!({
            "cniVersion": "0.4.0",
            "name": network_name,
            "plugins": [{
                "type": "bridge",
                "bridge": self.bridge,
                "isGateway": false,
                "ipMasq": false,
                "hairpinMode": true,
                "ipam": {
                    "type": "host-local",
                    "dataDir": self.ipam_dir,
                    "ranges": [[{
                        "subnet": self.cidr(),
                        "gateway": self.gateway(),
                    }]],
                    "routes": [{"dst": "0.0.0.0/0", "gw": self.gateway()}],
                },
            }],
        });
        fs::write(
            self.conf_dir.join("10-podmeter.conflist"),
            serde_json::to_string_pretty(&conflist)?,
        )?;
        Ok(())
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn conf_dir(&self) -> &Path {
        &self.conf_dir
    }

    /// `198.18.N.0/24`.
    pub fn cidr(&self) -> String {
        format!("198.18.{}.0/24", self.subnet)
    }

    /// `198.18.N.1`, the bridge's address (the node's InternalIP).
    pub fn gateway(&self) -> String {
        format!("198.18.{}.1", self.subnet)
    }

    /// True when `ip` is a pod address of this network.
    pub fn contains(&self, ip: &str) -> bool {
        ip.strip_prefix(&format!("198.18.{}.", self.subnet))
            .and_then(|host| host.parse::<u8>().ok())
            .is_some_and(|host| host > 1)
    }

    /// Deletes the bridge's forwarding rules, the veths still attached to the bridge (CNI DEL
    /// normally removed them) and the bridge itself.
    pub fn remove(&self) -> Result<()> {
        let rules = forwarding::disable(&self.bridge);
        let ports = Path::new("/sys/class/net").join(&self.bridge).join("brif");
        if let Ok(entries) = fs::read_dir(&ports) {
            for port in entries.flatten() {
                netns::delete_link(&port.file_name().to_string_lossy())?;
            }
        }
        netns::delete_link(&self.bridge)?;
        rules
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let mut command = Command::new("ip");
    command.args(args);
    run_ok(command, IP_TIMEOUT)?;
    Ok(())
}

/// The first `198.18.N.0/24` (N from 200) with no address on this host.
fn free_subnet() -> Result<u8> {
    let mut command = Command::new("ip");
    command.args(["-o", "-4", "addr", "show"]);
    let output = run_ok(command, IP_TIMEOUT)?;
    let used: Vec<u8> = output
        .stdout
        .lines()
        .filter_map(|line| line.split_once("inet 198.18."))
        .filter_map(|(_, rest)| rest.split('.').next()?.parse().ok())
        .collect();
    let Some(subnet) = (FIRST_SUBNET..=LAST_SUBNET).find(|n| !used.contains(n)) else {
        bail!("every 198.18.N.0/24 with N in {FIRST_SUBNET}..={LAST_SUBNET} is in use");
    };
    Ok(subnet)
}

/// The addresses host-local still holds (files named by address in its data dir).
pub fn allocated_addresses(ipam_dir: &Path) -> Result<Vec<String>> {
    let mut addresses = Vec::new();
    let Ok(networks) = fs::read_dir(ipam_dir) else {
        return Ok(addresses);
    };
    for network in networks.flatten() {
        for entry in fs::read_dir(network.path()).context("reading host-local's data dir")? {
            let name = entry?.file_name().to_string_lossy().into_owned();
            if name.parse::<std::net::Ipv4Addr>().is_ok() {
                addresses.push(name);
            }
        }
    }
    Ok(addresses)
}

impl CniNetwork {
    /// Addresses host-local has handed out and not released.
    pub fn allocated(&self) -> Result<Vec<String>> {
        allocated_addresses(&self.ipam_dir)
    }
}
