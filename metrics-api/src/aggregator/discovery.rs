//! Which node agents to collect from: a static list of URLs, plus the ready endpoints of the
//! agents' Service, from a watch of its EndpointSlices (`kubernetes.io/service-name=<name>`).
//!
//! EndpointSlices are `discovery.k8s.io/v1` since Kubernetes 1.21; on older API servers, which
//! serve only `v1beta1`, the same watch runs on `v1beta1` (the fields read here are the same).

use std::{borrow::Cow, collections::BTreeSet};

use k8s_openapi::{
    api::discovery::v1::{Endpoint, EndpointPort, EndpointSlice},
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use kube::{Api, Client, Resource};
use serde::Deserialize;
use tokio::sync::watch as channel;

use podmeter_kube::watch::{self, Watch};

/// The agents' Service and which of its ports serves the agent API.
#[derive(Clone, Debug)]
pub struct AgentService {
    pub namespace: String,
    pub name: String,
    /// The EndpointSlice port name; `None` takes each slice's first port.
    pub port_name: Option<String>,
}

/// The base URLs (`https://ip:port`) of the ready endpoints in `slices`: agents behind a Service
/// authenticate their callers, and so serve TLS only.
pub fn agent_urls<'a>(
    slices: impl IntoIterator<Item = &'a EndpointSlice>,
    port_name: Option<&str>,
) -> BTreeSet<String> {
    let mut urls = BTreeSet::new();
    for slice in slices {
        let ports = slice.ports.as_deref().unwrap_or_default();
        let port = ports
            .iter()
            .find(|p| port_name.is_none_or(|wanted| p.name.as_deref() == Some(wanted)))
            .and_then(|p| p.port);
        let Some(port) = port else { continue };
        let ipv6 = slice.address_type == "IPv6";
        for endpoint in &slice.endpoints {
            let ready = endpoint
                .conditions
                .as_ref()
                .and_then(|c| c.ready)
                .unwrap_or(true);
            if !ready {
                continue;
            }
            for address in &endpoint.addresses {
                urls.insert(if ipv6 {
                    format!("https://[{address}]:{port}")
                } else {
                    format!("https://{address}:{port}")
                });
            }
        }
    }
    urls
}

/// An EndpointSlice as `discovery.k8s.io/v1beta1` serves it (Kubernetes 1.17 to 1.24). Its
/// `topology` map is left out; what [`agent_urls`] reads has the same names and meaning in `v1`.
#[derive(Clone, Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EndpointSliceV1Beta1 {
    pub metadata: ObjectMeta,
    pub address_type: String,
    /// `null` in a slice without endpoints (a 1.20 server writes an empty IPv6 slice so for a
    /// headless Service).
    pub endpoints: Option<Vec<Endpoint>>,
    pub ports: Option<Vec<EndpointPort>>,
}

impl Resource for EndpointSliceV1Beta1 {
    type DynamicType = ();
    type Scope = kube::core::NamespaceResourceScope;

