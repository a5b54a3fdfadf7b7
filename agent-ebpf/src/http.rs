//! Recognising the start of an HTTP/1.x request or response at the start of a TCP payload.
//!
//! Only the first bytes of a segment are looked at; whether those bytes really begin a message
//! (and not a body that happens to look like one) is decided by the connection state machine.

use aya_ebpf::programs::SkBuffContext;
use podmeter_common::method;

/// Bytes of a payload prefix the detector looks at.
pub const PREFIX: usize = 16;

/// Loads up to [`PREFIX`] bytes at `off`; shorter payloads load a shorter fixed-size prefix
/// (the verifier accepts fixed-size loads only) and the rest stays zero.
#[inline(always)]
pub fn load_prefix(ctx: &SkBuffContext, off: u32, len: u32) -> Option<[u8; PREFIX]> {
    let off = off as usize;
    let mut out = [0u8; PREFIX];
    if len >= 16 {
        out = ctx.load(off).ok()?;
    } else if len >= 8 {
        let head: [u8; 8] = ctx.load(off).ok()?;
        out[..8].copy_from_slice(&head);
    } else if len >= 4 {
        let head: [u8; 4] = ctx.load(off).ok()?;
        out[..4].copy_from_slice(&head);
    } else {
        return None;
    }
    Some(out)
}

/// The [`method`] if the payload starts with a request line, `METHOD SP request-target`; 0
/// otherwise. Only the methods of RFC 9110 and PATCH count, so other text protocols never match.
#[inline(always)]
pub fn request_method(p: &[u8; PREFIX], len: u32) -> u16 {
    let (id, method_len): (u16, u32) = match (p[0], p[1], p[2], p[3]) {
        (b'G', b'E', b'T', b' ') => (method::GET, 4),
        (b'P', b'U', b'T', b' ') => (method::PUT, 4),
        (b'P', b'O', b'S', b'T') if p[4] == b' ' => (method::POST, 5),
        (b'H', b'E', b'A', b'D') if p[4] == b' ' => (method::HEAD, 5),
        (b'P', b'A', b'T', b'C') if p[4] == b'H' && p[5] == b' ' => (method::PATCH, 6),
        (b'T', b'R', b'A', b'C') if p[4] == b'E' && p[5] == b' ' => (method::TRACE, 6),
        (b'D', b'E', b'L', b'E') if p[4] == b'T' && p[5] == b'E' && p[6] == b' ' => {
            (method::DELETE, 7)
        }
        (b'O', b'P', b'T', b'I')
            if p[4] == b'O' && p[5] == b'N' && p[6] == b'S' && p[7] == b' ' =>
        {
            (method::OPTIONS, 8)
        }
        (b'C', b'O', b'N', b'N')
            if p[4] == b'E' && p[5] == b'C' && p[6] == b'T' && p[7] == b' ' =>
        {
            (method::CONNECT, 8)
        }
        _ => return 0,
    };
    if len <= method_len {
        // A method alone in a segment: accept, the request target follows in the next one.
        return if len == method_len { id } else { 0 };
    }
    if method_len as usize >= PREFIX {
        return id;
    }
    // origin-form "/", asterisk-form "*", absolute-form "http://", authority-form "host:port".
    let target = p[method_len as usize & (PREFIX - 1)];
    if target == b'/' || target == b'*' || target.is_ascii_alphanumeric() {
        id
    } else {
        0
    }
}

/// The status code if the payload starts with `HTTP/1.x NNN` followed by a space or CR.
#[inline(always)]
pub fn response_status(p: &[u8; PREFIX], len: u32) -> Option<u32> {
    if len < 13 {
        return None;
    }
    if !(p[0] == b'H' && p[1] == b'T' && p[2] == b'T' && p[3] == b'P' && p[4] == b'/') {
        return None;
    }
    if !(p[5] == b'1' && p[6] == b'.' && (p[7] == b'0' || p[7] == b'1') && p[8] == b' ') {
        return None;
    }
    let (a, b, c) = (p[9], p[10], p[11]);
    if !(a.is_ascii_digit() && b.is_ascii_digit() && c.is_ascii_digit()) {
        return None;
    }
    if p[12] != b' ' && p[12] != b'\r' {
        return None;
    }
    let status = u32::from(a - b'0') * 100 + u32::from(b - b'0') * 10 + u32::from(c - b'0');
    if status < 100 { None } else { Some(status) }
}

/// Length of `HTTP/1.1 100 Continue\r\n\r\n`: a final response written right after it in the
/// same segment starts at this offset.
pub const CONTINUE_LEN: u32 = 25;
