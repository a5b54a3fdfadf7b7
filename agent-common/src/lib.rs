//! Types shared by podmeter's kernel programs and its userspace agent.
//!
//! Every type here is `#[repr(C)]`, `Copy`, has no `bool` and no implicit padding, so the kernel
//! and userspace agree on its bytes.
#![no_std]

/// Which end of a TCP connection a socket is, seen from the pod that owns the socket.
pub mod role {
    /// Not known yet (no handshake seen and no request yet).
    pub const UNKNOWN: u32 = 0;
    /// The socket accepted the connection and receives requests: inbound traffic for its pod.
    pub const SERVER: u32 = 1;
    /// The socket opened the connection and sends requests: outbound traffic for its pod.
    pub const CLIENT: u32 = 2;
}

/// Where the other end of a connection is.
pub mod peer {
    /// Across a network device: another pod, the node, or outside the node.
    pub const REMOTE: u16 = 0;
    /// Over the loopback device: the other end is in the same network namespace, i.e. the same pod.
    pub const LOOPBACK: u16 = 1;
    /// The client is a process of the node itself, in a cgroup of no pod (kubelet probes, node
    /// agents): set on server sockets only, from the client socket the kernel saw on this node.
    pub const NODE: u16 = 2;
}

/// Kinds of [`HttpEvent`].
pub mod event_kind {
    /// The first segment of a request (request line).
    pub const REQUEST: u32 = 1;
    /// The first segment of a final response (status >= 200, or 101).
    pub const RESPONSE: u32 = 2;
    /// The connection closed while a request was waiting for its response.
    pub const CLOSED_WITHOUT_RESPONSE: u32 = 3;
}

/// How an exchange ended, as counted per (cgroup, role, peer).
pub mod status_class {
    /// The connection closed before a final response came.
    pub const NONE: u16 = 0;
    /// 1xx..5xx are their own value; anything else (e.g. 600..999, or a response whose status line
    /// was not recognised) is `OTHER`.
    pub const OTHER: u16 = 6;
    /// Number of classes.
    pub const COUNT: usize = 7;

    /// The class of a status code.
    #[inline(always)]
    pub const fn of(status: u32) -> u16 {
        match status / 100 {
            1 => 1,
            2 => 2,
            3 => 3,
            4 => 4,
            5 => 5,
            _ => OTHER,
        }
    }
}

/// HTTP request methods, as the kernel tells them apart (RFC 9110's and PATCH).
pub mod method {
    pub const GET: u16 = 1;
    pub const HEAD: u16 = 2;
    pub const POST: u16 = 3;
    pub const PUT: u16 = 4;
    pub const DELETE: u16 = 5;
    pub const CONNECT: u16 = 6;
    pub const OPTIONS: u16 = 7;
    pub const TRACE: u16 = 8;
    pub const PATCH: u16 = 9;
    /// Ids are `1..COUNT`.
    pub const COUNT: u16 = 10;

    /// The method's name; `None` for an id that names none.
    pub const fn name(id: u16) -> Option<&'static str> {
        Some(match id {
            GET => "GET",
            HEAD => "HEAD",
            POST => "POST",
            PUT => "PUT",
            DELETE => "DELETE",
            CONNECT => "CONNECT",
            OPTIONS => "OPTIONS",
            TRACE => "TRACE",
            PATCH => "PATCH",
            _ => return None,
        })
    }
}

/// Which counter of a (cgroup, role, peer) a [`CountKey`] names.
pub mod counter {
    use super::{method, status_class};

    /// Requests started with this [`method`] (request line seen once; retransmissions and body
    /// bytes excluded). A flow's requests are the sum over its methods.
    #[inline(always)]
    pub const fn requests(method: u16) -> u16 {
        method
    }

    /// The first response counter.
    const RESPONSES: u16 = 16;
    /// Response counters per method.
    const PER_METHOD: u16 = 8;

    /// Exchanges of requests with this [`method`] ended with a [`status_class`].
    #[inline(always)]
    pub const fn responses(method: u16, class: u16) -> u16 {
        RESPONSES + method * PER_METHOD + class
    }

    /// The method of a request counter, or `None`.
    pub const fn method_of(counter: u16) -> Option<u16> {
        if counter >= 1 && counter < method::COUNT {
            Some(counter)
        } else {
            None
        }
    }

    /// The (method, status class) of a response counter, or `None`.
    pub const fn response_of(counter: u16) -> Option<(u16, u16)> {
        if counter < RESPONSES || counter >= RESPONSES + method::COUNT * PER_METHOD {
            return None;
        }
        let (method, class) = (
            (counter - RESPONSES) / PER_METHOD,
            (counter - RESPONSES) % PER_METHOD,
        );
        if class < status_class::COUNT as u16 {
            Some((method, class))
        } else {
            None
        }
    }
}

