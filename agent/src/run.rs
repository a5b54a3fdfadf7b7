//! The agent's main loop: attach, then read counters and drain events until told to stop.

use std::{
    collections::HashSet,
    future::Future,
    net::SocketAddr,
    os::fd::AsFd,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf,
    maps::{MapData, RingBuf},
};
use podmeter_common::{CountKey, names};
use prometheus_client::registry::Registry;

type FlowsMap = aya::maps::PerCpuHashMap<MapData, CountKey, podmeter_common::FlowSums>;
type LatencyMap = aya::maps::HashMap<MapData, CountKey, u64>;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::books::node::{NodeState, Shared};
use crate::{
    Error, attribution,
    books::Books,
    books::rates::RateWindow,
    books::routes,
    connections::pairing::Flows,
    events::drain::Drain,
    exporters::metrics::{Metrics, health::AgentInfo},
    fast_map::FastMap,
    health,
    identity::PodId,
    identity::cgroups::CgroupIndex,
    identity::{
        Identity, IdentityKind, KubernetesIdentity, LocalIdentity, kubernetes::KubernetesError,
    },
    kernel::connection_table,
    kernel::counters::{self, Deltas},
    kernel::flow_sums::{self, FlowDeltas},
    kernel::latency_histogram::{self, HistogramDeltas},
    kernel::node_cgroups::NodeCgroups,
    kernel::pins,
    kernel::preflight,
    kernel::programs::{MapSizes, Probes},
    kernel::ring_fill::RingFill,
    uninstall_check::{PodRef, UninstallCheck, Verdict},
};

/// What the `podmeter_attach_info` metric and `/v1/agent` say about how the programs attach.
const ATTACH_PROGRAMS: &str = "cgroup_skb/ingress,cgroup_skb/egress,sock_ops";
const ATTACH_LINK: &str = "bpf_link";

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// cgroup v2 directory to attach to; `None` for the whole cgroup2 mount.
    pub cgroup_root: Option<PathBuf>,
    /// Address of the HTTP API (JSON and `/metrics`).
    pub listen: SocketAddr,
    /// An extra address serving only `/metrics` and `/healthz`.
    pub metrics_listen: Option<SocketAddr>,
    /// Which source names pods (see [`crate::identity`]).
    pub identity: IdentityKind,
    /// Identity file for `IdentityKind::File` (see [`crate::identity::local`]).
    pub identity_file: Option<PathBuf>,
    /// This node's name, for `IdentityKind::Kubernetes` (its pods are watched).
    pub node_name: Option<String>,
    /// Kubeconfig of the Kubernetes identity's client (default: in-cluster or `$KUBECONFIG`).
    pub kubeconfig: Option<PathBuf>,
    /// How often the kernel counters are read.
    pub poll_interval: Duration,
    /// How long a pod whose cgroups are gone keeps its series.
    pub pod_grace: Duration,
    pub map_sizes: MapSizes,
    /// Length of the sliding window behind the per-pod rates.
    pub rate_window: RateWindow,
    /// Whether paired exchanges carry a normalised `route` label.
    pub route_labels: bool,
    /// Distinct routes per pod and direction before the rest go to `other`.
    pub max_routes_per_pod: usize,
    /// Count requests from the node's own processes (kubelet probes, node agents) in the pods'
    /// inbound rate, instead of apart as `node_inbound`.
    pub node_requests_in_rate: bool,
    /// Authentication of the API's callers (`listen`; `metrics_listen` stays open).
    pub api_auth: crate::exporters::api_auth::ApiAuth,
    /// bpffs directory where the programs and counters are pinned so that they outlive the agent
    /// and the next one takes them over (see [`crate::kernel::pins`]); `None` detaches at exit.
    pub bpffs_dir: Option<PathBuf>,
    /// The agent's own Pod (the downward API's `POD_NAME` and `POD_NAMESPACE`). With
    /// `bpffs_dir` and the Kubernetes identity, an exit after the Pod's DaemonSet is gone is an
    /// uninstall and removes the pins (see [`crate::uninstall_check`]).
    pub pod_name: Option<String>,
    pub pod_namespace: Option<String>,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cgroup_root: None,
            // Port 9464 is registered for Prometheus exporters of this kind; loopback by default.
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            // /metrics is served on `listen` too; a second address is only for splitting them.
            metrics_listen: None,
            // Without a cluster, directory names are the only source that needs nothing.
            identity: IdentityKind::CgroupDirs,
            identity_file: None,
            // Only the Kubernetes identity needs it; it comes from the downward API there.
            node_name: None,
            kubeconfig: None,
            // Four reads a second: a served request shows within 250 ms.
            poll_interval: Duration::from_millis(250),
            // Long enough for a final scrape after a pod is deleted.
            pod_grace: Duration::from_secs(60),
            map_sizes: MapSizes::default(),
            // Smooth enough for autoscaling, quick enough to follow a load change in half a minute.
            rate_window: RateWindow::DEFAULT,
            // Paths can carry unbounded ids; routes are opt-in.
            route_labels: false,
            // 50 routes x 21 histogram series stays near a thousand series per pod and side.
            max_routes_per_pod: usize::from(routes::DEFAULT_CAP),
            node_requests_in_rate: false,
            // Loopback by default; a cluster install turns on TokenReview.
            api_auth: crate::exporters::api_auth::ApiAuth::None,
            // Opt-in: without it nothing outlives the agent.
            bpffs_dir: None,
            // Only a DaemonSet's pod has them, from the downward API.
            pod_name: None,
            pod_namespace: None,
        }
    }
}

