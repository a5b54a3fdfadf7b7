//! How the books leave the agent: [`api`] serves `/v1/pods`, `/v1/agent`, `/metrics` and
//! `/healthz`, [`api_auth`] guards it, and [`metrics`] holds the Prometheus families.

pub mod api;
pub mod api_auth;
pub mod metrics;
