//! `GET /v1/agent`: the agent's own health, from the kernel statistics and the userspace
//! pipeline. The same numbers are the `podmeter_*` health families of `/metrics`.

use serde::{Deserialize, Serialize};

/// The whole answer.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct AgentReply {
    pub cgroup_root: String,
    pub uptime_seconds: f64,
    pub attach_mode: String,
    pub kernel: KernelReply,
    pub events_received: u64,
    pub events_malformed: u64,
    pub request_lines_invalid: u64,
    pub unpaired_requests: u64,
    pub orphan_responses: u64,
    pub open_requests: u64,
    pub counter_entries: u64,
    pub counter_entries_removed: u64,
    /// Entries in the kernel's latency histogram at the latest read.
    #[serde(default)]
    pub latency_buckets: u64,
    /// Reads of the kernel's flow sums skipped because a CPU's copy was taken in the middle of
    /// an update (the next read covers their interval).
    #[serde(default)]
    pub flow_sums_torn: u64,
    /// Size of the ring buffer's data area.
    pub ring_capacity_bytes: u64,
    /// Bytes written to the ring buffer and not yet read, just before the latest drain.
    pub ring_used_bytes: u64,
    /// Entries in the kernel's connection table at the latest count.
    pub connections_tracked: u64,
    /// Connections the full table evicted, derived as opened - closed - tracked.
    pub connections_evicted: u64,
    /// Pods removed after the grace period.
    pub pods_removed: u64,
    pub rate_window_seconds: u32,
    pub route_labels: bool,
    pub routes_folded: u64,
}

/// The kernel programs' own statistics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KernelReply {
    pub events_sent: u64,
    pub events_dropped: u64,
    pub retransmissions_skipped: u64,
    pub body_matches_skipped: u64,
    pub connections_opened: u64,
    pub connections_closed: u64,
    pub counter_map_full: u64,
    pub connection_table_full: u64,
    pub responses_unrecognised: u64,
    pub connections_upgraded: u64,
    pub listener_requests: u64,
    /// Flow-sum updates lost because the flow map was full.
    #[serde(default)]
    pub flow_map_full: u64,
    /// Latency-histogram updates lost because the histogram map was full.
    #[serde(default)]
    pub latency_map_full: u64,
    /// Requests not counted because they arrived after the answering side's FIN.
    #[serde(default)]
    pub requests_after_close: u64,
}