/// Which pod each cgroup id is, resolved once and cached.
struct Resolver {
    cgroups: CgroupIndex,
    identity: Identity,
    cache: FastMap<u64, Option<PodId>>,
}

impl Resolver {
    fn pod(&mut self, cgroup_id: u64) -> Option<PodId> {
        if let Some(hit) = self.cache.get(&cgroup_id) {
            return hit.clone();
        }
        let pod = self
            .cgroups
            .path(cgroup_id)
            .and_then(|p| self.identity.pod_of_cgroup(p));
        // Unknown ids are not cached: the cgroup may appear in the next scan, and its pod in the
        // Kubernetes store a moment after its cgroup.
        if pod.is_some() {
            self.cache.insert(cgroup_id, pod.clone());
        }
        pod
    }

    /// The node's own cgroups (see [`NodeCgroups`]), from a scan made now.
    fn node_cgroups(&mut self) -> HashSet<u64> {
        self.cgroups.rescan();
        self.cgroups
            .all()
            .filter(|(_, path)| self.identity.is_node_cgroup(path))
            .map(|(id, _)| id)
            .collect()
    }
}

/// Runs the agent until `shutdown` completes. `on_listening` is told the bound API address once
/// the programs are attached and the API serves (after any `--metrics-listen` address is bound).
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    preflight::check_privileges()?;
    let root = match &config.cgroup_root {
        Some(p) => preflight::cgroup2_root(p)?,
        None => preflight::cgroup2_mount()?,
    };
    preflight::check_cgroup2(&root)?;
    if config
        .cgroup_root
        .as_ref()
        .is_some_and(|given| *given != root)
    {
        info!(cgroup = %root.display(), "the cgroup root given is a hybrid host's mount: observing its cgroup2 tree");
    }
    let identity = identity(&config, &root).await?;
    let uninstall_check = uninstall_check(&config).await;

    // Route labels need the request lines the events carry; nothing else needs events.
    let sizes = MapSizes {
        events: config.route_labels,
        ..config.map_sizes.clone()
    };
    let (probes, mut checkpoint, history, pin_dir) = match &config.bpffs_dir {
        Some(bpffs) => {
            let dir = pins::dir_of(bpffs, &root)?;
            let pinned = pins::attach(&root, &sizes, &dir)?;
            (
                pinned.probes,
                Some(pinned.checkpoint),
                pinned.history,
                Some(dir),
            )
        }
        None => (Probes::attach(&root, &sizes)?, None, None, None),
    };
    let Probes {
        programs,
        flows: mut flow_sums,
        mut latency,
        stats,
        events,
        node_cgroups,
    } = probes;
    // Requests from the node's own processes (kubelet probes) are booked apart unless asked for
    // in the rate: then the kernel's set is emptied and they count like any other.
    let mut node_cgroups = NodeCgroups::new(node_cgroups);
    let attached = Instant::now();
    // The rate windows start when the kernel counters were zero, or, on a takeover, at the
    // previous agent's last read: the first read spreads what it missed over the gap.
    let origin = history.as_ref().map_or(attached, |h| h.since);
    info!(cgroup = %root.display(), "attached cgroup_skb ingress/egress and sock_ops");

    let fill = match RingFill::new(events.as_fd(), config.map_sizes.ring_bytes) {
        Ok(fill) => Some(fill),
        Err(e) => {
            warn!(error = %e, "cannot map the ring buffer positions; its fill is not exported");
            None
        }
    };
    let mut registry = Registry::default();
    let metrics = Metrics::register(
        &mut registry,
        &AgentInfo {
            version: env!("CARGO_PKG_VERSION").to_owned(),
            programs: ATTACH_PROGRAMS.to_owned(),
            link: ATTACH_LINK.to_owned(),
            cgroup_root: root.display().to_string(),
            rate_window_secs: config.rate_window.secs(),
            ring_capacity_bytes: u64::from(config.map_sizes.ring_bytes),
            ring_positions: fill.is_some(),
        },
    );
    let shared = Shared::new(
        NodeState {
            books: Books::new(
                config.rate_window,
                origin,
                config.route_labels.then_some(config.max_routes_per_pod),
                metrics.http.clone(),
            ),
            metrics,
            health: health::attached(
                &root,
                u64::from(config.map_sizes.ring_bytes),
                config.rate_window.secs(),
                config.route_labels,
            ),
            started: attached,
        },
        registry,
        fill.is_some(),
    );
    count_connections(&programs, &config.map_sizes, &shared);

    let mut resolver = Resolver {
        cgroups: CgroupIndex::new(&root),
        identity,
        cache: FastMap::default(),
    };
    if config.node_requests_in_rate {
        node_cgroups.sync(&HashSet::new());
        info!("requests from the node's own cgroups (kubelet probes) count in the pods' rates");
    } else {
        node_cgroups.sync(&resolver.node_cgroups());
        info!(
            cgroups = node_cgroups.len(),
            "requests from the node's own cgroups (kubelet probes) are booked apart"
        );
    }
    let mut deltas = Deltas::default();
    let mut kernel_sums = KernelSums::default();
    if history.is_some() {
        // The pinned sums and histogram hold what the previous agent saw: start from them.
        kernel_sums.prime(&flow_sums, &latency)?;
    }
    if let Some(history) = &history {
        // What the previous agent booked goes into the totals (the Prometheus counters continue)
        // but not into the rates, which it would spike.
        let booked = counters::by_pod(deltas.update(&history.counts), |id| resolver.pod(id));
        shared.lock().book_history(&booked);
    }

    let (stop_api, api_stopped) = tokio::sync::watch::channel(false);
    let stopped = move |mut rx: tokio::sync::watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|stop| *stop).await;
    };
    let mut servers = Vec::new();
    if let Some(metrics_addr) = config.metrics_listen {
        let listener = bind(metrics_addr).await?;
        let addr = listener.local_addr()?;
        servers.push(tokio::spawn(crate::exporters::api::serve(
            listener,
            crate::exporters::api::metrics_router(shared.clone()),
            stopped(api_stopped.clone()),
        )));
        info!(%addr, "serving /metrics");
    }
    // Plain HTTP, or TLS when callers authenticate (`--api-auth token-review`).
    let api = crate::exporters::api_auth::protect_api(
        crate::exporters::api::router(shared.clone()),
        &config.api_auth,
    )
    .await
    .map_err(|e| Error::Io(std::io::Error::other(e)))?;
    let listener = bind(config.listen).await?;
    let addr = listener.local_addr()?;
    servers.push(tokio::spawn(
        api.serve(listener, stopped(api_stopped.clone())),
    ));
    on_listening(addr);

    let mut flows = Flows::new(config.map_sizes.connections as usize);
    // SAFETY: the ring buffer owns its fd and stays inside the AsyncFd until both are dropped.
    let mut ring =
        unsafe { AsyncFd::register_with_interest(events, tokio::io::Interest::READABLE) }
            .map_err(std::io::Error::from)?;
    let mut poll = tokio::time::interval(config.poll_interval);
    poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The kernel wakes the reader only every 64 KiB of events; this bounds how long a few
    // events can wait.
    let mut drain = tokio::time::interval(Duration::from_millis(100));
    drain.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The latency windows move by whole seconds: one histogram read per second is enough.
    let mut histogram = tokio::time::interval(Duration::from_secs(1));
    histogram.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = poll.tick() => {
                if let Err(e) = book_counts(&flow_sums, &stats, &mut deltas, &mut kernel_sums, checkpoint.as_mut(), &mut resolver, &shared) {
                    warn!(error = %e, "reading kernel counters failed");
                }
            }
            _ = histogram.tick() => {
                if let Err(e) = book_latency(&latency, &mut kernel_sums, &mut resolver, &shared) {
                    warn!(error = %e, "reading the kernel's latency histogram failed");
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                let used = fill.as_ref().map(RingFill::used_bytes);
                drain_events(guard.get_inner_mut(), used, &mut flows, &mut resolver, &shared);
                guard.clear_ready();
            }
            _ = drain.tick() => {
                let used = fill.as_ref().map(RingFill::used_bytes);
                drain_events(ring.get_mut(), used, &mut flows, &mut resolver, &shared);
            }
            _ = sweep.tick() => {
                // Book what is left before forgetting anything.
                if let Err(e) = book_counts(&flow_sums, &stats, &mut deltas, &mut kernel_sums, checkpoint.as_mut(), &mut resolver, &shared) {
                    warn!(error = %e, "reading kernel counters failed");
                }
                if let Err(e) = book_latency(&latency, &mut kernel_sums, &mut resolver, &shared) {
                    warn!(error = %e, "reading the kernel's latency histogram failed");
                }
                kernel_sums.sweep(&mut latency, &mut resolver);
                sweep_dead_cgroups(&mut flow_sums, &mut deltas, &mut kernel_sums, checkpoint.as_mut(), &mut resolver, &shared, config.pod_grace);
                count_connections(&programs, &config.map_sizes, &shared);
                if !config.node_requests_in_rate {
                    node_cgroups.sync(&resolver.node_cgroups());
                }
            }
        }
    }

    // Final read so the last requests are booked (and checkpointed), then detach by dropping the
    // programs; pinned links stay attached and counting for the next agent, unless this exit is
    // an uninstall.
    let _ = book_counts(
        &flow_sums,
        &stats,
        &mut deltas,
        &mut kernel_sums,
        checkpoint.as_mut(),
        &mut resolver,
        &shared,
    );
    let _ = book_latency(&latency, &mut kernel_sums, &mut resolver, &shared);
    drop(fill);
    drop(ring);
    drop(programs);
    match &pin_dir {
        Some(dir) => leave_pins(dir, uninstall_check.as_ref()).await,
        None => info!("detached"),
    }
    let _ = stop_api.send(true);
    for server in servers {
        let _ = server.await;
    }
    Ok(())
}