/// The log-linear buckets of the kernel's latency histogram ([`names::LATENCY`]): 64 linear
/// buckets per power of two from 2^10 ns (about 1 µs) to 2^37 ns (about 137 s). A bucket's
/// midpoint is within 0.78 % of every duration in it; shorter and longer durations fall into the
/// first and last bucket.
pub mod latency {
    /// log2 of the buckets per power of two.
    pub const SUB_BITS: u32 = 6;
    /// The first bucket starts at 2^FIRST_OCTAVE ns.
    pub const FIRST_OCTAVE: u32 = 10;
    /// Powers of two covered.
    pub const OCTAVES: u32 = 27;
    /// Number of buckets.
    pub const BUCKETS: u16 = (OCTAVES << SUB_BITS) as u16;

    /// The bucket of a duration in nanoseconds.
    #[inline(always)]
    pub const fn bucket(ns: u64) -> u16 {
        if ns < (1 << FIRST_OCTAVE) {
            return 0;
        }
        let msb = 63 - ns.leading_zeros();
        let octave = msb - FIRST_OCTAVE;
        if octave >= OCTAVES {
            return BUCKETS - 1;
        }
        let sub = (ns >> (msb - SUB_BITS)) & ((1 << SUB_BITS) - 1);
        ((octave << SUB_BITS) as u64 | sub) as u16
    }

    /// The lower and upper bound of a bucket, in nanoseconds.
    pub const fn bounds(bucket: u16) -> (u64, u64) {
        let octave = (bucket as u32) >> SUB_BITS;
        let sub = (bucket as u64) & ((1 << SUB_BITS) - 1);
        let base = 1u64 << (FIRST_OCTAVE + octave);
        let width = base >> SUB_BITS;
        (base + sub * width, base + (sub + 1) * width)
    }
}

/// Names one exact counter of a flow (`counter` a [`counter`] kind), or with `counter` 0 the flow
/// itself: the key of the flow sums ([`names::FLOWS`], which hold the counters) and, with a
/// latency bucket as `counter`, of the histogram ([`names::LATENCY`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CountKey {
    /// cgroup v2 id (the inode number of the cgroup directory) of the socket's cgroup.
    pub cgroup_id: u64,
    /// [`role`] of the socket that observed the requests.
    pub role: u32,
    /// [`peer`] class of the connection.
    pub peer: u16,
    /// [`counter`] kind.
    pub counter: u16,
}

/// Bytes of the request line carried in a request event.
pub const HEAD_LEN: usize = 96;

/// One HTTP observation sent through the ring buffer.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct HttpEvent {
    /// `bpf_ktime_get_ns()` (CLOCK_MONOTONIC) when the segment was seen.
    pub ts_ns: u64,
    /// Socket cookie: stable id of the socket for its lifetime.
    pub cookie: u64,
    /// cgroup v2 id of the socket.
    pub cgroup_id: u64,
    /// [`event_kind`].
    pub kind: u32,
    /// [`role`] of the socket.
    pub role: u32,
    /// [`peer`] class.
    pub peer: u16,
    /// [`status_class`] of a response event.
    pub status_class: u16,
    /// HTTP status code for responses, 0 otherwise.
    pub status: u32,
    /// Number of valid bytes in `head`.
    pub head_len: u32,
    /// Always 0: makes the padding before `head` explicit.
    pub _reserved: u32,
    /// The first bytes of the request (request events only).
    pub head: [u8; HEAD_LEN],
}

/// Phases of [`Connection::phase`].
pub mod phase {
    /// A request may start.
    pub const IDLE: u32 = 0;
    /// A request was counted; its response has not come yet.
    pub const AWAITING_RESPONSE: u32 = 1;
    /// The connection switched protocols (101): no longer parsed.
    pub const UPGRADED: u32 = 2;
}

/// Bits of [`Connection::flags`].
pub mod connection_flag {
    /// `req_seq` holds the sequence number of the last counted request start.
    pub const REQ_SEQ: u32 = 1;
    /// `resp_seq` holds the sequence number of the last response start.
    pub const RESP_SEQ: u32 = 2;
    /// `req_edge` is valid.
    pub const REQ_EDGE: u32 = 8;
    /// `resp_edge` is valid.
    pub const RESP_EDGE: u32 = 16;
    /// Response-direction data that is not an interim response arrived while awaiting a
    /// response: the server answered, even if its status line was not recognised.
    pub const RESPONSE_DATA: u32 = 4;
    /// `cgroup_id` and `peer` are set (at the connection's first request; neither changes).
    pub const PEER: u32 = 32;
    /// Found mid-stream (opened before the agent, or evicted): no `sock_ops` state callback
    /// reports its close, so its FIN and RST segments do.
    pub const CLOSE_FROM_SEGMENTS: u32 = 64;
}

