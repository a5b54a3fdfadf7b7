//! Concurrency accuracy: a server that answers every request after a known delay, driven at a
//! known paced rate, and the agent's average requests in flight (`concurrency` in `/v1/pods`)
//! against Little's law, L = rate x mean latency, from the agent's own rate and the kernel's
//! exact mean latency, and against the schedule's ideal (driven rate x delay).

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result, bail};
use podmeter_tests::raw_http::{self, PacedClient, PayloadServer};
use serde::Serialize;

use super::{Lab, system};

/// The agent's window: the load runs twice as long, and readings start once it is full.
const WINDOW_SECS: u64 = 10;
/// 20 keep-alive connections sending every 500 ms, staggered: 40 req/s, 10 in flight.
const THREADS: u32 = 20;
const RATE_PER_THREAD: f64 = 2.0;
const DELAY_MS: u32 = 250;
const RESPONSE_BODY: usize = 64;
const LOAD_FOR: Duration = Duration::from_secs(24);

#[derive(Clone, Debug, Serialize)]
pub struct ConcurrencyResult {
    pub driven_rps: f64,
    pub delay_ms: u32,
    pub window_secs: u64,
    /// The kernel's exact mean latency of the run (latency sum / count of the server's flow).
    pub mean_latency_secs: f64,
    /// Readings with a full window of steady load.
    pub readings: usize,
    /// Median and largest |L / (rate x mean latency) - 1| over the readings.
    pub littles_law_error_median: f64,
    pub littles_law_error_max: f64,
    /// Median L, and its relative difference from driven rate x delay.
    pub concurrency_median: f64,
    pub ideal: f64,
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

pub fn measure(lab: &Lab<'_>) -> Result<ConcurrencyResult> {
    let server = PayloadServer::start(&lab.fresh)?;
    let window = WINDOW_SECS.to_string();
    let agent = lab.start_agent(&lab.observed_root, &["--rate-window-secs", &window])?;
    let load = PacedClient::new(
        format!("/{DELAY_MS}/{RESPONSE_BODY}"),
        THREADS,
        RATE_PER_THREAD,
        LOAD_FOR,
    );
    let driven = load.rate();
    let client = load.spawn(&lab.client, server.ip(), raw_http::PORT)?;
    let started = Instant::now();
    // (rate, L) of the server's inbound flow once the window is full of steady load.
    let steady = Duration::from_secs(WINDOW_SECS + 2);
    let mut readings = Vec::new();
    while started.elapsed() < LOAD_FOR {
        system::sleep(Duration::from_millis(500))?;
        if started.elapsed() < steady {
            continue;
        }
        if let Ok(pod) = agent.pod_entry("default", lab.fresh.name())
            && let Some(l) = pod.inbound.concurrency
        {
            readings.push((pod.inbound.rate, l));
        }
    }
    let report = client.wait().context("paced client")?;
    if !report.errors.is_empty() || report.late * 100 > report.requests {
        bail!("the paced client did not keep its schedule: {report:?}");
    }
    // Every exchange in the kernel's latency sum (the histogram is read every second).
    system::sleep(Duration::from_millis(1_500))?;
    let observed = agent
        .pod_entry("default", lab.fresh.name())?
        .observed
        .inbound;
    if observed.latency_count != report.requests || readings.is_empty() {
        bail!(
            "{} exchanges in the kernel's latency sum for {} sent, {} readings",
            observed.latency_count,
            report.requests,
            readings.len()
        );
    }
    let mean_latency_secs = observed.latency_seconds_sum / observed.latency_count as f64;
    let errors: Vec<f64> = readings
        .iter()
        .map(|(rate, l)| (l / (rate * mean_latency_secs) - 1.0).abs())
        .collect();
    let result = ConcurrencyResult {
        driven_rps: driven,
        delay_ms: DELAY_MS,
        window_secs: WINDOW_SECS,
        mean_latency_secs,
        readings: readings.len(),
        littles_law_error_median: median(errors.clone()),
        littles_law_error_max: errors.iter().copied().fold(0.0, f64::max),
        concurrency_median: median(readings.iter().map(|(_, l)| *l).collect()),
        ideal: driven * f64::from(DELAY_MS) / 1000.0,
    };
    println!(
        "  {:.0} req/s x {} ms: L median {:.3} (ideal {:.2}); against rate x the kernel's mean \
         latency {:.5} s: median error {:.3} %, max {:.3} % over {} readings",
        result.driven_rps,
        result.delay_ms,
        result.concurrency_median,
        result.ideal,
        result.mean_latency_secs,
        result.littles_law_error_median * 100.0,
        result.littles_law_error_max * 100.0,
        result.readings
    );
    Ok(result)
}
