//! The slice of an `autoscaling/v2` HPA that podmeter models (`Pods` metrics with `AverageValue`
//! targets, `behavior`), the controller's flags, Kubernetes' defaults and its validation rules.

use std::fmt;

use serde::{Deserialize, Serialize};

/// Default `--horizontal-pod-autoscaler-sync-period`: the controller re-evaluates every HPA this
/// often. The model takes time as an input, so this is only a convenience for callers.
pub(crate) const DEFAULT_SYNC_PERIOD_SECONDS: u64 = 15;

/// Default `--horizontal-pod-autoscaler-tolerance`: ratios within 10 % of 1 do not scale.
pub(crate) const DEFAULT_TOLERANCE: f64 = 0.1;

/// Default `--horizontal-pod-autoscaler-downscale-stabilization`: without `behavior`, and for a
/// `behavior.scaleDown` that leaves its window unset, scale-downs follow the highest
/// recommendation of the last 300 s.
pub(crate) const DEFAULT_DOWNSCALE_STABILIZATION_SECONDS: u32 = 300;

/// `spec.minReplicas` when unset (`SetDefaults_HorizontalPodAutoscaler`).
pub(crate) const DEFAULT_MIN_REPLICAS: u32 = 1;

/// Without `behavior`, one sync may at most double the replicas (`scaleUpLimitFactor`)...
pub(crate) const SCALE_UP_LIMIT_FACTOR: i64 = 2;

/// ...but may always reach 4 (`scaleUpLimitMinimum`), so small deployments are not stuck at 1-2.
pub(crate) const SCALE_UP_LIMIT_MINIMUM: i64 = 4;

/// Default `behavior.scaleUp.stabilizationWindowSeconds`: scale up at once.
pub(crate) const DEFAULT_SCALE_UP_WINDOW_SECONDS: u32 = 0;

/// Default `behavior.scaleUp.policies`: add 4 pods or double, per 15 s, whichever is more.
pub(crate) const DEFAULT_SCALE_UP_POLICIES: [ScalingPolicy; 2] = [
    ScalingPolicy {
        kind: PolicyKind::Pods,
        value: 4,
        period_seconds: 15,
    },
    ScalingPolicy {
        kind: PolicyKind::Percent,
        value: 100,
        period_seconds: 15,
    },
];

/// Default `behavior.scaleDown.policies`: remove up to every pod per 15 s (the window is the
/// real brake). Its window defaults to the controller's downscale stabilisation flag.
pub(crate) const DEFAULT_SCALE_DOWN_POLICIES: [ScalingPolicy; 1] = [ScalingPolicy {
    kind: PolicyKind::Percent,
    value: 100,
    period_seconds: 15,
}];

/// API validation: `stabilizationWindowSeconds` must lie in `0..=3600`.
pub(crate) const MAX_STABILIZATION_WINDOW_SECONDS: u32 = 3600;

/// API validation: a policy's `periodSeconds` must lie in `1..=1800`.
pub(crate) const MAX_POLICY_PERIOD_SECONDS: u32 = 1800;

/// Flags of kube-controller-manager that change the computation.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub(crate) struct ControllerConfig {
    /// `--horizontal-pod-autoscaler-tolerance`.
    pub(crate) tolerance: f64,
    /// `--horizontal-pod-autoscaler-downscale-stabilization`, in seconds.
    pub(crate) downscale_stabilization_seconds: u32,
}

impl ControllerConfig {
    /// Rejects a tolerance the controller could not use.
    ///
    /// # Errors
    /// [`SpecError::BadTolerance`].
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        if self.tolerance.is_finite() && self.tolerance >= 0.0 {
            Ok(())
        } else {
            Err(SpecError::BadTolerance {
                tolerance: self.tolerance,
            })
        }
    }
}

impl Default for ControllerConfig {
    fn default() -> Self {
        Self {
            tolerance: DEFAULT_TOLERANCE,
            downscale_stabilization_seconds: DEFAULT_DOWNSCALE_STABILIZATION_SECONDS,
        }
    }
}

/// One `type: Pods` entry of `spec.metrics` with a `target.type: AverageValue`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub(crate) struct PodsMetricTarget {
    /// `pods.metric.name`, as served under `custom.metrics.k8s.io`.
    pub(crate) name: String,
    /// `pods.target.averageValue` in milli-units (`Quantity.MilliValue()`): `25` is `25000`.
    pub(crate) average_value_milli: i64,
}

/// The HPA spec fields the computation reads.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct HpaSpec {
    /// `spec.minReplicas`.
    pub(crate) min_replicas: u32,
    /// `spec.maxReplicas`.
    pub(crate) max_replicas: u32,
    /// `spec.metrics`; the largest proposal among them wins.
    pub(crate) metrics: Vec<PodsMetricTarget>,
    /// `spec.behavior`; `None` selects the older, fixed normalisation.
    pub(crate) behavior: Option<Behavior>,
}

