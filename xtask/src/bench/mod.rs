//! `cargo xtask bench`: where podmeter stands against its performance targets, measured on this
//! machine in one invocation. It builds the release agent and the criterion benches, then runs,
//! in netns pods of the test harness: server overhead on nginx and on a server that spends
//! 100 µs per request ([`busy`]), and the proxy baseline ([`overhead`]),
//! agent CPU per request ([`cpu`]), the pipeline ceiling ([`ceiling`]), freshness
//! ([`freshness`]), memory ([`memory`]), and the freshness of the whole chain through a real
//! kube-apiserver's aggregation layer ([`chain`]). It prints a table ([`summary`]) and writes
//! `target/bench/summary.json`. Everything it creates is removed on exit, Ctrl-C included.
//!
//! Timings are reported, never asserted: on a shared or small machine they are ratios measured in
//! the same run, not absolute claims.

mod busy;
mod ceiling;
mod chain;
mod concurrency;
mod cpu;
mod freshness;
mod load;
mod memory;
mod overhead;
mod profile;
mod scale;
mod servers;
mod summary;
mod system;

use std::{
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use anyhow::{Result, bail};
use podmeter_tests::{AgentProcess, Cluster, Pod};

use crate::test::{cargo, workspace};
use servers::Role;

/// Bench options.
#[derive(clap::Args)]
pub struct Args {
    /// A short smoke run (about 105 s of measurement, 35 s of it the chain section): fewer and
    /// shorter runs, and only the 5 s window's step response.
    #[arg(long)]
    quick: bool,
    /// Run only these sections (comma-separated).
    #[arg(long, value_delimiter = ',', value_enum)]
    only: Vec<Section>,
    /// Where the JSON summary is written (relative to the workspace).
    #[arg(long, default_value = "target/bench/summary.json")]
    out: PathBuf,
    /// Internal: be the bench's 100 µs-per-request HTTP server on this port (the bench starts
    /// it inside the busy pod).
    #[arg(long, hide = true)]
    serve_busy: Option<u16>,
    /// Internal: be a process of the scale section (JSON of `scale::Child`).
    #[arg(long, hide = true)]
    scale_child: Option<String>,
}

/// The parts of the bench, in the order they run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Section {
    /// Server overhead (agent off/on; nginx and the 100 µs server) and the proxy baseline.
    Overhead,
    /// Agent CPU per request.
    Cpu,
    /// Criterion benches and the live agent's lossless rate.
    Ceiling,
    /// Pipeline delay and step response.
    Freshness,
    /// Resident memory idle and with 10,000 connections.
    Memory,
    /// Average requests in flight against Little's law, on a server with a known delay.
    Concurrency,
    /// A served request until kube-apiserver's custom-metrics answer includes it (agent ->
    /// metrics API -> aggregation layer; starts a control plane, about 1 minute).
    Chain,
    /// Where the time goes: one run with the agent on under `perf record` (skipped without perf).
    Profile,
    /// The metrics API's collector against 100 to 5,000 simulated node agents on loopback
    /// (needs no root; runs only when asked for, alone: 3 to 4 minutes).
    Scale,
}

/// How many runs of what length; the full plan fits in the 10-minute budget.
#[derive(Clone, Debug)]
pub struct Plan {
    pub quick: bool,
    /// Alternating rounds of agent off, agent on and proxy.
    pub rounds: u32,
    /// Length of one saturating load run.
    pub run: Duration,
    pub warmup: Duration,
    /// wrk connections of a saturating run.
    pub connections: u32,
    pub cpu_runs: u32,
    pub delay_samples: u32,
    /// Rate windows whose step response is measured.
    pub step_windows: Vec<u32>,
    /// N of the 0 -> N -> 2N steps, requests per second.
    pub step_rps: u32,
    pub step_hold_first: Duration,
    pub step_hold_second: Duration,
    pub memory_connections: u32,
    pub memory_run: Duration,
    /// Single requests timed through kube-apiserver ([`chain`]).
    pub chain_samples: u32,
}

impl Plan {
    fn new(quick: bool) -> Self {
        let secs = Duration::from_secs;
        if quick {
            Self {
                quick,
                rounds: 2,
                run: secs(2),
                warmup: secs(1),
                connections: 64,
                cpu_runs: 1,
                delay_samples: 6,
                step_windows: vec![5],
                step_rps: 200,
                // The 5 s window full at N before the second step, and steady at 2N at the end.
                step_hold_first: secs(8),
                step_hold_second: secs(8),
                memory_connections: 10_000,
                memory_run: secs(7),
                chain_samples: 8,
            }
        } else {
            Self {
                quick,
                // Five rounds: the medians shrug off two disturbed runs per variant.
                rounds: 5,
                run: secs(4),
                warmup: secs(2),
                connections: 64,
                cpu_runs: 3,
                delay_samples: 20,
                // The default window, and the shortest.
                step_windows: vec![30, 5],
                step_rps: 200,
                // The 30 s window full at N (plus a read), then long enough for 90 % of 2N.
                step_hold_first: secs(31),
                step_hold_second: secs(28),
                memory_connections: 10_000,
                memory_run: secs(10),
                // About 45 s: enough for a p95 that is not the maximum.
                chain_samples: 30,
            }
        }
    }
}

