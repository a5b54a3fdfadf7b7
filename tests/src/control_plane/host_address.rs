//! The control plane's own address on this host, for a cluster with a real node
//! ([`ControlPlaneOptions::pod_reachable`]): pods reach the kube-apiserver through the `kubernetes`
//! Service, whose endpoint must be an address they can route to (loopback is not, and may not be an
//! Endpoints address). A dummy link named for this run (the next run removes a killed run's) holds
//! `198.19.1.N/32`, the first free N, and the route of the whole Service range
//! ([`SERVICE_CIDR`]), so that a ClusterIP no rule translates (no kube-proxy yet, no endpoint)
//! goes nowhere rather than off the machine by the default route. Deleting the link removes both.
//!
//! The link is of type `dummy`, or `ifb` where the kernel has no dummy driver (an ifb device, not
//! being fed by a tc redirect, likewise drops what is routed to it, and does no ARP); either way it
//! gets no IPv6 link-local address.
//!
//! [`ControlPlaneOptions::pod_reachable`]: super::ControlPlaneOptions::pod_reachable

use std::{net::Ipv4Addr, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use super::SERVICE_CIDR;
use crate::{names, netns, process::run_ok};

/// The /24 the control plane's pod-reachable addresses come from (beside [`SERVICE_CIDR`], in
/// 198.18.0.0/15 like every address of the harness).
pub const APISERVER_ADDRESS_SUBNET: [u8; 3] = [198, 19, 1];
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// The link types that drop what is routed to them, in order of preference.
const LINK_TYPES: [&str; 2] = ["dummy", "ifb"];

/// The dummy link with the address and the Service range's route; dropping it deletes the link.
#[derive(Debug)]
pub(super) struct HostAddress {
    link: String,
    address: Ipv4Addr,
}

impl HostAddress {
    pub(super) fn create() -> Result<Self> {
        let address = free_address()?;
        let this = Self {
            link: names::dummy_name(names::next_id()),
            address,
        };
        let mut refused = Vec::new();
        for kind in LINK_TYPES {
            match ip(&["link", "add", &this.link, "type", kind]) {
                Ok(()) => break,
                Err(error) => refused.push(format!("{kind}: {error:#}")),
            }
        }
        if refused.len() == LINK_TYPES.len() {
            bail!("no dummy link: {}", refused.join("; "));
        }
        // From here on, dropping `this` deletes the link.
        ip(&["link", "set", &this.link, "addrgenmode", "none"])?;
        ip(&["addr", "add", &format!("{address}/32"), "dev", &this.link])?;
        ip(&["link", "set", &this.link, "up"])?;
        let route = ip(&[
            "route",
            "add",
            SERVICE_CIDR,
            "dev",
            &this.link,
            "src",
            &address.to_string(),
        ]);
        if let Err(error) = route {
            bail!(
                "routing the Service range {SERVICE_CIDR} to {}: {error:#} (does another control \
                 plane with a pod-reachable apiserver run on this machine? `ip route show \
                 {SERVICE_CIDR}` says who has it)",
                this.link
            );
        }
        Ok(this)
    }

    pub(super) fn address(&self) -> Ipv4Addr {
        self.address
    }

    pub(super) fn link(&self) -> &str {
        &self.link
    }
}

impl Drop for HostAddress {
    fn drop(&mut self) {
        if let Err(error) = netns::delete_link(&self.link) {
            eprintln!("podmeter-tests: deleting {}: {error:#}", self.link);
        }
    }
}

fn ip(args: &[&str]) -> Result<()> {
    let mut command = Command::new("ip");
    command.args(args);
    run_ok(command, IP_TIMEOUT)?;
    Ok(())
}

/// The first `198.19.1.N` (N from 1) that no interface of this host has.
fn free_address() -> Result<Ipv4Addr> {
    let mut command = Command::new("ip");
    command.args(["-o", "-4", "addr", "show"]);
    let output = run_ok(command, IP_TIMEOUT)?;
    let used: Vec<Ipv4Addr> = output
        .stdout
        .lines()
        .filter_map(|line| line.split_once(" inet "))
        .filter_map(|(_, rest)| rest.split('/').next()?.parse().ok())
        .collect();
    let [a, b, c] = APISERVER_ADDRESS_SUBNET;
    (1..=254)
        .map(|n| Ipv4Addr::new(a, b, c, n))
        .find(|address| !used.contains(address))
        .with_context(|| format!("every address of {a}.{b}.{c}.0/24 is in use"))
}
