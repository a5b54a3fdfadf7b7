//! The per-connection state machine that decides which request/response starts are real.
//!
//! A connection alternates between `IDLE` (a request may start) and `AWAITING_RESPONSE`. A
//! request start counts only when `IDLE` and not a retransmission, so body bytes that look like
//! `GET / HTTP/1.1` never count. A final response (status >= 200) returns to `IDLE`; interim 1xx
//! responses do not. `101 Switching Protocols` ends HTTP/1.x parsing on that connection.
//!
//! The kernel pairs each request with its response itself: the connection keeps the request's
//! start time, and the end of the exchange adds its latency to the flow's histogram and sums and
//! its end to the in-flight integral (`accounting`). Payload bytes are counted per direction by
//! sequence number, each byte once, from a connection's first request on.

use aya_ebpf::{
    EbpfContext as _,
    bindings::{__sk_buff, BPF_NOEXIST},
    helpers::generated::{bpf_get_socket_cookie, bpf_skb_cgroup_id},
    programs::SkBuffContext,
};
use podmeter_common::{
    Connection, CountKey, connection_flag as flag, event_kind, peer, phase, role, stat,
    status_class,
};

use crate::{
    accounting::{Bytes, Head, Header, bump, emit, flow_bytes, flow_ended, flow_started, now},
    handshake,
    http::{self, CONTINUE_LEN, PREFIX},
    maps::{CONNECTIONS, NODE_CGROUPS, NODE_CLIENTS},
    packet::{self, Segment},
};

/// Pending bytes of one direction are added to the flow's sums once past this, not only at the
/// exchange's start and end: a long transfer shows in the byte rate as it goes.
const BYTES_FLUSH: u32 = 1 << 20;

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
    if seg.payload_len != 0 {
        on_payload(ctx, &seg, ingress);
    }
    if seg.closing != 0 {
        on_closing_segment(ctx, &seg, ingress);
    }
}

/// A FIN or RST. Every connection notes its FINs: a request that arrives after the answering
/// side's FIN is not counted (see [`on_payload`]). A connection whose close no `sock_ops`
/// callback reports (`CLOSE_FROM_SEGMENTS`) also ends here: at a RST, or at the second FIN.
/// Without this, an exchange in flight when such a connection ends would stay in flight forever.
#[inline(always)]
fn on_closing_segment(ctx: &SkBuffContext, seg: &Segment, ingress: bool) {
    // SAFETY: helper called with the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(conn) = CONNECTIONS.get_ptr_mut(&cookie) else {
        return;
    };
    // SAFETY: points into a live LRU map value.
    let conn = unsafe { &mut *conn };
    if seg.closing & packet::TCP_RST == 0 {
        if ingress {
            conn.fin_received = 1;
        } else {
            conn.fin_sent = 1;
        }
        if conn.fin_received == 0 || conn.fin_sent == 0 {
            return;
        }
    }
    if conn.flags & flag::CLOSE_FROM_SEGMENTS != 0 {
        on_close(cookie);
    }
}

