//! `podmeter metrics-api`: wires discovery, collection, the request-header watch, the serving
//! certificate's reload and the metrics API server together, and runs them until told to stop.

use std::{
    collections::BTreeSet,
    future::Future,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, SystemTime},
};

use tokio::{sync::watch as channel, task::JoinSet};

use super::{
    Error,
    agent_client::AgentClient,
    certificates::SelfManaged,
    collector::{self, Timing},
    configmap,
    discovery::AgentService,
    labels::PodLabels,
    served::Collected,
};
use crate::{
    self as api, ApiOptions, Readiness, RequestHeaderAuth, ReviewCache, ServingCertificate,
    SubjectAccessReviewAuthorizer, podmeter_metrics,
};

/// How often the serving certificate's files are checked for a change.
const CERT_CHECK: Duration = Duration::from_secs(5);

/// What `podmeter metrics-api` was asked to do.
#[derive(Clone, Debug)]
pub(crate) struct Config {
    /// Where the TLS server listens.
    pub listen: SocketAddr,
    pub serving: Serving,
    /// Agent base URLs always collected from.
    pub agents: Vec<String>,
    /// The agents' Service, whose EndpointSlices are watched.
    pub agent_service: Option<AgentService>,
    pub timing: Timing,
    /// Also serve `external.metrics.k8s.io`.
    pub external_metrics: bool,
    /// Bearer token file for the node agents' API.
    pub agent_token_file: Option<PathBuf>,
    /// How long a replica told to stop goes on serving, unready.
    pub shutdown_delay: Duration,
}

/// Where the serving certificate comes from.
#[derive(Clone, Debug)]
pub(crate) enum Serving {
    /// Files (e.g. a cert-manager Secret), reloaded when they change.
    Files { cert: PathBuf, key: PathBuf },
    /// Made by the metrics API, kept in a Secret, its CA published in the APIServices.
    SelfManaged(SelfManaged),
}

/// The flags of `podmeter metrics-api`.
#[derive(Clone, Debug, clap::Args)]
pub struct Args {
    /// Address of the TLS server (the APIService's Service points here).
    #[arg(
        long,
        env = "PODMETER_METRICS_API_LISTEN",
        default_value = "0.0.0.0:6443"
    )]
    pub listen: SocketAddr,
    /// Serving certificate chain (PEM); reloaded when the file changes. Without it, the
    /// metrics API makes a CA and a certificate, keeps them in Secret `--cert-secret` and sets
    /// the CA as the caBundle of its APIServices.
    #[arg(long, requires = "tls_private_key_file")]
    pub tls_cert_file: Option<PathBuf>,
    /// Serving private key (PEM); reloaded when the file changes.
    #[arg(long, requires = "tls_cert_file")]
    pub tls_private_key_file: Option<PathBuf>,
    /// Without --tls-cert-file: the Secret (in --namespace) holding the certificate it makes.
    #[arg(long, default_value = "podmeter-metrics-api-certs")]
    pub cert_secret: String,
    /// Without --tls-cert-file: the Service the APIServices point at (in --namespace), named in
    /// the certificate it makes as <service>.<namespace>.svc.
    #[arg(long, default_value = "podmeter-metrics-api")]
    pub service_name: String,
    /// The metrics API's namespace (default: the pod's, or the kubeconfig context's).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: Option<String>,
    /// Kubeconfig for SubjectAccessReviews and watches (default: in-cluster or $KUBECONFIG).
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// A node agent's base URL (repeatable), collected from besides the discovered ones.
    #[arg(long = "agent")]
    pub agents: Vec<String>,
    /// The node agents' Service (NAMESPACE/NAME), whose EndpointSlices are watched.
    #[arg(long, env = "PODMETER_AGENT_SERVICE")]
    pub agent_service: Option<String>,
    /// The EndpointSlice port name of the agent API (default: each slice's first port).
    #[arg(long)]
    pub agent_port_name: Option<String>,
    /// Milliseconds between two collections from every agent.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(100..=10_000))]
    pub collect_interval_ms: u64,
    /// Seconds after which an agent that stopped answering has its pods' values dropped.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=300))]
    pub staleness_secs: u64,
    /// Do not serve external.metrics.k8s.io.
    #[arg(long)]
    pub no_external_metrics: bool,
    /// File with a bearer token sent to the node agents (e.g. the pod's projected
    /// ServiceAccount token); read again at every collection.
    #[arg(long)]
    pub agent_token_file: Option<PathBuf>,
    /// Seconds a replica told to stop (SIGTERM) goes on serving with /readyz failing, so that
    /// its endpoints and the proxies in front (kube-proxy, the aggregation layer) forget it
    /// before its port closes and no query is refused. Keep it under the pod's
    /// terminationGracePeriodSeconds.
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u64).range(0..=120))]
    pub shutdown_delay_secs: u64,
}

impl Args {
    /// The configuration these flags describe; `default_namespace` when --namespace is not given.
    fn config(self, default_namespace: &str) -> Result<Config, Error> {
        let interval = Duration::from_millis(self.collect_interval_ms);
        let agent_service = self
            .agent_service
            .map(|service| parse_service(&service, self.agent_port_name))
            .transpose()?;
        Ok(Config {
            listen: self.listen,
            serving: match (self.tls_cert_file, self.tls_private_key_file) {
                (Some(cert), Some(key)) => Serving::Files { cert, key },
                _ => Serving::SelfManaged(SelfManaged {
                    namespace: self
                        .namespace
                        .unwrap_or_else(|| default_namespace.to_owned()),
                    secret: self.cert_secret,
                    service: self.service_name,
                }),
            },
            agents: self
                .agents
                .into_iter()
                .map(|url| url.trim_end_matches('/').to_owned())
                .collect(),
            agent_service,
            timing: Timing {
                interval,
                // One slow agent must not hold back the next collection for long.
                timeout: interval.max(Duration::from_secs(1)),
                staleness: Duration::from_secs(self.staleness_secs),
            },
            external_metrics: !self.no_external_metrics,
            agent_token_file: self.agent_token_file,
            shutdown_delay: Duration::from_secs(self.shutdown_delay_secs),
        })
    }
}

