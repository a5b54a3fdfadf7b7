//! What the Kubernetes HorizontalPodAutoscaler will decide for `Pods` metrics with
//! `AverageValue` targets: a faithful, explained re-implementation of its replica computation.
//! [`recommend`] applies it to a running agent's live per-pod rates (`podmeter recommend`).

mod autoscaler;
mod decision;
mod history;
mod observed;
mod rate;
mod replicas;
mod spec;
mod stabilize;

pub mod recommend;

#[cfg(test)]
mod scenarios;

pub use autoscaler::Autoscaler;
pub use decision::{Decision, MetricReport, Normalised, Outcome};
pub use history::{History, Recommendation, ScaleEvent};
pub use observed::{MetricSample, Pod, PodPhase, PodState};
pub use rate::{PolicyLimit, RateLimit};
pub use replicas::{
    MetricError, PodCounts, Proposal, ProposalOutcome, Rebalance, Tolerances, pods_metric_replicas,
};
pub use spec::{
    Behavior, ControllerConfig, DEFAULT_DOWNSCALE_STABILIZATION_SECONDS, DEFAULT_MIN_REPLICAS,
    DEFAULT_SCALE_DOWN_POLICIES, DEFAULT_SCALE_UP_POLICIES, DEFAULT_SCALE_UP_WINDOW_SECONDS,
    DEFAULT_SYNC_PERIOD_SECONDS, DEFAULT_TOLERANCE, Direction, HpaSpec, MAX_POLICY_PERIOD_SECONDS,
    MAX_STABILIZATION_WINDOW_SECONDS, PodsMetricTarget, PolicyKind, Rules, SCALE_UP_LIMIT_FACTOR,
    SCALE_UP_LIMIT_MINIMUM, ScalingPolicy, ScalingRules, SelectPolicy, SpecError,
};
pub use stabilize::{Clamp, Stabilisation};