/// How long the uninstall check may take at exit, all calls included: well within a pod's
/// termination grace period (30 s unless the DaemonSet says otherwise).
const UNINSTALL_CHECK_WITHIN: Duration = Duration::from_secs(5);

/// The uninstall check, when the agent pins (`--bpffs-dir`), names pods from the Kubernetes API
/// and knows its own Pod; otherwise the pins always stay for the next agent.
async fn uninstall_check(config: &Config) -> Option<UninstallCheck> {
    config.bpffs_dir.as_ref()?;
    let given = |v: &Option<String>| v.clone().filter(|v| !v.is_empty());
    let (Some(name), Some(namespace)) = (given(&config.pod_name), given(&config.pod_namespace))
    else {
        return None;
    };
    if config.identity != IdentityKind::Kubernetes {
        warn!(
            identity = %config.identity,
            "no uninstall check without --identity kubernetes: the pins are kept at every exit"
        );
        return None;
    }
    match podmeter_kube::client(config.kubeconfig.as_deref()).await {
        Ok(client) => Some(UninstallCheck::start(client, PodRef { namespace, name })),
        Err(error) => {
            warn!(%error, "no uninstall check: the pins are kept at every exit");
            None
        }
    }
}

/// At exit with pins: keeps them for the next agent or, when the uninstall check says the
/// agent's DaemonSet is gone, removes them (`podmeter agent-uninstall` for this cgroup root).
/// Logs one line either way.
async fn leave_pins(dir: &Path, check: Option<&UninstallCheck>) {
    let verdict = match check {
        Some(check) => check.verdict(UNINSTALL_CHECK_WITHIN).await,
        None => Verdict::Keep(
            "no uninstall check (it needs --identity kubernetes, POD_NAME and POD_NAMESPACE)"
                .to_owned(),
        ),
    };
    match verdict {
        Verdict::Keep(why) => info!(
            pins = %dir.display(),
            "keeping the pins for the next agent: {why}; the programs stay attached and counting"
        ),
        Verdict::Uninstall(why) => match pins::uninstall_root(dir) {
            Ok(removed) => info!(
                removed = removed.len(),
                "uninstalled: {why}, removed pins under {}",
                dir.display()
            ),
            Err(error) => warn!(
                %error,
                "uninstalling ({why}) failed: remove the pins with `podmeter agent-uninstall \
                 --bpffs-dir {}`",
                dir.parent().unwrap_or(dir).display()
            ),
        },
    }
}

