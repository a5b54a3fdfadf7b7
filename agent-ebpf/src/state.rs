//! The per-connection state machine that decides which request/response starts are real.
//!
//! A connection alternates between `IDLE` (a request may start) and `AWAITING_RESPONSE`. A
//! request start counts only when `IDLE` and not a retransmission, so body bytes that look like
//! `GET / HTTP/1.1` never count. A final response (status >= 200) returns to `IDLE`; interim 1xx
//! responses do not. `101 Switching Protocols` ends HTTP/1.x parsing on that connection.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use podmeter_common::{
    Connection, CountKey, connection_flag as flag, counter, event_kind, peer, phase, role, stat,
    status_class,
};

use crate::{
    accounting::{Head, Header, bump, count, emit, now},
    handshake,
    http::{self, CONTINUE_LEN, PREFIX},
    maps::CONNECTIONS,
    packet::{self, Segment},
};

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
        on_request_direction(ctx, skb, &seg, &prefix, conn, cookie);
    } else {
        on_response_direction(ctx, &seg, &prefix, conn, cookie);
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
        end_exchange(conn, cookie, status_class::OTHER, 0);
        bump(stat::RESPONSES_UNRECOGNISED);
    }
    (conn.cgroup_id, conn.peer) = socket_cgroup_and_peer(skb, seg);
    conn.phase = phase::AWAITING_RESPONSE;
    conn.req_seq = seg.seq;
    conn.flags = (conn.flags | flag::REQ_SEQ) & !flag::RESPONSE_DATA;
    count(&conn.count_key(counter::REQUESTS));
    let head = Head::Payload {
        ctx,
        off: seg.payload_off,
        len: seg.payload_len,
    };
    emit(&header(conn, cookie, event_kind::REQUEST, 0, 0), head);
}

#[inline(always)]
fn on_response_direction(
    ctx: &SkBuffContext,
    seg: &Segment,
    prefix: &[u8; PREFIX],
    conn: &mut Connection,
    cookie: u64,
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
        end_exchange(conn, cookie, status_class::of(status), status);
        conn.phase = phase::UPGRADED;
        bump(stat::CONNECTIONS_UPGRADED);
        return;
    }
    if status < 200 {
        return; // interim response: the request goes on
    }
    end_exchange(conn, cookie, status_class::of(status), status);
}

/// Counts the end of the current exchange with `slot` and reports it.
#[inline(always)]
fn end_exchange(conn: &mut Connection, cookie: u64, class: u16, status: u32) {
    conn.phase = phase::IDLE;
    count(&conn.count_key(counter::responses(class)));
    emit(
        &header(conn, cookie, event_kind::RESPONSE, class, status),
        Head::None,
    );
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
        count(&conn.count_key(counter::responses(class)));
        emit(
            &header(conn, cookie, event_kind::CLOSED_WITHOUT_RESPONSE, class, 0),
            Head::None,
        );
    }
    let _ = CONNECTIONS.remove(&cookie);
    bump(stat::CONNECTIONS_CLOSED);
}

/// The header of an event about `conn`, seen now.
#[inline(always)]
fn header(conn: &Connection, cookie: u64, kind: u32, class: u16, status: u32) -> Header {
    Header {
        ts_ns: now(),
        cookie,
        cgroup_id: conn.cgroup_id,
        kind,
        role: conn.role,
        peer: conn.peer,
        status_class: class,
        status,
    }
}
