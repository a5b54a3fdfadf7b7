//! `cargo xtask demo` (the README's main command): per-pod QPS measured in the kernel turning into
//! replica decisions. Two backends under a fixed load, HPA targets 25 and 10 req/s per pod; the
//! HPA's algorithm decides every sync period on the rates podmeter serves, and pods start and stop
//! accordingly. Beside it: what a source that counts every request at both ends would decide.
//! Everything it creates is removed on exit, on Ctrl-C too.

use std::{io::Write as _, time::Duration};

use anyhow::bail;
use podmeter_tests::autoscale::{self, BackendSpec, Scenario, SyncReport};

use crate::interrupt;

/// Demo options; every default is the reference scenario.
#[derive(clap::Args)]
pub struct Args {
    /// Requests per second sent to each backend (through its ingress). 49 by default: at exactly
    /// 50 the step from 4 to 5 replicas is knife-edge (a served total 0.1 % high gives 6).
    #[arg(long, default_value_t = autoscale::REFERENCE_RATE)]
    rate: u32,
    /// HPA target of backend-1, requests per second per pod.
    #[arg(long, default_value_t = 25.0)]
    target_1: f64,
    /// HPA target of backend-2, requests per second per pod.
    #[arg(long, default_value_t = 10.0)]
    target_2: f64,
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
        let rates: Vec<String> = b
            .pods
            .iter()
            .map(|(_, r)| r.map_or_else(|| "-".to_owned(), |r| format!("{r:.1}")))
            .collect();
        println!(
            "  {:<10} target {:>4.0}/pod  replicas {:>2} -> {:<2}  per-pod QPS [{}]",
            b.name,
            b.target_per_pod,
            b.replicas,
            b.desired,
            rates.join(" ")
        );
        println!("  {:<10} {}", "", b.reason);
        println!(
            "  {:<10} double-counted source: {:.1}/pod -> would want {}",
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
    // Always: cargo does nothing when the binary is current, and the demo must not run an agent
    // older than the sources. A binary named by PODMETER_BIN is the caller's.
    if std::env::var_os(podmeter_tests::agent::AGENT_BIN_ENV).is_none() {
        crate::test::Steps::new(1).run(
            "building the podmeter binary and its eBPF programs",
            "about 3 min on 2 cores, then seconds",
            || crate::test::cargo(&["build", "--package", "podmeter", "--bin", "podmeter"]),
        )?;
    }
    let backend = |name: &str, target: f64| BackendSpec {
        name: name.to_owned(),
        rate: args.rate,
        target_per_pod: target,
        max_replicas: 10,
    };
    let scenario = Scenario {
        backends: vec![
            backend("backend-1", args.target_1),
            backend("backend-2", args.target_2),
        ],
        sync_period: Duration::from_secs(args.sync_secs.max(1)),
        rate_window_secs: args.window_secs,
        max_duration: Duration::from_secs(args.max_secs),
        settle_syncs: args.settle_syncs.max(1),
    };
    println!(
        "podmeter demo: two backends, each behind an nginx ingress (round robin per request), {} req/s each \
         from a hey client pod.\nHPA targets: backend-1 {}/pod, backend-2 {}/pod; a decision every {} s on the \
         per-pod rates podmeter measures in the kernel ({} s window). Ctrl-C ends it.\n",
        args.rate, args.target_1, args.target_2, args.sync_secs, args.window_secs
    );
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
        "  requests answered {}, counted by podmeter at the ingresses {}",
        outcome.answered, outcome.counted_inbound
    );
    if outcome.answered != outcome.counted_inbound {
        bail!(
            "podmeter counted {} requests, the clients saw {} answered",
            outcome.counted_inbound,
            outcome.answered
        );
    }
    println!("everything created was removed.");
    Ok(())
}
