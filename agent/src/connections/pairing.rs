//! Pairing each request with its response on the same connection: latency and outcome.
//!
//! HTTP/1.x has at most one exchange in flight per connection (pipelining aside, which the kernel
//! does not count either), so one open request per socket cookie is enough.

use std::time::Duration;

use crate::{
    events::decode::{Common, Event, Method},
    fast_map::FastMap,
};

/// How an exchange ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// A final response with this status.
    Status(u16),
    /// The server answered but its status line was not recognised.
    Unrecognised,
    /// The connection closed before any response.
    NoResponse,
}

/// One finished request/response pair.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Exchange {
    pub cgroup_id: u64,
    pub role: u32,
    pub peer: u16,
    pub method: Method,
    pub target: Option<String>,
    pub outcome: Outcome,
    /// From the request's first segment to the response's first segment, as the observing
    /// socket saw them; `None` without a response.
    pub latency: Option<Duration>,
}

struct Open {
    ts_ns: u64,
    method: Method,
    target: Option<String>,
    common: Common,
}

/// Requests waiting for their responses.
pub struct Flows {
    open: FastMap<u64, Open>,
    limit: usize,
    /// Requests whose response event never came (a new request arrived on the same connection,
    /// or the table was full): the ring buffer dropped it.
    pub unpaired: u64,
    /// Responses with no request event to pair with.
    pub orphan_responses: u64,
}

impl Flows {
    pub fn new(limit: usize) -> Self {
        Self {
            open: FastMap::default(),
            limit,
            unpaired: 0,
            orphan_responses: 0,
        }
    }

    /// Requests waiting now.
    pub fn open(&self) -> usize {
        self.open.len()
    }

    /// Feeds one event; returns the exchange it completes, if any.
    pub fn on_event(&mut self, event: Event) -> Option<Exchange> {
        match event {
            Event::Request { common, line } => {
                if self.open.len() >= self.limit && !self.open.contains_key(&common.cookie) {
                    self.unpaired += 1;
                    return None;
                }
                let open = Open {
                    ts_ns: common.ts_ns,
                    method: line.method,
                    target: line.target,
                    common,
                };
                if self.open.insert(open.common.cookie, open).is_some() {
                    self.unpaired += 1;
                }
                None
            }
            Event::Response { common, status } => {
                let Some(open) = self.open.remove(&common.cookie) else {
                    self.orphan_responses += 1;
                    return None;
                };
                let outcome = if status == 0 {
                    Outcome::Unrecognised
                } else {
                    Outcome::Status(status)
                };
                let latency = Duration::from_nanos(common.ts_ns.saturating_sub(open.ts_ns));
                Some(exchange(open, outcome, Some(latency)))
            }
            Event::ClosedWithoutResponse { common } => {
                let open = self.open.remove(&common.cookie)?;
                Some(exchange(open, Outcome::NoResponse, None))
            }
        }
    }
}

fn exchange(open: Open, outcome: Outcome, latency: Option<Duration>) -> Exchange {
    Exchange {
        cgroup_id: open.common.cgroup_id,
        role: open.common.role,
        peer: open.common.peer,
        method: open.method,
        target: open.target,
        outcome,
        latency,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::decode::RequestLine;

    fn common(cookie: u64, ts_ns: u64) -> Common {
        Common {
            ts_ns,
            cookie,
            cgroup_id: 7,
            role: 1,
            peer: 0,
        }
    }

    fn request(cookie: u64, ts_ns: u64) -> Event {
        Event::Request {
            common: common(cookie, ts_ns),
            line: RequestLine {
                method: Method::Get,
                target: Some("/".into()),
                valid: true,
            },
        }
    }

    #[test]
    fn pairs_request_and_response_with_latency() {
        let mut f = Flows::new(10);
        assert_eq!(f.on_event(request(1, 1_000)), None);
        let x = f
            .on_event(Event::Response {
                common: common(1, 3_500_000),
                status: 204,
            })
            .expect("paired");
        assert_eq!(x.outcome, Outcome::Status(204));
        assert_eq!(x.latency, Some(Duration::from_nanos(3_499_000)));
        assert_eq!(f.open(), 0);
    }

    #[test]
    fn interleaved_connections_pair_by_cookie() {
        let mut f = Flows::new(10);
        f.on_event(request(1, 10));
        f.on_event(request(2, 20));
        let b = f
            .on_event(Event::Response {
                common: common(2, 25),
                status: 500,
            })
            .expect("b");
        let a = f
            .on_event(Event::Response {
                common: common(1, 40),
                status: 200,
            })
            .expect("a");
        assert_eq!(
            (a.latency, b.latency),
            (
                Some(Duration::from_nanos(30)),
                Some(Duration::from_nanos(5))
            )
        );
    }

    #[test]
    fn close_without_response_ends_the_exchange() {
        let mut f = Flows::new(10);
        f.on_event(request(1, 10));
        let x = f
            .on_event(Event::ClosedWithoutResponse {
                common: common(1, 99),
            })
            .expect("closed");
        assert_eq!((x.outcome, x.latency), (Outcome::NoResponse, None));
    }

    #[test]
    fn lost_events_are_counted_not_guessed() {
        let mut f = Flows::new(1);
        f.on_event(request(1, 10));
        f.on_event(request(1, 20)); // its response event was lost
        f.on_event(request(2, 30)); // table full
        assert_eq!(f.unpaired, 2);
        assert_eq!(
            f.on_event(Event::Response {
                common: common(9, 40),
                status: 200
            }),
            None
        );
        assert_eq!(f.orphan_responses, 1);
    }
}
