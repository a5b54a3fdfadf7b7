//! Freshness: (a) the pipeline delay, from a request being served to its inclusion in what the
//! agent serves (`/v1/pods` and `/metrics`); (b) the step response of the served per-pod rate to a
//! load step 0 -> N and N -> 2N, for the default 30 s window and for a 5 s window.
//!
//! Two agents run side by side (BPF links attach independently), one per window, so one load
//! step measures both.

use std::{
    io::{BufRead as _, BufReader, Read as _, Write as _},
    net::{SocketAddr, TcpStream},
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use podmeter_tests::{AgentProcess, paced::PacedHey};
use serde::Serialize;

use super::{
    Lab,
    system::{self, median, percentile},
};

/// Workers of each hey process; the rate per worker is `N / HEY_WORKERS`.
const HEY_WORKERS: u32 = 4;
/// How often the rates are read during a step.
const STEP_POLL: Duration = Duration::from_millis(50);
/// How long the pipeline delay waits for one request before giving up on it.
const DELAY_TIMEOUT: Duration = Duration::from_secs(3);

#[derive(Clone, Debug, Serialize)]
pub struct DelayStats {
    pub samples_ms: Vec<f64>,
    pub median_ms: f64,
    pub p95_ms: f64,
    pub max_ms: f64,
    /// Requests that did not show within the timeout.
    pub missed: u32,
}

impl DelayStats {
    fn new(samples_ms: Vec<f64>, missed: u32) -> Self {
        Self {
            median_ms: median(&samples_ms),
            p95_ms: percentile(&samples_ms, 95.0),
            max_ms: percentile(&samples_ms, 100.0),
            samples_ms,
            missed,
        }
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct PipelineDelay {
    /// `GET /v1/pods`: the pod's inbound `requests` and `rate` (booked in the same step).
    pub v1_pods: DelayStats,
    /// `GET /metrics`: `podmeter_http_server_requests_started_total` (and the rate gauge, set in
    /// the same step).
    pub metrics: DelayStats,
    /// Replies in which the count had grown and the rate had moved with it.
    pub rate_moved_with_count: u32,
}

#[derive(Clone, Debug, Serialize)]
pub struct Step {
    pub window_secs: u32,
    /// `0->N` or `N->2N`.
    pub step: String,
    /// The served rate before and after the step, measured (the 5 s window's steady value).
    pub from_rps: f64,
    pub to_rps: f64,
    /// Seconds from the load step until the served rate reached 90 % of the new value.
    pub secs_to_90pct_of_new_value: Option<f64>,
    /// Seconds until it covered 90 % of the step (the same for 0 -> N).
    pub secs_to_90pct_of_step: Option<f64>,
    /// What the window's definition predicts for the first figure (plus at most one 250 ms read).
    pub model_secs: f64,
}

/// Served rates every 250 ms: seconds since the first step, then one rate per window.
pub type Series = Vec<(f64, Vec<f64>)>;

#[derive(Clone, Debug, Serialize)]
pub struct FreshnessResult {
    pub pipeline_delay: PipelineDelay,
    /// N, requests per second of the first step (hey, paced).
    pub step_load_rps: u32,
    pub steps: Vec<Step>,
    /// Served rates every 250 ms from the first step: seconds, then one rate per window.
    pub series: Series,
}

pub fn measure(lab: &Lab<'_>) -> Result<FreshnessResult> {
    let windows = lab.plan.step_windows.clone();
    let started = Instant::now();
    // One agent per window to step, each told its window; the first also measures the delay,
    // which does not depend on the window.
    let mut step_agents: Vec<(u32, AgentProcess)> = Vec::new();
    for &w in &windows {
        let secs = w.to_string();
        let agent = lab.start_agent(&lab.observed_root, &["--rate-window-secs", secs.as_str()])?;
        step_agents.push((w, agent));
    }
    let agents: Vec<(u32, &AgentProcess)> = step_agents.iter().map(|(w, a)| (*w, a)).collect();
    let (_, first) = agents.first().context("no window to step")?;

    let pipeline_delay = pipeline_delay(lab, first)?;
    println!(
        "  pipeline delay: /v1/pods median {:.0} ms, max {:.0} ms; /metrics median {:.0} ms, max {:.0} ms",
        pipeline_delay.v1_pods.median_ms,
        pipeline_delay.v1_pods.max_ms,
        pipeline_delay.metrics.median_ms,
        pipeline_delay.metrics.max_ms
    );

    // The fresh pod has served nothing: wait until every window is full of that nothing, so the
    // step is a step and not the start-up rule (which divides by the time since start-up).
    let longest = windows.iter().copied().max().unwrap_or(5);
    let idle_until = started + Duration::from_secs(u64::from(longest) + 1);
    system::sleep(idle_until.saturating_duration_since(Instant::now()))?;
    let (steps, series) = step_response(lab, &agents)?;
    for s in &steps {
        println!(
            "  step {:<5} window {:>2} s: {:.0} -> {:.0} req/s, 90% of the new value after {} (model {:.2} s)",
            s.step,
            s.window_secs,
            s.from_rps,
            s.to_rps,
            s.secs_to_90pct_of_new_value
                .map_or_else(|| "never".to_owned(), |t| format!("{t:.2} s")),
            s.model_secs
        );
    }
    Ok(FreshnessResult {
        pipeline_delay,
        step_load_rps: lab.plan.step_rps,
        steps,
        series,
    })
}

/// Inbound `requests` and `rate` of the app in `/v1/pods`.
fn pods_reading(agent: &AgentProcess, pod: &str) -> Result<(u64, f64)> {
    let entry = agent.get("/v1/pods")?;
    let found = entry["pods"].as_array().and_then(|pods| {
        pods.iter()
            .find(|p| p["namespace"] == "default" && p["name"] == pod)
    });
    Ok(found.map_or((0, 0.0), |p| {
        (
            p["inbound"]["requests"].as_u64().unwrap_or(0),
            p["inbound"]["rate"].as_f64().unwrap_or(0.0),
        )
    }))
}

/// `podmeter_http_server_requests_started_total` of the app in `/metrics` (0 before it exists).
fn metrics_reading(agent: &AgentProcess, pod: &str) -> Result<f64> {
    let text = agent.get_text("/metrics")?;
    Ok(started_total(&text, pod).unwrap_or(0.0))
}

pub fn started_total(exposition: &str, pod: &str) -> Option<f64> {
    let label = format!("pod=\"{pod}\"");
    exposition
        .lines()
        .filter(|l| l.starts_with("podmeter_http_server_requests_started_total{"))
        .find(|l| l.contains(&label))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
}

/// One keep-alive connection from the bench (outside every pod) to the app.
struct Client {
    reader: BufReader<TcpStream>,
}

impl Client {
    fn connect(addr: SocketAddr) -> Result<Self> {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
            .with_context(|| format!("connecting to {addr}"))?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        Ok(Self {
            reader: BufReader::new(stream),
        })
    }

    /// Sends one GET and reads the whole response; returns when the response has arrived.
    fn get(&mut self) -> Result<Instant> {
        self.reader
            .get_mut()
            .write_all(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")?;
        let mut length = None;
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                bail!("the app closed the connection");
            }
            let trimmed = line.trim_end();
            if trimmed.is_empty() {
                break;
            }
            if let Some((name, value)) = trimmed.split_once(':')
                && name.eq_ignore_ascii_case("content-length")
            {
                length = value.trim().parse::<usize>().ok();
            }
        }
        let mut body = vec![0; length.context("response without Content-Length")?];
        self.reader.read_exact(&mut body)?;
        Ok(Instant::now())
    }
}

fn pipeline_delay(lab: &Lab<'_>, agent: &AgentProcess) -> Result<PipelineDelay> {
    let pod = lab.server.name();
    let mut client = Client::connect(SocketAddr::from((
        lab.server.ip(),
        super::servers::APP_PORT,
    )))?;
    let (mut pods_ms, mut metrics_ms) = (Vec::new(), Vec::new());
    let (mut pods_missed, mut metrics_missed, mut rate_moved) = (0, 0, 0);
    // A fixed pseudo-random sequence spreads the requests over the 250 ms read cycle.
    let mut lcg = 0x2545_f491_u64;
    for _ in 0..lab.plan.delay_samples {
        lcg = lcg.wrapping_mul(6_364_136_223_846_793_005).wrapping_add(1);
        system::sleep(Duration::from_millis(300 + (lcg >> 33) % 400))?;
        let (count0, rate0) = pods_reading(agent, pod)?;
        let total0 = metrics_reading(agent, pod)?;
        let served = client.get()?;
        let (mut pods_seen, mut metrics_seen) = (None, None);
        while (pods_seen.is_none() || metrics_seen.is_none()) && served.elapsed() < DELAY_TIMEOUT {
            if pods_seen.is_none() {
                let (count, rate) = pods_reading(agent, pod)?;
                if count > count0 {
                    pods_seen = Some(served.elapsed());
                    if (rate - rate0).abs() > 1e-9 {
                        rate_moved += 1;
                    }
                }
            }
            if metrics_seen.is_none() && metrics_reading(agent, pod)? > total0 {
                metrics_seen = Some(served.elapsed());
            }
            system::sleep(Duration::from_millis(5))?;
        }
        let ms = |d: Duration| d.as_secs_f64() * 1e3;
        match pods_seen {
            Some(d) => pods_ms.push(ms(d)),
            None => pods_missed += 1,
        }
        match metrics_seen {
            Some(d) => metrics_ms.push(ms(d)),
            None => metrics_missed += 1,
        }
    }
    Ok(PipelineDelay {
        v1_pods: DelayStats::new(pods_ms, pods_missed),
        metrics: DelayStats::new(metrics_ms, metrics_missed),
        rate_moved_with_count: rate_moved,
    })
}

/// 0 -> N, held until the longest window is full, then N -> 2N (a second hey at N).
fn step_response(lab: &Lab<'_>, agents: &[(u32, &AgentProcess)]) -> Result<(Vec<Step>, Series)> {
    let n = lab.plan.step_rps;
    let (hold1, hold2) = (lab.plan.step_hold_first, lab.plan.step_hold_second);
    let url = lab.fresh.url("/");
    let per_worker = n / HEY_WORKERS;
    let first = PacedHey::new(
        url.clone(),
        per_worker,
        HEY_WORKERS,
        hold1 + hold2 + Duration::from_secs(1),
    )
    .prepare(&lab.client)?;
    let second = PacedHey::new(url, per_worker, HEY_WORKERS, hold2 + Duration::from_secs(1))
        .prepare(&lab.client)?;
    let pod = lab.fresh.name();
    let read = |agents: &[(u32, &AgentProcess)]| -> Result<Vec<f64>> {
        agents
            .iter()
            .map(|(_, a)| pods_reading(a, pod).map(|(_, rate)| rate))
            .collect()
    };
    let mut samples: Series = Vec::new();
    let step1 = Instant::now();
    let first = std::thread::spawn(move || first.run());
    let poll_until = |samples: &mut Series, until: Instant| -> Result<()> {
        while Instant::now() < until {
            let rates = read(agents)?;
            samples.push((step1.elapsed().as_secs_f64(), rates));
            system::sleep(STEP_POLL)?;
        }
        Ok(())
    };
    let polled = poll_until(&mut samples, step1 + hold1);
    let step2_at = step1.elapsed().as_secs_f64();
    let second = std::thread::spawn(move || second.run());
    let polled = polled.and_then(|()| poll_until(&mut samples, step1 + hold1 + hold2));
    // hey stops on its own at its duration; wait for both before anything else measures.
    let first = first
        .join()
        .map_err(|_| anyhow::anyhow!("hey thread panicked"))?;
    let second = second
        .join()
        .map_err(|_| anyhow::anyhow!("hey thread panicked"))?;
    polled?;
    first.context("hey (first step)")?;
    second.context("hey (second step)")?;

    // The steady served rates before and after the second step, from the shortest window.
    let shortest = agents
        .iter()
        .enumerate()
        .min_by_key(|(_, (w, _))| *w)
        .map_or(0, |(i, _)| i);
    let mean_between = |from: f64, to: f64| {
        let v: Vec<f64> = samples
            .iter()
            .filter(|(t, _)| *t >= from && *t < to)
            .map(|(_, r)| r[shortest])
            .collect();
        v.iter().sum::<f64>() / v.len().max(1) as f64
    };
    let end = samples.last().map_or(0.0, |s| s.0);
    let level1 = mean_between(step2_at - 2.0, step2_at);
    let level2 = mean_between(end - 2.0, end + 1.0);
    let first_reach = |i: usize, from: f64, threshold: f64| {
        samples
            .iter()
            .filter(|(t, _)| *t >= from)
            .find(|(_, r)| r[i] >= threshold)
            .map(|(t, _)| t - from)
    };
    let mut steps = Vec::new();
    for (i, (w, _)) in agents.iter().enumerate() {
        let w_secs = f64::from(*w);
        let to_90pct = first_reach(i, 0.0, 0.9 * level1);
        steps.push(Step {
            window_secs: *w,
            step: "0->N".to_owned(),
            from_rps: 0.0,
            to_rps: level1,
            // From 0 the step and the new value are the same.
            secs_to_90pct_of_new_value: to_90pct,
            secs_to_90pct_of_step: to_90pct,
            model_secs: 0.9 * w_secs,
        });
        steps.push(Step {
            window_secs: *w,
            step: "N->2N".to_owned(),
            from_rps: level1,
            to_rps: level2,
            secs_to_90pct_of_new_value: first_reach(i, step2_at, 0.9 * level2),
            secs_to_90pct_of_step: first_reach(i, step2_at, level1 + 0.9 * (level2 - level1)),
            // From N to 1.8 N is 80 % of the step.
            model_secs: 0.8 * w_secs,
        });
    }
    // Every fifth sample (250 ms) is plenty for a plot.
    let series = samples.into_iter().step_by(5).collect();
    Ok((steps, series))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_started_counter_of_a_pod_is_found() {
        let text = "# TYPE podmeter_http_server_requests_started_total counter\n\
podmeter_http_server_requests_started_total{namespace=\"default\",pod=\"fresh\"} 3\n\
podmeter_http_server_requests_started_total{namespace=\"default\",pod=\"app\"} 1234\n";
        assert_eq!(started_total(text, "app"), Some(1234.0));
        assert_eq!(started_total(text, "other"), None);
    }
}
