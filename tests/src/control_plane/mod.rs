//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager
//! (v1.20.2, built from Debian's source package by `scripts/k8s-control-plane.sh`), with generated
//! certificates, for end-to-end tests of what the HPA sees. By default no kubelet, scheduler or
//! kube-proxy runs: pods stay Pending until a test patches their status (see
//! [`ControlPlane::mark_pod_running`]). With [`ControlPlaneOptions::for_real_node`] the real
//! kube-scheduler runs too, the controllers an install needs run, the apiserver serves on an
//! address pods can reach (a dummy link's `198.19.1.N`, published as the `kubernetes` Service's
//! endpoint, see `host_address.rs`), and a [`crate::node::RealNode`] beside it runs the pods and
//! kube-proxy for real.
//!
//! Every port is a free loopback port (the pod-reachable apiserver's on its own address), every
//! file lives in one [`TempDir`], and dropping the guard stops the processes (by PID, through
//! [`ChildGuard`]), deletes the dummy link and removes the directory.
//!
//! Environment:
//! - `PODMETER_K8S_BIN`: directory holding `kube-apiserver`, `kube-controller-manager`,
//!   `kube-scheduler`, `kubelet` and `kube-proxy`
//!   (default `bin/` of the script's cache: `$PODMETER_K8S_CACHE`, else [`DEFAULT_CACHE_DIR`]).
//!   `cargo xtask test` runs `scripts/k8s-control-plane.sh` as a step before any test starts;
//!   a test run any other way finds an incomplete default cache and runs the script itself, before
//!   its start deadline begins (idempotent; the first build takes 5 to 13 minutes).
//! - `PODMETER_ETCD_BIN`: etcd binary (default `etcd` on `PATH`, from Debian's `etcd-server`).
//!
//! Also needed on `PATH`: `openssl`, `curl` and `kubectl` (any recent client; a 1.32 client works
//! against this 1.20 server for `apply`/`get`, and raw API calls through [`ControlPlane::request`]
//! avoid its skew with `autoscaling/v2beta2` objects).
//!
//! ```no_run
//! use podmeter_tests::{control_plane::ControlPlane, serial};
//!
//! let _serial = serial();
//! let cp = ControlPlane::start().expect("control plane");
//! cp.apply("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: demo, namespace: default}\n")
//!     .expect("apply");
//! let cm = cp.get_json("/api/v1/namespaces/default/configmaps/demo").expect("get");
//! assert_eq!(cm["metadata"]["name"], "demo");
//! ```

