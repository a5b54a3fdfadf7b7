//! A real Kubernetes node beside a [`ControlPlane`]: Debian's containerd and runc, a CNI bridge
//! network, the real kubelet v1.20.2, which registers a Node, and the real kube-proxy v1.20.2
//! (iptables mode), which makes ClusterIP Services work; the control plane's real kube-scheduler
//! ([`ControlPlaneOptions::for_real_node`], whose apiserver pods can reach) places pods on it and
//! the kubelet runs them. Images are built here with buildah from Debian's static busybox and
//! imported: nothing is pulled.
//!
//! Everything lives under one [`TempDir`] or is named for this run (the bridge, the kubelet's
//! cgroup root `/podmeter-node-<pid>-<id>` in every hierarchy), except kube-proxy's `KUBE-*`
//! iptables chains, which are the machine's (one real node at a time; [`proxy`] says what it
//! changes and how it is undone). Dropping the guard cordons the node, deletes its pods and waits
//! for the kubelet to stop them (CNI releases their addresses), stops the kubelet, stops
//! kube-proxy and removes its rules, removes what containers remain, stops containerd, kills what
//! is left in the node's cgroups, unmounts everything under the directory, deletes the bridge,
//! removes the cgroups, the kubelet's pod logs, the Node object and the directory. The next run
//! removes what a killed run left (`stale.rs`).
//!
//! Needs root and, on `PATH`: `containerd`, `ctr`, `runc`, `buildah`, `ip`, `iptables` (nf_tables
//! backend), `nft`, and `/bin/busybox` (Debian's busybox-static), plus `/usr/lib/cni`
//! (containernetworking-plugins), and br_netfilter with `bridge-nf-call-iptables=1`;
//! scripts/setup.sh installs the packages.
//!
//! ```no_run
//! use podmeter_tests::{control_plane::{ControlPlane, ControlPlaneOptions}, node::RealNode, serial};
//!
//! let _serial = serial();
//! let cp = ControlPlane::start_with(ControlPlaneOptions::for_real_node()).expect("control plane");
//! let node = RealNode::start(&cp).expect("node");
//! node.import(&podmeter_tests::node::BusyboxImage::httpd()).expect("image");
//! ```
//!
//! [`ControlPlaneOptions::for_real_node`]: crate::control_plane::ControlPlaneOptions::for_real_node

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{
    control_plane::{Binaries, ControlPlane, wait_until},
    names,
    tempdir::TempDir,
};

pub mod cgroups;
pub mod cni;
pub mod containerd;
pub mod forwarding;
pub mod images;
pub mod iptables;
pub mod kubelet;
pub mod mounts;
pub mod proxy;

pub use cni::CniNetwork;
pub use containerd::Containerd;
pub use images::{BusyboxImage, HTTPD_BODY, HTTPD_IMAGE, HTTPD_PORT, SANDBOX_IMAGE};
pub use kubelet::Kubelet;
pub use proxy::KubeProxy;

/// Where the kubelet writes container logs (fixed in 1.20, not under its root dir).
const POD_LOGS_DIR: &str = "/var/log/pods";
const CONTAINER_LOGS_DIR: &str = "/var/log/containers";
/// How long the node may take to register and become Ready.
const READY_TIMEOUT: Duration = Duration::from_secs(90);
/// How long teardown waits for the kubelet to stop the node's pods.
const POD_STOP_TIMEOUT: Duration = Duration::from_secs(60);
/// How long kube-proxy may take to write the `kubernetes` Service's rules.
const PROXY_SYNC_TIMEOUT: Duration = Duration::from_secs(30);
/// The RBAC binding that gives every node (group `system:nodes`) the `system:node` role; the
/// apiserver runs with RBAC only (no Node authorizer), and 1.20 leaves that binding empty.
const NODE_BINDING: &str = "\
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata:
  name: podmeter-test-nodes
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: 'system:node'}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: 'system:nodes'}
";

