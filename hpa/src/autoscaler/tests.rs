//! The sync step end to end: out-of-range targets, several and failing metrics, windows,
//! `behavior` policies and rate limits across syncs, and the one-line reasons.

use std::collections::BTreeMap;
use std::time::Duration;

use super::Autoscaler;
use crate::decision::{Decision, MetricReport, Outcome};
use crate::observed::{MetricSample, Pod, PodState};
use crate::replicas::{MetricError, ProposalOutcome};
use crate::spec::{
    Behavior, ControllerConfig, Direction, HpaSpec, PodsMetricTarget, PolicyKind, ScalingPolicy,
    ScalingRules, SelectPolicy, SpecError,
};
use crate::stabilize::Clamp;

fn at(seconds: u64) -> Duration {
    Duration::from_secs(seconds)
}

fn target(name: &str, average_units: i64) -> PodsMetricTarget {
    PodsMetricTarget {
        name: name.to_owned(),
        average_value_milli: average_units * 1000,
    }
}

fn spec(min_replicas: u32, max_replicas: u32, metrics: Vec<PodsMetricTarget>) -> HpaSpec {
    HpaSpec {
        min_replicas,
        max_replicas,
        metrics,
        behavior: None,
    }
}

fn autoscaler(spec: HpaSpec) -> Autoscaler {
    match Autoscaler::new(spec, ControllerConfig::default()) {
        Ok(autoscaler) => autoscaler,
        Err(error) => panic!("valid spec rejected: {error}"),
    }
}

fn ready(count: u32) -> Vec<Pod> {
    (0..count)
        .map(|index| Pod::new(format!("web-{index}"), PodState::Ready))
        .collect()
}

/// The same value for pods `web-0..count`.
fn each(count: u32, milli: i64) -> MetricSample {
    (0..count)
        .map(|index| (format!("web-{index}"), milli))
        .collect()
}

fn only(name: &str, sample: MetricSample) -> BTreeMap<String, MetricSample> {
    BTreeMap::from([(name.to_owned(), sample)])
}

/// Runs one sync per entry of `proposal_loads` (per-pod milli-values), 15 s apart, applying
/// each decision; returns the replica counts decided.
fn run_syncs(autoscaler: &mut Autoscaler, start: u32, per_pod_milli: &[i64]) -> Vec<u32> {
    let mut replicas = start;
    let mut decided = Vec::new();
    for (sync, milli) in (0u64..).zip(per_pod_milli) {
        let decision = autoscaler.decide(
            at(sync * 15),
            replicas,
            &ready(replicas),
            &only("rps", each(replicas, *milli)),
        );
        replicas = decision.desired_replicas;
        decided.push(replicas);
    }
    decided
}

#[test]
fn reason_lines() {
    let mut hpa = autoscaler(spec(1, 20, vec![target("rps", 25)]));
    let decision = hpa.decide(at(0), 2, &ready(2), &only("rps", each(2, 25000)));
    assert_eq!(
        decision.to_string(),
        "usage 25.0/pod vs target 25.0 -> ratio 1.00 within tolerance 0.10: keep 2"
    );

    let mut hpa = autoscaler(spec(1, 20, vec![target("rps", 10)]));
    let decision = hpa.decide(at(0), 1, &ready(1), &only("rps", each(1, 100_000)));
    assert_eq!(
        decision.to_string(),
        "usage 100.0/pod vs target 10.0 -> ratio 10.00 x 1 ready pod = 10; \
         capped at 4 by the scale-up limit max(2x1, 4): scale 1 -> 4"
    );

    let mut hpa = autoscaler(spec(1, 20, vec![target("rps", 5)]));
    let sample = MetricSample::from([("web-0".to_owned(), 4000), ("web-1".to_owned(), 1000)]);
    let decision = hpa.decide(at(0), 4, &ready(4), &only("rps", sample));
    assert_eq!(
        decision.to_string(),
        "usage 2.5/pod vs target 5.0 -> ratio 0.50, 2 missing pods counted as 5.0 -> ratio 0.75 \
         x 4 = 3; held at 4 by the highest recommendation of the last 300 s: keep 4"
    );
}

