//! One metric's replica proposal: `GetMetricReplicas` / `calcPlainMetricReplicas` of
//! `replica_calculator.go`, including the rebalancing of missing and unready pods.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use super::observed::{MetricSample, Pod, PodState};
use super::spec::PodsMetricTarget;

#[cfg(test)]
mod tests;

/// The band around a ratio of 1 inside which the controller keeps the current count.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Tolerances {
    /// How far below 1 the ratio may fall.
    pub(crate) scale_down: f64,
    /// How far above 1 the ratio may rise.
    pub(crate) scale_up: f64,
}

impl Tolerances {
    /// The same tolerance on both sides (the controller flag).
    #[must_use]
    pub(crate) fn uniform(tolerance: f64) -> Self {
        Self {
            scale_down: tolerance,
            scale_up: tolerance,
        }
    }

    /// `Tolerances.isWithin`: `1 - down <= ratio <= 1 + up`.
    ///
    /// Kubernetes before 1.33 tested `|1 - ratio| <= tolerance`, which differs only in the last
    /// bit: a ratio of exactly 1.1 scaled there and is kept here, as in current releases.
    #[must_use]
    pub(crate) fn contains(self, ratio: f64) -> bool {
        (1.0 - self.scale_down) <= ratio && ratio <= (1.0 + self.scale_up)
    }
}

impl fmt::Display for Tolerances {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.scale_down == self.scale_up {
            write!(f, "tolerance {:.2}", self.scale_up)
        } else {
            write!(f, "tolerance -{:.2}/+{:.2}", self.scale_down, self.scale_up)
        }
    }
}

/// How `groupPods` filed the listed pods, and how many values were averaged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct PodCounts {
    /// Ready pods that have a value.
    pub(crate) ready: usize,
    /// Pending pods (their values, if any, were dropped).
    pub(crate) unready: usize,
    /// Ready pods without a value.
    pub(crate) missing: usize,
    /// Deleted or terminated pods (their values, if any, were dropped).
    pub(crate) ignored: usize,
    /// Values averaged: the ready pods plus any value for a pod the selector did not list.
    pub(crate) samples: usize,
}

/// The second pass over an enlarged set when pods are missing, or pending during a scale-up.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct Rebalance {
    /// What each missing pod was counted as: the target when scaling down, 0 when scaling up,
    /// `None` when the ratio was exactly 1 (Kubernetes then leaves them out).
    pub(crate) missing_counted_as_milli: Option<i64>,
    /// Whether pending pods were counted as 0 (only when the first ratio is above 1).
    pub(crate) unready_counted_as_zero: bool,
    /// Average over the enlarged set, floor of milli-units.
    pub(crate) usage_milli: i64,
    /// `usage_milli / target`.
    pub(crate) ratio: f64,
    /// Size of the enlarged set.
    pub(crate) samples: usize,
}

/// Which branch of `calcPlainMetricReplicas` produced the proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub(crate) enum ProposalOutcome {
    /// Nothing to rebalance and the ratio is within tolerance: keep the current count.
    WithinTolerance,
    /// Nothing to rebalance: `ceil(ratio * ready)`.
    Scaled,
    /// After rebalancing the ratio is within tolerance: keep the current count.
    RebalancedWithinTolerance,
    /// Rebalancing moved the ratio to the other side of 1: keep the current count.
    RebalanceCrossedOne,
    /// `ceil(ratio' * n)` would move against the ratio (e.g. more pods while the ratio says
    /// fewer, as during a rolling update with surge): keep the current count.
    RebalanceReversed {
        /// The count that was computed and discarded.
        computed: i64,
    },
    /// `ceil(ratio' * n)` over the enlarged set.
    Rebalanced,
}

/// One metric's proposal and how it was reached.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Proposal {
    /// The metric.
    pub(crate) metric: String,
    /// Its `averageValue` target, milli-units.
    pub(crate) target_milli: i64,
    /// `floor(sum / count)` over the values used, milli-units; what `kubectl describe hpa` shows.
    pub(crate) usage_milli: i64,
    /// `usage_milli / target_milli`.
    pub(crate) ratio: f64,
    /// The tolerance band used.
    pub(crate) tolerances: Tolerances,
    /// How the pods were filed.
    pub(crate) pods: PodCounts,
    /// The second pass, when one ran.
    pub(crate) rebalance: Option<Rebalance>,
    /// Which branch decided.
    pub(crate) outcome: ProposalOutcome,
    /// The proposed replica count.
    pub(crate) replicas: i64,
}

