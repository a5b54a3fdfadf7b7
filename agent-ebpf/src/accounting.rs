//! Writing what was seen: the flows' exact counters and sums, the latency histogram,
//! self-statistics, and (when turned on) ring buffer events.

use core::intrinsics::{AtomicOrdering, atomic_xadd};

use aya_ebpf::{
    bindings::{BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::generated::bpf_ktime_get_ns,
    programs::SkBuffContext,
};
use podmeter_common::{CountKey, FlowSums, HEAD_LEN, HttpEvent, TIMESTAMP_OFFSET, latency, stat};

use crate::{
    http::PREFIX,
    maps::{EVENTS, FLOW_ZERO, FLOWS, LATENCY, STATS},
};

/// Whether per-request events are written (1) or not (0): set by the agent at load (route labels
/// need them); nothing else depends on them. In read-only data, so the verifier drops the event
/// path from the program when it is 0.
#[unsafe(no_mangle)]
static EVENTS_ON: u32 = 0;

#[inline(always)]
fn events_on() -> bool {
    // SAFETY: reading a plain global; volatile so the compiler keeps the load the loader patches.
    unsafe { core::ptr::read_volatile(&raw const EVENTS_ON) != 0 }
}

/// The reader is woken once per this many bytes of unread events; it also drains on a short
/// timer, so one wake-up serves hundreds of events instead of one each.
const WAKEUP_BYTES: u64 = 64 * 1024;
/// What one event takes in the ring: the record and its 8-byte header, rounded up to 8 bytes.
const RECORD_BYTES: u64 = (size_of::<HttpEvent>() as u64 + 8).next_multiple_of(8);

/// Adds one in place.
#[inline(always)]
fn add(slot: *mut u64) {
    add_n(slot, 1);
}

/// Adds `n` in place. The add is atomic because a softirq (ingress) can interrupt a program
/// running in process context (egress) on the same CPU and touch the same per-CPU slot, and
/// because the latency histogram is shared by all CPUs. Wraps on overflow.
#[inline(always)]
fn add_n(slot: *mut u64, n: u64) {
    // core's AtomicU64 has no fetch_add on the BPF target; the intrinsic lowers to BPF's atomic add.
    // SAFETY: `slot` points into a live map value, 8-byte aligned.
    unsafe { atomic_xadd::<u64, u64, { AtomicOrdering::Relaxed }>(slot, n) };
}

/// Increments one self-statistic.
#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = STATS.get_ptr_mut(index) {
        add(slot);
    }
}

/// The counters and sums of the flow `key` names (its `counter` is 0), created at first use;
/// `None` when the map is full (counted).
#[inline(always)]
fn flow_sums(key: &CountKey) -> Option<*mut FlowSums> {
    if let Some(sums) = FLOWS.get_ptr_mut(key) {
        return Some(sums);
    }
    let zero = FLOW_ZERO.get(0)?;
    // Another CPU may insert the same key first: then the lookup below finds its entry.
    let inserted = FLOWS.insert(key, zero, u64::from(BPF_NOEXIST));
    let sums = FLOWS.get_ptr_mut(key);
    if sums.is_none() && inserted.is_err() {
        bump(stat::FLOW_MAP_FULL);
    }
    sums
}

/// Payload bytes of a connection not yet in its flow's sums.
pub struct Bytes {
    pub request: u32,
    pub response: u32,
}

/// A request of `method` started at `ts` on the flow `key`: counts it, and adds the
/// connection's pending `bytes`.
#[inline(always)]
pub fn flow_started(key: &CountKey, ts: u64, method: u16, bytes: Bytes) {
    let Some(sums) = flow_sums(key) else {
        bump(stat::COUNTER_MAP_FULL);
        return;
    };
    // SAFETY: `sums` points into a live map value; fields are 8-byte aligned. The sum is written
    // before the count: a read between the two is torn, and TIMESTAMP_OFFSET makes that visible.
    unsafe {
        add_n(&raw mut (*sums).start_ns, ts.wrapping_add(TIMESTAMP_OFFSET));
        add(&raw mut (*sums).started);
        if let Some(slot) = (*sums).requests.get_mut(usize::from(method)) {
            add(slot);
        }
        add_bytes(sums, bytes);
    }
}

/// An exchange of `method` on the flow `key` ended at `ts`, by a response of status `class`:
/// counts it, and adds the connection's pending `bytes`. `latency` is `Some` when it ended with
/// a response (it then enters the histogram).
#[inline(always)]
pub fn flow_ended(
    key: &CountKey,
    ts: u64,
    method: u16,
    class: u16,
    latency: Option<u64>,
    bytes: Bytes,
) {
    if let Some(sums) = flow_sums(key) {
        // SAFETY: as in `flow_started`.
        unsafe {
            add_n(&raw mut (*sums).end_ns, ts.wrapping_add(TIMESTAMP_OFFSET));
            add(&raw mut (*sums).ended);
            if let Some(slot) = (*sums)
                .responses
                .get_mut(usize::from(method))
                .and_then(|by_class| by_class.get_mut(usize::from(class)))
            {
                add(slot);
            }
            if let Some(ns) = latency {
                add_n(&raw mut (*sums).latency_ns, ns);
                add(&raw mut (*sums).responded);
            }
            add_bytes(sums, bytes);
        }
    } else {
        bump(stat::COUNTER_MAP_FULL);
    }
    if let Some(ns) = latency {
        observe_latency(key, ns);
    }
}

