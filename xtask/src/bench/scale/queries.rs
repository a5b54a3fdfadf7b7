//! HPA-shaped load on the metrics API: what 500 HPAs send, each asking every 15 s (the HPA
//! controller's sync period) for `http_requests_per_second` of its 100 pods by namespace and
//! label selector, over a few kept-alive connections as kube-apiserver's proxy keeps them. Each
//! answer's latency, its pod count and the age of every value in it are recorded.

use std::{
    net::SocketAddr,
    sync::{
        Arc, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, body::Bytes};
use hyper_util::rt::TokioIo;
use podmeter_metrics_api::Quantity;
use serde::{Deserialize, Serialize};

use super::{
    agents::Agents,
    bodies::second_of,
    layout::{Layout, PODS_PER_APP},
};
use crate::bench::system::percentile;

/// HPAs simulated.
pub const HPAS: usize = 500;
/// The HPA controller's default sync period.
const HPA_SYNC: Duration = Duration::from_secs(15);
/// Connections the queries are spread over.
const CONNECTIONS: usize = 4;

/// What the queries saw.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct QueryStats {
    pub sent: usize,
    pub failed: usize,
    /// Answers with fewer pods than the HPA's 100.
    pub incomplete: usize,
    pub per_sec: f64,
    pub latency_p50_ms: f64,
    pub latency_p99_ms: f64,
    /// Age of the values served: from when the simulated agent published the value's second
    /// until the answer holding it arrived.
    pub age_p50_ms: f64,
    pub age_p99_ms: f64,
    pub age_max_ms: f64,
}

/// One answer: latency and the ages of its values.
struct Answer {
    latency_ms: f64,
    ages_ms: Vec<f64>,
}

/// Sends the queries of [`HPAS`] HPAs to `api` for `length`.
pub async fn run(
    api: SocketAddr,
    layout: Layout,
    agents: Arc<Agents>,
    length: Duration,
) -> QueryStats {
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let period = HPA_SYNC.mul_f64(CONNECTIONS as f64 / HPAS as f64);
    let workers: Vec<_> = (0..CONNECTIONS)
        .map(|_| {
            let (next, agents) = (next.clone(), agents.clone());
            tokio::spawn(async move {
                let mut answers = Vec::new();
                let mut failed = 0;
                let mut sender = None;
                let mut ticker = tokio::time::interval(period);
                while started.elapsed() < length {
                    ticker.tick().await;
                    let hpa = next.fetch_add(1, Ordering::Relaxed) % HPAS;
                    match query(api, &mut sender, hpa % layout.apps(), &agents).await {
                        Ok(answer) => answers.push(answer),
                        Err(_) => {
                            failed += 1;
                            sender = None;
                        }
                    }
                }
                (answers, failed)
            })
        })
        .collect();
    let mut stats = QueryStats::default();
    let (mut latencies, mut ages) = (Vec::new(), Vec::new());
    for worker in workers {
        let Ok((answers, failed)) = worker.await else {
            continue;
        };
        stats.failed += failed;
        for answer in answers {
            stats.incomplete += usize::from(answer.ages_ms.len() < PODS_PER_APP);
            latencies.push(answer.latency_ms);
            ages.extend(answer.ages_ms);
        }
    }
    stats.sent = latencies.len() + stats.failed;
    stats.per_sec = stats.sent as f64 / started.elapsed().as_secs_f64();
    stats.latency_p50_ms = percentile(&latencies, 50.0);
    stats.latency_p99_ms = percentile(&latencies, 99.0);
    stats.age_p50_ms = percentile(&ages, 50.0);
    stats.age_p99_ms = percentile(&ages, 99.0);
    stats.age_max_ms = ages.iter().copied().fold(0.0, f64::max);
    stats
}

type Sender = hyper::client::conn::http1::SendRequest<Empty<Bytes>>;

/// One HPA's request for app `app`'s pods, on `sender` (connected first when `None`).
async fn query(
    api: SocketAddr,
    sender: &mut Option<Sender>,
    app: usize,
    agents: &Agents,
) -> Result<Answer> {
    if sender.is_none() {
        let tcp = tokio::net::TcpStream::connect(api).await?;
        let (send, connection) = hyper::client::conn::http1::handshake(TokioIo::new(tcp)).await?;
        tokio::spawn(connection);
        *sender = Some(send);
    }
    let send = sender.as_mut().context("connected above")?;
    let path = format!(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{}/pods/*/http_requests_per_second?labelSelector=app%3D{}",
        Layout::namespace(app),
        Layout::app_label(app)
    );
    let request = Request::get(path)
        .header(hyper::header::HOST, api.to_string())
        .body(Empty::new())?;
    let asked = Instant::now();
    let response = send.send_request(request).await?;
    if !response.status().is_success() {
        bail!("HTTP {}", response.status());
    }
    let body = response.into_body().collect().await?.to_bytes();
    let arrived = Instant::now();
    let list: serde_json::Value = serde_json::from_slice(&body)?;
    let published = agents
        .published
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .clone();
    let ages_ms = list["items"]
        .as_array()
        .context("no items")?
        .iter()
        .filter_map(|item| item["value"].as_str())
        .filter_map(|value| Quantity::parse(value).ok())
        .filter_map(|value| {
            let current = published.len().checked_sub(1)? as u64;
            let back = (current % 10_000 + 10_000 - second_of(value.as_f64())) % 10_000;
            let at = published.get(usize::try_from(current.checked_sub(back)?).ok()?)?;
            Some(arrived.saturating_duration_since(*at).as_secs_f64() * 1e3)
        })
        .collect();
    Ok(Answer {
        latency_ms: arrived.duration_since(asked).as_secs_f64() * 1e3,
        ages_ms,
    })
}