/// Why a metric produced no proposal. Kubernetes' messages are kept where it has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) enum MetricError {
    /// No values were supplied for the metric (the custom metrics API call failed).
    Unavailable,
    /// The selector listed no pods.
    NoPods,
    /// No value is left once pending, deleted and terminated pods are dropped.
    NoReadyMetrics,
}

impl fmt::Display for MetricError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Unavailable => "unable to get metric: no values from the custom metrics API",
            Self::NoPods => "no pods returned by selector while calculating replica count",
            Self::NoReadyMetrics => {
                "did not receive metrics for targeted pods (pods might be unready)"
            }
        })
    }
}

impl std::error::Error for MetricError {}

/// Proposes a replica count for one `Pods` metric, as `calcPlainMetricReplicas` does.
///
/// `current_replicas` is the scale target's `spec.replicas`; it is returned whenever the
/// controller would keep the count.
///
/// # Errors
/// When the selector lists no pods or no usable value remains.
pub(crate) fn pods_metric_replicas(
    current_replicas: u32,
    target: &PodsMetricTarget,
    tolerances: Tolerances,
    pods: &[Pod],
    sample: &MetricSample,
) -> Result<Proposal, MetricError> {
    if pods.is_empty() {
        return Err(MetricError::NoPods);
    }
    let current = i64::from(current_replicas);

    // groupPods: deletion and terminal phases first, then Pending, then "has a value".
    let mut ready = 0;
    let mut unready = Vec::new();
    let mut missing = Vec::new();
    let mut ignored = Vec::new();
    for pod in pods {
        match pod.state {
            PodState::Ignored => ignored.push(pod.name.as_str()),
            PodState::Unready => unready.push(pod.name.as_str()),
            PodState::Ready if sample.contains_key(&pod.name) => ready += 1,
            PodState::Ready => missing.push(pod.name.as_str()),
        }
    }
    let mut values: BTreeMap<&str, i64> = sample
        .iter()
        .map(|(pod, value)| (pod.as_str(), *value))
        .collect();
    for pod in ignored.iter().chain(&unready) {
        values.remove(pod);
    }
    if values.is_empty() {
        return Err(MetricError::NoReadyMetrics);
    }

    let (usage_milli, ratio) = usage_ratio(&values, target.average_value_milli);
    let counts = PodCounts {
        ready,
        unready: unready.len(),
        missing: missing.len(),
        ignored: ignored.len(),
        samples: values.len(),
    };
    let proposal = |rebalance, outcome, replicas| Proposal {
        metric: target.name.clone(),
        target_milli: target.average_value_milli,
        usage_milli,
        ratio,
        tolerances,
        pods: counts,
        rebalance,
        outcome,
        replicas,
    };

    let scale_up_with_unready = !unready.is_empty() && ratio > 1.0;
    if !scale_up_with_unready && missing.is_empty() {
        return Ok(if tolerances.contains(ratio) {
            proposal(None, ProposalOutcome::WithinTolerance, current)
        } else {
            proposal(None, ProposalOutcome::Scaled, ceil_replicas(ratio, ready))
        });
    }

    // Assume the worst for the direction the ready pods point to: a missing pod would have
    // been at the target on a scale-down and idle on a scale-up; a pending pod will be idle.
    let missing_counted_as_milli = if missing.is_empty() {
        None
    } else if ratio < 1.0 {
        Some(target.average_value_milli)
    } else if ratio > 1.0 {
        Some(0)
    } else {
        None
    };
    if let Some(value) = missing_counted_as_milli {
        values.extend(missing.iter().map(|pod| (*pod, value)));
    }
    if scale_up_with_unready {
        values.extend(unready.iter().map(|pod| (*pod, 0)));
    }
    let (new_usage_milli, new_ratio) = usage_ratio(&values, target.average_value_milli);
    let rebalance = Some(Rebalance {
        missing_counted_as_milli,
        unready_counted_as_zero: scale_up_with_unready,
        usage_milli: new_usage_milli,
        ratio: new_ratio,
        samples: values.len(),
    });

    if tolerances.contains(new_ratio) {
        return Ok(proposal(
            rebalance,
            ProposalOutcome::RebalancedWithinTolerance,
            current,
        ));
    }
    if (ratio < 1.0 && new_ratio > 1.0) || (ratio > 1.0 && new_ratio < 1.0) {
        return Ok(proposal(
            rebalance,
            ProposalOutcome::RebalanceCrossedOne,
            current,
        ));
    }
    let computed = ceil_replicas(new_ratio, values.len());
    if (new_ratio < 1.0 && computed > current) || (new_ratio > 1.0 && computed < current) {
        return Ok(proposal(
            rebalance,
            ProposalOutcome::RebalanceReversed { computed },
            current,
        ));
    }
    Ok(proposal(rebalance, ProposalOutcome::Rebalanced, computed))
}

