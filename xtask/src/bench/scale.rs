//! `cargo xtask bench --only scale`: what `podmeter metrics-api`'s collector costs as the
//! cluster grows. For each N nodes of P pods, a simulator process serves N node agents on
//! loopback ([`agents`]: the real agent's TLS, bearer token and `/v1/pods` wire format, rates
//! new every second, [`bodies`]) and sends the queries of 500 HPAs ([`queries`]); a second
//! process runs the metrics API's collector and routes on them
//! (`podmeter_metrics_api::aggregator::standalone`: the binary needs a kube-apiserver, for pod
//! labels and authorisation, and one with 550,000 pods does not fit this machine). Both are
//! this xtask built in release. The collector's CPU and memory come from `/proc`, per node.
//!
//! Nothing here routes beyond 127.0.0.0/8. Every process is bounded in time and stopped by its
//! guard.

mod agents;
mod bodies;
mod layout;
mod queries;

use std::{
    io::{BufRead as _, BufReader},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use podmeter_metrics_api::aggregator::standalone::{self, Standalone};
use podmeter_tests::{ChildGuard, tempdir};
use serde::{Deserialize, Serialize};

use super::system::{self, process_cpu, status_kib};
use crate::test::{cargo, target_dir, workspace};
use agents::{Agents, ReadStats};
use layout::Layout;
use queries::QueryStats;

/// The sizes measured: N nodes by P pods.
const NODES: [usize; 3] = [100, 1_000, 5_000];
const PODS: [usize; 2] = [30, 110];
/// Before the measurement: TLS handshakes with every agent, the first collections.
const WARMUP: Duration = Duration::from_secs(8);
const MEASURE: Duration = Duration::from_secs(20);
/// Bound on a child's start (binding 5,000 listeners) and on its end past the plan.
const START_TIMEOUT: Duration = Duration::from_secs(60);
const SLACK: Duration = Duration::from_secs(30);
/// The bearer token the simulated agents accept.
const TOKEN: &str = "scale-bench-token";

/// What a child process of this section is.
#[derive(Debug, Serialize, Deserialize)]
pub enum Child {
    /// The node agents and the HPAs' queries.
    Simulate {
        nodes: usize,
        pods: usize,
        api_port: u16,
    },
    /// The metrics API's collector and routes.
    Collect {
        nodes: usize,
        pods: usize,
        api_port: u16,
        token_file: PathBuf,
    },
}

/// What the simulator reports at the end.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Simulated {
    pub reads: ReadStats,
    pub queries: QueryStats,
    /// The simulator's own CPU over the measurement, in millicores.
    pub simulator_millicores: f64,
}

/// One N x P row.
#[derive(Clone, Debug, Serialize)]
pub struct ScaleRow {
    pub nodes: usize,
    pub pods: usize,
    pub millicores: f64,
    pub millicores_per_node: f64,
    pub rss_mib: f64,
    pub rss_peak_mib: f64,
    pub kib_per_node: f64,
    /// Every CPU's busy time over the measurement, in millicores: the collector, the
    /// simulator, and whatever else ran (the kernel's loopback work included).
    pub machine_millicores: f64,
    pub simulated: Simulated,
}

/// The sizes in `$PODMETER_SCALE_SIZES` (`100x30,5000x110`), else every N x P.
fn sizes() -> Result<Vec<(usize, usize)>> {
    let Ok(listed) = std::env::var("PODMETER_SCALE_SIZES") else {
        return Ok(NODES
            .iter()
            .flat_map(|&n| PODS.iter().map(move |&p| (n, p)))
            .collect());
    };
    listed
        .split(',')
        .map(|size| {
            let (n, p) = size
                .split_once('x')
                .with_context(|| format!("PODMETER_SCALE_SIZES: `{size}` is not NxP"))?;
            Ok((n.trim().parse()?, p.trim().parse()?))
        })
        .collect()
}

