//! The agent's HTTP API: per-pod totals as JSON (`/v1/pods`), its own health (`/v1/agent`) and a
//! liveness probe (`/healthz`).

use std::future::Future;

use axum::{Json, Router, extract::State, routing::get};
use podmeter_common::stat;
use serde::Serialize;

use crate::{
    agent::Shared,
    traffic::{FlowTotals, Observed, PodTraffic},
};

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    shared: Shared,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/v1/pods", get(pods))
        .route("/v1/agent", get(agent))
        .with_state(shared);
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[derive(Serialize)]
struct PodsReply {
    pods: Vec<PodReply>,
    /// Sockets in the observed cgroup tree that belong to no pod.
    unattributed: PodTraffic,
}

#[derive(Serialize)]
struct PodReply {
    namespace: String,
    name: String,
    inbound: FlowTotals,
    outbound: FlowTotals,
    loopback_inbound: FlowTotals,
    loopback_outbound: FlowTotals,
    observed: ObservedReply,
}

#[derive(Serialize)]
struct ObservedReply {
    inbound: Observed,
    outbound: Observed,
}

async fn pods(State(shared): State<Shared>) -> Json<PodsReply> {
    let state = shared.lock();
    let mut pods: Vec<PodReply> = state
        .traffic
        .pods()
        .map(|(id, t)| PodReply {
            namespace: id.namespace.clone(),
            name: id.name.clone(),
            inbound: t.inbound,
            outbound: t.outbound,
            loopback_inbound: t.loopback_inbound,
            loopback_outbound: t.loopback_outbound,
            observed: ObservedReply {
                inbound: t.observed_inbound.clone(),
                outbound: t.observed_outbound.clone(),
            },
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    Json(PodsReply {
        pods,
        unattributed: state.traffic.unattributed.clone(),
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
    })
}
