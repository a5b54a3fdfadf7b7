//! Pods made of a network namespace, a veth pair on a shared bridge and a cgroup v2 directory.
//!
//! A [`Cluster`] owns a Linux bridge in the root namespace with address `198.18.N.1/24` (the RFC
//! 2544 benchmarking range, so tests never collide with real networks) and the test's parent
//! cgroup. Each [`Pod`] borrows its cluster, so the compiler guarantees that pods are dropped (and
//! removed) before the bridge and the parent cgroup they live in.

use std::{
    cell::Cell,
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail, ensure};

use crate::{
    cgroup::CgroupGuard,
    hostnet, names,
    process::{ChildGuard, CommandOutput, place, run, run_with_input},
    stale,
};

/// Where `ip netns add` bind-mounts namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Pods get the interface name a Kubernetes pod would have.
pub const POD_INTERFACE: &str = "eth0";
/// First octet pair of every test address.
const SUBNET_BASE: [u8; 2] = [198, 18];
/// Host part of the first pod address (`.1` is the bridge).
const FIRST_POD_HOST: u8 = 2;
/// Generous bound for one `ip` invocation.
const IP_TIMEOUT: Duration = Duration::from_secs(10);

/// A bridge in the root namespace plus the test's parent cgroup; pods are created from it.
#[derive(Debug)]
pub struct Cluster {
    bridge: String,
    subnet: u8,
    next_host: Cell<u8>,
    cgroups: CgroupGuard,
}

impl Cluster {
    /// Creates the bridge and the parent cgroup, after removing leftovers of killed test runs and
    /// checking that the root firewall does not drop test traffic.
    pub fn new() -> Result<Self> {
        hostnet::check_host_network()?;
        stale::remove_leftovers_of_dead_runs();
        let cgroups = CgroupGuard::create_test_parent()?;
        let subnet = free_subnet()?;
        let mut cluster = Self {
            bridge: String::new(),
            subnet,
            next_host: Cell::new(FIRST_POD_HOST),
            cgroups,
        };
        let bridge = names::bridge_name(names::next_id());
        let gateway = cluster.gateway();
        // forward_delay 0 and no STP: ports forward as soon as they are up, with no learning delay.
        // The bridge gets no IPv6 link-local address, so it sends no router/neighbour solicitations.
        let script = format!(
            "link add {bridge} type bridge forward_delay 0 stp_state 0\n\
             link set {bridge} addrgenmode none\n\
             addr add {gateway}/24 dev {bridge}\n\
             link set {bridge} up\n"
        );
        // Record the name before running the script, so that a half-made bridge is removed too.
        cluster.bridge = bridge;
        ip_batch(None, &script).context("creating the test bridge")?;
        Ok(cluster)
    }

    /// Creates pod `<namespace>/<name>`: its netns, its veth on the bridge and its cgroup
    /// `<parent>/<namespace>/<name>`.
    pub fn pod(&self, namespace: &str, name: &str) -> Result<Pod<'_>> {
        for part in [namespace, name] {
            ensure!(
                !part.is_empty() && !part.contains('/') && part != "." && part != "..",
                "pod namespace and name must be single path components, got {namespace:?}/{name:?}"
            );
        }
        self.pod_in_cgroup(namespace, name, &Path::new(namespace).join(name))
    }

    /// Creates pod `<namespace>/<name>` with its cgroup at `<parent>/<cgroup>` (a relative path,
    /// e.g. a kubelet's `kubepods/besteffort/pod<uid>`): the name is the harness's only.
    pub fn pod_in_cgroup(&self, namespace: &str, name: &str, cgroup: &Path) -> Result<Pod<'_>> {
        ensure!(
            cgroup.is_relative()
                && cgroup
                    .components()
                    .all(|c| matches!(c, std::path::Component::Normal(_))),
            "a pod cgroup must be a plain relative path, got {}",
            cgroup.display()
        );
        let host = self.next_host.get();
        ensure!(host < 255, "this cluster has no pod addresses left");
        self.next_host.set(host + 1);
        let ip = Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], self.subnet, host);
        let cgroup = CgroupGuard::create(self.cgroups.path().join(cgroup))?;
        let mut pod = Pod {
            cluster: self,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            ip,
            netns: names::netns_name(names::next_id()),
            host_veth: names::veth_name(names::next_id()),
            netns_created: false,
            cgroup,
        };
        pod.build()
            .with_context(|| format!("creating pod {namespace}/{name}"))?;
        Ok(pod)
    }

    /// The test's parent cgroup: pass it to the agent as `--cgroup-root`.
    pub fn cgroup_root(&self) -> &Path {
        self.cgroups.path()
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    /// The bridge's address, which is every pod's default gateway.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::new(SUBNET_BASE[0], SUBNET_BASE[1], self.subnet, 1)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if !self.bridge.is_empty()
            && let Err(error) = delete_link(&self.bridge)
        {
            eprintln!("podmeter-tests: removing bridge {}: {error:#}", self.bridge);
        }
        // The parent cgroup guard (a field) is dropped after this and removes `<parent>/<ns>` too.
    }
}

/// One pod: a network namespace (with `lo` and `eth0`), a veth on the cluster bridge and a cgroup.
#[derive(Debug)]
pub struct Pod<'c> {
    cluster: &'c Cluster,
    namespace: String,
    name: String,
    ip: Ipv4Addr,
    netns: String,
    host_veth: String,
    netns_created: bool,
    cgroup: CgroupGuard,
}

