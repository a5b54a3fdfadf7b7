//! The real kube-proxy (v1.20.2) in iptables mode: it makes the node's ClusterIP Services work
//! (from the host, from pods, and for the apiserver's aggregation layer), as `system:kube-proxy`
//! (the apiserver's bootstrap RBAC policy binds that user to ClusterRole `system:node-proxier`).
//!
//! Its host side effects, and how they are undone:
//! - `KUBE-*` chains and the jumps to them in the nat, filter and mangle tables (and the nf_tables
//!   tables holding them): [`KubeProxy::stop`] runs `kube-proxy --cleanup`, then removes whatever
//!   is left and the tables that were not there before ([`super::iptables`]);
//! - `net.ipv4.conf.all.route_localnet=1`, which 1.20 sets unconditionally: restored;
//! - nothing else: conntrack limits and timeouts are left as they are (all set to 0), NodePorts are
//!   only held on the node's own network, healthz and metrics serve on free loopback ports, and
//!   it runs with a `PATH` holding only the iptables tools and conntrack (so that neither its IPVS
//!   probe nor `--cleanup` can modprobe IPVS modules or run ipset).
//!
//! The host's state before (`route_localnet`, the nf_tables tables) is written to
//! `<dir>/host-before`, so that the next run can undo a killed run's leftovers
//! ([`remove_leftovers`]).

use std::{
    fs::{self, File},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::iptables;
use crate::{
    control_plane::{KUBERNETES_CLUSTER_IP, ProcessExited},
    process::ChildGuard,
};

const ROUTE_LOCALNET: &str = "/proc/sys/net/ipv4/conf/all/route_localnet";
const BRIDGE_NF_CALL_IPTABLES: &str = "/proc/sys/net/bridge/bridge-nf-call-iptables";
/// What kube-proxy may run: the iptables tools of both families and conntrack.
const TOOLS: [&str; 7] = [
    "iptables",
    "iptables-save",
    "iptables-restore",
    "ip6tables",
    "ip6tables-save",
    "ip6tables-restore",
    "conntrack",
];
const CLEANUP_TIMEOUT: Duration = Duration::from_secs(60);
/// How the comments of kube-proxy's rules for the `kubernetes` Service begin.
const KUBERNETES_SERVICE_COMMENT: &str = "--comment \"default/kubernetes:https";

/// What kube-proxy needs to know.
pub struct KubeProxySettings<'a> {
    pub binary: &'a Path,
    /// Its directory: config, `PATH` directory, log, the host's state before.
    pub dir: &'a Path,
    pub node_name: &'a str,
    /// The node's InternalIP (the bridge's address).
    pub node_ip: &'a str,
    /// The pods' network: traffic to a ClusterIP from elsewhere is masqueraded, and NodePorts are
    /// held on this network's addresses only.
    pub cluster_cidr: &'a str,
    /// A kubeconfig with a client certificate for `system:kube-proxy`.
    pub kubeconfig: &'a Path,
}

/// A running kube-proxy; [`KubeProxy::stop`] (or dropping it) stops it and undoes what it did.
#[derive(Debug)]
pub struct KubeProxy {
    process: Option<ChildGuard>,
    binary: PathBuf,
    dir: PathBuf,
    log: PathBuf,
    before: HostBefore,
    undone: bool,
}

/// Fails unless kube-proxy can work here and nothing else's chains are in the way: bridged pod
/// traffic must traverse iptables (br_netfilter's `bridge-nf-call-iptables=1`; the node's bridge
/// does not forward, so a pod reaches another pod behind a ClusterIP through bridged DNAT), and no
/// `KUBE-*` chain may exist (another kube-proxy or kubelet runs on this machine).
pub fn check_host() -> Result<()> {
    let flag = fs::read_to_string(BRIDGE_NF_CALL_IPTABLES).unwrap_or_default();
    if flag.trim() != "1" {
        bail!(
            "{BRIDGE_NF_CALL_IPTABLES} is {:?}, not 1: kube-proxy needs bridged pod traffic to \
             traverse iptables (load br_netfilter and set net.bridge.bridge-nf-call-iptables=1)",
            flag.trim()
        );
    }
    let chains = iptables::kube_chains()?;
    if !chains.is_empty() {
        bail!(
            "iptables already has KUBE-* chains ({chains:?}): another kube-proxy or kubelet \
             runs on this machine, or a killed run's are left (a dead test run's node directory \
             is how the next run finds them)"
        );
    }
    Ok(())
}

