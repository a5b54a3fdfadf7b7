//! Collection: every interval, each node agent's `/v1/pods/inbound` is read (concurrently, each
//! read bounded by a timeout; `/v1/pods` from agents older than it) and the metrics API's
//! [`Collected`] snapshot is replaced by the union of the answers. An agent that stopped
//! answering keeps its last answer only for the staleness bound; after that its pods are absent
//! (the HPA treats them as missing) rather than frozen.

use std::{
    collections::{BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use tokio::{
    sync::{Semaphore, watch as channel},
    task::JoinSet,
};

pub(super) use super::agent_client::AgentClient;
use super::{
    agent_client::Format,
    labels::PodLabels,
    served::{Answer, Collected},
};
use crate::Readiness;

/// Reads in flight at once. Started all at once, thousands of reads queue on the runtime, and
/// the last ones time out for the queue rather than the agent; a timed-out read loses its
/// kept-alive connection, so the next needs a new TLS handshake, and the queue grows. Bounded,
/// each read's timeout starts when it is sent. 256 reads of a few milliseconds each (a
/// round trip and a 15 KB answer) cover tens of thousands of agents a second.
const MAX_IN_FLIGHT: usize = 256;

/// How long an agent found older than `/v1/pods/inbound` is read at `/v1/pods` before it is
/// asked again (it may have been upgraded): one 404 a minute.
const FORMAT_RECHECK: Duration = Duration::from_secs(60);

/// How often and how patiently the agents are read.
#[derive(Clone, Copy, Debug)]
pub struct Timing {
    /// Time between two collections.
    pub interval: Duration,
    /// Bound on one agent's answer.
    pub timeout: Duration,
    /// How long an agent's last answer is served after it stopped answering.
    pub staleness: Duration,
}

/// The answers still fresh at `now`.
fn fresh(
    answers: &HashMap<String, Arc<Answer>>,
    now: Instant,
    staleness: Duration,
) -> Vec<Arc<Answer>> {
    answers
        .values()
        .filter(|a| now.saturating_duration_since(a.received) <= staleness)
        .cloned()
        .collect()
}

/// Reads the bearer token for the agents from `path` (trimmed); `None` without a path or when
/// the file cannot be read (logged). Read at every collection: projected tokens rotate.
fn read_token(path: Option<&Path>) -> Option<Arc<str>> {
    let path = path?;
    match std::fs::read_to_string(path) {
        Ok(token) => Some(Arc::from(token.trim())),
        Err(error) => {
            tracing::warn!(%error, path = %path.display(), "cannot read the agent token");
            None
        }
    }
}

/// The agents to read: the fixed URLs and those the Service's endpoints list now.
pub struct Targets {
    pub fixed: Vec<String>,
    pub discovered: channel::Receiver<BTreeSet<String>>,
}

/// Collects from the `targets` into `source` with `client` until the task is dropped,
/// authenticating with the token in `token_file` when given; makes `readiness` ready after the
/// first snapshot with an agent's answer (see [`Readiness`]).
pub async fn run(
    client: AgentClient,
    source: Arc<Collected>,
    Targets { fixed, discovered }: Targets,
    labels: PodLabels,
    timing: Timing,
    token_file: Option<PathBuf>,
    readiness: Readiness,
) {
    let started = Instant::now();
    let mut answers: HashMap<String, Arc<Answer>> = HashMap::new();
    let mut failing: BTreeSet<String> = BTreeSet::new();
    // Agents that answered only `/v1/pods`, until the next recheck.
    let mut older: BTreeSet<String> = BTreeSet::new();
    let mut rechecked = Instant::now();
    let mut assembling: Option<tokio::task::JoinHandle<()>> = None;
    let mut ticker = tokio::time::interval(timing.interval);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ticker.tick().await;
        let targets: BTreeSet<String> = fixed
            .iter()
            .cloned()
            .chain(discovered.borrow().iter().cloned())
            .collect();
        // An agent no longer listed goes at once, not after the staleness bound.
        answers.retain(|url, _| targets.contains(url));
        failing.retain(|url| targets.contains(url));
        if rechecked.elapsed() >= FORMAT_RECHECK {
            older.clear();
            rechecked = Instant::now();
        }
        let token = read_token(token_file.as_deref());
        let mut reads = JoinSet::new();
        let in_flight = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
        for url in targets {
            let (client, token, labels) = (client.clone(), token.clone(), labels.clone());
            let in_flight = in_flight.clone();
            let format = if older.contains(&url) {
                Format::Pods
            } else {
                Format::Inbound
            };
            reads.spawn(async move {
                // Never closed: acquiring only waits.
                let _permit = in_flight.acquire_owned().await;
                let read = client.inbound(&url, token.as_deref(), format).await;
                let answer = read.map(|(reply, format)| {
                    let answer = Answer::new(Instant::now(), SystemTime::now(), reply, &labels);
                    (Arc::new(answer), format)
                });
                (url, answer)
            });
        }
        while let Some(joined) = reads.join_next().await {
            let Ok((url, reply)) = joined else { continue };
            match reply {
                Ok((answer, format)) => {
                    if failing.remove(&url) {
                        tracing::info!(%url, "node agent answers again");
                    }
                    if format == Format::Pods && older.insert(url.clone()) {
                        tracing::info!(%url, "node agent has no /v1/pods/inbound: read /v1/pods");
                    }
                    answers.insert(url, answer);
                }
                Err(error) => {
                    // Once per outage, not once per interval.
                    if failing.insert(url) {
                        tracing::warn!(%error, "node agent does not answer");
                    }
                }
            }
        }
        let fresh = fresh(&answers, Instant::now(), timing.staleness);
        // Ready once a snapshot holds an agent's answer, or when none answered within the
        // staleness bound (their pods would have no values by then anyway).
        let ready = !fresh.is_empty() || started.elapsed() >= timing.staleness;
        // Assembled off the runtime's workers, while the next reads go on; one at a time.
        if let Some(previous) = assembling.take() {
            let _ = previous.await;
        }
        let (source, readiness) = (source.clone(), readiness.clone());
        assembling = Some(tokio::task::spawn_blocking(move || {
            source.replace(&fresh);
            if ready {
                readiness.ready();
            }
        }));
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use podmeter_wire::{
        DurationSummary, FlowReply, FlowTotals, InboundReply, ObservedReply, PodReply, PodsReply,
        UnattributedReply,
    };

    use super::*;
    use crate::{
        HTTP_REQUEST_BYTES_PER_SECOND, HTTP_REQUEST_DURATION_SECONDS_P95,
        HTTP_REQUESTS_CONCURRENCY, HTTP_REQUESTS_PER_SECOND, PodSample, podmeter_metrics,
        source::MetricsSource,
    };

    /// What the API serves from the answers fresh at `now`, for `namespaces`.
    fn snapshot(
        answers: &HashMap<String, Arc<Answer>>,
        now: Instant,
        staleness: Duration,
        namespaces: &[&str],
    ) -> BTreeMap<String, Vec<PodSample>> {
        let source = Collected::new(podmeter_metrics());
        source.replace(&fresh(answers, now, staleness));
        namespaces
            .iter()
            .map(|ns| (ns.to_string(), source.pods(ns)))
            .filter(|(_, pods)| !pods.is_empty())
            .collect()
    }

    fn flow(rate: f64, duration: Option<DurationSummary>) -> FlowReply {
        FlowReply {
            totals: FlowTotals::default(),
            rate,
            duration,
            ..FlowReply::default()
        }
    }

    fn pod(namespace: &str, name: &str, inbound: FlowReply) -> PodReply {
        PodReply {
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
            workload: None,
            inbound,
            outbound: flow(0.0, None),
            loopback_inbound: flow(0.0, None),
            loopback_outbound: flow(0.0, None),
            node_inbound: flow(0.0, None),
            observed: ObservedReply::default(),
        }
    }

    fn reply(rate_window_seconds: u32, pods: Vec<PodReply>) -> PodsReply {
        PodsReply {
            rate_window_seconds,
            pods,
            unattributed: UnattributedReply {
                inbound: flow(0.0, None),
                outbound: flow(0.0, None),
                loopback_inbound: flow(0.0, None),
                loopback_outbound: flow(0.0, None),
                node_inbound: flow(0.0, None),
                observed_inbound: Default::default(),
                observed_outbound: Default::default(),
            },
        }
    }

    fn answer(received: Instant, pods: &[(&str, &str, f64)]) -> Arc<Answer> {
        let reply = InboundReply::of(&reply(
            10,
            pods.iter()
                .map(|&(namespace, name, rate)| pod(namespace, name, flow(rate, None)))
                .collect(),
        ));
        Arc::new(Answer::new(
            received,
            SystemTime::now(),
            reply,
            &PodLabels::default(),
        ))
    }

    #[test]
    fn stale_agents_drop_out_and_moved_pods_take_the_newer_answer() {
        let now = Instant::now();
        let staleness = Duration::from_secs(5);
        let answers = HashMap::from([
            (
                "http://a".to_owned(),
                answer(now - Duration::from_secs(2), &[("default", "web-1", 3.0)]),
            ),
            (
                "http://b".to_owned(),
                answer(
                    now - Duration::from_secs(1),
                    &[("default", "web-1", 7.0), ("demo", "x", 1.0)],
                ),
            ),
            (
                "http://c".to_owned(),
                answer(now - Duration::from_secs(6), &[("default", "gone", 9.0)]),
            ),
        ]);
        let pods = snapshot(&answers, now, staleness, &["default", "demo"]);
        let default = &pods["default"];
        assert_eq!(default.len(), 1, "{default:?}");
        assert_eq!(default[0].name, "web-1");
        let sample = &default[0].values[HTTP_REQUESTS_PER_SECOND];
        assert!((sample.value - 7.0).abs() < f64::EPSILON);
        assert_eq!(sample.window, Some(Duration::from_secs(10)));
        assert_eq!(pods["demo"].len(), 1);
    }

    #[test]
    fn the_p95_duration_is_served_for_pods_with_exchanges_in_the_window() {
        let busy = DurationSummary {
            exchanges: 300,
            p50_seconds: 0.0051,
            p90_seconds: 0.0102,
            p95_seconds: 0.0503,
            p99_seconds: 0.1007,
        };
        let reply = reply(
            30,
            vec![
                pod("shop", "busy", flow(10.0, Some(busy))),
                pod("shop", "idle", flow(0.0, None)),
            ],
        );
        let now = Instant::now();
        let answers = HashMap::from([(
            "http://a".to_owned(),
            Arc::new(Answer::new(
                now,
                SystemTime::now(),
                InboundReply::of(&reply),
                &PodLabels::default(),
            )),
        )]);
        let pods = snapshot(&answers, now, Duration::from_secs(5), &["shop"]);
        let [busy, idle] = &pods["shop"][..] else {
            panic!("two pods: {pods:?}");
        };
        let p95 = &busy.values[HTTP_REQUEST_DURATION_SECONDS_P95];
        assert!((p95.value - 0.0503).abs() < f64::EPSILON);
        assert_eq!(p95.window, Some(Duration::from_secs(30)));
        assert!(busy.values.contains_key(HTTP_REQUESTS_PER_SECOND));
        // No exchanges, no latency: the pod is absent from that metric, not reported as 0 s.
        assert_eq!(idle.name, "idle");
        assert!(!idle.values.contains_key(HTTP_REQUEST_DURATION_SECONDS_P95));
        assert!(idle.values.contains_key(HTTP_REQUESTS_PER_SECOND));
    }

    /// The snapshot of one fresh answer with a 30 s window.
    fn one_answer(pods: Vec<PodReply>) -> BTreeMap<String, Vec<PodSample>> {
        let now = Instant::now();
        let answers = HashMap::from([(
            "http://a".to_owned(),
            Arc::new(Answer::new(
                now,
                SystemTime::now(),
                InboundReply::of(&reply(30, pods)),
                &PodLabels::default(),
            )),
        )]);
        snapshot(&answers, now, Duration::from_secs(5), &["shop"])
    }

    #[test]
    fn concurrency_is_served_when_the_agent_has_it_and_absent_when_null() {
        let busy = FlowReply {
            concurrency: Some(2.375),
            ..flow(20.0, None)
        };
        let idle = FlowReply {
            concurrency: Some(0.0),
            ..flow(0.0, None)
        };
        let pods = one_answer(vec![
            pod("shop", "busy", busy),
            pod("shop", "idle", idle),
            // Before the agent's second read, and from agents older than the field.
            pod("shop", "new", flow(0.0, None)),
        ]);
        let [busy, idle, new] = &pods["shop"][..] else {
            panic!("three pods: {pods:?}");
        };
        let concurrency = &busy.values[HTTP_REQUESTS_CONCURRENCY];
        assert!((concurrency.value - 2.375).abs() < f64::EPSILON);
        assert_eq!(concurrency.window, Some(Duration::from_secs(30)));
        // A measured 0 is a value (nothing in flight); null is none, not a guessed 0.
        assert_eq!(idle.values[HTTP_REQUESTS_CONCURRENCY].value, 0.0);
        assert_eq!(new.name, "new");
        assert!(!new.values.contains_key(HTTP_REQUESTS_CONCURRENCY));
        assert!(new.values.contains_key(HTTP_REQUESTS_PER_SECOND));
    }

    #[test]
    fn request_bytes_are_served_unless_the_agent_does_not_count_them() {
        let counted = FlowReply {
            totals: FlowTotals {
                requests: 40,
                request_bytes: 6_000,
                response_bytes: 80_000,
                ..FlowTotals::default()
            },
            request_bytes_per_second: 1_536.5,
            response_bytes_per_second: 20_000.0,
            ..flow(10.0, None)
        };
        let older_agent = FlowReply {
            totals: FlowTotals {
                requests: 40,
                ..FlowTotals::default()
            },
            ..flow(10.0, None)
        };
        let pods = one_answer(vec![
            pod("shop", "counted", counted),
            pod("shop", "never-called", flow(0.0, None)),
            pod("shop", "older-agent", older_agent),
        ]);
        let [counted, never_called, older_agent] = &pods["shop"][..] else {
            panic!("three pods: {pods:?}");
        };
        // Inbound request bytes, not response bytes.
        let bytes = &counted.values[HTTP_REQUEST_BYTES_PER_SECOND];
        assert!((bytes.value - 1_536.5).abs() < f64::EPSILON);
        assert_eq!(bytes.window, Some(Duration::from_secs(30)));
        // No request ever: truly 0 B/s.
        assert_eq!(
            never_called.values[HTTP_REQUEST_BYTES_PER_SECOND].value,
            0.0
        );
        // Requests without bytes: an agent that does not count them; missing, not 0.
        assert_eq!(older_agent.name, "older-agent");
        assert!(
            !older_agent
                .values
                .contains_key(HTTP_REQUEST_BYTES_PER_SECOND)
        );
        assert!(older_agent.values.contains_key(HTTP_REQUESTS_PER_SECOND));
    }
}