/// Runs every N x P size, prints the table and writes `target/bench/scale.json`.
pub fn run() -> Result<()> {
    let sizes = sizes()?;
    println!("scale: building this xtask in release (simulator and collector)");
    cargo(&["build", "--release", "-p", "xtask"])?;
    let binary = target_dir().join("release/xtask");
    let nofile = system::raise_nofile(65_536)?;
    let machine = system::Machine::describe();
    println!(
        "scale: {} x {}, {} MiB, load average {}; open files {nofile}",
        machine.cpus, machine.cpu_model, machine.memory_mib, machine.load_average_at_start
    );
    let mut rows = Vec::new();
    for (nodes, pods) in sizes {
        system::check_interrupted()?;
        println!("scale: {nodes} nodes x {pods} pods");
        match measure(&binary, Layout { nodes, pods }) {
            Ok(row) => {
                print_row(&row);
                rows.push(row);
            }
            Err(error) => println!("  failed: {error:#}"),
        }
    }
    println!();
    print_table(&rows);
    let out = workspace().join("target/bench/scale.json");
    std::fs::create_dir_all(out.parent().context("target/bench")?)?;
    std::fs::write(&out, serde_json::to_vec_pretty(&rows)?)?;
    println!("\nscale: wrote {}", out.display());
    Ok(())
}

/// A loopback port free now.
fn free_port() -> Result<u16> {
    Ok(std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port())
}

/// Starts `binary` as `child`, its stdout lines sent to the returned channel.
fn spawn(
    binary: &Path,
    child: &Child,
    label: &str,
) -> Result<(ChildGuard, mpsc::Receiver<String>)> {
    let mut command = Command::new(binary);
    command
        .args(["bench", "--scale-child", &serde_json::to_string(child)?])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut guard = ChildGuard::spawn(command, label)?;
    let stdout = guard.child_mut().stdout.take().context("stdout")?;
    let (send, lines) = mpsc::channel();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if send.send(line).is_err() {
                break;
            }
        }
    });
    guard.attach_thread(reader);
    Ok((guard, lines))
}

