//! Pod identity from the Kubernetes API: a reflector store of this node's pods (field selector
//! `spec.nodeName=<node>`), matched to cgroups by the pod UID in the cgroup path and to
//! addresses by `status.podIPs`.
//!
//! Churn: a pod is its UID, so a new pod never inherits an old pod's numbers (its cgroups are
//! new cgroup ids too). An address names the pod that holds it now: deleted pods leave the store
//! at once, finished pods (Succeeded, Failed) have released theirs, and when a terminating pod
//! and its successor briefly show the same address the successor wins. hostNetwork pods share
//! the node's address, so they are found by cgroup only.

use std::{net::IpAddr, path::Path, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, Resource as _, ResourceExt as _, runtime::reflector::Store};
use podmeter_kube::watch::{self, Change, Watch};
use tracing::{debug, info};

use super::{PodId, PodInfo, Workload, cgroup_path};

/// The annotation holding a static pod's config hash, which is the UID in its cgroup name (its
/// mirror pod in the API has a UID of its own).
const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// Large and never needed here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The label a Deployment's ReplicaSet name ends with (`<deployment>-<hash>`).
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Why the Kubernetes identity is unavailable.
#[derive(Debug, thiserror::Error)]
pub enum KubernetesError {
    #[error(
        "--identity kubernetes needs this node's name: pass --node-name or set NODE_NAME (from the downward API, fieldRef spec.nodeName)"
    )]
    NoNodeName,
    #[error(
        "cannot configure a Kubernetes client: {0} (in a pod, mount the service account token; elsewhere, pass --identity file or --identity cgroup-dirs)"
    )]
    // Not a `source`: kube's message already holds its causes, which would print twice.
    Client(String),
    #[error(
        "the pods of node {node} were not listed within {secs} s: check that the agent's service account may list and watch pods, and that --node-name is this node's name"
    )]
    NotReady { node: String, secs: u64 },
}

/// This node's pods, kept current by a watcher task (stopped when this is dropped).
pub struct KubernetesIdentity {
    store: Store<Pod>,
    node: String,
    watcher: tokio::task::JoinHandle<()>,
}

impl Drop for KubernetesIdentity {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

/// The field selector of one node's pods.
pub fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

impl KubernetesIdentity {
    /// Connects with `kubeconfig`, else the in-cluster configuration or `$KUBECONFIG`, and starts
    /// watching.
    pub async fn connect(node: &str, kubeconfig: Option<&Path>) -> Result<Self, KubernetesError> {
        let client = podmeter_kube::client(kubeconfig)
            .await
            .map_err(|e| KubernetesError::Client(e.to_string()))?;
        Ok(Self::start(client, node))
    }

    /// Starts watching `node`'s pods through `client`. Must run inside a tokio runtime.
    pub fn start(client: Client, node: &str) -> Self {
        let api: Api<Pod> = Api::all(client);
        let node_name = node.to_owned();
        let watch = Watch::new(format!("pods of node {node}"))
            .fields(&node_selector(node))
            .trim(|pod: &mut Pod| {
                pod.annotations_mut().remove(LAST_APPLIED);
            })
            .on_change(move |change, _| match change {
                Change::Applied(pod) => {
                    debug!(pod = %pod_name(pod), uid = ?pod.metadata.uid, "pod applied");
                }
                Change::Deleted(pod) => {
                    debug!(pod = %pod_name(pod), uid = ?pod.metadata.uid, "pod deleted");
                }
                Change::Listed => info!(node = %node_name, "pods of this node listed"),
            });
        let (store, watching) = watch::reflect(api, watch);
        Self {
            store,
            node: node.to_owned(),
            watcher: tokio::spawn(watching),
        }
    }

    /// Waits until the initial list is in the store.
    pub async fn ready(&self, within: Duration) -> Result<(), KubernetesError> {
        let not_ready = || KubernetesError::NotReady {
            node: self.node.clone(),
            secs: within.as_secs(),
        };
        match tokio::time::timeout(within, self.store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(not_ready()),
        }
    }

    /// The node whose pods are watched.
    pub fn node(&self) -> &str {
        &self.node
    }

    /// How many pods the store holds.
    pub fn len(&self) -> usize {
        self.store.len()
    }

