//! `GET /v1/pods`: every pod the agent has seen, with exact totals from the kernel counters, rates
//! and duration quantiles over the rate window, and what the paired events tell.

use std::{borrow::Cow, collections::BTreeMap};

use serde::{Deserialize, Serialize};

/// The whole answer. Readers accept answers of agents older or newer than themselves (a rolling
/// upgrade): what is not about the pod and its inbound rate reads as empty when absent.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodsReply {
    /// Length of the window behind every `rate`.
    pub rate_window_seconds: u32,
    /// Sorted by namespace, then name.
    pub pods: Vec<PodReply>,
    /// Sockets in the observed cgroup tree that belong to no pod.
    #[serde(default)]
    pub unattributed: UnattributedReply,
}

/// One pod.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct PodReply {
    pub namespace: String,
    pub name: String,
    /// The pod's UID with the Kubernetes identity; `null` when the source does not know it.
    #[serde(default)]
    pub uid: Option<String>,
    /// The owning workload (`{"kind": "Deployment", "name": "web"}`) with the Kubernetes
    /// identity; `null` when the source does not know it.
    #[serde(default)]
    pub workload: Option<Workload>,
    /// Requests this pod served: the per-pod QPS counts these.
    pub inbound: FlowReply,
    /// Requests this pod sent.
    #[serde(default)]
    pub outbound: FlowReply,
    /// Requests served to a peer inside the pod (over loopback); not part of `inbound`.
    #[serde(default)]
    pub loopback_inbound: FlowReply,
    /// Requests sent to a peer inside the pod (over loopback); not part of `outbound`.
    #[serde(default)]
    pub loopback_outbound: FlowReply,
    /// Requests served to the node itself (kubelet probes, node agents); not part of `inbound`.
    #[serde(default)]
    pub node_inbound: FlowReply,
    #[serde(default)]
    pub observed: ObservedReply,
}

/// The workload that owns a pod: a ReplicaSet's pods name their Deployment.
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Workload {
    pub kind: String,
    pub name: String,
}

impl Workload {
    pub fn new(kind: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            kind: kind.into(),
            name: name.into(),
        }
    }
}

/// Exact totals of one flow, its rate (requests per second over the window) and the quantiles of
/// its request durations over the same window (`null` without paired exchanges in it, and for
/// sockets of no pod).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct FlowReply {
    #[serde(flatten)]
    pub totals: FlowTotals,
    pub rate: f64,
    /// Absent from agents older than this field, as `null`.
    #[serde(default)]
    pub duration: Option<DurationSummary>,
    /// Average number of requests in flight over the rate window (the exact time-integral of
    /// in-flight requests, from the kernel, divided by the window's span): Little's law's `L`.
    /// `null` before the agent has two reads, and from agents older than this field.
    #[serde(default)]
    pub concurrency: Option<f64>,
    /// Request payload bytes (request line, headers and body, as TCP carried them once) per
    /// second over the rate window. 0 from agents older than this field.
    #[serde(default)]
    pub request_bytes_per_second: f64,
    /// Response payload bytes per second over the rate window.
    #[serde(default)]
    pub response_bytes_per_second: f64,
}

/// Exact totals of one flow, from the kernel counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FlowTotals {
    pub requests: u64,
    #[serde(default)]
    pub responses: StatusCounts,
    /// Request payload bytes (request lines, headers and bodies; each byte once, retransmissions
    /// excluded).
    #[serde(default)]
    pub request_bytes: u64,
    /// Response payload bytes.
    #[serde(default)]
    pub response_bytes: u64,
}

/// Exchanges by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusCounts {
    /// Closed before a response.
    pub none: u64,
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
    /// Status outside 100..=599, or a response whose status line was not recognised.
    pub other: u64,
}

impl StatusCounts {
    pub fn total(&self) -> u64 {
        self.none
            + self.informational
            + self.success
            + self.redirection
            + self.client_error
            + self.server_error
            + self.other
    }
}

/// Request duration quantiles over the rate window.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct DurationSummary {
    /// Paired exchanges in the window.
    pub exchanges: u64,
    pub p50_seconds: f64,
    pub p90_seconds: f64,
    pub p95_seconds: f64,
    pub p99_seconds: f64,
}

/// What the paired events say about a pod's two directions.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct ObservedReply {
    pub inbound: Observed,
    pub outbound: Observed,
}

