//! The node's state as the API serves it: per-pod totals, rates, route labels and metric series,
//! kept in step: every read is booked into all of them, and a pod that leaves leaves all of them
//! at the same moment.

use std::{
    collections::HashMap,
    path::PathBuf,
    sync::{Arc, Mutex, MutexGuard},
    time::{Duration, Instant},
};

use prometheus_client::registry::Registry;

use crate::{
    attribution::flow::Flow, books::latency::Durations, books::rates::Rates, books::routes::Routes,
    books::traffic::Traffic, connections::pairing::Exchange, exporters::metrics::Metrics,
    health::Health, identity::PodId, kernel::counters::Counts,
};

/// Everything the API reads.
pub struct NodeState {
    pub traffic: Traffic,
    pub rates: Rates,
    /// Request duration quantiles over the rate window.
    pub durations: Durations,
    /// `None` when route labels are off.
    pub routes: Option<Routes>,
    pub metrics: Metrics,
    pub health: Health,
    pub started: Instant,
    pub cgroup_root: PathBuf,
}

impl NodeState {
    /// Books one read of the kernel counters, taken at `now`, into totals, rates and series, and
    /// sets every pod's rate gauges.
    pub fn book_counts(&mut self, now: Instant, booked: &[(Option<PodId>, Flow, Counts)]) {
        for (pod, flow, delta) in booked {
            self.traffic.add_counts(pod.as_ref(), *flow, delta);
            if let (Some(pod), Some(side)) = (pod, self.metrics.side(*flow)) {
                side.add_counts(pod, delta);
            }
        }
        self.durations.advance(now);
        self.rates.book(
            now,
            booked
                .iter()
                .map(|(pod, flow, delta)| (pod.as_ref(), *flow, delta.requests)),
        );
        // Pods of one name share their series (a StatefulSet's pod created again while the old
        // one's numbers are kept): their gauge is the sum, not whichever is set last.
        let mut by_name: HashMap<(&str, &str), [f64; 2]> = HashMap::new();
        for pod in self.rates.pods() {
            let sum = by_name.entry((&pod.namespace, &pod.name)).or_default();
            sum[0] += self.rates.rate(Some(pod), Flow::Inbound);
            sum[1] += self.rates.rate(Some(pod), Flow::Outbound);
        }
        for pod in self.rates.pods() {
            let [inbound, outbound] = by_name[&(pod.namespace.as_str(), pod.name.as_str())];
            self.metrics.server.set_rate(pod, inbound);
            self.metrics.client.set_rate(pod, outbound);
        }
    }

    /// Books paired exchanges into totals and series.
    pub fn book_exchanges(&mut self, now: Instant, booked: &[(Option<PodId>, Flow, Exchange)]) {
        for (pod, flow, exchange) in booked {
            self.traffic.add_exchange(pod.as_ref(), *flow, exchange);
            if let (Some(pod), Some(latency)) = (pod, exchange.latency) {
                self.durations.observe(now, pod, *flow, latency);
            }
            let (Some(pod), Some(side)) = (pod, self.metrics.side(*flow)) else {
                continue;
            };
            let route = self
                .routes
                .as_mut()
                .map(|r| r.route(pod, *flow, exchange.target.as_deref()));
            side.observe(pod, exchange, route);
        }
    }

    /// Marks which pods still have a cgroup; pods gone for longer than `grace` are removed from
    /// totals, rates, routes and metric families at once. Returns the removed pods.
    pub fn sweep(
        &mut self,
        alive: impl Fn(&PodId) -> bool,
        now: Instant,
        grace: Duration,
    ) -> Vec<PodId> {
        let removed = self.traffic.sweep(alive, now, grace);
        for pod in &removed {
            self.rates.remove(pod);
            self.durations.remove(pod);
            if let Some(routes) = self.routes.as_mut() {
                routes.remove(pod);
            }
            // Also drops the series a same-named successor shares (see `HttpMetrics::remove`).
            self.metrics.remove(pod);
        }
        self.health.pods_removed += removed.len() as u64;
        removed
    }