#[test]
fn no_traffic() {
    let mut hpa = autoscaler(spec(1, 20, vec![target("rps", 10)]));
    let idle = only("rps", each(3, 0));
    assert_eq!(
        hpa.decide(at(0), 3, &ready(3), &idle).to_string(),
        "usage 0.0/pod vs target 10.0 -> ratio 0.00 x 3 ready pods = 0; \
         held at 3 by the highest recommendation of the last 300 s: keep 3"
    );
    assert_eq!(
        hpa.decide(at(301), 3, &ready(3), &idle).to_string(),
        "usage 0.0/pod vs target 10.0 -> ratio 0.00 x 3 ready pods = 0; \
         raised to minReplicas 1: scale 3 -> 1"
    );
}

#[test]
fn out_of_range_targets_skip_the_metrics() {
    // (name, current, want, outcome)
    let cases = [
        ("scaled to zero: disabled", 0, 0, Outcome::ScalingDisabled),
        (
            "above maxReplicas",
            12,
            10,
            Outcome::AboveMaxReplicas { max_replicas: 10 },
        ),
        (
            "below minReplicas",
            1,
            2,
            Outcome::BelowMinReplicas { min_replicas: 2 },
        ),
    ];
    for (name, current, want, outcome) in cases {
        let mut hpa = autoscaler(spec(2, 10, vec![target("rps", 10)]));
        // Metrics that would say otherwise are not even read.
        let decision = hpa.decide(at(0), current, &ready(current), &BTreeMap::new());
        assert_eq!(decision.desired_replicas, want, "{name}");
        assert_eq!(decision.outcome, outcome, "{name}");
        assert!(decision.metrics.is_empty(), "{name}");
    }
    let mut hpa = autoscaler(spec(2, 10, vec![target("rps", 10)]));
    assert_eq!(
        hpa.decide(at(0), 0, &[], &BTreeMap::new()).to_string(),
        "current replicas 0: scaling is disabled: keep 0"
    );
}

fn clamp_of(decision: &Decision) -> Option<Clamp> {
    match &decision.outcome {
        Outcome::FromMetrics(normalised) => Some(normalised.clamp),
        _ => None,
    }
}

#[test]
fn min_and_max_clamps() {
    // Below minReplicas, once the initial recommendation has left the 300 s window.
    let mut hpa = autoscaler(spec(2, 10, vec![target("rps", 10)]));
    let first = hpa.decide(at(0), 3, &ready(3), &only("rps", each(3, 1000)));
    assert_eq!(first.desired_replicas, 3, "{first}");
    let later = hpa.decide(at(400), 3, &ready(3), &only("rps", each(3, 1000)));
    assert_eq!(later.desired_replicas, 2, "{later}");
    assert_eq!(
        clamp_of(&later),
        Some(Clamp::TooFewReplicas { min_replicas: 2 })
    );
    assert!(
        later
            .to_string()
            .ends_with("raised to minReplicas 2: scale 3 -> 2")
    );

    // Above maxReplicas, when max(2c, 4) would allow more.
    let mut hpa = autoscaler(spec(1, 10, vec![target("rps", 10)]));
    let decision = hpa.decide(at(0), 8, &ready(8), &only("rps", each(8, 40000)));
    assert_eq!(decision.desired_replicas, 10);
    assert_eq!(
        clamp_of(&decision),
        Some(Clamp::TooManyReplicas { max_replicas: 10 })
    );
}

#[test]
fn scale_down_waits_for_the_window() {
    let mut hpa = autoscaler(spec(1, 20, vec![target("rps", 10)]));
    // 10 pods at target for a while, then the load halves at t = 150 s.
    let mut t = 0;
    while t < 150 {
        let decision = hpa.decide(at(t), 10, &ready(10), &only("rps", each(10, 10000)));
        assert_eq!(decision.desired_replicas, 10);
        t += 15;
    }
    let mut first_scale_down = None;
    while first_scale_down.is_none() && t < 1000 {
        let decision = hpa.decide(at(t), 10, &ready(10), &only("rps", each(10, 5000)));
        if decision.rescales() {
            assert_eq!(decision.desired_replicas, 5, "{decision}");
            first_scale_down = Some(t);
        } else {
            assert!(
                decision.to_string().contains(
                    "held at 10 by the highest recommendation of the last 300 s: keep 10"
                ),
                "{decision}"
            );
        }
        t += 15;
    }
    // The last recommendation of 10 was made at 135 s; it counts up to and including
    // 135 + 300 = 435 s, so the scale-down happens at the next sync.
    assert_eq!(first_scale_down, Some(450));
}

