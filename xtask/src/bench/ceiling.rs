//! The pipeline ceiling: the criterion benches of the userspace event path on one core
//! (`agent/benches/pipeline.rs`), and the highest request rate the live agent sustains with zero
//! lost events when both ends of every request are observed (four events per request).
//!
//! Per-request events only flow with route labels: by default the kernel aggregates every
//! exchange itself and the ring buffer stays idle. So the live agent here runs with
//! [`LIVE_AGENT_ARGS`] (`--route-labels`), the one configuration the event path still limits.

use std::{path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use serde::Serialize;
use serde_json::Value;

use super::{Lab, Plan, system};
use crate::test::workspace;

/// The benches `cargo xtask bench` reads, as `group/function`.
pub const BENCHES: [&str; 5] = [
    "pipeline/decode",
    "pipeline/decode_pair",
    "pipeline/decode_pair_book",
    "pipeline/decode_pair_book_routes",
    "rates/book_counter_read_64_pods",
];
/// The bench whose throughput is the pipeline ceiling: the whole event path.
pub const CEILING_BENCH: &str = "pipeline/decode_pair_book";
/// The live agent's flags: route labels, which turn the per-request events on.
pub const LIVE_AGENT_ARGS: [&str; 1] = ["--route-labels"];

/// One criterion bench.
#[derive(Clone, Debug, Serialize)]
pub struct CriterionBench {
    pub name: String,
    /// Median time of one iteration.
    pub ns_per_iteration: f64,
    /// Elements (ring records, or counter reads) per iteration.
    pub elements: u64,
    pub elements_per_sec: f64,
}

/// Builds the bench binary (before any timing starts).
pub fn build() -> Result<()> {
    crate::test::cargo(&[
        "bench",
        "-p",
        "podmeter-agent",
        "--bench",
        "pipeline",
        "--no-run",
    ])
}

/// Runs the criterion benches pinned to `cpu` and reads their estimates.
pub fn criterion(plan: &Plan, cpu: usize) -> Result<Vec<CriterionBench>> {
    let results = crate::test::target_dir().join("criterion");
    for bench in BENCHES {
        // Stale results of an earlier run must not pass for this one's.
        let _ = std::fs::remove_dir_all(results.join(bench).join("new"));
    }
    let mut command = Command::new("taskset");
    command
        .args(["-c", &cpu.to_string()])
        .arg(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args([
            "bench",
            "--quiet",
            "-p",
            "podmeter-agent",
            "--bench",
            "pipeline",
            "--",
        ])
        .current_dir(workspace());
    if plan.quick {
        command.args(["--warm-up-time", "0.5", "--measurement-time", "1"]);
    }
    let output = podmeter_tests::run(command, Duration::from_secs(240))?;
    if !output.success() {
        bail!(
            "cargo bench failed ({}):\n{}\n{}",
            output.status,
            output.stdout,
            output.stderr
        );
    }
    BENCHES
        .iter()
        .map(|bench| read_estimate(&results, bench))
        .collect()
}

fn read_estimate(results: &Path, bench: &str) -> Result<CriterionBench> {
    let dir = results.join(bench).join("new");
    let read = |file: &str| -> Result<Value> {
        let path = dir.join(file);
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))
    };
    let estimates = read("estimates.json")?;
    let benchmark = read("benchmark.json")?;
    let ns = estimates["median"]["point_estimate"]
        .as_f64()
        .with_context(|| format!("{bench}: no median estimate"))?;
    let elements = benchmark["throughput"]["Elements"].as_u64().unwrap_or(1);
    Ok(CriterionBench {
        name: bench.to_owned(),
        ns_per_iteration: ns,
        elements,
        elements_per_sec: elements as f64 / (ns * 1e-9),
    })
}

/// One saturating run against the live agent.
#[derive(Clone, Debug, Serialize)]
pub struct LiveRun {
    pub connections: u32,
    /// Requests booked per second, at the server and at the client (two per request).
    pub observed_requests_per_sec: f64,
    pub events_per_sec: f64,
    pub events_sent: u64,
    pub events_dropped: u64,
    pub events_received: u64,
    /// Dropped in the kernel, or sent and never read.
    pub events_lost: u64,
}

