//! Per-pod traffic totals, all exact from the kernel: requests, how exchanges ended, methods,
//! latency sums and payload bytes; and, when events are on (route labels), the status codes the
//! paired events tell.

use std::borrow::Cow;

use podmeter_common::{method, status_class};
pub use podmeter_wire::{FlowTotals, Observed, StatusCounts};

use crate::{
    attribution::flow::Flow,
    connections::pairing::{Exchange, Outcome},
    kernel::{counters::Counts, flow_sums::FlowDelta},
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

/// Adds exact counter deltas to what is known of a flow's exchanges: methods and how they ended.
fn observe_counts(observed: &mut Observed, delta: &Counts) {
    for (id, &n) in (0u16..).zip(&delta.by_method) {
        if n == 0 {
            continue;
        }
        if let Some(name) = method::name(id) {
            *observed.by_method.entry(Cow::Borrowed(name)).or_default() += n;
        }
    }
    let none = delta.responses[usize::from(status_class::NONE)];
    let other = delta.responses[usize::from(status_class::OTHER)];
    observed.exchanges += delta.responses.iter().sum::<u64>() - none;
    observed.no_response += none;
    observed.unrecognised_response += other;
}

/// Adds a paired exchange's status code (events are on only with route labels).
fn observe(observed: &mut Observed, x: &Exchange) {
    if let Outcome::Status(s) = x.outcome {
        *observed.by_status.entry(s).or_default() += 1;
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
    /// Requests served to the node itself (kubelet probes, node agents); not part of `inbound`.
    pub node_inbound: FlowTotals,
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
            Flow::NodeInbound => &self.node_inbound,
        }
    }

    fn totals_mut(&mut self, flow: Flow) -> &mut FlowTotals {
        match flow {
            Flow::Inbound => &mut self.inbound,
            Flow::Outbound => &mut self.outbound,
            Flow::LoopbackInbound => &mut self.loopback_inbound,
            Flow::LoopbackOutbound => &mut self.loopback_outbound,
            Flow::NodeInbound => &mut self.node_inbound,
        }
    }

    /// What is known of a flow's exchanges; loopback and node flows are not observed apart.
    fn observed_mut(&mut self, flow: Flow) -> Option<&mut Observed> {
        match flow {
            Flow::Inbound => Some(&mut self.observed_inbound),
            Flow::Outbound => Some(&mut self.observed_outbound),
            Flow::LoopbackInbound | Flow::LoopbackOutbound | Flow::NodeInbound => None,
        }
    }

    /// Books exact counter deltas.
    pub fn add_counts(&mut self, flow: Flow, delta: &Counts) {
        add_counts(self.totals_mut(flow), delta);
        if let Some(observed) = self.observed_mut(flow) {
            observe_counts(observed, delta);
        }
    }

    /// Books what changed in a flow's kernel sums: bytes, and the latency sum and count.
    pub fn add_flow(&mut self, flow: Flow, delta: &FlowDelta) {
        let totals = self.totals_mut(flow);
        totals.request_bytes += delta.request_bytes;
        totals.response_bytes += delta.response_bytes;
        if let Some(observed) = self.observed_mut(flow) {
            observed.latency_seconds_sum += delta.latency_ns as f64 / 1e9;
            observed.latency_count += delta.responded;
        }
    }

    /// Books a paired exchange's status code.
    pub fn add_exchange(&mut self, flow: Flow, x: &Exchange) {
        if let Some(observed) = self.observed_mut(flow) {
            observe(observed, x);
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
        p.add_counts(Flow::NodeInbound, &delta(4, 4));
        p.add_counts(Flow::Inbound, &delta(2, 1));
        assert_eq!((p.inbound.requests, p.inbound.responses.success), (5, 4));
        assert_eq!(p.loopback_inbound.requests, 3);
        assert_eq!(p.node_inbound.requests, 4);
        assert_eq!(p.observed_inbound.exchanges, 4);
        assert_eq!(p.outbound.requests, 0);
        assert_eq!(p.totals(Flow::Inbound).responses.total(), 4);
    }
}
