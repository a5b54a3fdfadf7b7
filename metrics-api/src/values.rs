//! The answers, computed from a [`MetricsSource`] snapshot independently of HTTP and API version:
//! every pod a selector picks, one named pod, a namespace's total, and the total over the pods a
//! selector picks (the external metric). Errors are the Status replies custom-metrics-apiserver
//! providers give (`provider.NewMetricNotFoundError` and friends).

use std::{
    collections::BTreeMap,
    time::{Duration, SystemTime},
};

use super::{
    quantity::Quantity,
    selector::Selector,
    source::{MetricInfo, MetricsSource, PodSample, Sample},
    status::StatusError,
    types::{
        ExternalMetricValue, LabelSelector, MetricIdentifier, MetricValueV1Beta1,
        MetricValueV1Beta2, ObjectReference, Time,
    },
};

/// One value of a custom metric, before it is written in either API version.
#[derive(Clone, Debug, PartialEq)]
pub struct MetricValue {
    pub described_object: ObjectReference,
    pub metric: String,
    pub timestamp: SystemTime,
    pub window_seconds: Option<i64>,
    pub value: Quantity,
    /// The metric selector the value answers, echoed as adapters do (`null` when none).
    pub selector: Option<LabelSelector>,
}

impl MetricValue {
    pub fn v1beta1(self) -> MetricValueV1Beta1 {
        MetricValueV1Beta1 {
            described_object: self.described_object,
            metric_name: self.metric,
            timestamp: Time(self.timestamp),
            window_seconds: self.window_seconds,
            value: self.value,
            selector: self.selector,
        }
    }

    pub fn v1beta2(self) -> MetricValueV1Beta2 {
        MetricValueV1Beta2 {
            described_object: self.described_object,
            metric: MetricIdentifier {
                name: self.metric,
                selector: self.selector,
            },
            timestamp: Time(self.timestamp),
            window_seconds: self.window_seconds,
            value: self.value,
        }
    }
}

/// `describedObject` as custom-metrics-apiserver's `helpers.ReferenceFor` writes it for a core
/// object: `apiVersion` is `group + "/" + version`, which is `"/v1"` for the core group. Every
/// adapter built on that library emits `"/v1"`; the HPA does not read the field.
fn core_reference(kind: &str, namespace: &str, name: &str) -> ObjectReference {
    ObjectReference {
        kind: kind.to_owned(),
        namespace: namespace.to_owned(),
        name: name.to_owned(),
        api_version: "/v1".to_owned(),
        ..ObjectReference::default()
    }
}

/// The labels of the series podmeter serves: none (one series per pod and metric), so a
/// `metricLabelSelector` selects them only if it asks for no label to be present or equal.
fn series_labels() -> BTreeMap<String, String> {
    BTreeMap::new()
}

fn find_metric<'a>(source: &'a dyn MetricsSource, name: &str) -> Option<&'a MetricInfo> {
    source.metrics().iter().find(|m| m.name == name)
}

/// The selector echoed in each value, `None` for the empty one (adapters echo
/// `metav1.ParseToLabelSelector(selector.String())` only when it is not empty).
fn echo(metric_selector: &Selector) -> Result<Option<LabelSelector>, StatusError> {
    if metric_selector.is_empty() {
        return Ok(None);
    }
    metric_selector
        .to_label_selector()
        .map(Some)
        .map_err(|e| StatusError::bad_request(e.to_string()))
}

fn window_seconds(window: Option<Duration>) -> Option<i64> {
    window.map(|w| i64::try_from(w.as_secs()).unwrap_or(i64::MAX))
}

/// A pod's sample of `metric` and its Quantity; `None` when the pod has no sample or the value
/// is no number (such a pod is left out, i.e. missing to the HPA).
fn pod_sample<'a>(pod: &'a PodSample, metric: &str) -> Option<(&'a Sample, Quantity)> {
    let sample = pod.values.get(metric)?;
    match Quantity::from_f64(sample.value) {
        Ok(quantity) => Some((sample, quantity)),
        Err(error) => {
            tracing::debug!(pod = %pod.name, metric, %error, "value left out");
            None
        }
    }
}

/// Every pod of `namespace` that `selector` picks and that has a value, by pod name
/// (`namespaces/{ns}/pods/*/{metric}`, the HPA's call for a `Pods` metric).
pub fn pods_by_selector(
    source: &dyn MetricsSource,
    namespace: &str,
    metric: &str,
    selector: &Selector,
    metric_selector: &Selector,
) -> Result<Vec<MetricValue>, StatusError> {
    let info =
        find_metric(source, metric).ok_or_else(|| StatusError::metric_not_found("pods", metric))?;
    let echoed = echo(metric_selector)?;
    if !metric_selector.matches(&series_labels()) {
        return Ok(Vec::new());
    }
    let mut pods = source.pods(namespace);
    pods.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(pods
        .iter()
        .filter(|pod| selector.matches(&pod.labels))
        .filter_map(|pod| {
            let (sample, value) = pod_sample(pod, &info.name)?;
            Some(MetricValue {
                described_object: core_reference("Pod", namespace, &pod.name),
                metric: info.name.clone(),
                timestamp: sample.timestamp,
                window_seconds: window_seconds(sample.window),
                value,
                selector: echoed.clone(),
            })
        })
        .collect())
}

