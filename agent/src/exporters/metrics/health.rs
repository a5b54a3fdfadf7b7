//! The agent's health families: what the kernel side did and lost, the event pipeline, the
//! kernel tables, and how the agent is built and attached. The readings are `crate::health`'s,
//! encoded at each scrape by [`HealthCollector`]: nothing is mirrored into counters of its own.
//! The ring buffer's fill histogram is the one family observed as it happens.

use std::fmt;

use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric},
    metrics::{
        MetricType,
        counter::ConstCounter,
        gauge::{ConstGauge, Gauge},
        histogram::Histogram,
        info::Info,
    },
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

#[cfg(test)]
impl AgentInfo {
    /// The facts of an agent as tests set it up: version 0.1.0, a 4 MiB ring, `rate_window_secs`.
    pub(crate) fn for_tests(rate_window_secs: u32) -> Self {
        Self {
            version: "0.1.0".to_owned(),
            programs: "cgroup_skb/ingress,cgroup_skb/egress,sock_ops".to_owned(),
            link: "bpf_link".to_owned(),
            cgroup_root: "/sys/fs/cgroup".to_owned(),
            rate_window_secs,
            ring_capacity_bytes: 4 << 20,
            ring_positions: true,
        }
    }
}

/// What a scrape reads: the health readings and the number of pods with series.
#[derive(Clone, Debug, Default)]
pub struct HealthReading {
    pub health: Health,
    /// Pods with series.
    pub pods: u64,
}

type Read = dyn Fn() -> Option<HealthReading> + Send + Sync;

/// Encodes the health families from a fresh reading at each scrape.
pub struct HealthCollector {
    read: Box<Read>,
    /// `ring_buffer_used_bytes` only where the ring's positions can be read.
    ring_positions: bool,
}

impl fmt::Debug for HealthCollector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HealthCollector").finish_non_exhaustive()
    }
}

/// The families observed as they happen (not read from the health readings).
pub struct HealthMetrics {
    /// `ring_buffer_fill_ratio`: used / capacity, observed before every drain.
    pub ring_buffer_fill: Histogram,
}

impl HealthMetrics {
    /// Registers the constant facts and the fill histogram; [`HealthCollector`] the rest, once
    /// the state it reads exists.
    pub fn register(registry: &mut Registry, info: &AgentInfo) -> Self {
        let m = Self {
            ring_buffer_fill: Histogram::new(FILL_BUCKETS),
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
            registry.register_with_unit(
                "ring_buffer_fill",
                "Fraction of the ring buffer in use just before each drain; at 1 events are dropped",
                Unit::Other("ratio".to_owned()),
                m.ring_buffer_fill.clone(),
            );
        }
        m
    }
}

impl HealthCollector {
    /// A collector that calls `read` at each scrape; `None` (the state is gone) encodes nothing.
    pub fn new(
        read: impl Fn() -> Option<HealthReading> + Send + Sync + 'static,
        ring_positions: bool,
    ) -> Self {
        Self {
            read: Box::new(read),
            ring_positions,
        }
    }
}

/// A counter family: name, help, value.
type Row = (&'static str, &'static str, u64);

fn counters(r: &HealthReading) -> [Row; 17] {
    let (h, k) = (&r.health, &r.health.kernel);
    [
        (
            "events_sent",
            "Events the kernel wrote to the ring buffer",
            k.events_sent,
        ),
        (
            "events_dropped",
            "Events lost because the ring buffer was full; request counts stay exact, the method, route and latency breakdown misses them",
            k.events_dropped,
        ),
        (
            "events_received",
            "Events the agent read from the ring buffer",
            h.events_received,
        ),
        (
            "unpaired_requests",
            "Request events whose response event never came (lost, or the tracking table was full)",
            h.unpaired_requests,
        ),
        (
            "orphan_responses",
            "Response events without a request event to pair with",
            h.orphan_responses,
        ),
        (
            "connections_opened",
            "Connections entered in the kernel's connection table",
            k.connections_opened,
        ),
        (
            "connections_closed",
            "Connections removed from the kernel's connection table when they closed",
            k.connections_closed,
        ),
        (
            "connections_evicted",
            "Connections evicted from the full kernel connection table (least recently used first), derived as opened - closed - tracked at each count",
            h.connections_evicted,
        ),
        (
            "connections_upgraded",
            "Connections switched to another protocol (101 Switching Protocols) and no longer parsed",
            k.connections_upgraded,
        ),
        (
            "listener_requests",
            "Requests whose first segment also completed the TCP handshake (its final ACK was lost), counted at the listening socket",
            k.listener_requests,
        ),
        (
            "requests_after_close",
            "Requests that arrived after the answering side's FIN: nothing reads them and the client sends them again, so they are not counted",
            k.requests_after_close,
        ),
        (
            "flow_map_full",
            "Updates of the kernel's per-flow sums (in-flight integral, latency sum, bytes) lost because the map was full",
            k.flow_map_full,
        ),
        (
            "latency_map_full",
            "Updates of the kernel's latency histogram lost because the map was full",
            k.latency_map_full,
        ),
        (
            "flow_sums_torn",
            "Reads of the kernel's flow sums skipped because a CPU's copy was taken mid-update (the next read covers their interval)",
            h.flow_sums_torn,
        ),
        (
            "count_entries_removed",
            "Flows (counters and sums) of deleted cgroups removed from the kernel's flow map after they were read",
            h.counter_entries_removed,
        ),
        (
            "pods_removed",
            "Pods whose series were removed after their cgroups were gone for the grace period",
            h.pods_removed,
        ),
        (
            "routes_folded",
            "Requests counted under route other because their pod had reached its route cap",
            h.routes_folded,
        ),
    ]
}

