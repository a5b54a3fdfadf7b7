//! Request duration quantiles per pod and flow over the rate window, for the metrics API's
//! `http_request_duration_seconds_p95` and the agent's `/v1/pods`.
//!
//! Semantics, for a window of `W` seconds:
//! - An exchange that ended with a response enters the window when the agent reads the kernel's
//!   latency histogram (every second); it leaves `W` seconds later, in whole seconds: the window
//!   holds the current second and the `W - 1` before it.
//! - Quantiles use the nearest rank: the `q` quantile of `n` durations is the smallest duration
//!   with at least `ceil(q * n)` durations at or below it.
//! - Durations are the kernel's log-linear buckets (`podmeter_common::latency`), 64 per power of
//!   two from 1 µs to about 2 min, and a quantile is reported as its bucket's midpoint: within
//!   0.78 % of the duration it names. Shorter and longer durations fall into the first and last
//!   bucket.
//! - The kernel pairs every request with its response, so the window holds every exchange that
//!   ended with a response: nothing depends on the event ring.

use std::time::Instant;

use podmeter_common::latency;

/// Quantiles of the durations in a window, as `/v1/pods` serves them.
pub use podmeter_wire::DurationSummary;

use crate::{attribution::flow::Flow, books::rates::RateWindow};

const BUCKETS: usize = latency::BUCKETS as usize;

/// The midpoint of a kernel bucket, in seconds.
pub fn midpoint_seconds(bucket: u16) -> f64 {
    let (low, high) = latency::bounds(bucket);
    (low + high) as f64 / 2.0 / 1e9
}

/// The durations of one second: (bucket, count), sorted by bucket.
#[derive(Clone, Debug, Default)]
struct Second {
    second: u64,
    buckets: Vec<(u16, u32)>,
}

/// The durations of one flow over the window: per-second buckets and their running total.
#[derive(Clone, Debug)]
pub struct DurationWindow {
    seconds: Box<[Second]>,
    total: Box<[u32]>,
    count: u64,
    newest: u64,
}

impl DurationWindow {
    pub fn new(window: RateWindow) -> Self {
        Self {
            seconds: vec![Second::default(); window.secs() as usize].into_boxed_slice(),
            total: vec![0; BUCKETS].into_boxed_slice(),
            count: 0,
            newest: 0,
        }
    }

    /// Moves the window to end with `second`, dropping the seconds that leave it.
    pub fn advance(&mut self, second: u64) {
        if second <= self.newest {
            return;
        }
        let len = self.seconds.len() as u64;
        for slot in self.seconds.iter_mut() {
            if slot.second + len <= second {
                for &(b, n) in &slot.buckets {
                    self.total[usize::from(b)] -= n;
                    self.count -= u64::from(n);
                }
                slot.buckets.clear();
            }
        }
        self.newest = second;
    }

    /// Adds `n` durations of kernel bucket `b` read during `second` (not older than the window's
    /// newest second).
    pub fn observe(&mut self, second: u64, b: u16, n: u32) {
        let b = b.min(latency::BUCKETS - 1);
        self.advance(second);
        let len = self.seconds.len() as u64;
        let slot = &mut self.seconds[(self.newest % len) as usize];
        slot.second = self.newest;
        match slot.buckets.binary_search_by_key(&b, |&(k, _)| k) {
            Ok(i) => slot.buckets[i].1 += n,
            Err(i) => slot.buckets.insert(i, (b, n)),
        }
        self.total[usize::from(b)] += n;
        self.count += u64::from(n);
    }

    /// Durations in the window.
    #[cfg(test)]
    pub fn count(&self) -> u64 {
        self.count
    }

    /// The `q` quantile (0 < q <= 1) by nearest rank, in seconds; `None` for an empty window.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((q * self.count as f64).ceil() as u64).clamp(1, self.count);
        let mut seen = 0u64;
        for (b, &n) in self.total.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return Some(midpoint_seconds(b as u16));
            }
        }
        None
    }

    pub fn summary(&self) -> Option<DurationSummary> {
        Some(DurationSummary {
            exchanges: self.count,
            p50_seconds: self.quantile(0.50)?,
            p90_seconds: self.quantile(0.90)?,
            p95_seconds: self.quantile(0.95)?,
            p99_seconds: self.quantile(0.99)?,
        })
    }
}

