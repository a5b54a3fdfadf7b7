//! Per-pod HTTP metric families of each side (server: requests a pod served; client: requests it
//! sent), and the series handles of one pod ([`PodSeries`]) that its book keeps, so that booking
//! never looks a label set up by string.

use std::sync::atomic::AtomicU64;

use podmeter_common::status_class;
use prometheus_client::{
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::{Registry, Unit},
};

use super::labels::{
    DurationLabels, ObservedLabels, PodLabels, ResponseLabels, RouteLabel, StatusClass,
};
use crate::{
    attribution::flow::Flow,
    books::{latency::midpoint_seconds, routes::Route},
    connections::pairing::Exchange,
    events::decode::Method,
    fast_map::FastMap,
    identity::PodId,
    kernel::{counters::Counts, flow_sums::FlowDelta},
};

/// Upper bounds of the request duration buckets, in seconds: 100 µs to 60 s in 1-2.5-5 steps,
/// fine enough for in-node calls (a few hundred µs) and wide enough for slow uploads.
pub const DURATION_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

fn duration_histogram() -> Histogram {
    Histogram::new(DURATION_BUCKETS)
}

type Rate = Gauge<f64, AtomicU64>;
type DurationFamily = Family<DurationLabels, Histogram, fn() -> Histogram>;

/// Which socket observed the requests.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// The pod's socket accepted the connection: requests it served (inbound).
    Server,
    /// The pod's socket opened the connection: requests it sent (outbound).
    Client,
}

impl Side {
    pub const ALL: [Side; 2] = [Side::Server, Side::Client];

    /// The side a flow is exported under; loopback flows (a pod talking to itself) are not, and
    /// node requests only as the server side's `node_requests_total`.
    pub fn of(flow: Flow) -> Option<Side> {
        match flow {
            Flow::Inbound => Some(Side::Server),
            Flow::Outbound => Some(Side::Client),
            Flow::LoopbackInbound | Flow::LoopbackOutbound | Flow::NodeInbound => None,
        }
    }

    /// The side's place in a per-side array.
    pub fn index(self) -> usize {
        match self {
            Side::Server => 0,
            Side::Client => 1,
        }
    }

    fn prefix(self) -> &'static str {
        match self {
            Self::Server => "http_server",
            Self::Client => "http_client",
        }
    }

    fn verb(self) -> &'static str {
        match self {
            Self::Server => "served by",
            Self::Client => "sent by",
        }
    }
}

/// The families of one side, registered under `podmeter_http_server_` or `podmeter_http_client_`.
#[derive(Clone)]
pub struct HttpFamilies {
    /// `requests_started_total{namespace,pod}`: requests counted exactly by the kernel when it
    /// sees their request line. The rate gauge is fed by these counts.
    pub requests_started: Family<PodLabels, Counter>,
    /// `requests_total{namespace,pod,status_class}`: requests counted exactly by the kernel when
    /// their exchange ends, by how it ended.
    pub requests: Family<ResponseLabels, Counter>,
    /// `requests_per_second{namespace,pod}`: the sliding-window rate of `requests_started`.
    pub requests_per_second: Family<PodLabels, Rate>,
    /// `observed_requests_total{namespace,pod,method,status_class[,route]}`: ended exchanges by
    /// method and status class, exact from the kernel; with route labels on, from the paired
    /// events (which may trail `requests_total` when events are dropped).
    pub observed_requests: Family<ObservedLabels, Counter>,
    /// `request_duration_seconds{namespace,pod}`: time from the request's first segment to the
    /// response's first segment, at the observing socket, for every exchange with a response
    /// (the kernel's histogram).
    pub request_duration: DurationFamily,
    /// `concurrency{namespace,pod}`: average requests in flight over the window.
    pub concurrency: Family<PodLabels, Rate>,
    /// `request_bytes_total{namespace,pod}`: request payload bytes, exact.
    pub request_bytes: Family<PodLabels, Counter>,
    /// `response_bytes_total{namespace,pod}`: response payload bytes, exact.
    pub response_bytes: Family<PodLabels, Counter>,
    /// `node_requests_total{namespace,pod}`, server side only: requests served to the node itself
    /// (`Flow::NodeInbound`), counted exactly by the kernel and left out of every family above.
    pub node_requests: Option<Family<PodLabels, Counter>>,
}