    pub fn is_empty(&self) -> bool {
        self.store.is_empty()
    }

    /// The pod whose cgroup `rel` is or is inside (the UID in the path).
    pub fn pod_of_cgroup(&self, rel: &Path) -> Option<PodId> {
        self.pod_of_uid(&cgroup_path::pod_uid(rel)?)
    }

    /// The pod with this UID (or, for static pods, this config hash).
    pub fn pod_of_uid(&self, uid: &str) -> Option<PodId> {
        self.find_uid(uid).map(|pod| pod_id(&pod))
    }

    /// Everything known about the pod with this UID.
    pub fn pod_info(&self, uid: &str) -> Option<PodInfo> {
        self.find_uid(uid).map(|pod| pod_info(&pod))
    }

    /// The pod that holds `ip` now.
    pub fn pod_of_ip(&self, ip: &IpAddr) -> Option<PodId> {
        pod_holding(&self.store.state(), ip).map(pod_id)
    }

    fn find_uid(&self, uid: &str) -> Option<Arc<Pod>> {
        self.store.find(|pod| {
            pod.metadata.uid.as_deref() == Some(uid)
                || pod.annotations().get(CONFIG_HASH).map(String::as_str) == Some(uid)
        })
    }
}

fn pod_name(pod: &Pod) -> String {
    format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any())
}

/// A pod's [`PodId`]: namespace, name, UID and owning workload.
pub fn pod_id(pod: &Pod) -> PodId {
    PodId {
        namespace: pod.namespace().unwrap_or_else(|| "default".to_owned()),
        name: pod.name_any(),
        uid: pod.meta().uid.clone(),
        workload: workload(pod),
    }
}

/// A pod's identity, labels and addresses.
pub fn pod_info(pod: &Pod) -> PodInfo {
    PodInfo {
        id: Some(pod_id(pod)),
        labels: pod.labels().clone(),
        ips: pod_ips(pod),
        host_network: host_network(pod),
    }
}

/// The workload that owns a pod, from its controller owner reference (or its only owner): a
/// ReplicaSet stands for its Deployment when its name is `<deployment>-<pod-template-hash>`.
pub fn workload(pod: &Pod) -> Option<Workload> {
    let owners = pod.owner_references();
    let owner = owners
        .iter()
        .find(|o| o.controller == Some(true))
        .or_else(|| owners.first())?;
    if owner.kind == "ReplicaSet"
        && let Some(hash) = pod.labels().get(POD_TEMPLATE_HASH)
        && let Some(deployment) = owner
            .name
            .strip_suffix(hash.as_str())
            .and_then(|n| n.strip_suffix('-'))
        && !deployment.is_empty()
    {
        return Some(Workload::new("Deployment", deployment));
    }
    Some(Workload::new(owner.kind.clone(), owner.name.clone()))
}

fn host_network(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.host_network)
        .unwrap_or(false)
}

/// The addresses in `status.podIPs` (or the older `status.podIP`).
fn pod_ips(pod: &Pod) -> Vec<IpAddr> {
    let Some(status) = &pod.status else {
        return Vec::new();
    };
    let listed = status.pod_ips.iter().flatten().map(|p| p.ip.as_str());
    let mut ips: Vec<IpAddr> = listed
        .chain(status.pod_ip.as_deref())
        .filter_map(|ip| ip.parse().ok())
        .collect();
    ips.sort_unstable();
    ips.dedup();
    ips
}

/// Finished pods have released their addresses.
fn finished(pod: &Pod) -> bool {
    matches!(
        pod.status.as_ref().and_then(|s| s.phase.as_deref()),
        Some("Succeeded" | "Failed")
    )
}

/// The pod among `pods` that holds `ip`: not hostNetwork, not finished; a pod that is not
/// terminating before one that is, then the newest.
fn pod_holding<'a>(pods: &'a [Arc<Pod>], ip: &IpAddr) -> Option<&'a Pod> {
    pods.iter()
        .map(AsRef::as_ref)
        .filter(|pod| !host_network(pod) && !finished(pod) && pod_ips(pod).contains(ip))
        .max_by_key(|pod| {
            (
                pod.metadata.deletion_timestamp.is_none(),
                pod.metadata.creation_timestamp.clone(),
            )
        })
}

#[cfg(test)]
mod tests;
