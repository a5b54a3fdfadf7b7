//! The kernel's exact counters, read out of the flows' values (`FLOWS`), and turned into
//! per-(cgroup, role, peer) deltas.
//!
//! The counters are the source of truth for request counts and rates: they are exact even when
//! the event ring overflows. Each read sums the per-CPU copies; [`Deltas`] remembers the last
//! value of each counter so that what changed is booked once, and entries of dead cgroups can be
//! deleted from the kernel map without losing or double counting anything.

use std::collections::HashMap;

use aya::maps::{MapData, PerCpuArray};
use podmeter_common::{CountKey, FlowSums, counter, method, names, stat, status_class};

use crate::{Error, attribution, attribution::flow::Flow, identity::PodId};

/// The sockets one set of counters describes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct FlowKey {
    pub cgroup_id: u64,
    pub role: u32,
    pub peer: u16,
}

impl FlowKey {
    /// The flow a kernel key belongs to.
    pub fn of(key: &CountKey) -> Self {
        Self {
            cgroup_id: key.cgroup_id,
            role: key.role,
            peer: key.peer,
        }
    }
}

/// Requests and how the exchanges ended, for one [`FlowKey`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Counts {
    pub requests: u64,
    /// Indexed by `podmeter_common::status_class`.
    pub responses: [u64; status_class::COUNT],
    /// Requests by `podmeter_common::method` id.
    pub by_method: [u64; method::COUNT as usize],
    /// Ended exchanges by method id, then status class.
    pub ended: [[u64; status_class::COUNT]; method::COUNT as usize],
}

impl Counts {
    pub(crate) fn add(&mut self, counter_kind: u16, value: u64) {
        if let Some(m) = counter::method_of(counter_kind) {
            self.requests += value;
            self.by_method[usize::from(m)] += value;
        } else if let Some((m, class)) = counter::response_of(counter_kind) {
            self.responses[usize::from(class)] += value;
            self.ended[usize::from(m)][usize::from(class)] += value;
        }
    }
}

/// Appends the exact counters of the flow `key` (its `counter` is 0), summed over its per-CPU
/// values, to `out`: one entry per counter kind that has counted anything.
pub fn of_flow(key: &CountKey, per_cpu: &[FlowSums], out: &mut Vec<(CountKey, u64)>) {
    let mut push = |counter: u16, value: u64| {
        if value != 0 {
            out.push((CountKey { counter, ..*key }, value));
        }
    };
    for m in 1..method::COUNT {
        let i = usize::from(m);
        push(
            counter::requests(m),
            per_cpu
                .iter()
                .fold(0u64, |a, c| a.wrapping_add(c.requests[i])),
        );
    }
    for m in 0..method::COUNT {
        for class in 0..status_class::COUNT {
            push(
                counter::responses(m, class as u16),
                per_cpu.iter().fold(0u64, |a, c| {
                    a.wrapping_add(c.responses[usize::from(m)][class])
                }),
            );
        }
    }
}

/// Sums the per-CPU copies of the kernel's self-statistics.
pub fn read_stats(map: &PerCpuArray<MapData, u64>) -> Result<KernelStats, Error> {
    let mut slots = [0u64; stat::SLOTS as usize];
    for (i, slot) in (0u32..).zip(slots.iter_mut()) {
        let per_cpu = map.get(&i, 0).map_err(|source| Error::Map {
            map: names::STATS,
            source,
        })?;
        *slot = per_cpu.iter().sum();
    }
    Ok(KernelStats(slots))
}

/// The kernel's self-statistics, indexed by `podmeter_common::stat`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KernelStats(pub [u64; stat::SLOTS as usize]);

impl KernelStats {
    pub fn get(&self, index: u32) -> u64 {
        self.0.get(index as usize).copied().unwrap_or(0)
    }
}

/// Remembers the last value of each kernel counter.
#[derive(Default)]
pub struct Deltas {
    last: HashMap<CountKey, u64>,
}