#[test]
fn several_metrics_largest_wins() {
    let mut hpa = autoscaler(spec(1, 20, vec![target("rps", 10), target("inflight", 2)]));
    let metrics = BTreeMap::from([
        ("rps".to_owned(), each(3, 13000)),     // 1.3 * 3 = 4
        ("inflight".to_owned(), each(3, 4000)), // 2.0 * 3 = 6
    ]);
    let decision = hpa.decide(at(0), 3, &ready(3), &metrics);
    assert_eq!(decision.desired_replicas, 6);
    let proposals: Vec<i64> = decision
        .metrics
        .iter()
        .filter_map(MetricReport::proposal)
        .map(|proposal| proposal.replicas)
        .collect();
    assert_eq!(proposals, [4, 6]);
    assert!(
        decision
            .to_string()
            .starts_with("inflight: usage 4.0/pod vs target 2.0 -> ratio 2.00 x 3 ready pods = 6 (largest of 2 metrics)"),
        "{decision}"
    );
}

#[test]
fn failed_metrics() {
    // (name, current, rps per pod, want, metrics-failed outcome?) with a second metric that
    // has no values at all. Ports TestScaleUpOneMetricEmpty and TestNoScaleDownOneMetricEmpty.
    let cases = [
        (
            "one failed, the other scales up: scale up",
            3,
            13000,
            4,
            false,
        ),
        ("one failed, the other scales down: keep", 5, 6000, 5, true),
        ("one failed, the other holds: go on", 4, 10000, 4, false),
    ];
    for (name, current, milli, want, blocked) in cases {
        let mut hpa = autoscaler(spec(2, 6, vec![target("rps", 10), target("queue", 1)]));
        let decision = hpa.decide(
            at(0),
            current,
            &ready(current),
            &only("rps", each(current, milli)),
        );
        assert_eq!(decision.desired_replicas, want, "{name}: {decision}");
        assert_eq!(
            matches!(decision.outcome, Outcome::MetricsFailed { .. }),
            blocked,
            "{name}: {decision}"
        );
        assert_eq!(
            decision.metrics.get(1),
            Some(&MetricReport::Failed {
                metric: "queue".to_owned(),
                error: MetricError::Unavailable
            }),
            "{name}"
        );
    }

    let mut hpa = autoscaler(spec(2, 6, vec![target("rps", 10), target("queue", 1)]));
    let decision = hpa.decide(at(0), 3, &ready(3), &only("rps", each(3, 13000)));
    assert_eq!(
        decision.to_string(),
        "rps: usage 13.0/pod vs target 10.0 -> ratio 1.30 x 3 ready pods = 4 (largest of 2 metrics); \
         1 failed metric(s) ignored as the rest do not scale down: scale 3 -> 4"
    );

    // Every metric failed: keep, and record nothing but the initial recommendation.
    let mut hpa = autoscaler(spec(1, 6, vec![target("rps", 10)]));
    let decision = hpa.decide(at(0), 3, &[], &only("rps", each(3, 50000)));
    assert_eq!(decision.desired_replicas, 3);
    assert_eq!(
        decision.outcome,
        Outcome::MetricsFailed {
            failed: 1,
            total: 1,
            largest_proposal: None
        }
    );
    assert_eq!(hpa.history.recommendations.len(), 1);
    assert_eq!(
        decision.to_string(),
        "rps: no pods returned by selector while calculating replica count: keep 3"
    );

    let mut hpa = autoscaler(spec(2, 6, vec![target("rps", 10), target("queue", 1)]));
    let decision = hpa.decide(at(0), 5, &ready(5), &only("rps", each(5, 6000)));
    assert_eq!(
        decision.to_string(),
        "queue: unable to get metric: no values from the custom metrics API; \
         1 of 2 metrics failed and the rest propose 3 < 5: no scale-down on partial data: keep 5"
    );
}

fn with_behavior(mut spec: HpaSpec, behavior: Behavior) -> HpaSpec {
    spec.behavior = Some(behavior);
    spec
}