/// Waits for a line starting with `prefix`; the rest of it.
fn expect(lines: &mpsc::Receiver<String>, prefix: &str, timeout: Duration) -> Result<String> {
    let deadline = Instant::now() + timeout;
    loop {
        system::check_interrupted()?;
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!("no `{prefix}` line within {timeout:?}");
        }
        match lines.recv_timeout(left.min(Duration::from_millis(200))) {
            Ok(line) => {
                if let Some(rest) = line.strip_prefix(prefix) {
                    return Ok(rest.trim().to_owned());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => bail!("exited before `{prefix}`"),
        }
    }
}

fn measure(binary: &Path, layout: Layout) -> Result<ScaleRow> {
    let dir = tempdir::new("scale")?;
    let token_file = dir.path().join("token");
    std::fs::write(&token_file, format!("{TOKEN}\n"))?;
    let api_port = free_port()?;
    let (nodes, pods) = (layout.nodes, layout.pods);
    let (mut simulator, sim_lines) = spawn(
        binary,
        &Child::Simulate {
            nodes,
            pods,
            api_port,
        },
        "scale simulator",
    )?;
    expect(&sim_lines, "ready", START_TIMEOUT)?;
    let (mut collector, collector_lines) = spawn(
        binary,
        &Child::Collect {
            nodes,
            pods,
            api_port,
            token_file,
        },
        "scale collector",
    )?;
    expect(&collector_lines, "listening", START_TIMEOUT)?;
    let pid = collector.pid();
    expect(&sim_lines, "measuring", START_TIMEOUT + WARMUP)?;
    let (cpu_before, measuring) = (process_cpu(pid)?, Instant::now());
    let cores_before = system::CoreTimes::read();
    let result = expect(&sim_lines, "result", MEASURE + SLACK)?;
    let cpu = process_cpu(pid)?.saturating_sub(cpu_before);
    let machine: f64 = cores_before
        .busy_until(&system::CoreTimes::read())
        .iter()
        .sum();
    let seconds = measuring.elapsed().as_secs_f64();
    let rss_kib = status_kib(pid, "VmRSS")?;
    let peak_kib = status_kib(pid, "VmHWM")?;
    collector.terminate(Duration::from_secs(5))?;
    simulator.terminate(Duration::from_secs(5))?;
    let simulated: Simulated = serde_json::from_str(&result)?;
    let millicores = cpu.as_secs_f64() / seconds * 1e3;
    Ok(ScaleRow {
        nodes,
        pods,
        millicores,
        millicores_per_node: millicores / nodes as f64,
        rss_mib: rss_kib as f64 / 1024.0,
        rss_peak_mib: peak_kib as f64 / 1024.0,
        kib_per_node: rss_kib as f64 / nodes as f64,
        machine_millicores: machine * 1e3,
        simulated,
    })
}

fn print_row(row: &ScaleRow) {
    let (r, q) = (&row.simulated.reads, &row.simulated.queries);
    println!(
        "  collector {:.0} m ({:.3} m/node), RSS {:.1} MiB ({:.0} KiB/node, peak {:.1} MiB); \
         reads every {:.0}/{:.0}/{:.0} ms (p50/p99/max), {:.2} % of agent-seconds read, {} agents \
         missed a second, {:.1} KiB/node/s; queries {:.1}/s, {} failed, {} incomplete, latency \
         {:.1}/{:.1} ms, value age {:.0}/{:.0}/{:.0} ms; simulator {:.0} m; machine {:.0} m",
        row.millicores,
        row.millicores_per_node,
        row.rss_mib,
        row.kib_per_node,
        row.rss_peak_mib,
        r.interval_p50_ms,
        r.interval_p99_ms,
        r.interval_max_ms,
        r.seconds_covered * 100.0,
        r.agents_missing_a_second,
        r.bytes_per_node_per_sec / 1024.0,
        q.per_sec,
        q.failed,
        q.incomplete,
        q.latency_p50_ms,
        q.latency_p99_ms,
        q.age_p50_ms,
        q.age_p99_ms,
        q.age_max_ms,
        row.simulated.simulator_millicores,
        row.machine_millicores,
    );
}

fn print_table(rows: &[ScaleRow]) {
    println!(
        "{:>5} {:>4} | {:>7} {:>7} | {:>8} {:>7} | {:>13} {:>7} | {:>11} | {:>13} | {:>6}",
        "N",
        "P",
        "m",
        "m/node",
        "RSS MiB",
        "KiB/nd",
        "read p50/p99",
        "covered",
        "query p50/99",
        "age p50/p99",
        "sim m"
    );
    for row in rows {
        let (r, q) = (&row.simulated.reads, &row.simulated.queries);
        println!(
            "{:>5} {:>4} | {:>7.0} {:>7.3} | {:>8.1} {:>7.0} | {:>6.0}/{:>6.0} {:>6.2}% | {:>5.1}/{:>5.1} | {:>6.0}/{:>6.0} | {:>6.0} {:>6.0}",
            row.nodes,
            row.pods,
            row.millicores,
            row.millicores_per_node,
            row.rss_mib,
            row.kib_per_node,
            r.interval_p50_ms,
            r.interval_p99_ms,
            r.seconds_covered * 100.0,
            q.latency_p50_ms,
            q.latency_p99_ms,
            q.age_p50_ms,
            q.age_p99_ms,
            row.simulated.simulator_millicores,
            row.machine_millicores,
        );
    }
}

/// Runs as a child process of this section, described by `spec` (JSON of [`Child`]).
pub fn child(spec: &str) -> Result<()> {
    system::raise_nofile(65_536)?;
    match serde_json::from_str(spec)? {
        Child::Simulate {
            nodes,
            pods,
            api_port,
        } => simulate(Layout { nodes, pods }, api_port),
        Child::Collect {
            nodes,
            pods,
            api_port,
            token_file,
        } => {
            let layout = Layout { nodes, pods };
            let collector = Standalone {
                agents: layout.agent_urls(),
                agent_token_file: Some(token_file),
                timing: standalone::default_timing(),
                listen: ([127, 0, 0, 1], api_port).into(),
            };
            // Bounded even if the parent's guard never comes.
            let bound = WARMUP + MEASURE + START_TIMEOUT + SLACK;
            collector.run(
                layout.labelled_pods(),
                async move { tokio::time::sleep(bound).await },
                |addr| {
                    println!("listening {addr}");
                },
            )?;
            Ok(())
        }
    }
}

/// The simulator: agents on loopback, then the HPAs' queries during the measurement.
fn simulate(layout: Layout, api_port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let agents = Agents::new(layout, TOKEN);
        let templates = [bodies::Template::pods()?, bodies::Template::inbound()?];
        tokio::spawn(agents.clone().render(templates));
        agents.listen().await?;
        println!("ready");
        tokio::time::sleep(WARMUP).await;
        let me = std::process::id();
        let cpu_before = process_cpu(me)?;
        let started = Instant::now();
        agents.start_measuring();
        println!("measuring");
        let api = ([127, 0, 0, 1], api_port).into();
        let queries = queries::run(api, layout, agents.clone(), MEASURE).await;
        let reads = agents.read_stats();
        let cpu = process_cpu(me)?.saturating_sub(cpu_before);
        let simulated = Simulated {
            reads,
            queries,
            simulator_millicores: cpu.as_secs_f64() / started.elapsed().as_secs_f64() * 1e3,
        };
        println!("result {}", serde_json::to_string(&simulated)?);
        Ok(())
    })
}