impl Deltas {
    /// What changed since the previous call, summed per [`FlowKey`]. A counter below its last
    /// value was deleted and created again, so all of its value is new.
    pub fn update(&mut self, current: &[(CountKey, u64)]) -> Vec<(FlowKey, Counts)> {
        let mut changed: HashMap<FlowKey, Counts> = HashMap::new();
        for (key, now) in current {
            let before = self.last.insert(*key, *now).unwrap_or(0);
            let delta = if *now >= before { now - before } else { *now };
            if delta > 0 {
                changed
                    .entry(FlowKey::of(key))
                    .or_default()
                    .add(key.counter, delta);
            }
        }
        let mut out: Vec<_> = changed.into_iter().collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Forgets a counter that was deleted from the kernel map.
    /// Forgets the counters of a flow deleted from the kernel map.
    pub fn forget_flow(&mut self, flow: &FlowKey) {
        self.last.retain(|key, _| FlowKey::of(key) != *flow);
    }
}

/// Names each changed flow's pod (`pod_of` a cgroup id) and its [`Flow`] by
/// [`attribution::attribute`], the rule the paired events follow too.
pub fn by_pod(
    changed: Vec<(FlowKey, Counts)>,
    mut pod_of: impl FnMut(u64) -> Option<PodId>,
) -> Vec<(Option<PodId>, Flow, Counts)> {
    changed
        .into_iter()
        .filter_map(|(key, delta)| {
            let (pod, flow) =
                attribution::attribute(key.cgroup_id, key.role, key.peer, &mut pod_of)?;
            Some((pod, flow, delta))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    const FLOW: FlowKey = FlowKey {
        cgroup_id: 1,
        role: 1,
        peer: 0,
    };

    fn key(kind: u16) -> CountKey {
        CountKey {
            cgroup_id: FLOW.cgroup_id,
            role: FLOW.role,
            peer: FLOW.peer,
            counter: kind,
        }
    }

    const GET: u16 = counter::requests(method::GET);
    const OK: u16 = counter::responses(method::GET, 2);

    /// `requests` GETs of which `ok` ended 2xx.
    fn counts(requests: u64, ok: u64) -> Counts {
        let mut c = Counts::default();
        c.add(GET, requests);
        c.add(OK, ok);
        c
    }

    #[test]
    fn first_read_books_everything_then_only_changes() {
        let mut d = Deltas::default();
        assert_eq!(
            d.update(&[(key(GET), 5), (key(OK), 4)]),
            vec![(FLOW, counts(5, 4))]
        );
        assert_eq!(d.update(&[(key(GET), 5), (key(OK), 4)]), vec![]);
        assert_eq!(
            d.update(&[(key(GET), 8), (key(OK), 8)]),
            vec![(FLOW, counts(3, 4))]
        );
    }

    #[test]
    fn a_recreated_flow_counts_from_zero() {
        let mut d = Deltas::default();
        d.update(&[(key(GET), 100), (key(OK), 90)]);
        d.forget_flow(&FLOW);
        assert_eq!(d.update(&[(key(GET), 2)]), vec![(FLOW, counts(2, 0))]);
    }

    #[test]
    fn a_flows_counters_are_summed_over_cpus_and_named_by_kind() {
        let (mut cpu0, mut cpu1) = (FlowSums::default(), FlowSums::default());
        cpu0.requests[usize::from(method::GET)] = 3;
        cpu1.requests[usize::from(method::GET)] = u64::MAX; // wraps: -1
        cpu1.requests[usize::from(method::POST)] = 1;
        cpu0.responses[usize::from(method::GET)][2] = 2;
        let mut out = Vec::new();
        of_flow(&key(0), &[cpu0, cpu1], &mut out);
        assert_eq!(
            out,
            vec![
                (key(GET), 2),
                (key(counter::requests(method::POST)), 1),
                (key(OK), 2)
            ]
        );
    }

    #[test]
    fn a_value_going_backwards_is_taken_as_new() {
        let mut d = Deltas::default();
        d.update(&[(key(OK), 10)]);
        assert_eq!(d.update(&[(key(OK), 3)]), vec![(FLOW, counts(0, 3))]);
    }

    #[test]
    fn unknown_counter_kinds_are_ignored() {
        let mut c = Counts::default();
        c.add(
            counter::responses(method::GET, status_class::COUNT as u16),
            5,
        );
        c.add(counter::responses(method::COUNT, 0), 5);
        c.add(counter::requests(0), 5);
        c.add(counter::requests(method::COUNT), 5);
        assert_eq!(c, Counts::default());
    }

    #[test]
    fn methods_and_classes_add_up() {
        let mut c = Counts::default();
        c.add(counter::requests(method::GET), 3);
        c.add(counter::requests(method::POST), 2);
        c.add(counter::responses(method::GET, 2), 3);
        c.add(counter::responses(method::POST, 5), 1);
        c.add(counter::responses(method::POST, status_class::NONE), 1);
        assert_eq!(c.requests, 5);
        assert_eq!(c.responses[2], 3);
        assert_eq!(c.responses[5], 1);
        assert_eq!(c.responses[0], 1);
        assert_eq!(c.by_method[usize::from(method::POST)], 2);
        assert_eq!(c.ended[usize::from(method::POST)][5], 1);
    }
}