/// One pod's value (`namespaces/{ns}/pods/{name}/{metric}`); the reply is still a list, of
/// exactly one item, which is what the HPA's client requires.
pub fn one_pod(
    source: &dyn MetricsSource,
    namespace: &str,
    name: &str,
    metric: &str,
    metric_selector: &Selector,
) -> Result<MetricValue, StatusError> {
    let info =
        find_metric(source, metric).ok_or_else(|| StatusError::metric_not_found("pods", metric))?;
    let echoed = echo(metric_selector)?;
    let not_found = || StatusError::metric_not_found_for("pods", metric, name);
    if !metric_selector.matches(&series_labels()) {
        return Err(not_found());
    }
    let pods = source.pods(namespace);
    let pod = pods.iter().find(|p| p.name == name).ok_or_else(not_found)?;
    let (sample, value) = pod_sample(pod, &info.name).ok_or_else(not_found)?;
    Ok(MetricValue {
        described_object: core_reference("Pod", namespace, name),
        metric: info.name.clone(),
        timestamp: sample.timestamp,
        window_seconds: window_seconds(sample.window),
        value,
        selector: echoed,
    })
}

/// The sum over pods of their values: exact (in milli-units, as each is served), timestamped
/// with the oldest sample (the total is only as fresh as its stalest part), over the longest
/// window. `None` when no pod has a value.
struct Total {
    value: Quantity,
    timestamp: SystemTime,
    window: Option<Duration>,
}

fn total<'a>(
    pods: impl Iterator<Item = &'a PodSample>,
    metric: &str,
) -> Result<Option<Total>, StatusError> {
    let mut total: Option<Total> = None;
    for pod in pods {
        let Some((sample, value)) = pod_sample(pod, metric) else {
            continue;
        };
        total = Some(match total {
            None => Total {
                value,
                timestamp: sample.timestamp,
                window: sample.window,
            },
            Some(sum) => Total {
                value: sum.value.checked_add(value).ok_or_else(|| {
                    StatusError::internal(&format!("the total of {metric} overflows"))
                })?,
                timestamp: sum.timestamp.min(sample.timestamp),
                window: sum.window.max(sample.window),
            },
        });
    }
    Ok(total)
}

/// The total over a namespace's pods, describing the Namespace
/// (`namespaces/{ns}/metrics/{metric}`, and the root-scoped `namespaces/{ns}/{metric}`).
/// Only summable metrics have one.
pub fn namespace_total(
    source: &dyn MetricsSource,
    namespace: &str,
    metric: &str,
    metric_selector: &Selector,
) -> Result<MetricValue, StatusError> {
    let info = find_metric(source, metric)
        .filter(|m| m.summable)
        .ok_or_else(|| StatusError::metric_not_found("namespaces", metric))?;
    let echoed = echo(metric_selector)?;
    let not_found = || StatusError::metric_not_found_for("namespaces", metric, namespace);
    if !metric_selector.matches(&series_labels()) {
        return Err(not_found());
    }
    let pods = source.pods(namespace);
    let total = total(pods.iter(), &info.name)?.ok_or_else(not_found)?;
    Ok(MetricValue {
        described_object: core_reference("Namespace", "", namespace),
        metric: info.name.clone(),
        timestamp: total.timestamp,
        window_seconds: window_seconds(total.window),
        value: total.value,
        selector: echoed,
    })
}

/// The external metric: one value, the total over the pods of `namespace` that `selector`
/// picks (the HPA adds up all items of an external metric anyway; one item keeps pod labels
/// out of the reply). `metricLabels` are the labels the selector pins to one value.
pub fn external_total(
    source: &dyn MetricsSource,
    namespace: &str,
    metric: &str,
    selector: &Selector,
) -> Result<ExternalMetricValue, StatusError> {
    let info = find_metric(source, metric)
        .filter(|m| m.summable)
        .ok_or_else(|| StatusError::external_metric_not_found(metric))?;
    let pods = source.pods(namespace);
    let total = total(
        pods.iter().filter(|p| selector.matches(&p.labels)),
        &info.name,
    )?
    .ok_or_else(|| StatusError::external_metric_not_found(metric))?;
    let metric_labels = selector
        .requirements()
        .iter()
        .filter_map(|r| Some((r.key().to_owned(), r.exact_value()?.to_owned())))
        .collect();
    Ok(ExternalMetricValue {
        metric_name: info.name.clone(),
        metric_labels,
        timestamp: Time(total.timestamp),
        window_seconds: window_seconds(total.window),
        value: total.value,
    })
}
