//! podmeter: counts every pod HTTP request exactly once in the kernel and serves per-pod rates.
//!
//! The data path reads kernel -> events -> flows -> pod identity -> dedup -> totals -> api:
//! [`ebpf`] loads and attaches the kernel programs; [`counters`] reads their exact per-cgroup
//! counters; [`events`] decodes the per-request ring buffer records and [`flows`] pairs requests
//! with responses, one ring buffer [`drain`] at a time; [`cgroups`] and [`pods`] say which pod a
//! cgroup or address is; [`dedup`] holds the rule that makes each request count once; [`traffic`]
//! keeps per-pod totals, [`rates`] their sliding-window rates, [`latency`] their request duration
//! quantiles, [`routes`] the bounded route labels and [`metrics`] the Prometheus series; [`node`]
//! keeps those in step; [`api`] serves them; [`agent`] runs it all, reading the ring buffer's fill
//! ([`ring_fill`]) and the connection table's size ([`connection_table`]); [`fast_map`] is the
//! hash map of the per-event path.
//! [`hpa`] models the HorizontalPodAutoscaler's replica decisions for the metrics podmeter
//! serves, and [`recommend`] applies it to live per-pod rates. [`metrics_api`] serves the
//! Kubernetes custom and external metrics APIs (TLS, delegated authentication and authorisation);
//! [`aggregator`] is the `podmeter metrics-api` process that feeds it from every node agent.

pub mod agent;
pub mod api;
pub mod api_auth;
pub mod cgroups;
pub mod connection_table;
pub mod counters;
pub mod dedup;
pub mod drain;
pub mod ebpf;
pub mod error;
pub mod events;
pub mod fast_map;
pub mod flows;
pub mod identity;
pub mod latency;
pub mod metrics;
pub mod node;
pub mod pods;
pub mod preflight;
pub mod rates;
pub mod ring_fill;
pub mod routes;
pub mod traffic;

pub use error::Error;
