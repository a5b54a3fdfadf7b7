//! Starting the control plane: etcd, then kube-apiserver (on loopback, or on the pod-reachable
//! address of a dummy link, see `host_address.rs`), then kube-controller-manager, each with its
//! flags, its log file and a readiness wait ([`ControlPlane::start_with`]).

use std::{
    fs::File,
    net::TcpListener,
    path::Path,
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use super::{
    CALL_TIMEOUT, CONTROLLERS, ControlPlane, ControlPlaneOptions, FRONT_PROXY_CLIENT_CN,
    ProcessExited, SERVICE_ACCOUNT_ISSUER, SERVICE_CIDR,
    api::{Auth, Credentials, curl, write_kubeconfig},
    binaries::Binaries,
    host_address::HostAddress,
    log_tail,
    pki::Pki,
    wait_until,
};
use crate::{
    process::{ChildGuard, run},
    stale,
    tempdir::TempDir,
};

impl ControlPlane {
    /// Starts a control plane with [`ControlPlaneOptions::default`].
    pub fn start() -> Result<Self> {
        Self::start_with(ControlPlaneOptions::default())
    }

    /// Starts etcd, kube-apiserver and kube-controller-manager and returns once the apiserver's
    /// `/readyz` is ok and the controllers gave the `default` ServiceAccount its token, so that
    /// pods can be created.
    pub fn start_with(options: ControlPlaneOptions) -> Result<Self> {
        stale::remove_leftovers_of_dead_runs();
        // Locating may build the binaries once (minutes): the start deadline begins after it.
        let binaries = Binaries::locate()?;
        let started = Instant::now();
        let deadline = started + options.start_timeout;
        let dir = crate::tempdir::new("k8s")?;
        // Dropped after the processes (declared before them) when the start fails.
        let host_address = options
            .pod_reachable
            .then(HostAddress::create)
            .transpose()
            .context("creating the apiserver's pod-reachable address")?;
        let api_address = host_address
            .as_ref()
            .map_or_else(|| "127.0.0.1".to_owned(), |host| host.address().to_string());
        let pki = Pki::generate(
            dir.path(),
            host_address.is_some().then_some(api_address.as_str()),
        )
        .context("generating certificates with openssl")?;
        let [etcd_port, etcd_peer_port, api_port] = free_ports()?;
        let server = format!("https://{api_address}:{api_port}");
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
            .arg(format!("--bind-address={api_address}"))
            .arg(format!("--advertise-address={api_address}"))
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
            // Loopback cannot be an Endpoints address, and without pods nothing needs the
            // `kubernetes` endpoints; pods reach the pod-reachable address through them.
            .arg(if host_address.is_some() {
                "--endpoint-reconciler-type=lease"
            } else {
                "--endpoint-reconciler-type=none"
            })
            .arg(format!(
                "--service-account-key-file={}",
                pki.sa_pub.display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                pki.sa_key.display()
            ))
            .arg(format!("--service-account-issuer={SERVICE_ACCOUNT_ISSUER}"))
            // The audiences the apiserver itself accepts (the default, spelt out): a token
            // requested for another audience (the node agent's) authenticates only where a
            // TokenReview names that audience.
            .arg(format!("--api-audiences={SERVICE_ACCOUNT_ISSUER}"))
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
            scheduler: None,
            controller_manager,
            apiserver,
            etcd,
            host_address,
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
        if let Some(address) = plane.apiserver_address() {
            let endpoint = format!("{address}:{api_port}");
            wait_until(
                remaining(deadline),
                "the apiserver to publish its address as the `kubernetes` Endpoints",
                || {
                    plane.check_alive()?;
                    let response = plane.request(
                        "GET",
                        "/api/v1/namespaces/default/endpoints/kubernetes",
                        None,
                    )?;
                    if !response.is_success() {
                        return Ok(None);
                    }
                    let endpoints = response.json()?;
                    let subset = &endpoints["subsets"][0];
                    let published = format!(
                        "{}:{}",
                        subset["addresses"][0]["ip"].as_str().unwrap_or_default(),
                        subset["ports"][0]["port"]
                    );
                    Ok((published == endpoint).then_some(()))
                },
            )?;
        }
        if options.scheduler {
            plane.scheduler = Some(plane.start_scheduler(&binaries)?);
        }
        plane.startup = started.elapsed();
        Ok(plane)
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
pub(super) fn spawn_logged(
    mut command: Command,
    component: &str,
    dir: &Path,
) -> Result<ChildGuard> {
    let log_path = dir.join(format!("{component}.log"));
    let log =
        File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    command
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    ChildGuard::spawn(command, component)
}

fn remaining(deadline: Instant) -> Duration {
    deadline.saturating_duration_since(Instant::now())
}

/// A Go duration flag value, in milliseconds so that sub-second periods survive.
fn go_duration(duration: Duration) -> String {
    format!("{}ms", duration.as_millis())
}
