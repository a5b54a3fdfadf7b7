//! podmeter's Kubernetes plumbing, used by the node agent (pod identity, API auth) and the
//! metrics API (agent discovery, pod labels, request-header CA): [`client`] builds the one API
//! client, [`watch::reflect`] is the one list-then-watch loop reflected into a store.

pub mod watch;

mod client;

pub use client::{ClientError, client};
