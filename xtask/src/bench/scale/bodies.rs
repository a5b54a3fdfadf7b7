//! The simulated agents' `/v1/pods` and `/v1/pods/inbound` bodies: each pod's JSON is serialised once (from the real
//! `podmeter_wire` types) as a template with holes for its namespace, name and inbound rate, and
//! every second every node's body is rendered again from the templates with new rates. The rate
//! says which second it was rendered in (`second % 10,000`, plus the pod's slot in thousandths),
//! so whoever reads a served value knows how old it is.

use std::fmt::Write as _;

use anyhow::{Context as _, Result};
use podmeter_wire::{
    DurationSummary, FlowReply, FlowTotals, InboundPod, InboundReply, ObservedReply, PodReply,
    PodsReply, StatusCounts, UnattributedReply, Workload,
};

use super::layout::Layout;

const NAMESPACE: &str = "@NAMESPACE@";
const NAME: &str = "@NAME@";
/// A rate no simulated pod has, found in the JSON where the rate goes.
const RATE: f64 = 7_777_777.0;
const RATE_TEXT: &str = "7777777.0";
/// The rate window the simulated agents report.
const WINDOW_SECONDS: u32 = 30;

/// One part of a body template.
#[derive(Debug)]
enum Piece {
    Text(String),
    Namespace,
    Name,
    Rate,
}

/// A body: the text before the pods, one pod's template, the text after the pods.
#[derive(Debug)]
pub struct Template {
    head: String,
    pod: Vec<Piece>,
    tail: String,
}

/// Splits `json` at each marker, in the order they appear.
fn pieces(json: &str) -> Vec<Piece> {
    let markers = [
        (format!("\"{NAMESPACE}\""), Piece::Namespace),
        (format!("\"{NAME}\""), Piece::Name),
        (RATE_TEXT.to_owned(), Piece::Rate),
    ];
    let mut pieces = Vec::new();
    let mut rest = json;
    loop {
        let next = markers
            .iter()
            .filter_map(|(marker, piece)| rest.find(marker.as_str()).map(|at| (at, marker, piece)))
            .min_by_key(|(at, _, _)| *at);
        let Some((at, marker, piece)) = next else {
            pieces.push(Piece::Text(rest.to_owned()));
            return pieces;
        };
        pieces.push(Piece::Text(rest[..at].to_owned()));
        pieces.push(match piece {
            Piece::Namespace => Piece::Namespace,
            Piece::Name => Piece::Name,
            _ => Piece::Rate,
        });
        rest = &rest[at + marker.len()..];
    }
}

/// A busy flow: every counter and rate set, as a pod that serves requests has them.
fn busy_flow(rate: f64) -> FlowReply {
    FlowReply {
        totals: FlowTotals {
            requests: 1_234_567,
            responses: StatusCounts {
                success: 1_230_000,
                client_error: 4_000,
                server_error: 567,
                ..StatusCounts::default()
            },
            request_bytes: 345_678_901,
            response_bytes: 2_345_678_901,
        },
        rate,
        duration: Some(DurationSummary {
            exchanges: 3_600,
            p50_seconds: 0.0042,
            p90_seconds: 0.0121,
            p95_seconds: 0.0187,
            p99_seconds: 0.0532,
        }),
        concurrency: Some(1.875),
        request_bytes_per_second: 41_234.5,
        response_bytes_per_second: 512_345.25,
    }
}

impl Template {
    /// The full `/v1/pods` answer of the real agent, pods with inbound and outbound traffic.
    pub fn pods() -> Result<Self> {
        let pod = PodReply {
            namespace: NAMESPACE.into(),
            name: NAME.into(),
            uid: Some("6f1c2d3e-4a5b-4c6d-8e9f-0a1b2c3d4e5f".into()),
            workload: Some(Workload::new("Deployment", "web")),
            inbound: busy_flow(RATE),
            outbound: busy_flow(12.5),
            loopback_inbound: FlowReply::default(),
            loopback_outbound: FlowReply::default(),
            node_inbound: busy_flow(0.2),
            observed: ObservedReply::default(),
        };
        let empty = PodsReply {
            rate_window_seconds: WINDOW_SECONDS,
            pods: Vec::new(),
            unattributed: UnattributedReply::default(),
        };
        Self::new(
            &serde_json::to_string(&empty)?,
            &serde_json::to_string(&pod)?,
        )
    }

    /// `/v1/pods/inbound`: the same pods' inbound values only.
    pub fn inbound() -> Result<Self> {
        let pod = InboundPod::new(NAMESPACE.into(), NAME.into(), &busy_flow(RATE));
        let empty = InboundReply {
            rate_window_seconds: WINDOW_SECONDS,
            pods: Vec::new(),
        };
        Self::new(
            &serde_json::to_string(&empty)?,
            &serde_json::to_string(&pod)?,
        )
    }

    /// From an answer without pods (`"pods":[]`) and one pod with the markers.
    fn new(empty: &str, pod: &str) -> Result<Self> {
        let at = empty
            .find("[]")
            .context("no empty pod list in the template")?;
        Ok(Self {
            head: empty[..=at].to_owned(),
            pod: pieces(pod),
            tail: empty[at + 1..].to_owned(),
        })
    }

    /// Node `node`'s body for second `second`.
    pub fn render(&self, layout: Layout, node: usize, second: u64) -> Vec<u8> {
        let mut body = String::with_capacity(self.head.len() + layout.pods * 1_024);
        body.push_str(&self.head);
        for slot in 0..layout.pods {
            if slot > 0 {
                body.push(',');
            }
            let pod = layout.pod(node, slot);
            for piece in &self.pod {
                match piece {
                    Piece::Text(text) => body.push_str(text),
                    Piece::Namespace => {
                        let _ = write!(body, "\"{}\"", pod.namespace);
                    }
                    Piece::Name => {
                        let _ = write!(body, "\"{}\"", pod.name);
                    }
                    Piece::Rate => {
                        let _ = write!(body, "{}.{:03}", second % 10_000, slot % 1_000);
                    }
                }
            }
        }
        body.push_str(&self.tail);
        body.into_bytes()
    }
}

/// The second a served rate was rendered in, modulo 10,000.
pub fn second_of(rate: f64) -> u64 {
    // Non-negative and below 10,000 by construction; a foreign value reads as second 0.
    if rate.is_finite() && rate >= 0.0 {
        (rate.floor() as u64) % 10_000
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rendered_bodies_are_real_pods_replies_with_the_second_in_the_rate() {
        let layout = Layout { nodes: 3, pods: 4 };
        let body = Template::pods().unwrap().render(layout, 2, 10_042);
        let reply: PodsReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(reply.pods.len(), 4);
        let pod = layout.pod(2, 3);
        assert_eq!(reply.pods[3].namespace, pod.namespace);
        assert_eq!(reply.pods[3].name, pod.name);
        assert!((reply.pods[3].inbound.rate - 42.003).abs() < 1e-9);
        assert_eq!(second_of(reply.pods[3].inbound.rate), 42);
        assert!((reply.pods[3].outbound.rate - 12.5).abs() < 1e-9);

        let body = Template::inbound().unwrap().render(layout, 2, 10_042);
        let inbound: InboundReply = serde_json::from_slice(&body).unwrap();
        assert_eq!(inbound, InboundReply::of(&reply));
    }
}
