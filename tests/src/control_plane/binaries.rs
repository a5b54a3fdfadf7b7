//! Finding the etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet and
//! kube-proxy binaries,
//! and building the Kubernetes ones with `scripts/k8s-control-plane.sh` when the default cache is
//! incomplete.

use std::{
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context, Result, bail};

use super::{BIN_DIR_ENV, ETCD_BIN_ENV, cache_bin_dir};
use crate::process::ChildGuard;

/// How long a first build by the script may take before the guard gives up.
const BUILD_TIMEOUT: Duration = Duration::from_secs(40 * 60);

/// Where the binaries are; runs the build script when the default cache is incomplete.
pub(crate) struct Binaries {
    pub(super) apiserver: PathBuf,
    pub(super) controller_manager: PathBuf,
    pub(super) scheduler: PathBuf,
    /// Not run by the control plane itself: [`crate::node::RealNode`] runs it.
    pub(crate) kubelet: PathBuf,
    /// Likewise run by [`crate::node::RealNode`].
    pub(crate) kube_proxy: PathBuf,
    pub(super) etcd: PathBuf,
}

impl Binaries {
    pub(crate) fn locate() -> Result<Self> {
        let (dir, overridden) = match std::env::var_os(BIN_DIR_ENV) {
            Some(dir) => (PathBuf::from(dir), true),
            None => (cache_bin_dir(), false),
        };
        let apiserver = dir.join("kube-apiserver");
        let controller_manager = dir.join("kube-controller-manager");
        let scheduler = dir.join("kube-scheduler");
        let kubelet = dir.join("kubelet");
        let kube_proxy = dir.join("kube-proxy");
        let etcd_override = std::env::var_os(ETCD_BIN_ENV).map(PathBuf::from);
        let missing = || {
            let etcd = etcd_override.clone().or_else(|| find_on_path("etcd"));
            let mut missing = Vec::new();
            for binary in [
                &apiserver,
                &controller_manager,
                &scheduler,
                &kubelet,
                &kube_proxy,
            ] {
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
                     binaries into {} and installs etcd-server), or fix \
                     {BIN_DIR_ENV}/{ETCD_BIN_ENV}",
                    absent.join(", "),
                    cache_bin_dir().display()
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
            scheduler,
            kubelet,
            kube_proxy,
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
        "podmeter-tests: Kubernetes binaries missing from {}; running {} \
         (the first build takes 5 to 13 minutes)",
        cache_bin_dir().display(),
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
