//! Requests per second per pod over a sliding window, from the exact kernel counters (never from
//! the event stream, which may lose events).
//!
//! Semantics, for a window of `W` seconds (5..=300, default 30):
//! - Every counter read (every 250 ms by default) adds the requests counted since the previous
//!   read to each flow's running total. The window keeps the totals as they were at earlier reads,
//!   one about every `W / 120` seconds (every read at the default 250 ms and `W <= 30`).
//! - The rate at the time `t` of the latest read is `(total(t) - total(s)) / (t - s)`, where `s` is
//!   the latest kept read at or before `t - W`: the exact count over a span of `W` seconds plus at
//!   most `W / 120` seconds (and a read interval), divided by that span's exact length. Under a
//!   constant load the rate is exactly that load, whatever the read cadence, and a load that comes
//!   in bursts (a client firing on a timer) is off by at most one burst over the span.
//! - A served request is in the rate at the next counter read.
//! - A step change ramps in linearly: `x` seconds after the load changes from `a` to `b` the rate
//!   is `a + (b - a) * x / span`, `span` being `W` or a little more; it reaches 90 % of the step
//!   after about `0.9 W` seconds. E.g. with `W = 30`, 5 s after a load of 100 req/s doubles the rate
//!   is about `100 + 100 * 5 / 30 = 116.7` req/s.
//! - A stalled read (the agent not scheduled for seconds) changes nothing: the counts are
//!   cumulative, so the requests of the stall are in the span they happened in.
//! - Right after start-up the window is only partly filled: the span starts at start-up, when every
//!   counter was zero (but is taken as at least one second), so an agent restarted under load
//!   reports that load at once instead of ramping up from zero. A pod that appears later needs no
//!   special case: the agent was watching and saw it serve nothing before.

use std::{collections::VecDeque, time::Instant};

use crate::attribution::flow::Flow;

/// The length of the sliding window, in whole seconds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateWindow(u32);

impl RateWindow {
    pub const MIN_SECS: u32 = 5;
    pub const MAX_SECS: u32 = 300;
    pub const DEFAULT: RateWindow = RateWindow(30);

    pub fn secs(self) -> u32 {
        self.0
    }
}

impl Default for RateWindow {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// A window length outside `5..=300` seconds.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error(
    "the rate window must be {min} to {max} seconds, not {0}",
    min = RateWindow::MIN_SECS,
    max = RateWindow::MAX_SECS
)]
pub struct WindowOutOfRange(pub u32);

impl TryFrom<u32> for RateWindow {
    type Error = WindowOutOfRange;

    fn try_from(secs: u32) -> Result<Self, Self::Error> {
        if (Self::MIN_SECS..=Self::MAX_SECS).contains(&secs) {
            Ok(Self(secs))
        } else {
            Err(WindowOutOfRange(secs))
        }
    }
}

/// How many reads per window are kept: enough that the span is `W` plus at most 1/120th, and
/// every read at the default cadence (250 ms) for windows up to 30 s.
const KEPT_PER_WINDOW: f64 = 120.0;

/// One flow's running total and its value at each kept read (aligned with [`RateClock`]'s).
#[derive(Clone, Debug)]
struct Total {
    now: u64,
    kept: VecDeque<u64>,
}

impl Total {
    /// A flow seen for the first time: it was zero at every kept read.
    fn new(kept: usize) -> Self {
        Self {
            now: 0,
            kept: std::iter::repeat_n(0, kept).collect(),
        }
    }
}

/// The clock every pod's totals share, which starts when the agent starts counting (when every
/// kernel counter was zero), and the times of the kept reads.
pub struct RateClock {
    window: RateWindow,
    origin: Instant,
    /// Seconds since `origin` of the latest read.
    booked_to: f64,
    /// Seconds since `origin` of the kept reads, oldest first; the first is the origin until the
    /// window has passed it.
    kept: VecDeque<f64>,
}

/// What one read does to every total: keep its value, and forget the oldest kept ones.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[must_use = "every total must take the step"]
pub struct Step {
    keep: bool,
    forget: usize,
}

