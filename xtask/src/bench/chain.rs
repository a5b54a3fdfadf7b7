//! Freshness of the whole chain: from a request served by a pod until kube-apiserver's answer to
//! `GET /apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests_per_second`
//! (what the HPA controller and `kubectl get --raw` fetch) gives that pod a value above 0. The
//! chain is the agent's counter read (every 250 ms), the metrics API's collection from the agent
//! (every 1 s, TLS and a bearer token the agent checks with TokenReview), and the aggregation
//! layer's proxy to the metrics API.
//!
//! The setup is `metrics_api_e2e`'s: a real kube-apiserver ([`ControlPlane`]), the pods created
//! and marked Running in the API, the agent with `--api-auth token-review`, the metrics API
//! installed and registered as the APIService with [`metrics_api::start_registered`], and every
//! query sent as the HPA controller's ServiceAccount.
//!
//! One sample: an idle pod (value 0 or absent; one request in the agent's 5 s window gives
//! 0.2/s) gets ONE GET from the bench, timed when its full response arrived; kube-apiserver is
//! then asked every [`POLL`] until the pod's value is above 0, timed when that answer arrived.
//! The pods take turns, so each has gone idle again before its next sample.

use std::{
    collections::BTreeMap,
    io::{Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    sync::Arc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail, ensure};
use http_body_util::{BodyExt as _, Empty};
use hyper::{Request, body::Bytes, client::conn::http1::SendRequest, header};
use hyper_util::rt::TokioIo;
use podmeter_tests::{
    Nginx, Pod,
    control_plane::{ControlPlane, wait_until},
    metrics_api::{self, metric_values},
};
use serde::Serialize;
use serde_json::Value;
use tokio_rustls::{
    TlsConnector,
    rustls::{
        ClientConfig, RootCertStore,
        crypto::ring,
        pki_types::{CertificateDer, ServerName, pem::PemObject},
    },
};

use super::{
    Lab,
    freshness::DelayStats,
    system::{self, median, percentile},
};

/// Pods that take turns: with a sample about every 1.2 s, each pod rests about 10 s between
/// its samples, well over the 5 s window plus the 1 s collection it needs to read 0 again.
const PODS: usize = 8;
/// Kubernetes namespace and label of the pods (the cgroup layout `<root>/default/<pod>` names
/// the agent's pods the same).
const NAMESPACE: &str = "default";
const APP: &str = "chain";
/// The shortest window the agent accepts: a pod goes idle soonest after its request.
const RATE_WINDOW_SECS: &str = "5";
/// How often kube-apiserver is asked during a sample (from one question to the next).
const POLL: Duration = Duration::from_millis(20);
/// A request not in kube-apiserver's answer after this long is a missed sample.
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a pod may take to read 0 again before its next sample (the window, a collection and
/// slack); longer means the chain keeps stale values, and the bench stops.
const IDLE_TIMEOUT: Duration = Duration::from_secs(12);
/// Bound of one query to kube-apiserver.
const QUERY_TIMEOUT: Duration = Duration::from_secs(2);
/// How long the APIService may take to become Available.
const AVAILABLE_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Clone, Debug, Serialize)]
pub struct ChainResult {
    /// Served (full response at the bench) -> first kube-apiserver answer with the pod above 0
    /// (the answer's arrival); `missed` counts requests not seen within [`SAMPLE_TIMEOUT`].
    pub delay: DelayStats,
    pub pods: usize,
    pub rate_window_secs: u32,
    pub poll_ms: f64,
    /// Latency of one query through kube-apiserver to the metrics API, over the samples' polls.
    pub query_p50_ms: f64,
    pub query_p95_ms: f64,
    /// Queries of the samples that failed (not 200, timed out); they count as "not seen yet".
    pub query_errors: u32,
    /// kube-apiserver, etcd and kube-controller-manager up.
    pub control_plane_start_secs: f64,
    /// From the metrics API's start until its v1beta2 APIService was Available.
    pub apiservice_available_secs: f64,
    /// From the metrics API's start until kube-apiserver first answered a query with its data.
    pub first_answer_secs: f64,
    /// The first request of every pod, until all were above 0 (not counted as samples: the
    /// agent meets each pod's cgroup then).
    pub warmup_secs: f64,
    /// The whole section, the control plane's start and stop included.
    pub section_secs: f64,
}

