//! The explained result of one sync: every metric's proposal, how the winner was stabilised and
//! limited, and the count the HPA sets, with a one-line reason for the terminal.

use std::fmt;

use serde::Serialize;

use super::rate::RateLimit;
use super::replicas::{MetricError, Proposal};
use super::stabilize::{Clamp, Stabilisation};

/// What one metric contributed.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status")]
pub(crate) enum MetricReport {
    /// The metric proposed a count.
    Proposed(Proposal),
    /// The metric could not be evaluated.
    Failed {
        /// The metric.
        metric: String,
        /// Why.
        error: MetricError,
    },
}

impl MetricReport {
    /// The proposal, if the metric produced one.
    #[must_use]
    pub(crate) fn proposal(&self) -> Option<&Proposal> {
        match self {
            Self::Proposed(proposal) => Some(proposal),
            Self::Failed { .. } => None,
        }
    }
}

/// The path `reconcileAutoscaler` took.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "kind")]
pub(crate) enum Outcome {
    /// The target has 0 replicas: the HPA considers itself disabled and leaves it alone.
    ScalingDisabled,
    /// The target has more than `maxReplicas`: set to `maxReplicas`, no metric is read.
    AboveMaxReplicas {
        /// `spec.maxReplicas`.
        max_replicas: u32,
    },
    /// The target has fewer than `minReplicas`: set to `minReplicas`, no metric is read.
    BelowMinReplicas {
        /// `spec.minReplicas`.
        min_replicas: u32,
    },
    /// Every metric failed, or some failed and the rest would scale down: keep the count
    /// (and record nothing, as the controller returns before normalising).
    MetricsFailed {
        /// Metrics that failed.
        failed: usize,
        /// Metrics in the spec.
        total: usize,
        /// The largest proposal of the metrics that worked, if any.
        largest_proposal: Option<i64>,
    },
    /// The largest proposal, normalised.
    FromMetrics(Normalised),
}

/// The normalisation of the largest proposal.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct Normalised {
    /// The metric whose proposal won, as `computeReplicasForMetrics` picks it.
    pub(crate) metric: Option<String>,
    /// The desired count before normalisation: the largest proposal, at least 0.
    pub(crate) proposal: i64,
    /// Metrics that failed but did not block scaling (the others scale up or hold).
    pub(crate) failed_metrics: usize,
    /// The stabilisation windows' effect.
    pub(crate) stabilisation: Stabilisation,
    /// The `behavior` policies' allowance in the direction of travel, if any applied.
    pub(crate) rate_limit: Option<RateLimit>,
    /// The limit that set the final count.
    pub(crate) clamp: Clamp,
}

/// What the HPA decides at one sync, and why.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Decision {
    /// The scale target's `spec.replicas` at the sync.
    pub(crate) current_replicas: u32,
    /// Every metric of the spec, in spec order (empty when no metric was read).
    pub(crate) metrics: Vec<MetricReport>,
    /// The path taken.
    pub(crate) outcome: Outcome,
    /// The count the HPA sets (equal to `current_replicas` when it does not scale).
    pub(crate) desired_replicas: u32,
}

impl Decision {
    /// Whether the HPA changes the target's replica count.
    #[must_use]
    pub(crate) fn rescales(&self) -> bool {
        self.desired_replicas != self.current_replicas
    }

    fn explain_metrics(&self, normalised: &Normalised, parts: &mut Vec<String>) {
        let winner = self
            .metrics
            .iter()
            .filter_map(MetricReport::proposal)
            .find(|proposal| Some(&proposal.metric) == normalised.metric.as_ref());
        match winner {
            Some(proposal) if self.metrics.len() > 1 => parts.push(format!(
                "{}: {proposal} (largest of {} metrics)",
                proposal.metric,
                self.metrics.len()
            )),
            Some(proposal) => parts.push(proposal.to_string()),
            None => parts.push(format!("proposal {}", normalised.proposal)),
        }
        if normalised.failed_metrics > 0 {
            parts.push(format!(
                "{} failed metric(s) ignored as the rest do not scale down",
                normalised.failed_metrics
            ));
        }
    }
}

impl fmt::Display for Decision {
    /// One line, e.g.
    /// `usage 25.0/pod vs target 25.0 -> ratio 1.00 within tolerance 0.10: keep 2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let current = self.current_replicas;
        let mut parts = Vec::new();
        match &self.outcome {
            Outcome::ScalingDisabled => {
                parts.push("current replicas 0: scaling is disabled".to_owned());
            }
            Outcome::AboveMaxReplicas { max_replicas } => {
                parts.push(format!(
                    "current {current} above maxReplicas {max_replicas}"
                ));
            }
            Outcome::BelowMinReplicas { min_replicas } => {
                parts.push(format!(
                    "current {current} below minReplicas {min_replicas}"
                ));
            }
            Outcome::MetricsFailed {
                failed,
                total,
                largest_proposal,
            } => {
                parts.extend(self.metrics.iter().filter_map(|report| match report {
                    MetricReport::Failed { metric, error } => Some(format!("{metric}: {error}")),
                    MetricReport::Proposed(_) => None,
                }));
                if let Some(largest) = largest_proposal {
                    parts.push(format!(
                        "{failed} of {total} metrics failed and the rest propose {largest} < {current}: no scale-down on partial data"
                    ));
                }
            }
            Outcome::FromMetrics(normalised) => {
                self.explain_metrics(normalised, &mut parts);
                parts.extend(normalised.stabilisation.explain(normalised.proposal));
                parts.extend(
                    normalised
                        .clamp
                        .explain(i64::from(current), normalised.rate_limit.as_ref()),
                );
            }
        }
        let verdict = if self.rescales() {
            format!("scale {current} -> {}", self.desired_replicas)
        } else {
            format!("keep {current}")
        };
        write!(f, "{}: {verdict}", parts.join("; "))
    }
}