    /// Copies the health readings into the health families (before a scrape).
    pub fn refresh_health_metrics(&self) {
        let folded = self.routes.as_ref().map_or(0, |r| r.folded);
        self.metrics
            .health
            .update(&self.health, self.metrics.pods(), folded);
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
    pub fn new(state: NodeState, registry: Registry) -> Self {
        Self {
            state: Arc::new(Mutex::new(state)),
            registry: Arc::new(registry),
        }
    }

    pub fn lock(&self) -> MutexGuard<'_, NodeState> {
        // A panic while holding the lock leaves consistent-enough counters; keep serving them.
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
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

    fn state(routes: Option<Routes>) -> (NodeState, Registry, Instant) {
        let mut registry = Registry::default();
        let metrics = Metrics::register(
            &mut registry,
            &AgentInfo {
                version: "test".to_owned(),
                programs: "p".to_owned(),
                link: "l".to_owned(),
                cgroup_root: "/r".to_owned(),
                rate_window_secs: 10,
                ring_capacity_bytes: 4096,
                ring_positions: false,
            },
        );
        let t0 = Instant::now();
        let state = NodeState {
            traffic: Traffic::default(),
            rates: Rates::new(RateWindow::try_from(10).expect("valid"), t0),
            durations: Durations::new(RateWindow::try_from(10).expect("valid"), t0),
            routes,
            metrics,
            health: Health::default(),
            started: t0,
            cgroup_root: PathBuf::from("/r"),
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
            remote: None,
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
            );
        }
        let rate = s.rates.rate(Some(&web), Flow::Inbound);
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
        assert_eq!(s.traffic.get(&web).map(|t| t.inbound.requests), Some(300));
    }

    #[test]
    fn a_removed_pod_leaves_every_structure_at_once() {
        let (mut s, registry, t0) = state(Some(Routes::new(5)));
        let web = PodId::new("shop", "web");
        let db = PodId::new("shop", "db");
        s.book_counts(
            t0 + Duration::from_secs(1),
            &[
                (Some(web.clone()), Flow::Inbound, served(3)),
                (Some(db.clone()), Flow::Inbound, served(1)),
            ],
        );
        s.book_exchanges(
            t0 + Duration::from_secs(1),
            &[
                (Some(web.clone()), Flow::Inbound, get("/a/1")),
                (Some(db.clone()), Flow::Inbound, get("/b")),
            ],
        );
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
        assert!(s.traffic.get(&web).is_none());
        assert_eq!(s.rates.pods().collect::<Vec<_>>(), vec![&db]);
        assert_eq!(
            s.routes.as_ref().map(|r| r.len(&web, Flow::Inbound)),
            Some(0)
        );
        assert_eq!(s.health.pods_removed, 1);
        s.refresh_health_metrics();
        assert!(scrape(&registry).contains("podmeter_pods_removed_total 1\n"));
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
        );
        s.book_counts(
            t0 + Duration::from_secs(2),
            &[(Some(new.clone()), Flow::Inbound, served(2))],
        );
        assert_eq!(s.traffic.get(&new).map(|t| t.inbound.requests), Some(2));
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
        );
        let text = scrape(&registry);
        assert!(
            text.contains(
                "podmeter_http_server_requests_started_total{namespace=\"shop\",pod=\"web-0\"} 1\n"
            ),
            "{text}"
        );
        assert_eq!(s.traffic.get(&new).map(|t| t.inbound.requests), Some(3));
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
        );
        let text = scrape(&registry);
        assert!(
            !text.contains("podmeter_http_server_requests_total{"),
            "{text}"
        );
        assert_eq!(s.traffic.unattributed.inbound.requests, 4);
        assert!(s.rates.rate(None, Flow::Inbound) > 0.0);
    }
}
