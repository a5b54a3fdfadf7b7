//! The metrics API's setup errors: certificates, keys, the request-header configuration.
//! (Request failures are [`super::status::StatusError`] replies, not errors of this type.)

use std::path::PathBuf;

use rustls::pki_types::pem;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },

    #[error("{what}: no PEM certificate found")]
    NoCertificate { what: &'static str },

    #[error("{what}: malformed PEM: {source}")]
    Pem {
        what: &'static str,
        source: pem::Error,
    },

    #[error("{what}: unusable private key, or one that does not match the certificate: {source}")]
    Key {
        what: &'static str,
        source: rustls::Error,
    },

    #[error("the request-header CA bundle is unusable: {source}")]
    ClientCa {
        source: rustls::server::VerifierBuilderError,
    },

    #[error("{name:?} is not a valid HTTP header name (request-header {setting})")]
    HeaderName { setting: &'static str, name: String },

    #[error(
        "ConfigMap key {key} must hold a JSON list of strings (as kube-apiserver writes it): {source}"
    )]
    ConfigMapList {
        key: &'static str,
        source: serde_json::Error,
    },

    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
}
