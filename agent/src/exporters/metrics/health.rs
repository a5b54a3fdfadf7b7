//! The agent's own health: what the kernel side did and lost, the event pipeline, the kernel
//! tables, and how the agent is built and attached.

use std::sync::atomic::Ordering;

use podmeter_common::stat;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram, info::Info},
    registry::{Registry, Unit},
};

use super::labels::{
    AttachLabels, BuildLabels, KernelMap, MapLabels, ParseFailure, ParseFailureLabels, SkipLabels,
    SkipReason,
};
use crate::health::Health;

/// Buckets of the ring buffer fill ratio.
pub const FILL_BUCKETS: [f64; 8] = [0.01, 0.05, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0];

/// Constant facts exported as info metrics.
pub struct AgentInfo {
    pub version: String,
    pub programs: String,
    pub link: String,
    pub cgroup_root: String,
    pub rate_window_secs: u32,
    pub ring_capacity_bytes: u64,
    /// Whether the ring buffer's producer and consumer positions can be read; the fill metrics
    /// are exported only then.
    pub ring_positions: bool,
}

/// The agent's health families, registered under `podmeter_`.
pub struct HealthMetrics {
    /// `events_sent_total`: events the kernel wrote to the ring buffer.
    pub events_sent: Counter,
    /// `events_dropped_total`: events lost because the ring buffer was full (counts stay exact).
    pub events_dropped: Counter,
    /// `events_received_total`: events the agent read from the ring buffer.
    pub events_received: Counter,
    /// `parse_failures_total{kind}`: records, request lines and status lines not understood.
    pub parse_failures: Family<ParseFailureLabels, Counter>,
    /// `unpaired_requests_total`: request events whose response event never came.
    pub unpaired_requests: Counter,
    /// `orphan_responses_total`: response events without a request event.
    pub orphan_responses: Counter,
    /// `open_requests`: request events waiting for their response event.
    pub open_requests: Gauge,
    /// `ring_buffer_used_bytes`: bytes written but not yet read, just before the latest drain.
    pub ring_buffer_used: Gauge,
    /// `ring_buffer_fill_ratio`: used / capacity, observed before every drain.
    pub ring_buffer_fill: Histogram,
    /// `connections_tracked`: entries in the kernel's connection table at the latest count.
    pub connections_tracked: Gauge,
    /// `connections_opened_total`: connections entered in the table.
    pub connections_opened: Counter,
    /// `connections_closed_total`: connections removed from the table when they closed.
    pub connections_closed: Counter,
    /// `connections_evicted_total`: connections the full table evicted (least recently used
    /// first), derived as opened - closed - tracked.
    pub connections_evicted: Counter,
    /// `connections_upgraded_total`: connections switched to another protocol (101).
    pub connections_upgraded: Counter,
    /// `kernel_map_full_total{map}`: updates that failed because a kernel map was full.
    pub map_full: Family<MapLabels, Counter>,
    /// `segments_skipped_total{reason}`: request-like segments that were not counted.
    pub segments_skipped: Family<SkipLabels, Counter>,
    /// `listener_requests_total`: requests whose segment also completed the handshake.
    pub listener_requests: Counter,
    /// `count_entries`: entries in the kernel's counter map.
    pub counter_entries: Gauge,
    /// `count_entries_removed_total`: counter entries of deleted cgroups removed.
    pub counter_entries_removed: Counter,
    /// `pods`: pods with series.
    pub pods: Gauge,
    /// `pods_removed_total`: pods whose series were removed after the grace period.
    pub pods_removed: Counter,
    /// `routes_folded_total`: requests counted under route `other` because their pod was at its
    /// route cap.
    pub routes_folded: Counter,
}