    fn kind(_: &()) -> Cow<'_, str> {
        "EndpointSlice".into()
    }
    fn group(_: &()) -> Cow<'_, str> {
        "discovery.k8s.io".into()
    }
    fn version(_: &()) -> Cow<'_, str> {
        "v1beta1".into()
    }
    fn api_version(_: &()) -> Cow<'_, str> {
        "discovery.k8s.io/v1beta1".into()
    }
    fn plural(_: &()) -> Cow<'_, str> {
        "endpointslices".into()
    }
    fn meta(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn meta_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl From<&EndpointSliceV1Beta1> for EndpointSlice {
    fn from(slice: &EndpointSliceV1Beta1) -> Self {
        EndpointSlice {
            metadata: slice.metadata.clone(),
            address_type: slice.address_type.clone(),
            endpoints: slice.endpoints.clone().unwrap_or_default(),
            ports: slice.ports.clone(),
        }
    }
}

/// Whether the API server serves EndpointSlices in `discovery.k8s.io/v1` (1.21 and later).
async fn serves_v1(client: &Client) -> bool {
    match client.list_api_group_resources("discovery.k8s.io/v1").await {
        Ok(list) => list.resources.iter().any(|r| r.name == "endpointslices"),
        Err(error) => {
            tracing::debug!(%error, "discovery.k8s.io/v1 not served");
            false
        }
    }
}

impl AgentService {
    /// The watch of the Service's EndpointSlices, in either API version.
    fn slices<K>(&self) -> Watch<K>
    where
        K: Resource<DynamicType = ()> + Clone + 'static,
    {
        Watch::new("endpointslices").labels(&format!("kubernetes.io/service-name={}", self.name))
    }

    /// Publishes the Service's agent URLs on `targets` whenever its EndpointSlices change; runs
    /// forever.
    pub async fn watch(self, client: Client, targets: channel::Sender<BTreeSet<String>>) {
        let port_name = self.port_name.clone();
        if serves_v1(&client).await {
            let api: Api<EndpointSlice> = Api::namespaced(client, &self.namespace);
            let watch = self.slices().on_change(move |_, slices| {
                let slices = slices.state();
                let urls = agent_urls(slices.iter().map(AsRef::as_ref), port_name.as_deref());
                publish(&targets, urls);
            });
            // Only the callback reads the store.
            let (_, watching) = watch::reflect(api, watch);
            watching.await;
        } else {
            tracing::info!("the API server serves EndpointSlices as discovery.k8s.io/v1beta1");
            let api: Api<EndpointSliceV1Beta1> = Api::namespaced(client, &self.namespace);
            let watch = self
                .slices::<EndpointSliceV1Beta1>()
                .on_change(move |_, slices| {
                    let slices: Vec<EndpointSlice> =
                        slices.state().iter().map(|s| s.as_ref().into()).collect();
                    publish(&targets, agent_urls(&slices, port_name.as_deref()));
                });
            // Only the callback reads the store.
            let (_, watching) = watch::reflect(api, watch);
            watching.await;
        }
    }
}

/// Sends `urls` on `targets` when they differ from the last ones sent.
fn publish(targets: &channel::Sender<BTreeSet<String>>, urls: BTreeSet<String>) {
    targets.send_if_modified(|current| {
        let changed = *current != urls;
        if changed {
            tracing::info!(agents = urls.len(), "node agents discovered");
            *current = urls;
        }
        changed
    });
}

#[cfg(test)]
mod tests {
    use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort};

    use super::*;

    fn endpoint(address: &str, ready: Option<bool>) -> Endpoint {
        Endpoint {
            addresses: vec![address.into()],
            conditions: Some(EndpointConditions {
                ready,
                ..EndpointConditions::default()
            }),
            ..Endpoint::default()
        }
    }

    fn port(name: &str, port: i32) -> EndpointPort {
        EndpointPort {
            name: Some(name.into()),
            port: Some(port),
            ..EndpointPort::default()
        }
    }

    #[test]
    fn ready_endpoints_on_the_named_port_become_urls() {
        let v4 = EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: vec![
                endpoint("10.0.0.1", Some(true)),
                endpoint("10.0.0.2", Some(false)),
                endpoint("10.0.0.3", None),
            ],
            ports: Some(vec![port("metrics", 9465), port("api", 9464)]),
            ..EndpointSlice::default()
        };
        let v6 = EndpointSlice {
            address_type: "IPv6".into(),
            endpoints: vec![endpoint("fd00::1", Some(true))],
            ports: Some(vec![port("api", 9464)]),
            ..EndpointSlice::default()
        };
        let urls = agent_urls([&v4, &v6], Some("api"));
        assert_eq!(
            urls.into_iter().collect::<Vec<_>>(),
            [
                "https://10.0.0.1:9464",
                "https://10.0.0.3:9464",
                "https://[fd00::1]:9464"
            ]
        );
        // Without a name, each slice's first port.
        let first = agent_urls([&v4], None);
        assert!(first.contains("https://10.0.0.1:9465"), "{first:?}");
        // No such port: nothing.
        assert!(agent_urls([&v4], Some("nope")).is_empty());
    }

    #[test]
    fn a_v1_slice_without_endpoints_reads_as_empty() {
        // Go writes a nil list as `null`; the slice must not fail the whole watch's list.
        let empty: EndpointSlice = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": "podmeter-agent-8v8pb"},
            "addressType": "IPv6", "endpoints": null, "ports": null
        }))
        .expect("an empty v1 slice");
        assert!(agent_urls([&empty], Some("api")).is_empty());
    }

    #[test]
    fn a_v1beta1_slice_reads_like_a_v1_one() {
        // As a 1.20 API server serves it: `topology` instead of `nodeName`, no `zone`.
        let slice: EndpointSliceV1Beta1 = serde_json::from_value(serde_json::json!({
            "apiVersion": "discovery.k8s.io/v1beta1",
            "kind": "EndpointSlice",
            "metadata": {"name": "podmeter-agent-x7k2p", "namespace": "podmeter-system",
                         "labels": {"kubernetes.io/service-name": "podmeter-agent"}},
            "addressType": "IPv4",
            "endpoints": [
                {"addresses": ["10.0.0.1"], "conditions": {"ready": true},
                 "topology": {"kubernetes.io/hostname": "node-1"}},
                {"addresses": ["10.0.0.2"], "conditions": {"ready": false}}
            ],
            "ports": [{"name": "api", "port": 9464, "protocol": "TCP"}]
        }))
        .expect("a v1beta1 slice");
        let urls = agent_urls([&EndpointSlice::from(&slice)], Some("api"));
        assert_eq!(
            urls.into_iter().collect::<Vec<_>>(),
            ["https://10.0.0.1:9464"]
        );
        // The empty IPv6 slice a 1.20 server keeps beside it for a headless Service.
        let empty: EndpointSliceV1Beta1 = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "podmeter-agent-8v8pb"},
            "addressType": "IPv6", "endpoints": null, "ports": null
        }))
        .expect("an empty v1beta1 slice");
        assert!(agent_urls([&EndpointSlice::from(&empty)], Some("api")).is_empty());
        // The path kube builds from the type is the one the 1.20 server serves.
        assert_eq!(
            EndpointSliceV1Beta1::url_path(&(), Some("podmeter-system")),
            "/apis/discovery.k8s.io/v1beta1/namespaces/podmeter-system/endpointslices"
        );
    }
}
