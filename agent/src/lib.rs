//! podmeter's node agent: counts every pod HTTP request exactly once in the kernel and serves
//! per-pod rates, latency and health. The modules follow the data as it flows:
//!
//! ```text
//!  kernel          cgroup_skb + sock_ops programs pair requests with responses; exact
//!    │             per-(cgroup, role, peer) counters, in-flight integral, latency histogram
//!    │             and bytes; events only for route labels          (agent-ebpf, agent-common)
//!    ├─ aggregates ─────────────────────────────────────────────┐
//!    └─ ring buffer ─► events ─► connections (route labels)     │
//!                      decode    pairing for the request line   │
//!                                    │                          │
//!                                    ▼                          ▼
//!                      identity: which pod a cgroup is ─► attribution: the count-once rule
//!                                                               │   (flow of a socket, pod)
//!                                                               ▼
//!                                         books: one book per pod (totals, rates, bytes,
//!                                                concurrency, durations, routes, series)
//!                                                               │
//!                                                               ▼
//!                                         exporters: /v1/pods, /v1/agent, /metrics
//! ```
//!
//! - `kernel` loads and attaches the programs, checks privileges and cgroup2, reads the exact
//!   counters, flow sums and latency histogram, the ring buffer's fill and the connection table,
//!   and pins them in bpffs for the next agent to take over (`pins.rs`);
//! - `events` decodes ring buffer records and drains the ring (on only with route labels);
//! - `connections` pairs each request event with its response event, for the request line's
//!   route and the status code;
//! - `identity` says which pod a cgroup is (Kubernetes API, identity file or directory names);
//! - `attribution` holds the rule that makes each request count once, and books counts and
//!   exchanges to pods;
//! - `books` keeps what is known per pod: exact totals, windowed rates and durations, routes;
//! - `exporters` serve them: the agent API, its authentication and the Prometheus families;
//! - `run.rs` wires it all and [`run`]s until told to stop; at exit `uninstall_check.rs` tells
//!   whether the agent's DaemonSet is gone, and so whether to remove the pins.

mod attribution;
mod books;
mod connections;
mod error;
mod events;
mod exporters;
mod fast_map;
mod health;
mod identity;
mod kernel;
mod run;
mod uninstall_check;

pub use books::{rates::RateWindow, routes::DEFAULT_CAP as DEFAULT_ROUTE_CAP};
pub use error::Error;
pub use exporters::api_auth::ApiAuth;
pub use identity::IdentityKind;
pub use kernel::{
    pins::{PinsError, uninstall},
    programs::MapSizes,
};
pub use run::{Config, run};

/// The userspace pipeline's parts, public only so that `benches/pipeline.rs` measures the code
/// that runs: drain -> pair -> attribute -> book, and a counter read booked.
#[doc(hidden)]
pub mod pipeline {
    pub use crate::{
        books::{
            Books,
            node::{NodeState, Shared},
        },
        connections::pairing::Flows,
        events::{decode::decode, drain::Drain},
        exporters::metrics::{Metrics, health::AgentInfo},
        fast_map::FastMap,
        health::Health,
        identity::PodId,
        kernel::counters::{Deltas, by_pod},
    };
}

/// The parsers of bytes from the network or a caller (ring buffer records, request lines and
/// targets, the API's bearer token), public only for the fuzz targets in `fuzz/`.
#[doc(hidden)]
pub mod fuzzing {
    pub use crate::{
        books::routes::normalise,
        events::decode::{Event, decode, parse_request_line},
        exporters::api_auth::bearer_token,
    };
}
