//! podmeter's node agent: counts every pod HTTP request exactly once in the kernel and serves
//! per-pod rates, latency and health. The modules follow the data as it flows:
//!
//! ```text
//!  kernel          cgroup_skb + sock_ops programs; exact per-(cgroup, role, peer) counters,
//!    │             per-request events in a ring buffer              (agent-ebpf, agent-common)
//!    ├─ counters ───────────────────────────────────────────────┐
//!    └─ ring buffer ─► events ─► connections                    │
//!                      decode    request/response pairing       │
//!                                    │                          │
//!                                    ▼                          ▼
//!                      identity: which pod a cgroup is ─► attribution: the count-once rule
//!                                                               │   (flow of a socket, pod)
//!                                                               ▼
//!                                         books: one book per pod (totals, rates, durations,
//!                                                routes, series)
//!                                                               │
//!                                                               ▼
//!                                         exporters: /v1/pods, /v1/agent, /metrics
//! ```
//!
//! - [`kernel`] loads and attaches the programs, checks privileges and cgroup2, and reads the
//!   exact counters, the ring buffer's fill and the connection table;
//! - [`events`] decodes ring buffer records and drains the ring;
//! - [`connections`] pairs each request with its response on its connection;
//! - [`identity`] says which pod a cgroup is (Kubernetes API, identity file or directory names);
//! - [`attribution`] holds the rule that makes each request count once, and books counts and
//!   exchanges to pods;
//! - [`books`] keeps what is known per pod: exact totals, windowed rates and durations, routes;
//! - [`exporters`] serve them: the agent API, its authentication and the Prometheus families;
//! - [`run`] wires it all and runs until told to stop.

pub mod attribution;
pub mod books;
pub mod connections;
pub mod error;
pub mod events;
pub mod exporters;
pub mod fast_map;
pub mod health;
pub mod identity;
pub mod kernel;
pub mod run;

pub use error::Error;
