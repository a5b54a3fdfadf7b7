//! The simulated node agents: one TLS listener per node on its own loopback address, with the
//! real agent's TLS (rustls, ring, a self-signed certificate, ALPN http/1.1) and bearer-token
//! check, serving the body of the current second. Every read is logged, so that the reader
//! can say whether every agent was read every second.

use std::{
    convert::Infallible,
    sync::{
        Arc, Mutex, PoisonError, RwLock,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use http_body_util::Full;
use hyper::{Request, Response, StatusCode, body::Bytes, header, service::service_fn};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::TcpListener;
use tokio_rustls::{
    TlsAcceptor,
    rustls::{
        ServerConfig,
        pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer},
    },
};

use super::{bodies::Template, layout::Layout};
use crate::bench::system::percentile;

/// What the simulated agents serve and saw.
pub struct Agents {
    layout: Layout,
    /// `Bearer <token>`, the only Authorization accepted.
    authorization: String,
    /// Every node's bodies for the current second.
    bodies: RwLock<Arc<Rendered>>,
    /// The second each format was last asked for: only those asked for lately are rendered.
    wanted: [AtomicU64; 2],
    /// The second being served.
    second: AtomicU64,
    /// When the body of each second was published, by second.
    pub published: Mutex<Vec<Instant>>,
    reads: Mutex<Reads>,
}

/// Seconds a format is still rendered after it was last asked for: long past any late read.
const RENDER_UNASKED: u64 = 5;

/// The two answers: `/v1/pods` and `/v1/pods/inbound`.
#[derive(Clone, Copy, Debug)]
pub enum Format {
    Pods = 0,
    Inbound = 1,
}

/// Every node's body of each format, by node.
#[derive(Default)]
struct Rendered([Vec<Bytes>; 2]);

/// Reads since the measurement began.
#[derive(Default)]
struct Reads {
    since: Option<Instant>,
    last: Vec<Option<Instant>>,
    /// Time between two reads of the same agent.
    intervals_ms: Vec<f64>,
    /// Per agent, the whole seconds of the measurement in which it was read (bit i: second i).
    seconds: Vec<u64>,
    bytes: u64,
    rejected: u64,
}

/// Whether every agent was read every second, and what it cost on the wire.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ReadStats {
    pub reads: usize,
    pub interval_p50_ms: f64,
    pub interval_p99_ms: f64,
    pub interval_max_ms: f64,
    /// Of every (agent, whole second) of the measurement, the share with a read in it.
    pub seconds_covered: f64,
    /// Agents with at least one whole second of the measurement without a read.
    pub agents_missing_a_second: usize,
    pub bytes_per_node_per_sec: f64,
    /// Requests answered 401 (no or a wrong token) or 404 (another path).
    pub rejected: u64,
}

