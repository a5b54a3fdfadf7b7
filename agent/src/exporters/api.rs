//! The agent's HTTP API: per-pod totals and rates as JSON (`/v1/pods`), its own health
//! (`/v1/agent`), Prometheus metrics (`/metrics`) and a liveness probe (`/healthz`).

use std::future::Future;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use podmeter_common::stat;
use serde::Serialize;

use crate::{
    attribution::flow::Flow,
    books::latency::DurationSummary,
    books::node::NodeState,
    books::traffic::{FlowTotals, Observed, PodTraffic},
    exporters::metrics::exposition::{self, Format},
    identity::{PodId, Workload},
    run::Shared,
};

/// Every route: JSON, `/metrics` and `/healthz`.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/pods", get(pods))
        .route("/v1/agent", get(agent))
        .with_state(shared)
}

/// Only `/metrics` and `/healthz`, for a separate metrics address.
pub fn metrics_router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Serves `app` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `GET /metrics`: OpenMetrics for scrapers that accept it, else the Prometheus text format.
async fn metrics(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    shared.lock().refresh_health_metrics();
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match exposition::render(shared.registry(), format) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

#[derive(Serialize)]
struct PodsReply {
    /// Length of the window behind every `rate`.
    rate_window_seconds: u32,
    pods: Vec<PodReply>,
    /// Sockets in the observed cgroup tree that belong to no pod.
    unattributed: UnattributedReply,
}

/// Exact totals of one flow, its rate (requests per second over the window) and the quantiles
/// of its request durations over the same window (`null` without paired exchanges in it, and for
/// sockets of no pod).
#[derive(Serialize)]
struct FlowReply {
    #[serde(flatten)]
    totals: FlowTotals,
    rate: f64,
    duration: Option<DurationSummary>,
}

impl FlowReply {
    fn new(totals: FlowTotals, state: &NodeState, pod: Option<&PodId>, flow: Flow) -> Self {
        Self {
            totals,
            rate: state.rates.rate(pod, flow),
            duration: pod.and_then(|p| state.durations.summary(p, flow)),
        }
    }
}

#[derive(Serialize)]
struct PodReply {
    namespace: String,
    name: String,
    /// The pod's UID with the Kubernetes identity; `null` when the source does not know it.
    uid: Option<String>,
    /// The owning workload (`{"kind": "Deployment", "name": "web"}`) with the Kubernetes
    /// identity; `null` when the source does not know it.
    workload: Option<Workload>,
    inbound: FlowReply,
    outbound: FlowReply,
    loopback_inbound: FlowReply,
    loopback_outbound: FlowReply,
    observed: ObservedReply,
}

#[derive(Serialize)]
struct ObservedReply {
    inbound: Observed,
    outbound: Observed,
}

/// The fields of [`PodTraffic`], with rates.
#[derive(Serialize)]
struct UnattributedReply {
    inbound: FlowReply,
    outbound: FlowReply,
    loopback_inbound: FlowReply,
    loopback_outbound: FlowReply,
    observed_inbound: Observed,
    observed_outbound: Observed,
}

fn flows(t: &PodTraffic, state: &NodeState, pod: Option<&PodId>) -> [FlowReply; 4] {
    [
        FlowReply::new(t.inbound, state, pod, Flow::Inbound),
        FlowReply::new(t.outbound, state, pod, Flow::Outbound),
        FlowReply::new(t.loopback_inbound, state, pod, Flow::LoopbackInbound),
        FlowReply::new(t.loopback_outbound, state, pod, Flow::LoopbackOutbound),
    ]
}

async fn pods(State(shared): State<Shared>) -> Json<PodsReply> {
    let state = shared.lock();
    let mut pods: Vec<PodReply> = state
        .traffic
        .pods()
        .map(|(id, t)| {
            let [inbound, outbound, loopback_inbound, loopback_outbound] =
                flows(t, &state, Some(id));
            PodReply {
                namespace: id.namespace.clone(),
                name: id.name.clone(),
                uid: id.uid.clone(),
                workload: id.workload.clone(),
                inbound,
                outbound,
                loopback_inbound,
                loopback_outbound,
                observed: ObservedReply {
                    inbound: t.observed_inbound.clone(),
                    outbound: t.observed_outbound.clone(),
                },
            }
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let u = &state.traffic.unattributed;
    let [inbound, outbound, loopback_inbound, loopback_outbound] = flows(u, &state, None);
    Json(PodsReply {
        rate_window_seconds: state.rates.window().secs(),
        pods,
        unattributed: UnattributedReply {
            inbound,
            outbound,
            loopback_inbound,
            loopback_outbound,
            observed_inbound: u.observed_inbound.clone(),
            observed_outbound: u.observed_outbound.clone(),
        },
    })
}

#[derive(Serialize)]
struct AgentReply {
    cgroup_root: String,
    uptime_seconds: f64,
    attach_mode: &'static str,
    kernel: KernelReply,
    events_received: u64,
    events_malformed: u64,
    request_lines_invalid: u64,
    unpaired_requests: u64,
    orphan_responses: u64,
    open_requests: u64,
    counter_entries: u64,
    counter_entries_removed: u64,
    ring_capacity_bytes: u64,
    ring_used_bytes: u64,
    connections_tracked: u64,
    connections_evicted: u64,
    pods_removed: u64,
    rate_window_seconds: u32,
    route_labels: bool,
    routes_folded: u64,
}

#[derive(Serialize)]
struct KernelReply {
    events_sent: u64,
    events_dropped: u64,
    retransmissions_skipped: u64,
    body_matches_skipped: u64,
    connections_opened: u64,
    connections_closed: u64,
    counter_map_full: u64,
    connection_table_full: u64,
    responses_unrecognised: u64,
    connections_upgraded: u64,
    listener_requests: u64,
}

async fn agent(State(shared): State<Shared>) -> Json<AgentReply> {
    let state = shared.lock();
    let h = &state.health;
    let k = &h.kernel;
    Json(AgentReply {
        cgroup_root: state.cgroup_root.display().to_string(),
        uptime_seconds: state.started.elapsed().as_secs_f64(),
        attach_mode: "cgroup_skb+sock_ops (bpf_link)",
        kernel: KernelReply {
            events_sent: k.get(stat::EVENTS_SENT),
            events_dropped: k.get(stat::EVENTS_DROPPED),
            retransmissions_skipped: k.get(stat::RETRANSMISSIONS_SKIPPED),
            body_matches_skipped: k.get(stat::BODY_MATCHES_SKIPPED),
            connections_opened: k.get(stat::CONNECTIONS_OPENED),
            connections_closed: k.get(stat::CONNECTIONS_CLOSED),
            counter_map_full: k.get(stat::COUNTER_MAP_FULL),
            connection_table_full: k.get(stat::CONNECTION_TABLE_FULL),
            responses_unrecognised: k.get(stat::RESPONSES_UNRECOGNISED),
            connections_upgraded: k.get(stat::CONNECTIONS_UPGRADED),
            listener_requests: k.get(stat::LISTENER_REQUESTS),
        },
        events_received: h.events_received,
        events_malformed: h.events_malformed,
        request_lines_invalid: h.request_lines_invalid,
        unpaired_requests: h.unpaired_requests,
        orphan_responses: h.orphan_responses,
        open_requests: h.open_requests,
        counter_entries: h.counter_entries,
        counter_entries_removed: h.counter_entries_removed,
        ring_capacity_bytes: h.ring_capacity_bytes,
        ring_used_bytes: h.ring_used_bytes,
        connections_tracked: h.connections_tracked,
        connections_evicted: h.connections_evicted,
        pods_removed: h.pods_removed,
        rate_window_seconds: state.rates.window().secs(),
        route_labels: state.routes.is_some(),
        routes_folded: state.routes.as_ref().map_or(0, |r| r.folded),
    })
}
