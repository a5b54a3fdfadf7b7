//! Tests across the module's files: the shared fixture and test PKI, the filter chain without
//! TLS, the SubjectAccessReview authoriser against a fake kube-apiserver, and the server over
//! real TLS with real clients (tokio-rustls + hyper, and the system `curl`).

mod auth;
pub(crate) mod fixture;
pub(crate) mod pki;
mod sar;
mod tls;
