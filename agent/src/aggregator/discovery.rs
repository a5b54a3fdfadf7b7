//! Which node agents to collect from: a static list of URLs, plus the ready endpoints of the
//! agents' Service, from a watch of its EndpointSlices (`kubernetes.io/service-name=<name>`).

use std::collections::BTreeSet;

use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::{Api, Client};
use tokio::sync::watch as channel;

use super::watch::{self, Selectors};

/// The agents' Service and which of its ports serves the agent API.
#[derive(Clone, Debug)]
pub struct AgentService {
    pub namespace: String,
    pub name: String,
    /// The EndpointSlice port name; `None` takes each slice's first port.
    pub port_name: Option<String>,
}

/// The base URLs (`http://ip:port`) of the ready endpoints in `slices`.
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
                    format!("http://[{address}]:{port}")
                } else {
                    format!("http://{address}:{port}")
                });
            }
        }
    }
    urls
}

impl AgentService {
    /// Publishes the Service's agent URLs on `targets` whenever its EndpointSlices change; runs
    /// forever.
    pub async fn watch(self, client: Client, targets: channel::Sender<BTreeSet<String>>) {
        let api: Api<EndpointSlice> = Api::namespaced(client, &self.namespace);
        let selectors = Selectors {
            labels: Some(format!("kubernetes.io/service-name={}", self.name)),
            fields: None,
        };
        watch::run(api, selectors, "endpointslices", |slices| {
            let urls = agent_urls(slices.iter().map(AsRef::as_ref), self.port_name.as_deref());
            targets.send_if_modified(|current| {
                let changed = *current != urls;
                if changed {
                    tracing::info!(agents = urls.len(), "node agents discovered");
                    current.clone_from(&urls);
                }
                changed
            });
        })
        .await;
    }
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
                "http://10.0.0.1:9464",
                "http://10.0.0.3:9464",
                "http://[fd00::1]:9464"
            ]
        );
        // Without a name, each slice's first port.
        let first = agent_urls([&v4], None);
        assert!(first.contains("http://10.0.0.1:9465"), "{first:?}");
        // No such port: nothing.
        assert!(agent_urls([&v4], Some("nope")).is_empty());
    }
}
