//! The agent's HTTP API: per-pod totals and rates as JSON (`/v1/pods`), of them only what the
//! metrics API serves (`/v1/pods/inbound`, which it reads every second), its own health
//! (`/v1/agent`), Prometheus metrics (`/metrics`) and a liveness probe (`/healthz`).

use std::future::Future;

use axum::{
    Json, Router,
    extract::State,
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use podmeter_wire::{
    AgentReply, FlowReply, InboundPod, InboundReply, ObservedReply, PodReply, PodsReply,
    UnattributedReply,
};

use crate::{
    attribution::flow::Flow,
    books::node::Shared,
    books::{Books, PodBook, traffic::PodTraffic},
    exporters::metrics::exposition::{self, Format},
};

/// Every route: JSON, `/metrics` and `/healthz`.
pub fn router(shared: Shared) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/metrics", get(metrics))
        .route("/v1/pods", get(pods))
        .route("/v1/pods/inbound", get(inbound))
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

/// Serves `app` on `listener` (TCP, or [`super::api_tls::TlsListener`]) until `shutdown`
/// completes.
pub async fn serve<L>(
    listener: L,
    app: Router,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()>
where
    L: axum::serve::Listener<Addr = std::net::SocketAddr>,
{
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

/// `GET /metrics`: OpenMetrics for scrapers that accept it, else the Prometheus text format.
async fn metrics(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    let format = Format::negotiate(headers.get(header::ACCEPT).and_then(|v| v.to_str().ok()));
    match exposition::render(shared.registry(), format) {
        Ok(body) => ([(header::CONTENT_TYPE, format.content_type())], body).into_response(),
        Err(_) => (StatusCode::INTERNAL_SERVER_ERROR, "encoding failed\n").into_response(),
    }
}

/// Exact totals, rate and duration quantiles of each flow of a pod (`book`) or of the sockets of
/// no pod (`None`: they get no durations).
fn flows(traffic: &PodTraffic, books: &Books, book: Option<&PodBook>) -> [FlowReply; Flow::COUNT] {
    [
        Flow::Inbound,
        Flow::Outbound,
        Flow::LoopbackInbound,
        Flow::LoopbackOutbound,
        Flow::NodeInbound,
    ]
    .map(|flow| flow_reply(traffic, books, book, flow))
}

/// One flow of [`flows`].
fn flow_reply(
    traffic: &PodTraffic,
    books: &Books,
    book: Option<&PodBook>,
    flow: Flow,
) -> FlowReply {
    let rates = books.flow_rates(book, flow);
    FlowReply {
        totals: *traffic.totals(flow),
        rate: rates.requests,
        duration: book.and_then(|b| b.duration(flow)),
        concurrency: Some(rates.concurrency),
        request_bytes_per_second: rates.request_bytes,
        response_bytes_per_second: rates.response_bytes,
    }
}

/// `GET /v1/pods/inbound`: each pod's inbound flow as `/v1/pods` has it, reduced to what the
/// metrics API serves.
fn inbound_reply(books: &Books) -> InboundReply {
    let mut pods: Vec<InboundPod> = books
        .pods()
        .map(|(id, book)| {
            let inbound = flow_reply(book.traffic(), books, Some(book), Flow::Inbound);
            InboundPod::new(id.namespace.clone(), id.name.clone(), &inbound)
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    InboundReply {
        rate_window_seconds: books.window().secs(),
        pods,
    }
}

/// `GET /v1/pods`, built from the books.
fn pods_reply(books: &Books) -> PodsReply {
    let mut pods: Vec<PodReply> = books
        .pods()
        .map(|(id, book)| {
            let t = book.traffic();
            let [
                inbound,
                outbound,
                loopback_inbound,
                loopback_outbound,
                node_inbound,
            ] = flows(t, books, Some(book));
            PodReply {
                namespace: id.namespace.clone(),
                name: id.name.clone(),
                uid: id.uid.clone(),
                workload: id.workload.clone(),
                inbound,
                outbound,
                loopback_inbound,
                loopback_outbound,
                node_inbound,
                observed: ObservedReply {
                    inbound: t.observed_inbound.clone(),
                    outbound: t.observed_outbound.clone(),
                },
            }
        })
        .collect();
    pods.sort_by(|a, b| (&a.namespace, &a.name).cmp(&(&b.namespace, &b.name)));
    let u = books.unattributed();
    let [
        inbound,
        outbound,
        loopback_inbound,
        loopback_outbound,
        node_inbound,
    ] = flows(u, books, None);
    PodsReply {
        rate_window_seconds: books.window().secs(),
        pods,
        unattributed: UnattributedReply {
            inbound,
            outbound,
            loopback_inbound,
            loopback_outbound,
            node_inbound,
            observed_inbound: u.observed_inbound.clone(),
            observed_outbound: u.observed_outbound.clone(),
        },
    }
}

async fn pods(State(shared): State<Shared>) -> Json<PodsReply> {
    Json(pods_reply(&shared.lock().books))
}

async fn inbound(State(shared): State<Shared>) -> Json<InboundReply> {
    Json(inbound_reply(&shared.lock().books))
}

async fn agent(State(shared): State<Shared>) -> Json<AgentReply> {
    Json(shared.lock().health_reading().health)
}