fn gauges(r: &HealthReading) -> [Row; 5] {
    let h = &r.health;
    [
        (
            "open_requests",
            "Request events waiting for their response event",
            h.open_requests,
        ),
        (
            "connections_tracked",
            "Entries in the kernel's connection table at the latest count (every 5 s)",
            h.connections_tracked,
        ),
        (
            "count_entries",
            "Exact counters that have counted, read from the kernel's flow map",
            h.counter_entries,
        ),
        (
            "latency_buckets",
            "Entries in the kernel's latency histogram at the latest read",
            h.latency_buckets,
        ),
        ("pods", "Pods with series", r.pods),
    ]
}

fn gauge(value: u64) -> ConstGauge {
    ConstGauge::new(i64::try_from(value).unwrap_or(i64::MAX))
}

/// One counter family with a label, a series per label value.
fn labelled<L: EncodeLabelSet>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (L, u64)>,
) -> fmt::Result {
    let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
    for (labels, value) in series {
        ConstCounter::new(value).encode(family.encode_family(&labels)?)?;
    }
    Ok(())
}

impl Collector for HealthCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let Some(r) = (self.read)() else {
            return Ok(());
        };
        for (name, help, value) in counters(&r) {
            ConstCounter::new(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Counter,
            )?)?;
        }
        for (name, help, value) in gauges(&r) {
            gauge(value).encode(encoder.encode_descriptor(
                name,
                help,
                None,
                MetricType::Gauge,
            )?)?;
        }
        if self.ring_positions {
            gauge(r.health.ring_used_bytes).encode(encoder.encode_descriptor(
                "ring_buffer_used",
                "Bytes of events written to the ring buffer but not yet read, just before the latest drain",
                Some(&Unit::Bytes),
                MetricType::Gauge,
            )?)?;
        }
        let k = &r.health.kernel;
        labelled(
            &mut encoder,
            "parse_failures",
            "Things the agent or kernel could not parse: event (a malformed ring buffer record), request_line (not a valid HTTP/1.x request line; the request still counts), response_status (an unrecognised status line; the exchange ends as other)",
            [
                (ParseFailure::Event, r.health.events_malformed),
                (ParseFailure::RequestLine, r.health.request_lines_invalid),
                (ParseFailure::ResponseStatus, k.responses_unrecognised),
            ]
            .map(|(kind, v)| (ParseFailureLabels { kind }, v)),
        )?;
        labelled(
            &mut encoder,
            "kernel_map_full",
            "Kernel map updates that failed because the map was full: counters (requests lost from the counts) or connections (connections not parsed)",
            [
                (KernelMap::Counters, k.counter_map_full),
                (KernelMap::Connections, k.connection_table_full),
            ]
            .map(|(map, v)| (MapLabels { map }, v)),
        )?;
        labelled(
            &mut encoder,
            "segments_skipped",
            "Request-like segments the kernel did not count: retransmission (already counted) or awaiting_response (a request body or a pipelined request)",
            [
                (SkipReason::Retransmission, k.retransmissions_skipped),
                (SkipReason::AwaitingResponse, k.body_matches_skipped),
            ]
            .map(|(reason, v)| (SkipLabels { reason }, v)),
        )
    }
}