/// A running containerd + kubelet registered with `cp` as Node [`RealNode::name`], and its
/// kube-proxy.
#[derive(Debug)]
pub struct RealNode<'cp> {
    cp: &'cp ControlPlane,
    name: String,
    kubelet: Option<Kubelet>,
    proxy: Option<KubeProxy>,
    containerd: Option<Containerd>,
    network: Option<CniNetwork>,
    cgroup_root_created: bool,
    /// Pod log directories that existed before we started (never touched).
    pod_logs_before: Vec<String>,
    pod_logs_dir_existed: bool,
    container_logs_dir_existed: bool,
    dir: TempDir,
    phases: Vec<(&'static str, Duration)>,
}

impl<'cp> RealNode<'cp> {
    /// Starts containerd (with the sandbox image imported), the CNI network, the kubelet and
    /// kube-proxy, and returns once the Node is Ready and kube-proxy has written the `kubernetes`
    /// Service's rules. `cp` must have a pod-reachable apiserver
    /// ([`ControlPlaneOptions::for_real_node`]).
    pub fn start(cp: &'cp ControlPlane) -> Result<Self> {
        let binaries = Binaries::locate()?;
        if cp.apiserver_address().is_none() {
            bail!(
                "a RealNode needs a control plane whose apiserver pods can reach: start it with \
                 ControlPlaneOptions::for_real_node() (pod_reachable)"
            );
        }
        for tool in [
            "containerd",
            "ctr",
            "runc",
            "buildah",
            "ip",
            "iptables",
            "iptables-save",
            "iptables-restore",
            "nft",
        ] {
            if !std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                .any(|dir| dir.join(tool).exists())
            {
                bail!("{tool} is not on PATH (scripts/setup.sh installs it)");
            }
        }
        for path in [
            images::BUSYBOX,
            "/usr/lib/cni/bridge",
            "/usr/lib/cni/host-local",
        ] {
            if !Path::new(path).exists() {
                bail!(
                    "{path} is missing (scripts/setup.sh installs busybox-static and containernetworking-plugins)"
                );
            }
        }
        proxy::check_host()?;
        let name = names::node_name(names::next_id());
        let mut node = Self {
            cp,
            kubelet: None,
            proxy: None,
            containerd: None,
            network: None,
            cgroup_root_created: false,
            pod_logs_before: list_dir(Path::new(POD_LOGS_DIR)),
            pod_logs_dir_existed: Path::new(POD_LOGS_DIR).exists(),
            container_logs_dir_existed: Path::new(CONTAINER_LOGS_DIR).exists(),
            dir: crate::tempdir::new("node")?,
            name,
            phases: Vec::new(),
        };

        let phase = Instant::now();
        node.network = Some(CniNetwork::create(node.dir.path(), &node.name)?);
        let network = node.network.as_ref().context("network")?;
        let containerd = Containerd::start(
            &node.dir.path().join("containerd"),
            network.conf_dir(),
            SANDBOX_IMAGE,
        )?;
        node.containerd = Some(containerd);
        node.phases
            .push(("containerd and CNI network", phase.elapsed()));

        let phase = Instant::now();
        node.import(&BusyboxImage::sandbox())?;
        node.phases
            .push(("sandbox image built and imported", phase.elapsed()));

        let phase = Instant::now();
        cp.apply(NODE_BINDING)?;
        let credentials =
            cp.user_credentials(&format!("system:node:{}", node.name), &["system:nodes"])?;
        cgroups::create_root(&node.name)?;
        node.cgroup_root_created = true;
        let network = node.network.as_ref().context("network")?;
        let containerd = node.containerd.as_ref().context("containerd")?;
        let kubelet = Kubelet::start(&kubelet::KubeletSettings {
            binary: &binaries.kubelet,
            dir: &node.dir.path().join("kubelet"),
            node_name: &node.name,
            node_ip: &network.gateway(),
            kubeconfig: credentials.kubeconfig(),
            client_ca: cp.ca_cert(),
            runtime_endpoint: &containerd.endpoint(),
            cgroup_root: &node.name,
            sandbox_image: SANDBOX_IMAGE,
        })?;
        node.kubelet = Some(kubelet);
        let node_path = format!("/api/v1/nodes/{}", node.name);
        wait_until(
            READY_TIMEOUT,
            "the kubelet to register a Ready, untainted Node",
            || {
                node.check_alive()?;
                let response = cp.request("GET", &node_path, None)?;
                if !response.is_success() {
                    return Ok(None);
                }
                let object = response.json()?;
                let ready = object["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                // The kubelet registers the Node tainted not-ready; the node lifecycle controller
                // lifts the taint once it is Ready, and only then does the scheduler place pods.
                let tainted = object["spec"]["taints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["key"] == "node.kubernetes.io/not-ready");
                Ok((ready && !tainted).then_some(()))
            },
        )
        .with_context(|| format!("kubelet log:\n{}", node.kubelet_log_tail(40)))?;
        node.phases.push((
            "kubelet registered a Ready, untainted Node",
            phase.elapsed(),
        ));

        let phase = Instant::now();
        let credentials = cp.user_credentials("system:kube-proxy", &[])?;
        let network = node.network.as_ref().context("network")?;
        node.proxy = Some(KubeProxy::start(&proxy::KubeProxySettings {
            binary: &binaries.kube_proxy,
            dir: &node.dir.path().join("kube-proxy"),
            node_name: &node.name,
            node_ip: &network.gateway(),
            cluster_cidr: &network.cidr(),
            kubeconfig: credentials.kubeconfig(),
        })?);
        wait_until(
            PROXY_SYNC_TIMEOUT,
            "kube-proxy to write the `kubernetes` Service's rules",
            || {
                node.check_alive()?;
                Ok(KubeProxy::has_synced_kubernetes_service()?.then_some(()))
            },
        )
        .with_context(|| {
            format!(
                "kube-proxy log:\n{}\nnat table:\n{}",
                node.kube_proxy_log_tail(40),
                iptables::save(iptables::FAMILIES[0], "nat")
                    .map(|lines| lines.join("\n"))
                    .unwrap_or_else(|error| format!("{error:#}"))
            )
        })?;
        node.phases
            .push(("kube-proxy synced the kubernetes Service", phase.elapsed()));
        Ok(node)
    }

    /// The Node's name, also the kubelet's cgroup root.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// How long each phase of [`RealNode::start`] took.
    pub fn phases(&self) -> &[(&'static str, Duration)] {
        &self.phases
    }

    pub fn network(&self) -> &CniNetwork {
        self.network
            .as_ref()
            .expect("the network exists while the node runs")
    }

    pub fn containerd(&self) -> &Containerd {
        self.containerd
            .as_ref()
            .expect("containerd runs while the node runs")
    }

    /// The node's directory (containerd's and the kubelet's state, logs, configs).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// PIDs of containerd, the kubelet and kube-proxy.
    pub fn pids(&self) -> Vec<u32> {
        self.containerd
            .iter()
            .map(Containerd::pid)
            .chain(self.kubelet.iter().map(Kubelet::pid))
            .chain(self.proxy.iter().filter_map(KubeProxy::pid))
            .collect()
    }

    /// `<cgroup2 mount>/<name>/kubepods`: the unified tree's copy of the kubelet's cgroups.
    pub fn kubepods_cgroup(&self, cgroup2_mount: &Path) -> PathBuf {
        cgroup2_mount.join(&self.name).join("kubepods")
    }

    /// Builds `image` with buildah and imports it into containerd under its name.
    pub fn import(&self, image: &BusyboxImage<'_>) -> Result<()> {
        let work = self.dir.path().join("images");
        let archive = image.build_archive(&work)?;
        self.containerd().import(&archive)?;
        fs::remove_file(&archive)?;
        let names = self.containerd().image_names()?;
        if !names.iter().any(|name| name == image.name) {
            bail!(
                "containerd does not list {} after the import: {names:?}",
                image.name
            );
        }
        Ok(())
    }

    /// Fails if containerd, the kubelet or kube-proxy exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(containerd) = self.containerd.as_mut() {
            containerd.check_alive()?;
        }
        if let Some(kubelet) = self.kubelet.as_mut() {
            kubelet.check_alive()?;
        }
        if let Some(proxy) = self.proxy.as_mut() {
            proxy.check_alive()?;
        }
        Ok(())
    }

    pub fn kubelet_log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.path().join("kubelet/kubelet.log"), lines)
    }

    pub fn kube_proxy_log_tail(&self, lines: usize) -> String {
        log_tail(&self.dir.path().join("kube-proxy/kube-proxy.log"), lines)
    }

    /// Pods bound to this node, all namespaces.
    pub fn pods(&self) -> Result<Vec<Value>> {
        let list = self.cp.get_json(&format!(
            "/api/v1/pods?fieldSelector=spec.nodeName%3D{}",
            self.name
        ))?;
        Ok(list["items"].as_array().cloned().unwrap_or_default())
    }

    /// Cordons the node, deletes its pods and waits until the kubelet has stopped them all.
    fn drain(&self) -> Result<()> {
        self.cp.merge_patch(
            &format!("/api/v1/nodes/{}", self.name),
            &json!({"spec": {"unschedulable": true}}),
        )?;
        for pod in self.pods()? {
            let namespace = pod["metadata"]["namespace"].as_str().unwrap_or_default();
            let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
            self.cp.request(
                "DELETE",
                &format!("/api/v1/namespaces/{namespace}/pods/{pod_name}"),
                None,
            )?;
        }
        wait_until(
            POD_STOP_TIMEOUT,
            "the kubelet to stop the node's pods",
            || Ok(self.pods()?.is_empty().then_some(())),
        )
    }

    /// The teardown; every step runs, and what failed is reported.
    fn teardown(&mut self) -> Vec<String> {
        let mut errors = Vec::new();
        let mut note = |what: &str, result: Result<()>| {
            if let Err(error) = result {
                errors.push(format!("{what}: {error:#}"));
            }
        };
        if self.kubelet.is_some() {
            note("draining the node", self.drain());
        }
        if let Some(kubelet) = self.kubelet.take() {
            note("stopping the kubelet", kubelet.stop());
        }
        if let Some(proxy) = self.proxy.take() {
            note(
                "stopping kube-proxy and removing its iptables rules",
                proxy.stop(),
            );
        }
        if let Some(containerd) = self.containerd.take() {
            for error in containerd.remove_all_containers() {
                note("containerd", Err(anyhow::anyhow!(error)));
            }
            note("stopping containerd", containerd.stop());
        }
        if self.cgroup_root_created {
            note(
                "killing what is left in the node's cgroups",
                cgroups::kill_all(&self.name),
            );
        }
        note(
            "killing leftover shims",
            kill_processes_naming(self.dir.path()),
        );
        note("unmounting", mounts::unmount_all_under(self.dir.path()));
        if let Some(network) = self.network.take() {
            note("deleting the CNI bridge", network.remove());
        }
        if self.cgroup_root_created {
            note(
                "removing the node's cgroups",
                cgroups::remove_root(&self.name),
            );
        }
        note("removing pod logs", self.remove_pod_logs());
        let response = self
            .cp
            .request("DELETE", &format!("/api/v1/nodes/{}", self.name), None);
        if let Ok(response) = response
            && !response.is_success()
            && response.status != 404
        {
            note(
                "deleting the Node",
                Err(anyhow::anyhow!(
                    "HTTP {}: {}",
                    response.status,
                    response.body
                )),
            );
        }
        errors
    }

    /// The kubelet keeps container logs in /var/log/pods/<namespace>_<pod>_<uid> with symlinks in
    /// /var/log/containers: remove ours (those that did not exist before we started).
    fn remove_pod_logs(&self) -> Result<()> {
        for name in list_dir(Path::new(POD_LOGS_DIR)) {
            if !self.pod_logs_before.contains(&name) {
                fs::remove_dir_all(Path::new(POD_LOGS_DIR).join(&name))?;
            }
        }
        for entry in fs::read_dir(CONTAINER_LOGS_DIR)
            .into_iter()
            .flatten()
            .flatten()
        {
            // Dangling now that its pod's directory is gone.
            if fs::metadata(entry.path()).is_err() && entry.path().is_symlink() {
                fs::remove_file(entry.path())?;
            }
        }
        for (dir, existed) in [
            (CONTAINER_LOGS_DIR, self.container_logs_dir_existed),
            (POD_LOGS_DIR, self.pod_logs_dir_existed),
        ] {
            if !existed && list_dir(Path::new(dir)).is_empty() {
                let _ = fs::remove_dir(dir);
            }
        }
        Ok(())
    }
}

