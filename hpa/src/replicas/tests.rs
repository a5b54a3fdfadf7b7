//! Every branch of `calcPlainMetricReplicas`, plus ports of `TestReplicaCalcPodMetric`
//! (kubernetes `pkg/controller/podautoscaler/replica_calculator_test.go`).

use super::{MetricError, ProposalOutcome, Tolerances, pods_metric_replicas};
use crate::observed::{MetricSample, Pod, PodPhase, PodState};
use crate::spec::PodsMetricTarget;

use PodState::{Ignored as I, Ready as R, Unready as U};

const DEFAULT: Tolerances = Tolerances {
    scale_down: 0.1,
    scale_up: 0.1,
};

/// Pods `pod-0..` in the given states; `levels[i]` is the value of `pod-i`, so levels beyond
/// the pods are values for unlisted pods and pods beyond the levels are missing (the layout of
/// Kubernetes' own fixtures).
struct Case {
    name: &'static str,
    current: u32,
    target: i64,
    tolerances: Tolerances,
    pods: &'static [PodState],
    levels: &'static [i64],
    want: Result<Want, MetricError>,
}

#[derive(Debug, PartialEq)]
struct Want {
    replicas: i64,
    usage: i64,
    outcome: ProposalOutcome,
}

const fn want(replicas: i64, usage: i64, outcome: ProposalOutcome) -> Result<Want, MetricError> {
    Ok(Want {
        replicas,
        usage,
        outcome,
    })
}

fn pods(states: &[PodState]) -> Vec<Pod> {
    states
        .iter()
        .enumerate()
        .map(|(index, state)| Pod::new(format!("pod-{index}"), *state))
        .collect()
}

fn sample(levels: &[i64]) -> MetricSample {
    levels
        .iter()
        .enumerate()
        .map(|(index, level)| (format!("pod-{index}"), *level))
        .collect()
}

fn run(case: &Case) {
    let target = PodsMetricTarget {
        name: "qps".to_owned(),
        average_value_milli: case.target,
    };
    let got = pods_metric_replicas(
        case.current,
        &target,
        case.tolerances,
        &pods(case.pods),
        &sample(case.levels),
    )
    .map(|proposal| Want {
        replicas: proposal.replicas,
        usage: proposal.usage_milli,
        outcome: proposal.outcome,
    });
    assert_eq!(got, case.want, "{}", case.name);
}

#[test]
fn kubernetes_pod_metric_cases() {
    // TestReplicaCalcPodMetric. Its "unready hot-CPU" fixtures set the Ready condition false,
    // which non-CPU metrics ignore: those pods count as ready, hence the larger proposals.
    let cases = [
        Case {
            name: "scale up",
            current: 3,
            target: 15000,
            tolerances: DEFAULT,
            pods: &[R, R, R],
            levels: &[20000, 10000, 30000],
            want: want(4, 20000, ProposalOutcome::Scaled),
        },
        Case {
            name: "scale up: unready hot-CPU pod scales less",
            current: 3,
            target: 15000,
            tolerances: DEFAULT,
            pods: &[R, R, R],
            levels: &[50000, 10000, 30000],
            want: want(6, 30000, ProposalOutcome::Scaled),
        },
        Case {
            name: "scale up: unready hot-CPU pods avoid scale-down",
            current: 3,
            target: 15000,
            tolerances: DEFAULT,
            pods: &[R, R, R],
            levels: &[50000, 15000, 30000],
            want: want(7, 31666, ProposalOutcome::Scaled),
        },
        Case {
            name: "scale down",
            current: 5,
            target: 20000,
            tolerances: DEFAULT,
            pods: &[R, R, R, R, R],
            levels: &[12000, 12000, 12000, 12000, 12000],
            want: want(3, 12000, ProposalOutcome::Scaled),
        },
        Case {
            name: "within default tolerance",
            current: 3,
            target: 20000,
            tolerances: DEFAULT,
            pods: &[R, R, R],
            levels: &[20000, 21000, 21000],
            want: want(3, 20666, ProposalOutcome::WithinTolerance),
        },
        Case {
            name: "outside configurable 1% tolerance",
            current: 3,
            target: 20000,
            tolerances: Tolerances {
                scale_down: 0.1,
                scale_up: 0.01,
            },
            pods: &[R, R, R],
            levels: &[20000, 21000, 21000],
            want: want(4, 20666, ProposalOutcome::Scaled),
        },
        Case {
            name: "no change: missing metrics",
            current: 5,
            target: 20000,
            tolerances: DEFAULT,
            pods: &[R, R, R, R, R],
            levels: &[20000, 19000, 21000],
            want: want(5, 20000, ProposalOutcome::RebalancedWithinTolerance),
        },
        Case {
            name: "rolling update with maxSurge: extra pod missing metric",
            current: 2,
            target: 17000,
            tolerances: DEFAULT,
            pods: &[R, R, R],
            levels: &[10000, 10000],
            want: want(2, 10000, ProposalOutcome::RebalanceReversed { computed: 3 }),
        },
    ];
    cases.iter().for_each(run);
}

