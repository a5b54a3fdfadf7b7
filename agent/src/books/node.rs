//! The node's state as the API serves it: the pods' books, the agent's health and its families,
//! behind the one lock the data path and the API share.

use std::{
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;

use crate::{
    attribution::flow::Flow,
    books::Books,
    connections::pairing::Exchange,
    exporters::metrics::{
        Metrics,
        health::{HealthCollector, HealthReading},
    },
    health::Health,
    identity::PodId,
    kernel::{counters::Counts, flow_sums::FlowDelta, latency_histogram::BucketDeltas},
};

/// Everything the API reads.
pub struct NodeState {
    /// One book per pod: totals, rates, durations, routes and series.
    pub books: Books,
    /// Every family; the books hold the HTTP ones too, to create and remove pods' series.
    pub metrics: Metrics,
    /// The agent's own health; `uptime_seconds` and `routes_folded` are filled when read.
    pub health: Health,
    pub started: Instant,
}

impl NodeState {
    /// Books one read of the kernel counters and flow sums, taken at `now`, into totals, rates
    /// and series, and sets every pod's rate gauges.
    pub fn book_counts(
        &mut self,
        now: Instant,
        booked: &[(Option<PodId>, Flow, Counts)],
        flows: &[(Option<PodId>, Flow, FlowDelta)],
    ) {
        self.books.book_counts(now, booked, flows);
    }

    /// Books one read of the kernel's latency histogram, taken at `now`.
    pub fn book_latency(&mut self, now: Instant, booked: &[(Option<PodId>, Flow, BucketDeltas)]) {
        self.books.book_latency(now, booked);
    }

    /// Books what a previous agent booked (a takeover) into totals and series, not rates.
    pub fn book_history(&mut self, booked: &[(Option<PodId>, Flow, Counts)]) {
        self.books.book_history(booked);
    }

    /// Books paired exchanges (events are on only with route labels) into status codes and
    /// route-labelled series.
    pub fn book_exchanges(&mut self, booked: &[(Option<PodId>, Flow, Exchange)]) {
        self.books.book_exchanges(booked);
    }

    /// Marks which pods still have a cgroup; pods gone for longer than `grace` leave their book
    /// (totals, rates, durations, routes and series) at once. Returns the removed pods.
    pub fn sweep(
        &mut self,
        alive: impl Fn(&PodId) -> bool,
        now: Instant,
        grace: Duration,
    ) -> Vec<PodId> {
        let removed = self.books.sweep(alive, now, grace);
        self.health.pods_removed += removed.len() as u64;
        removed
    }

    /// The health readings as `/v1/agent` and the health families give them.
    pub fn health_reading(&self) -> HealthReading {
        let mut health = self.health.clone();
        health.uptime_seconds = self.started.elapsed().as_secs_f64();
        health.routes_folded = self.books.routes_folded();
        HealthReading {
            health,
            pods: self.books.pods_with_series() as u64,
        }
    }
}

/// Shared, briefly locked state, plus the registry `/metrics` encodes (its families synchronise
/// themselves, so a scrape never holds the state lock while encoding).
#[derive(Clone)]
pub struct Shared {
    state: Arc<Mutex<NodeState>>,
    registry: Arc<Registry>,
}

impl Shared {
    /// Shares `state`, and registers the health families that read it at each scrape.
    pub fn new(state: NodeState, mut registry: Registry, ring_positions: bool) -> Self {
        let state = Arc::new(Mutex::new(state));
        let weak = Arc::downgrade(&state);
        registry
            .sub_registry_with_prefix("podmeter")
            .register_collector(Box::new(HealthCollector::new(
                move || {
                    let state = weak.upgrade()?;
                    let state = state.lock().unwrap_or_else(PoisonError::into_inner);
                    Some(state.health_reading())
                },
                ring_positions,
            )));
        Self {
            state,
            registry: Arc::new(registry),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, NodeState> {
        // A panic while holding the lock leaves consistent-enough counters; keep serving them.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{
        books::rates::RateWindow,
        connections::pairing::Outcome,
        events::decode::Method,
        exporters::metrics::{
            exposition::{self, Format},
            health::AgentInfo,
        },
    };

    fn state(route_cap: Option<usize>) -> (NodeState, Registry, Instant) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry, &AgentInfo::for_tests(10));
        let t0 = Instant::now();
        let window = RateWindow::try_from(10).expect("valid");
        let state = NodeState {
            books: Books::new(window, t0, route_cap, metrics.http.clone()),
            metrics,
            health: Health::default(),
            started: t0,
        };
        (state, registry, t0)
    }

    fn served(requests: u64) -> Counts {
        let mut c = Counts {
            requests,
            ..Counts::default()
        };
        c.responses[2] = requests;
        c
    }

    fn get(target: &str) -> Exchange {
        Exchange {
            cgroup_id: 1,
            role: 1,
            peer: 0,
            method: Method::Get,
            target: Some(target.to_owned()),
            outcome: Outcome::Status(200),
            latency: Some(Duration::from_millis(3)),
        }
    }

    fn scrape(registry: &Registry) -> String {
        exposition::render(registry, Format::Prometheus).expect("renders")
    }

    #[test]
    fn the_gauge_the_json_rate_and_the_counter_come_from_one_booking() {
        let (mut s, registry, t0) = state(None);
        let web = PodId::new("shop", "web");
        for tick in 1..=60u64 {
            s.book_counts(
                t0 + Duration::from_millis(250 * tick),
                &[(Some(web.clone()), Flow::Inbound, served(5))],
                &[],
            );
        }
        let rate = s.books.rate(Some(&web), Flow::Inbound);
        assert!((rate - 20.0).abs() < 1e-9, "{rate}");
        let text = scrape(&registry);
        assert!(
            text.contains(
                "podmeter_http_server_requests_per_second{namespace=\"shop\",pod=\"web\"} 20.0\n"
            ),
            "{text}"
        );
        assert!(text.contains(
            "podmeter_http_server_requests_started_total{namespace=\"shop\",pod=\"web\"} 300\n"
        ));
        assert_eq!(
            s.books.get(&web).map(|b| b.traffic().inbound.requests),
            Some(300)
        );
    }

    #[test]
    fn a_removed_pod_leaves_every_structure_at_once() {
        let (mut s, registry, t0) = state(Some(5));
        let web = PodId::new("shop", "web");
        let db = PodId::new("shop", "db");
        s.book_counts(
            t0 + Duration::from_secs(1),
            &[
                (Some(web.clone()), Flow::Inbound, served(3)),
                (Some(web.clone()), Flow::NodeInbound, served(2)),
                (Some(db.clone()), Flow::Inbound, served(1)),
            ],
            &[],
        );
        s.book_exchanges(&[
            (Some(web.clone()), Flow::Inbound, get("/a/1")),
            (Some(db.clone()), Flow::Inbound, get("/b")),
        ]);
        assert!(scrape(&registry).contains("route=\"/a/{id}\""));
        let grace = Duration::from_secs(60);
        let alive = |p: &PodId| p == &db;
        assert!(
            s.sweep(alive, t0 + Duration::from_secs(2), grace)
                .is_empty()
        );
        let removed = s.sweep(alive, t0 + Duration::from_secs(62), grace);
        assert_eq!(removed, vec![web.clone()]);
        let text = scrape(&registry);
        assert!(!text.contains("pod=\"web\""), "{text}");
        assert!(text.contains("pod=\"db\""));
        assert!(s.books.get(&web).is_none());
        assert_eq!(
            s.books.pods().map(|(p, _)| p).collect::<Vec<_>>(),
            vec![&db]
        );
        assert_eq!(s.books.rate(Some(&web), Flow::Inbound), 0.0);
        assert!(s.books.route_labels());
        assert_eq!(s.books.get(&web).map_or(0, |b| b.routes(Flow::Inbound)), 0);
        assert_eq!(s.books.get(&db).map(|b| b.routes(Flow::Inbound)), Some(1));
        assert_eq!(s.health.pods_removed, 1);
        // The health families read the shared state at each scrape.
        let shared = Shared::new(s, registry, false);
        let text = scrape(shared.registry());
        assert!(text.contains("podmeter_pods_removed_total 1\n"), "{text}");
        assert!(text.contains("podmeter_pods 1\n"), "{text}");
    }

    #[test]
    fn a_pod_created_again_under_its_name_keeps_exported_series() {
        let (mut s, registry, t0) = state(None);
        let with_uid = |uid: &str| PodId {
            uid: Some(uid.to_owned()),
            ..PodId::new("shop", "web-0")
        };
        let (old, new) = (with_uid("1"), with_uid("2"));
        s.book_counts(
            t0 + Duration::from_secs(1),
            &[(Some(old.clone()), Flow::Inbound, served(3))],
            &[],
        );
        s.book_counts(
            t0 + Duration::from_secs(2),
            &[(Some(new.clone()), Flow::Inbound, served(2))],
            &[],
        );
        assert_eq!(
            s.books.get(&new).map(|b| b.traffic().inbound.requests),
            Some(2)
        );
        let alive = |p: &PodId| p == &new;
        let grace = Duration::from_secs(60);
        assert!(
            s.sweep(alive, t0 + Duration::from_secs(3), grace)
                .is_empty()
        );
        let removed = s.sweep(alive, t0 + Duration::from_secs(70), grace);
        assert_eq!(removed, vec![old]);
        s.book_counts(
            t0 + Duration::from_secs(71),
            &[(Some(new.clone()), Flow::Inbound, served(1))],
            &[],
        );
        let text = scrape(&registry);
        assert!(
            text.contains(
                "podmeter_http_server_requests_started_total{namespace=\"shop\",pod=\"web-0\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(
            s.books.get(&new).map(|b| b.traffic().inbound.requests),
            Some(3)
        );
    }

    #[test]
    fn requests_served_to_the_node_are_exported_apart_from_the_pods_requests() {
        let (mut s, registry, t0) = state(None);
        let (web, db) = (PodId::new("shop", "web"), PodId::new("shop", "db"));
        s.book_history(&[(Some(web.clone()), Flow::NodeInbound, served(1))]);
        s.book_counts(
            t0 + Duration::from_secs(1),
            &[
                (Some(web.clone()), Flow::Inbound, served(3)),
                (Some(web.clone()), Flow::NodeInbound, served(4)),
                (Some(db.clone()), Flow::NodeInbound, served(2)),
            ],
            &[],
        );
        let text = scrape(&registry);
        for line in [
            "# HELP podmeter_http_server_node_requests_total Requests each pod served to the node itself (kubelet probes, node agents), left out of podmeter_http_server_requests_total and of http_requests_per_second.",
            "# TYPE podmeter_http_server_node_requests_total counter",
            "podmeter_http_server_node_requests_total{namespace=\"shop\",pod=\"web\"} 5",
            "podmeter_http_server_requests_started_total{namespace=\"shop\",pod=\"web\"} 3",
            "podmeter_http_server_requests_total{namespace=\"shop\",pod=\"web\",status_class=\"2xx\"} 3",
            "podmeter_http_server_requests_per_second{namespace=\"shop\",pod=\"web\"} 3.0",
            // A pod only probed serves nothing else.
            "podmeter_http_server_node_requests_total{namespace=\"shop\",pod=\"db\"} 2",
            "podmeter_http_server_requests_started_total{namespace=\"shop\",pod=\"db\"} 0",
            "podmeter_http_server_requests_per_second{namespace=\"shop\",pod=\"db\"} 0.0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        assert!(!text.contains("pod=\"db\",status_class="), "{text}");
        assert!(
            !text.contains("podmeter_http_client_node_requests"),
            "{text}"
        );
        let book = s.books.get(&web).expect("web's book");
        let traffic = book.traffic();
        assert_eq!(traffic.inbound.requests, 3);
        assert_eq!(traffic.node_inbound.requests, 5);
        assert_eq!(traffic.observed_inbound.exchanges, 3);
        assert_eq!(s.books.rate(Some(&web), Flow::Inbound), 3.0);
        assert_eq!(s.books.rate(Some(&web), Flow::NodeInbound), 4.0);
    }

    #[test]
    fn traffic_of_no_pod_and_over_loopback_is_not_exported() {
        let (mut s, registry, t0) = state(None);
        let web = PodId::new("shop", "web");
        s.book_counts(
            t0 + Duration::from_secs(1),
            &[
                (None, Flow::Inbound, served(4)),
                (Some(web.clone()), Flow::LoopbackInbound, served(2)),
            ],
            &[],
        );
        let text = scrape(&registry);
        assert!(
            !text.contains("podmeter_http_server_requests_total{"),
            "{text}"
        );
        assert_eq!(s.books.unattributed().inbound.requests, 4);
        assert!(s.books.rate(None, Flow::Inbound) > 0.0);
    }
}
