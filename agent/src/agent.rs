//! The agent's main loop: attach, then read counters and drain events until told to stop.

use std::{
    collections::HashMap,
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use aya::maps::{MapData, RingBuf};
use podmeter_common::CountKey;

type CountsMap = aya::maps::PerCpuHashMap<MapData, CountKey, u64>;
use tokio::io::unix::AsyncFd;
use tracing::{info, warn};

use crate::{
    Error,
    cgroups::CgroupIndex,
    counters::{self, Deltas, KernelStats},
    dedup,
    ebpf::{MapSizes, Probes},
    events,
    flows::Flows,
    pods::{Identity, PodId},
    preflight,
    traffic::Traffic,
};

/// How the agent runs.
#[derive(Clone, Debug)]
pub struct Config {
    /// cgroup v2 directory to attach to; `None` for the whole cgroup2 mount.
    pub cgroup_root: Option<PathBuf>,
    /// Address of the HTTP API.
    pub listen: SocketAddr,
    /// Optional identity file (see [`crate::pods`]).
    pub identity_file: Option<PathBuf>,
    /// How often the kernel counters are read.
    pub poll_interval: Duration,
    /// How long a pod whose cgroups are gone keeps its series.
    pub pod_grace: Duration,
    pub map_sizes: MapSizes,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            cgroup_root: None,
            // Port 9464 is registered for Prometheus exporters of this kind; loopback by default.
            listen: SocketAddr::from(([127, 0, 0, 1], 9464)),
            identity_file: None,
            // Four reads a second: a served request shows within 250 ms.
            poll_interval: Duration::from_millis(250),
            // Long enough for a final scrape after a pod is deleted.
            pod_grace: Duration::from_secs(60),
            map_sizes: MapSizes::default(),
        }
    }
}

/// The agent's own health, from the kernel statistics and the userspace pipeline.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub kernel: KernelStats,
    pub events_received: u64,
    pub events_malformed: u64,
    pub request_lines_invalid: u64,
    pub unpaired_requests: u64,
    pub orphan_responses: u64,
    pub open_requests: u64,
    pub counter_entries: u64,
    pub counter_entries_removed: u64,
}

/// Everything the API reads.
pub struct NodeState {
    pub traffic: Traffic,
    pub health: Health,
    pub started: Instant,
    pub cgroup_root: PathBuf,
}

/// Shared, briefly locked state.
#[derive(Clone)]
pub struct Shared(Arc<Mutex<NodeState>>);

impl Shared {
    pub fn lock(&self) -> MutexGuard<'_, NodeState> {
        // A panic while holding the lock leaves consistent-enough counters; keep serving them.
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }
}

/// Which pod each cgroup id is, resolved once and cached.
struct Resolver {
    cgroups: CgroupIndex,
    identity: Identity,
    cache: HashMap<u64, Option<PodId>>,
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
        // Unknown ids are not cached: the cgroup may appear in the next scan.
        if pod.is_some() {
            self.cache.insert(cgroup_id, pod.clone());
        }
        pod
    }
}

/// Runs the agent until `shutdown` completes. `on_listening` is told the bound API address once
/// the programs are attached and the API serves.
pub async fn run(
    config: Config,
    shutdown: impl Future<Output = ()>,
    on_listening: impl FnOnce(SocketAddr),
) -> Result<(), Error> {
    preflight::check_privileges()?;
    let root = match &config.cgroup_root {
        Some(p) => p.clone(),
        None => preflight::cgroup2_mount()?,
    };
    preflight::check_cgroup2(&root)?;
    let identity = match &config.identity_file {
        Some(f) => Identity::from_file(f, &root)?,
        None => Identity::default(),
    };

    let Probes {
        programs,
        mut counts,
        stats,
        events,
    } = Probes::attach(&root, &config.map_sizes)?;
    info!(cgroup = %root.display(), "attached cgroup_skb ingress/egress and sock_ops");

    let shared = Shared(Arc::new(Mutex::new(NodeState {
        traffic: Traffic::default(),
        health: Health::default(),
        started: Instant::now(),
        cgroup_root: root.clone(),
    })));
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .map_err(|source| Error::Listen {
            addr: config.listen.to_string(),
            source,
        })?;
    let addr = listener.local_addr()?;
    let (stop_api, api_stopped) = tokio::sync::oneshot::channel::<()>();
    let api = tokio::spawn(crate::api::serve(listener, shared.clone(), async {
        let _ = api_stopped.await;
    }));
    on_listening(addr);

    let mut resolver = Resolver {
        cgroups: CgroupIndex::new(&root),
        identity,
        cache: HashMap::new(),
    };
    let mut deltas = Deltas::default();
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
    let mut sweep = tokio::time::interval(Duration::from_secs(5));
    tokio::pin!(shutdown);

    loop {
        tokio::select! {
            () = &mut shutdown => break,
            _ = poll.tick() => {
                if let Err(e) = book_counts(&counts, &stats, &mut deltas, &mut resolver, &shared) {
                    warn!(error = %e, "reading kernel counters failed");
                }
            }
            guard = ring.readable_mut() => {
                let mut guard = guard?;
                drain_events(guard.get_inner_mut(), &mut flows, &mut resolver, &shared);
                guard.clear_ready();
            }
            _ = drain.tick() => drain_events(ring.get_mut(), &mut flows, &mut resolver, &shared),
            _ = sweep.tick() => {
                // Book what is left before forgetting anything.
                if let Err(e) = book_counts(&counts, &stats, &mut deltas, &mut resolver, &shared) {
                    warn!(error = %e, "reading kernel counters failed");
                }
                sweep_dead_cgroups(&mut counts, &mut deltas, &mut resolver, &shared, config.pod_grace);
            }
        }
    }

    // Final read so the last requests are booked, then detach by dropping the programs.
    let _ = book_counts(&counts, &stats, &mut deltas, &mut resolver, &shared);
    drop(ring);
    drop(programs);
    info!("detached");
    let _ = stop_api.send(());
    let _ = api.await;
    Ok(())
}

