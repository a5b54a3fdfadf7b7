//! podmeter: counts every pod HTTP request exactly once in the kernel and serves per-pod rates.
//!
//! The data path reads kernel -> events -> flows -> pod identity -> dedup -> totals -> api:
//! [`ebpf`] loads and attaches the kernel programs; [`counters`] reads their exact per-cgroup
//! counters; [`events`] decodes the per-request ring buffer records and [`flows`] pairs requests
//! with responses; [`cgroups`] and [`pods`] say which pod a cgroup or address is; [`dedup`] holds
//! the rule that makes each request count once; [`traffic`] keeps per-pod totals; [`api`] serves
//! them; [`agent`] runs it all. [`hpa`] models the HorizontalPodAutoscaler's replica decisions for
//! the metrics podmeter serves.

pub mod agent;
pub mod api;
pub mod cgroups;
pub mod counters;
pub mod dedup;
pub mod ebpf;
pub mod error;
pub mod events;
pub mod flows;
pub mod hpa;
pub mod pods;
pub mod preflight;
pub mod top;
pub mod traffic;

pub use error::Error;