impl Drop for RealNode<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "podmeter-tests: kubelet log (last 40 lines):\n{}\n\
                 containerd log (last 20 lines):\n{}\nkube-proxy log (last 20 lines):\n{}",
                self.kubelet_log_tail(40),
                log_tail(&self.dir.path().join("containerd/containerd.log"), 20),
                self.kube_proxy_log_tail(20)
            );
        }
        for error in self.teardown() {
            eprintln!("podmeter-tests: tearing down node {}: {error}", self.name);
        }
        // The directory goes when `dir` drops, after this.
    }
}

/// Kills processes whose command line names `dir` (containerd's shims: they outlive containerd
/// and are not our children) and waits for them to exit.
pub(crate) fn kill_processes_naming(dir: &Path) -> Result<()> {
    let needle = dir.to_string_lossy().into_owned();
    let pids = processes_naming(&needle);
    if pids.is_empty() {
        return Ok(());
    }
    for pid in &pids {
        // SAFETY: kill(2) on a process whose command line names our own directory.
        unsafe { libc::kill(*pid as libc::pid_t, libc::SIGKILL) };
    }
    if !crate::wait::poll_until(Duration::from_secs(5), Duration::from_millis(50), || {
        processes_naming(&needle).is_empty()
    }) {
        bail!(
            "processes naming {needle} survived SIGKILL: {:?}",
            processes_naming(&needle)
        );
    }
    Ok(())
}