/// `podmeter metrics-api` with `args`.
pub fn run_args(
    args: Args,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), Error> {
    run(args, shutdown)
}

/// Parses `NAMESPACE/NAME` for `--agent-service`.
fn parse_service(value: &str, port_name: Option<String>) -> Result<AgentService, Error> {
    match value.split_once('/') {
        Some((namespace, name)) if !namespace.is_empty() && !name.is_empty() => Ok(AgentService {
            namespace: namespace.into(),
            name: name.into(),
            port_name,
        }),
        _ => Err(Error::ServiceName(value.into())),
    }
}

/// Runs the process on its own runtime until `shutdown` completes.
fn run(args: Args, shutdown: impl Future<Output = ()> + Send + 'static) -> Result<(), Error> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(Error::Runtime)?;
    runtime.block_on(async {
        let client = podmeter_kube::client(args.kubeconfig.as_deref()).await?;
        let config = args.config(client.default_namespace())?;
        serve(client, config, shutdown, |addr| {
            // Scripts and tests wait for this line.
            println!("podmeter: metrics-api listening on https://{addr}");
        })
        .await
    })
}

/// Serves until `shutdown` completes; `on_listening` gets the bound address.
async fn serve(
    client: kube::Client,
    config: Config,
    shutdown: impl Future<Output = ()> + Send,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    if config.agents.is_empty() && config.agent_service.is_none() {
        return Err(Error::NoAgents);
    }
    let request_headers = RequestHeaderAuth::new(configmap::read(client.clone()).await?)?;
    let mut tasks = JoinSet::new();
    let certificate = match &config.serving {
        Serving::Files { cert, key } => {
            let certificate = ServingCertificate::from_files(cert, key)?;
            tasks.spawn(reload_certificate(
                certificate.clone(),
                cert.clone(),
                key.clone(),
            ));
            certificate
        }
        Serving::SelfManaged(managed) => {
            let bundle = managed.load_or_create(&client).await?;
            let certificate = ServingCertificate::from_pem(&bundle.cert, &bundle.key)?;
            tasks.spawn(
                managed
                    .clone()
                    .keep(client.clone(), certificate.clone(), bundle),
            );
            certificate
        }
    };
    let tls = api::server_config(&certificate)?;
    // One client for every collection, so connections to the agents are kept alive.
    let agents = AgentClient::new(config.timing.timeout).map_err(Error::AgentTls)?;

    let source = Arc::new(Collected::new(podmeter_metrics()));
    let readiness = Readiness::starting();
    let (labels, watch_labels) = PodLabels::watched(client.clone());
    let (targets, discovered) = channel::channel(BTreeSet::new());
    tasks.spawn(watch_labels);
    if let Some(service) = config.agent_service.clone() {
        tasks.spawn(service.watch(client.clone(), targets));
    }
    tasks.spawn(collector::run(
        agents,
        source.clone(),
        collector::Targets {
            fixed: config.agents.clone(),
            discovered,
        },
        labels,
        config.timing,
        config.agent_token_file.clone(),
        readiness.clone(),
    ));
    let authenticator = request_headers.authenticator();
    tasks.spawn(configmap::watch(client.clone(), request_headers));

    let app = api::protect(
        api::router(
            source,
            ApiOptions {
                external_metrics: config.external_metrics,
                readiness: readiness.clone(),
            },
        ),
        authenticator,
        Arc::new(SubjectAccessReviewAuthorizer::new(
            client,
            ReviewCache::default(),
        )),
    );
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(Error::Serve)?;
    on_listening(addr);
    let served = api::serve(
        listener,
        tls,
        app,
        delayed(shutdown, readiness, config.shutdown_delay),
    )
    .await;
    tasks.abort_all();
    served.map_err(Error::Serve)
}

/// `shutdown`, then `delay` more of serving with `readiness` failing.
async fn delayed(shutdown: impl Future<Output = ()>, readiness: Readiness, delay: Duration) {
    shutdown.await;
    readiness.stopping();
    tracing::info!(
        delay_secs = delay.as_secs(),
        "told to stop: unready, serving on until the endpoints forget this replica"
    );
    tokio::time::sleep(delay).await;
}

fn modified(path: &Path) -> Option<SystemTime> {
    std::fs::metadata(path).and_then(|m| m.modified()).ok()
}

/// Loads the certificate and key again whenever either file's modification time changes; a
/// pair that does not load (e.g. caught between the two writes) is retried at the next check.
async fn reload_certificate(certificate: ServingCertificate, cert: PathBuf, key: PathBuf) {
    let mut loaded = (modified(&cert), modified(&key));
    let mut ticker = tokio::time::interval(CERT_CHECK);
    loop {
        ticker.tick().await;
        let now = (modified(&cert), modified(&key));
        if now == loaded {
            continue;
        }
        match certificate.replace_from_files(&cert, &key) {
            Ok(()) => {
                tracing::info!(cert = %cert.display(), "serving certificate reloaded");
                loaded = now;
            }
            Err(error) => tracing::warn!(%error, "serving certificate not reloaded"),
        }
    }
}
