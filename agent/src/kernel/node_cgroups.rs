//! The kernel's set of the node's own cgroups (`NODE_CGROUPS`): the cgroups of no pod, where the
//! kubelet and node agents run. A connection one of them opens to a pod on this node is booked by
//! the server's socket under the `NODE` peer class: kubelet probes and node agents' requests stay
//! out of the pod's inbound rate.
//!
//! Which cgroups are a pod's is told by their path alone, never by whether the pod is known yet:
//! a new pod's cgroup taken for the node's would drop that pod's requests to its peers from their
//! rates. A cgroup created since the last sync is not in the set, so its connections count as
//! ordinary traffic until the next one: the error, if any, is on the side of counting.

use std::collections::HashSet;

use aya::maps::{HashMap, MapData};
use tracing::warn;

/// The kernel's `NODE_CGROUPS` and what the agent wrote to it.
pub struct NodeCgroups {
    map: HashMap<MapData, u64, u8>,
    written: HashSet<u64>,
    warned_full: bool,
}

impl NodeCgroups {
    /// Takes over the kernel's set as it is: a previous agent's, kept pinned, stays in force
    /// until the first [`NodeCgroups::sync`] corrects it.
    pub fn new(map: HashMap<MapData, u64, u8>) -> Self {
        let written = map.keys().filter_map(Result::ok).collect();
        Self {
            map,
            written,
            warned_full: false,
        }
    }

    /// Makes the kernel's set exactly `node` (ids of the node's own cgroups).
    pub fn sync(&mut self, node: &HashSet<u64>) {
        let gone: Vec<u64> = self.written.difference(node).copied().collect();
        for id in gone {
            let _ = self.map.remove(&id);
            self.written.remove(&id);
        }
        for &id in node {
            if self.written.contains(&id) {
                continue;
            }
            match self.map.insert(&id, &1, 0) {
                Ok(()) => {
                    self.written.insert(id);
                }
                Err(e) if !self.warned_full => {
                    self.warned_full = true;
                    warn!(
                        error = %e,
                        cgroups = node.len(),
                        "cannot add a node cgroup to the kernel's set (full at 4,096?): requests \
                         from it to pods count as traffic, not as the node's"
                    );
                }
                Err(_) => {}
            }
        }
    }

    /// How many cgroups the kernel's set holds.
    pub fn len(&self) -> usize {
        self.written.len()
    }
}
