//! `behavior` rate limits: what each policy allows from the replica count at the start of its
//! period (`calculateScaleUpLimitWithScalingRules`, `calculateScaleDownLimitWithBehaviors`).

use std::fmt;
use std::time::Duration;

use serde::Serialize;

use super::history::{ScaleEvent, newer_than};
use super::spec::{Direction, PolicyKind, Rules, ScalingPolicy, SelectPolicy};

#[cfg(test)]
mod tests;

/// What one policy allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct PolicyLimit {
    /// The policy.
    pub(crate) policy: ScalingPolicy,
    /// Replicas added by scale-ups within its period.
    pub(crate) added_in_period: i64,
    /// Replicas removed by scale-downs within its period.
    pub(crate) removed_in_period: i64,
    /// `current - added + removed`: the count the period started from.
    pub(crate) period_start: i64,
    /// The count this policy allows now.
    pub(crate) limit: i64,
}

/// The rate limit of one direction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct RateLimit {
    /// Which way the desired count moves.
    pub(crate) direction: Direction,
    /// How the policies were combined.
    pub(crate) select_policy: SelectPolicy,
    /// Each policy's allowance (empty when the direction is disabled).
    pub(crate) policies: Vec<PolicyLimit>,
    /// The combined allowance before it is kept from moving past the current count.
    pub(crate) selected: i64,
    /// The allowance applied: `selected`, but never beyond the current count in the wrong
    /// direction (events still inside the period may have used the whole budget).
    pub(crate) limit: i64,
}

/// `getReplicasChangePerPeriod`: changes strictly newer than `now - period`.
pub(super) fn replicas_changed_in_period(
    period_seconds: u32,
    events: &[ScaleEvent],
    now: Duration,
) -> i64 {
    events
        .iter()
        .filter(|event| newer_than(event.at, period_seconds, now))
        .map(|event| event.replica_change)
        .sum()
}

/// The highest count a scale-up (`Direction::Up`) or the lowest a scale-down may reach now
/// (Kubernetes' `calculateScaleUpLimitWithScalingRules` and `calculateScaleDownLimitWithBehaviors`).
pub(super) fn limit(
    direction: Direction,
    current: i64,
    up_events: &[ScaleEvent],
    down_events: &[ScaleEvent],
    rules: &Rules,
    now: Duration,
) -> RateLimit {
    let mut policies = Vec::new();
    let selected = if rules.select_policy == SelectPolicy::Disabled {
        current
    } else {
        // For a scale-up the largest change is the largest count; for a scale-down, the smallest.
        let largest_count = match direction {
            Direction::Up => rules.select_policy != SelectPolicy::Min,
            Direction::Down => rules.select_policy == SelectPolicy::Min,
        };
        // Go starts from MinInt32 / MaxInt32; kept so an empty policy list behaves the same.
        let mut selected = if largest_count {
            i64::from(i32::MIN)
        } else {
            i64::from(i32::MAX)
        };
        for policy in &rules.policies {
            let added_in_period = replicas_changed_in_period(policy.period_seconds, up_events, now);
            let removed_in_period =
                replicas_changed_in_period(policy.period_seconds, down_events, now);
            let period_start = current - added_in_period + removed_in_period;
            let limit = policy_limit(direction, *policy, period_start);
            selected = if largest_count {
                selected.max(limit)
            } else {
                selected.min(limit)
            };
            policies.push(PolicyLimit {
                policy: *policy,
                added_in_period,
                removed_in_period,
                period_start,
                limit,
            });
        }
        selected
    };
    let limit = match direction {
        Direction::Up => selected.max(current),
        Direction::Down => selected.min(current),
    };
    RateLimit {
        direction,
        select_policy: rules.select_policy,
        policies,
        selected,
        limit,
    }
}

/// One policy's allowance, with Kubernetes' float arithmetic: a scale-up percentage rounds up
/// (so small counts can grow at all), a scale-down percentage truncates.
fn policy_limit(direction: Direction, policy: ScalingPolicy, period_start: i64) -> i64 {
    let value = i64::from(policy.value);
    let fraction = f64::from(policy.value) / 100.0;
    match (direction, policy.kind) {
        (Direction::Up, PolicyKind::Pods) => period_start + value,
        (Direction::Down, PolicyKind::Pods) => period_start - value,
        (Direction::Up, PolicyKind::Percent) => {
            (period_start as f64 * (1.0 + fraction)).ceil() as i64
        }
        (Direction::Down, PolicyKind::Percent) => (period_start as f64 * (1.0 - fraction)) as i64,
    }
}

impl fmt::Display for RateLimit {
    /// E.g. `scale-up policy 4 pods per 15 s (period start 1, selectPolicy Max)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.select_policy == SelectPolicy::Disabled {
            return write!(f, "{} disabled (selectPolicy Disabled)", self.direction);
        }
        let Some(deciding) = self
            .policies
            .iter()
            .find(|policy| policy.limit == self.selected)
        else {
            return write!(f, "{} policies (none set)", self.direction);
        };
        write!(
            f,
            "{} policy {} (period start {}",
            self.direction, deciding.policy, deciding.period_start
        )?;
        if self.policies.len() > 1 {
            write!(f, ", selectPolicy {:?}", self.select_policy)?;
        }
        if self.limit != self.selected {
            write!(f, ", used up by recent {} events", self.direction)?;
        }
        f.write_str(")")
    }
}