/// How long the first list of this node's pods may take before the agent gives up.
const PODS_LISTED_WITHIN: Duration = Duration::from_secs(30);

/// The identity source `config` asks for; the Kubernetes one once this node's pods are listed,
/// so that the first counts read are booked to named pods.
async fn identity(config: &Config, root: &Path) -> Result<Identity, Error> {
    let local = |file: Option<&PathBuf>| -> Result<Identity, Error> {
        Ok(Identity::Local(match file {
            Some(f) => LocalIdentity::from_file(f, root)?,
            None => LocalIdentity::default(),
        }))
    };
    match config.identity {
        IdentityKind::File => match &config.identity_file {
            Some(f) => local(Some(f)),
            None => Err(Error::Io(std::io::Error::other(
                "--identity file needs --identity-file PATH",
            ))),
        },
        IdentityKind::CgroupDirs => local(config.identity_file.as_ref()),
        IdentityKind::Kubernetes => {
            if let Some(f) = &config.identity_file {
                warn!(file = %f.display(), "--identity kubernetes ignores the identity file");
            }
            let kubernetes = async {
                let node = config
                    .node_name
                    .as_deref()
                    .filter(|n| !n.is_empty())
                    .ok_or(KubernetesError::NoNodeName)?;
                let pods = KubernetesIdentity::connect(node, config.kubeconfig.as_deref()).await?;
                pods.ready(PODS_LISTED_WITHIN).await?;
                info!(
                    node,
                    pods = pods.len(),
                    "pod identity from the Kubernetes API"
                );
                Ok::<_, KubernetesError>(Identity::Kubernetes(pods))
            };
            // The library's error type has no Kubernetes variant; the message says it all.
            kubernetes
                .await
                .map_err(|e| Error::Io(std::io::Error::other(e)))
        }
    }
}

