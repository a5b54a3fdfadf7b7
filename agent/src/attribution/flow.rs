//! The rule that makes every request count exactly once.
//!
//! The kernel classifies each observation by the socket that saw it:
//! - a request *received* on a socket that accepted its connection is a **server-side**
//!   observation: inbound traffic of the pod that owns the socket;
//! - a request *sent* on a socket that opened its connection is a **client-side** observation:
//!   outbound traffic of that pod.
//!
//! A pod's inbound request rate (what the HPA scales on) counts server-side observations only.
//! A request between two pods on the same node is seen twice by the kernel, once by each socket,
//! and so counts once as the server's inbound and once as the client's outbound, never twice for
//! anyone. Requests over the loopback device never left the pod's network namespace (a sidecar
//! handing a request to its app): they are kept apart and add nothing to inbound or outbound.
//! Connections opened before the agent started get their role from the direction of their first
//! request.
//!
//! Requests a pod served to the node itself (the client a process in a cgroup of no pod: kubelet
//! probes, node agents) are kept apart as well, so that probes add nothing to the per-pod QPS. The
//! kernel tells them on server sockets only, from the client's socket it saw on this node.

use podmeter_common::{peer, role};

/// Where an observation is booked for its pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Flow {
    /// Requests this pod served to others: the per-pod QPS.
    Inbound,
    /// Requests this pod sent to others.
    Outbound,
    /// Requests served to a peer inside the same pod (over loopback).
    LoopbackInbound,
    /// Requests sent to a peer inside the same pod (over loopback).
    LoopbackOutbound,
    /// Requests this pod served to the node itself: kubelet probes and node agents; not part of
    /// `Inbound`, so probes add nothing to the per-pod QPS.
    NodeInbound,
}

impl Flow {
    /// How many flows there are: per-flow arrays have this length.
    pub const COUNT: usize = 5;

    /// The flow's place in a per-flow array.
    pub fn index(self) -> usize {
        match self {
            Flow::Inbound => 0,
            Flow::Outbound => 1,
            Flow::LoopbackInbound => 2,
            Flow::LoopbackOutbound => 3,
            Flow::NodeInbound => 4,
        }
    }
}

/// Books an observation by the role of its socket and its peer class; `None` for roles the kernel
/// could not establish (such entries are never counted).
pub fn flow(socket_role: u32, peer_class: u16) -> Option<Flow> {
    match (socket_role, peer_class) {
        (role::SERVER, peer::REMOTE) => Some(Flow::Inbound),
        (role::CLIENT, peer::REMOTE) => Some(Flow::Outbound),
        (role::SERVER, peer::LOOPBACK) => Some(Flow::LoopbackInbound),
        (role::CLIENT, peer::LOOPBACK) => Some(Flow::LoopbackOutbound),
        (role::SERVER, peer::NODE) => Some(Flow::NodeInbound),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_side_is_inbound_and_client_side_is_outbound() {
        assert_eq!(flow(role::SERVER, peer::REMOTE), Some(Flow::Inbound));
        assert_eq!(flow(role::CLIENT, peer::REMOTE), Some(Flow::Outbound));
    }

    #[test]
    fn loopback_never_adds_to_inbound_or_outbound() {
        assert_eq!(
            flow(role::SERVER, peer::LOOPBACK),
            Some(Flow::LoopbackInbound)
        );
        assert_eq!(
            flow(role::CLIENT, peer::LOOPBACK),
            Some(Flow::LoopbackOutbound)
        );
    }

    #[test]
    fn requests_served_to_the_node_never_add_to_inbound() {
        assert_eq!(flow(role::SERVER, peer::NODE), Some(Flow::NodeInbound));
        // The kernel tells the node only on server sockets.
        assert_eq!(flow(role::CLIENT, peer::NODE), None);
    }

    #[test]
    fn every_flow_has_its_own_index() {
        let flows = [
            Flow::Inbound,
            Flow::Outbound,
            Flow::LoopbackInbound,
            Flow::LoopbackOutbound,
            Flow::NodeInbound,
        ];
        let mut indices = flows.map(Flow::index);
        indices.sort_unstable();
        assert_eq!(indices, std::array::from_fn::<_, { Flow::COUNT }, _>(|i| i));
    }

    #[test]
    fn unknown_role_is_not_booked() {
        assert_eq!(flow(role::UNKNOWN, peer::REMOTE), None);
        assert_eq!(flow(7, peer::REMOTE), None);
    }
}
