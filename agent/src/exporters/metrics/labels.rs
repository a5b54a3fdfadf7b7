//! Every label set the agent exports, as types: label names and their order live here only.

use std::{fmt::Write as _, sync::Arc};

use podmeter_common::status_class;
use prometheus_client::encoding::{
    EncodeLabel, EncodeLabelSet, EncodeLabelValue, LabelSetEncoder, LabelValueEncoder,
};

use crate::{connections::pairing::Outcome, events::decode::Method, identity::PodId};

/// `namespace`, `pod`: the pod a series belongs to.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub namespace: String,
    pub pod: String,
}

impl From<&PodId> for PodLabels {
    fn from(pod: &PodId) -> Self {
        Self {
            namespace: pod.namespace.clone(),
            pod: pod.name.clone(),
        }
    }
}

/// How an exchange ended: `1xx` .. `5xx`, `none` (the connection closed before a response) or
/// `other` (a status outside 100..=599, or a response whose status line was not recognised).
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub enum StatusClass {
    None,
    Informational,
    Success,
    Redirection,
    ClientError,
    ServerError,
    Other,
}

impl StatusClass {
    /// In the order of the kernel's `podmeter_common::status_class` slots.
    pub const ALL: [StatusClass; status_class::COUNT] = [
        StatusClass::None,
        StatusClass::Informational,
        StatusClass::Success,
        StatusClass::Redirection,
        StatusClass::ClientError,
        StatusClass::ServerError,
        StatusClass::Other,
    ];

    /// The class of a status code.
    pub fn of_status(status: u16) -> Self {
        Self::ALL[usize::from(status_class::of(u32::from(status)))]
    }

    pub fn of_outcome(outcome: Outcome) -> Self {
        match outcome {
            Outcome::Status(status) => Self::of_status(status),
            Outcome::Unrecognised => Self::Other,
            Outcome::NoResponse => Self::None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::None => "none",
            Self::Informational => "1xx",
            Self::Success => "2xx",
            Self::Redirection => "3xx",
            Self::ClientError => "4xx",
            Self::ServerError => "5xx",
            Self::Other => "other",
        }
    }
}

impl EncodeLabelValue for StatusClass {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

impl EncodeLabelValue for Method {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(self.as_str())
    }
}

/// `namespace`, `pod`, `status_class`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResponseLabels {
    #[prometheus(flatten)]
    pub pod: PodLabels,
    pub status_class: StatusClass,
}

/// `route`, present only when route labels are on (`--route-labels`).
#[derive(Clone, Debug, Hash, PartialEq, Eq)]
pub struct RouteLabel(pub Option<Arc<str>>);

impl EncodeLabelSet for RouteLabel {
    fn encode(&self, encoder: &mut LabelSetEncoder) -> Result<(), std::fmt::Error> {
        match &self.0 {
            Some(route) => ("route", &**route).encode(encoder.encode_label()),
            None => Ok(()),
        }
    }
}

/// `namespace`, `pod`, `method`, `status_class` and, with route labels on, `route`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ObservedLabels {
    #[prometheus(flatten)]
    pub pod: PodLabels,
    pub method: Method,
    pub status_class: StatusClass,
    #[prometheus(flatten)]
    pub route: RouteLabel,
}

/// `namespace`, `pod` and, with route labels on, `route`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct DurationLabels {
    #[prometheus(flatten)]
    pub pod: PodLabels,
    #[prometheus(flatten)]
    pub route: RouteLabel,
}

/// `version`: the agent's build.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct BuildLabels {
    pub version: String,
}

/// `programs`, `link`, `cgroup_root`: how and where the kernel programs are attached.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttachLabels {
    pub programs: String,
    pub link: String,
    pub cgroup_root: String,
}

/// What could not be parsed.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum ParseFailure {
    /// A ring buffer record of the wrong size or kind.
    Event,
    /// A request whose first bytes were not a valid HTTP/1.x request line (it still counts).
    RequestLine,
    /// A response whose status line the kernel did not recognise (it ends with class `other`).
    ResponseStatus,
}

impl EncodeLabelValue for ParseFailure {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Event => "event",
            Self::RequestLine => "request_line",
            Self::ResponseStatus => "response_status",
        })
    }
}

/// `kind`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ParseFailureLabels {
    pub kind: ParseFailure,
}

/// A kernel map that can fill up.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum KernelMap {
    /// The exact counters: an update that failed loses requests from the counts.
    Counters,
    /// The connection table: a connection that could not be entered is not parsed.
    Connections,
}

impl EncodeLabelValue for KernelMap {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Counters => "counters",
            Self::Connections => "connections",
        })
    }
}

/// `map`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MapLabels {
    pub map: KernelMap,
}

/// Why the kernel skipped a segment that looked like the start of a request.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum SkipReason {
    /// Its sequence number was counted already.
    Retransmission,
    /// The connection was waiting for a response: a request body, or a pipelined request.
    AwaitingResponse,
}

impl EncodeLabelValue for SkipReason {
    fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
        encoder.write_str(match self {
            Self::Retransmission => "retransmission",
            Self::AwaitingResponse => "awaiting_response",
        })
    }
}

/// `reason`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SkipLabels {
    pub reason: SkipReason,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_classes_follow_the_kernel_slots() {
        for (slot, class) in StatusClass::ALL.iter().enumerate() {
            let slot = u16::try_from(slot).expect("small");
            let expected = match slot {
                status_class::NONE => "none",
                status_class::OTHER => "other",
                n => ["", "1xx", "2xx", "3xx", "4xx", "5xx"][usize::from(n)],
            };
            assert_eq!(class.as_str(), expected);
        }
        assert_eq!(StatusClass::of_status(204), StatusClass::Success);
        assert_eq!(StatusClass::of_status(101), StatusClass::Informational);
        assert_eq!(StatusClass::of_status(503), StatusClass::ServerError);
        assert_eq!(StatusClass::of_status(699), StatusClass::Other);
        assert_eq!(
            StatusClass::of_outcome(Outcome::NoResponse),
            StatusClass::None
        );
        assert_eq!(
            StatusClass::of_outcome(Outcome::Unrecognised),
            StatusClass::Other
        );
    }
}
