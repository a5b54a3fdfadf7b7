//! Agent memory: resident set idle, and with 10,000 concurrent keep-alive connections (wrk
//! `-c 10000` against the app), checked against the agent's own `podmeter_connections_tracked`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    Lab, load,
    system::{self, status_kib},
};

#[derive(Clone, Debug, Serialize)]
pub struct MemoryResult {
    pub idle_rss_kib: u64,
    /// Largest resident set sampled while the connections were open.
    pub connections_rss_kib: u64,
    /// The agent's peak resident set over its life (`VmHWM`).
    pub peak_rss_kib: u64,
    pub connections_wanted: u32,
    /// Largest `podmeter_connections_tracked` the agent reported during the run.
    pub connections_tracked: u64,
    pub wrk: load::WrkReport,
}

/// `podmeter_connections_tracked` from `/metrics`.
fn connections_tracked(agent: &podmeter_tests::AgentProcess) -> Result<u64> {
    let text = agent.get_text("/metrics")?;
    Ok(text
        .lines()
        .find(|l| l.starts_with("podmeter_connections_tracked "))
        .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        .map_or(0, |v| v as u64))
}

pub fn measure(lab: &Lab<'_>) -> Result<MemoryResult> {
    let agent = lab.start_agent(&lab.observed_root, &[])?;
    system::sleep(Duration::from_secs(2))?;
    let idle_rss_kib = status_kib(agent.pid(), "VmRSS")?;
    println!("  idle: {idle_rss_kib} KiB resident");

    let wanted = lab.plan.memory_connections;
    let wrk = lab.wrk(lab.app_url(), wanted, lab.plan.memory_run);
    let command = wrk.command(&lab.client)?;
    let duration = wrk.duration;
    let started = Instant::now();
    let load = std::thread::spawn(move || load::run_prepared(command, duration));
    let (mut rss_max, mut tracked_max) = (0u64, 0u64);
    let mut next_scrape = started;
    // Sample until wrk is done; the agent counts its connection table every 5 s.
    while !load.is_finished() {
        if let Ok(rss) = status_kib(agent.pid(), "VmRSS") {
            rss_max = rss_max.max(rss);
        }
        if Instant::now() >= next_scrape {
            tracked_max = tracked_max.max(connections_tracked(&agent).unwrap_or(0));
            next_scrape += Duration::from_millis(500);
        }
        if system::check_interrupted().is_err() {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let report = load
        .join()
        .map_err(|_| anyhow::anyhow!("wrk thread panicked"))?
        .context("wrk with 10,000 connections")?;
    system::check_interrupted()?;
    let peak_rss_kib = status_kib(agent.pid(), "VmHWM")?;
    println!(
        "  {wanted} connections: {rss_max} KiB resident (peak {peak_rss_kib} KiB), {tracked_max} tracked, {:.0} req/s, {} socket errors",
        report.requests_per_sec, report.socket_errors
    );
    Ok(MemoryResult {
        idle_rss_kib,
        connections_rss_kib: rss_max,
        peak_rss_kib,
        connections_wanted: wanted,
        connections_tracked: tracked_max,
        wrk: report,
    })
}
