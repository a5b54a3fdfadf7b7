//! What the HPA controller sees at one sync: the pods its selector lists and, per metric, the
//! values the custom metrics API returned for them.

use std::collections::BTreeMap;

use serde::Serialize;

/// Values of one metric as the custom metrics API returned them: pod name -> milli-units
/// (`Quantity.MilliValue()`, so `"850m"` is `850` and `"25"` is `25000`).
///
/// Entries for pods that the selector does not list are kept and averaged, as in Kubernetes.
pub(crate) type MetricSample = BTreeMap<String, i64>;

/// `status.phase` of a pod.
#[cfg(test)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum PodPhase {
    /// Not yet running (unscheduled, pulling images, init containers).
    Pending,
    /// Bound and started.
    Running,
    /// Terminated successfully.
    Succeeded,
    /// Terminated with an error.
    Failed,
    /// The kubelet could not report.
    Unknown,
}

/// How `groupPods` files a pod for a non-CPU metric.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum PodState {
    /// Counted: neither Pending nor terminal nor being deleted. For metrics other than CPU the
    /// controller does not look at the Ready condition, so a Running-but-not-Ready pod is here.
    Ready,
    /// Phase Pending: its value is dropped, and it counts as 0 when the metric asks to scale up.
    Unready,
    /// Being deleted (`deletionTimestamp` set) or terminal (Failed, Succeeded): dropped entirely.
    #[cfg_attr(
        not(test),
        expect(
            dead_code,
            reason = "`recommend` lists only the agent's live pods; the model and its tests keep the rule"
        )
    )]
    Ignored,
}

impl PodState {
    /// Classifies a pod the way `groupPods` does, deletion first.
    #[cfg(test)]
    #[must_use]
    pub(crate) fn classify(phase: PodPhase, being_deleted: bool) -> Self {
        match (being_deleted, phase) {
            (true, _) | (false, PodPhase::Failed | PodPhase::Succeeded) => Self::Ignored,
            (false, PodPhase::Pending) => Self::Unready,
            (false, PodPhase::Running | PodPhase::Unknown) => Self::Ready,
        }
    }
}

/// A pod listed by the scale target's selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Pod {
    /// `metadata.name`, the key into a [`MetricSample`].
    pub(crate) name: String,
    /// Its classification.
    pub(crate) state: PodState,
}

impl Pod {
    /// A pod in the given state.
    #[must_use]
    pub(crate) fn new(name: impl Into<String>, state: PodState) -> Self {
        Self {
            name: name.into(),
            state,
        }
    }
}