/// Value of the kernel's connection table ([`names::CONNECTIONS`], keyed by socket cookie):
/// the HTTP state of one connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Connection {
    /// cgroup of the socket, set at the first request (sock_ops does not know it), with `PEER`.
    pub cgroup_id: u64,
    /// When the request in progress started (`bpf_ktime_get_ns()`, CLOCK_MONOTONIC), while
    /// `AWAITING_RESPONSE`.
    pub req_ts: u64,
    /// [`role`] of the socket.
    pub role: u32,
    /// [`phase`] of the current exchange.
    pub phase: u32,
    /// [`peer`] class, set with `cgroup_id`.
    pub peer: u16,
    /// [`method`] of the request in progress.
    pub method: u16,
    /// [`connection_flag`] bits.
    pub flags: u32,
    /// Sequence number of the last counted request start (valid with `REQ_SEQ`).
    pub req_seq: u32,
    /// Sequence number of the last response start (valid with `RESP_SEQ`).
    pub resp_seq: u32,
    /// Sequence number after the furthest request-direction byte seen (valid with `REQ_EDGE`).
    pub req_edge: u32,
    /// Sequence number after the furthest response-direction byte seen (valid with `RESP_EDGE`).
    pub resp_edge: u32,
    /// Request-direction payload bytes not yet added to the flow's totals.
    pub req_bytes: u32,
    /// Response-direction payload bytes not yet added to the flow's totals.
    pub resp_bytes: u32,
    /// Non-zero once this socket sent a FIN. A byte of its own, not a `flags` bit: the FIN leaves
    /// on one CPU while a request may arrive on another, and a read-modify-write of `flags`
    /// there could lose it.
    pub fin_sent: u8,
    /// Non-zero once a FIN arrived at this socket.
    pub fin_received: u8,
    pub _pad: [u8; 6],
}

impl Connection {
    /// A connection with no exchange yet.
    #[inline(always)]
    pub const fn new(role: u32) -> Self {
        Self {
            cgroup_id: 0,
            req_ts: 0,
            role,
            phase: phase::IDLE,
            peer: peer::REMOTE,
            method: 0,
            flags: 0,
            req_seq: 0,
            resp_seq: 0,
            req_edge: 0,
            resp_edge: 0,
            req_bytes: 0,
            resp_bytes: 0,
            fin_sent: 0,
            fin_received: 0,
            _pad: [0; 6],
        }
    }

    /// The key of this connection's `counter`.
    #[inline(always)]
    pub const fn count_key(&self, counter: u16) -> CountKey {
        CountKey {
            cgroup_id: self.cgroup_id,
            role: self.role,
            peer: self.peer,
            counter,
        }
    }
}

/// Added to every timestamp summed into [`FlowSums`]: the sums then tell a torn read (one field
/// copied before a program's update and the next after it) by an error of at least 2^62 ns, far
/// beyond any real integral, and a consistent read cancels it exactly.
pub const TIMESTAMP_OFFSET: u64 = 1 << 62;

/// What the kernel adds up per (cgroup, role, peer) ([`names::FLOWS`], keyed by a [`CountKey`]
/// whose `counter` is 0), per CPU: the exact counters and the sums, in one value found once per
/// request start and once per exchange end. All sums wrap: only differences between reads mean
/// anything.
///
/// The time-integral of requests in flight up to `t` is
/// `(started - ended) * t - start_ns + end_ns` (wrapping, summed over CPUs, `t` offset by
/// [`TIMESTAMP_OFFSET`] like the sums): exact whatever the ring buffer drops, so the average
/// concurrency over any span is the difference of two reads divided by the span.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowSums {
    /// Requests started.
    pub started: u64,
    /// Sum of their start times, each plus [`TIMESTAMP_OFFSET`].
    pub start_ns: u64,
    /// Exchanges ended (a final response, or the connection closed or reused without one).
    pub ended: u64,
    /// Sum of their end times, each plus [`TIMESTAMP_OFFSET`].
    pub end_ns: u64,
    /// Exchanges that ended with a response: those in the latency histogram.
    pub responded: u64,
    /// Sum of their latencies (the histogram's sum).
    pub latency_ns: u64,
    /// Request-direction payload bytes, each byte once.
    pub request_bytes: u64,
    /// Response-direction payload bytes, each byte once.
    pub response_bytes: u64,
    /// The exact counters: requests started, by [`method`] id (index 0 unused).
    pub requests: [u64; method::COUNT as usize],
    /// Exchanges ended, by [`method`] id, then [`status_class`].
    pub responses: [[u64; status_class::COUNT]; method::COUNT as usize],
}

