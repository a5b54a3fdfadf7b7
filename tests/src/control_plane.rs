//! A real Kubernetes control plane on loopback: etcd, kube-apiserver and kube-controller-manager
//! (v1.20.2, built from Debian's source package by `scripts/k8s-control-plane.sh`), with generated
//! certificates, for end-to-end tests of what the HPA sees. No kubelet, scheduler or kube-proxy
//! runs: pods stay Pending until a test patches their status (see [`ControlPlane::mark_pod_running`]).
//!
//! Every port is a free loopback port, every file lives in one [`TempDir`], and dropping the guard
//! stops the three processes (by PID, through [`ChildGuard`]) and removes the directory.
//!
//! Environment:
//! - `PODMETER_K8S_BIN`: directory holding `kube-apiserver` and `kube-controller-manager`
//!   (default [`DEFAULT_BIN_DIR`]). When the default directory is incomplete, the guard runs
//!   `scripts/k8s-control-plane.sh` first (idempotent; the first build takes about 5 minutes).
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
    fmt::Write as _,
    fs::{self, File},
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    process::{ChildGuard, CommandOutput, run, run_ok, run_with_input},
    stale,
    tempdir::TempDir,
};

/// The Kubernetes version the script builds.
pub const K8S_VERSION: &str = "1.20.2";
/// Where `scripts/k8s-control-plane.sh` caches the binaries.
pub const DEFAULT_BIN_DIR: &str = "/var/cache/podmeter/k8s-v1.20.2/bin";
/// Overrides [`DEFAULT_BIN_DIR`].
pub const BIN_DIR_ENV: &str = "PODMETER_K8S_BIN";
/// Overrides the etcd binary.
pub const ETCD_BIN_ENV: &str = "PODMETER_ETCD_BIN";
/// The Service CIDR given to the apiserver (nothing routes it: no kube-proxy runs).
pub const SERVICE_CIDR: &str = "10.96.0.0/24";
/// The ServiceAccount token issuer (and audience).
pub const SERVICE_ACCOUNT_ISSUER: &str = "https://kubernetes.default.svc.cluster.local";
/// The CN of the client certificate the apiserver presents to aggregated API servers; it is the
/// only name in `--requestheader-allowed-names`.
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

/// How long a first build by the script may take before the guard gives up.
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);
/// Timeout of one curl/kubectl/openssl call.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The controllers the tests need: the HPA reads `scale.status.replicas`, so the deployment and
/// replicaset controllers must run; the serviceaccount ones make pods admissible.
pub const CONTROLLERS: &str =
    "horizontalpodautoscaling,deployment,replicaset,serviceaccount,serviceaccount-token";

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
}

impl Default for ControlPlaneOptions {
    fn default() -> Self {
        Self {
            hpa_sync_period: Duration::from_secs(2),
            hpa_downscale_stabilization: None,
            start_timeout: Duration::from_secs(90),
            apiserver_args: Vec::new(),
            controller_manager_args: Vec::new(),
        }
    }
}

/// A certificate and its private key (PEM files).
#[derive(Debug, Clone)]
pub struct CertPair {
    pub cert: PathBuf,
    pub key: PathBuf,
}

#[derive(Debug, Clone)]
enum Auth {
    Cert(CertPair),
    Token(String),
}

/// How to talk to the apiserver as one identity: a kubeconfig for `kubectl`, and the same
/// credentials for raw requests ([`ControlPlane::request_as`]).
#[derive(Debug, Clone)]
pub struct Credentials {
    user: String,
    kubeconfig: PathBuf,
    auth: Auth,
}

impl Credentials {
    /// The user name the apiserver sees (e.g. `system:serviceaccount:default:reader`).
    pub fn user(&self) -> &str {
        &self.user
    }

    pub fn kubeconfig(&self) -> &Path {
        &self.kubeconfig
    }

    /// The client certificate, for credentials made by [`ControlPlane::user_credentials`].
    pub fn client_cert(&self) -> Option<&CertPair> {
        match &self.auth {
            Auth::Cert(pair) => Some(pair),
            Auth::Token(_) => None,
        }
    }

    /// The bearer token, for credentials made by [`ControlPlane::service_account_credentials`].
    pub fn token(&self) -> Option<&str> {
        match &self.auth {
            Auth::Token(token) => Some(token),
            Auth::Cert(_) => None,
        }
    }
}

