//! Errors of the `metrics-api` process: setting up its Kubernetes client, its listener and its
//! request-header configuration. A failed collection from one agent is not one of them: it is
//! logged, and the agent's pods go stale.

use std::net::SocketAddr;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error(transparent)]
    Client(#[from] podmeter_kube::ClientError),

    #[error("{what}: {source}")]
    Kube {
        what: &'static str,
        source: kube::Error,
    },

    #[error("ConfigMap kube-system/extension-apiserver-authentication: {0}")]
    RequestHeader(#[source] crate::Error),

    #[error(transparent)]
    MetricsApi(#[from] crate::Error),

    #[error("--agent-service must be NAMESPACE/NAME, not {0:?}")]
    ServiceName(String),

    #[error("no node agents to collect from: give --agent URL or --agent-service NAMESPACE/NAME")]
    NoAgents,

    #[error("cannot listen on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },

    #[error("serving: {0}")]
    Serve(#[source] std::io::Error),

    #[error(
        "Secret {namespace}/{name} lacks ca.crt, tls.crt or tls.key (delete it to have a new one made)"
    )]
    CertificateSecret { namespace: String, name: String },

    #[error("making the serving certificate: {0}")]
    Certificate(#[from] rcgen::Error),

    #[error("the agent client's TLS: {0}")]
    AgentTls(#[source] rustls::Error),

    #[error("cannot start the async runtime: {0}")]
    Runtime(#[source] std::io::Error),
}