async fn bind(addr: SocketAddr) -> Result<tokio::net::TcpListener, Error> {
    tokio::net::TcpListener::bind(addr)
        .await
        .map_err(|source| Error::Listen {
            addr: addr.to_string(),
            source,
        })
}

/// What the agent remembers of the kernel's flow sums and latency histogram between reads.
#[derive(Default)]
struct KernelSums {
    flows: FlowDeltas,
    histogram: HistogramDeltas,
}

impl KernelSums {
    /// Starts from what the maps hold now (a takeover), booking none of it.
    fn prime(&mut self, flows: &FlowsMap, latency: &LatencyMap) -> Result<(), Error> {
        self.flows
            .prime(&flow_sums::read_flows(flows, pins::monotonic_ns())?.sums);
        self.histogram
            .prime(&latency_histogram::read_buckets(latency)?);
        Ok(())
    }

    /// Deletes the latency buckets of cgroups that no longer exist (booked already). As for the
    /// flows, a cgroup not scanned yet is not taken for gone (`CgroupIndex::gone`).
    fn sweep(&mut self, latency: &mut LatencyMap, resolver: &mut Resolver) {
        let bucket_keys: Vec<CountKey> = latency.keys().filter_map(Result::ok).collect();
        let listed = Instant::now();
        for key in bucket_keys {
            if resolver.cgroups.gone(key.cgroup_id, listed) && latency.remove(&key).is_ok() {
                self.histogram.forget(&key);
            }
        }
    }
}

fn book_counts(
    flows: &FlowsMap,
    stats: &aya::maps::PerCpuArray<MapData, u64>,
    deltas: &mut Deltas,
    sums: &mut KernelSums,
    checkpoint: Option<&mut pins::Checkpoint>,
    resolver: &mut Resolver,
    shared: &Shared,
) -> Result<(), Error> {
    let read_ns = pins::monotonic_ns();
    let flow_sums::FlowsRead {
        sums: current_flows,
        counters: current,
    } = flow_sums::read_flows(flows, read_ns)?;
    let kernel = counters::read_stats(stats)?;
    // The rates spread what changed over the time since the previous read: take the time of
    // this read right after reading.
    let now = Instant::now();
    let booked = counters::by_pod(deltas.update(&current), |cgroup_id| resolver.pod(cgroup_id));
    let booked_flows: Vec<_> = sums
        .flows
        .update(&current_flows)
        .into_iter()
        .filter_map(|(key, delta)| {
            let (pod, flow) =
                attribution::attribute(key.cgroup_id, key.role, key.peer, |id| resolver.pod(id))?;
            Some((pod, flow, delta))
        })
        .collect();
    // Booked from here on, whatever happens to this process: the next agent starts from it.
    if let Some(checkpoint) = checkpoint
        && let Err(e) = checkpoint.record(&current, read_ns)
    {
        warn!(error = %e, "writing the pinned checkpoint failed");
    }
    let mut state = shared.lock();
    state.book_counts(now, &booked, &booked_flows);
    state.health.kernel = health::kernel_reply(&kernel);
    state.health.counter_entries = current.len() as u64;
    state.health.flow_sums_torn = sums.flows.torn;
    Ok(())
}

