//! A real Prometheus (Debian's `prometheus` binary) scraping the agent on loopback, with a
//! generated configuration and a temporary storage directory; and Debian's `promtool check
//! metrics` on a scrape.

use std::{
    collections::BTreeMap,
    net::{SocketAddr, TcpListener},
    process::Command,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    process::{ChildGuard, CommandOutput, run_with_input},
    tempdir::{self, TempDir},
    wait::poll_until,
};

/// The Prometheus server binary (Debian package `prometheus`).
pub const PROMETHEUS_BIN: &str = "/usr/bin/prometheus";
/// Its linter (same package).
pub const PROMTOOL_BIN: &str = "/usr/bin/promtool";
/// How long Prometheus may take to report ready.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// One sample of an instant query: its labels and value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub labels: BTreeMap<String, String>,
    pub value: f64,
}

/// A running Prometheus that scrapes one target; dropping it stops the server (SIGTERM by PID,
/// then SIGKILL) and removes its storage.
#[derive(Debug)]
pub struct Prometheus {
    // Field order matters: the process stops before its directory is removed.
    process: ChildGuard,
    _dir: TempDir,
    base_url: String,
    http: ureq::Agent,
}

impl Prometheus {
    /// Starts Prometheus on a free loopback port, scraping `target` (`host:port`, path
    /// `/metrics`) every `interval`, and returns once it is ready.
    pub fn start(target: SocketAddr, interval: Duration) -> Result<Self> {
        let dir = tempdir::new("prometheus")?;
        let interval_ms = interval.as_millis().max(100);
        // honor_labels: the agent's namespace/pod labels name the pod that served, not the
        // scrape target, and must not be renamed to exported_*.
        let config = format!(
            "global:\n  scrape_interval: {interval_ms}ms\n  scrape_timeout: {interval_ms}ms\n  \
             evaluation_interval: {interval_ms}ms\nscrape_configs:\n  - job_name: podmeter\n    \
             honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = tempdir::write(&dir, "prometheus.yml", &config)?;
        let port = free_loopback_port()?;
        let listen = format!("127.0.0.1:{port}");
        let mut command = Command::new(PROMETHEUS_BIN);
        command
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address={listen}"))
            .arg("--storage.tsdb.retention.time=1h")
            .arg("--log.level=warn");
        let process = ChildGuard::spawn_forwarding(command, "prometheus")?;
        let http: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(10)))
            .http_status_as_error(false)
            .build()
            .into();
        let mut prometheus = Self {
            process,
            _dir: dir,
            base_url: format!("http://{listen}"),
            http,
        };
        prometheus
            .wait_ready()
            .with_context(|| format!("config:\n{config}"))?;
        Ok(prometheus)
    }

    fn wait_ready(&mut self) -> Result<()> {
        let url = format!("{}/-/ready", self.base_url);
        let mut exited = None;
        let ready = poll_until(START_TIMEOUT, Duration::from_millis(100), || {
            if let Ok(Some(status)) = self.process.try_wait() {
                exited = Some(status);
                return true;
            }
            self.http
                .get(&url)
                .call()
                .is_ok_and(|r| r.status().is_success())
        });
        if let Some(status) = exited {
            bail!("prometheus exited during start-up: {status}; see the [prometheus] lines above");
        }
        if !ready {
            bail!("prometheus was not ready within {START_TIMEOUT:?}");
        }
        Ok(())
    }

    fn api(&self, path: &str, params: &[(&str, &str)]) -> Result<Value> {
        let url = format!("{}{path}", self.base_url);
        let mut request = self.http.get(&url);
        for (key, value) in params {
            request = request.query(*key, *value);
        }
        let mut response = request.call().with_context(|| format!("GET {url}"))?;
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading GET {url}"))?;
        let reply: Value = serde_json::from_str(&text)
            .with_context(|| format!("GET {url} {params:?}: not JSON: {text}"))?;
        if reply["status"] != "success" {
            bail!("GET {url} {params:?} failed: {reply}");
        }
        Ok(reply["data"].clone())
    }

    /// An instant query; fails when Prometheus rejects the expression.
    pub fn query(&self, expr: &str) -> Result<Vec<Sample>> {
        let data = self.api("/api/v1/query", &[("query", expr)])?;
        match data["resultType"].as_str() {
            Some("vector") => data["result"]
                .as_array()
                .context("vector without result")?
                .iter()
                .map(|item| {
                    Ok(Sample {
                        labels: item["metric"]
                            .as_object()
                            .map(|m| {
                                m.iter()
                                    .map(|(k, v)| (k.clone(), v.as_str().unwrap_or("").to_owned()))
                                    .collect()
                            })
                            .unwrap_or_default(),
                        value: sample_value(&item["value"])?,
                    })
                })
                .collect(),
            Some("scalar") => Ok(vec![Sample {
                labels: BTreeMap::new(),
                value: sample_value(&data["result"])?,
            }]),
            other => bail!("query {expr:?}: unexpected result type {other:?}: {data}"),
        }
    }

    /// The value of a query that yields at most one sample; `None` when it yields none.
    pub fn value(&self, expr: &str) -> Result<Option<f64>> {
        let samples = self.query(expr)?;
        match samples.as_slice() {
            [] => Ok(None),
            [one] => Ok(Some(one.value)),
            many => bail!("query {expr:?} yielded {} samples: {many:?}", many.len()),
        }
    }

    /// Polls `expr` every 250 ms until `accept` takes its value (then that value), or `timeout`.
    pub fn wait_value(
        &self,
        expr: &str,
        timeout: Duration,
        accept: impl Fn(f64) -> bool,
    ) -> Result<f64> {
        let deadline = Instant::now() + timeout;
        loop {
            let value = self.value(expr)?;
            if let Some(v) = value
                && accept(v)
            {
                return Ok(v);
            }
            if Instant::now() >= deadline {
                bail!("query {expr:?} still {value:?} after {timeout:?}");
            }
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// Waits until the scrape target is up, and fails with Prometheus's own error if the
    /// scrapes fail (e.g. a parse error in the exposition).
    pub fn wait_target_up(&self, timeout: Duration) -> Result<Value> {
        let deadline = Instant::now() + timeout;
        loop {
            let targets = self.api("/api/v1/targets", &[])?;
            if let Some(target) = targets["activeTargets"].as_array().and_then(|t| t.first()) {
                let error = target["lastError"].as_str().unwrap_or("");
                if target["health"] == "up" && error.is_empty() {
                    return Ok(target.clone());
                }
                if !error.is_empty() && Instant::now() >= deadline {
                    bail!("scraping the agent fails: {error}");
                }
            }
            if Instant::now() >= deadline {
                bail!("the target was not up within {timeout:?}: {targets}");
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

fn sample_value(pair: &Value) -> Result<f64> {
    let text = pair[1]
        .as_str()
        .with_context(|| format!("no value in {pair}"))?;
    match text {
        "NaN" => Ok(f64::NAN),
        "+Inf" => Ok(f64::INFINITY),
        "-Inf" => Ok(f64::NEG_INFINITY),
        _ => text
            .parse()
            .with_context(|| format!("bad sample value {text:?}")),
    }
}

/// A port on 127.0.0.1 that was free a moment ago (bound, read, released).
pub fn free_loopback_port() -> Result<u16> {
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a free loopback port")?;
    Ok(listener.local_addr()?.port())
}

/// Runs `promtool check metrics` on `exposition`; the output lists every problem found.
pub fn promtool_check_metrics(exposition: &str) -> Result<CommandOutput> {
    let mut command = Command::new(PROMTOOL_BIN);
    command.args(["check", "metrics"]);
    run_with_input(command, exposition.as_bytes(), Duration::from_secs(30))
}
