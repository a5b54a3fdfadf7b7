//! `podmeter metrics-api`: the aggregated API server in front of the node agents. It finds the
//! agents ([`discovery`]: an EndpointSlice watch, or a static list), reads every agent's
//! `/v1/pods` once per collection interval ([`collector`]), drops an agent's pods once it stopped
//! answering for the staleness bound, joins pod labels ([`labels`]), and serves the result through
//! [`crate`] with the request-header CA kept current ([`configmap`]) and the serving
//! certificate reloaded from its files ([`command`]). `podmeter_kube::watch` is the list-then-watch loop
//! the three watches share.

pub mod collector;
pub mod command;
pub mod configmap;
pub mod discovery;
mod error;
pub mod labels;

pub use error::Error;
