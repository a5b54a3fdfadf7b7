//! The collected answers as the API serves them: every fresh agent answer's pods by namespace,
//! each a reference into its answer rather than a copy, so that a collection allocates nothing
//! per pod; a pod's [`PodSample`] is made only when a request asks for its namespace (an HPA
//! asks for one every 15 s, the collector reads every pod every second).

use std::{
    collections::HashMap,
    sync::{Arc, PoisonError, RwLock},
    time::{Duration, Instant, SystemTime},
};

use k8s_openapi::api::core::v1::Pod;
use kube::{ResourceExt as _, core::PartialObjectMeta};
use podmeter_wire::{InboundPod, InboundReply};

use super::labels::PodLabels;
use crate::{
    HTTP_REQUEST_BYTES_PER_SECOND, HTTP_REQUEST_DURATION_SECONDS_P95, HTTP_REQUESTS_CONCURRENCY,
    HTTP_REQUESTS_PER_SECOND, PodSample, Sample,
    source::{MetricInfo, MetricsSource},
};

/// One agent's last good answer, with its pods' labels as the cluster had them when it came.
#[derive(Debug)]
pub(super) struct Answer {
    pub received: Instant,
    pub timestamp: SystemTime,
    pub reply: InboundReply,
    /// The metadata (labels) of `reply.pods[i]`; `None` for a pod the cluster has not shown yet.
    pods: Vec<Option<Arc<PartialObjectMeta<Pod>>>>,
}

impl Answer {
    pub fn new(
        received: Instant,
        timestamp: SystemTime,
        reply: InboundReply,
        labels: &PodLabels,
    ) -> Self {
        let pods = reply
            .pods
            .iter()
            .map(|pod| labels.pod(&pod.namespace, &pod.name))
            .collect();
        Self {
            received,
            timestamp,
            reply,
            pods,
        }
    }

    /// Pod `index`'s values as the API serves them; a value the agent did not give is absent.
    fn sample(&self, index: usize) -> PodSample {
        let pod = &self.reply.pods[index];
        let window = Some(Duration::from_secs(u64::from(
            self.reply.rate_window_seconds,
        )));
        let sample = |value| Sample {
            value,
            timestamp: self.timestamp,
            window,
        };
        let mut values = std::collections::BTreeMap::from([(
            HTTP_REQUESTS_PER_SECOND.to_owned(),
            sample(pod.rate),
        )]);
        for (name, value) in [
            (HTTP_REQUEST_DURATION_SECONDS_P95, pod.p95_seconds),
            // Absent before the agent has two reads, and from older agents: no value, not 0.
            (HTTP_REQUESTS_CONCURRENCY, pod.concurrency),
            // Absent from an agent that does not count bytes: missing to the HPA, not 0 B/s.
            (HTTP_REQUEST_BYTES_PER_SECOND, pod.request_bytes_per_second),
        ] {
            if let Some(value) = value {
                values.insert(name.to_owned(), sample(value));
            }
        }
        PodSample {
            name: pod.name.clone(),
            labels: self.pods[index]
                .as_ref()
                .map(|meta| meta.labels().clone())
                .unwrap_or_default(),
            values,
        }
    }
}

/// One pod of the snapshot: the `index`th of `answer`.
#[derive(Clone, Debug)]
struct Row {
    answer: Arc<Answer>,
    index: usize,
}

impl Row {
    fn pod(&self) -> &InboundPod {
        &self.answer.reply.pods[self.index]
    }
}

/// The pods of `answers` by namespace, each namespace's sorted by name. A pod two answers hold
/// (it moved) is served from the newer.
fn assemble(answers: &[Arc<Answer>]) -> HashMap<String, Vec<Row>> {
    let mut by_namespace: HashMap<String, Vec<Row>> = HashMap::new();
    for answer in answers {
        for (index, pod) in answer.reply.pods.iter().enumerate() {
            let row = Row {
                answer: answer.clone(),
                index,
            };
            match by_namespace.get_mut(pod.namespace.as_str()) {
                Some(rows) => rows.push(row),
                None => {
                    by_namespace.insert(pod.namespace.clone(), vec![row]);
                }
            }
        }
    }
    for rows in by_namespace.values_mut() {
        // Newest first among equal names, so that dedup keeps it.
        rows.sort_unstable_by(|a, b| {
            (a.pod().name.as_str(), b.answer.received)
                .cmp(&(b.pod().name.as_str(), a.answer.received))
        });
        rows.dedup_by(|later, kept| later.pod().name == kept.pod().name);
    }
    by_namespace
}

/// What the API serves: the snapshot of the last collection.
#[derive(Debug)]
pub struct Collected {
    metrics: Vec<MetricInfo>,
    pods: RwLock<Arc<HashMap<String, Vec<Row>>>>,
}

impl Collected {
    pub fn new(metrics: Vec<MetricInfo>) -> Self {
        Self {
            metrics,
            pods: RwLock::default(),
        }
    }

    /// Serves the pods of `answers` (the fresh ones) from now on.
    pub(super) fn replace(&self, answers: &[Arc<Answer>]) {
        let pods = Arc::new(assemble(answers));
        let old = std::mem::replace(
            &mut *self.pods.write().unwrap_or_else(PoisonError::into_inner),
            pods,
        );
        // Freed outside the lock: requests need not wait for it.
        drop(old);
    }
}

impl MetricsSource for Collected {
    fn metrics(&self) -> &[MetricInfo] {
        &self.metrics
    }

    fn pods(&self, namespace: &str) -> Vec<PodSample> {
        let pods = self
            .pods
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone();
        pods.get(namespace)
            .map(|rows| {
                rows.iter()
                    .map(|row| row.answer.sample(row.index))
                    .collect()
            })
            .unwrap_or_default()
    }
}
