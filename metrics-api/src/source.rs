//! Where the metrics API's numbers come from: the [`MetricsSource`] trait (what metrics exist,
//! and each pod's current samples), the metric names podmeter serves, and [`MemorySource`], a
//! snapshot the collector replaces wholesale.

use std::{
    collections::BTreeMap,
    sync::{PoisonError, RwLock},
    time::{Duration, SystemTime},
};

/// Inbound HTTP requests per second served by the pod: exact kernel counts, each request
/// counted once however many hooks saw it, as a sliding-window rate.
pub const HTTP_REQUESTS_PER_SECOND: &str = "http_requests_per_second";

/// The 95th percentile of the pod's inbound HTTP request durations, in seconds.
pub const HTTP_REQUEST_DURATION_SECONDS_P95: &str = "http_request_duration_seconds_p95";

/// The average number of inbound HTTP requests the pod was serving at once over the window:
/// the exact time-integral of its in-flight requests, from the kernel, over the window's span
/// (Little's law's `L`).
pub const HTTP_REQUESTS_CONCURRENCY: &str = "http_requests_concurrency";

/// Inbound HTTP request payload bytes (request lines, headers and bodies) the pod received per
/// second over the window.
pub const HTTP_REQUEST_BYTES_PER_SECOND: &str = "http_request_bytes_per_second";

/// A metric the API serves for pods.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MetricInfo {
    /// The name clients ask for (`pods/*/<name>`).
    pub name: String,
    /// Whether adding the pods' values means something (a rate does, a percentile does not).
    /// Only such metrics are also served per namespace (`namespaces/{ns}/metrics/<name>`) and as
    /// external metrics (the total over the pods a selector picks).
    pub summable: bool,
}

impl MetricInfo {
    /// A metric whose per-pod values add up to a total.
    pub fn summable(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            summable: true,
        }
    }

    /// A metric that only means something per pod.
    pub fn per_pod(name: impl Into<String>) -> Self {
        Self {
            name: name.into(),
            summable: false,
        }
    }
}

/// The metrics podmeter serves: the request rate (summable), the p95 latency (per pod), the
/// average concurrency (summable: time-averages over one window add up to the average of the
/// sum) and the request bytes per second (summable).
pub fn podmeter_metrics() -> Vec<MetricInfo> {
    vec![
        MetricInfo::summable(HTTP_REQUESTS_PER_SECOND),
        MetricInfo::per_pod(HTTP_REQUEST_DURATION_SECONDS_P95),
        MetricInfo::summable(HTTP_REQUESTS_CONCURRENCY),
        MetricInfo::summable(HTTP_REQUEST_BYTES_PER_SECOND),
    ]
}

/// One current value of one metric for one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct Sample {
    pub value: f64,
    /// When the value was computed (the end of its window).
    pub timestamp: SystemTime,
    /// The span the value covers, for rates; served in whole seconds (`window` in v1beta1,
    /// `windowSeconds` in v1beta2). Without it the HPA assumes one minute.
    pub window: Option<Duration>,
}

/// One pod as the API sees it: its identity, its labels (matched by `labelSelector`), and its
/// samples by metric name.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PodSample {
    pub name: String,
    pub labels: BTreeMap<String, String>,
    pub values: BTreeMap<String, Sample>,
}

/// What the metrics API serves.
///
/// Freshness is the source's business: it must drop a sample once it is stale (its node agent
/// stopped answering, the pod went away) rather than keep returning it. The API serves what it
/// is given; a pod without a sample is simply absent from the reply, which the HPA treats as
/// missing (conservatively), whereas a stale value would make it act on old load.
pub trait MetricsSource: Send + Sync + 'static {
    /// The metrics served, in discovery order.
    fn metrics(&self) -> &[MetricInfo];

    /// Every pod of `namespace` the source knows, with its current samples.
    fn pods(&self, namespace: &str) -> Vec<PodSample>;
}

/// A [`MetricsSource`] holding the latest collected snapshot in memory.
#[derive(Debug)]
pub struct MemorySource {
    metrics: Vec<MetricInfo>,
    /// Pods by namespace.
    pods: RwLock<BTreeMap<String, Vec<PodSample>>>,
}

impl MemorySource {
    pub fn new(metrics: Vec<MetricInfo>) -> Self {
        Self {
            metrics,
            pods: RwLock::new(BTreeMap::new()),
        }
    }

    /// Replaces the whole snapshot (pods by namespace).
    pub fn replace(&self, pods: BTreeMap<String, Vec<PodSample>>) {
        *self.pods.write().unwrap_or_else(PoisonError::into_inner) = pods;
    }

    /// Replaces one namespace's pods.
    #[cfg(test)]
    pub fn set_namespace(&self, namespace: impl Into<String>, pods: Vec<PodSample>) {
        self.pods
            .write()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(namespace.into(), pods);
    }
}

impl MetricsSource for MemorySource {
    fn metrics(&self) -> &[MetricInfo] {
        &self.metrics
    }

    fn pods(&self, namespace: &str) -> Vec<PodSample> {
        self.pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(namespace)
            .cloned()
            .unwrap_or_default()
    }
}