fn book_counts(
    counts: &CountsMap,
    stats: &aya::maps::PerCpuArray<MapData, u64>,
    deltas: &mut Deltas,
    resolver: &mut Resolver,
    shared: &Shared,
) -> Result<(), Error> {
    let current = counters::read_counts(counts)?;
    let kernel = counters::read_stats(stats)?;
    let changed = deltas.update(&current);
    let booked: Vec<_> = changed
        .into_iter()
        .filter_map(|(flow, delta)| {
            Some((
                resolver.pod(flow.cgroup_id),
                dedup::flow(flow.role, flow.peer)?,
                delta,
            ))
        })
        .collect();
    let mut state = shared.lock();
    for (pod, flow, delta) in &booked {
        state.traffic.add_counts(pod.as_ref(), *flow, delta);
    }
    state.health.kernel = kernel;
    state.health.counter_entries = current.len() as u64;
    Ok(())
}

fn drain_events(
    ring: &mut RingBuf<MapData>,
    flows: &mut Flows,
    resolver: &mut Resolver,
    shared: &Shared,
) {
    let mut received = 0u64;
    let mut malformed = 0u64;
    let mut invalid_lines = 0u64;
    let mut exchanges = Vec::new();
    while let Some(item) = ring.next() {
        received += 1;
        let Some(event) = events::decode(&item) else {
            malformed += 1;
            continue;
        };
        if let events::Event::Request { line, .. } = &event
            && !line.valid
        {
            invalid_lines += 1;
        }
        if let Some(x) = flows.on_event(event) {
            exchanges.push(x);
        }
    }
    if received == 0 {
        return;
    }
    let booked: Vec<_> = exchanges
        .into_iter()
        .filter_map(|x| Some((resolver.pod(x.cgroup_id), dedup::flow(x.role, x.peer)?, x)))
        .collect();
    let mut state = shared.lock();
    for (pod, flow, x) in &booked {
        state.traffic.add_exchange(pod.as_ref(), *flow, x);
    }
    let h = &mut state.health;
    h.events_received += received;
    h.events_malformed += malformed;
    h.request_lines_invalid += invalid_lines;
    h.unpaired_requests = flows.unpaired;
    h.orphan_responses = flows.orphan_responses;
    h.open_requests = flows.open() as u64;
}

/// Deletes the kernel counters of cgroups that no longer exist (their counts are booked already)
/// and lets pods without cgroups leave after the grace period.
fn sweep_dead_cgroups(
    counts: &mut CountsMap,
    deltas: &mut Deltas,
    resolver: &mut Resolver,
    shared: &Shared,
    grace: Duration,
) {
    let keys: Vec<CountKey> = counts.keys().filter_map(Result::ok).collect();
    let mut removed = 0u64;
    let mut live_pods = std::collections::HashSet::new();
    for key in keys {
        if resolver.cgroups.exists(key.cgroup_id) {
            if let Some(pod) = resolver.pod(key.cgroup_id) {
                live_pods.insert(pod);
            }
            continue;
        }
        if counts.remove(&key).is_ok() {
            deltas.forget(&key);
            removed += 1;
        }
    }
    let dead = resolver.cgroups.forget_removed();
    resolver.cache.retain(|id, _| !dead.contains(id));
    let mut state = shared.lock();
    state.health.counter_entries_removed += removed;
    for pod in state
        .traffic
        .sweep(|p| live_pods.contains(p), Instant::now(), grace)
    {
        info!(%pod, "pod gone; its series are removed");
    }
}
