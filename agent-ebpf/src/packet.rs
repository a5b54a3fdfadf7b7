//! Parsing the IPv4/IPv6 and TCP headers of a `cgroup_skb` packet (data starts at the IP header).

use aya_ebpf::{EbpfContext as _, bindings::__sk_buff, programs::SkBuffContext};
use podmeter_common::SegmentEnds;

const IPPROTO_TCP: u8 = 6;
pub const AF_INET: u32 = 2;
pub const AF_INET6: u32 = 10;
/// TCP header flags.
pub const TCP_FIN: u8 = 0x01;
pub const TCP_RST: u8 = 0x04;

/// The part of a TCP segment the HTTP detector needs.
pub struct Segment {
    pub family: u32,
    /// Source and destination as on the wire; the caller orders them by direction.
    pub ends: SegmentEnds,
    pub seq: u32,
    /// The acknowledgement number: the next sequence number expected from the other end.
    pub ack: u32,
    pub payload_off: u32,
    pub payload_len: u32,
    /// The TCP header's FIN and RST flags (`TCP_FIN`, `TCP_RST`); others are cleared.
    pub closing: u8,
}

impl Segment {
    /// Is either end a loopback address (127.0.0.0/8, ::1)?
    #[inline(always)]
    pub fn has_loopback_address(&self) -> bool {
        if self.family == AF_INET {
            return self.ends.src[0] == 127 || self.ends.dst[0] == 127;
        }
        is_ipv6_loopback(&self.ends.src) || is_ipv6_loopback(&self.ends.dst)
    }
}

#[inline(always)]
fn is_ipv6_loopback(a: &[u8; 16]) -> bool {
    let hi = u64::from_ne_bytes([a[0], a[1], a[2], a[3], a[4], a[5], a[6], a[7]]);
    let lo = u64::from_be_bytes([a[8], a[9], a[10], a[11], a[12], a[13], a[14], a[15]]);
    hi == 0 && lo == 1
}

/// Parses the headers; `None` for anything but a TCP segment with a payload, a FIN or a RST.
///
/// The headers are read in place from the packet's linear data, which holds them in the
/// `cgroup_skb` hooks: no helper call and no copy (`bpf_skb_load_bytes` cost three calls per
/// segment, on every segment of every socket). A packet whose headers are not all in the linear
/// data is parsed from copies instead.
#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Option<Segment> {
    let mut seg = Segment {
        family: 0,
        ends: SegmentEnds {
            src: [0; 16],
            dst: [0; 16],
            src_port: 0,
            dst_port: 0,
        },
        seq: 0,
        ack: 0,
        payload_off: 0,
        payload_len: 0,
        closing: 0,
    };
    let (l4, doff, flags) = match headers_in_place(ctx, &mut seg) {
        Headers::Tcp { l4, doff, flags } => (l4, doff, flags),
        Headers::NotTcp => return None,
        Headers::NotLinear => headers_copied(ctx, &mut seg)?,
    };
    seg.payload_off = l4 + u32::from(doff >> 4) * 4;
    seg.closing = flags & (TCP_FIN | TCP_RST);
    let len = ctx.len();
    if len > seg.payload_off {
        seg.payload_len = len - seg.payload_off;
    } else if seg.closing == 0 {
        return None;
    }
    Some(seg)
}

/// What [`headers_in_place`] found.
enum Headers {
    /// A TCP segment: its header at `l4`, with its data offset and flags bytes.
    Tcp { l4: u32, doff: u8, flags: u8 },
    /// Not a TCP segment that carries a TCP header.
    NotTcp,
    /// The headers are not all in the linear data.
    NotLinear,
}