/// Indexes into the agent's per-CPU `STATS` array: what the kernel side did and what it lost.
pub mod stat {
    /// Events that did not fit in the ring buffer (the counters stay exact).
    pub const EVENTS_DROPPED: u32 = 0;
    /// Events written to the ring buffer.
    pub const EVENTS_SENT: u32 = 1;
    /// Request-looking segments skipped because their sequence number was already counted.
    pub const RETRANSMISSIONS_SKIPPED: u32 = 2;
    /// Request-looking segments skipped because the connection was waiting for a response
    /// (request bodies, pipelined requests).
    pub const BODY_MATCHES_SKIPPED: u32 = 3;
    /// Connections entered in the connection table.
    pub const CONNECTIONS_OPENED: u32 = 4;
    /// Connections removed from the table on close.
    pub const CONNECTIONS_CLOSED: u32 = 5;
    /// Counter updates that failed because the flow map, which holds the counters, was full.
    pub const COUNTER_MAP_FULL: u32 = 6;
    /// Connection-table insertions that failed.
    pub const CONNECTION_TABLE_FULL: u32 = 7;
    /// Responses whose start was not recognised (the exchange ended without a status).
    pub const RESPONSES_UNRECOGNISED: u32 = 8;
    /// Connections switched to another protocol (101 Switching Protocols): no longer parsed.
    pub const CONNECTIONS_UPGRADED: u32 = 9;
    /// Requests that arrived on a listening socket: their segment also completed the handshake
    /// (its final ACK was lost), so the kernel filtered it before the connection existed.
    pub const LISTENER_REQUESTS: u32 = 10;
    /// Flow-sum updates that failed because the flow map was full.
    pub const FLOW_MAP_FULL: u32 = 11;
    /// Latency-histogram updates that failed because the histogram map was full.
    pub const LATENCY_MAP_FULL: u32 = 12;
    /// Requests that arrived after the answering side's FIN: its socket was closed, nothing
    /// reads them, and the client sends them again on another connection. Not counted.
    pub const REQUESTS_AFTER_CLOSE: u32 = 13;
    /// Number of slots.
    pub const SLOTS: u32 = 14;
}

/// Names of the kernel maps and programs, shared so both sides spell them the same. The kernel
/// side checks at compile time that its maps and programs carry these names.
pub mod names {
    pub const CONNECTIONS: &str = "CONNECTIONS";
    pub const EVENTS: &str = "EVENTS";
    pub const STATS: &str = "STATS";
    pub const PENDING: &str = "PENDING";
    pub const FLOWS: &str = "FLOWS";
    pub const LATENCY: &str = "LATENCY";
    pub const NODE_CGROUPS: &str = "NODE_CGROUPS";
    pub const NODE_CLIENTS: &str = "NODE_CLIENTS";
    /// The global that turns per-request events on (1) or off (0, the default).
    pub const EVENTS_ON: &str = "EVENTS_ON";
    pub const INGRESS: &str = "podmeter_ingress";
    pub const EGRESS: &str = "podmeter_egress";
    pub const SOCK_OPS: &str = "podmeter_sock_ops";
}

/// A TCP segment's two ends, as on the wire (IPv4 in the first 4 bytes).
///
/// Also the key of the kernel's table of connections opened by the node's own processes
/// ([`names::NODE_CLIENTS`]), taken from a request as it leaves the client's socket and found
/// again as it arrives at the server's socket on the same node, so `src` is the client there.
/// The parser fills it in place so the look-up needs no copy on the eBPF stack.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SegmentEnds {
    pub src: [u8; 16],
    pub dst: [u8; 16],
    pub src_port: u16,
    pub dst_port: u16,
}

#[cfg(feature = "user")]
mod user {
    // SAFETY: plain-old-data, #[repr(C)], no padding, every bit pattern valid.
    unsafe impl aya::Pod for super::CountKey {}
    unsafe impl aya::Pod for super::HttpEvent {}
    unsafe impl aya::Pod for super::Connection {}
    unsafe impl aya::Pod for super::FlowSums {}
}

// No implicit padding: each size is the sum of its fields' sizes.
const _: () = {
    assert!(size_of::<CountKey>() == 8 + 4 + 2 + 2);
    assert!(size_of::<HttpEvent>() == 3 * 8 + 5 * 4 + 2 * 2 + HEAD_LEN);
    assert!(size_of::<Connection>() == 2 * 8 + 9 * 4 + 2 * 2 + 8);
    assert!(size_of::<FlowSums>() == 8 * (8 + 10 + 10 * 7));
    assert!(size_of::<SegmentEnds>() == 2 * 16 + 2 * 2);
};
