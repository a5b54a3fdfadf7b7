//! What the agent keeps per pod: [`traffic`] exact totals and what events tell, [`rates`]
//! windowed request rates, [`latency`] windowed request durations, [`routes`] bounded route
//! labels, and [`node`] the node's state that keeps them in step.

pub mod latency;
pub mod node;
pub mod rates;
pub mod routes;
pub mod traffic;