use std::{
    fs,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::{process::ChildGuard, tempdir::TempDir};

mod api;
mod binaries;
mod host_address;
mod pki;
mod scheduler;
mod start;

pub use api::{ApiResponse, Credentials};
pub(crate) use binaries::Binaries;
pub use host_address::APISERVER_ADDRESS_SUBNET;
pub use pki::CertPair;

use host_address::HostAddress;

use pki::{Pki, serving_cert};

/// The Kubernetes version the script builds.
pub const K8S_VERSION: &str = "1.20.2";
/// Where `scripts/k8s-control-plane.sh` caches its build unless `$PODMETER_K8S_CACHE` says
/// otherwise; the binaries are in its `bin/`.
pub const DEFAULT_CACHE_DIR: &str = "/var/cache/podmeter/k8s-v1.20.2";
/// The script's cache directory (the script reads the same variable).
pub const CACHE_DIR_ENV: &str = "PODMETER_K8S_CACHE";
/// Overrides the cache's `bin/`.
pub const BIN_DIR_ENV: &str = "PODMETER_K8S_BIN";

/// The directory the script writes the binaries to: `$PODMETER_K8S_CACHE/bin`, else
/// [`DEFAULT_CACHE_DIR`]`/bin`.
pub fn cache_bin_dir() -> PathBuf {
    std::env::var_os(CACHE_DIR_ENV)
        .map_or_else(|| PathBuf::from(DEFAULT_CACHE_DIR), PathBuf::from)
        .join("bin")
}
/// Overrides the etcd binary.
pub const ETCD_BIN_ENV: &str = "PODMETER_ETCD_BIN";
/// The Service CIDR given to the apiserver. Only a [`crate::node::RealNode`]'s kube-proxy
/// translates its ClusterIPs; with a pod-reachable apiserver
/// ([`ControlPlaneOptions::pod_reachable`]) the range is routed to a dummy link (nowhere), never
/// off the machine.
pub const SERVICE_CIDR: &str = "198.19.0.0/24";
/// The ClusterIP of Service `default/kubernetes`: the first address of [`SERVICE_CIDR`]. Pods get
/// it as `KUBERNETES_SERVICE_HOST` (port 443); the apiserver's certificate names it.
pub const KUBERNETES_CLUSTER_IP: &str = "198.19.0.1";
/// The ServiceAccount token issuer (and audience).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The CN of the client certificate the apiserver presents to aggregated API servers; it is the
/// only name in `--requestheader-allowed-names`.
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

/// Timeout of one curl/kubectl/openssl call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The controllers the tests need: the HPA reads `scale.status.replicas`, so the deployment and
/// replicaset controllers must run; the serviceaccount ones make pods admissible.
pub const CONTROLLERS: &str =
    "horizontalpodautoscaling,deployment,replicaset,serviceaccount,serviceaccount-token";
/// [`CONTROLLERS`] plus those a cluster with a real node needs: the node lifecycle controller
/// lifts the `node.kubernetes.io/not-ready` taint the kubelet registers its Node with (or the
/// scheduler places nothing), and the garbage collector makes deleting a Deployment delete its
/// ReplicaSet and pods, which the kubelet then stops. For installing a product (`kubectl apply
/// -k`): the DaemonSet controller; the endpoint and EndpointSlice controllers, which give Services
/// their endpoints (kube-proxy 1.20 reads EndpointSlices) and the mirroring one for Endpoints
/// without a selector; the namespace controller, which deletes a deleted Namespace's contents; and
/// the root CA publisher (ConfigMap `kube-root-ca.crt` in every namespace). ServiceAccount token
/// Secrets (with the cluster CA as `ca.crt`) come from `serviceaccount-token`.
pub const NODE_CONTROLLERS: &str = "horizontalpodautoscaling,deployment,replicaset,\
     serviceaccount,serviceaccount-token,nodelifecycle,garbagecollector,daemonset,endpoint,\
     endpointslice,endpointslicemirroring,namespace,root-ca-cert-publisher";

/// How to start a [`ControlPlane`].
#[derive(Debug, Clone)]
pub struct ControlPlaneOptions {
    /// `--horizontal-pod-autoscaler-sync-period` (the default 15 s makes tests slow).
    pub hpa_sync_period: Duration,
    /// `--horizontal-pod-autoscaler-downscale-stabilization` (default 5 minutes) when set.
    pub hpa_downscale_stabilization: Option<Duration>,
    /// Bound on the whole start (etcd, apiserver ready, controllers ready).
    pub start_timeout: Duration,
    /// Extra kube-apiserver flags, appended last (a repeated flag overrides ours).
    pub apiserver_args: Vec<String>,
    /// Extra kube-controller-manager flags, appended last: e.g. `--controllers=...` replaces
    /// [`CONTROLLERS`] (add `garbagecollector` for cascading deletes, `namespace` for namespace
    /// deletion; neither runs by default).
    pub controller_manager_args: Vec<String>,
    /// Also run kube-scheduler (as `system:kube-scheduler`), so that pods get a node.
    pub scheduler: bool,
    /// Serve on an address pods can reach instead of 127.0.0.1: a dummy link (named for this run)
    /// gets `198.19.1.N/32` and the route of [`SERVICE_CIDR`]; the apiserver binds that address
    /// only, advertises it, and keeps the `kubernetes` Endpoints pointing at it (endpoint
    /// reconciler `lease`). [`ControlPlane::server`] is then `https://198.19.1.N:<port>`.
    pub pod_reachable: bool,
}

impl ControlPlaneOptions {
    /// For a cluster with a [`crate::node::RealNode`]: the scheduler runs, the controllers are
    /// [`NODE_CONTROLLERS`], and the apiserver is [`pod_reachable`](Self::pod_reachable).
    pub fn for_real_node() -> Self {
        Self {
            scheduler: true,
            pod_reachable: true,
            controller_manager_args: vec![format!("--controllers={NODE_CONTROLLERS}")],
            ..Self::default()
        }
    }
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            hpa_sync_period: Duration::from_secs(2),
            hpa_downscale_stabilization: None,
            start_timeout: Duration::from_secs(90),
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
            scheduler: false,
            pod_reachable: false,
        }
    }
}