#[test]
fn default_behavior_scale_up_policies() {
    let mut hpa = autoscaler(with_behavior(
        spec(1, 20, vec![target("rps", 10)]),
        Behavior::default(),
    ));
    let decision = hpa.decide(at(0), 1, &ready(1), &only("rps", each(1, 100_000)));
    assert_eq!(decision.desired_replicas, 5);
    assert_eq!(
        decision.to_string(),
        "usage 100.0/pod vs target 10.0 -> ratio 10.00 x 1 ready pod = 10; capped at 5 by \
         scale-up policy 4 pods per 15 s (period start 1, selectPolicy Max): scale 1 -> 5"
    );
    assert_eq!(hpa.history.scale_up_events.len(), 1);
}

#[test]
fn scale_up_window_holds_the_lowest_recent_recommendation() {
    let behavior = Behavior {
        scale_up: ScalingRules {
            stabilization_window_seconds: Some(60),
            ..ScalingRules::default()
        },
        ..Behavior::default()
    };
    let mut hpa = autoscaler(with_behavior(
        spec(1, 20, vec![target("rps", 10)]),
        behavior,
    ));
    // The initial recommendation (2, at 0 s) stays in the window until 60 s.
    let decided = run_syncs(&mut hpa, 2, &[30000, 30000, 30000, 30000, 30000]);
    assert_eq!(decided, [2, 2, 2, 2, 6]);
}

#[test]
fn scale_down_disabled() {
    let behavior = Behavior {
        scale_down: ScalingRules {
            select_policy: Some(SelectPolicy::Disabled),
            stabilization_window_seconds: Some(0),
            ..ScalingRules::default()
        },
        ..Behavior::default()
    };
    let mut hpa = autoscaler(with_behavior(
        spec(1, 20, vec![target("rps", 10)]),
        behavior,
    ));
    let decided = run_syncs(&mut hpa, 8, &[1000; 30]);
    assert!(decided.iter().all(|replicas| *replicas == 8), "{decided:?}");
    let decision = hpa.decide(at(1000), 8, &ready(8), &only("rps", each(8, 1000)));
    assert!(
        decision
            .to_string()
            .ends_with("held at 8 by scale-down disabled (selectPolicy Disabled): keep 8"),
        "{decision}"
    );
}

#[test]
fn rate_limit_by_scale_events_within_the_period() {
    let behavior = Behavior {
        scale_up: ScalingRules {
            policies: Some(vec![ScalingPolicy {
                kind: PolicyKind::Pods,
                value: 1,
                period_seconds: 60,
            }]),
            ..ScalingRules::default()
        },
        ..Behavior::default()
    };
    let mut hpa = autoscaler(with_behavior(
        spec(1, 20, vec![target("rps", 10)]),
        behavior,
    ));
    // One pod per minute: the +1 at 0 s blocks 15, 30 and 45 s; at 60 s it is exactly one
    // period old, no longer inside it, and the next pod is allowed.
    let decided = run_syncs(
        &mut hpa,
        1,
        &[100_000, 50000, 50000, 50000, 50000, 33333, 33333],
    );
    assert_eq!(decided, [2, 2, 2, 2, 3, 3, 3]);
    let events: Vec<(i64, Duration)> = hpa
        .history
        .scale_up_events
        .iter()
        .map(|event| (event.replica_change, event.at))
        .collect();
    assert_eq!(events, [(1, at(0)), (1, at(60))]);
    let decision = hpa.decide(at(105), 3, &ready(3), &only("rps", each(3, 33333)));
    assert_eq!(
        decision.to_string(),
        "usage 33.333/pod vs target 10.0 -> ratio 3.33 x 3 ready pods = 10; \
         capped at 3 by scale-up policy 1 pod per 60 s (period start 2): keep 3"
    );
}

#[test]
fn scale_events_are_kept_only_with_behavior() {
    let mut hpa = autoscaler(spec(1, 20, vec![target("rps", 10)]));
    run_syncs(&mut hpa, 1, &[100_000, 25000]);
    assert!(hpa.history.scale_up_events.is_empty());
}