impl KubeProxy {
    /// Writes the config and the host's state, starts kube-proxy, and returns at once; see
    /// [`KubeProxy::has_synced_kubernetes_service`] for when its rules are in place.
    pub fn start(settings: &KubeProxySettings<'_>) -> Result<Self> {
        let dir = settings.dir;
        fs::create_dir_all(dir)?;
        let before = HostBefore::take()?;
        fs::write(dir.join(HOST_BEFORE_FILE), before.to_text())?;
        let path_dir = tools_dir(dir)?;
        let [healthz_port, metrics_port] = free_ports()?;
        let config = dir.join("kube-proxy-config.yaml");
        fs::write(&config, configuration(settings, healthz_port, metrics_port))?;
        let log = dir.join("kube-proxy.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(settings.binary);
        command
            .arg(format!("--config={}", config.display()))
            .arg("--v=2")
            .env_clear()
            .env("PATH", &path_dir)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        // From here on, dropping the guard undoes what kube-proxy did.
        let mut this = Self {
            process: None,
            binary: settings.binary.to_owned(),
            dir: dir.to_owned(),
            log,
            before,
            undone: false,
        };
        this.process = Some(ChildGuard::spawn(command, "kube-proxy")?);
        Ok(this)
    }

    pub fn pid(&self) -> Option<u32> {
        self.process.as_ref().map(ChildGuard::pid)
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails with a [`ProcessExited`] error (which ends a `wait_until` at once) if it exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(process) = self.process.as_mut()
            && let Some(status) = process.try_wait()?
        {
            return Err(ProcessExited {
                component: "kube-proxy",
                status,
                log_tail: super::log_tail(&self.log, 40),
            }
            .into());
        }
        Ok(())
    }

    /// True once the nat table sends [`KUBERNETES_CLUSTER_IP`] to an endpoint: kube-proxy has
    /// read Services and EndpointSlices and written its rules.
    pub fn has_synced_kubernetes_service() -> Result<bool> {
        let nat = iptables::save(iptables::FAMILIES[0], "nat")?;
        let cluster_ip = nat.iter().any(|rule| {
            rule.contains(KUBERNETES_SERVICE_COMMENT)
                && rule.contains(&format!("-d {KUBERNETES_CLUSTER_IP}/32"))
        });
        let endpoint = nat
            .iter()
            .any(|rule| rule.contains(KUBERNETES_SERVICE_COMMENT) && rule.contains("-j KUBE-SEP-"));
        Ok(cluster_ip && endpoint)
    }

    /// SIGTERM (SIGKILL after 10 s), then undoes what it did; every step runs.
    pub fn stop(mut self) -> Result<()> {
        self.undo()
    }

    fn undo(&mut self) -> Result<()> {
        if self.undone {
            return Ok(());
        }
        self.undone = true;
        let mut errors = Vec::new();
        if let Some(mut process) = self.process.take()
            && let Err(error) = process.terminate(Duration::from_secs(10))
        {
            errors.push(format!("stopping kube-proxy: {error:#}"));
        }
        if let Err(error) = self.cleanup_mode() {
            errors.push(format!("kube-proxy --cleanup: {error:#}"));
        }
        if let Err(error) = undo_host_changes(&self.before) {
            errors.push(format!("{error:#}"));
        }
        if !errors.is_empty() {
            bail!("{}", errors.join("; "));
        }
        Ok(())
    }

    /// `kube-proxy --cleanup`: its own removal of its iptables rules (IPVS left alone: it never
    /// ran). It always exits with an error here (it also tries to destroy IPVS ipsets, and `ipset`
    /// is not on its `PATH`), so only a failure to run counts.
    fn cleanup_mode(&self) -> Result<()> {
        let log = File::create(self.dir.join("kube-proxy-cleanup.log"))?;
        let mut command = Command::new(&self.binary);
        command
            .args(["--cleanup", "--cleanup-ipvs=false", "--v=2"])
            .env_clear()
            .env("PATH", self.dir.join(TOOLS_DIR))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut guard = ChildGuard::spawn(command, "kube-proxy --cleanup")?;
        if guard.wait_timeout(CLEANUP_TIMEOUT)?.is_none() {
            bail!("did not finish within {CLEANUP_TIMEOUT:?}");
        }
        Ok(())
    }
}

impl Drop for KubeProxy {
    fn drop(&mut self) {
        if let Err(error) = self.undo() {
            eprintln!("podmeter-tests: undoing kube-proxy's changes: {error:#}");
        }
    }
}

/// Undoes what a killed run's kube-proxy did, from the state its directory `dir` recorded; skipped
/// while any kube-proxy runs on the machine (its chains would be the same names).
pub(crate) fn remove_leftovers(dir: &Path) -> Result<()> {
    let Ok(text) = fs::read_to_string(dir.join(HOST_BEFORE_FILE)) else {
        return Ok(());
    };
    let running = super::processes_named("kube-proxy");
    if !running.is_empty() {
        bail!(
            "keeping iptables' KUBE-* chains of dead run's {}: kube-proxy runs (pids {running:?})",
            dir.display()
        );
    }
    eprintln!(
        "podmeter-tests: removing iptables' KUBE-* chains and restoring route_localnet after dead \
         run's kube-proxy {}",
        dir.display()
    );
    undo_host_changes(&HostBefore::from_text(&text))
}

fn undo_host_changes(before: &HostBefore) -> Result<()> {
    let mut errors = Vec::new();
    if let Err(error) = iptables::remove_kube_rules(&before.nft_tables) {
        errors.push(format!("removing KUBE-* iptables rules: {error:#}"));
    }
    let now = fs::read_to_string(ROUTE_LOCALNET).unwrap_or_default();
    if now.trim() != before.route_localnet
        && let Err(error) = fs::write(ROUTE_LOCALNET, &before.route_localnet)
    {
        errors.push(format!("restoring {ROUTE_LOCALNET}: {error}"));
    }
    if !errors.is_empty() {
        bail!("{}", errors.join("; "));
    }
    Ok(())
}

const HOST_BEFORE_FILE: &str = "host-before";
const TOOLS_DIR: &str = "bin";

/// The host state kube-proxy changes, as it was before it started.
#[derive(Debug, Clone)]
struct HostBefore {
    route_localnet: String,
    nft_tables: Vec<String>,
}

impl HostBefore {
    fn take() -> Result<Self> {
        Ok(Self {
            route_localnet: fs::read_to_string(ROUTE_LOCALNET)
                .with_context(|| format!("reading {ROUTE_LOCALNET}"))?
                .trim()
                .to_owned(),
            nft_tables: iptables::nft_tables()?,
        })
    }

