//! Pod identity from the Kubernetes API: a reflector store of this node's pods (field selector
//! `spec.nodeName=<node>`). A cgroup names its pod through the pod UID in its path (the kubelet's
//! pod cgroup names carry it), and the UID names the pod in the store.
//!
//! Churn: a pod is its UID, so a new pod never inherits an old pod's numbers (its cgroups are
//! new cgroup ids too), and deleted pods leave the store at once. hostNetwork pods have cgroups
//! like any other pod and are found the same way.

use std::{path::Path, sync::Arc, time::Duration};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, Resource as _, ResourceExt as _, runtime::reflector::Store};
use podmeter_kube::watch::{self, Change, Watch};
use tracing::{debug, info};

use super::{PodId, Workload, cgroup_path};

/// The annotation holding a static pod's config hash, which is the UID in its cgroup name (its
/// mirror pod in the API has a UID of its own).
const CONFIG_HASH: &str = "kubernetes.io/config.hash";
/// Large and never needed here.
const LAST_APPLIED: &str = "kubectl.kubernetes.io/last-applied-configuration";
/// The label a Deployment's ReplicaSet name ends with (`<deployment>-<hash>`).
const POD_TEMPLATE_HASH: &str = "pod-template-hash";

/// Why the Kubernetes identity is unavailable.
#[derive(Debug, thiserror::Error)]
pub(crate) enum KubernetesError {
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
pub(crate) struct KubernetesIdentity {
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
fn node_selector(node: &str) -> String {
    format!("spec.nodeName={node}")
}

impl KubernetesIdentity {
    /// Connects with `kubeconfig`, else the in-cluster configuration or `$KUBECONFIG`, and starts
    /// watching.
    pub(crate) async fn connect(
        node: &str,
        kubeconfig: Option<&Path>,
    ) -> Result<Self, KubernetesError> {
        let client = podmeter_kube::client(kubeconfig)
            .await
            .map_err(|e| KubernetesError::Client(e.to_string()))?;
        Ok(Self::start(client, node))
    }

    /// Starts watching `node`'s pods through `client`. Must run inside a tokio runtime.
    pub(crate) fn start(client: Client, node: &str) -> Self {
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
    pub(crate) async fn ready(&self, within: Duration) -> Result<(), KubernetesError> {
        let not_ready = || KubernetesError::NotReady {
            node: self.node.clone(),
            secs: within.as_secs(),
        };
        match tokio::time::timeout(within, self.store.wait_until_ready()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) | Err(_) => Err(not_ready()),
        }
    }

    /// How many pods the store holds.
    pub(crate) fn len(&self) -> usize {
        self.store.len()
    }

    /// The pod whose cgroup `rel` is or is inside (the UID in the path).
    pub(crate) fn pod_of_cgroup(&self, rel: &Path) -> Option<PodId> {
        self.pod_of_uid(&cgroup_path::pod_uid(rel)?)
    }

    /// The pod with this UID (or, for static pods, this config hash).
    pub(crate) fn pod_of_uid(&self, uid: &str) -> Option<PodId> {
        self.find_uid(uid).map(|pod| pod_id(&pod))
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
fn pod_id(pod: &Pod) -> PodId {
    PodId {
        namespace: pod.namespace().unwrap_or_else(|| "default".to_owned()),
        name: pod.name_any(),
        uid: pod.meta().uid.clone(),
        workload: workload(pod),
    }
}

/// The workload that owns a pod, from its controller owner reference (or its only owner): a
/// ReplicaSet stands for its Deployment when its name is `<deployment>-<pod-template-hash>`.
fn workload(pod: &Pod) -> Option<Workload> {
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

#[cfg(test)]
mod tests;
