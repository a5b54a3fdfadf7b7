//! The request-header configuration kube-apiserver publishes in ConfigMap
//! `kube-system/extension-apiserver-authentication` (the front-proxy CA and allowed names),
//! read once at start and kept current by a watch.

use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Api, Client};

use podmeter_kube::watch::{self, Watch};

use super::Error;
use crate::{RequestHeaderAuth, RequestHeaderConfig};

pub const NAMESPACE: &str = "kube-system";
pub const NAME: &str = "extension-apiserver-authentication";

fn api(client: Client) -> Api<ConfigMap> {
    Api::namespaced(client, NAMESPACE)
}

/// The current configuration; fails if the ConfigMap is missing or unusable.
pub async fn read(client: Client) -> Result<RequestHeaderConfig, Error> {
    let map = api(client).get(NAME).await.map_err(|source| Error::Kube {
        what: "reading ConfigMap kube-system/extension-apiserver-authentication",
        source,
    })?;
    RequestHeaderConfig::from_configmap_data(&map.data.unwrap_or_default())
        .map_err(Error::RequestHeader)
}

/// Applies every change of the ConfigMap to `auth`; runs forever. An unusable new version is
/// logged and the previous configuration stays.
pub async fn watch(client: Client, auth: RequestHeaderAuth) {
    let mut last = None;
    let watch = Watch::<ConfigMap>::new("configmap")
        .fields(&format!("metadata.name={NAME}"))
        .on_change(move |_, maps| {
            let Some(map) = maps.state().into_iter().next() else {
                tracing::warn!(
                    "ConfigMap {NAMESPACE}/{NAME} is gone; keeping the last configuration"
                );
                return;
            };
            let data = map.data.clone().unwrap_or_default();
            if last.as_ref() == Some(&data) {
                return;
            }
            match RequestHeaderConfig::from_configmap_data(&data).and_then(|c| auth.update(c)) {
                Ok(()) => {
                    tracing::info!("request-header configuration updated");
                    last = Some(data);
                }
                Err(error) => tracing::warn!(%error, "unusable request-header configuration"),
            }
        });
    // Only the callback reads the store.
    let (_, watching) = watch::reflect(api(client), watch);
    watching.await;
}