/// The clock every pod's windows share: whole seconds since `origin`, and the window length.
#[derive(Clone, Copy, Debug)]
pub struct DurationClock {
    window: RateWindow,
    origin: Instant,
}

impl DurationClock {
    pub fn new(window: RateWindow, origin: Instant) -> Self {
        Self { window, origin }
    }

    /// The second `now` falls in.
    pub fn second(&self, now: Instant) -> u64 {
        now.saturating_duration_since(self.origin).as_secs()
    }
}

/// The duration windows of one pod's flows, each from its first duration.
#[derive(Clone, Debug, Default)]
pub struct FlowWindows([Option<DurationWindow>; Flow::COUNT]);

impl FlowWindows {
    /// Adds a flow's exchanges by kernel bucket, read at `now`.
    pub fn observe(
        &mut self,
        clock: &DurationClock,
        now: Instant,
        flow: Flow,
        buckets: &[(u16, u64)],
    ) {
        let window = self.0[flow.index()].get_or_insert_with(|| DurationWindow::new(clock.window));
        let second = clock.second(now);
        for &(b, n) in buckets {
            window.observe(second, b, u32::try_from(n).unwrap_or(u32::MAX));
        }
    }

    /// Moves every window to `second`, so that durations older than the window leave it even
    /// when nothing new comes.
    pub fn advance(&mut self, second: u64) {
        for w in self.0.iter_mut().flatten() {
            w.advance(second);
        }
    }

