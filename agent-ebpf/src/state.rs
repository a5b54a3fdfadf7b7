//! The per-connection state machine that decides which request/response starts are real.
//!
//! A connection alternates between `IDLE` (a request may start) and `AWAITING_RESPONSE`. A
//! request start counts only when `IDLE` and not a retransmission, so body bytes that look like
//! `GET / HTTP/1.1` never count. A final response (status >= 200) returns to `IDLE`; interim 1xx
//! responses do not. `101 Switching Protocols` ends HTTP/1.x parsing on that connection.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::generated::{bpf_get_socket_cookie, bpf_ktime_get_ns, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use podmeter_common::{CountKey, HEAD_LEN, counter, event_kind, peer, role, stat, status_class};

use crate::{
    accounting::{bump, count, emit},
    handshake,
    http::{self, CONTINUE_LEN, PREFIX},
    maps::CONNECTIONS,
    packet::{self, Segment},
};

/// Phases of [`Connection::phase`].
pub mod phase {
    pub const IDLE: u32 = 0;
    pub const AWAITING_RESPONSE: u32 = 1;
    pub const UPGRADED: u32 = 2;
}

/// Bits of [`Connection::flags`].
pub mod flag {
    /// `req_seq` holds the sequence number of the last counted request start.
    pub const REQ_SEQ: u32 = 1;
    /// `resp_seq` holds the sequence number of the last response start.
    pub const RESP_SEQ: u32 = 2;
    /// Response-direction data that is not an interim response arrived while awaiting a
    /// response: the server answered, even if its status line was not recognised.
    pub const RESPONSE_DATA: u32 = 4;
}

/// Value of the `CONNECTIONS` map.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct Connection {
    /// cgroup of the socket, set at the first request (sock_ops does not know it).
    pub cgroup_id: u64,
    pub role: u32,
    pub phase: u32,
    pub peer: u16,
    pub _reserved: u16,
    pub flags: u32,
    pub req_seq: u32,
    pub resp_seq: u32,
}

impl Connection {
    pub const fn new(role: u32) -> Self {
        Self {
            cgroup_id: 0,
            role,
            phase: phase::IDLE,
            peer: peer::REMOTE,
            _reserved: 0,
            flags: 0,
            req_seq: 0,
            resp_seq: 0,
        }
    }

    fn key(&self, counter: u16) -> CountKey {
        CountKey {
            cgroup_id: self.cgroup_id,
            role: self.role,
            peer: self.peer,
            counter,
        }
    }
}

/// Is `seq` at or before `last` (modulo 2^32)? Then the segment was seen already.
#[inline(always)]
fn already_seen(valid: bool, last: u32, seq: u32) -> bool {
    valid && (seq.wrapping_sub(last) as i32) <= 0
}

/// Handles one packet of a socket in the attached cgroup tree.
#[inline(always)]
pub fn on_packet(ctx: &SkBuffContext, ingress: bool) {
    let Some(seg) = packet::parse(ctx) else {
        return;
    };
    let Some(prefix) = http::load_prefix(ctx, seg.payload_off, seg.payload_len) else {
        return;
    };
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: helpers called with the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(skb.cast()) };
    if cookie == 0 {
        return;
    }
    if ingress && handshake::on_listener(ctx) {
        if http::is_request_start(&prefix, seg.payload_len) {
            let (cgroup_id, conn_peer) = socket_cgroup_and_peer(skb, &seg);
            if handshake::park(&seg, &prefix, cgroup_id, conn_peer) {
                count(&CountKey {
                    cgroup_id,
                    role: role::SERVER,
                    peer: conn_peer,
                    counter: counter::REQUESTS,
                });
            }
        }
        return;
    }
    let conn = match CONNECTIONS.get_ptr_mut(&cookie) {
        Some(c) => c,
        None => {
            // Opened before the agent started, or evicted: the direction of the first request
            // tells the role (a request is received by servers and sent by clients).
            if !http::is_request_start(&prefix, seg.payload_len) {
                return;
            }
            let conn_role = if ingress { role::SERVER } else { role::CLIENT };
            if CONNECTIONS
                .insert(&cookie, &Connection::new(conn_role), u64::from(BPF_NOEXIST))
                .is_err()
            {
                bump(stat::CONNECTION_TABLE_FULL);
            } else {
                bump(stat::CONNECTIONS_OPENED);
            }
            match CONNECTIONS.get_ptr_mut(&cookie) {
                Some(c) => c,
                None => return,
            }
        }
    };
    // SAFETY: points into a live LRU map value; concurrent writers on the same connection are
    // causally ordered by HTTP (a response follows its request).
    let conn = unsafe { &mut *conn };
    if conn.phase == phase::UPGRADED {
        return;
    }
    let request_direction = (conn.role == role::SERVER) == ingress;
    if request_direction {
        on_request_direction(ctx, skb, &seg, &prefix, conn, cookie, ingress);
    } else {
        on_response_direction(ctx, &seg, &prefix, conn, cookie, ingress);
    }
}

