//! Writing what was seen: exact counters, self-statistics, and ring buffer events.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP};
use podmeter_common::{CountKey, HttpEvent, stat};

use crate::maps::{COUNTS, EVENTS, STATS};

/// The reader is woken once per this many bytes of unread events; it also drains on a short
/// timer, so one wake-up serves hundreds of events instead of one each.
const WAKEUP_BYTES: u64 = 64 * 1024;
/// What one event takes in the ring: the record and its 8-byte header, rounded up to 8 bytes.
const RECORD_BYTES: u64 = (size_of::<HttpEvent>() as u64 + 8).next_multiple_of(8);

/// Adds one in place. The add is atomic because a softirq (ingress) can interrupt a program
/// running in process context (egress) on the same CPU and touch the same per-CPU slot.
#[inline(always)]
fn add(slot: *mut u64) {
    // core's AtomicU64 has no fetch_add on the BPF target; the intrinsic lowers to BPF's atomic add.
    // SAFETY: `slot` points into a live map value, 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, 1) };
}

/// Increments one self-statistic.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        add(slot);
    }
}

/// Increments the counter named by `key`.
#[inline(always)]
pub fn count(key: &CountKey) {
    if let Some(slot) = COUNTS.get_ptr_mut(key) {
        add(slot);
        return;
    }
    // Another CPU may insert the same key first: then the lookup below finds its entry.
    let inserted = COUNTS.insert(key, &0, u64::from(BPF_NOEXIST));
    match COUNTS.get_ptr_mut(key) {
        Some(slot) => add(slot),
        None if inserted.is_err() => bump(stat::COUNTER_MAP_FULL),
        None => {}
    }
}

/// Reserves an event, lets `fill` write it, and submits it; counts it as dropped when the ring is
/// full. Returns nothing: the counters, not the events, are the source of truth.
#[inline(always)]
pub fn emit(fill: impl FnOnce(*mut HttpEvent)) {
    let Some(mut entry) = EVENTS.reserve::<HttpEvent>(0) else {
        bump(stat::EVENTS_DROPPED);
        return;
    };
    fill(entry.as_mut_ptr());
    // Unread bytes, this event included: wake the reader only on the event that takes them past
    // a multiple of WAKEUP_BYTES. Waking on every event past the first multiple cost a self-IPI
    // per event (about 400 ns) until the reader ran. A crossing missed to a race between CPUs
    // is caught at the next multiple or by the reader's timer.
    let unread = EVENTS.query(u64::from(BPF_RB_AVAIL_DATA));
    let flags = if unread / WAKEUP_BYTES != unread.saturating_sub(RECORD_BYTES) / WAKEUP_BYTES {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    entry.submit(u64::from(flags));
    bump(stat::EVENTS_SENT);
}
