//! Parsing the IPv4/IPv6 and TCP headers of a `cgroup_skb` packet (data starts at the IP header).

use aya_ebpf::programs::SkBuffContext;
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
#[inline(always)]
pub fn parse(ctx: &SkBuffContext) -> Option<Segment> {
    let first: u8 = ctx.load(0).ok()?;
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
    let l4: u32 = match first >> 4 {
        4 => {
            let ip: [u8; 20] = ctx.load(0).ok()?;
            if ip[9] != IPPROTO_TCP {
                return None;
            }
            // A non-first fragment carries no TCP header.
            if (u16::from_be_bytes([ip[6], ip[7]]) & 0x1fff) != 0 {
                return None;
            }
            seg.family = AF_INET;
            seg.ends.src[..4].copy_from_slice(&ip[12..16]);
            seg.ends.dst[..4].copy_from_slice(&ip[16..20]);
            u32::from(ip[0] & 0x0f) * 4
        }
        6 => {
            let ip: [u8; 40] = ctx.load(0).ok()?;
            // Extension headers before TCP are rare for HTTP; such segments are not parsed.
            if ip[6] != IPPROTO_TCP {
                return None;
            }
            seg.family = AF_INET6;
            seg.ends.src.copy_from_slice(&ip[8..24]);
            seg.ends.dst.copy_from_slice(&ip[24..40]);
            40
        }
        _ => return None,
    };
    if !(20..=60).contains(&l4) {
        return None;
    }
    let tcp: [u8; 14] = ctx.load(l4 as usize).ok()?;
    seg.ends.src_port = u16::from_be_bytes([tcp[0], tcp[1]]);
    seg.ends.dst_port = u16::from_be_bytes([tcp[2], tcp[3]]);
    seg.seq = u32::from_be_bytes([tcp[4], tcp[5], tcp[6], tcp[7]]);
    seg.ack = u32::from_be_bytes([tcp[8], tcp[9], tcp[10], tcp[11]]);
    let doff = u32::from(tcp[12] >> 4) * 4;
    seg.payload_off = l4 + doff;
    seg.closing = tcp[13] & (TCP_FIN | TCP_RST);
    let len = ctx.len();
    if len > seg.payload_off {
        seg.payload_len = len - seg.payload_off;
    } else if seg.closing == 0 {
        return None;
    }
    Some(seg)
}
