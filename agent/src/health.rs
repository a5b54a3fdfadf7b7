//! The agent's own health: what the kernel programs and the userspace pipeline did and lost.

use crate::kernel::counters::KernelStats;

/// The agent's own health, from the kernel statistics and the userspace pipeline.
#[derive(Clone, Debug, Default)]
pub struct Health {
    pub kernel: KernelStats,
    pub events_received: u64,
    pub events_malformed: u64,
    pub request_lines_invalid: u64,
    pub unpaired_requests: u64,
    pub orphan_responses: u64,
    pub open_requests: u64,
    pub counter_entries: u64,
    pub counter_entries_removed: u64,
    /// Size of the ring buffer's data area.
    pub ring_capacity_bytes: u64,
    /// Bytes written to the ring buffer and not yet read, just before the latest drain.
    pub ring_used_bytes: u64,
    /// Entries in the kernel's connection table at the latest count.
    pub connections_tracked: u64,
    /// Connections the full table evicted, derived as opened - closed - tracked.
    pub connections_evicted: u64,
    /// Pods removed after the grace period.
    pub pods_removed: u64,
}
