//! One HPA's controller state and its sync step (`reconcileAutoscaler` from reading the scale
//! to deciding the new count), with time and observations passed in.

use std::collections::BTreeMap;
use std::time::Duration;

use super::decision::{Decision, MetricReport, Normalised, Outcome};
use super::history::History;
use super::observed::{MetricSample, Pod};
use super::replicas::{MetricError, Tolerances, pods_metric_replicas};
use super::spec::{ControllerConfig, Direction, HpaSpec, Rules, SpecError};
use super::stabilize::{
    Bounds, clamp_default, clamp_with_behavior, stabilize_default, stabilize_with_behaviors,
};

#[cfg(test)]
mod tests;

/// The normalised count and its explanation.
struct Normalisation {
    desired: i64,
    explained: Normalised,
}

/// The controller's view of one HPA: its spec, the controller flags and the history that
/// stabilisation windows and rate limits read.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Autoscaler {
    spec: HpaSpec,
    config: ControllerConfig,
    history: History,
}

impl Autoscaler {
    /// Starts with an empty history, like a freshly created HPA.
    ///
    /// # Errors
    /// If the spec or the configuration would be rejected.
    pub(crate) fn new(spec: HpaSpec, config: ControllerConfig) -> Result<Self, SpecError> {
        spec.validate()?;
        config.validate()?;
        Ok(Self {
            spec,
            config,
            history: History::default(),
        })
    }

    /// Replaces the spec and keeps the history, as the controller does when an HPA is edited.
    ///
    /// # Errors
    /// If the new spec would be rejected; the old one stays.
    #[cfg(test)]
    pub(crate) fn set_spec(&mut self, spec: HpaSpec) -> Result<(), SpecError> {
        spec.validate()?;
        self.spec = spec;
        Ok(())
    }

    /// One sync at `now` (any monotonic clock, e.g. time since the agent started).
    ///
    /// `current_replicas` is the scale target's `spec.replicas`, `pods` what its selector lists,
    /// `metrics` the values per metric name; a metric of the spec without an entry counts as a
    /// failed custom metrics API call. The decision is assumed to be applied (the controller
    /// records it as a scale event), so the next call should pass the count then observed.
    pub(crate) fn decide(
        &mut self,
        now: Duration,
        current_replicas: u32,
        pods: &[Pod],
        metrics: &BTreeMap<String, MetricSample>,
    ) -> Decision {
        let current = i64::from(current_replicas);
        self.history.record_initial(current, now);
        let (min_replicas, max_replicas) = (self.spec.min_replicas, self.spec.max_replicas);

        // Out-of-range and disabled targets are handled before any metric is read.
        if current_replicas == 0 {
            return self.finish(
                now,
                current_replicas,
                Vec::new(),
                Outcome::ScalingDisabled,
                0,
            );
        }
        if current_replicas > max_replicas {
            let outcome = Outcome::AboveMaxReplicas { max_replicas };
            return self.finish(now, current_replicas, Vec::new(), outcome, max_replicas);
        }
        if current_replicas < min_replicas {
            let outcome = Outcome::BelowMinReplicas { min_replicas };
            return self.finish(now, current_replicas, Vec::new(), outcome, min_replicas);
        }

        let reports = self.propose(current_replicas, pods, metrics);

        // computeReplicasForMetrics: the largest proposal wins; a failed metric blocks scaling
        // down (it might have asked for more) but not scaling up.
        let mut largest = 0;
        let mut winner = None;
        let mut failed = 0;
        for report in &reports {
            match report {
                MetricReport::Proposed(proposal) => {
                    if largest == 0 || proposal.replicas > largest {
                        largest = proposal.replicas;
                        winner = Some(proposal.metric.clone());
                    }
                }
                MetricReport::Failed { .. } => failed += 1,
            }
        }
        let total = reports.len();
        if failed >= total || (failed > 0 && largest < current) {
            let outcome = Outcome::MetricsFailed {
                failed,
                total,
                largest_proposal: winner.is_some().then_some(largest),
            };
            return self.finish(now, current_replicas, reports, outcome, current_replicas);
        }

        // reconcileAutoscaler starts from 0 and only takes a larger metric proposal.
        let proposal = largest.max(0);
        let normalised = self.normalise(now, current, proposal, winner, failed);
        // Within [min, max] by construction; the fallback only guards the conversion.
        let desired = u32::try_from(normalised.desired).unwrap_or(current_replicas);
        let outcome = Outcome::FromMetrics(normalised.explained);
        self.finish(now, current_replicas, reports, outcome, desired)
    }