/// What the paired events say about one flow. Events can be dropped when the ring buffer is full
/// (counted in the agent's health), so these may trail the exact totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Observed {
    pub exchanges: u64,
    /// The agent's keys are static method names; a reader owns what it parsed.
    pub by_method: BTreeMap<Cow<'static, str>, u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub no_response: u64,
    pub unrecognised_response: u64,
    pub latency_seconds_sum: f64,
    pub latency_count: u64,
}

/// The flows of sockets that belong to no pod.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct UnattributedReply {
    pub inbound: FlowReply,
    pub outbound: FlowReply,
    pub loopback_inbound: FlowReply,
    pub loopback_outbound: FlowReply,
    /// Requests served to the node itself (kubelet probes, node agents); not part of `inbound`.
    #[serde(default)]
    pub node_inbound: FlowReply,
    pub observed_inbound: Observed,
    pub observed_outbound: Observed,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_reply_reads_back_as_it_was_written() {
        let flow = FlowReply {
            totals: FlowTotals {
                requests: 7,
                responses: StatusCounts {
                    success: 6,
                    none: 1,
                    ..StatusCounts::default()
                },
                request_bytes: 700,
                response_bytes: 9000,
            },
            rate: 1.5,
            concurrency: Some(0.25),
            request_bytes_per_second: 150.0,
            response_bytes_per_second: 1800.0,
            duration: Some(DurationSummary {
                exchanges: 6,
                p50_seconds: 0.01,
                p90_seconds: 0.02,
                p95_seconds: 0.03,
                p99_seconds: 0.04,
            }),
        };
        let mut observed = Observed::default();
        observed.by_method.insert(Cow::Borrowed("GET"), 6);
        observed.by_status.insert(200, 6);
        let reply = PodsReply {
            rate_window_seconds: 30,
            pods: vec![PodReply {
                namespace: "shop".into(),
                name: "web-1".into(),
                uid: Some("u".into()),
                workload: Some(Workload::new("Deployment", "web")),
                inbound: flow.clone(),
                outbound: flow.clone(),
                loopback_inbound: flow.clone(),
                loopback_outbound: flow.clone(),
                node_inbound: flow.clone(),
                observed: ObservedReply {
                    inbound: observed.clone(),
                    outbound: Observed::default(),
                },
            }],
            unattributed: UnattributedReply {
                inbound: flow.clone(),
                outbound: flow.clone(),
                loopback_inbound: flow.clone(),
                loopback_outbound: flow.clone(),
                node_inbound: flow,
                observed_inbound: observed,
                observed_outbound: Observed::default(),
            },
        };
        let text = serde_json::to_string(&reply).expect("serialises");
        assert!(
            text.contains(r#""requests":7,"responses":{"none":1,"1xx":0,"2xx":6"#),
            "{text}"
        );
        assert_eq!(
            serde_json::from_str::<PodsReply>(&text).expect("parses"),
            reply
        );
    }

    #[test]
    fn an_answer_with_only_what_the_metrics_api_reads_is_accepted() {
        let reply: PodsReply = serde_json::from_str(
            r#"{"rate_window_seconds":5,"pods":[{"namespace":"shop","name":"web-1","inbound":{"requests":3,"rate":1.5}}]}"#,
        )
        .expect("parses");
        assert_eq!(reply.pods[0].inbound.rate, 1.5);
        assert_eq!(reply.pods[0].outbound, FlowReply::default());
        assert_eq!(reply.pods[0].node_inbound, FlowReply::default());
    }

    #[test]
    fn an_older_agent_without_node_requests_reads_as_none_served_to_the_node() {
        let mut unattributed = UnattributedReply::default();
        unattributed.inbound.totals.requests = 4;
        let reply = PodsReply {
            rate_window_seconds: 30,
            pods: Vec::new(),
            unattributed,
        };
        let mut value = serde_json::to_value(&reply).expect("serialises");
        let removed = value["unattributed"]
            .as_object_mut()
            .and_then(|u| u.remove("node_inbound"));
        assert!(removed.is_some(), "{value}");
        assert_eq!(
            serde_json::from_value::<PodsReply>(value).expect("parses"),
            reply
        );
    }

    #[test]
    fn an_older_agent_without_durations_reads_as_none() {
        let flow: FlowReply = serde_json::from_str(
            r#"{"requests":1,"responses":{"none":0,"1xx":0,"2xx":1,"3xx":0,"4xx":0,"5xx":0,"other":0},"rate":0.5}"#,
        )
        .expect("parses");
        assert_eq!(flow.duration, None);
    }
}
