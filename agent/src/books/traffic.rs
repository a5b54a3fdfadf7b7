//! Per-pod traffic totals: exact counts from the kernel counters, and what the paired events tell
//! about methods, outcomes and latency.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use podmeter_common::status_class;
use serde::Serialize;

use crate::{
    attribution::flow::Flow,
    connections::pairing::{Exchange, Outcome},
    fast_map::FastMap,
    identity::PodId,
    kernel::counters::Counts,
};

/// Exchanges by how they ended.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct StatusCounts {
    /// Closed before a response.
    pub none: u64,
    #[serde(rename = "1xx")]
    pub informational: u64,
    #[serde(rename = "2xx")]
    pub success: u64,
    #[serde(rename = "3xx")]
    pub redirection: u64,
    #[serde(rename = "4xx")]
    pub client_error: u64,
    #[serde(rename = "5xx")]
    pub server_error: u64,
    /// Status outside 100..=599, or a response whose status line was not recognised.
    pub other: u64,
}

impl StatusCounts {
    fn add_slots(&mut self, slots: &[u64; status_class::COUNT]) {
        self.none += slots[usize::from(status_class::NONE)];
        self.informational += slots[1];
        self.success += slots[2];
        self.redirection += slots[3];
        self.client_error += slots[4];
        self.server_error += slots[5];
        self.other += slots[usize::from(status_class::OTHER)];
    }

    pub fn total(&self) -> u64 {
        self.none
            + self.informational
            + self.success
            + self.redirection
            + self.client_error
            + self.server_error
            + self.other
    }
}

/// Exact totals of one flow, from the kernel counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize)]
pub struct FlowTotals {
    pub requests: u64,
    pub responses: StatusCounts,
}

impl FlowTotals {
    pub fn add(&mut self, delta: &Counts) {
        self.requests += delta.requests;
        self.responses.add_slots(&delta.responses);
    }
}

/// What the paired events say about one flow. Events can be dropped when the ring buffer is full
/// (counted in the agent's statistics), so these may trail the exact totals.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Observed {
    pub exchanges: u64,
    pub by_method: BTreeMap<&'static str, u64>,
    pub by_status: BTreeMap<u16, u64>,
    pub no_response: u64,
    pub unrecognised_response: u64,
    pub latency_seconds_sum: f64,
    pub latency_count: u64,
}

impl Observed {
    fn add(&mut self, x: &Exchange) {
        self.exchanges += 1;
        *self.by_method.entry(x.method.as_str()).or_default() += 1;
        match x.outcome {
            Outcome::Status(s) => *self.by_status.entry(s).or_default() += 1,
            Outcome::NoResponse => self.no_response += 1,
            Outcome::Unrecognised => self.unrecognised_response += 1,
        }
        if let Some(l) = x.latency {
            self.latency_seconds_sum += l.as_secs_f64();
            self.latency_count += 1;
        }
    }
}

/// Everything known about one pod's HTTP traffic.
#[derive(Clone, Debug, Default, Serialize)]
pub struct PodTraffic {
    /// Requests this pod served (server-side observations): the per-pod QPS counts these.
    pub inbound: FlowTotals,
    /// Requests this pod sent (client-side observations).
    pub outbound: FlowTotals,
    /// Requests served to a peer inside the pod (over loopback); not part of `inbound`.
    pub loopback_inbound: FlowTotals,
    /// Requests sent to a peer inside the pod (over loopback); not part of `outbound`.
    pub loopback_outbound: FlowTotals,
    pub observed_inbound: Observed,
    pub observed_outbound: Observed,
}

impl PodTraffic {
    fn totals_mut(&mut self, flow: Flow) -> &mut FlowTotals {
        match flow {
            Flow::Inbound => &mut self.inbound,
            Flow::Outbound => &mut self.outbound,
            Flow::LoopbackInbound => &mut self.loopback_inbound,
            Flow::LoopbackOutbound => &mut self.loopback_outbound,
        }
    }
}

struct Entry {
    traffic: PodTraffic,
    /// Since when none of the pod's cgroups exists; `None` while it lives.
    gone_since: Option<Instant>,
}

/// Totals of all pods on this node, plus what could not be attributed to a pod.
#[derive(Default)]
pub struct Traffic {
    pods: FastMap<PodId, Entry>,
    /// Sockets in the attached tree that belong to no pod (e.g. processes in the root cgroup).
    pub unattributed: PodTraffic,
}

