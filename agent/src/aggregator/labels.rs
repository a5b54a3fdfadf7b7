//! Pod labels by namespace and name, from a watch of every Pod: the node agents know pods only
//! by name, and the HPA selects them by label.

use std::{
    collections::{BTreeMap, HashMap},
    sync::{Arc, PoisonError, RwLock},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client, ResourceExt};

use super::watch::{self, Selectors};

/// A pod's labels.
pub type Labels = BTreeMap<String, String>;

/// Labels by `(namespace, name)`.
pub type LabelsByPod = HashMap<(String, String), Labels>;

/// Labels of the pods the cluster has, by `(namespace, name)`.
#[derive(Clone, Debug, Default)]
pub struct PodLabels {
    pods: Arc<RwLock<LabelsByPod>>,
}

impl PodLabels {
    /// The labels of pod `namespace/name`, empty when the cluster has no such pod (yet).
    pub fn get(&self, namespace: &str, name: &str) -> Labels {
        self.pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(namespace.to_owned(), name.to_owned()))
            .cloned()
            .unwrap_or_default()
    }

    /// Replaces every pod's labels.
    pub fn replace(&self, pods: LabelsByPod) {
        *self.pods.write().unwrap_or_else(PoisonError::into_inner) = pods;
    }

    /// Keeps the labels current from a watch of all pods; runs forever.
    pub async fn watch(self, client: Client) {
        let api: Api<Pod> = Api::all(client);
        watch::run(api, Selectors::default(), "pods", |pods| {
            self.replace(
                pods.iter()
                    .map(|pod| {
                        (
                            (pod.namespace().unwrap_or_default(), pod.name_any()),
                            pod.labels().clone(),
                        )
                    })
                    .collect(),
            );
        })
        .await;
    }
}
