//! `podmeter metrics-api`: the aggregated API server in front of the node agents. It finds the
//! agents (`discovery`: an EndpointSlice watch, or a static list), reads every agent's
//! `/v1/pods/inbound` once per collection interval (`collector`, over `agent_client`), drops an
//! agent's pods once it stopped answering for the staleness bound, joins pod labels (`labels`),
//! and serves the result (`served`, pods made only for the namespace a request asks for) through
//! [`crate`] with the request-header CA kept current (`configmap`) and
//! the serving certificate reloaded from its files ([`command`]) or made and kept in a Secret,
//! with the APIServices' caBundle, by `certificates`. The three watches are
//! `podmeter_kube::watch::reflect`.
//! [`standalone`] runs the collector and the routes without a kube-apiserver, for the scale bench.

mod agent_client;
mod certificates;
mod collector;
pub mod command;
mod configmap;
mod discovery;
mod error;
mod labels;
mod served;
pub mod standalone;

pub use error::Error;
