//! The node agent API's wire types, written once: the agent serialises them, and the metrics
//! API's collector, `podmeter top`, `podmeter recommend` and the tests deserialise them.
//!
//! - [`pods`]: `GET /v1/pods`, per-pod exact totals, rates and duration quantiles;
//! - [`inbound`]: `GET /v1/pods/inbound`, only the inbound values the metrics API serves;
//! - [`agent`]: `GET /v1/agent`, the agent's own health.

pub mod agent;
pub mod inbound;
pub mod pods;

pub use agent::{AgentReply, KernelReply};
pub use inbound::{InboundPod, InboundReply};
pub use pods::{
    DurationSummary, FlowReply, FlowTotals, Observed, ObservedReply, PodReply, PodsReply,
    StatusCounts, UnattributedReply, Workload,
};
