//! Attribution: [`flow`] is the rule that makes each request count once (the socket's role and
//! its peer decide the flow it is booked to), and [`attribute`] applies it to an observation and
//! names its pod, for the counters and the paired events alike.

pub(crate) mod flow;

use self::flow::Flow;
use crate::identity::PodId;

/// The pod (`pod_of` its socket's cgroup; `None`: a socket of no pod) and the flow an observation
/// of a socket with `role` and `peer` is booked to. `None` for roles the kernel could not
/// establish: those are never counted, and their cgroup is not looked up.
pub fn attribute(
    cgroup_id: u64,
    role: u32,
    peer: u16,
    pod_of: impl FnOnce(u64) -> Option<PodId>,
) -> Option<(Option<PodId>, Flow)> {
    let flow = flow::flow(role, peer)?;
    Some((pod_of(cgroup_id), flow))
}

#[cfg(test)]
mod tests {
    use podmeter_common::{peer, role};

    use super::*;

    #[test]
    fn an_unknown_role_is_left_out_before_its_pod_is_looked_up() {
        let web = || Some(PodId::new("shop", "web"));
        assert_eq!(
            attribute(7, role::SERVER, peer::REMOTE, |_| web()),
            Some((web(), Flow::Inbound))
        );
        assert_eq!(
            attribute(7, role::CLIENT, peer::LOOPBACK, |_| None),
            Some((None, Flow::LoopbackOutbound))
        );
        assert_eq!(
            attribute(7, role::UNKNOWN, peer::REMOTE, |_| panic!("looked up")),
            None
        );
    }
}
