//! Normalisation of the winning proposal: stabilisation windows over past recommendations, then
//! the min/max and rate clamps (`normalizeDesiredReplicas` and its `WithBehaviors` twin).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::history::{History, Recommendation, newer_than, older_than};
use super::rate::{self, RateLimit};
use super::spec::{Direction, Rules, SCALE_UP_LIMIT_FACTOR, SCALE_UP_LIMIT_MINIMUM};

#[cfg(test)]
mod tests;

/// How past recommendations bent the proposal.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "kind")]
pub(crate) enum Stabilisation {
    /// Without `behavior`: the highest recommendation of the downscale window.
    Default {
        /// `--horizontal-pod-autoscaler-downscale-stabilization`.
        window_seconds: u32,
        /// `max(recommendations in window, proposal)`.
        recommendation: i64,
    },
    /// With `behavior`: the current count, pulled up to the lowest recommendation of the
    /// scale-up window and down to the highest of the scale-down window.
    Behavior {
        /// Effective `scaleUp.stabilizationWindowSeconds`.
        scale_up_window_seconds: u32,
        /// Effective `scaleDown.stabilizationWindowSeconds`.
        scale_down_window_seconds: u32,
        /// `min(recommendations in the scale-up window, proposal)`.
        scale_up_floor: i64,
        /// `max(recommendations in the scale-down window, proposal)`.
        scale_down_ceiling: i64,
        /// `clamp(current, scale_up_floor, scale_down_ceiling)`.
        recommendation: i64,
    },
}

impl Stabilisation {
    /// The stabilised count.
    #[must_use]
    pub(crate) fn recommendation(&self) -> i64 {
        match *self {
            Self::Default { recommendation, .. } | Self::Behavior { recommendation, .. } => {
                recommendation
            }
        }
    }

    /// Describes why the stabilised count differs from `proposal`, if it does.
    #[must_use]
    pub(crate) fn explain(&self, proposal: i64) -> Option<String> {
        let recommendation = self.recommendation();
        match *self {
            _ if recommendation == proposal => None,
            Self::Default { window_seconds, .. } => Some(format!(
                "held at {recommendation} by the highest recommendation of the last {window_seconds} s"
            )),
            Self::Behavior {
                scale_up_window_seconds,
                ..
            } if recommendation < proposal => Some(format!(
                "held at {recommendation} by the lowest recommendation of the {scale_up_window_seconds} s scale-up window"
            )),
            Self::Behavior {
                scale_down_window_seconds,
                ..
            } => Some(format!(
                "held at {recommendation} by the highest recommendation of the {scale_down_window_seconds} s scale-down window"
            )),
        }
    }
}

/// Which limit set the final count, named after the `ScalingLimited` condition reasons.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(tag = "reason")]
pub(crate) enum Clamp {
    /// `DesiredWithinRange`: nothing limited the stabilised count.
    DesiredWithinRange,
    /// `TooFewReplicas`: raised to `minReplicas`.
    TooFewReplicas {
        /// `spec.minReplicas`.
        min_replicas: i64,
    },
    /// `TooManyReplicas`: lowered to `maxReplicas`.
    TooManyReplicas {
        /// `spec.maxReplicas`.
        max_replicas: i64,
    },
    /// `ScaleUpLimit`: lowered to `max(2 * current, 4)` without `behavior`, or to the
    /// scale-up policies' allowance with it.
    ScaleUpLimit {
        /// The bound applied.
        limit: i64,
    },
    /// `ScaleDownLimit`: raised to the scale-down policies' allowance.
    ScaleDownLimit {
        /// The bound applied.
        limit: i64,
    },
}

impl Clamp {
    /// Describes the clamp, given the rate limit that produced it (with `behavior`) and the
    /// current count (for the fixed limit without it).
    #[must_use]
    pub(crate) fn explain(&self, current: i64, rate_limit: Option<&RateLimit>) -> Option<String> {
        match *self {
            Self::DesiredWithinRange => None,
            Self::TooFewReplicas { min_replicas } => {
                Some(format!("raised to minReplicas {min_replicas}"))
            }
            Self::TooManyReplicas { max_replicas } => {
                Some(format!("capped at maxReplicas {max_replicas}"))
            }
            Self::ScaleUpLimit { limit } => Some(match rate_limit {
                Some(rate) => format!("capped at {limit} by {rate}"),
                None => format!(
                    "capped at {limit} by the scale-up limit max({SCALE_UP_LIMIT_FACTOR}x{current}, {SCALE_UP_LIMIT_MINIMUM})"
                ),
            }),
            Self::ScaleDownLimit { limit } => Some(match rate_limit {
                Some(rate) => format!("held at {limit} by {rate}"),
                None => format!("held at {limit} by the scale-down limit"),
            }),
        }
    }
}

impl fmt::Display for Clamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::DesiredWithinRange => "DesiredWithinRange",
            Self::TooFewReplicas { .. } => "TooFewReplicas",
            Self::TooManyReplicas { .. } => "TooManyReplicas",
            Self::ScaleUpLimit { .. } => "ScaleUpLimit",
            Self::ScaleDownLimit { .. } => "ScaleDownLimit",
        })
    }
}