/// Adds a connection's pending bytes to its flow's sums (outside an exchange's start or end: a
/// long transfer's bytes are added before they reach 4 GiB).
#[inline(always)]
pub fn flow_bytes(key: &CountKey, bytes: Bytes) {
    if let Some(sums) = flow_sums(key) {
        // SAFETY: as in `flow_started`.
        unsafe { add_bytes(sums, bytes) };
    }
}

/// # Safety
/// `sums` points into a live map value.
#[inline(always)]
unsafe fn add_bytes(sums: *mut FlowSums, bytes: Bytes) {
    // SAFETY: as the caller promises.
    unsafe {
        if bytes.request != 0 {
            add_n(&raw mut (*sums).request_bytes, u64::from(bytes.request));
        }
        if bytes.response != 0 {
            add_n(&raw mut (*sums).response_bytes, u64::from(bytes.response));
        }
    }
}

/// Counts one exchange's latency in the flow's histogram bucket.
#[inline(always)]
fn observe_latency(key: &CountKey, ns: u64) {
    let bucket_key = CountKey {
        counter: latency::bucket(ns),
        ..*key
    };
    if let Some(slot) = LATENCY.get_ptr_mut(&bucket_key) {
        add(slot);
        return;
    }
    let inserted = LATENCY.insert(&bucket_key, &0, u64::from(BPF_NOEXIST));
    match LATENCY.get_ptr_mut(&bucket_key) {
        Some(slot) => add(slot),
        None if inserted.is_err() => bump(stat::LATENCY_MAP_FULL),
        None => {}
    }
}

/// What every event carries; [`emit`] writes it.
pub struct Header {
    /// When the segment was seen ([`now`]), or when a parked request was.
    pub ts_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    /// `podmeter_common::event_kind`.
    pub kind: u32,
    pub role: u32,
    pub peer: u16,
    /// Response events only; 0 otherwise.
    pub status_class: u16,
    /// Response events only; 0 otherwise.
    pub status: u32,
}

/// Where the head of a request event comes from. An enum, not a closure: a closure that copies
/// packet bytes was not inlined, and as a BPF subprogram its stack added to the caller's went past
/// the verifier's 512 bytes.
pub enum Head<'a> {
    /// Not a request: no head.
    None,
    /// The request's segment: `len` payload bytes at `off`.
    Payload {
        ctx: &'a SkBuffContext,
        off: u32,
        len: u32,
    },
    /// The prefix of a request parked on a listener (see `handshake`).
    Parked(&'a [u8; PREFIX]),
}

/// The clock of event timestamps (CLOCK_MONOTONIC).
#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper without arguments.
    unsafe { bpf_ktime_get_ns() }
}

/// The one place events are written, when they are on: reserves an event, writes `header` and the request's
/// `head`, and submits it; counts it as dropped when the ring is full. Returns nothing: the
/// counters, not the events, are the source of truth.
#[inline(always)]
pub fn emit(header: &Header, head: Head<'_>) {
    if !events_on() {
        return;
    }
    let Some(mut entry) = EVENTS.reserve::<HttpEvent>(0) else {
        bump(stat::EVENTS_DROPPED);
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` is a reserved ring buffer entry; every field but `head` is written here, and
    // userspace reads only the `head_len` bytes of `head` written here.
    unsafe {
        (*ev).ts_ns = header.ts_ns;
        (*ev).cookie = header.cookie;
        (*ev).cgroup_id = header.cgroup_id;
        (*ev).kind = header.kind;
        (*ev).role = header.role;
        (*ev).peer = header.peer;
        (*ev).status_class = header.status_class;
        (*ev).status = header.status;
        (*ev)._reserved = 0;
        (*ev).head_len = match head {
            Head::None => 0,
            Head::Payload { ctx, off, len } => copy_head(ctx, off, len, &mut (*ev).head),
            Head::Parked(prefix) => {
                (&mut (*ev).head)[..PREFIX].copy_from_slice(prefix);
                PREFIX as u32
            }
        };
    }
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

/// Copies the start of the payload into `head`: the largest fixed-size chunk that fits, because
/// the verifier rejects a variable-length `bpf_skb_load_bytes` whose length it cannot bound.
#[inline(always)]
fn copy_head(ctx: &SkBuffContext, off: u32, len: u32, head: &mut [u8; HEAD_LEN]) -> u32 {
    macro_rules! chunk {
        ($n:literal) => {
            if len >= $n {
                return match ctx.load::<[u8; $n]>(off as usize) {
                    Ok(bytes) => {
                        head[..$n].copy_from_slice(&bytes);
                        $n
                    }
                    Err(_) => 0,
                };
            }
        };
    }
    chunk!(96);
    chunk!(64);
    chunk!(48);
    chunk!(32);
    chunk!(24);
    chunk!(16);
    chunk!(8);
    chunk!(4);
    0
}

const _: () = assert!(PREFIX <= HEAD_LEN);
