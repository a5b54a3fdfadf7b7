//! Reading the kernel's per-flow sums (`FLOWS`) and turning them into per-(cgroup, role, peer)
//! deltas: the time-integral of requests in flight, latency sum and payload bytes.
//!
//! The in-flight integral up to `t` is `(started - ended) * t - start_ns + end_ns`, every term
//! wrapping and summed over CPUs (see `podmeter_common::FlowSums`). A consistent read gives the
//! exact integral since the flow's sums were created; a read that copied one CPU's value between
//! two of a program's updates is off by about 2^62 ns and is skipped: the next read's delta then
//! covers both intervals, so nothing is lost.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuHashMap};
use podmeter_common::{CountKey, FlowSums, TIMESTAMP_OFFSET, names};

use super::counters::{self, FlowKey};
use crate::Error;

/// One flow's sums as read at one time, summed over CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowRead {
    /// The in-flight integral in ns at the read's time (wrapping).
    pub integral_ns: u64,
    /// Requests in flight at the read's time.
    pub in_flight: u64,
    pub responded: u64,
    pub latency_ns: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

impl FlowRead {
    /// The flow's sums at `read_ns` (CLOCK_MONOTONIC, the programs' clock).
    pub fn at(per_cpu: &[FlowSums], read_ns: u64) -> Self {
        let t = read_ns.wrapping_add(TIMESTAMP_OFFSET);
        let mut read = Self::default();
        for cpu in per_cpu {
            let in_flight = cpu.started.wrapping_sub(cpu.ended);
            read.in_flight = read.in_flight.wrapping_add(in_flight);
            read.integral_ns = read.integral_ns.wrapping_add(
                in_flight
                    .wrapping_mul(t)
                    .wrapping_sub(cpu.start_ns)
                    .wrapping_add(cpu.end_ns),
            );
            read.responded = read.responded.wrapping_add(cpu.responded);
            read.latency_ns = read.latency_ns.wrapping_add(cpu.latency_ns);
            read.request_bytes = read.request_bytes.wrapping_add(cpu.request_bytes);
            read.response_bytes = read.response_bytes.wrapping_add(cpu.response_bytes);
        }
        read
    }
}

/// What changed in one flow since the previous read.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowDelta {
    /// Request-seconds in flight, in ns, over the interval.
    pub in_flight_ns: u64,
    /// Requests in flight at this read.
    pub in_flight: u64,
    /// Exchanges that ended with a response, and the sum of their latencies.
    pub responded: u64,
    pub latency_ns: u64,
    pub request_bytes: u64,
    pub response_bytes: u64,
}

/// One read of every flow's value: its sums at the read's time, and its exact counters.
#[derive(Debug, Default)]
pub struct FlowsRead {
    pub sums: Vec<(FlowKey, FlowRead)>,
    pub counters: Vec<(CountKey, u64)>,
}

/// Reads every flow's value, summed over CPUs, at `read_ns`.
pub fn read_flows(
    map: &PerCpuHashMap<MapData, CountKey, FlowSums>,
    read_ns: u64,
) -> Result<FlowsRead, Error> {
    let mut read = FlowsRead::default();
    for entry in map.iter() {
        let (key, per_cpu) = entry.map_err(|source| Error::Map {
            map: names::FLOWS,
            source,
        })?;
        read.sums
            .push((FlowKey::of(&key), FlowRead::at(&per_cpu, read_ns)));
        counters::of_flow(&key, &per_cpu, &mut read.counters);
    }
    Ok(read)
}

/// Any real integral over a read interval is far below this (2^61 ns is 73 years of one request
/// in flight); a torn read is off by about 2^62.
const PLAUSIBLE_NS: u64 = 1 << 61;

/// Remembers each flow's last consistent read.
#[derive(Default)]
pub struct FlowDeltas {
    last: HashMap<FlowKey, FlowRead>,
    /// Reads skipped as torn, for the agent's health.
    pub torn: u64,
}

impl FlowDeltas {
    /// Takes `current` as the starting point without booking it: a takeover's first read, whose
    /// sums include what the previous agent saw.
    pub fn prime(&mut self, current: &[(FlowKey, FlowRead)]) {
        self.last.extend(current.iter().copied());
    }