/// The socket's cgroup, and whether the packet crossed the loopback device (the peer is in the
/// same network namespace) or carries a loopback address.
#[inline(always)]
fn socket_cgroup_and_peer(skb: *mut __sk_buff, seg: &Segment) -> (u64, u16) {
    // SAFETY: helper called with, and a field read from, the program's own context.
    let (cgroup_id, ifindex) = unsafe { (bpf_skb_cgroup_id(skb), (*skb).ifindex) };
    let conn_peer = if ifindex == 1 || seg.has_loopback_address() {
        peer::LOOPBACK
    } else {
        peer::REMOTE
    };
    (cgroup_id, conn_peer)
}

#[inline(always)]
fn on_request_direction(
    ctx: &SkBuffContext,
    skb: *mut __sk_buff,
    seg: &Segment,
    prefix: &[u8; PREFIX],
    conn: &mut Connection,
    cookie: u64,
    ingress: bool,
) {
    if !http::is_request_start(prefix, seg.payload_len) {
        return;
    }
    if already_seen(conn.flags & flag::REQ_SEQ != 0, conn.req_seq, seg.seq) {
        bump(stat::RETRANSMISSIONS_SKIPPED);
        return;
    }
    if conn.phase == phase::AWAITING_RESPONSE {
        if conn.flags & flag::RESPONSE_DATA == 0 {
            // Still waiting for the answer: this is body data (or pipelining), not a request.
            bump(stat::BODY_MATCHES_SKIPPED);
            return;
        }
        // The server answered but its status line went unrecognised: end that exchange.
        end_exchange(conn, cookie, ingress, seg, status_class::OTHER, 0);
        bump(stat::RESPONSES_UNRECOGNISED);
    }
    (conn.cgroup_id, conn.peer) = socket_cgroup_and_peer(skb, seg);
    conn.phase = phase::AWAITING_RESPONSE;
    conn.req_seq = seg.seq;
    conn.flags = (conn.flags | flag::REQ_SEQ) & !flag::RESPONSE_DATA;
    count(&conn.key(counter::REQUESTS));
    let payload_off = seg.payload_off;
    let payload_len = seg.payload_len;
    emit(|ev| {
        fill(ev, conn, cookie, ingress, seg, event_kind::REQUEST, 0);
        // SAFETY: `ev` is a reserved ring buffer entry.
        unsafe { (*ev).head_len = copy_head(ctx, payload_off, payload_len, &mut (*ev).head) };
    });
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

#[inline(always)]
fn on_response_direction(
    ctx: &SkBuffContext,
    seg: &Segment,
    prefix: &[u8; PREFIX],
    conn: &mut Connection,
    cookie: u64,
    ingress: bool,
) {
    if conn.phase != phase::AWAITING_RESPONSE {
        return;
    }
    let Some(mut status) = http::response_status(prefix, seg.payload_len) else {
        conn.flags |= flag::RESPONSE_DATA;
        return;
    };
    if already_seen(conn.flags & flag::RESP_SEQ != 0, conn.resp_seq, seg.seq) {
        return;
    }
    conn.resp_seq = seg.seq;
    conn.flags |= flag::RESP_SEQ;
    if status == 100 && seg.payload_len >= CONTINUE_LEN + 13 {
        // `100 Continue` and the final response written in one segment.
        if let Some(next) = http::load_prefix(
            ctx,
            seg.payload_off + CONTINUE_LEN,
            seg.payload_len - CONTINUE_LEN,
        )
        .and_then(|p| http::response_status(&p, seg.payload_len - CONTINUE_LEN))
        {
            status = next;
        }
    }
    if status == 101 {
        end_exchange(conn, cookie, ingress, seg, status_class::of(status), status);
        conn.phase = phase::UPGRADED;
        bump(stat::CONNECTIONS_UPGRADED);
        return;
    }
    if status < 200 {
        return; // interim response: the request goes on
    }
    end_exchange(conn, cookie, ingress, seg, status_class::of(status), status);
}

/// Counts the end of the current exchange with `slot` and reports it.
#[inline(always)]
fn end_exchange(
    conn: &mut Connection,
    cookie: u64,
    ingress: bool,
    seg: &Segment,
    class: u16,
    status: u32,
) {
    conn.phase = phase::IDLE;
    count(&conn.key(counter::responses(class)));
    emit(|ev| {
        fill(ev, conn, cookie, ingress, seg, event_kind::RESPONSE, status);
        // SAFETY: `ev` is a reserved ring buffer entry.
        unsafe { (*ev).status_class = class };
    });
}

/// Ends the connection: an exchange still waiting for its response ends with no status.
#[inline(always)]
pub fn on_close(cookie: u64) {
    let Some(conn) = CONNECTIONS.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: points into a live LRU map value.
    let conn = unsafe { &mut *conn };
    if conn.phase == phase::AWAITING_RESPONSE {
        let class = if conn.flags & flag::RESPONSE_DATA != 0 {
            status_class::OTHER
        } else {
            status_class::NONE
        };
        count(&conn.key(counter::responses(class)));
        let (cgroup_id, conn_role, conn_peer) = (conn.cgroup_id, conn.role, conn.peer);
        emit(|ev| {
            // SAFETY: `ev` is a reserved ring buffer entry; every field is written.
            unsafe {
                ev.write(core::mem::zeroed());
                (*ev).ts_ns = bpf_ktime_get_ns();
                (*ev).cookie = cookie;
                (*ev).cgroup_id = cgroup_id;
                (*ev).kind = event_kind::CLOSED_WITHOUT_RESPONSE;
                (*ev).role = conn_role;
                (*ev).peer = conn_peer;
                (*ev).status_class = class;
            }
        });
    }
    let _ = CONNECTIONS.remove(&cookie);
    bump(stat::CONNECTIONS_CLOSED);
}

/// Writes the common fields of an event.
#[inline(always)]
fn fill(
    ev: *mut podmeter_common::HttpEvent,
    conn: &Connection,
    cookie: u64,
    ingress: bool,
    seg: &Segment,
    kind: u32,
    status: u32,
) {
    let (local, remote, local_port, remote_port) = if ingress {
        (&seg.dst, &seg.src, seg.dst_port, seg.src_port)
    } else {
        (&seg.src, &seg.dst, seg.src_port, seg.dst_port)
    };
    // SAFETY: `ev` is a reserved ring buffer entry; every field is written.
    unsafe {
        (*ev).ts_ns = bpf_ktime_get_ns();
        (*ev).cookie = cookie;
        (*ev).cgroup_id = conn.cgroup_id;
        (*ev).kind = kind;
        (*ev).role = conn.role;
        (*ev).peer = conn.peer;
        (*ev).status = status;
        (*ev).status_class = 0;
        (*ev).family = seg.family;
        (*ev).head_len = 0;
        (*ev).local_addr = *local;
        (*ev).remote_addr = *remote;
        (*ev).local_port = local_port;
        (*ev).remote_port = remote_port;
        (*ev).seq = seg.seq;
    }
}
