//! Reading the kernel's latency histogram (`LATENCY`): exchanges per (cgroup, role, peer,
//! bucket), turned into per-flow bucket deltas.

use std::collections::HashMap;

use aya::maps::{HashMap as BpfHashMap, MapData};
use podmeter_common::{CountKey, names};

use super::counters::FlowKey;
use crate::Error;

/// Reads every bucket.
pub fn read_buckets(
    map: &BpfHashMap<MapData, CountKey, u64>,
) -> Result<Vec<(CountKey, u64)>, Error> {
    map.iter()
        .map(|entry| {
            entry.map_err(|source| Error::Map {
                map: names::LATENCY,
                source,
            })
        })
        .collect()
}

/// The exchanges of one flow that entered each bucket since the previous read: (bucket, count),
/// sorted by bucket.
pub type BucketDeltas = Vec<(u16, u64)>;

/// Remembers each bucket's last value.
#[derive(Default)]
pub struct HistogramDeltas {
    last: HashMap<CountKey, u64>,
}

impl HistogramDeltas {
    /// Takes `current` as the starting point without booking it (a takeover's first read).
    pub fn prime(&mut self, current: &[(CountKey, u64)]) {
        self.last.extend(current.iter().copied());
    }

    /// What changed since the previous read, per flow. A bucket below its last value was deleted
    /// and created again, so all of its value is new.
    pub fn update(&mut self, current: &[(CountKey, u64)]) -> Vec<(FlowKey, BucketDeltas)> {
        let mut changed: HashMap<FlowKey, BucketDeltas> = HashMap::new();
        for (key, now) in current {
            let before = self.last.insert(*key, *now).unwrap_or(0);
            let delta = if *now >= before { now - before } else { *now };
            if delta > 0 {
                changed
                    .entry(FlowKey::of(key))
                    .or_default()
                    .push((key.counter, delta));
            }
        }
        let mut out: Vec<_> = changed.into_iter().collect();
        for (_, buckets) in &mut out {
            buckets.sort_unstable();
        }
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// Forgets a bucket deleted from the kernel map.
    pub fn forget(&mut self, key: &CountKey) {
        self.last.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(bucket: u16) -> CountKey {
        CountKey {
            cgroup_id: 7,
            role: 1,
            peer: 0,
            counter: bucket,
        }
    }

    #[test]
    fn buckets_are_booked_once_per_flow() {
        let mut d = HistogramDeltas::default();
        let flow = FlowKey::of(&key(0));
        assert_eq!(
            d.update(&[(key(300), 2), (key(12), 1)]),
            vec![(flow, vec![(12, 1), (300, 2)])]
        );
        assert_eq!(d.update(&[(key(300), 2), (key(12), 1)]), vec![]);
        assert_eq!(
            d.update(&[(key(300), 5), (key(12), 1)]),
            vec![(flow, vec![(300, 3)])]
        );
    }

    #[test]
    fn a_primed_histogram_books_only_what_follows() {
        let mut d = HistogramDeltas::default();
        d.prime(&[(key(40), 100)]);
        assert_eq!(
            d.update(&[(key(40), 101)]),
            vec![(FlowKey::of(&key(0)), vec![(40, 1)])]
        );
    }
}
