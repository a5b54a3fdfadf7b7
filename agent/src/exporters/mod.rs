//! How the books leave the agent: [`api`] serves `/v1/pods`, `/v1/agent`, `/metrics` and
//! `/healthz`, [`api_auth`] guards it, [`api_tls`] serves it over TLS when guarded, and
//! [`metrics`] holds the Prometheus families.

pub(crate) mod api;
pub(crate) mod api_auth;
pub(crate) mod api_tls;
pub(crate) mod metrics;
