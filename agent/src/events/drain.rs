//! One drain of the ring buffer: its records decoded and paired into exchanges ([`Drain`]), the
//! exchanges attributed to pods, then booked with the drain's own counts into the node state
//! ([`Drained`]). The agent feeds it from the ring; the pipeline bench from synthetic records.

use crate::{
    attribution::{self, flow::Flow},
    books::node::NodeState,
    connections::pairing::{Exchange, Flows},
    events::{self, decode::Event},
    identity::PodId,
};

/// Records read so far in this drain, and the exchanges they completed.
#[derive(Default)]
pub struct Drain {
    received: u64,
    malformed: u64,
    invalid_lines: u64,
    exchanges: Vec<Exchange>,
}

impl Drain {
    /// Decodes one ring record and pairs it with what `flows` holds.
    pub fn add(&mut self, record: &[u8], flows: &mut Flows) {
        self.received += 1;
        let Some(event) = events::decode::decode(record) else {
            self.malformed += 1;
            return;
        };
        if let Event::Request { line, .. } = &event
            && !line.valid
        {
            self.invalid_lines += 1;
        }
        if let Some(x) = flows.on_event(event) {
            self.exchanges.push(x);
        }
    }

    /// Names each exchange's pod (`pod_of` a cgroup id) and flow by [`attribution::attribute`],
    /// the rule the counters follow too. Runs before the node state is locked.
    pub fn finish(self, mut pod_of: impl FnMut(u64) -> Option<PodId>) -> Drained {
        let booked = self
            .exchanges
            .into_iter()
            .filter_map(|x| {
                let (pod, flow) = attribution::attribute(x.cgroup_id, x.role, x.peer, &mut pod_of)?;
                Some((pod, flow, x))
            })
            .collect();
        Drained {
            booked,
            received: self.received,
            malformed: self.malformed,
            invalid_lines: self.invalid_lines,
        }
    }
}

/// A finished drain, ready to book.
pub struct Drained {
    pub booked: Vec<(Option<PodId>, Flow, Exchange)>,
    received: u64,
    malformed: u64,
    invalid_lines: u64,
}

impl Drained {
    /// Books the exchanges and the drain's counts (and the pairing table's) into `state`; a drain
    /// that read nothing changes nothing.
    pub fn book(&self, flows: &Flows, state: &mut NodeState) {
        if self.received == 0 {
            return;
        }
        state.book_exchanges(&self.booked);
        let h = &mut state.health;
        h.events_received += self.received;
        h.events_malformed += self.malformed;
        h.request_lines_invalid += self.invalid_lines;
        h.unpaired_requests = flows.unpaired;
        h.orphan_responses = flows.orphan_responses;
        h.open_requests = flows.open() as u64;
    }
}