    /// Every metric's proposal, in spec order.
    fn propose(
        &self,
        current_replicas: u32,
        pods: &[Pod],
        metrics: &BTreeMap<String, MetricSample>,
    ) -> Vec<MetricReport> {
        let tolerances = self.rules().map_or_else(
            || Tolerances::uniform(self.config.tolerance),
            |(up, down)| Tolerances {
                scale_down: down.tolerance,
                scale_up: up.tolerance,
            },
        );
        self.spec
            .metrics
            .iter()
            .map(|target| {
                let result = metrics
                    .get(&target.name)
                    .ok_or(MetricError::Unavailable)
                    .and_then(|sample| {
                        pods_metric_replicas(current_replicas, target, tolerances, pods, sample)
                    });
                match result {
                    Ok(proposal) => MetricReport::Proposed(proposal),
                    Err(error) => MetricReport::Failed {
                        metric: target.name.clone(),
                        error,
                    },
                }
            })
            .collect()
    }

    /// `normalizeDesiredReplicas` or, with a `behavior`, `normalizeDesiredReplicasWithBehaviors`.
    fn normalise(
        &mut self,
        now: Duration,
        current: i64,
        proposal: i64,
        metric: Option<String>,
        failed_metrics: usize,
    ) -> Normalisation {
        let bounds = Bounds {
            min: i64::from(self.spec.min_replicas),
            max: i64::from(self.spec.max_replicas),
        };
        let rules = self.rules();
        let recommendations = &mut self.history.recommendations;
        let (desired, stabilisation, clamp, rate_limit) = match rules {
            None => {
                let window = self.config.downscale_stabilization_seconds;
                let stabilisation = stabilize_default(recommendations, now, window, proposal);
                let (desired, clamp) =
                    clamp_default(current, stabilisation.recommendation(), bounds);
                (desired, stabilisation, clamp, None)
            }
            Some((up, down)) => {
                let stabilisation = stabilize_with_behaviors(
                    recommendations,
                    now,
                    up.window_seconds,
                    down.window_seconds,
                    current,
                    proposal,
                );
                let (desired, clamp, rate_limit) = clamp_with_behavior(
                    &self.history,
                    now,
                    &up,
                    &down,
                    current,
                    stabilisation.recommendation(),
                    bounds,
                );
                (desired, stabilisation, clamp, rate_limit)
            }
        };
        Normalisation {
            desired,
            explained: Normalised {
                metric,
                proposal,
                failed_metrics,
                stabilisation,
                rate_limit,
                clamp,
            },
        }
    }

    /// Both directions' rules after defaulting, when the spec has a `behavior`.
    fn rules(&self) -> Option<(Rules, Rules)> {
        self.spec.behavior.as_ref().map(|behavior| {
            (
                behavior.scale_up.resolve(Direction::Up, &self.config),
                behavior.scale_down.resolve(Direction::Down, &self.config),
            )
        })
    }

    /// Records the rescale (the controller keeps scale events only with a `behavior`).
    fn finish(
        &mut self,
        now: Duration,
        current_replicas: u32,
        metrics: Vec<MetricReport>,
        outcome: Outcome,
        desired_replicas: u32,
    ) -> Decision {
        if desired_replicas != current_replicas
            && let Some((up, down)) = self.rules()
        {
            let longest = if desired_replicas > current_replicas {
                up.longest_period_seconds()
            } else {
                down.longest_period_seconds()
            };
            self.history.store_scale_event(
                i64::from(current_replicas),
                i64::from(desired_replicas),
                longest,
                now,
            );
        }
        Decision {
            current_replicas,
            metrics,
            outcome,
            desired_replicas,
        }
    }
}