pub fn measure(lab: &Lab<'_>) -> Result<ChainResult> {
    let started = Instant::now();
    let mut result = run(lab)?;
    result.section_secs = started.elapsed().as_secs_f64();
    Ok(result)
}

/// The section; everything it starts stops in the reverse order at its end (the control plane
/// last).
fn run(lab: &Lab<'_>) -> Result<ChainResult> {
    let cp = ControlPlane::start().context("the Kubernetes control plane")?;
    let control_plane_start_secs = cp.startup_time().as_secs_f64();
    println!("  control plane up in {control_plane_start_secs:.1} s");

    let names: Vec<String> = (0..PODS).map(|i| format!("{APP}-{i}")).collect();
    let pods = names
        .iter()
        .map(|name| lab.cluster.pod(NAMESPACE, name))
        .collect::<Result<Vec<Pod<'_>>>>()?;
    // Declared after the pods, so they stop before the pods go.
    let _servers = pods.iter().map(Nginx::start).collect::<Result<Vec<_>>>()?;
    for pod in &pods {
        cp.apply(&pod_yaml(pod.name()))
            .context("creating the Pod")?;
        cp.mark_pod_running(NAMESPACE, pod.name(), &pod.ip().to_string())?;
    }

    // The agent checks its callers' tokens with TokenReview, as its own ServiceAccount.
    cp.apply(metrics_api::AGENT_RBAC).context("agent RBAC")?;
    let agent_identity = cp.service_account_credentials(
        metrics_api::NAMESPACE,
        metrics_api::AGENT_NAME,
        Duration::from_secs(3600),
    )?;
    let kubeconfig = agent_identity
        .kubeconfig()
        .to_str()
        .context("non UTF-8 path")?;
    let agent = lab.start_agent(
        lab.cluster.cgroup_root(),
        &[
            "--rate-window-secs",
            RATE_WINDOW_SECS,
            "--api-auth",
            "token-review",
            "--kubeconfig",
            kubeconfig,
        ],
    )?;
    let registered = Instant::now();
    let _metrics_api = metrics_api::start_registered(&cp, &["--agent", agent.base_url()])?;
    let apiservice = "v1beta2.custom.metrics.k8s.io";
    wait_until(AVAILABLE_TIMEOUT, apiservice, || {
        let (available, _) = metrics_api::apiservice_available(&cp, apiservice)?;
        Ok(available.then_some(()))
    })?;
    let apiservice_available_secs = registered.elapsed().as_secs_f64();
    println!(
        "  metrics API registered, {apiservice} Available after {apiservice_available_secs:.1} s"
    );

    let hpa = cp.service_account_credentials(
        "kube-system",
        "horizontal-pod-autoscaler",
        Duration::from_secs(3600),
    )?;
    let mut chain = Chain {
        api: ApiClient::new(&cp, hpa.token().context("the HPA's token")?)?,
        path: format!(
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/{NAMESPACE}/pods/*/http_requests_per_second?labelSelector=app%3D{APP}"
        ),
        query_ms: Vec::new(),
        query_errors: 0,
    };

    // The APIService turns Available before the aggregator trusts the caBundle the metrics API
    // set in it (about 2 s of 503 "certificate signed by unknown authority" here).
    chain.wait(
        AVAILABLE_TIMEOUT,
        "an answer through the APIService",
        |_| true,
    )?;
    let first_answer_secs = registered.elapsed().as_secs_f64();
    println!("  first answer through the aggregation layer after {first_answer_secs:.1} s");

    let warmup = Instant::now();
    for pod in &pods {
        request(pod)?;
    }
    chain.wait(SAMPLE_TIMEOUT + IDLE_TIMEOUT, "every pod above 0", |v| {
        names.iter().all(|n| v.get(n).is_some_and(|&x| x > 0.0))
    })?;
    let warmup_secs = warmup.elapsed().as_secs_f64();
    println!("  warm-up: every pod's first request seen after {warmup_secs:.1} s");

    let (mut samples_ms, mut missed) = (Vec::new(), 0);
    // A fixed pseudo-random sequence, as in the freshness section.
    let mut lcg = 0x2545_f491_u64;
    for i in 0..lab.plan.chain_samples as usize {
        let pod = &pods[i % PODS];
        chain.wait(IDLE_TIMEOUT, "the pod to read 0 again", |v| {
            v.get(pod.name()).is_none_or(|&x| x <= 0.0)
        })?;
        // The previous sample ended just after a collection: a uniform wait over one 1 s
        // collection (four 250 ms counter reads) puts this request anywhere in both cycles.
        lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        system::sleep(Duration::from_millis((lcg >> 33) % 1000))?;
        let served = request(pod)?;
        match chain.seen_after(pod.name(), served)? {
            Some(delay) => samples_ms.push(delay.as_secs_f64() * 1e3),
            None => missed += 1,
        }
    }
    let delay = DelayStats {
        median_ms: median(&samples_ms),
        p95_ms: percentile(&samples_ms, 95.0),
        max_ms: percentile(&samples_ms, 100.0),
        samples_ms,
        missed,
    };
    println!(
        "  served -> in kube-apiserver's answer: median {:.0} ms, p95 {:.0} ms, max {:.0} ms, {} missed of {}",
        delay.median_ms, delay.p95_ms, delay.max_ms, delay.missed, lab.plan.chain_samples
    );
    Ok(ChainResult {
        delay,
        pods: PODS,
        rate_window_secs: RATE_WINDOW_SECS.parse()?,
        poll_ms: POLL.as_secs_f64() * 1e3,
        query_p50_ms: median(&chain.query_ms),
        query_p95_ms: percentile(&chain.query_ms, 95.0),
        query_errors: chain.query_errors,
        control_plane_start_secs,
        apiservice_available_secs,
        first_answer_secs,
        warmup_secs,
        section_secs: 0.0,
    })
}

fn pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: {APP}}}}}
spec:
  containers: [{{name: web, image: nginx}}]
"
    )
}

/// One GET from the bench (outside every pod) to the pod's nginx on a new connection; returns
/// when the whole response has arrived (nginx closes after it).
fn request(pod: &Pod<'_>) -> Result<Instant> {
    let addr = SocketAddr::from((pod.ip(), podmeter_tests::nginx::PORT));
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_nodelay(true)?;
    stream.set_read_timeout(Some(Duration::from_secs(5)))?;
    stream.write_all(b"GET / HTTP/1.1\r\nHost: bench\r\nConnection: close\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let served = Instant::now();
    ensure!(
        response.starts_with(b"HTTP/1.1 200"),
        "{}: {}",
        pod.name(),
        String::from_utf8_lossy(&response)
    );
    Ok(served)
}

/// Served value per pod name.
type Values = BTreeMap<String, f64>;

/// The per-pod values kube-apiserver serves, with the latency and failures of the queries that
/// timed samples.
struct Chain {
    api: ApiClient,
    path: String,
    query_ms: Vec<f64>,
    query_errors: u32,
}

impl Chain {
    /// The served value per pod name, and when the answer arrived.
    fn values(&mut self) -> Result<(Values, Instant)> {
        let list = self.api.get(&self.path)?;
        let arrived = Instant::now();
        Ok((metric_values(&list), arrived))
    }

    /// How long after `served` an answer first gave `pod` a value above 0, asking every [`POLL`];
    /// `None` when none did within [`SAMPLE_TIMEOUT`]. A failed query counts as "not yet".
    fn seen_after(&mut self, pod: &str, served: Instant) -> Result<Option<Duration>> {
        let mut next = served;
        while served.elapsed() < SAMPLE_TIMEOUT {
            let asked = Instant::now();
            match self.values() {
                Ok((values, arrived)) => {
                    self.query_ms
                        .push(arrived.duration_since(asked).as_secs_f64() * 1e3);
                    if values.get(pod).is_some_and(|&v| v > 0.0) {
                        return Ok(Some(arrived.duration_since(served)));
                    }
                }
                Err(error) => {
                    self.query_errors += 1;
                    println!("  query failed (counts as not seen yet): {error:#}");
                }
            }
            next += POLL;
            system::sleep(next.saturating_duration_since(Instant::now()))?;
        }
        Ok(None)
    }

    /// Asks every 200 ms until an answer satisfies `ready`, at most `timeout`; failed queries
    /// count as "not yet" (the last failure is reported on timeout).
    fn wait(
        &mut self,
        timeout: Duration,
        what: &str,
        ready: impl Fn(&Values) -> bool,
    ) -> Result<()> {
        let deadline = Instant::now() + timeout;
        loop {
            let last = self.values();
            if last.as_ref().is_ok_and(|(values, _)| ready(values)) {
                return Ok(());
            }
            if Instant::now() >= deadline {
                bail!(
                    "timed out after {timeout:?} waiting for {what}; last answer: {:?}",
                    last.map(|(values, _)| values)
                );
            }
            system::sleep(Duration::from_millis(200))?;
        }
    }
}

/// HTTPS to kube-apiserver over one kept-alive connection (as the HPA controller's client keeps
/// it), trusting the cluster CA, with a bearer token. A process per query (kubectl, curl) would
/// cost more CPU than the chain it measures, at 50 queries a second on 2 cores.
struct ApiClient {
    runtime: tokio::runtime::Runtime,
    tls: TlsConnector,
    addr: SocketAddr,
    token: String,
    sender: Option<SendRequest<Empty<Bytes>>>,
}

impl ApiClient {
    fn new(cp: &ControlPlane, token: &str) -> Result<Self> {
        let addr: SocketAddr = cp
            .server()
            .strip_prefix("https://")
            .and_then(|a| a.parse().ok())
            .with_context(|| format!("apiserver URL {}", cp.server()))?;
        let mut roots = RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(cp.ca_cert())? {
            roots.add(cert?)?;
        }
        let config = ClientConfig::builder_with_provider(Arc::new(ring::default_provider()))
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_no_client_auth();
        Ok(Self {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()?,
            tls: TlsConnector::from(Arc::new(config)),
            addr,
            token: token.to_owned(),
            sender: None,
        })
    }

    /// GET `path`; the JSON answer of a 200, an error otherwise (the connection is then made
    /// anew for the next query).
    fn get(&mut self, path: &str) -> Result<Value> {
        let Self {
            runtime,
            tls,
            addr,
            token,
            sender,
        } = self;
        let answer = runtime.block_on(async {
            tokio::time::timeout(QUERY_TIMEOUT, async {
                if sender.as_ref().is_none_or(|s| s.is_closed()) {
                    let tcp = tokio::net::TcpStream::connect(*addr).await?;
                    tcp.set_nodelay(true)?;
                    let name = ServerName::IpAddress(addr.ip().into());
                    let stream = tls.connect(name, tcp).await?;
                    let (send, connection) =
                        hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
                    tokio::spawn(connection);
                    *sender = Some(send);
                }
                let send = sender.as_mut().context("connected above")?;
                send.ready().await?;
                let request = Request::get(path)
                    .header(header::HOST, addr.to_string())
                    .header(header::ACCEPT, "application/json")
                    .header(header::AUTHORIZATION, format!("Bearer {token}"))
                    .body(Empty::new())?;
                let response = send.send_request(request).await?;
                let status = response.status();
                let body = response.into_body().collect().await?.to_bytes();
                ensure!(
                    status.is_success(),
                    "HTTP {status}: {}",
                    String::from_utf8_lossy(&body)
                );
                Ok(serde_json::from_slice::<Value>(&body)?)
            })
            .await
            .map_err(|_| anyhow::anyhow!("no answer within {QUERY_TIMEOUT:?}"))?
        });
        if answer.is_err() {
            *sender = None;
        }
        let list = answer?;
        ensure!(list["kind"] == "MetricValueList", "{list}");
        Ok(list)
    }
}