#[test]
fn behavior_tolerance_overrides_the_flag() {
    let tight_up = Behavior {
        scale_up: ScalingRules {
            tolerance: Some(0.01),
            ..ScalingRules::default()
        },
        ..Behavior::default()
    };
    let mut plain = autoscaler(spec(1, 20, vec![target("rps", 10)]));
    let mut tight = autoscaler(with_behavior(
        spec(1, 20, vec![target("rps", 10)]),
        tight_up,
    ));
    let sample = only("rps", each(4, 10500));
    assert_eq!(
        plain.decide(at(0), 4, &ready(4), &sample).desired_replicas,
        4
    );
    let decision = tight.decide(at(0), 4, &ready(4), &sample);
    assert_eq!(decision.desired_replicas, 5, "{decision}");
    let outcome = decision
        .metrics
        .first()
        .and_then(MetricReport::proposal)
        .map(|p| p.outcome);
    assert_eq!(outcome, Some(ProposalOutcome::Scaled));
}

#[test]
fn set_spec_keeps_history() {
    let mut hpa = autoscaler(spec(1, 20, vec![target("rps", 10)]));
    hpa.decide(at(0), 10, &ready(10), &only("rps", each(10, 10000)));
    assert_eq!(hpa.set_spec(spec(1, 20, vec![target("rps", 5)])), Ok(()));
    // The recommendation of 10 made under the old spec still holds a scale-down.
    let decision = hpa.decide(at(15), 10, &ready(10), &only("rps", each(10, 1000)));
    assert_eq!(decision.desired_replicas, 10, "{decision}");
    assert_eq!(
        hpa.set_spec(spec(3, 2, vec![target("rps", 5)])),
        Err(SpecError::MaxBelowMin {
            min_replicas: 3,
            max_replicas: 2
        })
    );
    assert_eq!(hpa.spec.metrics, [target("rps", 5)]);
}

#[test]
fn spec_validation() {
    let policy = |value, period_seconds| ScalingPolicy {
        kind: PolicyKind::Pods,
        value,
        period_seconds,
    };
    let rules = |rules: ScalingRules| {
        Some(Behavior {
            scale_up: rules,
            ..Behavior::default()
        })
    };
    let base = || spec(1, 5, vec![target("rps", 10)]);
    let cases: Vec<(HpaSpec, SpecError)> = vec![
        (
            HpaSpec {
                min_replicas: 0,
                ..base()
            },
            SpecError::MinReplicasZero,
        ),
        (spec(1, 5, Vec::new()), SpecError::NoMetrics),
        (spec(1, 5, vec![target("", 10)]), SpecError::EmptyMetricName),
        (
            spec(1, 5, vec![target("rps", 0)]),
            SpecError::TargetNotPositive {
                metric: "rps".to_owned(),
            },
        ),
        (
            HpaSpec {
                behavior: rules(ScalingRules {
                    stabilization_window_seconds: Some(3601),
                    ..ScalingRules::default()
                }),
                ..base()
            },
            SpecError::WindowTooLong {
                direction: Direction::Up,
                window: 3601,
            },
        ),
        (
            HpaSpec {
                behavior: rules(ScalingRules {
                    policies: Some(Vec::new()),
                    ..ScalingRules::default()
                }),
                ..base()
            },
            SpecError::NoPolicies {
                direction: Direction::Up,
            },
        ),
        (
            HpaSpec {
                behavior: rules(ScalingRules {
                    policies: Some(vec![policy(0, 15)]),
                    ..ScalingRules::default()
                }),
                ..base()
            },
            SpecError::PolicyValueZero {
                direction: Direction::Up,
            },
        ),
        (
            HpaSpec {
                behavior: rules(ScalingRules {
                    policies: Some(vec![policy(1, 1801)]),
                    ..ScalingRules::default()
                }),
                ..base()
            },
            SpecError::PolicyPeriodOutOfRange {
                direction: Direction::Up,
                period_seconds: 1801,
            },
        ),
        (
            HpaSpec {
                behavior: rules(ScalingRules {
                    tolerance: Some(-0.1),
                    ..ScalingRules::default()
                }),
                ..base()
            },
            SpecError::BadTolerance { tolerance: -0.1 },
        ),
    ];
    for (spec, want) in cases {
        assert_eq!(
            Autoscaler::new(spec, ControllerConfig::default()).err(),
            Some(want.clone()),
            "{want}"
        );
    }
    let config = ControllerConfig {
        tolerance: f64::NAN,
        ..ControllerConfig::default()
    };
    assert!(Autoscaler::new(base(), config).is_err());
}
