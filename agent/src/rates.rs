//! Requests per second per pod: a sliding window of per-second buckets fed by the exact kernel
//! counters (never by the event stream, which may lose events).
//!
//! Semantics, for a window of `W` seconds (5..=300, default 30):
//! - Every counter read books the requests counted since the previous read, spread evenly over
//!   the time between the two reads, into per-second buckets. A stalled read therefore spreads its
//!   requests over the stall instead of piling them into one second.
//! - The rate at the time `t` of the latest read is the number of requests in `(t - W, t]` divided
//!   by `W`; the oldest second, which the window only partly covers, counts with the covered
//!   fraction. Under a constant load the rate is exactly that load, whatever the read cadence.
//! - A served request is in the rate at the next counter read (every 250 ms by default).
//! - A step change ramps in linearly: `x` seconds after the load changes from `a` to `b` the rate
//!   is `a + (b - a) * x / W`; it reaches 90 % of the step after `0.9 W` seconds (plus at most one
//!   read interval). E.g. with `W = 30`, 5 s after a load of 100 req/s doubles the rate is
//!   `100 + 100 * 5 / 30 = 116.7` req/s.
//! - Right after start-up the window is only partly filled: the count is divided by the time
//!   since start-up instead of `W` (but at least by one second), so an agent restarted under load
//!   reports that load at once instead of ramping up from zero. A pod that appears later needs no
//!   special case: the agent was watching and saw it serve nothing before.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use crate::{dedup::Flow, pods::PodId};

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

/// Per-second buckets of one counter, on a clock of seconds since some origin.
///
/// `buckets[s % len]` holds second `[s, s + 1)` for the `len` seconds up to `newest`; a bucket is
/// cleared when the clock moves past it, so an idle window needs no upkeep.
#[derive(Clone, Debug)]
pub struct Window {
    secs: u32,
    buckets: Box<[f64]>,
    newest: u64,
}

impl Window {
    pub fn new(window: RateWindow) -> Self {
        // One more bucket than the window is long: the oldest second is partly inside it.
        let len = window.secs() as usize + 1;
        Self {
            secs: window.secs(),
            buckets: vec![0.0; len].into_boxed_slice(),
            newest: 0,
        }
    }

    fn len(&self) -> u64 {
        self.buckets.len() as u64
    }

    fn index(&self, second: u64) -> usize {
        (second % self.len()) as usize
    }

    /// Whether the bucket of `second` holds that second (and not an older or no second).
    fn holds(&self, second: u64) -> bool {
        second <= self.newest && second + self.len() > self.newest
    }

    /// Moves the newest second forward to `second`, clearing the buckets it passes.
    fn advance(&mut self, second: u64) {
        if second <= self.newest {
            return;
        }
        let passed = (second - self.newest).min(self.len());
        for s in second + 1 - passed..=second {
            let i = self.index(s);
            self.buckets[i] = 0.0;
        }
        self.newest = second;
    }

    /// Books `count` requests that happened evenly over `[from, to)` (seconds on the clock).
    /// Callers book in time order; what falls before the buckets kept is outside any window.
    pub fn add(&mut self, from: f64, to: f64, count: f64) {
        if count == 0.0 || !to.is_finite() || to < 0.0 {
            return;
        }
        let from = from.clamp(0.0, to);
        if to - from < 1e-9 {
            // The second that ends at `to`.
            let second = (to.ceil() as u64).saturating_sub(1);
            self.advance(second);
            if self.holds(second) {
                let i = self.index(second);
                self.buckets[i] += count;
            }
            return;
        }
        let per_second = count / (to - from);
        // Only the last `len` seconds can be inside a window; the rest need not be visited.
        let start = from.max(to - self.len() as f64);
        let last = (to.ceil() as u64).saturating_sub(1).max(start as u64);
        self.advance(last);
        for second in start as u64..=last {
            let s = second as f64;
            let overlap = (to.min(s + 1.0) - start.max(s)).max(0.0);
            if overlap > 0.0 && self.holds(second) {
                let i = self.index(second);
                self.buckets[i] += per_second * overlap;
            }
        }
    }

    /// Requests in `(at - W, at]`, where `at` is the time up to which everything was booked.
    pub fn sum(&self, at: f64) -> f64 {
        let from = at - f64::from(self.secs);
        let mut sum = 0.0;
        for second in from.max(0.0) as u64..=at as u64 {
            if !self.holds(second) {
                continue;
            }
            let s = second as f64;
            // The bucket's requests lie in [s, min(s + 1, at)); count the part inside the window.
            let filled = at.min(s + 1.0) - s;
            if filled <= 0.0 {
                continue;
            }
            let inside = at.min(s + 1.0) - from.max(s);
            sum += self.buckets[self.index(second)] * (inside / filled).clamp(0.0, 1.0);
        }
        sum
    }

