//! Debian's containerd with a config, root, state, socket and runc root of its own under the
//! node's directory, its CRI plugin set up for this machine (see /work/shared/design/real-node.md):
//! `restrict_oom_score_adj` (root here lacks CAP_SYS_RESOURCE), a local sandbox image, our CNI
//! directory, network namespaces mounted under its state directory instead of /var/run/netns.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result};

use crate::{
    control_plane::{ProcessExited, wait_until},
    process::{ChildGuard, run, run_ok},
};

/// The namespace the CRI plugin keeps Kubernetes' images and containers in.
pub const K8S_NAMESPACE: &str = "k8s.io";
const CTR_TIMEOUT: Duration = Duration::from_secs(60);
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running containerd; dropping it stops the daemon (not its shims: see
/// [`Containerd::remove_all_containers`]).
#[derive(Debug)]
pub struct Containerd {
    process: ChildGuard,
    socket: PathBuf,
    dir: PathBuf,
}

impl Containerd {
    /// Writes `<dir>/config.toml` and starts containerd; returns once its socket answers.
    pub fn start(dir: &Path, cni_conf_dir: &Path, sandbox_image: &str) -> Result<Self> {
        std::fs::create_dir_all(dir)?;
        let socket = dir.join("containerd.sock");
        let config = config(dir, &socket, cni_conf_dir, sandbox_image);
        let config_path = dir.join("config.toml");
        std::fs::write(&config_path, config)?;
        let log = File::create(dir.join("containerd.log"))?;
        let mut command = Command::new("containerd");
        command
            .arg("--config")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        let mut process = ChildGuard::spawn(command, "containerd")?;
        let mut this = wait_until(START_TIMEOUT, "containerd to answer on its socket", || {
            if let Some(status) = process.try_wait()? {
                return Err(ProcessExited {
                    component: "containerd",
                    status,
                    log_tail: String::new(),
                }
                .into());
            }
            Ok(socket.exists().then_some(()))
        })
        .map(|()| Self {
            process,
            socket,
            dir: dir.to_owned(),
        })
        .with_context(|| {
            format!(
                "containerd log:\n{}",
                super::log_tail(&dir.join("containerd.log"), 30)
            )
        })?;
        wait_until(START_TIMEOUT, "containerd's CRI plugin", || {
            this.check_alive()?;
            // `TYPE ID PLATFORMS STATUS`: the CRI plugin is `io.containerd.grpc.v1 cri ... ok`.
            let plugins = this.ctr(&["plugins", "ls"])?;
            let cri_ok = plugins.lines().any(|line| {
                let fields: Vec<&str> = line.split_whitespace().collect();
                fields.first() == Some(&"io.containerd.grpc.v1")
                    && fields.get(1) == Some(&"cri")
                    && fields.last() == Some(&"ok")
            });
            Ok(cri_ok.then_some(()))
        })?;
        Ok(this)
    }

    /// `unix://` URL of the socket, for the kubelet's `--container-runtime-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.join("containerd.log")
    }

    pub fn check_alive(&mut self) -> Result<()> {
        if let Some(status) = self.process.try_wait()? {
            return Err(ProcessExited {
                component: "containerd",
                status,
                log_tail: super::log_tail(&self.log_path(), 30),
            }
            .into());
        }
        Ok(())
    }

    /// `ctr --address <socket> -n k8s.io ARGS`; fails unless it exits 0; returns its stdout.
    pub fn ctr(&self, args: &[&str]) -> Result<String> {
        let mut command = Command::new("ctr");
        command
            .arg("--address")
            .arg(&self.socket)
            .args(["--namespace", K8S_NAMESPACE])
            .args(args);
        Ok(run_ok(command, CTR_TIMEOUT)?.stdout)
    }

    /// Imports an OCI archive into the CRI plugin's namespace, under the name it carries.
    pub fn import(&self, archive: &Path) -> Result<()> {
        let archive = archive.to_str().context("non-UTF-8 path")?;
        self.ctr(&["images", "import", archive])?;
        Ok(())
    }

    /// The image names the CRI plugin can use.
    pub fn image_names(&self) -> Result<Vec<String>> {
        Ok(self
            .ctr(&["images", "ls", "-q"])?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// IDs of all containers (pod sandboxes included).
    pub fn container_ids(&self) -> Result<Vec<String>> {
        Ok(self
            .ctr(&["containers", "ls", "-q"])?
            .lines()
            .map(str::to_owned)
            .collect())
    }

    /// Kills and removes every task and container, so that every shim exits. The kubelet should
    /// have done it; this is the fallback when it did not (a failed test). Best effort.
    pub fn remove_all_containers(&self) -> Vec<String> {
        let mut errors = Vec::new();
        let ids = match self.container_ids() {
            Ok(ids) => ids,
            Err(error) => return vec![format!("listing containers: {error:#}")],
        };
        for id in &ids {
            // A container without a task fails `tasks rm`: that is fine.
            let mut command = Command::new("ctr");
            command.arg("--address").arg(&self.socket).args([
                "--namespace",
                K8S_NAMESPACE,
                "tasks",
                "rm",
                "--force",
                id,
            ]);
            let _ = run(command, CTR_TIMEOUT);
            if let Err(error) = self.ctr(&["containers", "rm", id]) {
                errors.push(format!("removing container {id}: {error:#}"));
            }
        }
        errors
    }

    /// SIGTERM, then SIGKILL after 10 s.
    pub fn stop(mut self) -> Result<()> {
        self.process.terminate(Duration::from_secs(10))?;
        Ok(())
    }
}

fn config(dir: &Path, socket: &Path, cni_conf_dir: &Path, sandbox_image: &str) -> String {
    let dir = dir.display();
    let socket = socket.display();
    let cni_conf_dir = cni_conf_dir.display();
    format!(
        r#"# Written by podmeter-tests (tests/src/node/containerd.rs).
version = 2
root = "{dir}/root"
state = "{dir}/state"
# Snapshotters that cannot work here only log errors; tracing is not configured.
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.tracing.processor.v1.otlp", "io.containerd.internal.v1.tracing"]

[grpc]
  address = "{socket}"
[ttrpc]
  address = "{socket}.ttrpc"

# Its default is /opt/containerd.
[plugins."io.containerd.internal.v1.opt"]
  path = "{dir}/opt"

[plugins."io.containerd.grpc.v1.cri"]
  # Built and imported by the harness: nothing is pulled.
  sandbox_image = "{sandbox_image}"
  # Root lacks CAP_SYS_RESOURCE here: without this the kubelet's oom_score_adj of -998 for the
  # sandbox makes runc fail ("can't get final child's PID from pipe: EOF").
  restrict_oom_score_adj = true
  # No AppArmor in this kernel; the pods run unconfined either way.
  disable_apparmor = true
  # Pod network namespaces under {dir}/state, not in the machine's /var/run/netns.
  netns_mounts_under_state_dir = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni_conf_dir}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        # SystemdCgroup = false: the kubelet's cgroupfs driver. runc's state of our own.
        Root = "{dir}/runc"
"#
    )
}
