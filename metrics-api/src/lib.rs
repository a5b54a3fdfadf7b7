//! The Kubernetes custom metrics API (`custom.metrics.k8s.io` v1beta1 and v1beta2) and external
//! metrics API (`external.metrics.k8s.io` v1beta1) that the HorizontalPodAutoscaler reads, served
//! as an aggregated API server: wire formats faithful to the Go types, `metav1.Status` errors,
//! discovery, TLS, request-header authentication and SubjectAccessReview authorisation.
//!
//! Outside this crate only the process is used: [`aggregator::command`] (`podmeter
//! metrics-api`'s flags and `run_args`), [`aggregator::standalone`] (the scale bench) and
//! [`Quantity`] (tests read served values with it); [`MemorySource`] is a source of values set by
//! hand (the route tests). `aggregator/command.rs` wires the rest: the collector's snapshot, the
//! `router` behind `protect` (request-header authentication, SubjectAccessReviews), `serve`d
//! over TLS.
//!
//! Files by what they own: `selector` label selectors, `quantity` Quantity strings, `types` wire
//! types, `source` the data trait, `values` the answers, `discovery` the discovery documents,
//! `routes` the HTTP routes, `status` error replies, `uri` path decoding, `request_info`
//! authorisation attributes, `request_header` authentication, `authorizer` SubjectAccessReviews,
//! `auth` the filter chain, `tls` serving, `error` setup errors; [`aggregator`] the process.

pub mod aggregator;
mod auth;
mod authorizer;
mod discovery;
mod error;
mod quantity;
mod readiness;
mod request_header;
mod request_info;
mod routes;
mod selector;
mod source;
mod status;
mod tls;
mod types;
mod uri;
mod values;

#[cfg(test)]
mod tests;

pub use error::Error;
pub use quantity::{Quantity, QuantityError};
pub use source::MemorySource;

// The server's parts the `aggregator` process wires together.
pub(crate) use auth::protect;
pub(crate) use authorizer::{ReviewCache, SubjectAccessReviewAuthorizer};
pub(crate) use readiness::Readiness;
pub(crate) use request_header::{RequestHeaderAuth, RequestHeaderConfig};
pub(crate) use routes::{ApiOptions, router};
pub(crate) use source::{
    HTTP_REQUEST_BYTES_PER_SECOND, HTTP_REQUEST_DURATION_SECONDS_P95, HTTP_REQUESTS_CONCURRENCY,
    HTTP_REQUESTS_PER_SECOND, PodSample, Sample, podmeter_metrics,
};
pub(crate) use tls::{ServingCertificate, serve, server_config};

/// The parsers of what callers send (paths, queries, label selectors, Quantities, front-proxy
/// headers and certificates), public only for the fuzz targets in `fuzz/`.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::{
        request_header::{common_name, parse_certificates, user_from_headers},
        request_info::attributes,
        selector::Selector,
        uri::{decode_path, query_param, segments},
    };
}
