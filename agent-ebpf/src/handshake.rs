//! Requests that arrive before their connection exists.
//!
//! When the final ACK of a handshake is lost, the client's first data segment completes the
//! handshake: the kernel runs the cgroup ingress filter on it against the *listening* socket, and
//! only afterwards creates the connection's socket and calls `PASSIVE_ESTABLISHED`. Such a request
//! is counted when seen and parked here by its 4-tuple; `PASSIVE_ESTABLISHED` moves it onto the
//! new connection, which then awaits its response like any other and skips retransmissions of it.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_ANY, bpf_sock_ops},
    helpers::generated::bpf_sk_fullsock,
    programs::{SkBuffContext, SockOpsContext},
};
use podmeter_common::{Connection, connection_flag as flag, event_kind, phase, role, stat};

use crate::{
    accounting::{Head, Header, bump, emit},
    http::PREFIX,
    maps::{CONNECTIONS, PENDING},
    packet::{AF_INET, AF_INET6, Segment},
};

const TCP_LISTEN: u32 = 10;

#[repr(C)]
#[derive(Clone, Copy)]
pub struct PendingKey {
    pub remote: [u8; 16],
    pub family: u32,
    pub remote_port: u16,
    pub local_port: u16,
}

#[repr(C)]
#[derive(Clone, Copy)]
pub struct Pending {
    pub ts_ns: u64,
    pub cgroup_id: u64,
    pub req_seq: u32,
    pub peer: u16,
    pub method: u16,
    /// Payload bytes of the parked segment.
    pub len: u32,
    /// What it acknowledges: the response's first sequence number.
    pub ack: u32,
    pub prefix: [u8; PREFIX],
}

/// Is the packet's socket a listener (the connection not created yet)?
#[inline(always)]
pub fn on_listener(ctx: &SkBuffContext) -> bool {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: reading the context's socket pointer and, through the helper, its state.
    unsafe {
        let sk = (*skb).__bindgen_anon_2.sk;
        if sk.is_null() {
            return false;
        }
        let full = bpf_sk_fullsock(sk);
        !full.is_null() && (*full).state == TCP_LISTEN
    }
}

/// Parks a request seen on a listener at `ts`. Returns false when the same request was parked
/// already (a retransmission), so the caller does not count it again.
#[inline(always)]
pub fn park(
    seg: &Segment,
    prefix: &[u8; PREFIX],
    cgroup_id: u64,
    peer: u16,
    method: u16,
    ts: u64,
) -> bool {
    let key = PendingKey {
        remote: seg.ends.src,
        family: seg.family,
        remote_port: seg.ends.src_port,
        local_port: seg.ends.dst_port,
    };
    // SAFETY: read-only look-up of a plain value.
    if let Some(old) = unsafe { PENDING.get(&key) }
        && old.req_seq == seg.seq
    {
        bump(stat::RETRANSMISSIONS_SKIPPED);
        return false;
    }
    let pending = Pending {
        ts_ns: ts,
        cgroup_id,
        req_seq: seg.seq,
        peer,
        method,
        len: seg.payload_len,
        ack: seg.ack,
        prefix: *prefix,
    };
    let _ = PENDING.insert(&key, &pending, u64::from(BPF_ANY));
    bump(stat::LISTENER_REQUESTS);
    true
}

/// At `PASSIVE_ESTABLISHED`: moves a parked request onto the new connection. Returns true if it
/// created the connection's state.
#[inline(always)]
pub fn adopt(ctx: &SockOpsContext, cookie: u64) -> bool {
    let ops = ctx.as_ptr().cast::<bpf_sock_ops>();
    // Volatile reads keep each context access a constant offset from the context pointer, which
    // the verifier requires (LLVM would otherwise merge the v4 and v6 paths into computed
    // offsets).
    // SAFETY: reading fields of the program's own context.
    let field = |f: *const u32| unsafe { core::ptr::read_volatile(f) };
    // SAFETY: taking field addresses of the program's own context, without reading.
    let (family, ip4, ip6) = unsafe {
        (
            field(&raw const (*ops).family),
            field(&raw const (*ops).remote_ip4),
            [
                field(&raw const (*ops).remote_ip6[0]),
                field(&raw const (*ops).remote_ip6[1]),
                field(&raw const (*ops).remote_ip6[2]),
                field(&raw const (*ops).remote_ip6[3]),
            ],
        )
    };
    let mut remote = [0u8; 16];
    if family == AF_INET {
        remote[..4].copy_from_slice(&ip4.to_ne_bytes());
    } else if family == AF_INET6 {
        remote[..4].copy_from_slice(&ip6[0].to_ne_bytes());
        remote[4..8].copy_from_slice(&ip6[1].to_ne_bytes());
        remote[8..12].copy_from_slice(&ip6[2].to_ne_bytes());
        remote[12..].copy_from_slice(&ip6[3].to_ne_bytes());
    } else {
        return false;
    }
    // sock_ops gives the remote port in network order in the upper 16 bits, the local one in host
    // order.
    let remote_port = u16::from_be((ctx.remote_port() >> 16) as u16);
    let key = PendingKey {
        remote,
        family,
        remote_port,
        local_port: ctx.local_port() as u16,
    };
    // SAFETY: read-only look-up of a plain value, copied out before the entry is removed.
    let Some(p) = (unsafe { PENDING.get(&key) }).copied() else {
        return false;
    };
    let _ = PENDING.remove(&key);
    // The parked segment's bytes are the connection's first; later ones count from its end.
    let conn = Connection {
        cgroup_id: p.cgroup_id,
        req_ts: p.ts_ns,
        role: role::SERVER,
        phase: phase::AWAITING_RESPONSE,
        peer: p.peer,
        method: p.method,
        flags: flag::REQ_SEQ | flag::REQ_EDGE | flag::RESP_EDGE | flag::PEER,
        req_seq: p.req_seq,
        req_edge: p.req_seq.wrapping_add(p.len),
        resp_edge: p.ack,
        req_bytes: p.len,
        ..Connection::new(role::SERVER)
    };
    if CONNECTIONS
        .insert(&cookie, &conn, u64::from(BPF_ANY))
        .is_err()
    {
        bump(stat::CONNECTION_TABLE_FULL);
        return false;
    }
    let header = Header {
        ts_ns: p.ts_ns,
        cookie,
        cgroup_id: p.cgroup_id,
        kind: event_kind::REQUEST,
        role: role::SERVER,
        peer: p.peer,
        status_class: 0,
        status: 0,
    };
    emit(&header, Head::Parked(&p.prefix));
    true
}
