//! Starting the real kube-scheduler beside the controllers ([`ControlPlaneOptions::scheduler`]),
//! so that pods are placed on a [`crate::node::RealNode`] the way a cluster places them.
//!
//! [`ControlPlaneOptions::scheduler`]: super::ControlPlaneOptions::scheduler

use std::process::Command;

use anyhow::Result;

use super::{
    ControlPlane,
    api::{Auth, write_kubeconfig},
    binaries::Binaries,
    start::spawn_logged,
};
use crate::process::ChildGuard;

impl ControlPlane {
    /// Runs kube-scheduler as `system:kube-scheduler` (bound by the apiserver's bootstrap RBAC
    /// policy), without leader election and without serving anything.
    pub(super) fn start_scheduler(&self, binaries: &Binaries) -> Result<ChildGuard> {
        let cert =
            self.pki
                .client_cert(self.dir.path(), "scheduler", "system:kube-scheduler", &[])?;
        let kubeconfig = write_kubeconfig(
            self.dir.path(),
            "scheduler",
            &self.server,
            &self.pki.ca.cert,
            &Auth::Cert(cert),
        )?;
        let mut scheduler = Command::new(&binaries.scheduler);
        scheduler
            .arg(format!("--kubeconfig={}", kubeconfig.display()))
            .arg("--leader-elect=false")
            // No serving at all: nothing scrapes it, and ports stay free.
            .arg("--port=0")
            .arg("--secure-port=0")
            .arg("--v=2");
        spawn_logged(scheduler, "kube-scheduler", self.dir.path())
    }
}