impl HpaSpec {
    /// Rejects what the API server would reject, and what podmeter does not model.
    ///
    /// # Errors
    /// The first problem found.
    pub(crate) fn validate(&self) -> Result<(), SpecError> {
        // minReplicas 0 needs the HPAScaleToZero gate *and* an Object or External metric.
        if self.min_replicas == 0 {
            return Err(SpecError::MinReplicasZero);
        }
        if self.max_replicas < self.min_replicas {
            return Err(SpecError::MaxBelowMin {
                min_replicas: self.min_replicas,
                max_replicas: self.max_replicas,
            });
        }
        // Kubernetes would default an empty list to CPU utilisation, which is not a Pods metric.
        if self.metrics.is_empty() {
            return Err(SpecError::NoMetrics);
        }
        for metric in &self.metrics {
            if metric.name.is_empty() {
                return Err(SpecError::EmptyMetricName);
            }
            if metric.average_value_milli <= 0 {
                return Err(SpecError::TargetNotPositive {
                    metric: metric.name.clone(),
                });
            }
        }
        if let Some(behavior) = &self.behavior {
            behavior.scale_up.validate(Direction::Up)?;
            behavior.scale_down.validate(Direction::Down)?;
        }
        Ok(())
    }
}

/// `spec.behavior`. `Behavior::default()` is an empty `behavior: {}`, i.e. all defaults.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub struct Behavior {
    /// `behavior.scaleUp`.
    pub(crate) scale_up: ScalingRules,
    /// `behavior.scaleDown`.
    pub(crate) scale_down: ScalingRules,
}

/// `HPAScalingRules`: every field may be left unset and is then defaulted per direction.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ScalingRules {
    /// `stabilizationWindowSeconds`.
    pub(crate) stabilization_window_seconds: Option<u32>,
    /// `selectPolicy`.
    pub(crate) select_policy: Option<SelectPolicy>,
    /// `policies`.
    pub(crate) policies: Option<Vec<ScalingPolicy>>,
    /// `tolerance` (feature gate `HPAConfigurableTolerance`; the API server drops the field
    /// when the gate is off, so a value present here is one the controller uses).
    pub(crate) tolerance: Option<f64>,
}

impl ScalingRules {
    fn validate(&self, direction: Direction) -> Result<(), SpecError> {
        if let Some(window) = self.stabilization_window_seconds
            && window > MAX_STABILIZATION_WINDOW_SECONDS
        {
            return Err(SpecError::WindowTooLong { direction, window });
        }
        if let Some(policies) = &self.policies {
            if policies.is_empty() {
                return Err(SpecError::NoPolicies { direction });
            }
            for policy in policies {
                if policy.value == 0 {
                    return Err(SpecError::PolicyValueZero { direction });
                }
                if policy.period_seconds == 0 || policy.period_seconds > MAX_POLICY_PERIOD_SECONDS {
                    return Err(SpecError::PolicyPeriodOutOfRange {
                        direction,
                        period_seconds: policy.period_seconds,
                    });
                }
            }
        }
        if let Some(tolerance) = self.tolerance
            && !(tolerance.is_finite() && tolerance >= 0.0)
        {
            return Err(SpecError::BadTolerance { tolerance });
        }
        Ok(())
    }

    /// Fills unset fields the way `GenerateHPAScaleUpRules` / `GenerateHPAScaleDownRules` and
    /// `maybeInitScaleDownStabilizationWindow` do.
    pub(super) fn resolve(&self, direction: Direction, config: &ControllerConfig) -> Rules {
        let (default_window, default_policies): (u32, &[ScalingPolicy]) = match direction {
            Direction::Up => (DEFAULT_SCALE_UP_WINDOW_SECONDS, &DEFAULT_SCALE_UP_POLICIES),
            Direction::Down => (
                config.downscale_stabilization_seconds,
                &DEFAULT_SCALE_DOWN_POLICIES,
            ),
        };
        Rules {
            window_seconds: self.stabilization_window_seconds.unwrap_or(default_window),
            select_policy: self.select_policy.unwrap_or(SelectPolicy::Max),
            policies: self
                .policies
                .clone()
                .unwrap_or_else(|| default_policies.to_vec()),
            tolerance: self.tolerance.unwrap_or(config.tolerance),
        }
    }
}

