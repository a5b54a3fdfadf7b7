//! `cargo xtask demo` (the README's main command): per-pod QPS measured in the kernel turning into
//! replica decisions. Two backends under a fixed load, HPA targets 25 and 10 req/s per pod; the
//! HPA's algorithm decides every sync period on the rates podmeter serves, and pods start and stop
//! accordingly. Beside it: what a source that counts every request at both ends would decide.
//! `--scenario concurrency` scales one backend whose requests take 100 ms on the requests in
//! flight per pod instead (`http_requests_concurrency`, target 2: 3 replicas).
//! Everything it creates is removed on exit, on Ctrl-C too.

use std::{io::Write as _, time::Duration};

use anyhow::bail;
use podmeter_tests::autoscale::{self, Metric, Scenario, SyncReport};

use crate::interrupt;

/// Which scenario the demo runs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum ScenarioKind {
    /// Two nginx backends scaling on `http_requests_per_second`: 2 and 5 replicas.
    #[default]
    Reference,
    /// One backend whose requests take 100 ms, scaling on `http_requests_concurrency` (requests
    /// in flight per pod, Little's law's L): 50 req/s x 0.1 s = 5 in flight, 3 replicas.
    Concurrency,
}

/// Demo options; every default is the chosen scenario's.
#[derive(clap::Args)]
pub struct Args {
    /// The scenario.
    #[arg(long, value_enum, default_value_t = ScenarioKind::Reference)]
    scenario: ScenarioKind,
    /// Requests per second sent to each backend (through its ingress). Reference: 48 by default
    /// (at exactly 50 the step from 4 to 5 replicas is knife-edge: a served total 0.1 % high
    /// gives 6, and a windowed rate of paced load reads a burst or two high or low). Concurrency: 50 by default.
    #[arg(long)]
    rate: Option<u32>,
    /// HPA target of the first backend per pod: backend-1's requests per second (default 25), or
    /// slow-backend's requests in flight (default 2).
    #[arg(long)]
    target_1: Option<f64>,
    /// HPA target of backend-2, requests per second per pod (default 10; reference only).
    #[arg(long)]
    target_2: Option<f64>,
    /// Seconds between HPA decisions (the controller's default is 15).
    #[arg(long, default_value_t = 10)]
    sync_secs: u64,
    /// The agent's rate window in seconds (5..=300).
    #[arg(long, default_value_t = 5)]
    window_secs: u32,
    /// The demo ends after this many seconds at the latest.
    #[arg(long, default_value_t = 240)]
    max_secs: u64,
    /// It ends earlier once no backend changed for this many syncs in a row.
    #[arg(long, default_value_t = 4)]
    settle_syncs: u32,
}