    /// `route_localnet=<value>`, then one `nft list tables` line a line.
    fn to_text(&self) -> String {
        let mut text = format!("route_localnet={}\n", self.route_localnet);
        for table in &self.nft_tables {
            text.push_str(table);
            text.push('\n');
        }
        text
    }

    fn from_text(text: &str) -> Self {
        let mut lines = text.lines();
        let route_localnet = lines
            .next()
            .and_then(|line| line.strip_prefix("route_localnet="))
            .unwrap_or("0")
            .to_owned();
        Self {
            route_localnet,
            nft_tables: lines.map(str::to_owned).collect(),
        }
    }
}

/// `<dir>/bin` with links to [`TOOLS`] (each found on our `PATH`; conntrack may be missing).
fn tools_dir(dir: &Path) -> Result<PathBuf> {
    let tools = dir.join(TOOLS_DIR);
    fs::create_dir_all(&tools)?;
    for tool in TOOLS {
        let found = std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
            .map(|path| path.join(tool))
            .find(|candidate| candidate.is_file());
        match found {
            Some(path) => std::os::unix::fs::symlink(&path, tools.join(tool))
                .with_context(|| format!("linking {}", path.display()))?,
            None if tool == "conntrack" => {}
            None => bail!("{tool} is not on PATH (Debian's iptables package; scripts/setup.sh)"),
        }
    }
    Ok(tools)
}

fn free_ports<const N: usize>() -> Result<[u16; N]> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0").context("binding a free loopback port"))
        .collect::<Result<Vec<_>>>()?;
    let mut ports = [0; N];
    for (port, listener) in ports.iter_mut().zip(&listeners) {
        *port = listener.local_addr()?.port();
    }
    Ok(ports)
}

/// The KubeProxyConfiguration; each setting that differs from the default says why.
fn configuration(settings: &KubeProxySettings<'_>, healthz_port: u16, metrics_port: u16) -> String {
    format!(
        "\
apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
clientConnection:
  kubeconfig: {kubeconfig}
hostnameOverride: {node_name}
# The node IP (it serves nothing there in iptables mode).
bindAddress: {node_ip}
# Loopback only, on free ports.
healthzBindAddress: 127.0.0.1:{healthz_port}
metricsBindAddress: 127.0.0.1:{metrics_port}
mode: iptables
clusterCIDR: {cluster_cidr}
# NodePorts only on the node's own network (it holds their ports open on those addresses).
nodePortAddresses: [{cluster_cidr}]
# Leave the machine's conntrack limits and timeouts as they are.
conntrack:
  maxPerCore: 0
  min: 0
  tcpEstablishedTimeout: 0s
  tcpCloseWaitTimeout: 0s
iptables:
  masqueradeAll: false
  # Quick to follow Service and endpoint changes.
  minSyncPeriod: 0s
  syncPeriod: 30s
",
        kubeconfig = settings.kubeconfig.display(),
        node_name = settings.node_name,
        node_ip = settings.node_ip,
        cluster_cidr = settings.cluster_cidr,
    )
}
