//! `GET /v1/pods/inbound`: of each pod, only what the metrics API serves (its inbound rate, p95,
//! concurrency and request bytes per second), about 140 bytes a pod where `/v1/pods` takes
//! about 1,800. The metrics API reads every agent every second, so at 5,000 nodes the size of
//! this answer is most of its cost (BENCHMARKS.md, "Scale").

use serde::{Deserialize, Serialize};

use crate::{FlowReply, FlowTotals, PodReply, PodsReply};

/// The whole answer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundReply {
    /// Length of the window behind every value.
    pub rate_window_seconds: u32,
    /// Sorted by namespace, then name.
    pub pods: Vec<InboundPod>,
}

/// One pod's inbound values. An absent value is none, not 0: the metrics API serves none.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct InboundPod {
    pub namespace: String,
    pub name: String,
    /// Inbound requests per second over the window.
    pub rate: f64,
    /// The 95th percentile of inbound request durations; absent without exchanges in the window.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub p95_seconds: Option<f64>,
    /// Average inbound requests in flight; absent before the agent's second read.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<f64>,
    /// Inbound request bytes per second; absent from an agent that does not count bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub request_bytes_per_second: Option<f64>,
}

impl InboundPod {
    /// The inbound values of a `/v1/pods` pod.
    pub fn of(pod: &PodReply) -> Self {
        Self::new(pod.namespace.clone(), pod.name.clone(), &pod.inbound)
    }

    /// Pod `namespace/name` with `inbound`, its `/v1/pods` inbound flow.
    pub fn new(namespace: String, name: String, inbound: &FlowReply) -> Self {
        Self {
            namespace,
            name,
            rate: inbound.rate,
            p95_seconds: inbound.duration.map(|d| d.p95_seconds),
            concurrency: inbound.concurrency,
            request_bytes_per_second: counts_bytes(&inbound.totals)
                .then_some(inbound.request_bytes_per_second),
        }
    }
}

impl InboundReply {
    /// The inbound values of a whole `/v1/pods` answer (what an agent older than
    /// `/v1/pods/inbound` is read for).
    pub fn of(reply: &PodsReply) -> Self {
        Self {
            rate_window_seconds: reply.rate_window_seconds,
            pods: reply.pods.iter().map(InboundPod::of).collect(),
        }
    }
}

/// Whether the agent counts request bytes for this flow. An agent older than the byte counters
/// answers 0 bytes (the fields' default) however many requests it counted; every request an
/// agent that counts bytes counted carried some, so requests without bytes mean "not counted".
fn counts_bytes(totals: &FlowTotals) -> bool {
    totals.requests == 0 || totals.request_bytes > 0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::DurationSummary;

    fn pod(inbound: FlowReply) -> PodReply {
        PodReply {
            namespace: "shop".into(),
            name: "web-1".into(),
            uid: None,
            workload: None,
            inbound,
            outbound: FlowReply::default(),
            loopback_inbound: FlowReply::default(),
            loopback_outbound: FlowReply::default(),
            node_inbound: FlowReply::default(),
            observed: Default::default(),
        }
    }

    #[test]
    fn a_busy_pod_keeps_its_four_values_and_absent_ones_stay_absent() {
        let busy = InboundPod::of(&pod(FlowReply {
            totals: FlowTotals {
                requests: 10,
                request_bytes: 900,
                ..FlowTotals::default()
            },
            rate: 2.5,
            duration: Some(DurationSummary {
                exchanges: 10,
                p50_seconds: 0.01,
                p90_seconds: 0.02,
                p95_seconds: 0.03,
                p99_seconds: 0.04,
            }),
            concurrency: Some(0.75),
            request_bytes_per_second: 225.0,
            response_bytes_per_second: 0.0,
        }));
        assert_eq!(busy.rate, 2.5);
        assert_eq!(busy.p95_seconds, Some(0.03));
        assert_eq!(busy.concurrency, Some(0.75));
        assert_eq!(busy.request_bytes_per_second, Some(225.0));

        // Requests without bytes: an agent that does not count them.
        let older = InboundPod::of(&pod(FlowReply {
            totals: FlowTotals {
                requests: 10,
                ..FlowTotals::default()
            },
            ..FlowReply::default()
        }));
        assert_eq!(older.p95_seconds, None);
        assert_eq!(older.concurrency, None);
        assert_eq!(older.request_bytes_per_second, None);
        let json = serde_json::to_string(&older).unwrap();
        assert_eq!(json, r#"{"namespace":"shop","name":"web-1","rate":0.0}"#);
        assert_eq!(serde_json::from_str::<InboundPod>(&json).unwrap(), older);
    }
}