/// A running etcd + kube-apiserver + kube-controller-manager (+ kube-scheduler) on loopback (the
/// apiserver on its pod-reachable address when [`ControlPlaneOptions::pod_reachable`]).
#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: scheduler and controllers first, etcd last, then the directory.
    scheduler: Option<ChildGuard>,
    controller_manager: ChildGuard,
    apiserver: ChildGuard,
    etcd: ChildGuard,
    /// After the processes (the apiserver binds its address), before the directory.
    host_address: Option<HostAddress>,
    dir: TempDir,
    pki: Pki,
    admin: Credentials,
    server: String,
    etcd_url: String,
    startup: Duration,
}

impl ControlPlane {
    /// How long [`ControlPlane::start_with`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// `https://127.0.0.1:<port>`, or `https://198.19.1.N:<port>` when the apiserver is
    /// [`pod_reachable`](ControlPlaneOptions::pod_reachable) (the same URL works from the host and
    /// from pods; every kubeconfig and request of the harness uses it).
    pub fn server(&self) -> &str {
        &self.server
    }

    /// The pod-reachable address the apiserver binds and publishes as the `kubernetes`
    /// Endpoints, when [`pod_reachable`](ControlPlaneOptions::pod_reachable); pods reach it
    /// through [`KUBERNETES_CLUSTER_IP`]`:443` (once kube-proxy runs) or directly.
    pub fn apiserver_address(&self) -> Option<std::net::Ipv4Addr> {
        self.host_address.as_ref().map(HostAddress::address)
    }

    /// The dummy link holding [`ControlPlane::apiserver_address`] and the route of
    /// [`SERVICE_CIDR`], when [`pod_reachable`](ControlPlaneOptions::pod_reachable).
    pub fn host_link(&self) -> Option<&str> {
        self.host_address.as_ref().map(HostAddress::link)
    }

    /// `http://127.0.0.1:<port>` of etcd.
    pub fn etcd_url(&self) -> &str {
        &self.etcd_url
    }

    /// The admin kubeconfig (user `kubernetes-admin`, group `system:masters`).
    pub fn kubeconfig(&self) -> &Path {
        &self.admin.kubeconfig
    }

    pub fn admin(&self) -> &Credentials {
        &self.admin
    }

    /// The cluster CA: it signed the apiserver's serving certificate and every client certificate
    /// the apiserver accepts (`--client-ca-file`). Also a ready `caBundle` signer for aggregated
    /// API servers, see [`ControlPlane::issue_serving_cert`].
    pub fn ca_cert(&self) -> &Path {
        &self.pki.ca.cert
    }

    /// The request-header (front-proxy) CA: an aggregated API server trusts `X-Remote-*` headers
    /// only from clients whose certificate it signed (`--requestheader-client-ca-file`; the
    /// apiserver also publishes it in ConfigMap `kube-system/extension-apiserver-authentication`).
    pub fn front_proxy_ca(&self) -> &Path {
        &self.pki.front_proxy_ca.cert
    }

    /// The client certificate (CN [`FRONT_PROXY_CLIENT_CN`]) the apiserver presents when it
    /// proxies to an aggregated API server; tests can use it to impersonate the apiserver.
    pub fn front_proxy_client(&self) -> &CertPair {
        &self.pki.front_proxy_client
    }

    /// The ServiceAccount token signing key pair (`sa.key`, `sa.pub`).
    pub fn service_account_keys(&self) -> CertPair {
        CertPair {
            cert: self.pki.sa_pub.clone(),
            key: self.pki.sa_key.clone(),
        }
    }