/// `GetMetricUsageRatio`: integer average (truncating, like Go), then a float ratio. The sum is
/// exact in `i128`, as Kubernetes falls back to `big.Int` on overflow.
fn usage_ratio(values: &BTreeMap<&str, i64>, target_milli: i64) -> (i64, f64) {
    let total: i128 = values.values().map(|value| i128::from(*value)).sum();
    let count = i128::try_from(values.len()).unwrap_or(i128::MAX).max(1);
    let average = total / count;
    // The mean of i64 values is an i64; the fallback is unreachable.
    let usage = i64::try_from(average).unwrap_or(if average < 0 { i64::MIN } else { i64::MAX });
    (usage, usage as f64 / target_milli as f64)
}

/// `int32(math.Ceil(ratio * n))`, saturating instead of wrapping on absurd ratios.
fn ceil_replicas(ratio: f64, count: usize) -> i64 {
    (ratio * count as f64).ceil() as i64
}

/// A milli-unit value printed in units, without trailing zeros beyond one decimal.
#[derive(Debug, Clone, Copy)]
pub(super) struct Milli(pub i64);

impl fmt::Display for Milli {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sign = if self.0 < 0 { "-" } else { "" };
        let abs = self.0.unsigned_abs();
        let (units, thousandths) = (abs / 1000, abs % 1000);
        if thousandths % 100 == 0 {
            write!(f, "{sign}{units}.{}", thousandths / 100)
        } else if thousandths % 10 == 0 {
            write!(f, "{sign}{units}.{:02}", thousandths / 10)
        } else {
            write!(f, "{sign}{units}.{thousandths:03}")
        }
    }
}

fn plural(count: usize, word: &str) -> String {
    if count == 1 {
        format!("{count} {word}")
    } else {
        format!("{count} {word}s")
    }
}

impl fmt::Display for Proposal {
    /// The metric's part of the one-line reason, e.g.
    /// `usage 50.0/pod vs target 25.0 -> ratio 2.00 x 1 ready pod = 2`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "usage {}/pod vs target {} -> ratio {:.2}",
            Milli(self.usage_milli),
            Milli(self.target_milli),
            self.ratio
        )?;
        if self.pods.samples != self.pods.ready {
            write!(f, " (over {})", plural(self.pods.samples, "value"))?;
        }
        if let Some(rebalance) = &self.rebalance {
            let mut counted = Vec::new();
            match rebalance.missing_counted_as_milli {
                Some(value) => counted.push(format!(
                    "{} counted as {}",
                    plural(self.pods.missing, "missing pod"),
                    Milli(value)
                )),
                None if self.pods.missing > 0 => {
                    counted.push(format!(
                        "{} left out",
                        plural(self.pods.missing, "missing pod")
                    ));
                }
                None => {}
            }
            if rebalance.unready_counted_as_zero {
                counted.push(format!(
                    "{} counted as 0",
                    plural(self.pods.unready, "pending pod")
                ));
            }
            write!(
                f,
                ", {} -> ratio {:.2}",
                counted.join(" and "),
                rebalance.ratio
            )?;
        }
        match self.outcome {
            ProposalOutcome::WithinTolerance | ProposalOutcome::RebalancedWithinTolerance => {
                write!(f, " within {}", self.tolerances)
            }
            ProposalOutcome::Scaled => write!(
                f,
                " x {} = {}",
                plural(self.pods.ready, "ready pod"),
                self.replicas
            ),
            ProposalOutcome::RebalanceCrossedOne => f.write_str(" crosses 1, direction unclear"),
            ProposalOutcome::RebalanceReversed { computed } => {
                let samples = self.rebalance.map_or(0, |rebalance| rebalance.samples);
                write!(
                    f,
                    " x {samples} = {computed} moves against the ratio, ignored"
                )
            }
            ProposalOutcome::Rebalanced => {
                let samples = self.rebalance.map_or(0, |rebalance| rebalance.samples);
                write!(f, " x {samples} = {}", self.replicas)
            }
        }
    }
}