/// Scaling rules of one direction after defaulting.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub(crate) struct Rules {
    /// Effective `stabilizationWindowSeconds`.
    pub(crate) window_seconds: u32,
    /// Effective `selectPolicy`.
    pub(crate) select_policy: SelectPolicy,
    /// Effective `policies`.
    pub(crate) policies: Vec<ScalingPolicy>,
    /// Effective tolerance for ratios on this side of 1.
    pub(crate) tolerance: f64,
}

impl Rules {
    /// The longest policy period: scale events older than this are reusable slots.
    pub(super) fn longest_period_seconds(&self) -> u32 {
        self.policies
            .iter()
            .map(|policy| policy.period_seconds)
            .max()
            .unwrap_or(0)
    }
}

/// `selectPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum SelectPolicy {
    /// Allow the largest change any policy allows (the default).
    Max,
    /// Allow the smallest change any policy allows.
    Min,
    /// Never scale in this direction.
    Disabled,
}

/// `HPAScalingPolicy.type`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) enum PolicyKind {
    /// `value` pods per period.
    Pods,
    /// `value` percent of the replicas at the start of the period.
    Percent,
}

/// `HPAScalingPolicy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub(crate) struct ScalingPolicy {
    /// `type`.
    #[serde(rename = "type")]
    pub(crate) kind: PolicyKind,
    /// `value`.
    pub(crate) value: u32,
    /// `periodSeconds`.
    pub(crate) period_seconds: u32,
}

impl fmt::Display for ScalingPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unit = match self.kind {
            PolicyKind::Pods if self.value == 1 => " pod",
            PolicyKind::Pods => " pods",
            PolicyKind::Percent => "%",
        };
        write!(f, "{}{unit} per {} s", self.value, self.period_seconds)
    }
}

/// Scaling direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Direction {
    /// More replicas.
    Up,
    /// Fewer replicas.
    Down,
}

impl fmt::Display for Direction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Up => "scale-up",
            Self::Down => "scale-down",
        })
    }
}

/// Why a spec or controller configuration is refused.
#[derive(Debug, Clone, PartialEq)]
pub enum SpecError {
    /// `minReplicas: 0` (scale to zero) is not modelled.
    MinReplicasZero,
    /// `maxReplicas` below `minReplicas`.
    MaxBelowMin {
        /// `spec.minReplicas`.
        min_replicas: u32,
        /// `spec.maxReplicas`.
        max_replicas: u32,
    },
    /// No `Pods` metric.
    NoMetrics,
    /// A metric without a name.
    EmptyMetricName,
    /// An `averageValue` that is zero or negative.
    TargetNotPositive {
        /// The metric.
        metric: String,
    },
    /// `stabilizationWindowSeconds` above one hour.
    WindowTooLong {
        /// Which rules.
        direction: Direction,
        /// The window given.
        window: u32,
    },
    /// `policies: []`.
    NoPolicies {
        /// Which rules.
        direction: Direction,
    },
    /// A policy `value` of 0.
    PolicyValueZero {
        /// Which rules.
        direction: Direction,
    },
    /// A policy `periodSeconds` outside `1..=1800`.
    PolicyPeriodOutOfRange {
        /// Which rules.
        direction: Direction,
        /// The period given.
        period_seconds: u32,
    },
    /// A negative or non-finite tolerance.
    BadTolerance {
        /// The tolerance given.
        tolerance: f64,
    },
}

impl fmt::Display for SpecError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::MinReplicasZero => f.write_str("minReplicas 0 (scale to zero) is not modelled"),
            Self::MaxBelowMin {
                min_replicas,
                max_replicas,
            } => write!(
                f,
                "maxReplicas {max_replicas} is below minReplicas {min_replicas}"
            ),
            Self::NoMetrics => f.write_str("no Pods metric in spec.metrics"),
            Self::EmptyMetricName => f.write_str("a Pods metric has an empty name"),
            Self::TargetNotPositive { metric } => {
                write!(f, "metric {metric}: averageValue must be positive")
            }
            Self::WindowTooLong { direction, window } => write!(
                f,
                "{direction} stabilizationWindowSeconds {window} is above {MAX_STABILIZATION_WINDOW_SECONDS}"
            ),
            Self::NoPolicies { direction } => {
                write!(f, "{direction} rules must specify at least one policy")
            }
            Self::PolicyValueZero { direction } => {
                write!(f, "{direction} policy value must be greater than zero")
            }
            Self::PolicyPeriodOutOfRange {
                direction,
                period_seconds,
            } => write!(
                f,
                "{direction} policy periodSeconds {period_seconds} is outside 1..={MAX_POLICY_PERIOD_SECONDS}"
            ),
            Self::BadTolerance { tolerance } => {
                write!(f, "tolerance {tolerance} must be a finite number >= 0")
            }
        }
    }
}

impl std::error::Error for SpecError {}