    /// PIDs of etcd, kube-apiserver and kube-controller-manager.
    pub fn pids(&self) -> [u32; 3] {
        [
            self.etcd.pid(),
            self.apiserver.pid(),
            self.controller_manager.pid(),
        ]
    }

    /// The directory holding everything generated (certificates, kubeconfigs, logs, etcd data).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file of `etcd`, `kube-apiserver` or `kube-controller-manager`.
    pub fn log_path(&self, component: &str) -> PathBuf {
        self.dir.path().join(format!("{component}.log"))
    }

    /// The last `lines` lines of a component's log.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        log_tail(self.dir.path(), component, lines)
    }

    /// A serving certificate signed by the cluster CA ([`ControlPlane::ca_cert`]) for `sans`
    /// (IP addresses or DNS names), e.g. for an aggregated API server whose APIService carries
    /// the cluster CA as `caBundle`.
    pub fn issue_serving_cert(&self, name: &str, sans: &[&str]) -> Result<CertPair> {
        serving_cert(self.dir.path(), &self.pki.ca, name, sans)
    }

    /// Fails with a [`ProcessExited`] error if any of the three processes has exited; in a
    /// [`wait_until`] probe, that ends the wait at once.
    pub fn check_alive(&mut self) -> Result<()> {
        for (guard, component) in [
            (&mut self.etcd, "etcd"),
            (&mut self.apiserver, "kube-apiserver"),
            (&mut self.controller_manager, "kube-controller-manager"),
        ]
        .into_iter()
        .chain(
            self.scheduler
                .as_mut()
                .map(|guard| (guard, "kube-scheduler")),
        ) {
            if let Some(status) = guard.try_wait()? {
                return Err(ProcessExited {
                    component,
                    status,
                    log_tail: log_tail(self.dir.path(), component, 40),
                }
                .into());
            }
        }
        Ok(())
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        // The logs go with the directory; show them when a test failed while we ran.
        if std::thread::panicking() {
            let scheduler = self.scheduler.as_ref().map(|_| "kube-scheduler");
            for component in ["etcd", "kube-apiserver", "kube-controller-manager"]
                .into_iter()
                .chain(scheduler)
            {
                eprintln!(
                    "podmeter-tests: {component} log (last 30 lines):\n{}",
                    self.log_tail(component, 30)
                );
            }
        }
        // The fields then drop in order: the processes stop, then the directory goes.
    }
}

/// A control-plane process exited while it should run.
#[derive(Debug)]
pub struct ProcessExited {
    pub component: &'static str,
    pub status: std::process::ExitStatus,
    pub log_tail: String,
}

impl std::fmt::Display for ProcessExited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} exited ({}); its log ends with:\n{}",
            self.component, self.status, self.log_tail
        )
    }
}

impl std::error::Error for ProcessExited {}

/// Polls `probe` every 200 ms until it returns `Some` (then that value) or `timeout` passes.
/// Errors from `probe` count as "not yet" (the last one is reported on timeout), except a
/// [`ProcessExited`], which ends the wait at once.
pub fn wait_until<T>(
    timeout: Duration,
    what: &str,
    mut probe: impl FnMut() -> Result<Option<T>>,
) -> Result<T> {
    let deadline = Instant::now() + timeout;
    let mut last_error = None;
    loop {
        match probe() {
            Ok(Some(value)) => return Ok(value),
            Ok(None) => {}
            Err(error) if error.is::<ProcessExited>() => {
                return Err(error.context(format!("while waiting for {what}")));
            }
            Err(error) => last_error = Some(error),
        }
        if Instant::now() >= deadline {
            match last_error {
                Some(error) => bail!("timed out after {timeout:?} waiting for {what}: {error:#}"),
                None => bail!("timed out after {timeout:?} waiting for {what}"),
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn log_tail(dir: &Path, component: &str, lines: usize) -> String {
    let text = fs::read_to_string(dir.join(format!("{component}.log"))).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}
