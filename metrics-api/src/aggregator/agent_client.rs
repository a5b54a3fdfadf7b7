//! Reading one node agent's `/v1/pods/inbound` (or, from an agent older than it, `/v1/pods`
//! reduced to the same): an async HTTP/1.1 client whose keep-alive connections, and so TLS
//! sessions, are pooled across collections, each read bounded by a timeout. `https://` agents (those that
//! authenticate callers) are read over TLS without verifying their certificate, as
//! metrics-server's `--kubelet-insecure-tls` does: each agent makes its own self-signed one, and
//! what the metrics API sends them is a token bound to the agents' audience and valid for
//! minutes (README, "HTTP API of the agent"). `http://` agents are read in plain text.

use std::{fmt, sync::Arc, time::Duration};

use http::{Request, StatusCode, header};
use http_body_util::{BodyExt as _, Empty, Limited};
use hyper::body::Bytes;
use hyper_rustls::HttpsConnector;
use hyper_util::{
    client::legacy::{self, Client, connect::HttpConnector},
    rt::{TokioExecutor, TokioTimer},
};
use podmeter_wire::{InboundReply, PodsReply};
use rustls::{
    ClientConfig, DigitallySignedStruct, SignatureScheme,
    client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    crypto::WebPkiSupportedAlgorithms,
    pki_types::{CertificateDer, ServerName, UnixTime},
};
use serde::de::DeserializeOwned;

/// A bound on one reply; a node's pods take far less.
const MAX_REPLY_BYTES: usize = 10 * 1024 * 1024;

/// Which answer an agent is read for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Format {
    /// `/v1/pods/inbound`: only what the metrics API serves, about 140 bytes a pod.
    Inbound,
    /// `/v1/pods`, everything, about 1,800 bytes a pod: agents older than `/v1/pods/inbound`.
    Pods,
}

/// The node agents' API, over connections kept alive between collections.
#[derive(Clone, Debug)]
pub(super) struct AgentClient {
    http: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    timeout: Duration,
}

/// Accepts any agent certificate, but still checks that the agent holds its key.
#[derive(Debug)]
struct AnyAgentCertificate {
    algorithms: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for AnyAgentCertificate {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algorithms.supported_schemes()
    }
}

/// TLS 1.2 and 1.3 with ring, any agent certificate, no client certificate.
fn agent_tls() -> Result<ClientConfig, rustls::Error> {
    let provider = crate::tls::crypto_provider();
    let verifier = AnyAgentCertificate {
        algorithms: provider.signature_verification_algorithms,
    };
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

impl AgentClient {
    /// A client that gives each read `timeout` in all (connecting, the request, the reply).
    pub(super) fn new(timeout: Duration) -> Result<Self, rustls::Error> {
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(agent_tls()?)
            .https_or_http()
            .enable_http1()
            .build();
        let http = Client::builder(TokioExecutor::new())
            // Evicts idle connections of agents that went away.
            .pool_timer(TokioTimer::new())
            .build(connector);
        Ok(Self { http, timeout })
    }

    /// The inbound values of `url`'s pods, read in `format`; an agent that answers 404 to
    /// `/v1/pods/inbound` (older than it) is read again at `/v1/pods`. Returns the format that
    /// answered, to ask for next time.
    pub(super) async fn inbound(
        &self,
        url: &str,
        token: Option<&str>,
        format: Format,
    ) -> Result<(InboundReply, Format), FetchError> {
        if format == Format::Inbound {
            match self.get(url, "/v1/pods/inbound", token).await {
                Err(error) if error.is_not_found() => {}
                answer => return answer.map(|reply| (reply, Format::Inbound)),
            }
        }
        let reply = self.pods(url, token).await?;
        Ok((InboundReply::of(&reply), Format::Pods))
    }

    /// `GET {url}/v1/pods`, with `token` as the bearer token when given.
    pub(super) async fn pods(
        &self,
        url: &str,
        token: Option<&str>,
    ) -> Result<PodsReply, FetchError> {
        self.get(url, "/v1/pods", token).await
    }

    /// `GET {url}{path}` as JSON.
    async fn get<T: DeserializeOwned>(
        &self,
        url: &str,
        path: &'static str,
        token: Option<&str>,
    ) -> Result<T, FetchError> {
        let wrap = |failure| FetchError {
            url: url.to_owned(),
            path,
            failure,
        };
        tokio::time::timeout(self.timeout, self.get_json(url, path, token))
            .await
            .map_err(|_| wrap(Failure::Timeout(self.timeout)))?
            .map_err(wrap)
    }

    async fn get_json<T: DeserializeOwned>(
        &self,
        url: &str,
        path: &str,
        token: Option<&str>,
    ) -> Result<T, Failure> {
        let mut request = Request::get(format!("{url}{path}"));
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Empty::new()).map_err(Failure::Request)?;
        let response = self.http.request(request).await.map_err(Failure::Send)?;
        if !response.status().is_success() {
            return Err(Failure::Status(response.status()));
        }
        let body = Limited::new(response.into_body(), MAX_REPLY_BYTES)
            .collect()
            .await
            .map_err(Failure::Body)?
            .to_bytes();
        serde_json::from_slice(&body).map_err(Failure::Json)
    }
}

/// Why one collection from one node agent failed.
#[derive(Debug, thiserror::Error)]
#[error("GET {url}{path}: {failure}")]
pub(super) struct FetchError {
    url: String,
    path: &'static str,
    #[source]
    failure: Failure,
}

impl FetchError {
    /// The agent has no such path.
    fn is_not_found(&self) -> bool {
        matches!(self.failure, Failure::Status(StatusCode::NOT_FOUND))
    }
}

/// What went wrong in one read.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("not a valid request (the agent URL?): {0}")]
    Request(#[source] http::Error),

    // hyper-util's own message names only the kind ("client error (Connect)"), so its causes
    // are part of this one.
    #[error("{}", Causes(.0))]
    Send(legacy::Error),

    #[error("HTTP {0}")]
    Status(StatusCode),

    #[error("reading the reply: {0}")]
    Body(#[source] Box<dyn std::error::Error + Send + Sync>),

    #[error("no reply within {0:?}")]
    Timeout(Duration),

    #[error("not the expected JSON: {0}")]
    Json(#[source] serde_json::Error),
}

/// An error and its causes, `: `-separated.
struct Causes<'a>(&'a dyn std::error::Error);

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut cause = self.0.source();
        while let Some(error) = cause {
            write!(f, ": {error}")?;
            cause = error.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
