//! Per-pod traffic totals: exact counts from the kernel counters, and what the paired events tell
//! about methods, outcomes and latency.

use std::borrow::Cow;

use podmeter_common::status_class;
pub use podmeter_wire::{FlowTotals, Observed, StatusCounts};

use crate::{
    attribution::flow::Flow,
    connections::pairing::{Exchange, Outcome},
    kernel::counters::Counts,
};

/// Adds the kernel's response slots (indexed by `podmeter_common::status_class`).
fn add_slots(counts: &mut StatusCounts, slots: &[u64; status_class::COUNT]) {
    counts.none += slots[usize::from(status_class::NONE)];
    counts.informational += slots[1];
    counts.success += slots[2];
    counts.redirection += slots[3];
    counts.client_error += slots[4];
    counts.server_error += slots[5];
    counts.other += slots[usize::from(status_class::OTHER)];
}

/// Adds exact counter deltas to one flow's totals.
pub fn add_counts(totals: &mut FlowTotals, delta: &Counts) {
    totals.requests += delta.requests;
    add_slots(&mut totals.responses, &delta.responses);
}

/// Adds one paired exchange to what the events say about a flow. Events can be dropped when the
/// ring buffer is full (counted in the agent's health), so these may trail the exact totals.
fn observe(observed: &mut Observed, x: &Exchange) {
    observed.exchanges += 1;
    *observed
        .by_method
        .entry(Cow::Borrowed(x.method.as_str()))
        .or_default() += 1;
    match x.outcome {
        Outcome::Status(s) => *observed.by_status.entry(s).or_default() += 1,
        Outcome::NoResponse => observed.no_response += 1,
        Outcome::Unrecognised => observed.unrecognised_response += 1,
    }
    if let Some(l) = x.latency {
        observed.latency_seconds_sum += l.as_secs_f64();
        observed.latency_count += 1;
    }
}

/// Everything known about one pod's HTTP traffic (or that of the sockets of no pod).
#[derive(Clone, Debug, Default)]
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
    /// The exact totals of a flow.
    pub fn totals(&self, flow: Flow) -> &FlowTotals {
        match flow {
            Flow::Inbound => &self.inbound,
            Flow::Outbound => &self.outbound,
            Flow::LoopbackInbound => &self.loopback_inbound,
            Flow::LoopbackOutbound => &self.loopback_outbound,
        }
    }

    fn totals_mut(&mut self, flow: Flow) -> &mut FlowTotals {
        match flow {
            Flow::Inbound => &mut self.inbound,
            Flow::Outbound => &mut self.outbound,
            Flow::LoopbackInbound => &mut self.loopback_inbound,
            Flow::LoopbackOutbound => &mut self.loopback_outbound,
        }
    }

    /// Books exact counter deltas.
    pub fn add_counts(&mut self, flow: Flow, delta: &Counts) {
        add_counts(self.totals_mut(flow), delta);
    }

    /// Books a paired exchange; loopback exchanges are not observed apart.
    pub fn add_exchange(&mut self, flow: Flow, x: &Exchange) {
        match flow {
            Flow::Inbound => observe(&mut self.observed_inbound, x),
            Flow::Outbound => observe(&mut self.observed_outbound, x),
            Flow::LoopbackInbound | Flow::LoopbackOutbound => {}
        }
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
        let mut p = PodTraffic::default();
        p.add_counts(Flow::Inbound, &delta(3, 3));
        p.add_counts(Flow::LoopbackInbound, &delta(3, 3));
        p.add_counts(Flow::Inbound, &delta(2, 1));
        assert_eq!((p.inbound.requests, p.inbound.responses.success), (5, 4));
        assert_eq!(p.loopback_inbound.requests, 3);
        assert_eq!(p.outbound.requests, 0);
        assert_eq!(p.totals(Flow::Inbound).responses.total(), 4);
    }
}
