//! The agent's own health, defined once: the readings are a [`podmeter_wire::AgentReply`], which
//! `/v1/agent` serves as it is and the `podmeter_*` health families encode at each scrape
//! (`exporters::metrics::health`). Writers update it in place under the state lock.

use std::path::Path;

use podmeter_common::stat;
use podmeter_wire::{AgentReply, KernelReply};

use crate::kernel::counters::KernelStats;

/// The agent's health readings.
pub type Health = AgentReply;

/// How the programs attach, as `/v1/agent` says it.
const ATTACH_MODE: &str = "cgroup_skb+sock_ops (bpf_link)";

/// The readings of an agent that has just attached: its constant facts, every count at zero.
pub fn attached(
    cgroup_root: &Path,
    ring_capacity_bytes: u64,
    rate_window_seconds: u32,
    route_labels: bool,
) -> Health {
    Health {
        cgroup_root: cgroup_root.display().to_string(),
        attach_mode: ATTACH_MODE.to_owned(),
        ring_capacity_bytes,
        rate_window_seconds,
        route_labels,
        ..Health::default()
    }
}

/// The kernel programs' statistics by name.
pub fn kernel_reply(stats: &KernelStats) -> KernelReply {
    KernelReply {
        events_sent: stats.get(stat::EVENTS_SENT),
        events_dropped: stats.get(stat::EVENTS_DROPPED),
        retransmissions_skipped: stats.get(stat::RETRANSMISSIONS_SKIPPED),
        body_matches_skipped: stats.get(stat::BODY_MATCHES_SKIPPED),
        connections_opened: stats.get(stat::CONNECTIONS_OPENED),
        connections_closed: stats.get(stat::CONNECTIONS_CLOSED),
        counter_map_full: stats.get(stat::COUNTER_MAP_FULL),
        connection_table_full: stats.get(stat::CONNECTION_TABLE_FULL),
        responses_unrecognised: stats.get(stat::RESPONSES_UNRECOGNISED),
        connections_upgraded: stats.get(stat::CONNECTIONS_UPGRADED),
        listener_requests: stats.get(stat::LISTENER_REQUESTS),
        flow_map_full: stats.get(stat::FLOW_MAP_FULL),
        latency_map_full: stats.get(stat::LATENCY_MAP_FULL),
        requests_after_close: stats.get(stat::REQUESTS_AFTER_CLOSE),
    }
}

/// Keeps the evicted-connections estimate monotonic: `opened - closed - tracked` read at slightly
/// different moments can dip by the connections that opened in between.
pub fn evicted(previous: u64, opened: u64, closed: u64, tracked: u64) -> u64 {
    previous.max(opened.saturating_sub(closed).saturating_sub(tracked))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evictions_are_what_neither_closed_nor_stayed() {
        assert_eq!(evicted(0, 100, 60, 30), 10);
        assert_eq!(evicted(10, 101, 60, 32), 10);
        assert_eq!(evicted(0, 5, 9, 0), 0);
    }

    #[test]
    fn every_kernel_statistic_has_its_name() {
        let mut stats = KernelStats::default();
        for (slot, value) in stats.0.iter_mut().zip(1..) {
            *slot = value;
        }
        let k = kernel_reply(&stats);
        let named = [
            k.events_sent,
            k.events_dropped,
            k.retransmissions_skipped,
            k.body_matches_skipped,
            k.connections_opened,
            k.connections_closed,
            k.counter_map_full,
            k.connection_table_full,
            k.responses_unrecognised,
            k.connections_upgraded,
            k.listener_requests,
            k.flow_map_full,
            k.latency_map_full,
            k.requests_after_close,
        ];
        let mut seen = named.to_vec();
        seen.sort_unstable();
        seen.dedup();
        assert_eq!(
            seen.len(),
            named.len(),
            "two names read one slot: {named:?}"
        );
    }
}