impl Pod<'_> {
    fn build(&mut self) -> Result<()> {
        let mut add = Command::new("ip");
        add.args(["netns", "add", &self.netns]);
        run(add, IP_TIMEOUT)?.check("ip netns add")?;
        self.netns_created = true;
        let (netns, veth, bridge) = (&self.netns, &self.host_veth, self.cluster.bridge());
        // The peer is created directly inside the namespace, so it can be named eth0 there
        // without clashing with the root namespace's eth0.
        ip_batch(
            None,
            &format!(
                "link add {veth} type veth peer name {POD_INTERFACE} netns {netns}\n\
                 link set {veth} addrgenmode none\n\
                 link set {veth} master {bridge} up\n"
            ),
        )?;
        // No IPv6 link-local address on eth0: no DAD or router solicitations, only the test's traffic.
        ip_batch(
            Some(netns),
            &format!(
                "link set lo up\n\
                 link set {POD_INTERFACE} addrgenmode none\n\
                 addr add {ip}/24 dev {POD_INTERFACE}\n\
                 link set {POD_INTERFACE} up\n\
                 route add default via {gateway}\n",
                ip = self.ip,
                gateway = self.cluster.gateway()
            ),
        )?;
        Ok(())
    }

    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// `http://<pod ip><path>` (port 80); `path` should start with `/`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.ip)
    }

    /// The name `ip netns` knows this pod's namespace by.
    pub fn netns_name(&self) -> &str {
        &self.netns
    }

    pub fn netns_path(&self) -> PathBuf {
        Path::new(NETNS_DIR).join(&self.netns)
    }

    pub fn host_veth(&self) -> &str {
        &self.host_veth
    }

    pub fn cgroup_dir(&self) -> &Path {
        self.cgroup.path()
    }

    /// A command that will run inside this pod: in its netns and in its cgroup.
    pub fn command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let mut command = Command::new(program);
        place(
            &mut command,
            Some(&self.netns_path()),
            Some(self.cgroup.path()),
        )?;
        Ok(command)
    }

    /// A command that runs in this pod's netns but stays in the caller's cgroup: for setup that
    /// must not look like the pod's own traffic (e.g. `nft`, `ip`).
    pub fn admin_command(&self, program: impl AsRef<std::ffi::OsStr>) -> Result<Command> {
        let mut command = Command::new(program);
        place(&mut command, Some(&self.netns_path()), None)?;
        Ok(command)
    }

    /// Runs `program args` inside the pod to completion, killing it after `timeout`.
    pub fn run(&self, program: &str, args: &[&str], timeout: Duration) -> Result<CommandOutput> {
        let mut command = self.command(program)?;
        command.args(args);
        run(command, timeout)
    }

    /// Starts `program args` inside the pod, with its output forwarded to the test's output.
    pub fn spawn(&self, program: &str, args: &[&str]) -> Result<ChildGuard> {
        let mut command = self.command(program)?;
        command.args(args);
        ChildGuard::spawn_forwarding(
            command,
            format!("{}/{} {program}", self.namespace, self.name),
        )
    }

    /// PIDs currently in the pod's cgroup.
    pub fn pids(&self) -> Result<Vec<u32>> {
        self.cgroup.pids_recursive()
    }
}

impl Drop for Pod<'_> {
    fn drop(&mut self) {
        // Processes first: nothing may still be using the namespace or the cgroup.
        self.cgroup.drain();
        // Deleting the host end removes both ends at once, synchronously; the namespace's own
        // teardown would remove them too, but asynchronously and only once nothing holds it.
        if let Err(error) = delete_link(&self.host_veth) {
            eprintln!(
                "podmeter-tests: removing veth {}: {error:#}",
                self.host_veth
            );
        }
        if self.netns_created {
            let mut delete = Command::new("ip");
            delete.args(["netns", "delete", &self.netns]);
            if let Err(error) =
                run(delete, IP_TIMEOUT).and_then(|output| output.check("ip netns delete"))
            {
                eprintln!("podmeter-tests: removing netns {}: {error:#}", self.netns);
            }
        }
        // The cgroup guard (a field) is dropped after this and removes the pod's directory.
    }
}

/// Runs `ip -batch -` (in `netns` when given); stops at the first failing line.
fn ip_batch(netns: Option<&str>, script: &str) -> Result<()> {
    let mut command = Command::new("ip");
    if let Some(netns) = netns {
        command.args(["-n", netns]);
    }
    command.args(["-batch", "-"]);
    run_with_input(command, script.as_bytes(), IP_TIMEOUT)?
        .check(&format!("ip batch:\n{script}"))?;
    Ok(())
}

/// Deletes a link in the root namespace; one that does not exist is already deleted.
pub(crate) fn delete_link(name: &str) -> Result<()> {
    if !Path::new("/sys/class/net").join(name).exists() {
        return Ok(());
    }
    let mut command = Command::new("ip");
    command.args(["link", "delete", name]);
    let output = run(command, IP_TIMEOUT)?;
    if !output.success() && Path::new("/sys/class/net").join(name).exists() {
        bail!("ip link delete {name}: {}", output.stderr.trim());
    }
    Ok(())
}

/// The first `198.18.N.0/24` with no address on this host, so concurrent or leftover test
/// networks never share a subnet.
fn free_subnet() -> Result<u8> {
    let mut command = Command::new("ip");
    command.args(["-o", "-4", "addr", "show"]);
    let output = run(command, IP_TIMEOUT)?.check("ip -o -4 addr show")?;
    let prefix = format!("inet {}.{}.", SUBNET_BASE[0], SUBNET_BASE[1]);
    let used: Vec<u8> = output
        .stdout
        .lines()
        .filter_map(|line| line.split_once(&prefix))
        .filter_map(|(_, rest)| rest.split('.').next()?.parse().ok())
        .collect();
    (1..=254)
        .find(|n| !used.contains(n))
        .context("every 198.18.N.0/24 subnet is in use")
}