/// Fills `seg`'s addresses, ports and sequence numbers from the packet's linear data. A BPF
/// subprogram: inlined, its byte-wise copies took the egress program past the 512-byte stack.
#[inline(never)]
fn headers_in_place(ctx: &SkBuffContext, seg: &mut Segment) -> Headers {
    let skb = ctx.as_ptr().cast::<__sk_buff>();
    // SAFETY: fields of the program's own context; the verifier makes them packet pointers.
    // Volatile, so that they are loaded here: as arguments of this subprogram they would be
    // widened from 32 bits, pointer arithmetic the verifier refuses on a packet's end.
    let (data, end) = unsafe {
        (
            core::ptr::read_volatile(&raw const (*skb).data) as usize,
            core::ptr::read_volatile(&raw const (*skb).data_end) as usize,
        )
    };
    // Every TCP segment has at least 40 bytes of headers (IPv4 and TCP with no options, or
    // IPv6); one check covers the IPv4 header and the fixed IPv6 header. (A check of one byte is
    // rewritten by LLVM as `data >= end`, which tells the verifier nothing.)
    if data + 40 > end {
        return Headers::NotLinear;
    }
    let ip = data as *const u8;
    // SAFETY: the first 40 bytes are inside the linear data, checked above.
    let l4 = match unsafe { *ip } >> 4 {
        4 => unsafe {
            // A non-first fragment carries no TCP header.
            if *ip.add(9) != IPPROTO_TCP
                || (u16::from_be_bytes([*ip.add(6), *ip.add(7)]) & 0x1fff) != 0
            {
                return Headers::NotTcp;
            }
            seg.family = AF_INET;
            let mut i = 0;
            while i < 4 {
                seg.ends.src[i] = *ip.add(12 + i);
                seg.ends.dst[i] = *ip.add(16 + i);
                i += 1;
            }
            u32::from(*ip & 0x0f) * 4
        },
        6 => {
            // SAFETY: as above.
            unsafe {
                // Extension headers before TCP are rare for HTTP; such segments are not parsed.
                if *ip.add(6) != IPPROTO_TCP {
                    return Headers::NotTcp;
                }
                seg.family = AF_INET6;
                let mut i = 0;
                while i < 16 {
                    seg.ends.src[i] = *ip.add(8 + i);
                    seg.ends.dst[i] = *ip.add(24 + i);
                    i += 1;
                }
            }
            40
        }
        _ => return Headers::NotTcp,
    };
    if !(20..=60).contains(&l4) {
        return Headers::NotTcp;
    }
    let tcp = data + l4 as usize;
    if tcp + 14 > end {
        return Headers::NotLinear;
    }
    let tcp = tcp as *const u8;
    // SAFETY: the first 14 bytes of the TCP header are inside the linear data, checked above.
    let b = |i: usize| unsafe { *tcp.add(i) };
    seg.ends.src_port = u16::from_be_bytes([b(0), b(1)]);
    seg.ends.dst_port = u16::from_be_bytes([b(2), b(3)]);
    seg.seq = u32::from_be_bytes([b(4), b(5), b(6), b(7)]);
    seg.ack = u32::from_be_bytes([b(8), b(9), b(10), b(11)]);
    Headers::Tcp {
        l4,
        doff: b(12),
        flags: b(13),
    }
}

/// [`headers_in_place`] from copies of the headers (`bpf_skb_load_bytes`), for a packet whose
/// headers are not all in its linear data; `None` for anything but a TCP segment. Copied in small
/// pieces: the egress program's stack has no room for whole headers.
#[inline(always)]
fn headers_copied(ctx: &SkBuffContext, seg: &mut Segment) -> Option<(u32, u8, u8)> {
    let first: u8 = ctx.load(0).ok()?;
    let l4: u32 = match first >> 4 {
        4 => {
            let [_, _, _, _, _, _, frag_hi, frag_lo, _, proto, ..]: [u8; 10] = ctx.load(0).ok()?;
            if proto != IPPROTO_TCP || (u16::from_be_bytes([frag_hi, frag_lo]) & 0x1fff) != 0 {
                return None;
            }
            seg.family = AF_INET;
            let src: [u8; 4] = ctx.load(12).ok()?;
            let dst: [u8; 4] = ctx.load(16).ok()?;
            seg.ends.src[..4].copy_from_slice(&src);
            seg.ends.dst[..4].copy_from_slice(&dst);
            u32::from(first & 0x0f) * 4
        }
        6 => {
            let next: u8 = ctx.load(6).ok()?;
            if next != IPPROTO_TCP {
                return None;
            }
            seg.family = AF_INET6;
            seg.ends.src = ctx.load(8).ok()?;
            seg.ends.dst = ctx.load(24).ok()?;
            40
        }
        _ => return None,
    };
    if !(20..=60).contains(&l4) {
        return None;
    }
    let l4off = l4 as usize;
    let ports: [u8; 4] = ctx.load(l4off).ok()?;
    let seq: [u8; 4] = ctx.load(l4off + 4).ok()?;
    let ack: [u8; 4] = ctx.load(l4off + 8).ok()?;
    let [doff, flags]: [u8; 2] = ctx.load(l4off + 12).ok()?;
    seg.ends.src_port = u16::from_be_bytes([ports[0], ports[1]]);
    seg.ends.dst_port = u16::from_be_bytes([ports[2], ports[3]]);
    seg.seq = u32::from_be_bytes(seq);
    seg.ack = u32::from_be_bytes(ack);
    Some((l4, doff, flags))
}
