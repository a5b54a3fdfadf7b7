//! The `podmeter` command: `agent` runs the node agent, `top` watches one.

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use podmeter::{agent, ebpf::MapSizes};

#[derive(Parser)]
#[command(
    name = "podmeter",
    version,
    about = "Counts every pod HTTP request exactly once, in the kernel"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Attach to a cgroup tree and count its pods' HTTP requests.
    Agent {
        /// cgroup v2 directory whose sockets are observed (default: the cgroup2 mount).
        #[arg(long, env = "PODMETER_CGROUP_ROOT")]
        cgroup_root: Option<PathBuf>,
        /// Address of the HTTP API (port 0 picks a free port).
        #[arg(long, env = "PODMETER_LISTEN", default_value = "127.0.0.1:9464")]
        listen: SocketAddr,
        /// Identity file mapping cgroups and addresses to pods (TOML).
        #[arg(long, env = "PODMETER_IDENTITY_FILE")]
        identity_file: Option<PathBuf>,
        /// How often the kernel counters are read, in milliseconds.
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=10_000))]
        poll_ms: u64,
        /// Seconds a pod whose cgroups are gone keeps its series.
        #[arg(long, default_value_t = 60)]
        pod_grace_secs: u64,
        /// Ring buffer size in MiB (a power of two).
        #[arg(long, default_value_t = 4, value_parser = parse_ring_mib)]
        ring_mib: u32,
    },
    /// Show per-pod counts and rates of a running agent.
    Top {
        /// The agent's API address.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        agent: String,
        /// Seconds between refreshes.
        #[arg(long, default_value_t = 1.0)]
        interval: f64,
        /// Stop after this many refreshes.
        #[arg(long)]
        count: Option<u64>,
    },
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_power_of_two() && v <= 1024 {
        Ok(v)
    } else {
        Err("a power of two from 1 to 1024".into())
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("PODMETER_LOG")
                .unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Agent {
            cgroup_root,
            listen,
            identity_file,
            poll_ms,
            pod_grace_secs,
            ring_mib,
        } => {
            let config = agent::Config {
                cgroup_root,
                listen,
                identity_file,
                poll_interval: Duration::from_millis(poll_ms),
                pod_grace: Duration::from_secs(pod_grace_secs),
                map_sizes: MapSizes {
                    ring_bytes: ring_mib << 20,
                    ..MapSizes::default()
                },
            };
            run_agent(config)
        }
        Command::Top {
            agent,
            interval,
            count,
        } => podmeter::top::run(
            agent.trim_end_matches('/'),
            Duration::from_secs_f64(interval.max(0.1)),
            count,
        ),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podmeter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(config: agent::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        agent::run(config, shutdown_signal(), |addr| {
            // Scripts and tests wait for this line: the programs are attached and the API serves.
            println!("podmeter: listening on http://{addr}");
        })
        .await
    })?;
    Ok(())
}

/// Completes on SIGINT or SIGTERM.
async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        // Without signal handlers the default action (exit) still detaches the BPF links.
        std::future::pending::<()>().await;
        return;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}
