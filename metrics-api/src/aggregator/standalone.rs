//! The collector and the API routes without a kube-apiserver, as `cargo xtask bench --only
//! scale` runs them against simulated node agents: the agents are a fixed list, the pod labels
//! are given instead of watched, and the routes are served in plain HTTP without authentication
//! (in `podmeter metrics-api` the SubjectAccessReview cache answers an HPA's repeated requests
//! from memory, and kube-apiserver keeps its TLS connections open).

use std::{collections::BTreeSet, future::Future, net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::sync::watch as channel;

pub use super::collector::Timing;
use super::{
    Error,
    collector::{self, AgentClient},
    labels::{Labels, PodLabels},
    served::Collected,
};
use crate::{self as api, ApiOptions, Readiness, podmeter_metrics};

/// What to collect from and where to serve.
#[derive(Clone, Debug)]
pub struct Standalone {
    /// Agent base URLs, read every `timing.interval`.
    pub agents: Vec<String>,
    /// Bearer token file for the agents, read at every collection as in the real process.
    pub agent_token_file: Option<PathBuf>,
    pub timing: Timing,
    /// Where the plain-HTTP API listens.
    pub listen: SocketAddr,
}

/// How often and how patiently the agents are read, as `podmeter metrics-api`'s defaults.
pub fn default_timing() -> Timing {
    Timing {
        interval: std::time::Duration::from_secs(1),
        timeout: std::time::Duration::from_secs(1),
        staleness: std::time::Duration::from_secs(5),
    }
}

impl Standalone {
    /// Runs on a runtime like `podmeter metrics-api`'s (two workers) until `shutdown`
    /// completes; `on_listening` gets the bound address.
    pub fn run(
        self,
        pods: impl IntoIterator<Item = (String, String, Labels)>,
        shutdown: impl Future<Output = ()> + Send + 'static,
        on_listening: impl FnOnce(SocketAddr),
    ) -> Result<(), Error> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(Error::Runtime)?;
        let labels = PodLabels::fixed(pods);
        runtime.block_on(async {
            let agents = AgentClient::new(self.timing.timeout).map_err(Error::AgentTls)?;
            let source = Arc::new(Collected::new(podmeter_metrics()));
            // No discovery: the fixed list is every agent.
            let (_targets, discovered) = channel::channel(BTreeSet::new());
            let readiness = Readiness::starting();
            let collecting = tokio::spawn(collector::run(
                agents,
                source.clone(),
                collector::Targets {
                    fixed: self.agents,
                    discovered,
                },
                labels,
                self.timing,
                self.agent_token_file,
                readiness.clone(),
            ));
            let app = api::router(
                source,
                ApiOptions {
                    readiness,
                    ..ApiOptions::default()
                },
            );
            let listener = tokio::net::TcpListener::bind(self.listen)
                .await
                .map_err(|source| Error::Bind {
                    addr: self.listen,
                    source,
                })?;
            on_listening(listener.local_addr().map_err(Error::Serve)?);
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(shutdown)
                .await;
            collecting.abort();
            served.map_err(Error::Serve)
        })
    }
}