    /// The quantiles of a flow; `None` without exchanges in the window.
    pub fn summary(&self, flow: Flow) -> Option<DurationSummary> {
        self.0[flow.index()].as_ref()?.summary()
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    /// The kernel bucket of a duration.
    fn b(d: Duration) -> u16 {
        latency::bucket(d.as_nanos() as u64)
    }

    /// One duration during `second`.
    fn observe(w: &mut DurationWindow, second: u64, d: Duration) {
        w.observe(second, b(d), 1);
    }

    fn window(secs: u32) -> DurationWindow {
        DurationWindow::new(RateWindow::try_from(secs).expect("valid window"))
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Within the 0.78 % a bucket's midpoint may be off.
    fn near(seconds: f64, expected: Duration) -> bool {
        let e = expected.as_secs_f64();
        (seconds - e).abs() <= e * 0.0079
    }

    #[test]
    fn every_bucket_midpoint_is_within_its_precision_of_the_durations_it_holds() {
        for ns in [
            1_024u64,
            5_000,
            80_000,
            999_999,
            12_345_678,
            3_000_000_000,
            100_000_000_000,
        ] {
            let d = Duration::from_nanos(ns);
            let m = midpoint_seconds(b(d));
            assert!(near(m, d), "{ns} ns reported as {m} s");
        }
        // Out of range: the first and the last bucket.
        assert_eq!(b(Duration::ZERO), 0);
        assert_eq!(b(Duration::from_secs(3600)) as usize, BUCKETS - 1);
    }

    #[test]
    fn every_duration_from_1_us_to_2_min_is_within_0_78_percent_of_its_midpoint() {
        let mut ns = 1_024u64;
        while ns < 1 << 37 {
            let m = midpoint_seconds(latency::bucket(ns)) * 1e9;
            assert!(
                (m - ns as f64).abs() <= ns as f64 * 0.0079,
                "{ns} ns reported as {m} ns"
            );
            ns += ns / 97 + 1;
        }
    }

    #[test]
    fn quantiles_use_the_nearest_rank() {
        let mut w = window(30);
        // 90 fast and 10 slow: p90 is the 90th duration (fast), p95 and p99 are slow.
        for _ in 0..90 {
            observe(&mut w, 0, ms(5));
        }
        for _ in 0..10 {
            observe(&mut w, 0, ms(200));
        }
        let s = w.summary().expect("durations");
        assert_eq!(s.exchanges, 100);
        assert!(near(s.p50_seconds, ms(5)), "{s:?}");
        assert!(near(s.p90_seconds, ms(5)), "{s:?}");
        assert!(near(s.p95_seconds, ms(200)), "{s:?}");
        assert!(near(s.p99_seconds, ms(200)), "{s:?}");
        // One more fast one moves the 90th rank's boundary but not p95.
        observe(&mut w, 0, ms(5));
        assert!(near(w.quantile(0.95).expect("p95"), ms(200)));
    }

    #[test]
    fn a_single_duration_is_every_quantile() {
        let mut w = window(5);
        observe(&mut w, 3, ms(42));
        for q in [0.01, 0.5, 0.95, 1.0] {
            assert!(near(w.quantile(q).expect("a duration"), ms(42)));
        }
        assert_eq!(window(5).quantile(0.95), None);
        assert_eq!(window(5).summary(), None);
    }

    #[test]
    fn durations_leave_after_the_window_in_whole_seconds() {
        let mut w = window(5);
        observe(&mut w, 10, ms(100));
        observe(&mut w, 12, ms(1));
        // Seconds 10..=14 are the window ending at 14: both are in.
        w.advance(14);
        assert_eq!(w.count(), 2);
        assert!(near(w.quantile(1.0).expect("max"), ms(100)));
        // At 15 second 10 has left.
        w.advance(15);
        assert_eq!(w.count(), 1);
        assert!(near(w.quantile(1.0).expect("max"), ms(1)));
        // Long idle: empty, and the buckets are clean for the next round.
        w.advance(1_000);
        assert_eq!(w.count(), 0);
        assert!(w.total.iter().all(|&n| n == 0));
        observe(&mut w, 1_000, ms(7));
        assert!(near(w.quantile(0.5).expect("p50"), ms(7)));
    }

    #[test]
    fn a_shifting_load_is_followed_second_by_second() {
        let mut w = window(10);
        // Ten seconds at 10 ms, then ten at 50 ms: after the second ten, only 50 ms is left.
        for s in 0..10 {
            for _ in 0..20 {
                observe(&mut w, s, ms(10));
            }
        }
        assert!(near(w.quantile(0.95).expect("p95"), ms(10)));
        for s in 10..20 {
            for _ in 0..20 {
                observe(&mut w, s, ms(50));
            }
            // After k seconds of the slower load, k * 20 of the 200 durations are slow: p95
            // turns slow once more than 5 % are.
            let slow = (s - 9) * 20;
            let expected = if slow * 100 > 5 * 200 { ms(50) } else { ms(10) };
            assert!(
                near(w.quantile(0.95).expect("p95"), expected),
                "second {s}: {:?}",
                w.quantile(0.95)
            );
        }
        assert_eq!(w.count(), 200);
        assert!(near(w.quantile(0.01).expect("p1"), ms(50)));
    }

    #[test]
    fn durations_per_pod_and_flow_are_kept_apart_and_forgotten_with_the_pod() {
        let origin = Instant::now();
        let clock = DurationClock::new(RateWindow::DEFAULT, origin);
        let (mut a, mut pod_b) = (FlowWindows::default(), FlowWindows::default());
        a.observe(&clock, origin, Flow::Inbound, &[(b(ms(3)), 1)]);
        a.observe(&clock, origin, Flow::Outbound, &[(b(ms(30)), 1)]);
        pod_b.observe(&clock, origin, Flow::Inbound, &[(b(ms(300)), 1)]);
        let p95 = |pod: &FlowWindows, flow| pod.summary(flow).map(|s| s.p95_seconds);
        assert!(near(p95(&a, Flow::Inbound).expect("a in"), ms(3)));
        assert!(near(p95(&a, Flow::Outbound).expect("a out"), ms(30)));
        assert!(near(p95(&pod_b, Flow::Inbound).expect("b in"), ms(300)));
        assert_eq!(pod_b.summary(Flow::Outbound), None);
        // The window passes: nothing is left.
        a.advance(clock.second(origin + Duration::from_secs(31)));
        assert_eq!(a.summary(Flow::Inbound), None);
        // Forgetting the pod with its book is `Books::remove` (tested in `books`).
    }
}