/// `stabilizeRecommendation`: the highest recommendation not older than the window, then the
/// proposal is stored (in the last slot older than the window, if any).
pub(super) fn stabilize_default(
    recommendations: &mut Vec<Recommendation>,
    now: Duration,
    window_seconds: u32,
    proposal: i64,
) -> Stabilisation {
    let mut highest = proposal;
    let mut old_slot = None;
    for (index, recommendation) in recommendations.iter().enumerate() {
        if older_than(recommendation.at, window_seconds, now) {
            old_slot = Some(index);
        } else {
            highest = highest.max(recommendation.replicas);
        }
    }
    store(recommendations, old_slot, proposal, now);
    Stabilisation::Default {
        window_seconds,
        recommendation: highest,
    }
}

/// `stabilizeRecommendationWithBehaviors`.
pub(super) fn stabilize_with_behaviors(
    recommendations: &mut Vec<Recommendation>,
    now: Duration,
    up_window_seconds: u32,
    down_window_seconds: u32,
    current: i64,
    proposal: i64,
) -> Stabilisation {
    let mut scale_up_floor = proposal;
    let mut scale_down_ceiling = proposal;
    let mut old_slot = None;
    for (index, recommendation) in recommendations.iter().enumerate() {
        if newer_than(recommendation.at, up_window_seconds, now) {
            scale_up_floor = scale_up_floor.min(recommendation.replicas);
        }
        if newer_than(recommendation.at, down_window_seconds, now) {
            scale_down_ceiling = scale_down_ceiling.max(recommendation.replicas);
        }
        if older_than(recommendation.at, up_window_seconds, now)
            && older_than(recommendation.at, down_window_seconds, now)
        {
            old_slot = Some(index);
        }
    }
    // Not `Ord::clamp`: the floor never exceeds the ceiling, but Go's two ifs cannot panic.
    let mut recommendation = current;
    if recommendation < scale_up_floor {
        recommendation = scale_up_floor;
    }
    if recommendation > scale_down_ceiling {
        recommendation = scale_down_ceiling;
    }
    store(recommendations, old_slot, proposal, now);
    Stabilisation::Behavior {
        scale_up_window_seconds: up_window_seconds,
        scale_down_window_seconds: down_window_seconds,
        scale_up_floor,
        scale_down_ceiling,
        recommendation,
    }
}

fn store(
    recommendations: &mut Vec<Recommendation>,
    old_slot: Option<usize>,
    replicas: i64,
    now: Duration,
) {
    let recommendation = Recommendation { replicas, at: now };
    match old_slot.and_then(|index| recommendations.get_mut(index)) {
        Some(slot) => *slot = recommendation,
        None => recommendations.push(recommendation),
    }
}

/// `spec.minReplicas` and `spec.maxReplicas`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Bounds {
    pub(super) min: i64,
    pub(super) max: i64,
}

/// `convertDesiredReplicasWithRules`: clamp to `[minReplicas, min(maxReplicas, max(2c, 4))]`.
pub(super) fn clamp_default(
    current: i64,
    desired: i64,
    Bounds { min, max }: Bounds,
) -> (i64, Clamp) {
    let scale_up_limit = (SCALE_UP_LIMIT_FACTOR * current).max(SCALE_UP_LIMIT_MINIMUM);
    let (maximum, limited) = if max > scale_up_limit {
        (
            scale_up_limit,
            Clamp::ScaleUpLimit {
                limit: scale_up_limit,
            },
        )
    } else {
        (max, Clamp::TooManyReplicas { max_replicas: max })
    };
    if desired < min {
        (min, Clamp::TooFewReplicas { min_replicas: min })
    } else if desired > maximum {
        (maximum, limited)
    } else {
        (desired, Clamp::DesiredWithinRange)
    }
}

/// `convertDesiredReplicasWithBehaviorRate`: only the direction of travel is limited, by its
/// policies and by min/max; an unchanged count passes untouched.
pub(super) fn clamp_with_behavior(
    history: &History,
    now: Duration,
    up: &Rules,
    down: &Rules,
    current: i64,
    desired: i64,
    Bounds { min, max }: Bounds,
) -> (i64, Clamp, Option<RateLimit>) {
    let (up_events, down_events) = (&history.scale_up_events, &history.scale_down_events);
    if desired > current {
        let rate = rate::limit(Direction::Up, current, up_events, down_events, up, now);
        let (maximum, limited) = if max > rate.limit {
            (rate.limit, Clamp::ScaleUpLimit { limit: rate.limit })
        } else {
            (max, Clamp::TooManyReplicas { max_replicas: max })
        };
        if desired > maximum {
            return (maximum, limited, Some(rate));
        }
        (desired, Clamp::DesiredWithinRange, Some(rate))
    } else if desired < current {
        let rate = rate::limit(Direction::Down, current, up_events, down_events, down, now);
        let (minimum, limited) = if min < rate.limit {
            (rate.limit, Clamp::ScaleDownLimit { limit: rate.limit })
        } else {
            (min, Clamp::TooFewReplicas { min_replicas: min })
        };
        if desired < minimum {
            return (minimum, limited, Some(rate));
        }
        (desired, Clamp::DesiredWithinRange, Some(rate))
    } else {
        (desired, Clamp::DesiredWithinRange, None)
    }
}
