//! Decoding the kernel's ring buffer records into typed events.

use podmeter_common::{HEAD_LEN, HttpEvent, event_kind};

/// HTTP request methods, with everything else under `Other`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Method {
    Get,
    Head,
    Post,
    Put,
    Delete,
    Connect,
    Options,
    Trace,
    Patch,
    Other,
}

impl Method {
    pub const ALL: [Method; 10] = [
        Method::Get,
        Method::Head,
        Method::Post,
        Method::Put,
        Method::Delete,
        Method::Connect,
        Method::Options,
        Method::Trace,
        Method::Patch,
        Method::Other,
    ];

    /// The method of a kernel method id (`podmeter_common::method`).
    pub fn of_kernel(id: u16) -> Self {
        podmeter_common::method::name(id).map_or(Self::Other, Self::parse)
    }

    pub fn parse(token: &str) -> Self {
        match token {
            "GET" => Self::Get,
            "HEAD" => Self::Head,
            "POST" => Self::Post,
            "PUT" => Self::Put,
            "DELETE" => Self::Delete,
            "CONNECT" => Self::Connect,
            "OPTIONS" => Self::Options,
            "TRACE" => Self::Trace,
            "PATCH" => Self::Patch,
            _ => Self::Other,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Head => "HEAD",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
            Self::Connect => "CONNECT",
            Self::Options => "OPTIONS",
            Self::Trace => "TRACE",
            Self::Patch => "PATCH",
            Self::Other => "other",
        }
    }
}

/// What every event carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Common {
    pub ts_ns: u64,
    pub cookie: u64,
    pub cgroup_id: u64,
    pub role: u32,
    pub peer: u16,
}

/// The request line as far as the kernel copied it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RequestLine {
    pub method: Method,
    /// The request target; `None` when it did not fit in the copied bytes.
    pub target: Option<String>,
    /// False when the bytes were not a valid HTTP/1.x request line (counted as a parse failure;
    /// the request still counts, the kernel saw its start).
    pub valid: bool,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Request {
        common: Common,
        line: RequestLine,
    },
    /// `status` is 0 when the exchange ended without a recognised status line.
    Response {
        common: Common,
        status: u16,
    },
    ClosedWithoutResponse {
        common: Common,
    },
}

/// Decodes one ring buffer record; `None` for a record of the wrong size or kind.
pub fn decode(bytes: &[u8]) -> Option<Event> {
    if bytes.len() < size_of::<HttpEvent>() {
        return None;
    }
    // SAFETY: the size was checked; HttpEvent is plain old data valid for any bytes.
    let raw: HttpEvent = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    let common = Common {
        ts_ns: raw.ts_ns,
        cookie: raw.cookie,
        cgroup_id: raw.cgroup_id,
        role: raw.role,
        peer: raw.peer,
    };
    match raw.kind {
        event_kind::REQUEST => {
            let len = (raw.head_len as usize).min(HEAD_LEN);
            Some(Event::Request {
                common,
                line: parse_request_line(&raw.head[..len]),
            })
        }
        event_kind::RESPONSE => Some(Event::Response {
            common,
            status: u16::try_from(raw.status).unwrap_or(0),
        }),
        event_kind::CLOSED_WITHOUT_RESPONSE => Some(Event::ClosedWithoutResponse { common }),
        _ => None,
    }
}

/// Parses the copied head of a request with httparse. The copy may end inside the request line
/// (a long URL) or inside the headers; both are fine.
pub fn parse_request_line(head: &[u8]) -> RequestLine {
    let mut headers = [httparse::EMPTY_HEADER; 8];
    let mut req = httparse::Request::new(&mut headers);
    let parsed = req.parse(head);
    let complete_line = req.version.is_some();
    match (req.method, req.path) {
        (Some(method), Some(path)) if complete_line || parsed.is_ok() => RequestLine {
            method: Method::parse(method),
            target: Some(path.to_owned()),
            valid: true,
        },
        _ => {
            // The line did not complete within the copied bytes (or is malformed): take the
            // method token; the target only if the line is cut short, not malformed.
            let mut parts = head.splitn(2, |b| *b == b' ');
            let method = parts
                .next()
                .and_then(|m| std::str::from_utf8(m).ok())
                .map_or(Method::Other, Method::parse);
            let rest = parts.next().unwrap_or_default();
            let cut_short =
                head.len() == HEAD_LEN && !rest.contains(&b' ') && !rest.contains(&b'\n');
            let target = cut_short.then(|| String::from_utf8_lossy(rest).into_owned());
            RequestLine {
                method,
                target,
                valid: cut_short && matches!(parsed, Ok(httparse::Status::Partial)),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_complete_request_line() {
        let l = parse_request_line(b"GET /api/v1/items?id=3 HTTP/1.1\r\nHost: x\r\n");
        assert_eq!(l.method, Method::Get);
        assert_eq!(l.target.as_deref(), Some("/api/v1/items?id=3"));
        assert!(l.valid);
    }

    #[test]
    fn a_line_cut_by_the_copy_keeps_its_method_and_prefix() {
        let mut head = b"POST /".to_vec();
        head.resize(HEAD_LEN, b'a');
        let l = parse_request_line(&head);
        assert_eq!(l.method, Method::Post);
        assert!(l.target.as_deref().is_some_and(|t| t.starts_with("/aaa")));
        assert!(l.valid);
    }

    #[test]
    fn a_short_first_segment_is_fine() {
        let l = parse_request_line(b"GET / HTTP/1.1\r\n");
        assert_eq!(
            (l.method, l.target.as_deref(), l.valid),
            (Method::Get, Some("/"), true)
        );
    }

    #[test]
    fn garbage_after_the_method_is_invalid() {
        let l = parse_request_line(b"GET /x HTTP/9.9 what\r\n");
        assert_eq!(l.method, Method::Get);
        assert!(!l.valid);
    }

    #[test]
    fn unknown_methods_are_other() {
        assert_eq!(Method::parse("PROPFIND"), Method::Other);
        assert_eq!(Method::parse("PATCH"), Method::Patch);
    }
}