    /// Requests per second at `at`, `at` seconds after the clock's origin (start-up).
    pub fn rate(&self, at: f64) -> f64 {
        let covered = at.clamp(1.0, f64::from(self.secs));
        self.sum(at) / covered
    }
}

/// The four flows of a pod, each with a window once it saw a request.
#[derive(Clone, Debug, Default)]
struct FlowWindows([Option<Window>; 4]);

fn slot(flow: Flow) -> usize {
    match flow {
        Flow::Inbound => 0,
        Flow::Outbound => 1,
        Flow::LoopbackInbound => 2,
        Flow::LoopbackOutbound => 3,
    }
}

/// The windows of every pod, on one clock that starts when the agent starts counting.
pub struct Rates {
    window: RateWindow,
    origin: Instant,
    /// Seconds since `origin` up to which every counter delta has been booked.
    booked_to: f64,
    pods: HashMap<PodId, FlowWindows>,
    unattributed: FlowWindows,
}

impl Rates {
    /// `origin` is when the kernel counters started from zero (the programs were attached).
    pub fn new(window: RateWindow, origin: Instant) -> Self {
        Self {
            window,
            origin,
            booked_to: 0.0,
            pods: HashMap::new(),
            unattributed: FlowWindows::default(),
        }
    }

    pub fn window(&self) -> RateWindow {
        self.window
    }

    /// Books the counter deltas of one read taken at `now`: they happened since the previous read.
    /// Call it for every read, also one without deltas, so that the rates decay.
    pub fn book<'a>(
        &mut self,
        now: Instant,
        deltas: impl IntoIterator<Item = (Option<&'a PodId>, Flow, u64)>,
    ) {
        let from = self.booked_to;
        let to = now
            .saturating_duration_since(self.origin)
            .as_secs_f64()
            .max(from);
        for (pod, flow, requests) in deltas {
            if requests == 0 {
                continue;
            }
            let windows = match pod {
                Some(pod) => self.pods.entry(pod.clone()).or_default(),
                None => &mut self.unattributed,
            };
            windows.0[slot(flow)]
                .get_or_insert_with(|| Window::new(self.window))
                .add(from, to, requests as f64);
        }
        self.booked_to = to;
    }

    /// Requests per second of a pod's flow (`None`: sockets of no pod) at the latest read.
    pub fn rate(&self, pod: Option<&PodId>, flow: Flow) -> f64 {
        let windows = match pod {
            Some(pod) => self.pods.get(pod),
            None => Some(&self.unattributed),
        };
        windows
            .and_then(|w| w.0[slot(flow)].as_ref())
            .map_or(0.0, |w| w.rate(self.booked_to))
    }

    /// Pods with a window.
    pub fn pods(&self) -> impl Iterator<Item = &PodId> {
        self.pods.keys()
    }

    /// Forgets a pod's windows.
    pub fn remove(&mut self, pod: &PodId) {
        self.pods.remove(pod);
    }

