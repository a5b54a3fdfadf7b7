//! Collection: every interval, each node agent's `/v1/pods` is read (concurrently, each read
//! bounded by a timeout) and the metrics API's [`MemorySource`] is replaced by the union of the
//! answers. An agent that stopped answering keeps its last answer only for the staleness bound;
//! after that its pods are absent (the HPA treats them as missing) rather than frozen.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap},
    path::{Path, PathBuf},
    sync::Arc,
    time::{Duration, Instant, SystemTime},
};

use podmeter_wire::{FlowTotals, PodsReply};
use tokio::{sync::watch as channel, task::JoinSet};

pub(super) use super::agent_client::AgentClient;
use super::labels::PodLabels;
use crate::{
    HTTP_REQUEST_BYTES_PER_SECOND, HTTP_REQUEST_DURATION_SECONDS_P95, HTTP_REQUESTS_CONCURRENCY,
    HTTP_REQUESTS_PER_SECOND, MemorySource, PodSample, Sample,
};

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

/// One agent's last good answer.
#[derive(Clone, Debug)]
struct Answer {
    received: Instant,
    timestamp: SystemTime,
    reply: PodsReply,
}

/// The answers still fresh at `now`, as the metrics API's pods by namespace. A pod two agents
/// report (it moved) takes the newer answer.
fn snapshot(
    answers: &HashMap<String, Answer>,
    labels: &PodLabels,
    now: Instant,
    staleness: Duration,
) -> BTreeMap<String, Vec<PodSample>> {
    let mut fresh: Vec<&Answer> = answers
        .values()
        .filter(|a| now.saturating_duration_since(a.received) <= staleness)
        .collect();
    fresh.sort_by_key(|a| a.received);
    let mut pods: BTreeMap<(String, String), PodSample> = BTreeMap::new();
    for answer in fresh {
        let window = Duration::from_secs(u64::from(answer.reply.rate_window_seconds));
        for pod in &answer.reply.pods {
            let sample = |value| Sample {
                value,
                timestamp: answer.timestamp,
                window: Some(window),
            };
            let mut values = BTreeMap::from([(
                HTTP_REQUESTS_PER_SECOND.to_owned(),
                sample(pod.inbound.rate),
            )]);
            if let Some(d) = &pod.inbound.duration {
                values.insert(
                    HTTP_REQUEST_DURATION_SECONDS_P95.to_owned(),
                    sample(d.p95_seconds),
                );
            }
            // `null` before the agent has two reads, and from older agents: no value, not 0.
            if let Some(concurrency) = pod.inbound.concurrency {
                values.insert(HTTP_REQUESTS_CONCURRENCY.to_owned(), sample(concurrency));
            }
            if counts_bytes(&pod.inbound.totals) {
                values.insert(
                    HTTP_REQUEST_BYTES_PER_SECOND.to_owned(),
                    sample(pod.inbound.request_bytes_per_second),
                );
            }
            pods.insert(
                (pod.namespace.clone(), pod.name.clone()),
                PodSample {
                    name: pod.name.clone(),
                    labels: labels.get(&pod.namespace, &pod.name),
                    values,
                },
            );
        }
    }
    let mut by_namespace: BTreeMap<String, Vec<PodSample>> = BTreeMap::new();
    for ((namespace, _), sample) in pods {
        by_namespace.entry(namespace).or_default().push(sample);
    }
    by_namespace
}

/// Whether the agent counts request bytes for this flow. An agent older than the byte counters
/// answers 0 bytes (the fields' default) however many requests it counted; every request an
/// agent that counts bytes counted carried some, so requests without bytes mean "not counted",
/// which is served as no value (missing to the HPA) rather than as 0 B/s.
fn counts_bytes(totals: &FlowTotals) -> bool {
    totals.requests == 0 || totals.request_bytes > 0
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

/// Collects from `fixed` and the discovered agents into `source` with `client` until the task
/// is dropped, authenticating with the token in `token_file` when given.
pub async fn run(
    client: AgentClient,
    source: Arc<MemorySource>,
    fixed: Vec<String>,
    discovered: channel::Receiver<BTreeSet<String>>,
    labels: PodLabels,
    timing: Timing,
    token_file: Option<PathBuf>,
) {
    let mut answers: HashMap<String, Answer> = HashMap::new();
    let mut failing: BTreeSet<String> = BTreeSet::new();
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
        let token = read_token(token_file.as_deref());
        let mut reads = JoinSet::new();
        for url in targets {
            let client = client.clone();
            let token = token.clone();
            reads.spawn(async move {
                let reply = client.pods(&url, token.as_deref()).await;
                (url, reply)
            });
        }
        while let Some(joined) = reads.join_next().await {
            let Ok((url, reply)) = joined else { continue };
            match reply {
                Ok(reply) => {
                    if failing.remove(&url) {
                        tracing::info!(%url, "node agent answers again");
                    }
                    answers.insert(
                        url,
                        Answer {
                            received: Instant::now(),
                            timestamp: SystemTime::now(),
                            reply,
                        },
                    );
                }
                Err(error) => {
                    // Once per outage, not once per interval.
                    if failing.insert(url) {
                        tracing::warn!(%error, "node agent does not answer");
                    }
                }
            }
        }
        source.replace(snapshot(
            &answers,
            &labels,
            Instant::now(),
            timing.staleness,
        ));
    }
}

#[cfg(test)]
mod tests {
    use podmeter_wire::{DurationSummary, FlowReply, ObservedReply, PodReply, UnattributedReply};

    use super::*;

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

    fn answer(received: Instant, pods: &[(&str, &str, f64)]) -> Answer {
        Answer {
            received,
            timestamp: SystemTime::now(),
            reply: reply(
                10,
                pods.iter()
                    .map(|&(namespace, name, rate)| pod(namespace, name, flow(rate, None)))
                    .collect(),
            ),
        }
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
        let pods = snapshot(&answers, &PodLabels::default(), now, staleness);
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
            Answer {
                received: now,
                timestamp: SystemTime::now(),
                reply,
            },
        )]);
        let pods = snapshot(&answers, &PodLabels::default(), now, Duration::from_secs(5));
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
            Answer {
                received: now,
                timestamp: SystemTime::now(),
                reply: reply(30, pods),
            },
        )]);
        snapshot(&answers, &PodLabels::default(), now, Duration::from_secs(5))
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
