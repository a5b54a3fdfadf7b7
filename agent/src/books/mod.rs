//! What the agent keeps per pod, in one book per pod ([`Books`], [`PodBook`]): [`traffic`] exact
//! totals and what events tell, [`rates`] windowed request rates, [`latency`] windowed request
//! durations, [`routes`] bounded route labels, and the pod's metric series; [`node`] the node's
//! state around the books.
//!
//! A pod's parts live in one book so that a booking finds them with one lookup and a pod that
//! leaves leaves all of them at once. What pods share stays with the books: the rate clock and its
//! kept reads, the window, the route cap, the metric families and the sockets of no pod.

pub(crate) mod latency;
pub(crate) mod node;
pub(crate) mod rates;
pub(crate) mod routes;
pub(crate) mod traffic;

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use self::{
    latency::{DurationClock, DurationSummary, FlowWindows},
    rates::{PodRates, RateClock, RateWindow},
    routes::{PodRoutes, RouteCap},
    traffic::PodTraffic,
};
use crate::{
    attribution::flow::Flow,
    connections::pairing::Exchange,
    exporters::metrics::http::{HttpMetrics, PodSeries, Side},
    fast_map::FastMap,
    identity::PodId,
    kernel::{counters::Counts, flow_sums::FlowDelta, latency_histogram::BucketDeltas},
};

/// Everything kept about one pod.
#[derive(Default)]
pub struct PodBook {
    traffic: PodTraffic,
    /// Since when none of the pod's cgroups exists; `None` while it lives.
    gone_since: Option<Instant>,
    rates: PodRates,
    durations: FlowWindows,
    /// Empty when route labels are off.
    routes: PodRoutes,
    /// The pod's series on each side (by [`Side::index`]), from its first booking there.
    series: [Option<PodSeries>; 2],
}

impl PodBook {
    /// Exact totals and what the paired events tell.
    pub fn traffic(&self) -> &PodTraffic {
        &self.traffic
    }

    /// The quantiles of a flow's request durations over the window; `None` without exchanges
    /// in it.
    pub fn duration(&self, flow: Flow) -> Option<DurationSummary> {
        self.durations.summary(flow)
    }

    /// Books requests served to the node itself into the pod's server series.
    fn add_node_requests(&mut self, http: &HttpMetrics, pod: &PodId, requests: u64) {
        let families = &http.server;
        self.series[Side::Server.index()]
            .get_or_insert_with(|| PodSeries::new(families, pod))
            .add_node_requests(families, requests);
    }

    /// Distinct routes (without `other`) the pod has in a flow's direction.
    #[cfg(test)]
    pub fn routes(&self, flow: Flow) -> usize {
        self.routes.len(flow)
    }
}

/// The book of `pod`, opened at its first booking: one lookup per booking, and the pod's name
/// cloned only the first time. A booking means the pod lives.
fn with_book<R>(
    pods: &mut FastMap<PodId, PodBook>,
    pod: &PodId,
    f: impl FnOnce(&mut PodBook) -> R,
) -> R {
    if let Some(book) = pods.get_mut(pod) {
        book.gone_since = None;
        return f(book);
    }
    f(pods.entry(pod.clone()).or_default())
}

/// A flow's rates at one read.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct FlowRatesReading {
    /// Requests per second.
    pub requests: f64,
    /// Request payload bytes per second.
    pub request_bytes: f64,
    /// Response payload bytes per second.
    pub response_bytes: f64,
    /// Average requests in flight.
    pub concurrency: f64,
}

/// One book per pod on this node, plus what they share.
pub struct Books {
    pods: FastMap<PodId, PodBook>,
    /// Sockets in the attached tree that belong to no pod (e.g. processes in the root cgroup).
    unattributed: PodTraffic,
    unattributed_rates: PodRates,
    rate_clock: RateClock,
    duration_clock: DurationClock,
    /// `None` when route labels are off.
    route_cap: Option<RouteCap>,
    http: HttpMetrics,
}

impl Books {
    /// `origin` is when the kernel counters started from zero (the programs were attached);
    /// `route_cap` is `None` when route labels are off; `http` are the families the pods' series
    /// are created in.
    pub fn new(
        window: RateWindow,
        origin: Instant,
        route_cap: Option<usize>,
        http: HttpMetrics,
    ) -> Self {
        Self {
            pods: FastMap::default(),
            unattributed: PodTraffic::default(),
            unattributed_rates: PodRates::default(),
            rate_clock: RateClock::new(window, origin),
            duration_clock: DurationClock::new(window, origin),
            route_cap: route_cap.map(RouteCap::new),
            http,
        }
    }

