//! The `podmeter` command: `agent` runs the node agent (`agent-uninstall` removes what it left
//! pinned), `top` watches one, `recommend` says what an HPA would decide on its rates, and
//! `metrics-api` serves them to the HPA.

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
        /// Count requests from the node's own processes (kubelet probes, node agents: cgroups
        /// of no pod) in the pods' inbound rate and `http_requests_per_second`. By default they
        /// are booked apart, as `node_inbound`.
        #[arg(long, env = "PODMETER_NODE_REQUESTS_IN_RATE")]
        node_requests_in_rate: bool,
        /// `token-review`: serve the API address (`--listen`) over TLS only, and require a
        /// bearer token for `--token-audience` (TokenReview) whose user may `get`
        /// `nodes/podmeter` (SubjectAccessReview); `/healthz` and `--metrics-listen` stay open.
        /// `none`: plain HTTP, no checks (loopback, local use).
        #[arg(long, env = "PODMETER_API_AUTH", value_enum, default_value = "none")]
        api_auth: ApiAuthFlag,
        /// With `--api-auth token-review`: the audience callers' tokens must be issued for
        /// (a projected ServiceAccount token's `audience`).
        #[arg(
            long,
            env = "PODMETER_TOKEN_AUDIENCE",
            default_value = "podmeter-agent"
        )]
        token_audience: String,
        /// With `--api-auth token-review`: the API's serving certificate chain (PEM), read at
        /// start (default: a self-signed certificate made at start).
        #[arg(long, requires = "tls_private_key_file")]
        tls_cert_file: Option<PathBuf>,
        /// With `--api-auth token-review`: the private key of `--tls-cert-file` (PEM).
        #[arg(long, requires = "tls_cert_file")]
        tls_private_key_file: Option<PathBuf>,
        /// Kubeconfig for `--identity kubernetes` and `--api-auth token-review` (default:
        /// in-cluster or $KUBECONFIG).
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        /// Pin the programs and counters under this bpffs directory (e.g. /sys/fs/bpf/podmeter):
        /// they stay attached and counting when the agent exits, and the next agent takes them
        /// over without losing or double counting a request. With --identity kubernetes,
        /// --pod-name and --pod-namespace, an exit once the agent's DaemonSet is gone (an
        /// uninstall) removes them; otherwise remove them with `agent-uninstall`.
        #[arg(long, env = "PODMETER_BPFFS_DIR")]
        bpffs_dir: Option<PathBuf>,
        /// This agent's Pod (set POD_NAME from the downward API, fieldRef metadata.name): its
        /// DaemonSet, from its owner references, tells an uninstall from a restart at exit.
        #[arg(long, env = "POD_NAME")]
        pod_name: Option<String>,
        /// The namespace of --pod-name (set POD_NAMESPACE from the downward API, fieldRef
        /// metadata.namespace).
        #[arg(long, env = "POD_NAMESPACE")]
        pod_namespace: Option<String>,
    },
    /// Detach and unpin what `agent --bpffs-dir DIR` left attached, and remove DIR.
    AgentUninstall {
        /// The agent's `--bpffs-dir`.
        #[arg(long, env = "PODMETER_BPFFS_DIR")]
        bpffs_dir: PathBuf,
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
            node_requests_in_rate,
            api_auth,
            token_audience,
            tls_cert_file,
            tls_private_key_file,
            kubeconfig,
            bpffs_dir,
            pod_name,
            pod_namespace,
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
                node_requests_in_rate,
                api_auth: match api_auth {
                    ApiAuthFlag::None => ApiAuth::None,
                    ApiAuthFlag::TokenReview => ApiAuth::TokenReview {
                        kubeconfig,
                        audience: token_audience,
                        tls_cert_file,
                        tls_private_key_file,
                    },
                },
                bpffs_dir,
                pod_name,
                pod_namespace,
            };
            run_agent(config)
        }
        Command::AgentUninstall { bpffs_dir } => agent_uninstall(&bpffs_dir),
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

fn agent_uninstall(bpffs_dir: &std::path::Path) -> anyhow::Result<()> {
    let removed = podmeter_agent::uninstall(bpffs_dir)?;
    if removed.is_empty() {
        println!("podmeter: nothing pinned under {}", bpffs_dir.display());
    }
    for path in removed {
        println!("podmeter: removed {}", path.display());
    }
    Ok(())
}

fn run_agent(config: podmeter_agent::Config) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    // An authenticating API is served over TLS only.
    let scheme = match config.api_auth {
        ApiAuth::None => "http",
        ApiAuth::TokenReview { .. } => "https",
    };
    runtime.block_on(async {
        podmeter_agent::run(config, shutdown::signal(), |addr| {
            // Scripts and tests wait for this line: the programs are attached and the API serves.
            println!("podmeter: listening on {scheme}://{addr}");
        })
        .await
    })?;
    Ok(())
}