/// Reads the kernel's latency histogram and books what changed.
fn book_latency(
    latency: &LatencyMap,
    sums: &mut KernelSums,
    resolver: &mut Resolver,
    shared: &Shared,
) -> Result<(), Error> {
    let current = latency_histogram::read_buckets(latency)?;
    let now = Instant::now();
    let booked: Vec<_> = sums
        .histogram
        .update(&current)
        .into_iter()
        .filter_map(|(key, buckets)| {
            let (pod, flow) =
                attribution::attribute(key.cgroup_id, key.role, key.peer, |id| resolver.pod(id))?;
            Some((pod, flow, buckets))
        })
        .collect();
    let mut state = shared.lock();
    state.book_latency(now, &booked);
    state.health.latency_buckets = current.len() as u64;
    Ok(())
}

/// Drains the ring buffer; `used` is how many bytes it held just before.
fn drain_events(
    ring: &mut RingBuf<MapData>,
    used: Option<u64>,
    flows: &mut Flows,
    resolver: &mut Resolver,
    shared: &Shared,
) {
    let mut drain = Drain::default();
    while let Some(item) = ring.next() {
        drain.add(&item, flows);
    }
    let drained = drain.finish(|cgroup_id| resolver.pod(cgroup_id));
    let mut state = shared.lock();
    if let Some(used) = used {
        state.health.ring_used_bytes = used;
        let ratio = RingFill::ratio(used, state.health.ring_capacity_bytes);
        state.metrics.health.ring_buffer_fill.observe(ratio);
    }
    drained.book(flows, &mut state);
}

/// Counts the kernel's connection table and derives how many connections it evicted.
fn count_connections(programs: &Ebpf, sizes: &MapSizes, shared: &Shared) {
    let Some(table) = programs.map(names::CONNECTIONS) else {
        return;
    };
    let tracked = match connection_table::count(table, sizes.connections) {
        Ok(n) => n,
        Err(e) => {
            warn!(error = %e, "counting the connection table failed");
            return;
        }
    };
    let mut state = shared.lock();
    let h = &mut state.health;
    h.connections_tracked = tracked;
    h.connections_evicted = health::evicted(
        h.connections_evicted,
        h.kernel.connections_opened,
        h.kernel.connections_closed,
        tracked,
    );
}

/// Deletes the flows (their counters and sums) of cgroups that no longer exist (booked already)
/// and lets pods without cgroups leave after the grace period.
fn sweep_dead_cgroups(
    flows: &mut FlowsMap,
    deltas: &mut Deltas,
    sums: &mut KernelSums,
    mut checkpoint: Option<&mut pins::Checkpoint>,
    resolver: &mut Resolver,
    shared: &Shared,
    grace: Duration,
) {
    let keys: Vec<CountKey> = flows.keys().filter_map(Result::ok).collect();
    let listed = Instant::now();
    let mut removed = 0u64;
    let mut live_pods = HashSet::new();
    for key in keys {
        // Not `exists`: a flow can appear for a cgroup the index has not scanned yet (at the
        // agent's first sweep, a pod's first request), and deleting it would lose its count.
        if !resolver.cgroups.gone(key.cgroup_id, listed) {
            if let Some(pod) = resolver.pod(key.cgroup_id) {
                live_pods.insert(pod);
            }
            continue;
        }
        if flows.remove(&key).is_ok() {
            let flow = counters::FlowKey::of(&key);
            deltas.forget_flow(&flow);
            sums.flows.forget(&flow);
            if let Some(checkpoint) = checkpoint.as_deref_mut() {
                checkpoint.forget_flow(&flow);
            }
            removed += 1;
        }
    }
    let dead = resolver.cgroups.forget_removed();
    resolver.cache.retain(|id, _| !dead.contains(id));
    let mut state = shared.lock();
    state.health.counter_entries_removed += removed;
    for pod in state.sweep(|p| live_pods.contains(p), Instant::now(), grace) {
        info!(%pod, "pod gone; its series are removed");
    }
}
