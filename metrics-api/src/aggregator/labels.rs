//! Pod labels by namespace and name, from a metadata-only watch of every Pod: the node agents know
//! pods only by name, and the HPA selects them by label.

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::{
    Api, Client,
    core::{PartialObjectMeta, PartialObjectMetaExt as _},
    runtime::{
        reflector::{self, ObjectRef, Store},
        watcher,
    },
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
    /// The metadata of pod `namespace/name` (its labels: [`ResourceExt::labels`]), shared with
    /// the store; `None` when the cluster has no such pod (yet).
    ///
    /// [`ResourceExt::labels`]: kube::ResourceExt::labels
    pub fn pod(
        &self,
        namespace: &str,
        name: &str,
    ) -> Option<std::sync::Arc<PartialObjectMeta<Pod>>> {
        self.pods.get(&ObjectRef::new(name).within(namespace))
    }

    /// These pods' labels, `(namespace, name, labels)`, with no watch: what a cluster of
    /// simulated agents has instead of a kube-apiserver (`cargo xtask bench --only scale`).
    pub fn fixed(pods: impl IntoIterator<Item = (String, String, Labels)>) -> Self {
        let (store, mut writer) = reflector::store();
        for (namespace, name, labels) in pods {
            let pod = ObjectMeta {
                namespace: Some(namespace),
                name: Some(name),
                labels: Some(labels),
                ..ObjectMeta::default()
            }
            .into_response_partial::<Pod>();
            writer.apply_watcher_event(&watcher::Event::Apply(pod));
        }
        Self { pods: store }
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
