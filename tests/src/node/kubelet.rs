//! The real kubelet (v1.20.2) on containerd's CRI: its KubeletConfiguration, its flags (every
//! path it would otherwise put under /var/lib/kubelet or /usr/libexec points into the node's
//! directory), and its log.

use std::{
    fs::File,
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{control_plane::ProcessExited, process::ChildGuard};

/// What the kubelet needs to know.
pub struct KubeletSettings<'a> {
    pub binary: &'a Path,
    /// Its root directory; config, certificates and plugin dirs go there too.
    pub dir: &'a Path,
    pub node_name: &'a str,
    pub node_ip: &'a str,
    /// A kubeconfig with a client certificate for `system:node:<node_name>`.
    pub kubeconfig: &'a Path,
    pub client_ca: &'a Path,
    pub runtime_endpoint: &'a str,
    /// The cgroup that holds `kubepods` in every hierarchy (created by the caller).
    pub cgroup_root: &'a str,
    pub sandbox_image: &'a str,
}

/// A running kubelet; dropping it stops it.
#[derive(Debug)]
pub struct Kubelet {
    process: ChildGuard,
    log: PathBuf,
}

impl Kubelet {
    pub fn start(settings: &KubeletSettings<'_>) -> Result<Self> {
        let dir = settings.dir;
        std::fs::create_dir_all(dir)?;
        let port = free_port()?;
        let config = dir.join("kubelet-config.yaml");
        std::fs::write(&config, configuration(settings, port))?;
        let log = dir.join("kubelet.log");
        let log_file = File::create(&log).with_context(|| format!("creating {}", log.display()))?;
        let mut command = Command::new(settings.binary);
        command
            .arg(format!("--config={}", config.display()))
            .arg(format!("--kubeconfig={}", settings.kubeconfig.display()))
            .arg("--container-runtime=remote")
            .arg(format!(
                "--container-runtime-endpoint={}",
                settings.runtime_endpoint
            ))
            .arg(format!(
                "--image-service-endpoint={}",
                settings.runtime_endpoint
            ))
            .arg("--runtime-request-timeout=2m")
            .arg(format!(
                "--pod-infra-container-image={}",
                settings.sandbox_image
            ))
            .arg(format!("--hostname-override={}", settings.node_name))
            .arg(format!("--node-ip={}", settings.node_ip))
            .arg(format!("--root-dir={}", dir.join("root").display()))
            .arg(format!("--cert-dir={}", dir.join("pki").display()))
            .arg(format!(
                "--seccomp-profile-root={}",
                dir.join("seccomp").display()
            ))
            .arg(format!(
                "--volume-plugin-dir={}",
                dir.join("volume-plugins").display()
            ))
            .arg("--v=2")
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file);
        let process = ChildGuard::spawn(command, "kubelet")?;
        Ok(Self { process, log })
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Fails with a [`ProcessExited`] error (which ends a `wait_until` at once) if it exited.
    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.process.try_wait()? {
            return Err(ProcessExited {
                component: "kubelet",
                status,
                log_tail: super::log_tail(&self.log, 40),
            }
            .into());
        }
        Ok(())
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(mut self) -> Result<()> {
        self.process.terminate(Duration::from_secs(10))?;
        Ok(())
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")
        .context("binding a free loopback port")?
        .local_addr()?
        .port())
}

/// The KubeletConfiguration; each setting that differs from the default says why.
fn configuration(settings: &KubeletSettings<'_>, port: u16) -> String {
    format!(
        "\
apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
# containerd's runc runs with SystemdCgroup = false, and PID 1 here is not systemd.
cgroupDriver: cgroupfs
# kubepods goes below a cgroup named for this run, in every hierarchy (the next run removes a
# killed run's by that name); below it, the layout is the usual cgroupfs one.
cgroupRoot: /{cgroup_root}
cgroupsPerQOS: true
failSwapOn: false
# Serves (logs, exec) on loopback only, authenticated by client certificates of the cluster CA.
address: 127.0.0.1
port: {port}
readOnlyPort: 0
healthzPort: 0
authentication:
  anonymous: {{enabled: false}}
  webhook: {{enabled: false}}
  x509: {{clientCAFile: {client_ca}}}
authorization:
  mode: AlwaysAllow
# No iptables chains of its own in the machine's tables (nothing here needs them).
makeIPTablesUtilChains: false
# Test machines run with little free disk and memory; imported images must never be collected.
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
maxPods: 16
# Pods use dnsPolicy Default: the host's resolv.conf.
resolvConf: /etc/resolv.conf
# Quicker status updates make tests quicker.
nodeStatusUpdateFrequency: 2s
syncFrequency: 10s
",
        cgroup_root = settings.cgroup_root,
        client_ca = settings.client_ca.display(),
    )
}