/// A segment with a payload: requests, responses and their bytes.
#[inline(always)]
fn on_payload(ctx: &SkBuffContext, seg: &Segment, ingress: bool) {
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
        let method = http::request_method(&prefix, seg.payload_len);
        if method != 0 {
            let (cgroup_id, conn_peer) = socket_cgroup_and_peer(skb, seg, role::SERVER);
            let ts = now();
            if handshake::park(seg, &prefix, cgroup_id, conn_peer, method, ts) {
                let key = CountKey {
                    cgroup_id,
                    role: role::SERVER,
                    peer: conn_peer,
                    counter: 0,
                };
                flow_started(
                    &key,
                    ts,
                    method,
                    Bytes {
                        request: 0,
                        response: 0,
                    },
                );
            }
        }
        return;
    }
    let conn = match CONNECTIONS.get_ptr_mut(&cookie) {
        Some(c) => c,
        None => {
            // Opened before the agent started, or evicted: the direction of the first request
            // tells the role (a request is received by servers and sent by clients).
            if http::request_method(&prefix, seg.payload_len) == 0 {
                return;
            }
            let conn_role = if ingress { role::SERVER } else { role::CLIENT };
            let mut found = Connection::new(conn_role);
            found.flags = flag::CLOSE_FROM_SEGMENTS;
            if CONNECTIONS
                .insert(&cookie, &found, u64::from(BPF_NOEXIST))
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
    if request_direction && answering_side_closed(conn) {
        after_close(seg, &prefix, conn, cookie);
        return;
    }
    let counting = conn.flags & flag::REQ_SEQ != 0;
    if request_direction {
        on_request_direction(ctx, skb, seg, &prefix, conn, cookie);
    } else {
        on_response_direction(ctx, seg, &prefix, conn, cookie);
    }
    if !counting && conn.flags & flag::REQ_SEQ != 0 {
        first_bytes(conn, seg);
    } else {
        count_bytes(conn, seg, request_direction, counting);
    }
}

/// Has the side that answers requests on this connection (the server) sent its FIN?
#[inline(always)]
fn answering_side_closed(conn: &Connection) -> bool {
    if conn.role == role::SERVER {
        conn.fin_sent != 0
    } else {
        conn.fin_received != 0
    }
}

/// A request-direction segment after the answering side's FIN. A request in it is never read:
/// the server's socket is closed, it answers with a RST, and the client sends the request again
/// on a new connection (Go's and nginx's clients do so for a reused keep-alive connection the
/// server was closing). So it is not counted (`requests_after_close`), or the retried request
/// would count twice. The RST comes from no socket a program sees, so a connection closed from
/// its segments ends here, with any exchange still in flight.
#[inline(always)]
fn after_close(seg: &Segment, prefix: &[u8; PREFIX], conn: &Connection, cookie: u64) {
    if http::request_method(prefix, seg.payload_len) == 0
        || already_seen(conn.flags & flag::REQ_SEQ != 0, conn.req_seq, seg.seq)
    {
        return;
    }
    bump(stat::REQUESTS_AFTER_CLOSE);
    if conn.flags & flag::CLOSE_FROM_SEGMENTS != 0 {
        on_close(cookie);
    }
}

/// Moves the furthest byte seen in the segment's direction; when `counting` (from the
/// connection's first request on), adds the bytes not seen before to the pending ones.
/// Retransmitted bytes add nothing; a segment past a gap counts the gap too: its bytes crossed,
/// and when they are seen (reordered or retransmitted) they add nothing.
#[inline(always)]
fn count_bytes(conn: &mut Connection, seg: &Segment, request_direction: bool, counting: bool) {
    let end = seg.seq.wrapping_add(seg.payload_len);
    let (edge, pending, valid) = if request_direction {
        (&mut conn.req_edge, &mut conn.req_bytes, flag::REQ_EDGE)
    } else {
        (&mut conn.resp_edge, &mut conn.resp_bytes, flag::RESP_EDGE)
    };
    let new = if conn.flags & valid == 0 {
        seg.payload_len
    } else {
        let ahead = end.wrapping_sub(*edge) as i32;
        if ahead <= 0 {
            return;
        }
        ahead as u32
    };
    conn.flags |= valid;
    *edge = end;
    if !counting {
        return;
    }
    *pending = pending.saturating_add(new);
    if *pending >= BYTES_FLUSH {
        flow_bytes(&conn.count_key(0), take_bytes(conn));
    }
}

/// The segment that started the connection's first request: bytes count from its start, up to
/// the furthest request byte seen (a later segment may have arrived first), and the response's
/// from the sequence number the segment acknowledges (the response's first byte), so that a
/// response segment arriving before the one ahead of it counts the gap too.
#[inline(always)]
fn first_bytes(conn: &mut Connection, seg: &Segment) {
    let end = seg.seq.wrapping_add(seg.payload_len);
    let furthest =
        if conn.flags & flag::REQ_EDGE != 0 && (conn.req_edge.wrapping_sub(end) as i32) > 0 {
            conn.req_edge
        } else {
            end
        };
    conn.req_bytes = conn
        .req_bytes
        .saturating_add(furthest.wrapping_sub(seg.seq));
    conn.req_edge = furthest;
    if conn.flags & flag::RESP_EDGE != 0 && (conn.resp_edge.wrapping_sub(seg.ack) as i32) > 0 {
        conn.resp_bytes = conn
            .resp_bytes
            .saturating_add(conn.resp_edge.wrapping_sub(seg.ack));
    } else {
        conn.resp_edge = seg.ack;
    }
    conn.flags |= flag::REQ_EDGE | flag::RESP_EDGE;
}

/// The connection's pending bytes, now handed over.
#[inline(always)]
fn take_bytes(conn: &mut Connection) -> Bytes {
    let bytes = Bytes {
        request: conn.req_bytes,
        response: conn.resp_bytes,
    };
    conn.req_bytes = 0;
    conn.resp_bytes = 0;
    bytes
}

/// The socket's cgroup and the connection's peer class, from its first request `seg` (sent by a
/// socket of `conn_role`):
/// - `LOOPBACK` when the packet crossed the loopback device (the peer is in the same network
///   namespace) or carries a loopback address;
/// - on a server socket, `NODE` when a process of the node itself (a cgroup in `NODE_CGROUPS`)
///   opened the connection: its socket recorded the connection as this request left it;
/// - `REMOTE` otherwise.
#[inline(always)]
fn socket_cgroup_and_peer(skb: *mut __sk_buff, seg: &Segment, conn_role: u32) -> (u64, u16) {
    // SAFETY: helper called with, and a field read from, the program's own context.
    let (cgroup_id, ifindex) = unsafe { (bpf_skb_cgroup_id(skb), (*skb).ifindex) };
    if ifindex == 1 || seg.has_loopback_address() {
        return (cgroup_id, peer::LOOPBACK);
    }
    if conn_role == role::SERVER {
        // SAFETY: read-only look-up of a plain value.
        if unsafe { NODE_CLIENTS.get(&seg.ends) }.is_some() {
            let _ = NODE_CLIENTS.remove(&seg.ends);
            return (cgroup_id, peer::NODE);
        }
    } else {
        // SAFETY: read-only look-up of a plain value.
        if unsafe { NODE_CGROUPS.get(&cgroup_id) }.is_some() {
            let _ = NODE_CLIENTS.insert(&seg.ends, &1, 0);
        }
    }
    (cgroup_id, peer::REMOTE)
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
    let method = http::request_method(prefix, seg.payload_len);
    if method == 0 {
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
    if conn.flags & flag::PEER == 0 {
        (conn.cgroup_id, conn.peer) = socket_cgroup_and_peer(skb, seg, conn.role);
        conn.flags |= flag::PEER;
    }
    let ts = now();
    conn.phase = phase::AWAITING_RESPONSE;
    conn.req_seq = seg.seq;
    conn.req_ts = ts;
    conn.method = method;
    conn.flags = (conn.flags | flag::REQ_SEQ) & !flag::RESPONSE_DATA;
    flow_started(&conn.count_key(0), ts, method, take_bytes(conn));
    let head = Head::Payload {
        ctx,
        off: seg.payload_off,
        len: seg.payload_len,
    };
    emit(&header(conn, cookie, ts, event_kind::REQUEST, 0, 0), head);
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

/// Counts the end of the current exchange, by a response of `class`, and reports it.
#[inline(always)]
fn end_exchange(conn: &mut Connection, cookie: u64, class: u16, status: u32) {
    conn.phase = phase::IDLE;
    let ts = now();
    // An unrecognised response (status 0) ended the exchange, but when it started is unknown.
    let latency = (status != 0).then(|| ts.saturating_sub(conn.req_ts));
    flow_ended(
        &conn.count_key(0),
        ts,
        conn.method,
        class,
        latency,
        take_bytes(conn),
    );
    emit(
        &header(conn, cookie, ts, event_kind::RESPONSE, class, status),
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
        let ts = now();
        flow_ended(
            &conn.count_key(0),
            ts,
            conn.method,
            class,
            None,
            take_bytes(conn),
        );
        emit(
            &header(
                conn,
                cookie,
                ts,
                event_kind::CLOSED_WITHOUT_RESPONSE,
                class,
                0,
            ),
            Head::None,
        );
    } else if conn.flags & flag::REQ_SEQ != 0 && (conn.req_bytes | conn.resp_bytes) != 0 {
        flow_bytes(&conn.count_key(0), take_bytes(conn));
    }
    let _ = CONNECTIONS.remove(&cookie);
    bump(stat::CONNECTIONS_CLOSED);
}

/// The header of an event about `conn`, seen at `ts`: the time the counters were given, so an
/// event costs no clock read of its own (the clock was a tenth of the programs' cost, and the
/// header is built even when events are off).
#[inline(always)]
fn header(conn: &Connection, cookie: u64, ts: u64, kind: u32, class: u16, status: u32) -> Header {
    Header {
        ts_ns: ts,
        cookie,
        cgroup_id: conn.cgroup_id,
        kind,
        role: conn.role,
        peer: conn.peer,
        status_class: class,
        status,
    }
}
