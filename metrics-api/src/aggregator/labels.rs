//! Pod labels by namespace and name, from a metadata-only watch of every Pod: the node agents know
//! pods only by name, and the HPA selects them by label.

use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client, ResourceExt as _,
    core::PartialObjectMeta,
    runtime::reflector::{self, ObjectRef, Store},
};
use podmeter_kube::watch::{self, Watch};

/// A pod's labels.
pub type Labels = std::collections::BTreeMap<String, String>;

/// Labels of the pods the cluster has: a reflector store of their metadata, looked up by
/// `(namespace, name)`; each watch event updates one entry.
#[derive(Clone)]
pub struct PodLabels {
    pods: Store<PartialObjectMeta<Pod>>,
}

impl Default for PodLabels {
    /// No pods, and no watch to fill the store (tests, or until [`PodLabels::watched`]).
    fn default() -> Self {
        let (pods, _writer) = reflector::store();
        Self { pods }
    }
}

impl std::fmt::Debug for PodLabels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PodLabels")
            .field("pods", &self.pods.len())
            .finish()
    }
}

impl PodLabels {
    /// The labels of pod `namespace/name`, empty when the cluster has no such pod (yet).
    pub fn get(&self, namespace: &str, name: &str) -> Labels {
        self.pods
            .get(&ObjectRef::new(name).within(namespace))
            .map(|pod| pod.labels().clone())
            .unwrap_or_default()
    }

    /// The labels of every pod, and the watch that keeps them current (run it as a task; it runs
    /// forever, relisting with backoff after errors). Only metadata is watched, and of it only
    /// what `get` needs is kept.
    pub fn watched(client: Client) -> (Self, impl Future<Output = ()> + Send + 'static) {
        // Metadata-only lists and watches: the pods' specs and statuses are never transferred.
        let api: Api<PartialObjectMeta<Pod>> = Api::all(client);
        let watch = Watch::new("pods").trim(|pod: &mut PartialObjectMeta<Pod>| {
            pod.metadata.annotations = None;
        });
        let (pods, watch) = watch::reflect(api, watch);
        (Self { pods }, watch)
    }
}