/// Which CPU does what: on a small machine client and server must not share a core.
#[derive(Clone, Copy, Debug)]
pub struct Cores {
    /// wrk, hey, the agent and the bench itself.
    pub client: usize,
    /// nginx (the app and the proxy) and the 100 µs server.
    pub server: usize,
}

impl Cores {
    fn pick() -> Self {
        if system::cpus() >= 2 {
            Self {
                client: 0,
                server: 1,
            }
        } else {
            Self {
                client: 0,
                server: 0,
            }
        }
    }

    fn describe(self) -> String {
        format!(
            "wrk/hey (client pod), the agent and the bench on CPU {}; nginx (app and proxy, one worker each) and the 100 us server on CPU {}; kernel softirq work runs where the packets are sent",
            self.client, self.server
        )
    }
}

/// The pods and the agent binary every section uses.
pub struct Lab<'c> {
    pub plan: Plan,
    pub cores: Cores,
    pub agent_bin: PathBuf,
    pub cluster: &'c Cluster,
    /// `srv/app`: the app nginx and its proxy sidecar.
    pub server: Pod<'c>,
    /// `srv/fresh`: a second app that only the step response loads (and, on another port, the
    /// concurrency section's delayed server).
    pub fresh: Pod<'c>,
    /// `srv/busy`: the server that spends 100 µs of CPU per request ([`busy`]).
    pub busy: Pod<'c>,
    /// `load/wrk`: the load generators, outside the tree the agent observes.
    pub client: Pod<'c>,
    /// `<cluster>/srv`: the server pods' tree, where the agent attaches (pods `default/<name>`).
    pub observed_root: PathBuf,
}

impl Lab<'_> {
    pub fn start_agent(&self, root: &Path, args: &[&str]) -> Result<AgentProcess> {
        AgentProcess::start_binary(&self.agent_bin, root, args)
    }

    pub fn app_url(&self) -> String {
        format!("http://{}:{}/", self.server.ip(), servers::APP_PORT)
    }

    pub fn proxy_url(&self) -> String {
        format!("http://{}:{}/", self.server.ip(), servers::PROXY_PORT)
    }

    pub fn busy_url(&self) -> String {
        format!("http://{}:{}/", self.busy.ip(), busy::PORT)
    }

    /// One wrk thread on the client core.
    pub fn wrk(&self, url: String, connections: u32, duration: Duration) -> load::Wrk {
        load::Wrk {
            url,
            connections,
            threads: 1,
            duration,
            cpu: self.cores.client,
        }
    }

    pub fn saturating_wrk(&self, url: String) -> load::Wrk {
        self.wrk(url, self.plan.connections, self.plan.run)
    }
}