    /// Books one read of the kernel counters and flow sums, taken at `now`, into totals, rates and
    /// series, and sets every pod's rate gauges.
    pub fn book_counts(
        &mut self,
        now: Instant,
        booked: &[(Option<PodId>, Flow, Counts)],
        flows: &[(Option<PodId>, Flow, FlowDelta)],
    ) {
        let events = self.route_cap.is_some();
        for (pod, flow, delta) in booked {
            let Some(pod) = pod else {
                self.unattributed.add_counts(*flow, delta);
                self.unattributed_rates
                    .requests
                    .add(&self.rate_clock, *flow, delta.requests);
                continue;
            };
            with_book(&mut self.pods, pod, |book| {
                book.traffic.add_counts(*flow, delta);
                book.rates
                    .requests
                    .add(&self.rate_clock, *flow, delta.requests);
                if let Some(side) = Side::of(*flow) {
                    let families = self.http.side(side);
                    book.series[side.index()]
                        .get_or_insert_with(|| PodSeries::new(families, pod))
                        .add_counts(families, delta, !events);
                } else if *flow == Flow::NodeInbound {
                    book.add_node_requests(&self.http, pod, delta.requests);
                }
            });
        }
        for (pod, flow, delta) in flows {
            let clock = &self.rate_clock;
            let add = |traffic: &mut PodTraffic, rates: &mut PodRates| {
                traffic.add_flow(*flow, delta);
                rates.request_bytes.add(clock, *flow, delta.request_bytes);
                rates.response_bytes.add(clock, *flow, delta.response_bytes);
                rates.in_flight_ns.add(clock, *flow, delta.in_flight_ns);
            };
            let Some(pod) = pod else {
                add(&mut self.unattributed, &mut self.unattributed_rates);
                continue;
            };
            with_book(&mut self.pods, pod, |book| {
                add(&mut book.traffic, &mut book.rates);
                if let Some(side) = Side::of(*flow) {
                    let families = self.http.side(side);
                    book.series[side.index()]
                        .get_or_insert_with(|| PodSeries::new(families, pod))
                        .add_flow(delta);
                }
            });
        }
        let second = self.duration_clock.second(now);
        let step = self.rate_clock.read(now);
        self.unattributed_rates.apply(step);
        for book in self.pods.values_mut() {
            book.durations.advance(second);
            book.rates.apply(step);
        }
        // Pods of one name share their series (a StatefulSet's pod created again while the old
        // one's numbers are kept): their gauge is the sum, not whichever is set last.
        let counted = || {
            self.pods
                .iter()
                .filter(|(_, book)| !book.rates.requests.is_empty())
        };
        let mut by_name: HashMap<(&str, &str), [[f64; 2]; 2]> = HashMap::new();
        for (pod, book) in counted() {
            let sum = by_name.entry((&pod.namespace, &pod.name)).or_default();
            for (side, flow) in [(0, Flow::Inbound), (1, Flow::Outbound)] {
                sum[side][0] += book.rates.requests.rate(&self.rate_clock, flow);
                sum[side][1] += book.rates.concurrency(&self.rate_clock, flow);
            }
        }
        for (pod, book) in counted() {
            let values = by_name[&(pod.namespace.as_str(), pod.name.as_str())];
            for (series, [rate, concurrency]) in book.series.iter().zip(values) {
                if let Some(series) = series {
                    series.set_rate(rate);
                    series.set_concurrency(concurrency);
                }
            }
        }
    }

    /// Books what a previous agent had booked before this one took its counters over: into totals
    /// and series, so that totals and Prometheus counters continue across the restart, but not
    /// into the rates, which count only what was served since the previous agent's last read.
    pub fn book_history(&mut self, booked: &[(Option<PodId>, Flow, Counts)]) {
        let by_method = self.route_cap.is_none();
        for (pod, flow, delta) in booked {
            let Some(pod) = pod else {
                self.unattributed.add_counts(*flow, delta);
                continue;
            };
            with_book(&mut self.pods, pod, |book| {
                book.traffic.add_counts(*flow, delta);
                if let Some(side) = Side::of(*flow) {
                    let families = self.http.side(side);
                    book.series[side.index()]
                        .get_or_insert_with(|| PodSeries::new(families, pod))
                        .add_counts(families, delta, by_method);
                } else if *flow == Flow::NodeInbound {
                    book.add_node_requests(&self.http, pod, delta.requests);
                }
            });
        }
    }

