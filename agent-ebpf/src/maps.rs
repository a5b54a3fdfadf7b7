//! The kernel maps: the flows' counters and sums, the latency histogram, the connection table, the
//! event ring and self-statistics.
//! Sizes are defaults; the agent may resize them before loading.
//!
//! A map's name is its static's name (`#[map(name = ...)]` takes only a literal, not the shared
//! constant); `shared_name!` checks at compile time that it is the one in
//! `podmeter_common::names`, which userspace looks maps up by.

use aya_ebpf::{
    bindings::BPF_F_NO_PREALLOC,
    macros::map,
    maps::{Array, HashMap, LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use podmeter_common::{Connection, CountKey, FlowSums, SegmentEnds, names, stat};

use crate::handshake::{Pending, PendingKey};

/// Per (cgroup, role, peer), per CPU: the exact counters (requests by method, ended exchanges by
/// method and status class), the in-flight time-integral, the latency sum and payload bytes.
/// Allocated as flows appear: a value is 704 bytes per CPU.
#[map]
pub static FLOWS: PerCpuHashMap<CountKey, FlowSums> =
    PerCpuHashMap::with_max_entries(16_384, BPF_F_NO_PREALLOC);

/// One zeroed [`FlowSums`], never written: a new flow's value is copied from it (the eBPF stack
/// has no room for one).
#[map]
pub static FLOW_ZERO: Array<FlowSums> = Array::with_max_entries(1, 0);

/// Latency histogram: exchanges per (cgroup, role, peer, `latency::bucket`), shared by all CPUs
/// (atomic adds) and allocated as buckets are used: a flow uses a few dozen of the 1,728.
#[map]
pub static LATENCY: HashMap<CountKey, u64> = HashMap::with_max_entries(262_144, BPF_F_NO_PREALLOC);

/// Per-connection HTTP state, keyed by socket cookie; least recently used entries are evicted.
#[map]
pub static CONNECTIONS: LruHashMap<u64, Connection> = LruHashMap::with_max_entries(131_072, 0);

/// Per-request events for route labels (off unless asked for); lossy by design, losses are
/// counted.
#[map]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// What the kernel side did and lost, per CPU (indexes in `podmeter_common::stat`).
#[map]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::SLOTS, 0);

/// Requests seen on a listening socket, waiting for their connection's `PASSIVE_ESTABLISHED`.
#[map]
pub static PENDING: LruHashMap<PendingKey, Pending> = LruHashMap::with_max_entries(4_096, 0);

/// The cgroups of the node's own processes (kubelet, node agents: cgroups of no pod), written by
/// the agent. A connection one of them opens is recorded in `NODE_CLIENTS`.
#[map]
pub static NODE_CGROUPS: HashMap<u64, u8> = HashMap::with_max_entries(4_096, 0);

/// Connections the node's own processes opened, until the server's socket on this node sees
/// their first request (and removes the entry). Entries to servers elsewhere age out.
#[map]
pub static NODE_CLIENTS: LruHashMap<SegmentEnds, u8> = LruHashMap::with_max_entries(4_096, 0);

shared_name!(CONNECTIONS, names::CONNECTIONS);
shared_name!(EVENTS, names::EVENTS);
shared_name!(STATS, names::STATS);
shared_name!(PENDING, names::PENDING);
shared_name!(FLOWS, names::FLOWS);
shared_name!(LATENCY, names::LATENCY);
shared_name!(NODE_CGROUPS, names::NODE_CGROUPS);
shared_name!(NODE_CLIENTS, names::NODE_CLIENTS);

/// Checks at compile time that the map or program `$item`, whose ELF name is its Rust name, is
/// named `$shared`, the name userspace looks it up by. Naming `$item` makes a rename fail here.
macro_rules! shared_name {
    ($item:ident, $shared:path) => {
        const _: () = {
            let _ = &$item;
            assert!($crate::maps::same_name(stringify!($item), $shared));
        };
    };
}
pub(crate) use shared_name;

/// Whether two names are equal; `==` on `str` is not usable in constants.
pub const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}
