//! The kernel maps: exact counters, the connection table, the event ring and self-statistics.
//! Sizes are defaults; the agent may resize them before loading.

use aya_ebpf::{
    macros::map,
    maps::{LruHashMap, PerCpuArray, PerCpuHashMap, RingBuf},
};
use podmeter_common::{CountKey, stat};

use crate::{
    handshake::{Pending, PendingKey},
    state::Connection,
};

/// Exact request/response counters per (cgroup, role, peer, counter), per CPU.
#[map(name = "COUNTS")]
pub static COUNTS: PerCpuHashMap<CountKey, u64> = PerCpuHashMap::with_max_entries(65_536, 0);

/// Per-connection HTTP state, keyed by socket cookie; least recently used entries are evicted.
#[map(name = "CONNECTIONS")]
pub static CONNECTIONS: LruHashMap<u64, Connection> = LruHashMap::with_max_entries(131_072, 0);

/// Per-request events for pairing and latency; lossy by design, losses are counted.
#[map(name = "EVENTS")]
pub static EVENTS: RingBuf = RingBuf::with_byte_size(4 * 1024 * 1024, 0);

/// What the kernel side did and lost, per CPU (indexes in `podmeter_common::stat`).
#[map(name = "STATS")]
pub static STATS: PerCpuArray<u64> = PerCpuArray::with_max_entries(stat::SLOTS, 0);

/// Requests seen on a listening socket, waiting for their connection's `PASSIVE_ESTABLISHED`.
#[map(name = "PENDING")]
pub static PENDING: LruHashMap<PendingKey, Pending> = LruHashMap::with_max_entries(4_096, 0);