    /// Books one read of the kernel's latency histogram, taken at `now`: each flow's exchanges by
    /// bucket, into duration windows and series (the sockets of no pod get no durations).
    pub fn book_latency(&mut self, now: Instant, booked: &[(Option<PodId>, Flow, BucketDeltas)]) {
        for (pod, flow, buckets) in booked {
            let Some(pod) = pod else {
                continue;
            };
            with_book(&mut self.pods, pod, |book| {
                book.durations
                    .observe(&self.duration_clock, now, *flow, buckets);
                if let Some(side) = Side::of(*flow) {
                    let families = self.http.side(side);
                    book.series[side.index()]
                        .get_or_insert_with(|| PodSeries::new(families, pod))
                        .observe_durations(families, buckets);
                }
            });
        }
        let second = self.duration_clock.second(now);
        for book in self.pods.values_mut() {
            book.durations.advance(second);
        }
    }

    /// Books paired exchanges (events are on only with route labels) into status codes, routes
    /// and the route-labelled series.
    pub fn book_exchanges(&mut self, booked: &[(Option<PodId>, Flow, Exchange)]) {
        for (pod, flow, exchange) in booked {
            let Some(pod) = pod else {
                self.unattributed.add_exchange(*flow, exchange);
                continue;
            };
            with_book(&mut self.pods, pod, |book| {
                book.traffic.add_exchange(*flow, exchange);
                let Some(side) = Side::of(*flow) else {
                    return;
                };
                let route = self
                    .route_cap
                    .as_mut()
                    .map(|cap| book.routes.route(cap, *flow, exchange.target.as_deref()));
                let families = self.http.side(side);
                book.series[side.index()]
                    .get_or_insert_with(|| PodSeries::new(families, pod))
                    .observe(families, exchange, route);
            });
        }
    }

    /// Marks which pods still have a cgroup, and removes the books of pods gone for longer than
    /// `grace`. Returns the removed pods.
    pub fn sweep(
        &mut self,
        alive: impl Fn(&PodId) -> bool,
        now: Instant,
        grace: Duration,
    ) -> Vec<PodId> {
        let mut gone = Vec::new();
        for (pod, book) in &mut self.pods {
            if alive(pod) {
                book.gone_since = None;
                continue;
            }
            let since = *book.gone_since.get_or_insert(now);
            if now.duration_since(since) >= grace {
                gone.push(pod.clone());
            }
        }
        for pod in &gone {
            self.remove(pod);
        }
        gone
    }

    /// Forgets a pod's book and removes its series from the families. Series carry only
    /// namespace and name, so a pod of the same name and another UID (a StatefulSet's pod created
    /// again) holds the same ones: its handles go too, and its series start afresh at its next
    /// booking instead of counting into series no longer exported.
    pub fn remove(&mut self, pod: &PodId) -> bool {
        let Some(book) = self.pods.remove(pod) else {
            return false;
        };
        for (side, series) in Side::ALL.into_iter().zip(book.series) {
            let Some(series) = series else {
                continue;
            };
            for other in self.pods.values_mut() {
                let shared = &mut other.series[side.index()];
                if shared
                    .as_ref()
                    .is_some_and(|s| s.shares_series_with(&series))
                {
                    *shared = None;
                }
            }
            series.remove_from(self.http.side(side));
        }
        true
    }

    /// Every pod's book.
    pub fn pods(&self) -> impl Iterator<Item = (&PodId, &PodBook)> {
        self.pods.iter()
    }

    #[cfg(test)]
    pub fn get(&self, pod: &PodId) -> Option<&PodBook> {
        self.pods.get(pod)
    }

    /// Totals of the sockets of no pod.
    pub fn unattributed(&self) -> &PodTraffic {
        &self.unattributed
    }

    /// Requests per second of a pod's flow at the latest counter read.
    pub fn rate_of(&self, book: &PodBook, flow: Flow) -> f64 {
        book.rates.requests.rate(&self.rate_clock, flow)
    }

    /// The rates of a pod's flow (or of the sockets of no pod) at the latest counter read.
    pub fn flow_rates(&self, book: Option<&PodBook>, flow: Flow) -> FlowRatesReading {
        let rates = book.map_or(&self.unattributed_rates, |b| &b.rates);
        let clock = &self.rate_clock;
        FlowRatesReading {
            requests: rates.requests.rate(clock, flow),
            request_bytes: rates.request_bytes.rate(clock, flow),
            response_bytes: rates.response_bytes.rate(clock, flow),
            concurrency: rates.concurrency(clock, flow),
        }
    }