impl RateClock {
    /// `origin` is when the kernel counters started from zero (the programs were attached).
    pub fn new(window: RateWindow, origin: Instant) -> Self {
        Self {
            window,
            origin,
            booked_to: 0.0,
            kept: VecDeque::from([0.0]),
        }
    }

    pub fn window(&self) -> RateWindow {
        self.window
    }

    /// Closes the read taken at `now`, whose deltas were added with [`FlowRates::add`] since the
    /// previous one. Call it for every read, also one without deltas, so that the rates decay;
    /// then apply the step to every pod's rates.
    pub fn read(&mut self, now: Instant) -> Step {
        let t = now
            .saturating_duration_since(self.origin)
            .as_secs_f64()
            .max(self.booked_to);
        self.booked_to = t;
        // Keep this read if the last kept one is old enough.
        let spacing = f64::from(self.window.secs()) / KEPT_PER_WINDOW;
        let keep = self.kept.back().is_none_or(|&last| t - last >= spacing);
        if keep {
            self.kept.push_back(t);
        }
        // Forget kept reads older than the latest one at or before t - W.
        let start = t - f64::from(self.window.secs());
        let mut forget = 0;
        while self.kept.len() > 1 && self.kept[1] <= start {
            self.kept.pop_front();
            forget += 1;
        }
        Step { keep, forget }
    }

    /// How long the clock has run at the latest read.
    #[cfg(test)]
    pub fn booked_to(&self) -> std::time::Duration {
        std::time::Duration::from_secs_f64(self.booked_to)
    }

    /// Kept reads, for tests of the memory bound.
    #[cfg(test)]
    fn kept_reads(&self) -> usize {
        self.kept.len()
    }
}

/// The running totals of one pod's flows (or of the sockets of no pod), each from the first request
/// it saw, on the shared [`RateClock`].
#[derive(Clone, Debug, Default)]
pub struct FlowRates([Option<Total>; Flow::COUNT]);

impl FlowRates {
    /// Adds the requests of a flow counted since the previous read (before [`RateClock::read`]
    /// closes it).
    pub fn add(&mut self, clock: &RateClock, flow: Flow, requests: u64) {
        if requests == 0 {
            return;
        }
        let kept = clock.kept.len();
        self.0[flow.index()]
            .get_or_insert_with(|| Total::new(kept))
            .now += requests;
    }

    /// Takes a read's step: keeps the totals as they are now and forgets what the clock forgot.
    pub fn apply(&mut self, step: Step) {
        for total in self.0.iter_mut().flatten() {
            if step.keep {
                total.kept.push_back(total.now);
            }
            total.kept.drain(..step.forget);
        }
    }

    /// Whether any flow saw a request.
    pub fn is_empty(&self) -> bool {
        self.0.iter().all(Option::is_none)
    }

    /// Requests per second of a flow at the clock's latest read.
    pub fn rate(&self, clock: &RateClock, flow: Flow) -> f64 {
        let Some(total) = self.0[flow.index()].as_ref() else {
            return 0.0;
        };
        // The oldest kept read is the latest one at or before t - W (or the origin).
        let (Some(&from), Some(&count_then)) = (clock.kept.front(), total.kept.front()) else {
            return 0.0;
        };
        let span = (clock.booked_to - from).max(1.0);
        (total.now - count_then) as f64 / span
    }
}

/// Every running total a pod's (or the sockets of no pod's) rates come from, on the shared
/// [`RateClock`]: requests, payload bytes each way, and request-nanoseconds in flight (whose rate
/// is the average concurrency, in ns per s).
#[derive(Clone, Debug, Default)]
pub struct PodRates {
    pub requests: FlowRates,
    pub request_bytes: FlowRates,
    pub response_bytes: FlowRates,
    pub in_flight_ns: FlowRates,
}

impl PodRates {
    /// Takes a read's step on every total.
    pub fn apply(&mut self, step: Step) {
        for rates in [
            &mut self.requests,
            &mut self.request_bytes,
            &mut self.response_bytes,
            &mut self.in_flight_ns,
        ] {
            rates.apply(step);
        }
    }