pub fn run(args: &Args) -> Result<()> {
    if let Some(port) = args.serve_busy {
        return busy::serve(port, busy::CPU_PER_REQUEST);
    }
    if let Some(spec) = &args.scale_child {
        return scale::child(spec);
    }
    if args.only.contains(&Section::Scale) {
        if args.only.len() > 1 {
            bail!("--only scale runs alone: it needs no root, pods or agent, and takes minutes");
        }
        crate::interrupt::catch_ctrl_c();
        return scale::run();
    }
    // SAFETY: geteuid has no side effects.
    if unsafe { libc::geteuid() } != 0 {
        bail!("cargo xtask bench needs root (netns pods, cgroups, BPF); run it with sudo");
    }
    let wants = |s: Section| args.only.is_empty() || args.only.contains(&s);
    let plan = Plan::new(args.quick);
    let cores = Cores::pick();
    let out = workspace().join(&args.out);

    println!("bench: building the release agent and the pipeline benches");
    let build_started = Instant::now();
    cargo(&["build", "--release", "-p", "podmeter", "--bin", "podmeter"])?;
    if wants(Section::Ceiling) {
        ceiling::build()?;
    }
    let agent_bin = crate::test::target_dir().join("release/podmeter");
    let k8s_bin = if wants(Section::Chain) {
        println!(
            "bench: the Kubernetes control plane (scripts/k8s-control-plane.sh; the first build takes 5 to 13 minutes)"
        );
        Some(crate::test::kubernetes_control_plane()?)
    } else {
        None
    };
    let build_secs = build_started.elapsed().as_secs_f64();

    crate::interrupt::catch_ctrl_c();
    // The agent's own logs would drown the table.
    // SAFETY: single-threaded at this point.
    unsafe { std::env::set_var("PODMETER_LOG", "warn") };
    if let Some(dir) = &k8s_bin {
        // SAFETY: as above. The chain section's control plane runs these binaries, and its
        // metrics API (started by the test harness) is the release binary the agents are.
        unsafe {
            std::env::set_var(podmeter_tests::control_plane::BIN_DIR_ENV, dir);
            std::env::set_var(podmeter_tests::agent::AGENT_BIN_ENV, &agent_bin);
        }
    }
    let nofile = system::raise_nofile(65_536)?;
    if wants(Section::Memory) && nofile < u64::from(plan.memory_connections) + 256 {
        bail!(
            "the open-file limit is {nofile} and cannot be raised: the memory section needs {} \
             connections (raise the hard limit, e.g. `ulimit -Hn 65536`, or leave out memory)",
            plan.memory_connections
        );
    }
    println!("bench: waiting for the privileged-test lock (held while tests run)");
    let waited = Instant::now();
    let _serial = podmeter_tests::serial();
    println!(
        "bench: got the lock after {:.0} s",
        waited.elapsed().as_secs_f64()
    );
    let started = Instant::now();
    let machine = system::Machine::describe();
    println!(
        "bench: {} x {}, kernel {}, {} MiB, load average {}; open files {nofile}",
        machine.cpus,
        machine.cpu_model,
        machine.kernel,
        machine.memory_mib,
        machine.load_average_at_start
    );
    println!("bench: cores: {}", cores.describe());
    if machine.busy() {
        println!(
            "bench: WARNING: the machine is busy (load average {}): other work competes with the \
             load runs, so the overhead and CPU figures will be noisy",
            machine.load_average_at_start
        );
    }
    // Everything started from here inherits the client core unless pinned elsewhere.
    system::pin_self(cores.client)?;

    let mut summary = summary::Summary::new(machine, cores.describe(), args.quick);
    summary.build_secs = build_secs;
    if wants(Section::Ceiling) {
        println!(
            "\n4. pipeline ceiling: criterion benches on CPU {}",
            cores.client
        );
        summary.criterion = Some(ceiling::criterion(&plan, cores.client)?);
    }
    system::check_interrupted()?;

    let cluster = Cluster::new()?;
    let lab = Lab {
        server: cluster.pod("srv", "app")?,
        fresh: cluster.pod("srv", "fresh")?,
        busy: cluster.pod("srv", "busy")?,
        client: cluster.pod("load", "wrk")?,
        observed_root: cluster.cgroup_root().join("srv"),
        cluster: &cluster,
        plan,
        cores,
        agent_bin,
    };
    // Declared after the lab, so they stop before its pods go.
    let worker_connections = nofile.saturating_sub(64).min(32_768);
    let _app =
        servers::BenchNginx::start(&lab.server, Role::App, cores.server, worker_connections)?;
    let _proxy =
        servers::BenchNginx::start(&lab.server, Role::Proxy, cores.server, worker_connections)?;
    let _fresh =
        servers::BenchNginx::start(&lab.fresh, Role::App, cores.server, worker_connections)?;
    let _busy = if wants(Section::Overhead) {
        Some(busy::BusyServer::start(&lab.busy, cores.server)?)
    } else {
        None
    };

    if wants(Section::Overhead) {
        println!("\n1-2. server overhead and proxy baseline");
        summary.overhead = Some(overhead::measure(&lab)?);
    }
    if wants(Section::Cpu) {
        println!("\n3. agent CPU per request");
        summary.cpu = Some(cpu::measure(&lab)?);
    }
    if wants(Section::Ceiling) {
        println!("\n4. pipeline ceiling: live agent with --route-labels (per-request events on)");
        summary.live = Some(ceiling::live(&lab)?);
    }
    if wants(Section::Freshness) {
        println!("\n5. freshness");
        summary.freshness = Some(freshness::measure(&lab)?);
    }
    if wants(Section::Memory) {
        println!("\n6. memory");
        summary.memory = Some(memory::measure(&lab)?);
    }
    if wants(Section::Concurrency) {
        println!("\n7. concurrency accuracy");
        summary.concurrency = Some(concurrency::measure(&lab)?);
    }
    if wants(Section::Chain) {
        println!("\n8. chain freshness: served -> in kube-apiserver's custom-metrics answer");
        summary.chain = Some(chain::measure(&lab)?);
    }
    if wants(Section::Profile) {
        println!("\nprofile: perf record -a -g during one saturating run with the agent on");
        if profile::perf_available() {
            let dir = out.parent().map_or_else(
                || crate::test::target_dir().join("bench"),
                Path::to_path_buf,
            );
            summary.profile = Some(profile::measure(&lab, &dir)?);
        } else {
            println!("  skipped: perf is not installed (Debian: apt-get install linux-perf)");
        }
    }
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    summary.machine.load_average_at_end = system::load_average();
    summary.evaluate_targets();
    println!();
    summary.print(&lab.plan);
    summary.write(&out)?;
    println!("\nbench: wrote {}", out.display());
    println!(
        "bench: measurements took {:.0} s (the builds before them {:.0} s)",
        summary.elapsed_secs, summary.build_secs
    );
    if summary.elapsed_secs > 600.0 {
        println!("bench: WARNING: over the 10-minute budget");
    }
    Ok(())
}
