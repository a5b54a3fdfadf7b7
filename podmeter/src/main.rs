//! The `podmeter` command: `agent` runs the node agent, `top` watches one, `recommend` says what
//! an HPA would decide on its rates, and `metrics-api` serves them to the HPA.

mod shutdown;
mod top;

use std::{net::SocketAddr, path::PathBuf, process::ExitCode, time::Duration};

use clap::{Parser, Subcommand};
use podmeter_agent::{ApiAuth, DEFAULT_ROUTE_CAP, IdentityKind, MapSizes, RateWindow};

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
        /// Address of the HTTP API: JSON and Prometheus /metrics (port 0 picks a free port).
        #[arg(long, env = "PODMETER_LISTEN", default_value = "127.0.0.1:9464")]
        listen: SocketAddr,
        /// An extra address that serves only /metrics and /healthz (e.g. 0.0.0.0:9465 for
        /// Prometheus while the JSON API stays on loopback).
        #[arg(long, env = "PODMETER_METRICS_LISTEN")]
        metrics_listen: Option<SocketAddr>,
        /// Which source names pods (default: kubernetes in a cluster, i.e. when
        /// KUBERNETES_SERVICE_HOST is set; file when --identity-file is given; else cgroup-dirs).
        #[arg(long, env = "PODMETER_IDENTITY", value_enum)]
        identity: Option<IdentityKind>,
        /// Identity file mapping cgroups and addresses to pods (TOML).
        #[arg(long, env = "PODMETER_IDENTITY_FILE")]
        identity_file: Option<PathBuf>,
        /// This node's name: the Kubernetes identity watches only its pods (set NODE_NAME from
        /// the downward API, fieldRef spec.nodeName).
        #[arg(long, env = "NODE_NAME")]
        node_name: Option<String>,
        /// How often the kernel counters are read, in milliseconds.
        #[arg(long, default_value_t = 250, value_parser = clap::value_parser!(u64).range(10..=10_000))]
        poll_ms: u64,
        /// Seconds a pod whose cgroups are gone keeps its series.
        #[arg(long, default_value_t = 60)]
        pod_grace_secs: u64,
        /// Ring buffer size in MiB (a power of two).
        #[arg(long, default_value_t = 4, value_parser = parse_ring_mib)]
        ring_mib: u32,
        /// Seconds of the sliding window behind the per-pod requests-per-second rates.
        #[arg(long, env = "PODMETER_RATE_WINDOW_SECS", default_value = "30", value_parser = parse_rate_window)]
        rate_window_secs: RateWindow,
        /// Label paired requests with their normalised route (ids collapsed to {id}).
        #[arg(long, env = "PODMETER_ROUTE_LABELS")]
        route_labels: bool,
        /// With --route-labels: distinct routes per pod and direction; the rest count as `other`.
        #[arg(long, default_value_t = DEFAULT_ROUTE_CAP,
              value_parser = clap::value_parser!(u16).range(1..=1000))]
        max_routes_per_pod: u16,
        /// Require a bearer token checked with TokenReview on the API address (`--listen`;
        /// `/healthz` and `--metrics-listen` stay open).
        #[arg(long, env = "PODMETER_API_AUTH", value_enum, default_value = "none")]
        api_auth: ApiAuthFlag,
        /// Kubeconfig for `--identity kubernetes` and `--api-auth token-review` (default:
        /// in-cluster or $KUBECONFIG).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
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
    /// What a HorizontalPodAutoscaler on `http_requests_per_second` would decide for each
    /// workload, from a running agent's live per-pod rates, and why.
    Recommend {
        /// The agent's API address.
        #[arg(long, default_value = "http://127.0.0.1:9464")]
        agent: String,
        /// HPA-like specs (TOML; see the README).
        #[arg(long)]
        spec: PathBuf,
        /// Decide again every sync period of the spec, keeping the HPA's history.
        #[arg(long)]
        watch: bool,
        #[arg(long, value_enum, default_value = "text")]
        output: podmeter_hpa::recommend::command::Output,
    },
    /// Serve custom.metrics.k8s.io (v1beta1, v1beta2) and external.metrics.k8s.io to the
    /// HorizontalPodAutoscaler, collecting every node agent's per-pod rates.
    MetricsApi(podmeter_metrics_api::aggregator::command::Args),
}

/// `--api-auth`.
#[derive(Clone, Copy, clap::ValueEnum)]
enum ApiAuthFlag {
    None,
    TokenReview,
}

fn parse_ring_mib(s: &str) -> Result<u32, String> {
    let v: u32 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_power_of_two() && v <= 1024 {
        Ok(v)
    } else {
        Err("a power of two from 1 to 1024".into())
    }
}

fn parse_rate_window(s: &str) -> Result<RateWindow, String> {
    let secs: u32 = s.parse().map_err(|e| format!("{e}"))?;
    RateWindow::try_from(secs).map_err(|e| e.to_string())
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
            identity,
            identity_file,
            node_name,
            poll_ms,
            pod_grace_secs,
            ring_mib,
            metrics_listen,
            rate_window_secs,
            route_labels,
            max_routes_per_pod,
            api_auth,
            kubeconfig,
        } => {
            let config = podmeter_agent::Config {
                cgroup_root,
                listen,
                metrics_listen,
                identity: IdentityKind::choose(
                    identity,
                    identity_file.is_some(),
                    IdentityKind::in_cluster(),
                ),
                identity_file,
                node_name,
                kubeconfig: kubeconfig.clone(),
                poll_interval: Duration::from_millis(poll_ms),
                pod_grace: Duration::from_secs(pod_grace_secs),
                map_sizes: MapSizes {
                    ring_bytes: ring_mib << 20,
                    ..MapSizes::default()
                },
                rate_window: rate_window_secs,
                route_labels,
                max_routes_per_pod: usize::from(max_routes_per_pod),
                api_auth: match api_auth {
                    ApiAuthFlag::None => ApiAuth::None,
                    ApiAuthFlag::TokenReview => ApiAuth::TokenReview { kubeconfig },
                },
            };
            run_agent(config)
        }
        Command::Top {
            agent,
            interval,
            count,
        } => top::run(
            agent.trim_end_matches('/'),
            Duration::from_secs_f64(interval.max(0.1)),
            count,
        ),
        Command::Recommend {
            agent,
            spec,
            watch,
            output,
        } => {
            podmeter_hpa::recommend::command::run(agent.trim_end_matches('/'), &spec, watch, output)
        }
        Command::MetricsApi(args) => {
            podmeter_metrics_api::aggregator::command::run_args(args, shutdown::signal())
                .map_err(anyhow::Error::from)
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("podmeter: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run_agent(config: podmeter_agent::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        podmeter_agent::run(config, shutdown::signal(), |addr| {
            // Scripts and tests wait for this line: the programs are attached and the API serves.
            println!("podmeter: listening on http://{addr}");
        })
        .await
    })?;
    Ok(())
}