    /// What changed since the previous read. A flow seen for the first time starts from zero (its
    /// sums were created zero, and so was its integral).
    pub fn update(&mut self, current: &[(FlowKey, FlowRead)]) -> Vec<(FlowKey, FlowDelta)> {
        let mut out = Vec::new();
        for (key, now) in current {
            let before = self.last.get(key).copied().unwrap_or_default();
            let in_flight_ns = now.integral_ns.wrapping_sub(before.integral_ns);
            if in_flight_ns >= PLAUSIBLE_NS {
                // Torn (or a read racing a request that started after its time was taken, a
                // negative of a few µs): the next read covers this interval too.
                self.torn += u64::from(in_flight_ns.wrapping_neg() >= PLAUSIBLE_NS);
                continue;
            }
            self.last.insert(*key, *now);
            let delta = FlowDelta {
                in_flight_ns,
                in_flight: now.in_flight,
                responded: now.responded.wrapping_sub(before.responded),
                latency_ns: now.latency_ns.wrapping_sub(before.latency_ns),
                request_bytes: now.request_bytes.wrapping_sub(before.request_bytes),
                response_bytes: now.response_bytes.wrapping_sub(before.response_bytes),
            };
            if delta != FlowDelta::default() {
                out.push((*key, delta));
            }
        }
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Forgets a flow deleted from the kernel map.
    pub fn forget(&mut self, key: &FlowKey) {
        self.last.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: FlowKey = FlowKey {
        cgroup_id: 1,
        role: 1,
        peer: 0,
    };
    const S: u64 = 1_000_000_000;

    /// The sums of one CPU after requests that started and (for `Some`) ended at these seconds.
    fn sums(requests: &[(u64, Option<u64>)]) -> FlowSums {
        let mut s = FlowSums::default();
        for &(start, end) in requests {
            s.started += 1;
            s.start_ns = s.start_ns.wrapping_add(start * S + TIMESTAMP_OFFSET);
            if let Some(end) = end {
                s.ended += 1;
                s.end_ns = s.end_ns.wrapping_add(end * S + TIMESTAMP_OFFSET);
            }
        }
        s
    }

    #[test]
    fn the_integral_is_exact_across_cpus_and_in_flight_requests() {
        // CPU 0 starts three requests; CPU 1 ends two of them (10-12 s and 11-15 s); the third
        // (started at 14 s) is still in flight at 16 s.
        let cpu0 = sums(&[(10, None), (11, None), (14, None)]);
        let mut cpu1 = FlowSums::default();
        for end in [12, 15] {
            cpu1.ended += 1;
            cpu1.end_ns = cpu1.end_ns.wrapping_add(end * S + TIMESTAMP_OFFSET);
        }
        let read = FlowRead::at(&[cpu0, cpu1], 16 * S);
        assert_eq!(read.in_flight, 1);
        assert_eq!(read.integral_ns, (2 + 4 + 2) * S);
    }

    #[test]
    fn deltas_give_the_average_concurrency_of_each_interval() {
        let mut d = FlowDeltas::default();
        let first = FlowRead::at(&[sums(&[(0, Some(2)), (1, None)])], 2 * S);
        assert_eq!(first.integral_ns, 3 * S);
        assert_eq!(d.update(&[(FLOW, first)])[0].1.in_flight_ns, 3 * S);
        // One request in flight for 2 more seconds.
        let second = FlowRead::at(&[sums(&[(0, Some(2)), (1, None)])], 4 * S);
        assert_eq!(d.update(&[(FLOW, second)])[0].1.in_flight_ns, 2 * S);
    }

    #[test]
    fn a_torn_read_is_skipped_and_the_next_covers_its_interval() {
        let mut d = FlowDeltas::default();
        let good = sums(&[(1, None)]);
        d.update(&[(FLOW, FlowRead::at(&[good], 2 * S))]);
        // The start time added, the count not yet.
        let mut torn = good;
        torn.start_ns = torn.start_ns.wrapping_add(3 * S + TIMESTAMP_OFFSET);
        assert_eq!(d.update(&[(FLOW, FlowRead::at(&[torn], 3 * S))]), vec![]);
        assert_eq!(d.torn, 1);
        let later = sums(&[(1, None), (3, Some(4))]);
        let delta = d.update(&[(FLOW, FlowRead::at(&[later], 5 * S))]);
        // From 2 s to 5 s: the first request 3 s, the second 1 s.
        assert_eq!(delta[0].1.in_flight_ns, 4 * S);
    }

    #[test]
    fn a_primed_read_books_only_what_follows() {
        let mut d = FlowDeltas::default();
        let mut s = sums(&[(1, Some(2))]);
        s.request_bytes = 500;
        d.prime(&[(FLOW, FlowRead::at(&[s], 3 * S))]);
        s.request_bytes = 800;
        let delta = d.update(&[(FLOW, FlowRead::at(&[s], 4 * S))]);
        assert_eq!(delta[0].1.request_bytes, 300);
        assert_eq!(delta[0].1.in_flight_ns, 0);
    }
}
