//! Where the simulated cluster's things are: each node agent's loopback address, and each pod's
//! namespace, name and app label. Pods of one app (100 of them, what one HPA scales) are spread
//! over the nodes, ten apps to a namespace, as Deployments are.

use std::{
    collections::BTreeMap,
    net::{Ipv4Addr, SocketAddr},
};

/// Pods one HPA selects.
pub const PODS_PER_APP: usize = 100;
/// Apps (and so HPAs) in one namespace.
const APPS_PER_NAMESPACE: usize = 10;
/// The port every simulated agent listens on, each on its own loopback address.
const AGENT_PORT: u16 = 9464;

/// N nodes of P pods each.
#[derive(Clone, Copy, Debug)]
pub struct Layout {
    pub nodes: usize,
    pub pods: usize,
}

/// One pod's identity.
pub struct PodName {
    pub namespace: String,
    pub name: String,
    pub app: usize,
}

impl Layout {
    /// Apps of [`PODS_PER_APP`] pods each.
    pub fn apps(self) -> usize {
        (self.nodes * self.pods / PODS_PER_APP).max(1)
    }

    /// Node `node`'s agent: `127.42.x.y:9464`, nothing outside 127.0.0.0/8.
    pub fn agent_addr(node: usize) -> SocketAddr {
        let [x, y] = u16::try_from(node + 1)
            .expect("under 65,535 simulated nodes")
            .to_be_bytes();
        SocketAddr::from((Ipv4Addr::new(127, 42, x, y), AGENT_PORT))
    }

    pub fn agent_url(node: usize) -> String {
        format!("https://{}", Self::agent_addr(node))
    }

    pub fn agent_urls(self) -> Vec<String> {
        (0..self.nodes).map(Self::agent_url).collect()
    }

    pub fn namespace(app: usize) -> String {
        format!("ns-{}", app / APPS_PER_NAMESPACE)
    }

    pub fn app_label(app: usize) -> String {
        format!("app-{app}")
    }

    /// The `slot`th pod of node `node`.
    pub fn pod(self, node: usize, slot: usize) -> PodName {
        let index = node * self.pods + slot;
        let app = index % self.apps();
        PodName {
            namespace: Self::namespace(app),
            name: format!("app-{app}-{index}"),
            app,
        }
    }

    /// Every pod with its labels, as the metrics API's pod watch would know them.
    pub fn labelled_pods(self) -> impl Iterator<Item = (String, String, BTreeMap<String, String>)> {
        (0..self.nodes).flat_map(move |node| {
            (0..self.pods).map(move |slot| {
                let pod = self.pod(node, slot);
                let labels = BTreeMap::from([
                    ("app".to_owned(), Self::app_label(pod.app)),
                    ("pod-template-hash".to_owned(), "5d8f7c9b4".to_owned()),
                ]);
                (pod.namespace, pod.name, labels)
            })
        })
    }
}