    /// The average number of requests of a flow in flight over the window: the exact
    /// time-integral of requests in flight (from the kernel) divided by the span.
    pub fn concurrency(&self, clock: &RateClock, flow: Flow) -> f64 {
        self.in_flight_ns.rate(clock, flow) / 1e9
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use std::time::Duration;

    use super::*;
    use crate::identity::PodId;

    const POD: &str = "web";

    /// Pods' rates on one clock, booked the way the books book a counter read.
    struct Rates {
        clock: RateClock,
        pods: HashMap<PodId, FlowRates>,
        unattributed: FlowRates,
    }

    impl Rates {
        fn new(window: RateWindow, origin: Instant) -> Self {
            Self {
                clock: RateClock::new(window, origin),
                pods: HashMap::new(),
                unattributed: FlowRates::default(),
            }
        }

        fn book<'a>(
            &mut self,
            now: Instant,
            deltas: impl IntoIterator<Item = (Option<&'a PodId>, Flow, u64)>,
        ) {
            for (pod, flow, requests) in deltas {
                let rates = match pod {
                    Some(pod) => self.pods.entry(pod.clone()).or_default(),
                    None => &mut self.unattributed,
                };
                rates.add(&self.clock, flow, requests);
            }
            let step = self.clock.read(now);
            for rates in self.pods.values_mut() {
                rates.apply(step);
            }
            self.unattributed.apply(step);
        }

        fn rate(&self, pod: Option<&PodId>, flow: Flow) -> f64 {
            let rates = match pod {
                Some(pod) => self.pods.get(pod),
                None => Some(&self.unattributed),
            };
            rates.map_or(0.0, |r| r.rate(&self.clock, flow))
        }

        /// Pods with a total.
        fn pods(&self) -> impl Iterator<Item = &PodId> {
            self.pods
                .iter()
                .filter(|(_, r)| !r.is_empty())
                .map(|(pod, _)| pod)
        }

        fn remove(&mut self, pod: &PodId) {
            self.pods.remove(pod);
        }

        fn booked_to(&self) -> Duration {
            self.clock.booked_to()
        }

        fn kept_reads(&self) -> usize {
            self.clock.kept_reads()
        }
    }

    fn rates(secs: u32) -> (Rates, Instant, PodId) {
        let t0 = Instant::now();
        let rates = Rates::new(RateWindow::try_from(secs).expect("valid window"), t0);
        (rates, t0, PodId::new("shop", POD))
    }

    fn at(t0: Instant, secs: f64) -> Instant {
        t0 + Duration::from_secs_f64(secs)
    }

    /// Reads every `step` seconds over `(from, to]`, each booking `per_read` requests of `pod`.
    fn feed(
        r: &mut Rates,
        t0: Instant,
        pod: &PodId,
        (from, to): (f64, f64),
        step: f64,
        per_read: u64,
    ) {
        // Whole steps only, each at its exact time (no accumulated rounding).
        let steps = ((to - from) / step + 1e-9).floor() as u64;
        for i in 1..=steps {
            let t = from + step * i as f64;
            r.book(at(t0, t), [(Some(pod), Flow::Inbound, per_read)]);
        }
    }

    fn inbound(r: &Rates, pod: &PodId) -> f64 {
        r.rate(Some(pod), Flow::Inbound)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-6
    }

    #[test]
    fn window_length_is_checked() {
        assert_eq!(RateWindow::try_from(4), Err(WindowOutOfRange(4)));
        assert_eq!(RateWindow::try_from(301), Err(WindowOutOfRange(301)));
        assert_eq!(RateWindow::try_from(5).map(RateWindow::secs), Ok(5));
        assert_eq!(RateWindow::try_from(300).map(RateWindow::secs), Ok(300));
        assert_eq!(RateWindow::default().secs(), 30);
    }

    #[test]
    fn constant_load_is_reported_exactly_whatever_the_read_cadence() {
        // 40 req/s read every 0.1, 0.25, 0.7, 1 and 1.3 s.
        for (step, per_read) in [(0.1, 4), (0.25, 10), (0.7, 28), (1.0, 40), (1.3, 52)] {
            let (mut r, t0, pod) = rates(30);
            feed(&mut r, t0, &pod, (0.0, 100.0), step, per_read);
            assert!(
                close(inbound(&r, &pod), 40.0),
                "step {step}: {}",
                inbound(&r, &pod)
            );
        }
    }

    #[test]
    fn bursts_on_a_timer_are_off_by_at_most_one_burst_over_the_span() {
        // 10 requests at once every 0.2 s (50 req/s), read every 0.25 s: whatever the phase, the
        // rate is within one burst over the span of 50.
        for phase in [0.0, 0.05, 0.1, 0.15] {
            let (mut r, t0, pod) = rates(30);
            let mut next_burst = phase;
            let mut t = 0.0;
            while t < 95.0 {
                t += 0.25;
                let mut burst = 0;
                while next_burst <= t {
                    burst += 10;
                    next_burst += 0.2;
                }
                r.book(at(t0, t), [(Some(&pod), Flow::Inbound, burst)]);
                if t > 35.0 {
                    let rate = inbound(&r, &pod);
                    assert!(
                        (rate - 50.0).abs() <= 10.0 / 30.0 + 1e-9,
                        "phase {phase} at {t}: {rate}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_single_request_shows_at_the_next_read_and_leaves_after_the_window() {
        let (mut r, t0, pod) = rates(30);
        feed(&mut r, t0, &pod, (0.0, 10.0), 0.25, 0);
        r.book(at(t0, 10.25), [(Some(&pod), Flow::Inbound, 1)]);
        assert!(close(inbound(&r, &pod), 1.0 / 10.25));
        feed(&mut r, t0, &pod, (10.25, 40.0), 0.25, 0);
        assert!(close(inbound(&r, &pod), 1.0 / 30.0));
        // The span starts at the latest kept read at or before t - W (every read here, W/120 =
        // 0.25 s): at 40.25 that is the read at 10.25, which counted the request.
        feed(&mut r, t0, &pod, (40.0, 40.25), 0.25, 0);
        assert!(close(inbound(&r, &pod), 0.0));
        // With W = 60 one read in two is kept: the request stays until the next kept one.
        let (mut r, t0, pod) = rates(60);
        feed(&mut r, t0, &pod, (0.0, 10.0), 0.25, 0);
        r.book(at(t0, 10.25), [(Some(&pod), Flow::Inbound, 1)]);
        feed(&mut r, t0, &pod, (10.25, 70.25), 0.25, 0);
        assert!(close(inbound(&r, &pod), 1.0 / 60.25));
        feed(&mut r, t0, &pod, (70.25, 70.5), 0.25, 0);
        assert!(close(inbound(&r, &pod), 0.0));
    }

    #[test]
    fn a_step_change_ramps_in_linearly() {
        let (mut r, t0, pod) = rates(30);
        feed(&mut r, t0, &pod, (0.0, 60.0), 0.25, 25);
        assert!(close(inbound(&r, &pod), 100.0));
        feed(&mut r, t0, &pod, (60.0, 65.0), 0.25, 50);
        // 5 s after the load doubled: 100 + 100 * 5/30.
        assert!(
            close(inbound(&r, &pod), 100.0 + 100.0 * 5.0 / 30.0),
            "{}",
            inbound(&r, &pod)
        );
        feed(&mut r, t0, &pod, (65.0, 87.0), 0.25, 50);
        // 90 % of the step after 0.9 W.
        assert!(close(inbound(&r, &pod), 190.0), "{}", inbound(&r, &pod));
        feed(&mut r, t0, &pod, (87.0, 90.0), 0.25, 50);
        assert!(close(inbound(&r, &pod), 200.0));
    }

    #[test]
    fn a_step_down_to_zero_decays_and_ends_at_zero() {
        let (mut r, t0, pod) = rates(10);
        feed(&mut r, t0, &pod, (0.0, 20.0), 0.25, 12);
        assert!(close(inbound(&r, &pod), 48.0));
        // Reads without requests after 20 s: the rate falls linearly to zero.
        feed(&mut r, t0, &pod, (20.0, 25.0), 0.25, 0);
        assert!(close(inbound(&r, &pod), 24.0));
        feed(&mut r, t0, &pod, (25.0, 30.0), 0.25, 0);
        assert!(close(inbound(&r, &pod), 0.0));
        feed(&mut r, t0, &pod, (30.0, 1_000.0), 1.0, 0);
        assert!(close(inbound(&r, &pod), 0.0));
    }

    #[test]
    fn a_stalled_read_counts_its_requests_over_the_time_they_took() {
        let (mut r, t0, pod) = rates(10);
        feed(&mut r, t0, &pod, (0.0, 20.0), 0.25, 3);
        // The agent stalled for 4 s; the read after the stall books 48 requests (12 req/s).
        r.book(at(t0, 24.0), [(Some(&pod), Flow::Inbound, 48)]);
        assert!(close(inbound(&r, &pod), 12.0));
        // A stall longer than the window: its average.
        r.book(at(t0, 54.0), [(Some(&pod), Flow::Inbound, 360)]);
        assert!(close(inbound(&r, &pod), 12.0));
    }

    #[test]
    fn kept_reads_stay_bounded_over_a_long_run() {
        for secs in [5, 30, 300] {
            let (mut r, t0, pod) = rates(secs);
            feed(&mut r, t0, &pod, (0.0, 2_000.0), 0.01, 1);
            assert!(
                close(inbound(&r, &pod), 100.0),
                "{secs}: {}",
                inbound(&r, &pod)
            );
            assert!(r.kept_reads() <= 122, "{secs}: {}", r.kept_reads());
        }
    }

    #[test]
    fn a_partly_filled_window_after_start_up_divides_by_the_time_covered() {
        let (mut r, t0, pod) = rates(30);
        feed(&mut r, t0, &pod, (0.0, 6.0), 0.25, 10);
        assert!(close(inbound(&r, &pod), 40.0));
        // Before one second has passed, the divisor is one second.
        let (mut young, t0, pod) = rates(30);
        young.book(at(t0, 0.25), [(Some(&pod), Flow::Inbound, 12)]);
        assert!(close(inbound(&young, &pod), 12.0));
    }

    #[test]
    fn rates_per_pod_use_one_clock_and_forget_removed_pods() {
        let (mut rates, t0, web) = rates(10);
        let db = PodId::new("shop", "db");
        for tick in 1..=80u64 {
            let now = t0 + Duration::from_millis(250 * tick);
            // web serves 8 req/s (2 per read); db sends 4 req/s (one per read).
            rates.book(
                now,
                [
                    (Some(&web), Flow::Inbound, 2),
                    (Some(&db), Flow::Outbound, 1),
                    (None, Flow::Inbound, 1),
                ],
            );
        }
        assert!(close(rates.rate(Some(&web), Flow::Inbound), 8.0));
        assert!(close(rates.rate(Some(&web), Flow::Outbound), 0.0));
        assert!(close(rates.rate(Some(&db), Flow::Outbound), 4.0));
        assert!(close(rates.rate(None, Flow::Inbound), 4.0));
        // Reads without deltas let the rates decay.
        rates.book(t0 + Duration::from_secs(25), []);
        assert!(close(rates.rate(Some(&web), Flow::Inbound), 4.0));
        assert!(close(rates.rate(Some(&db), Flow::Outbound), 2.0));
        // A removed pod reads 0 at once, not its 4.0.
        rates.remove(&web);
        assert_eq!(rates.pods().collect::<Vec<_>>(), vec![&db]);
        assert!(close(rates.rate(Some(&web), Flow::Inbound), 0.0));
        rates.book(t0 + Duration::from_secs(35), []);
        assert!(close(rates.rate(Some(&db), Flow::Outbound), 0.0));
        assert!(close(rates.rate(Some(&web), Flow::Inbound), 0.0));
        assert_eq!(rates.pods().collect::<Vec<_>>(), vec![&db]);
        assert_eq!(rates.booked_to(), Duration::from_secs(35));
    }

    #[test]
    fn a_pod_seen_late_reports_its_rate_over_the_agents_whole_window() {
        let (mut rates, t0, late) = rates(10);
        for tick in 1..=40u64 {
            rates.book(t0 + Duration::from_millis(250 * tick), []);
        }
        // The pod starts serving 20 req/s at t = 10 s; 5 s later the rate is half of it.
        for tick in 41..=60u64 {
            rates.book(
                t0 + Duration::from_millis(250 * tick),
                [(Some(&late), Flow::Inbound, 5)],
            );
        }
        assert!(close(rates.rate(Some(&late), Flow::Inbound), 10.0));
    }
}