fn show(report: &SyncReport) {
    let bar: String = (0..report.settle_syncs)
        .map(|i| if i < report.stable_syncs { '#' } else { '.' })
        .collect();
    println!(
        "t={:>4}s  sync {:<3} settling [{bar}]",
        report.elapsed.as_secs(),
        report.sync
    );
    for b in &report.backends {
        let (label, precision) = match b.metric {
            Metric::RequestsPerSecond => ("QPS", 1),
            Metric::Concurrency => ("concurrency", 2),
        };
        let values: Vec<String> = b
            .pods
            .iter()
            .map(|(_, v)| v.map_or_else(|| "-".to_owned(), |v| format!("{v:.precision$}")))
            .collect();
        println!(
            "  {:<10} target {:>4}/pod  replicas {:>2} -> {:<2}  per-pod {label} [{}]",
            b.name,
            b.target_per_pod,
            b.replicas,
            b.desired,
            values.join(" ")
        );
        println!("  {:<10} {}", "", b.reason);
        println!(
            "  {:<10} double-counted source: {:.precision$}/pod -> would want {}",
            "", b.double_counted_per_pod, b.double_counted_desired
        );
    }
    println!();
    let _ = std::io::stdout().flush();
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    interrupt::catch_ctrl_c();
    // The agent's own logs would drown the table.
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("PODMETER_LOG", "warn") };
    let mut scenario = match args.scenario {
        ScenarioKind::Reference => Scenario::reference(),
        ScenarioKind::Concurrency => Scenario::concurrency(),
    };
    if args.target_2.is_some() && scenario.backends.len() < 2 {
        bail!("--target-2: the concurrency scenario has one backend");
    }
    for (i, backend) in scenario.backends.iter_mut().enumerate() {
        backend.rate = args.rate.unwrap_or(backend.rate);
        let target = [args.target_1, args.target_2].get(i).copied().flatten();
        backend.target_per_pod = target.unwrap_or(backend.target_per_pod);
    }
    scenario.sync_period = Duration::from_secs(args.sync_secs.max(1));
    scenario.rate_window_secs = args.window_secs;
    scenario.max_duration = Duration::from_secs(args.max_secs);
    scenario.settle_syncs = args.settle_syncs.max(1);
    // Always: cargo does nothing when the binary is current, and the demo must not run an agent
    // older than the sources. A binary named by PODMETER_BIN is the caller's.
    if std::env::var_os(podmeter_tests::agent::AGENT_BIN_ENV).is_none() {
        crate::test::Steps::new(1).run(
            "building the podmeter binary and its eBPF programs",
            "about 3 min on 2 cores, then seconds",
            || crate::test::cargo(&["build", "--package", "podmeter", "--bin", "podmeter"]),
        )?;
    }
    let rate = scenario.backends[0].rate;
    match args.scenario {
        ScenarioKind::Reference => println!(
            "podmeter demo: two backends, each behind an nginx ingress (round robin per request), {rate} req/s each \
             from a hey client pod.\nHPA targets: backend-1 {}/pod, backend-2 {}/pod; a decision every {} s on the \
             per-pod rates podmeter measures in the kernel ({} s window). Ctrl-C ends it.\n",
            scenario.backends[0].target_per_pod,
            scenario.backends[1].target_per_pod,
            args.sync_secs,
            args.window_secs
        ),
        ScenarioKind::Concurrency => {
            let backend = &scenario.backends[0];
            let delay = backend.server.latency();
            let in_flight = f64::from(rate) * delay.as_secs_f64();
            let target = backend.target_per_pod;
            let expected = ((in_flight / target).ceil() as u32).clamp(1, backend.max_replicas);
            let path = backend.server.path();
            println!(
                "podmeter demo (concurrency): {}, behind an nginx ingress (round robin per request), its replicas a \
                 server answering {path} after {} ms; {rate} req/s from a hey client pod.\nHPA target: {target} \
                 requests in flight per pod ({}); a decision every {} s on the per-pod concurrency podmeter \
                 measures in the kernel ({} s window).\nLittle's law: {rate} req/s x {:.3} s = {in_flight:.1} in \
                 flight, so ceil({in_flight:.1} / {target}) = {expected} replicas. Ctrl-C ends it.\n",
                backend.name,
                delay.as_millis(),
                Metric::Concurrency.name(),
                args.sync_secs,
                args.window_secs,
                delay.as_secs_f64(),
            );
        }
    }
    let outcome = autoscale::run(&scenario, &interrupt::INTERRUPTED, show)?;
    if outcome.interrupted {
        println!("interrupted: everything created was removed.");
        return Ok(());
    }
    println!("summary");
    for (name, replicas) in &outcome.final_replicas {
        println!(
            "  {name}: {replicas} replicas (a double-counting source would have asked for {})",
            outcome
                .double_counted_replicas
                .get(name)
                .copied()
                .unwrap_or(0)
        );
    }
    println!(
        "  equilibrium {} s after the load started, {} scale events{}",
        outcome.time_to_equilibrium.as_secs(),
        outcome.scale_events,
        if outcome.settled {
            ""
        } else {
            " (not settled within --max-secs)"
        }
    );
    println!(
        "  requests answered {}, counted by podmeter at the ingresses {} ({} answered, {} closed unread by a reload)",
        outcome.answered, outcome.counted_inbound, outcome.counted_answered, outcome.closed_unread
    );
    if !outcome.counted_exactly() {
        bail!(
            "podmeter counted {} requests ({} answered, {} closed unread), the clients saw {} answered",
            outcome.counted_inbound,
            outcome.counted_answered,
            outcome.closed_unread,
            outcome.answered
        );
    }
    println!("everything created was removed.");
    Ok(())
}