/// The TLS server configuration of the real agent's API (`agent/src/exporters/api_tls.rs`):
/// ring, TLS 1.2 and 1.3, a self-signed certificate, ALPN http/1.1.
fn tls() -> Result<Arc<ServerConfig>> {
    let key = rcgen::generate_simple_self_signed(vec!["podmeter-agent".to_owned()])?;
    let der = key.cert.der().clone();
    let private = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
    let mut config = ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_no_client_auth()
    .with_single_cert(vec![der], private)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

impl Agents {
    pub fn new(layout: Layout, token: &str) -> Arc<Self> {
        Arc::new(Self {
            layout,
            authorization: format!("Bearer {token}"),
            bodies: RwLock::new(Arc::default()),
            wanted: [AtomicU64::new(0), AtomicU64::new(0)],
            second: AtomicU64::new(0),
            published: Mutex::new(Vec::new()),
            reads: Mutex::new(Reads {
                last: vec![None; layout.nodes],
                seconds: vec![0; layout.nodes],
                ..Reads::default()
            }),
        })
    }

    /// Binds every agent's listener and serves them on the current runtime.
    pub async fn listen(self: &Arc<Self>) -> Result<()> {
        let acceptor = TlsAcceptor::from(tls()?);
        for node in 0..self.layout.nodes {
            let addr = Layout::agent_addr(node);
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding simulated agent {addr}"))?;
            tokio::spawn(self.clone().accept(listener, acceptor.clone(), node));
        }
        Ok(())
    }

    async fn accept(self: Arc<Self>, listener: TcpListener, acceptor: TlsAcceptor, node: usize) {
        loop {
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let agents = self.clone();
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let service = service_fn(move |request| {
                    let agents = agents.clone();
                    async move { Ok::<_, Infallible>(agents.answer(node, &request)) }
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .timer(hyper_util::rt::TokioTimer::new())
                    .serve_connection(TokioIo::new(tls), service)
                    .await;
            });
        }
    }

    fn answer<B>(&self, node: usize, request: &Request<B>) -> Response<Full<Bytes>> {
        let authorized = request
            .headers()
            .get(header::AUTHORIZATION)
            .is_some_and(|v| v.as_bytes() == self.authorization.as_bytes());
        let format = match request.uri().path() {
            "/v1/pods" => Some(Format::Pods),
            "/v1/pods/inbound" => Some(Format::Inbound),
            _ => None,
        };
        let (status, format) = match (authorized, format) {
            (false, _) => (StatusCode::UNAUTHORIZED, None),
            (true, None) => (StatusCode::NOT_FOUND, None),
            (true, Some(format)) => (StatusCode::OK, Some(format)),
        };
        let Some(format) = format else {
            self.lock_reads().rejected += 1;
            let mut response = Response::new(Full::new(Bytes::new()));
            *response.status_mut() = status;
            return response;
        };
        self.wanted[format as usize].store(self.second.load(Ordering::Relaxed), Ordering::Relaxed);
        let body = self.bodies.read().unwrap_or_else(PoisonError::into_inner).0[format as usize]
            .get(node)
            .cloned()
            .unwrap_or_default();
        self.log_read(node, body.len());
        let mut response = Response::new(Full::new(body));
        response.headers_mut().insert(
            header::CONTENT_TYPE,
            header::HeaderValue::from_static("application/json"),
        );
        response
    }

    fn lock_reads(&self) -> std::sync::MutexGuard<'_, Reads> {
        self.reads.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn log_read(&self, node: usize, bytes: usize) {
        let now = Instant::now();
        let mut reads = self.lock_reads();
        let Some(since) = reads.since else { return };
        if let Some(last) = reads.last[node].replace(now) {
            reads
                .intervals_ms
                .push(now.duration_since(last).as_secs_f64() * 1e3);
        }
        let second = now.duration_since(since).as_secs();
        if second < 64 {
            reads.seconds[node] |= 1 << second;
        }
        reads.bytes += bytes as u64;
    }

    /// Renders every node's body each second in each format asked for in the last
    /// [`RENDER_UNASKED`] seconds (both at first), from now on, forever (run it as a task). A
    /// format nobody asks for keeps its last bodies.
    pub async fn render(self: Arc<Self>, templates: [Template; 2]) {
        let templates = Arc::new(templates);
        let mut ticker = tokio::time::interval(Duration::from_secs(1));
        let mut second: u64 = 0;
        loop {
            ticker.tick().await;
            let wanted = self
                .wanted
                .each_ref()
                .map(|w| w.load(Ordering::Relaxed) + RENDER_UNASKED >= second);
            let (agents, templates) = (self.clone(), templates.clone());
            let previous = self
                .bodies
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone();
            let rendered = tokio::task::spawn_blocking(move || {
                let mut bodies = previous.0.clone();
                for (format, template) in templates.iter().enumerate() {
                    if wanted[format] {
                        bodies[format] = (0..agents.layout.nodes)
                            .map(|node| Bytes::from(template.render(agents.layout, node, second)))
                            .collect();
                    }
                }
                Rendered(bodies)
            })
            .await
            .unwrap_or_default();
            *self.bodies.write().unwrap_or_else(PoisonError::into_inner) = Arc::new(rendered);
            self.second.store(second, Ordering::Relaxed);
            self.published
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(Instant::now());
            second += 1;
        }
    }

    /// Starts logging reads: the measurement begins.
    pub fn start_measuring(&self) {
        let mut reads = self.lock_reads();
        *reads = Reads {
            since: Some(Instant::now()),
            last: vec![None; self.layout.nodes],
            seconds: vec![0; self.layout.nodes],
            ..Reads::default()
        };
    }

    /// What the reads since [`Agents::start_measuring`] say.
    pub fn read_stats(&self) -> ReadStats {
        let reads = self.lock_reads();
        let elapsed = reads.since.map_or(0.0, |s| s.elapsed().as_secs_f64());
        // Whole seconds only: the last, partial one would look like a miss.
        let whole = (elapsed.floor() as u32).min(64);
        let mask = if whole >= 64 {
            u64::MAX
        } else {
            (1u64 << whole) - 1
        };
        let covered: u32 = reads.seconds.iter().map(|s| (s & mask).count_ones()).sum();
        let missing = reads
            .seconds
            .iter()
            .filter(|s| (*s & mask).count_ones() < whole)
            .count();
        let nodes = self.layout.nodes as f64;
        ReadStats {
            reads: reads.intervals_ms.len(),
            interval_p50_ms: percentile(&reads.intervals_ms, 50.0),
            interval_p99_ms: percentile(&reads.intervals_ms, 99.0),
            interval_max_ms: reads.intervals_ms.iter().copied().fold(0.0, f64::max),
            seconds_covered: f64::from(covered) / (nodes * f64::from(whole.max(1))),
            agents_missing_a_second: missing,
            bytes_per_node_per_sec: reads.bytes as f64 / nodes / elapsed.max(1e-9),
            rejected: reads.rejected,
        }
    }
}