impl HealthMetrics {
    pub fn register(registry: &mut Registry, info: &AgentInfo) -> Self {
        let m = Self {
            events_sent: Counter::default(),
            events_dropped: Counter::default(),
            events_received: Counter::default(),
            parse_failures: Family::default(),
            unpaired_requests: Counter::default(),
            orphan_responses: Counter::default(),
            open_requests: Gauge::default(),
            ring_buffer_used: Gauge::default(),
            ring_buffer_fill: Histogram::new(FILL_BUCKETS),
            connections_tracked: Gauge::default(),
            connections_opened: Counter::default(),
            connections_closed: Counter::default(),
            connections_evicted: Counter::default(),
            connections_upgraded: Counter::default(),
            map_full: Family::default(),
            segments_skipped: Family::default(),
            listener_requests: Counter::default(),
            counter_entries: Gauge::default(),
            counter_entries_removed: Counter::default(),
            pods: Gauge::default(),
            pods_removed: Counter::default(),
            routes_folded: Counter::default(),
        };
        registry.register(
            "build",
            "The agent's version",
            Info::new(BuildLabels {
                version: info.version.clone(),
            }),
        );
        registry.register(
            "attach",
            "How the kernel programs are attached, and to which cgroup",
            Info::new(AttachLabels {
                programs: info.programs.clone(),
                link: info.link.clone(),
                cgroup_root: info.cgroup_root.clone(),
            }),
        );
        let window: Gauge = Gauge::default();
        window.set(i64::from(info.rate_window_secs));
        registry.register_with_unit(
            "rate_window",
            "Length of the sliding window of the requests_per_second gauges",
            Unit::Seconds,
            window,
        );
        let capacity: Gauge = Gauge::default();
        capacity.set(i64::try_from(info.ring_capacity_bytes).unwrap_or(i64::MAX));
        registry.register_with_unit(
            "ring_buffer_capacity",
            "Size of the kernel ring buffer that carries request and response events",
            Unit::Bytes,
            capacity,
        );
        if info.ring_positions {
            register_ring_fill(registry, &m);
        }
        for (name, help, counter) in [
            (
                "events_sent",
                "Events the kernel wrote to the ring buffer",
                &m.events_sent,
            ),
            (
                "events_dropped",
                "Events lost because the ring buffer was full; request counts stay exact, the method, route and latency breakdown misses them",
                &m.events_dropped,
            ),
            (
                "events_received",
                "Events the agent read from the ring buffer",
                &m.events_received,
            ),
            (
                "unpaired_requests",
                "Request events whose response event never came (lost, or the tracking table was full)",
                &m.unpaired_requests,
            ),
            (
                "orphan_responses",
                "Response events without a request event to pair with",
                &m.orphan_responses,
            ),
            (
                "connections_opened",
                "Connections entered in the kernel's connection table",
                &m.connections_opened,
            ),
            (
                "connections_closed",
                "Connections removed from the kernel's connection table when they closed",
                &m.connections_closed,
            ),
            (
                "connections_evicted",
                "Connections evicted from the full kernel connection table (least recently used first), derived as opened - closed - tracked at each count",
                &m.connections_evicted,
            ),
            (
                "connections_upgraded",
                "Connections switched to another protocol (101 Switching Protocols) and no longer parsed",
                &m.connections_upgraded,
            ),
            (
                "listener_requests",
                "Requests whose first segment also completed the TCP handshake (its final ACK was lost), counted at the listening socket",
                &m.listener_requests,
            ),
            (
                "count_entries_removed",
                "Entries of deleted cgroups removed from the kernel's exact count map after their counts were read",
                &m.counter_entries_removed,
            ),
            (
                "pods_removed",
                "Pods whose series were removed after their cgroups were gone for the grace period",
                &m.pods_removed,
            ),
            (
                "routes_folded",
                "Requests counted under route other because their pod had reached its route cap",
                &m.routes_folded,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        registry.register(
            "parse_failures",
            "Things the agent or kernel could not parse: event (a malformed ring buffer record), request_line (not a valid HTTP/1.x request line; the request still counts), response_status (an unrecognised status line; the exchange ends as other)",
            m.parse_failures.clone(),
        );
        registry.register(
            "kernel_map_full",
            "Kernel map updates that failed because the map was full: counters (requests lost from the counts) or connections (connections not parsed)",
            m.map_full.clone(),
        );
        registry.register(
            "segments_skipped",
            "Request-like segments the kernel did not count: retransmission (already counted) or awaiting_response (a request body or a pipelined request)",
            m.segments_skipped.clone(),
        );
        for (name, help, gauge) in [
            (
                "open_requests",
                "Request events waiting for their response event",
                &m.open_requests,
            ),
            (
                "connections_tracked",
                "Entries in the kernel's connection table at the latest count (every 5 s)",
                &m.connections_tracked,
            ),
            (
                "count_entries",
                "Entries in the kernel's exact count map",
                &m.counter_entries,
            ),
            ("pods", "Pods with series", &m.pods),
        ] {
            registry.register(name, help, gauge.clone());
        }
        m
    }

    /// Copies the latest health readings into the families (at every scrape).
    pub fn update(&self, h: &Health, pods: usize, routes_folded: u64) {
        let k = &h.kernel;
        mirror(&self.events_sent, k.get(stat::EVENTS_SENT));
        mirror(&self.events_dropped, k.get(stat::EVENTS_DROPPED));
        mirror(&self.events_received, h.events_received);
        for (kind, value) in [
            (ParseFailure::Event, h.events_malformed),
            (ParseFailure::RequestLine, h.request_lines_invalid),
            (
                ParseFailure::ResponseStatus,
                k.get(stat::RESPONSES_UNRECOGNISED),
            ),
        ] {
            mirror(
                &self
                    .parse_failures
                    .get_or_create_owned(&ParseFailureLabels { kind }),
                value,
            );
        }
        mirror(&self.unpaired_requests, h.unpaired_requests);
        mirror(&self.orphan_responses, h.orphan_responses);
        set(&self.open_requests, h.open_requests);
        set(&self.ring_buffer_used, h.ring_used_bytes);
        set(&self.connections_tracked, h.connections_tracked);
        mirror(&self.connections_opened, k.get(stat::CONNECTIONS_OPENED));
        mirror(&self.connections_closed, k.get(stat::CONNECTIONS_CLOSED));
        mirror(&self.connections_evicted, h.connections_evicted);
        mirror(
            &self.connections_upgraded,
            k.get(stat::CONNECTIONS_UPGRADED),
        );
        for (map, value) in [
            (KernelMap::Counters, k.get(stat::COUNTER_MAP_FULL)),
            (KernelMap::Connections, k.get(stat::CONNECTION_TABLE_FULL)),
        ] {
            mirror(
                &self.map_full.get_or_create_owned(&MapLabels { map }),
                value,
            );
        }
        for (reason, value) in [
            (
                SkipReason::Retransmission,
                k.get(stat::RETRANSMISSIONS_SKIPPED),
            ),
            (
                SkipReason::AwaitingResponse,
                k.get(stat::BODY_MATCHES_SKIPPED),
            ),
        ] {
            mirror(
                &self
                    .segments_skipped
                    .get_or_create_owned(&SkipLabels { reason }),
                value,
            );
        }
        mirror(&self.listener_requests, k.get(stat::LISTENER_REQUESTS));
        set(&self.counter_entries, h.counter_entries);
        mirror(&self.counter_entries_removed, h.counter_entries_removed);
        set(&self.pods, pods as u64);
        mirror(&self.pods_removed, h.pods_removed);
        mirror(&self.routes_folded, routes_folded);
    }
}

fn register_ring_fill(registry: &mut Registry, m: &HealthMetrics) {
    registry.register_with_unit(
        "ring_buffer_used",
        "Bytes of events written to the ring buffer but not yet read, just before the latest drain",
        Unit::Bytes,
        m.ring_buffer_used.clone(),
    );
    registry.register_with_unit(
        "ring_buffer_fill",
        "Fraction of the ring buffer in use just before each drain; at 1 events are dropped",
        Unit::Other("ratio".to_owned()),
        m.ring_buffer_fill.clone(),
    );
}

/// Makes a counter show the value of a monotonic counter kept elsewhere (the kernel's, or the
/// pipeline's own), never letting it go backwards.
fn mirror(counter: &Counter, value: u64) {
    counter.inner().fetch_max(value, Ordering::Relaxed);
}

fn set(gauge: &Gauge, value: u64) {
    gauge.set(i64::try_from(value).unwrap_or(i64::MAX));
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
    fn mirrored_counters_never_go_backwards() {
        let c = Counter::default();
        mirror(&c, 10);
        mirror(&c, 7);
        assert_eq!(c.get(), 10);
        mirror(&c, 12);
        assert_eq!(c.get(), 12);
    }

    #[test]
    fn evictions_are_what_neither_closed_nor_stayed() {
        assert_eq!(evicted(0, 100, 60, 30), 10);
        assert_eq!(evicted(10, 101, 60, 32), 10);
        assert_eq!(evicted(0, 5, 9, 0), 0);
    }
}