impl HttpFamilies {
    pub fn register(registry: &mut Registry, side: Side, window_secs: u32) -> Self {
        let families = Self {
            requests_started: Family::default(),
            requests: Family::default(),
            requests_per_second: Family::default(),
            observed_requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
            concurrency: Family::default(),
            request_bytes: Family::default(),
            response_bytes: Family::default(),
            node_requests: (side == Side::Server).then(Family::default),
        };
        let verb = side.verb();
        let registry = registry.sub_registry_with_prefix(side.prefix());
        registry.register(
            "requests_started",
            format!(
                "HTTP requests {verb} the pod, counted exactly in the kernel when their request line is seen"
            ),
            families.requests_started.clone(),
        );
        registry.register(
            "requests",
            format!(
                "HTTP requests {verb} the pod, counted exactly in the kernel when the exchange ends, by status class (none: closed without a response)"
            ),
            families.requests.clone(),
        );
        registry.register(
            "requests_per_second",
            format!(
                "HTTP requests {verb} the pod per second over the last {window_secs} s, from the exact kernel counts of requests started"
            ),
            families.requests_per_second.clone(),
        );
        registry.register(
            "observed_requests",
            format!(
                "HTTP requests {verb} the pod by method and status class when their exchange ends, exact from the kernel (with route labels on: from paired events, which trail requests_total when events are dropped)"
            ),
            families.observed_requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            format!(
                "Duration of HTTP requests {verb} the pod, from the first request segment to the first response segment at the pod's socket, for every exchange with a response (paired in the kernel)"
            ),
            Unit::Seconds,
            families.request_duration.clone(),
        );
        registry.register(
            "concurrency",
            format!(
                "Average HTTP requests {verb} the pod in flight over the last {window_secs} s, from the kernel's exact time-integral of requests in flight"
            ),
            families.concurrency.clone(),
        );
        registry.register_with_unit(
            "request",
            format!(
                "Payload bytes (request lines, headers and bodies, each byte once) of HTTP requests {verb} the pod"
            ),
            Unit::Bytes,
            families.request_bytes.clone(),
        );
        registry.register_with_unit(
            "response",
            format!("Payload bytes of the responses to HTTP requests {verb} the pod"),
            Unit::Bytes,
            families.response_bytes.clone(),
        );
        if let Some(node_requests) = &families.node_requests {
            registry.register(
                "node_requests",
                "Requests each pod served to the node itself (kubelet probes, node agents), left out of podmeter_http_server_requests_total and of http_requests_per_second",
                node_requests.clone(),
            );
        }
        families
    }
}

/// The series of one pod on one side, created with its always-present ones (requests started,
/// rate) at its first booking. It lives in the pod's book, so booking never looks a label set up
/// by string and never hashes the pod again.
pub struct PodSeries {
    labels: PodLabels,
    started: Counter,
    per_second: Rate,
    concurrency: Rate,
    request_bytes: Counter,
    response_bytes: Counter,
    ended: [Option<Counter>; status_class::COUNT],
    /// Requests served to the node itself, from the first (server side only).
    node_requests: Option<Counter>,
    /// By (method, status class, route id).
    observed: FastMap<(Method, StatusClass, u16), (ObservedLabels, Counter)>,
    durations: Option<(DurationLabels, Histogram)>,
}

impl PodSeries {
    pub fn new(families: &HttpFamilies, pod: &PodId) -> Self {
        let labels = PodLabels::from(pod);
        Self {
            started: families.requests_started.get_or_create_owned(&labels),
            per_second: families.requests_per_second.get_or_create_owned(&labels),
            concurrency: families.concurrency.get_or_create_owned(&labels),
            request_bytes: families.request_bytes.get_or_create_owned(&labels),
            response_bytes: families.response_bytes.get_or_create_owned(&labels),
            labels,
            ended: Default::default(),
            node_requests: None,
            observed: FastMap::default(),
            durations: None,
        }
    }

    /// Whether `other` writes to the same series: pods of one namespace and name do.
    pub fn shares_series_with(&self, other: &PodSeries) -> bool {
        self.labels == other.labels
    }

    /// Books exact counter deltas; `by_method` also into `observed_requests` (when route labels
    /// are off: with them on, the events book it with routes).
    pub fn add_counts(&mut self, families: &HttpFamilies, delta: &Counts, by_method: bool) {
        self.started.inc_by(delta.requests);
        if by_method {
            for (id, ended) in (0u16..).zip(&delta.ended) {
                for (&n, class) in ended.iter().zip(StatusClass::ALL) {
                    if n > 0 {
                        self.observed_counter(families, Method::of_kernel(id), class, None)
                            .inc_by(n);
                    }
                }
            }
        }
        for ((slot, n), class) in self
            .ended
            .iter_mut()
            .zip(delta.responses)
            .zip(StatusClass::ALL)
        {
            if n == 0 {
                continue;
            }
            slot.get_or_insert_with(|| {
                families.requests.get_or_create_owned(&ResponseLabels {
                    pod: self.labels.clone(),
                    status_class: class,
                })
            })
            .inc_by(n);
        }
    }

