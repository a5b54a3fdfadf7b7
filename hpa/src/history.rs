//! The per-HPA memory of the controller: unstabilised recommendations (for the windows) and
//! scale events (for the `behavior` rate limits), kept exactly as `horizontal.go` keeps them.

use std::time::Duration;

use serde::Serialize;

#[cfg(test)]
mod tests;

/// One unstabilised recommendation (`timestampedRecommendation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct Recommendation {
    /// The proposal before stabilisation.
    pub(crate) replicas: i64,
    /// When it was made, on the caller's clock.
    pub(crate) at: Duration,
}

/// One rescale (`timestampedScaleEvent`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub(crate) struct ScaleEvent {
    /// Size of the change, never negative.
    pub(crate) replica_change: i64,
    /// When it happened, on the caller's clock.
    pub(crate) at: Duration,
    /// Older than the longest policy period when last checked: a slot to reuse.
    pub(crate) outdated: bool,
}

/// Recommendations and scale events of one HPA.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub(crate) struct History {
    pub(super) recommendations: Vec<Recommendation>,
    pub(super) scale_up_events: Vec<ScaleEvent>,
    pub(super) scale_down_events: Vec<ScaleEvent>,
}

impl History {
    /// `recordInitialRecommendation`: the first sync seeds the windows with the current count,
    /// so an HPA created on a busy deployment does not scale it down at once.
    pub(super) fn record_initial(&mut self, current: i64, now: Duration) {
        if self.recommendations.is_empty() {
            self.recommendations.push(Recommendation {
                replicas: current,
                at: now,
            });
        }
    }

    /// `storeScaleEvent`, called after a rescale, and only when the HPA has a `behavior`.
    pub(super) fn store_scale_event(
        &mut self,
        previous: i64,
        new: i64,
        longest_period_seconds: u32,
        now: Duration,
    ) {
        let (events, change) = if new > previous {
            (&mut self.scale_up_events, new - previous)
        } else {
            (&mut self.scale_down_events, previous - new)
        };
        for event in events.iter_mut() {
            if older_than(event.at, longest_period_seconds, now) {
                event.outdated = true;
            }
        }
        let event = ScaleEvent {
            replica_change: change,
            at: now,
            outdated: false,
        };
        // Like Kubernetes, reuse the last outdated slot so the list stays bounded.
        if let Some(slot) = events.iter_mut().rev().find(|event| event.outdated) {
            *slot = event;
        } else {
            events.push(event);
        }
    }
}

/// Go's `at.Before(now - window)`.
pub(super) fn older_than(at: Duration, window_seconds: u32, now: Duration) -> bool {
    at.saturating_add(Duration::from_secs(window_seconds.into())) < now
}

/// Go's `at.After(now - window)`.
pub(super) fn newer_than(at: Duration, window_seconds: u32, now: Duration) -> bool {
    at.saturating_add(Duration::from_secs(window_seconds.into())) > now
}

/// Kubernetes' `generateEventsUniformDistribution`: events spread evenly over the last
/// `period_seconds`, each at the centre of its segment (whole seconds, as Go truncates).
#[cfg(test)]
pub(super) fn uniform_events(
    changes: &[i64],
    period_seconds: u64,
    now: Duration,
) -> Vec<ScaleEvent> {
    let period = period_seconds as f64;
    let segment = period / changes.len() as f64;
    changes
        .iter()
        .enumerate()
        .map(|(index, &replica_change)| {
            let seconds_ago = period - segment * (index + 1) as f64 + segment / 2.0;
            ScaleEvent {
                replica_change,
                at: now.saturating_sub(Duration::from_secs(seconds_ago as u64)),
                outdated: false,
            }
        })
        .collect()
}