/// Removes the pod logs of a dead run's node whose directory is `dir`: the kubelet named each pod's
/// directory `/var/log/pods/<namespace>_<pod>_<uid>`, and its root dir (`kubelet/root/pods/<uid>`)
/// says which UIDs were its pods; the `/var/log/containers` links into them go too.
pub(crate) fn remove_pod_logs_of_dead_node(dir: &Path) -> Result<()> {
    let uids = list_dir(&dir.join("kubelet/root/pods"));
    let mut removed = Vec::new();
    for name in list_dir(Path::new(POD_LOGS_DIR)) {
        if uids.iter().any(|uid| name.ends_with(&format!("_{uid}"))) {
            let path = Path::new(POD_LOGS_DIR).join(&name);
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
            removed.push(path);
        }
    }
    for entry in fs::read_dir(CONTAINER_LOGS_DIR)
        .into_iter()
        .flatten()
        .flatten()
    {
        let target = fs::read_link(entry.path()).unwrap_or_default();
        if removed.iter().any(|dir| target.starts_with(dir)) {
            fs::remove_file(entry.path())?;
        }
    }
    Ok(())
}

/// PIDs of processes whose `comm` is `name`.
pub fn processes_named(name: &str) -> Vec<u32> {
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|comm| comm.trim() == name)
        })
        .collect()
}

/// PIDs (other than ours) whose command line contains `needle`.
pub fn processes_naming(needle: &str) -> Vec<u32> {
    let own = std::process::id();
    fs::read_dir("/proc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| entry.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| *pid != own)
        .filter(|pid| {
            fs::read(format!("/proc/{pid}/cmdline"))
                .is_ok_and(|cmdline| String::from_utf8_lossy(&cmdline).contains(needle))
        })
        .collect()
}

fn list_dir(dir: &Path) -> Vec<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

fn log_tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