    /// Requests per second of a pod's flow (`None`: sockets of no pod) at the latest counter read;
    /// 0 for a pod without a book.
    pub fn rate(&self, pod: Option<&PodId>, flow: Flow) -> f64 {
        let rates = match pod {
            Some(pod) => self.pods.get(pod).map(|book| &book.rates),
            None => Some(&self.unattributed_rates),
        };
        rates.map_or(0.0, |r| r.requests.rate(&self.rate_clock, flow))
    }

    /// The length of the window behind every rate and duration.
    pub fn window(&self) -> RateWindow {
        self.rate_clock.window()
    }

    /// Whether requests get route labels.
    #[cfg(test)]
    pub fn route_labels(&self) -> bool {
        self.route_cap.is_some()
    }

    /// Requests whose route was folded into `other` because their pod was at its cap.
    pub fn routes_folded(&self) -> u64 {
        self.route_cap.as_ref().map_or(0, RouteCap::folded)
    }

    /// Pods with series on either side.
    pub fn pods_with_series(&self) -> usize {
        // A pod usually serves or sends, rarely both: count the larger side, not the sum.
        Side::ALL
            .map(|side| {
                self.pods
                    .values()
                    .filter(|book| book.series[side.index()].is_some())
                    .count()
            })
            .into_iter()
            .max()
            .unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use prometheus_client::registry::Registry;

    use super::*;
    use crate::exporters::metrics::{Metrics, health::AgentInfo};

    fn books() -> Books {
        let mut registry = Registry::default();
        let metrics = Metrics::register(&mut registry, &AgentInfo::for_tests(30));
        Books::new(RateWindow::DEFAULT, Instant::now(), Some(5), metrics.http)
    }

    fn delta(requests: u64, ok: u64) -> Counts {
        let mut c = Counts {
            requests,
            ..Counts::default()
        };
        c.responses[2] = ok;
        c
    }

    fn serve(b: &mut Books, pod: &PodId) {
        b.book_counts(
            Instant::now(),
            &[(Some(pod.clone()), Flow::Inbound, delta(1, 1))],
            &[],
        );
    }

    #[test]
    fn history_goes_to_totals_not_rates() {
        let mut b = books();
        let web = PodId::new("default", "web");
        b.book_history(&[(Some(web.clone()), Flow::Inbound, delta(500, 500))]);
        b.book_counts(Instant::now(), &[], &[]);
        let book = b.get(&web).expect("book");
        assert_eq!(book.traffic().totals(Flow::Inbound).requests, 500);
        assert_eq!(b.rate(Some(&web), Flow::Inbound), 0.0);
        serve(&mut b, &web);
        assert_eq!(
            b.get(&web)
                .expect("book")
                .traffic()
                .totals(Flow::Inbound)
                .requests,
            501
        );
        assert!(b.rate(Some(&web), Flow::Inbound) > 0.0);
    }

    #[test]
    fn gone_pods_leave_after_the_grace_period() {
        let mut b = books();
        let web = PodId::new("default", "web");
        serve(&mut b, &web);
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        assert!(b.sweep(|_| false, t0, grace).is_empty());
        assert!(
            b.sweep(|_| false, t0 + Duration::from_secs(59), grace)
                .is_empty()
        );
        assert_eq!(
            b.sweep(|_| false, t0 + Duration::from_secs(60), grace),
            vec![web.clone()]
        );
        assert!(b.get(&web).is_none());
        assert_eq!(b.pods_with_series(), 0);
    }

    #[test]
    fn a_pod_that_comes_back_is_kept() {
        let mut b = books();
        let web = PodId::new("default", "web");
        serve(&mut b, &web);
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        b.sweep(|_| false, t0, grace);
        b.sweep(|_| true, t0 + Duration::from_secs(5), grace);
        assert!(
            b.sweep(|_| false, t0 + Duration::from_secs(12), grace)
                .is_empty()
        );
    }

    #[test]
    fn a_removed_pod_leaves_its_windows_and_series_and_others_keep_theirs() {
        let mut b = books();
        let (web, db) = (PodId::new("shop", "web"), PodId::new("shop", "db"));
        serve(&mut b, &web);
        serve(&mut b, &db);
        assert_eq!(b.pods_with_series(), 2);
        assert!(b.remove(&web));
        assert!(!b.remove(&web));
        assert!(b.get(&web).is_none());
        assert_eq!(b.rate(Some(&web), Flow::Inbound), 0.0);
        assert!(b.rate(Some(&db), Flow::Inbound) > 0.0);
        assert_eq!(b.pods_with_series(), 1);
    }
}
