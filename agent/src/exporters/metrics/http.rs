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
    attribution::flow::Flow, books::routes::Route, connections::pairing::Exchange,
    events::decode::Method, fast_map::FastMap, identity::PodId, kernel::counters::Counts,
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

    /// The side a flow is exported under; loopback flows (a pod talking to itself) are not.
    pub fn of(flow: Flow) -> Option<Side> {
        match flow {
            Flow::Inbound => Some(Side::Server),
            Flow::Outbound => Some(Side::Client),
            Flow::LoopbackInbound | Flow::LoopbackOutbound => None,
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
    /// `observed_requests_total{namespace,pod,method,status_class[,route]}`: exchanges paired from
    /// the event stream; trails `requests_total` when events are dropped.
    pub observed_requests: Family<ObservedLabels, Counter>,
    /// `request_duration_seconds{namespace,pod[,route]}`: time from the request's first segment to
    /// the response's first segment, at the observing socket, for paired exchanges.
    pub request_duration: DurationFamily,
}

impl HttpFamilies {
    pub fn register(registry: &mut Registry, side: Side, window_secs: u32) -> Self {
        let families = Self {
            requests_started: Family::default(),
            requests: Family::default(),
            requests_per_second: Family::default(),
            observed_requests: Family::default(),
            request_duration: Family::new_with_constructor(duration_histogram),
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
                "HTTP requests {verb} the pod whose request and response events were paired, by method and status class; trails requests_total when events are dropped"
            ),
            families.observed_requests.clone(),
        );
        registry.register_with_unit(
            "request_duration",
            format!(
                "Duration of HTTP requests {verb} the pod, from the first request segment to the first response segment at the pod's socket, for paired exchanges with a response"
            ),
            Unit::Seconds,
            families.request_duration.clone(),
        );
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
    ended: [Option<Counter>; status_class::COUNT],
    /// By (method, status class, route id).
    observed: FastMap<(Method, StatusClass, u16), (ObservedLabels, Counter)>,
    /// By route id.
    durations: FastMap<u16, (DurationLabels, Histogram)>,
}

impl PodSeries {
    pub fn new(families: &HttpFamilies, pod: &PodId) -> Self {
        let labels = PodLabels::from(pod);
        Self {
            started: families.requests_started.get_or_create_owned(&labels),
            per_second: families.requests_per_second.get_or_create_owned(&labels),
            labels,
            ended: Default::default(),
            observed: FastMap::default(),
            durations: FastMap::default(),
        }
    }

    /// Whether `other` writes to the same series: pods of one namespace and name do.
    pub fn shares_series_with(&self, other: &PodSeries) -> bool {
        self.labels == other.labels
    }

    /// Books exact counter deltas.
    pub fn add_counts(&mut self, families: &HttpFamilies, delta: &Counts) {
        self.started.inc_by(delta.requests);
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

    /// Sets the rate gauge.
    pub fn set_rate(&self, rate: f64) {
        self.per_second.set(rate);
    }

    /// Books a paired exchange; `route` is `None` when route labels are off.
    pub fn observe(&mut self, families: &HttpFamilies, exchange: &Exchange, route: Option<Route>) {
        let class = StatusClass::of_outcome(exchange.outcome);
        let route_id = route.as_ref().map_or(0, |r| r.id);
        let route_label = RouteLabel(route.map(|r| r.name));
        let (_, observed) = self
            .observed
            .entry((exchange.method, class, route_id))
            .or_insert_with(|| {
                let labels = ObservedLabels {
                    pod: self.labels.clone(),
                    method: exchange.method,
                    status_class: class,
                    route: route_label.clone(),
                };
                let counter = families.observed_requests.get_or_create_owned(&labels);
                (labels, counter)
            });
        observed.inc();
        let Some(latency) = exchange.latency else {
            return;
        };
        let (_, histogram) = self.durations.entry(route_id).or_insert_with(|| {
            let labels = DurationLabels {
                pod: self.labels.clone(),
                route: route_label,
            };
            let histogram = families.request_duration.get_or_create_owned(&labels);
            (labels, histogram)
        });
        histogram.observe(latency.as_secs_f64());
    }

    /// Removes every series from the families. Series carry only namespace and name, so a pod of
    /// the same name and another UID (a StatefulSet's pod created again) holds the same ones: the
    /// caller drops its handles too (see `Books::remove`), and its series start afresh at its next
    /// booking instead of counting into series no longer exported.
    pub fn remove_from(self, families: &HttpFamilies) {
        let f = families;
        f.requests_started.remove(&self.labels);
        f.requests_per_second.remove(&self.labels);
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
        for (labels, _) in self.durations.values() {
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
