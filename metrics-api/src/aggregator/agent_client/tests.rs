//! The client against a local stand-in for an agent: the reply, the bearer token, one kept-alive
//! connection for several reads, `/v1/pods` from an agent without `/v1/pods/inbound`, and
//! errors that name the URL.

use std::sync::{
    Arc,
    atomic::{AtomicUsize, Ordering},
};

use axum::{Json, Router, http::HeaderMap, routing::get};
use podmeter_wire::{FlowReply, Observed, UnattributedReply};
use tokio::net::TcpListener;

use super::*;

fn empty_reply() -> PodsReply {
    let flow = FlowReply::default();
    PodsReply {
        rate_window_seconds: 30,
        pods: Vec::new(),
        unattributed: UnattributedReply {
            inbound: flow.clone(),
            outbound: flow.clone(),
            loopback_inbound: flow.clone(),
            loopback_outbound: flow.clone(),
            node_inbound: flow,
            observed_inbound: Observed::default(),
            observed_outbound: Observed::default(),
        },
    }
}

fn one_pod() -> InboundReply {
    InboundReply {
        rate_window_seconds: 30,
        pods: vec![podmeter_wire::InboundPod {
            namespace: "shop".into(),
            name: "web-1".into(),
            rate: 4.5,
            p95_seconds: None,
            concurrency: Some(0.5),
            request_bytes_per_second: Some(100.0),
        }],
    }
}

/// Serves `/v1/pods` to callers with token `t` on a local port; returns its URL and the count
/// of connections it accepted.
async fn agent() -> (String, Arc<AtomicUsize>) {
    serve(Router::new().route(
        "/v1/pods",
        get(|headers: HeaderMap| async move {
            if headers.get("authorization").and_then(|v| v.to_str().ok()) == Some("Bearer t") {
                Ok(Json(empty_reply()))
            } else {
                Err(StatusCode::UNAUTHORIZED)
            }
        }),
    ))
    .await
}

/// Serves `app` on a local port; returns its URL and the count of connections it accepted.
async fn serve(app: Router) -> (String, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                return;
            };
            counted.fetch_add(1, Ordering::Relaxed);
            let service = hyper_util::service::TowerToHyperService::new(app.clone());
            tokio::spawn(
                hyper::server::conn::http1::Builder::new()
                    .serve_connection(hyper_util::rt::TokioIo::new(stream), service),
            );
        }
    });
    (url, connections)
}

#[tokio::test]
async fn reads_the_reply_with_the_token_over_one_kept_alive_connection() {
    let (url, connections) = agent().await;
    let client = AgentClient::new(Duration::from_secs(5)).expect("a client");
    for _ in 0..3 {
        let reply = client.pods(&url, Some("t")).await.expect("a reply");
        assert_eq!(reply, empty_reply());
    }
    assert_eq!(connections.load(Ordering::Relaxed), 1, "kept alive");

    let error = client.pods(&url, None).await.expect_err("no token");
    assert_eq!(
        error.to_string(),
        format!("GET {url}/v1/pods: HTTP 401 Unauthorized")
    );
}

#[tokio::test]
async fn an_agent_with_inbound_is_read_there_and_an_older_one_at_v1_pods() {
    let client = AgentClient::new(Duration::from_secs(5)).expect("a client");
    let (newer, _) = serve(
        Router::new()
            .route("/v1/pods/inbound", get(|| async { Json(one_pod()) }))
            .route("/v1/pods", get(|| async { StatusCode::IM_A_TEAPOT })),
    )
    .await;
    let read = client.inbound(&newer, None, Format::Inbound).await;
    assert_eq!(read.expect("a reply"), (one_pod(), Format::Inbound));

    let (older, _) = agent().await;
    let read = client.inbound(&older, Some("t"), Format::Inbound).await;
    let empty = InboundReply::of(&empty_reply());
    assert_eq!(read.expect("a reply"), (empty.clone(), Format::Pods));
    let read = client.inbound(&older, Some("t"), Format::Pods).await;
    assert_eq!(read.expect("a reply"), (empty, Format::Pods));

    // Other failures are not taken for an older agent.
    let error = client
        .inbound(&newer, None, Format::Pods)
        .await
        .expect_err("no /v1/pods");
    assert_eq!(
        error.to_string(),
        format!("GET {newer}/v1/pods: HTTP 418 I'm a teapot")
    );
}

#[tokio::test]
async fn an_agent_that_does_not_answer_times_out() {
    // Accepts connections (the backlog) but never reads them.
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    let client = AgentClient::new(Duration::from_millis(100)).expect("a client");
    let error = client.pods(&url, None).await.expect_err("no answer");
    assert_eq!(
        error.to_string(),
        format!("GET {url}/v1/pods: no reply within 100ms")
    );
    drop(listener);
}

#[tokio::test]
async fn a_refused_connection_names_the_url_and_the_cause() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("a port");
    let url = format!("http://{}", listener.local_addr().expect("an address"));
    drop(listener);
    let error = AgentClient::new(Duration::from_secs(5))
        .expect("a client")
        .pods(&url, None)
        .await
        .expect_err("refused");
    let message = error.to_string();
    assert!(
        message.starts_with(&format!("GET {url}/v1/pods: ")),
        "{message}"
    );
    assert!(message.contains("refused"), "the OS's reason: {message}");
}