#[test]
fn every_branch() {
    let cases = [
        Case {
            name: "ratio exactly 1 + tolerance is kept (isWithin is inclusive)",
            current: 2,
            target: 25000,
            tolerances: DEFAULT,
            pods: &[R, R],
            levels: &[27500, 27500],
            want: want(2, 27500, ProposalOutcome::WithinTolerance),
        },
        Case {
            name: "ratio exactly 1 - tolerance is kept",
            current: 2,
            target: 25000,
            tolerances: DEFAULT,
            pods: &[R, R],
            levels: &[22500, 22500],
            want: want(2, 22500, ProposalOutcome::WithinTolerance),
        },
        Case {
            name: "just above the band scales, ceil of the product",
            current: 2,
            target: 25000,
            tolerances: DEFAULT,
            pods: &[R, R],
            levels: &[27501, 27501],
            want: want(3, 27501, ProposalOutcome::Scaled),
        },
        Case {
            name: "usage is the floor of the integer mean: 3m / 2 pods = 1m, not 1.5m",
            current: 2,
            target: 1,
            tolerances: DEFAULT,
            pods: &[R, R],
            levels: &[1, 2],
            want: want(2, 1, ProposalOutcome::WithinTolerance),
        },
        Case {
            name: "scale down: missing pods count as the target",
            current: 4,
            target: 5000,
            tolerances: DEFAULT,
            pods: &[R, R, R, R],
            levels: &[4000, 1000],
            // (4000 + 1000 + 5000 + 5000) / 4 = 3750 -> 0.75 * 4 = 3
            want: want(3, 2500, ProposalOutcome::Rebalanced),
        },
        Case {
            name: "scale up: missing pods count as 0",
            current: 4,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[R, R, R, R],
            levels: &[30000, 30000],
            // 60000 / 4 = 15000 -> 1.5 * 4 = 6
            want: want(6, 30000, ProposalOutcome::Rebalanced),
        },
        Case {
            name: "missing pods as 0 push the ratio below 1: keep",
            current: 3,
            target: 20000,
            tolerances: DEFAULT,
            pods: &[R, R, R],
            levels: &[30000],
            // 1.5, then 30000 / 3 = 10000 -> 0.5
            want: want(3, 30000, ProposalOutcome::RebalanceCrossedOne),
        },
        Case {
            name: "one missing pod among eleven, scaling up",
            current: 11,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[R, R, R, R, R, R, R, R, R, R, R],
            levels: &[
                15500, 15500, 15500, 15500, 15500, 15500, 15500, 15500, 15500, 15500,
            ],
            // 1.55, then 155000 / 11 = 14090 -> 1.409 * 11 = 16
            want: want(16, 15500, ProposalOutcome::Rebalanced),
        },
        Case {
            name: "rebalanced ratio within tolerance (and across 1): keep",
            current: 11,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[R, R, R, R, R, R, R, R, R, R, R],
            levels: &[
                10500, 10500, 10500, 10500, 10500, 10500, 10500, 10500, 10500, 10500,
            ],
            // 1.05 (would be kept anyway), then 105000 / 11 = 9545 -> 0.9545
            want: want(11, 10500, ProposalOutcome::RebalancedWithinTolerance),
        },
        Case {
            name: "scale up with a pending pod: it counts as 0",
            current: 3,
            target: 15000,
            tolerances: DEFAULT,
            pods: &[R, R, U],
            levels: &[50000, 10000],
            // 30000 -> 2.0, then 60000 / 3 = 20000 -> 1.333 * 3 = 4
            want: want(4, 30000, ProposalOutcome::Rebalanced),
        },
        Case {
            name: "pending pods do not rebalance a scale-down",
            current: 3,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[R, R, U],
            levels: &[5000, 5000],
            want: want(1, 5000, ProposalOutcome::Scaled),
        },
        Case {
            name: "a pending pod's value is dropped",
            current: 2,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[R, U],
            levels: &[10000, 90000],
            want: want(2, 10000, ProposalOutcome::WithinTolerance),
        },
        Case {
            name: "pending pods with the ratio in tolerance above 1: rebalanced, kept",
            current: 3,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[R, R, U],
            levels: &[10500, 10500],
            // 1.05, then 21000 / 3 = 7000 -> 0.7 crosses 1
            want: want(3, 10500, ProposalOutcome::RebalanceCrossedOne),
        },
        Case {
            name: "failed and deleted pods are ignored, values and all",
            current: 2,
            target: 30000,
            tolerances: DEFAULT,
            pods: &[R, R, I, I],
            levels: &[50000, 70000, 900000, 900000],
            want: want(4, 60000, ProposalOutcome::Scaled),
        },
        Case {
            name: "values of pods the selector does not list are averaged (superfluous metrics counted)",
            current: 4,
            target: 1000,
            tolerances: DEFAULT,
            pods: &[R, R, R, R],
            levels: &[4000, 9500, 3000, 7000, 3200, 2000],
            // 28700 / 6 = 4783 -> 4.783 * 4 ready = 20
            want: want(20, 4783, ProposalOutcome::Scaled),
        },
        Case {
            name: "within a 36% scale-down tolerance",
            current: 3,
            target: 10000,
            tolerances: Tolerances {
                scale_down: 0.36,
                scale_up: 0.1,
            },
            pods: &[R, R, R],
            levels: &[6500, 6500, 6500],
            want: want(3, 6500, ProposalOutcome::WithinTolerance),
        },
        Case {
            name: "outside a 34% scale-down tolerance",
            current: 3,
            target: 10000,
            tolerances: Tolerances {
                scale_down: 0.34,
                scale_up: 0.1,
            },
            pods: &[R, R, R],
            levels: &[6500, 6500, 6500],
            want: want(2, 6500, ProposalOutcome::Scaled),
        },
        Case {
            name: "no pods",
            current: 2,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[],
            levels: &[10000],
            want: Err(MetricError::NoPods),
        },
        Case {
            name: "only pending pods",
            current: 2,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[U, U],
            levels: &[10000, 10000],
            want: Err(MetricError::NoReadyMetrics),
        },
        Case {
            name: "only ignored pods",
            current: 2,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[I, I],
            levels: &[10000, 10000],
            want: Err(MetricError::NoReadyMetrics),
        },
        Case {
            name: "no values at all",
            current: 2,
            target: 10000,
            tolerances: DEFAULT,
            pods: &[R, R],
            levels: &[],
            want: Err(MetricError::NoReadyMetrics),
        },
    ];
    cases.iter().for_each(run);
}

#[test]
fn classify_like_group_pods() {
    let cases = [
        (PodPhase::Running, false, PodState::Ready),
        (PodPhase::Unknown, false, PodState::Ready),
        (PodPhase::Pending, false, PodState::Unready),
        (PodPhase::Failed, false, PodState::Ignored),
        (PodPhase::Succeeded, false, PodState::Ignored),
        (PodPhase::Running, true, PodState::Ignored),
        (PodPhase::Pending, true, PodState::Ignored),
    ];
    for (phase, deleting, want) in cases {
        assert_eq!(
            PodState::classify(phase, deleting),
            want,
            "{phase:?} deleting={deleting}"
        );
    }
}

#[test]
fn milli_formatting() {
    use super::Milli;
    let cases = [
        (25000, "25.0"),
        (850, "0.85"),
        (33333, "33.333"),
        (1, "0.001"),
        (0, "0.0"),
        (-1500, "-1.5"),
    ];
    for (value, want) in cases {
        assert_eq!(Milli(value).to_string(), want);
    }
}