impl Traffic {
    fn pod_mut(&mut self, pod: Option<&PodId>) -> &mut PodTraffic {
        match pod {
            Some(pod) => {
                // Per exchange: clone the pod's name only the first time it is seen.
                if !self.pods.contains_key(pod) {
                    let entry = Entry {
                        traffic: PodTraffic::default(),
                        gone_since: None,
                    };
                    self.pods.insert(pod.clone(), entry);
                }
                let entry = self.pods.get_mut(pod).expect("inserted above");
                entry.gone_since = None;
                &mut entry.traffic
            }
            None => &mut self.unattributed,
        }
    }

    /// Books exact counter deltas.
    pub fn add_counts(&mut self, pod: Option<&PodId>, flow: Flow, delta: &Counts) {
        self.pod_mut(pod).totals_mut(flow).add(delta);
    }

    /// Books a paired exchange.
    pub fn add_exchange(&mut self, pod: Option<&PodId>, flow: Flow, x: &Exchange) {
        let t = self.pod_mut(pod);
        match flow {
            Flow::Inbound => t.observed_inbound.add(x),
            Flow::Outbound => t.observed_outbound.add(x),
            Flow::LoopbackInbound | Flow::LoopbackOutbound => {}
        }
    }

    /// Marks which pods still have a cgroup, and removes pods gone for longer than `grace`.
    pub fn sweep(
        &mut self,
        alive: impl Fn(&PodId) -> bool,
        now: Instant,
        grace: Duration,
    ) -> Vec<PodId> {
        let mut removed = Vec::new();
        self.pods.retain(|pod, entry| {
            if alive(pod) {
                entry.gone_since = None;
                return true;
            }
            let since = *entry.gone_since.get_or_insert(now);
            let keep = now.duration_since(since) < grace;
            if !keep {
                removed.push(pod.clone());
            }
            keep
        });
        removed
    }

    pub fn pods(&self) -> impl Iterator<Item = (&PodId, &PodTraffic)> {
        self.pods.iter().map(|(id, e)| (id, &e.traffic))
    }

    pub fn get(&self, pod: &PodId) -> Option<&PodTraffic> {
        self.pods.get(pod).map(|e| &e.traffic)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn delta(requests: u64, ok: u64) -> Counts {
        let mut c = Counts {
            requests,
            ..Counts::default()
        };
        c.responses[2] = ok;
        c
    }

    #[test]
    fn flows_are_booked_apart() {
        let mut t = Traffic::default();
        let web = PodId::new("default", "web");
        t.add_counts(Some(&web), Flow::Inbound, &delta(3, 3));
        t.add_counts(Some(&web), Flow::LoopbackInbound, &delta(3, 3));
        t.add_counts(Some(&web), Flow::Inbound, &delta(2, 1));
        let p = t.get(&web).expect("booked");
        assert_eq!((p.inbound.requests, p.inbound.responses.success), (5, 4));
        assert_eq!(p.loopback_inbound.requests, 3);
        assert_eq!(p.outbound.requests, 0);
    }

    #[test]
    fn gone_pods_leave_after_the_grace_period() {
        let mut t = Traffic::default();
        let web = PodId::new("default", "web");
        t.add_counts(Some(&web), Flow::Inbound, &delta(1, 1));
        let t0 = Instant::now();
        let grace = Duration::from_secs(60);
        assert!(t.sweep(|_| false, t0, grace).is_empty());
        assert!(
            t.sweep(|_| false, t0 + Duration::from_secs(59), grace)
                .is_empty()
        );
        assert_eq!(
            t.sweep(|_| false, t0 + Duration::from_secs(60), grace),
            vec![web.clone()]
        );
        assert!(t.get(&web).is_none());
    }

    #[test]
    fn a_pod_that_comes_back_is_kept() {
        let mut t = Traffic::default();
        let web = PodId::new("default", "web");
        t.add_counts(Some(&web), Flow::Inbound, &delta(1, 1));
        let t0 = Instant::now();
        let grace = Duration::from_secs(10);
        t.sweep(|_| false, t0, grace);
        t.sweep(|_| true, t0 + Duration::from_secs(5), grace);
        assert!(
            t.sweep(|_| false, t0 + Duration::from_secs(12), grace)
                .is_empty()
        );
    }
}
