//! The Kubernetes custom metrics API (`custom.metrics.k8s.io` v1beta1 and v1beta2) and external
//! metrics API (`external.metrics.k8s.io` v1beta1) that the HorizontalPodAutoscaler reads, served
//! as an aggregated API server: wire formats faithful to the Go types, `metav1.Status` errors,
//! discovery, TLS, request-header authentication and SubjectAccessReview authorisation.
//!
//! The `podmeter metrics-api` process wires it like this (the collector keeps `source` current,
//! a ConfigMap watch keeps `request_headers` current):
//!
//! ```ignore
//! use std::sync::Arc;
//! use podmeter_metrics_api::{self as api, MemorySource, RequestHeaderAuth, RequestHeaderConfig};
//!
//! let source = Arc::new(MemorySource::new(api::podmeter_metrics()));
//! let request_headers = RequestHeaderAuth::new(RequestHeaderConfig::from_configmap_data(&data)?)?;
//! let authorizer = api::SubjectAccessReviewAuthorizer::new(kube::Client::try_default().await?,
//!     api::ReviewCache::default());
//! let app = api::protect(
//!     api::router(source.clone(), api::ApiOptions::default()),
//!     request_headers.authenticator(),
//!     Arc::new(authorizer),
//! );
//! let certificate = api::ServingCertificate::from_files(&cert_path, &key_path)?;
//! let tls = api::server_config(&certificate)?;
//! api::serve(tokio::net::TcpListener::bind("0.0.0.0:6443").await?, tls, app, shutdown).await?;
//! ```
//!
//! Files by what they own: [`selector`] label selectors, [`quantity`] Quantity strings,
//! [`types`] wire types, `source` the data trait, `values` the answers, `discovery` the
//! discovery documents, `routes` the HTTP routes, `status` error replies, `uri` path decoding,
//! `request_info` authorisation attributes, `request_header` authentication, `authorizer`
//! SubjectAccessReviews, `auth` the filter chain, `tls` serving, `error` setup errors.

pub mod aggregator;
mod auth;
mod authorizer;
mod discovery;
mod error;
pub mod quantity;
mod request_header;
mod request_info;
mod routes;
pub mod selector;
mod source;
mod status;
mod tls;
pub mod types;
mod uri;
mod values;

#[cfg(test)]
mod tests;

pub use auth::{ALWAYS_ALLOW_GROUPS, ALWAYS_ALLOW_PATHS, protect};
pub use authorizer::{
    AuthorizeError, Authorizer, ReviewCache, SubjectAccessReviewAuthorizer, review_spec,
};
pub use discovery::{CUSTOM_METRICS_GROUP, CustomVersion, EXTERNAL_METRICS_GROUP};
pub use error::Error;
pub use quantity::{Quantity, QuantityError};
pub use request_header::{
    ALL_AUTHENTICATED, AuthenticationError, PeerCertificates, RequestHeaderAuth,
    RequestHeaderAuthenticator, RequestHeaderConfig, UserInfo,
};
pub use request_info::{Attributes, NonResourceAttributes, ResourceAttributes, attributes};
pub use routes::{ApiOptions, router};
pub use selector::{Selector, SelectorError};
pub use source::{
    HTTP_REQUEST_DURATION_SECONDS_P95, HTTP_REQUESTS_PER_SECOND, MemorySource, MetricInfo,
    MetricsSource, PodSample, Sample, podmeter_metrics,
};
pub use status::StatusError;
pub use tls::{ServingCertificate, crypto_provider, serve, server_config};