#[derive(Clone, Debug, Serialize)]
pub struct LiveCeiling {
    /// The live agent's extra flags ([`LIVE_AGENT_ARGS`]).
    pub agent_args: Vec<String>,
    pub runs: Vec<LiveRun>,
    /// The highest observed request rate with zero lost events.
    pub sustained_observed_requests_per_sec: Option<f64>,
    pub sustained_events_per_sec: Option<f64>,
    /// True when that was the most the load generator could drive: the ceiling is higher.
    pub load_bound: bool,
}

/// Kernel and agent event counters from `/v1/agent`.
fn event_counters(agent: &podmeter_tests::AgentProcess) -> Result<(u64, u64, u64)> {
    let health = agent.get("/v1/agent")?;
    let n = |v: &Value| v.as_u64().unwrap_or(0);
    Ok((
        n(&health["kernel"]["events_sent"]),
        n(&health["kernel"]["events_dropped"]),
        n(&health["events_received"]),
    ))
}

/// Saturates the app with fewer and fewer connections (less load) until no event is lost.
pub fn live(lab: &Lab<'_>) -> Result<LiveCeiling> {
    // Both pods observed: the client's sockets emit events too. Route labels turn events on.
    let agent = lab.start_agent(lab.cluster.cgroup_root(), &LIVE_AGENT_ARGS)?;
    system::sleep(Duration::from_millis(500))?;
    let mut runs = Vec::new();
    let mut sustained = None;
    for (i, connections) in [lab.plan.connections, 16, 4, 1].into_iter().enumerate() {
        system::check_interrupted()?;
        let (sent0, dropped0, received0) = event_counters(&agent)?;
        let served0 = agent
            .pod_counts(lab.server.namespace(), lab.server.name())?
            .inbound;
        let sent0_client = agent
            .pod_counts(lab.client.namespace(), lab.client.name())?
            .outbound;
        let report = lab
            .wrk(lab.app_url(), connections, lab.plan.run)
            .run_from(&lab.client)?;
        // Let the agent drain what is left and book the last counter read.
        let mut last = event_counters(&agent)?;
        for _ in 0..20 {
            system::sleep(Duration::from_millis(150))?;
            let now = event_counters(&agent)?;
            if now == last && now.2 >= now.0 {
                break;
            }
            last = now;
        }
        system::sleep(Duration::from_millis(300))?;
        let (sent1, dropped1, received1) = event_counters(&agent)?;
        let observed = agent
            .pod_counts(lab.server.namespace(), lab.server.name())?
            .inbound
            .saturating_sub(served0)
            + agent
                .pod_counts(lab.client.namespace(), lab.client.name())?
                .outbound
                .saturating_sub(sent0_client);
        let (sent, dropped, received) = (
            sent1 - sent0,
            dropped1 - dropped0,
            received1.saturating_sub(received0),
        );
        let secs = report.secs.max(1e-3);
        let run = LiveRun {
            connections,
            observed_requests_per_sec: observed as f64 / secs,
            events_per_sec: (sent + dropped) as f64 / secs,
            events_sent: sent,
            events_dropped: dropped,
            events_received: received,
            events_lost: dropped + sent.saturating_sub(received),
        };
        println!(
            "  live agent, {connections} connections: {:.0} observed req/s, {:.0} events/s, {} lost",
            run.observed_requests_per_sec, run.events_per_sec, run.events_lost
        );
        let lossless = run.events_lost == 0;
        if lossless {
            sustained = Some((i, run.observed_requests_per_sec, run.events_per_sec));
        }
        runs.push(run);
        if lossless {
            break;
        }
    }
    Ok(LiveCeiling {
        agent_args: LIVE_AGENT_ARGS.iter().map(|a| (*a).to_owned()).collect(),
        runs,
        sustained_observed_requests_per_sec: sustained.map(|s| s.1),
        sustained_events_per_sec: sustained.map(|s| s.2),
        load_bound: sustained.is_some_and(|s| s.0 == 0),
    })
}