/// An HTTP answer of the apiserver.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    pub status: u16,
    pub body: String,
}

impl ApiResponse {
    pub fn is_success(&self) -> bool {
        (200..300).contains(&self.status)
    }

    pub fn json(&self) -> Result<Value> {
        serde_json::from_str(&self.body)
            .with_context(|| format!("HTTP {} body is not JSON: {}", self.status, self.body))
    }
}

/// Files of the generated PKI.
#[derive(Debug)]
struct Pki {
    ca: CertPair,
    serving: CertPair,
    front_proxy_ca: CertPair,
    front_proxy_client: CertPair,
    sa_key: PathBuf,
    sa_pub: PathBuf,
}

/// A running etcd + kube-apiserver + kube-controller-manager on loopback.
#[derive(Debug)]
pub struct ControlPlane {
    // Field order is drop order: controllers first, etcd last, then the directory.
    controller_manager: ChildGuard,
    apiserver: ChildGuard,
    etcd: ChildGuard,
    dir: TempDir,
    pki: Pki,
    admin: Credentials,
    server: String,
    etcd_url: String,
    startup: Duration,
}

impl ControlPlane {
    /// Starts a control plane with [`ControlPlaneOptions::default`].
    pub fn start() -> Result<Self> {
        Self::start_with(ControlPlaneOptions::default())
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager and returns once the apiserver's
    /// `/readyz` is ok and the controllers gave the `default` ServiceAccount its token, so that
    /// pods can be created.
    pub fn start_with(options: ControlPlaneOptions) -> Result<Self> {
        let started = Instant::now();
        let deadline = started + options.start_timeout;
        stale::remove_leftovers_of_dead_runs();
        let binaries = Binaries::locate()?;
        let dir = TempDir::new("k8s")?;
        let pki = Pki::generate(dir.path()).context("generating certificates with openssl")?;
        let [etcd_port, etcd_peer_port, api_port] = free_ports()?;
        let server = format!("https://127.0.0.1:{api_port}");
        let etcd_url = format!("http://127.0.0.1:{etcd_port}");

        let etcd_data = dir.path().join("etcd-data");
        let mut etcd = Command::new(&binaries.etcd);
        etcd.arg("--name=podmeter-test")
            .arg(format!("--data-dir={}", etcd_data.display()))
            .arg(format!("--listen-client-urls={etcd_url}"))
            .arg(format!("--advertise-client-urls={etcd_url}"))
            .arg(format!(
                "--listen-peer-urls=http://127.0.0.1:{etcd_peer_port}"
            ))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{etcd_peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=podmeter-test=http://127.0.0.1:{etcd_peer_port}"
            ))
            .arg("--logger=zap")
            .arg("--log-level=warn");
        let etcd = spawn_logged(etcd, "etcd", dir.path())?;

        // Written before the apiserver starts so that readiness can be probed as admin.
        let admin_cert =
            pki.client_cert(dir.path(), "admin", "kubernetes-admin", &["system:masters"])?;
        let admin = Credentials {
            user: "kubernetes-admin".into(),
            kubeconfig: write_kubeconfig(
                dir.path(),
                "admin",
                &server,
                &pki.ca.cert,
                &Auth::Cert(admin_cert.clone()),
            )?,
            auth: Auth::Cert(admin_cert),
        };

        let mut apiserver = Command::new(&binaries.apiserver);
        apiserver
            .arg(format!("--etcd-servers={etcd_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg("--insecure-port=0")
            .arg(format!(
                "--cert-dir={}",
                dir.path().join("apiserver").display()
            ))
            .arg(format!("--tls-cert-file={}", pki.serving.cert.display()))
            .arg(format!(
                "--tls-private-key-file={}",
                pki.serving.key.display()
            ))
            .arg(format!("--client-ca-file={}", pki.ca.cert.display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!("--service-cluster-ip-range={SERVICE_CIDR}"))
            // Loopback cannot be an Endpoints address; nothing needs the `kubernetes` endpoints.
            .arg("--endpoint-reconciler-type=none")
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            .arg(format!(
                "--requestheader-client-ca-file={}",
                pki.front_proxy_ca.cert.display()
            ))
            .arg(format!(
                "--requestheader-allowed-names={FRONT_PROXY_CLIENT_CN}"
            ))
            .arg("--requestheader-username-headers=X-Remote-User")
            .arg("--requestheader-group-headers=X-Remote-Group")
            .arg("--requestheader-extra-headers-prefix=X-Remote-Extra-")
            .arg(format!(
                "--proxy-client-cert-file={}",
                pki.front_proxy_client.cert.display()
            ))
            .arg(format!(
                "--proxy-client-key-file={}",
                pki.front_proxy_client.key.display()
            ))
            .arg("--profiling=false")
            .args(&options.apiserver_args);

        wait_until(remaining(deadline), "etcd to become healthy", || {
            let mut command = Command::new("curl");
            command.args(["-sS", "--max-time", "2", &format!("{etcd_url}/health")]);
            let output = run(command, CALL_TIMEOUT)?;
            Ok(output.stdout.contains("\"health\":\"true\"").then_some(()))
        })
        .with_context(|| format!("etcd log:\n{}", log_tail(dir.path(), "etcd", 30)))?;

        let apiserver = spawn_logged(apiserver, "kube-apiserver", dir.path())?;
        let mut plane = PartialPlane {
            etcd,
            apiserver,
            dir,
        };
        let ready = wait_until(remaining(deadline), "kube-apiserver /readyz", || {
            plane.check_alive()?;
            let response = curl(&server, &pki.ca.cert, &admin.auth, "GET", "/readyz", None)?;
            Ok((response.status == 200 && response.body.trim() == "ok").then_some(()))
        });
        if let Err(error) = ready {
            bail!(
                "{error:#}\nkube-apiserver log:\n{}",
                log_tail(plane.dir.path(), "kube-apiserver", 40)
            );
        }

        let cm_cert = pki.client_cert(
            plane.dir.path(),
            "controller-manager",
            "system:kube-controller-manager",
            &[],
        )?;
        let cm_kubeconfig = write_kubeconfig(
            plane.dir.path(),
            "controller-manager",
            &server,
            &pki.ca.cert,
            &Auth::Cert(cm_cert),
        )?;
        let mut controller_manager = Command::new(&binaries.controller_manager);
        controller_manager
            .arg(format!("--kubeconfig={}", cm_kubeconfig.display()))
            .arg(format!("--controllers={CONTROLLERS}"))
            .arg("--use-service-account-credentials=true")
            .arg("--leader-elect=false")
            .arg(format!(
                "--horizontal-pod-autoscaler-sync-period={}",
                go_duration(options.hpa_sync_period)
            ))
            .arg(format!(
                "--service-account-private-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--root-ca-file={}", pki.ca.cert.display()))
            // No serving at all: nothing scrapes it, and ports stay free.
            .arg("--port=0")
            .arg("--secure-port=0");
        if let Some(window) = options.hpa_downscale_stabilization {
            controller_manager.arg(format!(
                "--horizontal-pod-autoscaler-downscale-stabilization={}",
                go_duration(window)
            ));
        }
        controller_manager.args(&options.controller_manager_args);
        let controller_manager = spawn_logged(
            controller_manager,
            "kube-controller-manager",
            plane.dir.path(),
        )?;
        let PartialPlane {
            etcd,
            apiserver,
            dir,
        } = plane;
        let mut plane = Self {
            controller_manager,
            apiserver,
            etcd,
            dir,
            pki,
            admin,
            server,
            etcd_url,
            startup: Duration::ZERO,
        };
        // The ServiceAccount admission plugin rejects pods until the default account has a token.
        wait_until(
            remaining(deadline),
            "the controllers to give ServiceAccount default/default a token",
            || {
                plane.check_alive()?;
                let response = plane.request(
                    "GET",
                    "/api/v1/namespaces/default/serviceaccounts/default",
                    None,
                )?;
                if !response.is_success() {
                    return Ok(None);
                }
                let account = response.json()?;
                let has_token = account["secrets"]
                    .as_array()
                    .is_some_and(|secrets| !secrets.is_empty());
                Ok(has_token.then_some(()))
            },
        )
        .with_context(|| {
            format!(
                "kube-controller-manager log:\n{}",
                plane.log_tail("kube-controller-manager", 40)
            )
        })?;
        plane.startup = started.elapsed();
        Ok(plane)
    }

    /// How long [`ControlPlane::start_with`] took.
    pub fn startup_time(&self) -> Duration {
        self.startup
    }

    /// `https://127.0.0.1:<port>`.
    pub fn server(&self) -> &str {
        &self.server
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

    /// Credentials of a user authenticated by a client certificate (CN `user`, O `groups`).
    pub fn user_credentials(&self, user: &str, groups: &[&str]) -> Result<Credentials> {
        let file_stem = format!("user-{}", sanitize(user));
        let pair = self
            .pki
            .client_cert(self.dir.path(), &file_stem, user, groups)?;
        let auth = Auth::Cert(pair);
        let kubeconfig = write_kubeconfig(
            self.dir.path(),
            &file_stem,
            &self.server,
            &self.pki.ca.cert,
            &auth,
        )?;
        Ok(Credentials {
            user: user.into(),
            kubeconfig,
            auth,
        })
    }

    /// Credentials of ServiceAccount `namespace/name` (created when missing) with a bound token
    /// from the TokenRequest API, valid for `validity` (at least 10 minutes).
    pub fn service_account_credentials(
        &self,
        namespace: &str,
        name: &str,
        validity: Duration,
    ) -> Result<Credentials> {
        let accounts = format!("/api/v1/namespaces/{namespace}/serviceaccounts");
        let account = serde_json::json!({
            "apiVersion": "v1", "kind": "ServiceAccount",
            "metadata": {"name": name, "namespace": namespace},
        });
        let created = self.request("POST", &accounts, Some(&account))?;
        if !created.is_success() && created.status != 409 {
            bail!(
                "creating ServiceAccount {namespace}/{name}: HTTP {} {}",
                created.status,
                created.body
            );
        }
        let token_request = serde_json::json!({
            "apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "spec": {"expirationSeconds": validity.as_secs().max(600)},
        });
        let answer = self.post_json(&format!("{accounts}/{name}/token"), &token_request)?;
        let token = answer["status"]["token"]
            .as_str()
            .with_context(|| format!("TokenRequest answer without a token: {answer}"))?
            .to_owned();
        let file_stem = format!("sa-{}-{}", sanitize(namespace), sanitize(name));
        let auth = Auth::Token(token);
        let kubeconfig = write_kubeconfig(
            self.dir.path(),
            &file_stem,
            &self.server,
            &self.pki.ca.cert,
            &auth,
        )?;
        Ok(Credentials {
            user: format!("system:serviceaccount:{namespace}:{name}"),
            kubeconfig,
            auth,
        })
    }

    /// Runs the `kubectl` on `PATH` as admin; check the result with [`CommandOutput::check`].
    pub fn kubectl(&self, args: &[&str]) -> Result<CommandOutput> {
        self.kubectl_as(&self.admin, args)
    }

    /// Runs `kubectl` with `credentials`, e.g. `["get", "--raw", "/apis/custom.metrics.k8s.io"]`.
    pub fn kubectl_as(&self, credentials: &Credentials, args: &[&str]) -> Result<CommandOutput> {
        run(self.kubectl_command(credentials, args), CALL_TIMEOUT)
    }

    fn kubectl_command(&self, credentials: &Credentials, args: &[&str]) -> Command {
        let mut command = Command::new("kubectl");
        // Our own discovery cache: ports are reused across runs, by different servers.
        command
            .arg(format!("--kubeconfig={}", credentials.kubeconfig.display()))
            .arg(format!(
                "--cache-dir={}",
                self.dir.path().join("kubectl-cache").display()
            ))
            .args(args)
            .env_remove("KUBECONFIG");
        command
    }

    /// `kubectl apply -f -` of `yaml` as admin; fails with kubectl's output unless it succeeds.
    pub fn apply(&self, yaml: &str) -> Result<CommandOutput> {
        let command = self.kubectl_command(&self.admin, &["apply", "-f", "-"]);
        run_with_input(command, yaml.as_bytes(), CALL_TIMEOUT)?
            .check(&format!("kubectl apply of:\n{yaml}\n"))
    }

    /// A raw API request as admin: `method` on `path` (e.g. `/api/v1/namespaces`), with a JSON
    /// body for POST/PUT (`application/json`) and PATCH (`application/merge-patch+json`).
    pub fn request(&self, method: &str, path: &str, body: Option<&Value>) -> Result<ApiResponse> {
        self.request_as(&self.admin, method, path, body)
    }

    /// Like [`ControlPlane::request`] with `credentials`.
    pub fn request_as(
        &self,
        credentials: &Credentials,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> Result<ApiResponse> {
        curl(
            &self.server,
            &self.pki.ca.cert,
            &credentials.auth,
            method,
            path,
            body,
        )
    }

    /// GET `path` as admin and parse the JSON answer; fails unless the status is 2xx.
    pub fn get_json(&self, path: &str) -> Result<Value> {
        expect_success("GET", path, self.request("GET", path, None)?)
    }

    /// POST `body` to `path` as admin; fails unless the status is 2xx.
    pub fn post_json(&self, path: &str, body: &Value) -> Result<Value> {
        expect_success("POST", path, self.request("POST", path, Some(body))?)
    }

    /// JSON merge patch (RFC 7386) of `path` as admin; fails unless the status is 2xx.
    pub fn merge_patch(&self, path: &str, patch: &Value) -> Result<Value> {
        expect_success("PATCH", path, self.request("PATCH", path, Some(patch))?)
    }

    /// Marks a pod Running and Ready with `pod_ip` through its `status` subresource, as a kubelet
    /// would (none runs here); the HPA counts only such pods. Returns the updated pod.
    pub fn mark_pod_running(&self, namespace: &str, pod: &str, pod_ip: &str) -> Result<Value> {
        let now = rfc3339_now();
        let patch = serde_json::json!({"status": {
            "phase": "Running",
            "podIP": pod_ip,
            "podIPs": [{"ip": pod_ip}],
            "startTime": now,
            "conditions": [
                {"type": "Initialized", "status": "True", "lastTransitionTime": now},
                {"type": "Ready", "status": "True", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "True", "lastTransitionTime": now},
                {"type": "PodScheduled", "status": "True", "lastTransitionTime": now},
            ],
        }});
        self.merge_patch(
            &format!("/api/v1/namespaces/{namespace}/pods/{pod}/status"),
            &patch,
        )
    }

    /// Fails with a [`ProcessExited`] error if any of the three processes has exited; in a
    /// [`wait_until`] probe, that ends the wait at once.
    pub fn check_alive(&mut self) -> Result<()> {
        for (guard, component) in [
            (&mut self.etcd, "etcd"),
            (&mut self.apiserver, "kube-apiserver"),
            (&mut self.controller_manager, "kube-controller-manager"),
        ] {
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
            for component in ["etcd", "kube-apiserver", "kube-controller-manager"] {
                eprintln!(
                    "podmeter-tests: {component} log (last 30 lines):\n{}",
                    self.log_tail(component, 30)
                );
            }
        }
        // The fields then drop in order: the processes stop, then the directory goes.
    }
}

/// The processes started before the controller manager, so that an early failure stops them too.
struct PartialPlane {
    apiserver: ChildGuard,
    etcd: ChildGuard,
    dir: TempDir,
}

impl PartialPlane {
    fn check_alive(&mut self) -> Result<()> {
        for (guard, component) in [
            (&mut self.etcd, "etcd"),
            (&mut self.apiserver, "kube-apiserver"),
        ] {
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

/// Where the binaries are; runs the build script when the default cache is incomplete.
struct Binaries {
    apiserver: PathBuf,
    controller_manager: PathBuf,
    etcd: PathBuf,
}

impl Binaries {
    fn locate() -> Result<Self> {
        let (dir, overridden) = match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => (PathBuf::from(dir), true),
            None => (PathBuf::from(DEFAULT_BIN_DIR), false),
        };
        let apiserver = dir.join("kube-apiserver");
        let controller_manager = dir.join("kube-controller-manager");
        let etcd_override = std::env::var_os(ETCD_BIN_ENV).map(PathBuf::from);
        let missing = || {
            let etcd = etcd_override.clone().or_else(|| find_on_path("etcd"));
            let mut missing = Vec::new();
            for binary in [&apiserver, &controller_manager] {
                if !is_executable(binary) {
                    missing.push(binary.display().to_string());
                }
            }
            match &etcd {
                Some(path) if is_executable(path) => {}
                Some(path) => missing.push(format!("{} ({ETCD_BIN_ENV})", path.display())),
                None => missing.push("etcd on PATH (Debian's etcd-server)".into()),
            }
            (etcd, missing)
        };
        let (mut etcd, mut absent) = missing();
        if !absent.is_empty() {
            if overridden || etcd_override.is_some() {
                bail!(
                    "missing: {}; run scripts/k8s-control-plane.sh (it builds the Kubernetes \
                     binaries into {DEFAULT_BIN_DIR} and installs etcd-server), or fix \
                     {BIN_DIR_ENV}/{ETCD_BIN_ENV}",
                    absent.join(", ")
                );
            }
            run_build_script()?;
            (etcd, absent) = missing();
            if !absent.is_empty() {
                bail!(
                    "scripts/k8s-control-plane.sh ran, but still missing: {}",
                    absent.join(", ")
                );
            }
        }
        for tool in ["openssl", "curl", "kubectl"] {
            if find_on_path(tool).is_none() {
                bail!("{tool} is not on PATH (scripts/setup.sh installs openssl and curl)");
            }
        }
        Ok(Self {
            apiserver,
            controller_manager,
            etcd: etcd.context("etcd")?,
        })
    }
}

fn run_build_script() -> Result<()> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap_or(Path::new("."))
        .join("scripts/k8s-control-plane.sh");
    eprintln!(
        "podmeter-tests: Kubernetes binaries missing from {DEFAULT_BIN_DIR}; running {} \
         (the first build takes about 5 minutes)",
        script.display()
    );
    let mut guard = ChildGuard::spawn_forwarding(Command::new(&script), "k8s-control-plane.sh")?;
    match guard.wait_timeout(BUILD_TIMEOUT)? {
        Some(status) if status.success() => Ok(()),
        Some(status) => bail!(
            "{} failed ({status}); run it by hand to see why",
            script.display()
        ),
        None => bail!(
            "{} did not finish within {BUILD_TIMEOUT:?}",
            script.display()
        ),
    }
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    fs::metadata(path).is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    std::env::split_paths(&std::env::var_os("PATH")?)
        .map(|dir| dir.join(name))
        .find(|candidate| is_executable(candidate))
}

/// `N` distinct free loopback ports (all bound at once, then released).
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

/// Spawns `command` with stdout and stderr appended to `<dir>/<component>.log`.
fn spawn_logged(mut command: Command, component: &str, dir: &Path) -> Result<ChildGuard> {
    let log_path = dir.join(format!("{component}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    ChildGuard::spawn(command, component)
}

fn log_tail(dir: &Path, component: &str, lines: usize) -> String {
    let text = fs::read_to_string(dir.join(format!("{component}.log"))).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A Go duration flag value, in milliseconds so that sub-second periods survive.
fn go_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}

fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

fn rfc3339_now() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs());
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days as i64 + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

fn expect_success(method: &str, path: &str, response: ApiResponse) -> Result<Value> {
    if !response.is_success() {
        bail!(
            "{method} {path}: HTTP {} {}",
            response.status,
            response.body
        );
    }
    response.json()
}

/// One HTTPS request to the apiserver with curl (the harness's HTTP client has no TLS).
fn curl(
    server: &str,
    ca: &Path,
    auth: &Auth,
    method: &str,
    path: &str,
    body: Option<&Value>,
) -> Result<ApiResponse> {
    let mut command = Command::new("curl");
    command
        .args(["-sS", "--max-time", "20", "-X", method])
        .arg("--cacert")
        .arg(ca)
        .args(["-H", "Accept: application/json"])
        .args(["-o", "-", "-w", "\n%{http_code}"]);
    match auth {
        Auth::Cert(pair) => {
            command
                .arg("--cert")
                .arg(&pair.cert)
                .arg("--key")
                .arg(&pair.key);
        }
        Auth::Token(token) => {
            command
                .arg("-H")
                .arg(format!("Authorization: Bearer {token}"));
        }
    }
    let input = match body {
        Some(body) => {
            let content_type = if method.eq_ignore_ascii_case("PATCH") {
                "application/merge-patch+json"
            } else {
                "application/json"
            };
            command
                .args(["-H", &format!("Content-Type: {content_type}")])
                .args(["--data-binary", "@-"]);
            serde_json::to_vec(body)?
        }
        None => Vec::new(),
    };
    command.arg(format!("{server}{path}"));
    let output = run_with_input(command, &input, CALL_TIMEOUT)?
        .check(&format!("curl -X {method} {server}{path}"))?;
    let (body, status) = output
        .stdout
        .rsplit_once('\n')
        .with_context(|| format!("curl printed no status: {:?}", output.stdout))?;
    Ok(ApiResponse {
        status: status
            .trim()
            .parse()
            .with_context(|| format!("curl status {status:?}"))?,
        body: body.to_owned(),
    })
}

/// Writes `<dir>/<name>.kubeconfig` for `server`, trusting `ca`, authenticating with `auth`.
fn write_kubeconfig(
    dir: &Path,
    name: &str,
    server: &str,
    ca: &Path,
    auth: &Auth,
) -> Result<PathBuf> {
    let mut user = String::new();
    match auth {
        Auth::Cert(pair) => {
            writeln!(user, "    client-certificate: {}", pair.cert.display())?;
            writeln!(user, "    client-key: {}", pair.key.display())?;
        }
        Auth::Token(token) => writeln!(user, "    token: {token}")?,
    }
    let config = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: podmeter-test\n  cluster:\n    \
         server: {server}\n    certificate-authority: {ca}\nusers:\n- name: {name}\n  user:\n\
         {user}contexts:\n- name: {name}\n  context:\n    cluster: podmeter-test\n    user: {name}\n\
         current-context: {name}\n",
        ca = ca.display(),
    );
    let path = dir.join(format!("{name}.kubeconfig"));
    fs::write(&path, config).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}

/// The openssl config every `req` uses: no prompts, and the extension sections we sign with.
const OPENSSL_CONFIG: &str = "\
[req]
distinguished_name = dn
prompt = no
[dn]
[ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign, digitalSignature
subjectKeyIdentifier = hash
[client]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = clientAuth
authorityKeyIdentifier = keyid
";

/// Certificates live 2 days: long enough for any test, short if a directory leaks.
const CERT_DAYS: &str = "2";

impl Pki {
    fn generate(dir: &Path) -> Result<Self> {
        fs::write(dir.join("openssl.cnf"), OPENSSL_CONFIG)?;
        let ca = self_signed_ca(dir, "ca", "podmeter-test-cluster-ca")?;
        let front_proxy_ca = self_signed_ca(dir, "front-proxy-ca", "podmeter-test-front-proxy-ca")?;
        let front_proxy_client = sign(
            dir,
            &front_proxy_ca,
            "front-proxy-client",
            &subject(FRONT_PROXY_CLIENT_CN, &[]),
            "client",
            None,
        )?;
        let sa_key = dir.join("sa.key");
        let sa_pub = dir.join("sa.pub");
        openssl(&[
            "genpkey",
            "-algorithm",
            "RSA",
            "-pkeyopt",
            "rsa_keygen_bits:2048",
            "-out",
            path_str(&sa_key)?,
        ])?;
        openssl(&[
            "pkey",
            "-in",
            path_str(&sa_key)?,
            "-pubout",
            "-out",
            path_str(&sa_pub)?,
        ])?;
        let serving = serving_cert(
            dir,
            &ca,
            "apiserver",
            &[
                "127.0.0.1",
                "10.96.0.1",
                "localhost",
                "kubernetes",
                "kubernetes.default",
                "kubernetes.default.svc",
                "kubernetes.default.svc.cluster.local",
            ],
        )?;
        Ok(Self {
            ca,
            serving,
            front_proxy_ca,
            front_proxy_client,
            sa_key,
            sa_pub,
        })
    }

    fn client_cert(
        &self,
        dir: &Path,
        file_stem: &str,
        user: &str,
        groups: &[&str],
    ) -> Result<CertPair> {
        sign(
            dir,
            &self.ca,
            file_stem,
            &subject(user, groups),
            "client",
            None,
        )
    }
}

/// A serving certificate for `sans` (IP addresses or DNS names) signed by `ca`.
fn serving_cert(dir: &Path, ca: &CertPair, file_stem: &str, sans: &[&str]) -> Result<CertPair> {
    let alt_names = sans
        .iter()
        .map(|san| {
            if san.parse::<std::net::IpAddr>().is_ok() {
                format!("IP:{san}")
            } else {
                format!("DNS:{san}")
            }
        })
        .collect::<Vec<_>>()
        .join(", ");
    let extensions = format!(
        "basicConstraints = critical, CA:FALSE\nkeyUsage = critical, digitalSignature, \
         keyEncipherment\nextendedKeyUsage = serverAuth\nauthorityKeyIdentifier = keyid\n\
         subjectAltName = {alt_names}\n"
    );
    let cn = sans.first().copied().unwrap_or(file_stem);
    sign(
        dir,
        ca,
        file_stem,
        &subject(cn, &[]),
        "server",
        Some(&extensions),
    )
}

/// `/O=group.../CN=name`; Kubernetes reads the user from CN and groups from O.
fn subject(common_name: &str, organizations: &[&str]) -> String {
    let escape = |value: &str| value.replace('\\', "\\\\").replace('/', "\\/");
    let mut subject = String::new();
    for organization in organizations {
        subject.push_str("/O=");
        subject.push_str(&escape(organization));
    }
    subject.push_str("/CN=");
    subject.push_str(&escape(common_name));
    subject
}

fn self_signed_ca(dir: &Path, file_stem: &str, common_name: &str) -> Result<CertPair> {
    let pair = new_key(dir, file_stem)?;
    let config = dir.join("openssl.cnf");
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        path_str(&pair.key)?,
        "-subj",
        &subject(common_name, &[]),
        "-days",
        CERT_DAYS,
        "-config",
        path_str(&config)?,
        "-extensions",
        "ca",
        "-out",
        path_str(&pair.cert)?,
    ])?;
    Ok(pair)
}

/// Signs a new key for `subject` with `ca`, using section `section` of the openssl config or
/// `extensions` (a whole extension file) when given.
fn sign(
    dir: &Path,
    ca: &CertPair,
    file_stem: &str,
    subject: &str,
    section: &str,
    extensions: Option<&str>,
) -> Result<CertPair> {
    let pair = new_key(dir, file_stem)?;
    let csr = dir.join(format!("{file_stem}.csr"));
    let config = dir.join("openssl.cnf");
    openssl(&[
        "req",
        "-new",
        "-key",
        path_str(&pair.key)?,
        "-subj",
        subject,
        "-config",
        path_str(&config)?,
        "-out",
        path_str(&csr)?,
    ])?;
    let extfile = match extensions {
        Some(text) => {
            let file = dir.join(format!("{file_stem}.ext"));
            fs::write(&file, format!("[{section}]\n{text}"))?;
            file
        }
        None => config,
    };
    let serial = format!(
        "0x{:x}{:08x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |elapsed| elapsed.as_nanos()),
        std::process::id()
    );
    openssl(&[
        "x509",
        "-req",
        "-in",
        path_str(&csr)?,
        "-CA",
        path_str(&ca.cert)?,
        "-CAkey",
        path_str(&ca.key)?,
        "-set_serial",
        &serial,
        "-days",
        CERT_DAYS,
        "-extfile",
        path_str(&extfile)?,
        "-extensions",
        section,
        "-out",
        path_str(&pair.cert)?,
    ])?;
    Ok(pair)
}

/// A P-256 key in `<dir>/<file_stem>.key`; the certificate will go to `<file_stem>.crt`.
fn new_key(dir: &Path, file_stem: &str) -> Result<CertPair> {
    let pair = CertPair {
        cert: dir.join(format!("{file_stem}.crt")),
        key: dir.join(format!("{file_stem}.key")),
    };
    openssl(&[
        "genpkey",
        "-algorithm",
        "EC",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-out",
        path_str(&pair.key)?,
    ])?;
    Ok(pair)
}

fn openssl(args: &[&str]) -> Result<()> {
    let mut command = Command::new("openssl");
    command.args(args);
    run_ok(command, CALL_TIMEOUT)?;
    Ok(())
}

fn path_str(path: &Path) -> Result<&str> {
    path.to_str()
        .with_context(|| format!("{} is not UTF-8", path.display()))
}