    /// How long the clock has run at the latest read.
    pub fn booked_to(&self) -> Duration {
        Duration::from_secs_f64(self.booked_to)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn window(secs: u32) -> Window {
        Window::new(RateWindow::try_from(secs).expect("valid window"))
    }

    /// Feeds `rate` requests per second in reads every `step` seconds over `[from, to)`.
    fn feed(w: &mut Window, from: f64, to: f64, step: f64, rate: f64) {
        let mut t = from;
        while t < to - 1e-9 {
            let next = (t + step).min(to);
            w.add(t, next, rate * (next - t));
            t = next;
        }
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
        for step in [0.25, 0.1, 0.7, 1.0, 1.3] {
            let mut w = window(30);
            feed(&mut w, 0.0, 100.0, step, 40.0);
            assert!(close(w.rate(100.0), 40.0), "step {step}: {}", w.rate(100.0));
        }
    }

    #[test]
    fn a_single_request_shows_at_the_next_read() {
        let mut w = window(30);
        w.add(10.0, 10.25, 1.0);
        assert!(close(w.sum(10.25), 1.0));
        assert!(close(w.rate(10.25), 1.0 / 10.25));
        // It counts fully for W seconds, then leaves within the next second (the window does not
        // know where inside its second a request fell).
        assert!(close(w.sum(40.0), 1.0));
        assert!(close(w.sum(40.5), 0.5));
        assert!(close(w.sum(41.0), 0.0));
    }

    #[test]
    fn a_step_change_ramps_in_linearly() {
        let mut w = window(30);
        feed(&mut w, 0.0, 60.0, 0.25, 100.0);
        assert!(close(w.rate(60.0), 100.0));
        feed(&mut w, 60.0, 65.0, 0.25, 200.0);
        // 5 s after the load doubled: 100 + 100 * 5/30.
        assert!(close(w.rate(65.0), 100.0 + 100.0 * 5.0 / 30.0));
        feed(&mut w, 65.0, 60.0 + 27.0, 0.25, 200.0);
        // 90 % of the step after 0.9 W.
        assert!(close(w.rate(87.0), 190.0), "{}", w.rate(87.0));
        feed(&mut w, 87.0, 90.0, 0.25, 200.0);
        assert!(close(w.rate(90.0), 200.0));
    }

    #[test]
    fn a_step_down_to_zero_decays_and_ends_at_zero() {
        let mut w = window(10);
        feed(&mut w, 0.0, 20.0, 0.25, 50.0);
        // No reads with requests after 20 s: the rate falls linearly to zero.
        assert!(close(w.rate(25.0), 25.0));
        assert!(close(w.rate(30.0), 0.0));
        assert!(close(w.rate(1_000.0), 0.0));
    }

    #[test]
    fn a_gap_in_reads_spreads_its_requests_over_the_gap() {
        let mut w = window(10);
        feed(&mut w, 0.0, 20.0, 0.25, 10.0);
        // The agent stalled for 4 s; the read after the stall books 40 requests.
        w.add(20.0, 24.0, 40.0);
        assert!(close(w.rate(24.0), 10.0));
        // A stall longer than the window only keeps what lies inside it.
        w.add(24.0, 54.0, 300.0);
        assert!(close(w.rate(54.0), 10.0));
    }

    #[test]
    fn buckets_wrap_around_many_times_without_leftovers() {
        let mut w = window(5);
        // 1000 s of reads at 3 req/s wrap the 6 buckets ~170 times.
        feed(&mut w, 0.0, 1_000.0, 0.25, 3.0);
        assert!(close(w.rate(1_000.0), 3.0));
        // Then an idle stretch that is not a multiple of the ring length.
        w.add(1_000.0, 1_013.5, 0.0);
        assert!(close(w.rate(1_013.5), 0.0));
        w.add(1_013.5, 1_014.0, 2.0);
        assert!(close(w.sum(1_014.0), 2.0));
    }

    #[test]
    fn the_oldest_second_counts_with_the_part_inside_the_window() {
        let mut w = window(5);
        w.add(0.0, 1.0, 10.0); // second 0
        w.add(1.0, 5.0, 0.0);
        // At 5.5 the window is (0.5, 5.5]: half of second 0 is inside.
        assert!(close(w.sum(5.5), 5.0));
        assert!(close(w.sum(6.0), 0.0));
    }

    #[test]
    fn a_partly_filled_window_after_start_up_divides_by_the_time_covered() {
        let mut w = window(30);
        feed(&mut w, 0.0, 6.0, 0.25, 50.0);
        assert!(close(w.rate(6.0), 50.0));
        // Before one second has passed, the divisor is one second.
        let mut young = window(30);
        young.add(0.0, 0.25, 12.0);
        assert!(close(young.rate(0.25), 12.0));
    }

    #[test]
    fn rates_per_pod_use_one_clock_and_forget_removed_pods() {
        let t0 = Instant::now();
        let mut rates = Rates::new(RateWindow::try_from(10).expect("valid"), t0);
        let web = PodId::new("shop", "web");
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
        rates.book(t0 + Duration::from_secs(35), []);
        assert!(close(rates.rate(Some(&web), Flow::Inbound), 0.0));
        rates.remove(&web);
        assert_eq!(rates.pods().collect::<Vec<_>>(), vec![&db]);
        assert!(close(rates.rate(Some(&web), Flow::Inbound), 0.0));
        assert_eq!(rates.booked_to(), Duration::from_secs(35));
    }

    #[test]
    fn a_pod_seen_late_reports_its_rate_over_the_agents_whole_window() {
        let t0 = Instant::now();
        let mut rates = Rates::new(RateWindow::try_from(10).expect("valid"), t0);
        let late = PodId::new("default", "late");
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