    /// Books exact counts of requests served to the node itself (a no-op on the client side).
    pub fn add_node_requests(&mut self, families: &HttpFamilies, requests: u64) {
        let Some(family) = &families.node_requests else {
            return;
        };
        self.node_requests
            .get_or_insert_with(|| family.get_or_create_owned(&self.labels))
            .inc_by(requests);
    }

    /// Books what changed in the flow's kernel sums: bytes.
    pub fn add_flow(&self, delta: &FlowDelta) {
        self.request_bytes.inc_by(delta.request_bytes);
        self.response_bytes.inc_by(delta.response_bytes);
    }

    /// Sets the rate gauge.
    pub fn set_rate(&self, rate: f64) {
        self.per_second.set(rate);
    }

    /// Sets the concurrency gauge.
    pub fn set_concurrency(&self, concurrency: f64) {
        self.concurrency.set(concurrency);
    }

    /// The `observed_requests` counter of (method, class, route), created at first use.
    fn observed_counter(
        &mut self,
        families: &HttpFamilies,
        method: Method,
        class: StatusClass,
        route: Option<Route>,
    ) -> &Counter {
        let route_id = route.as_ref().map_or(0, |r| r.id);
        let (_, counter) = self
            .observed
            .entry((method, class, route_id))
            .or_insert_with(|| {
                let labels = ObservedLabels {
                    pod: self.labels.clone(),
                    method,
                    status_class: class,
                    route: RouteLabel(route.map(|r| r.name)),
                };
                let counter = families.observed_requests.get_or_create_owned(&labels);
                (labels, counter)
            });
        counter
    }

    /// Books a paired exchange with its route (events are on only with route labels).
    pub fn observe(&mut self, families: &HttpFamilies, exchange: &Exchange, route: Option<Route>) {
        let class = StatusClass::of_outcome(exchange.outcome);
        self.observed_counter(families, exchange.method, class, route)
            .inc();
    }

    /// Books exchanges by kernel latency bucket: each at its bucket's midpoint.
    pub fn observe_durations(&mut self, families: &HttpFamilies, buckets: &[(u16, u64)]) {
        let (_, histogram) = self.durations.get_or_insert_with(|| {
            let labels = DurationLabels {
                pod: self.labels.clone(),
                route: RouteLabel(None),
            };
            let histogram = families.request_duration.get_or_create_owned(&labels);
            (labels, histogram)
        });
        for &(bucket, n) in buckets {
            let seconds = midpoint_seconds(bucket);
            for _ in 0..n {
                histogram.observe(seconds);
            }
        }
    }

    /// Removes every series from the families. Series carry only namespace and name, so a pod of
    /// the same name and another UID (a StatefulSet's pod created again) holds the same ones: the
    /// caller drops its handles too (see `Books::remove`), and its series start afresh at its next
    /// booking instead of counting into series no longer exported.
    pub fn remove_from(self, families: &HttpFamilies) {
        let f = families;
        f.requests_started.remove(&self.labels);
        f.requests_per_second.remove(&self.labels);
        f.concurrency.remove(&self.labels);
        f.request_bytes.remove(&self.labels);
        f.response_bytes.remove(&self.labels);
        if let (Some(_), Some(family)) = (&self.node_requests, &f.node_requests) {
            family.remove(&self.labels);
        }
        for (slot, class) in self.ended.iter().zip(StatusClass::ALL) {
            if slot.is_some() {
                f.requests.remove(&ResponseLabels {
                    pod: self.labels.clone(),
                    status_class: class,
                });
            }
        }
        for (labels, _) in self.observed.values() {
            f.observed_requests.remove(labels);
        }
        if let Some((labels, _)) = &self.durations {
            f.request_duration.remove(labels);
        }
    }
}

/// The families of both sides; a pod's series on each live in its book.
#[derive(Clone)]
pub struct HttpMetrics {
    /// `podmeter_http_server_*`: requests pods served (inbound).
    pub server: HttpFamilies,
    /// `podmeter_http_client_*`: requests pods sent (outbound).
    pub client: HttpFamilies,
}

impl HttpMetrics {
    /// The families of a side.
    pub fn side(&self, side: Side) -> &HttpFamilies {
        match side {
            Side::Server => &self.server,
            Side::Client => &self.client,
        }
    }
}
