//! Policy arithmetic at its edges: period boundaries, Kubernetes' float rounding, selectPolicy.

use std::time::Duration;

use super::super::history::ScaleEvent;
use super::super::spec::{Direction, PolicyKind, Rules, ScalingPolicy, SelectPolicy};
use super::{limit, replicas_changed_in_period};

const NOW: Duration = Duration::from_secs(1_000_000);

fn rules(select_policy: SelectPolicy, policies: &[(PolicyKind, u32, u32)]) -> Rules {
    Rules {
        window_seconds: 0,
        select_policy,
        policies: policies
            .iter()
            .map(|&(kind, value, period_seconds)| ScalingPolicy {
                kind,
                value,
                period_seconds,
            })
            .collect(),
        tolerance: 0.1,
    }
}

fn event(replica_change: i64, at: Duration) -> ScaleEvent {
    ScaleEvent {
        replica_change,
        at,
        outdated: false,
    }
}

#[test]
fn period_boundary_is_exclusive() {
    let exactly = event(3, NOW - Duration::from_secs(60));
    let just_inside = event(4, NOW - Duration::from_secs(60) + Duration::from_nanos(1));
    assert_eq!(replicas_changed_in_period(60, &[exactly], NOW), 0);
    assert_eq!(replicas_changed_in_period(60, &[just_inside], NOW), 4);
    assert_eq!(
        replicas_changed_in_period(60, &[exactly, just_inside], NOW),
        4
    );
}

#[test]
fn limits() {
    use PolicyKind::{Percent, Pods};
    use SelectPolicy::{Disabled, Max, Min};
    // (name, direction, current, select, policies, selected, limit)
    let cases = [
        ("up, Pods", Direction::Up, 5, Max, vec![(Pods, 4, 60)], 9, 9),
        // 50 * (1 + 0.1) is 55.00000000000001 in floating point: Kubernetes allows 56, not 55.
        (
            "up, Percent rounds up the float product",
            Direction::Up,
            50,
            Max,
            vec![(Percent, 10, 60)],
            56,
            56,
        ),
        (
            "up, Percent of 1 still adds one",
            Direction::Up,
            1,
            Max,
            vec![(Percent, 1, 60)],
            2,
            2,
        ),
        (
            "up, Max picks the larger count",
            Direction::Up,
            10,
            Max,
            vec![(Pods, 4, 15), (Percent, 100, 15)],
            20,
            20,
        ),
        (
            "up, Min picks the smaller count",
            Direction::Up,
            5,
            Min,
            vec![(Pods, 4, 60), (Pods, 2, 60)],
            7,
            7,
        ),
        (
            "up, Disabled keeps the count",
            Direction::Up,
            5,
            Disabled,
            vec![(Pods, 4, 60)],
            5,
            5,
        ),
        (
            "down, Percent truncates",
            Direction::Down,
            7,
            Max,
            vec![(Percent, 50, 60)],
            3,
            3,
        ),
        // 10 * (1 - 0.8) is 1.9999999999999996: Kubernetes allows going down to 1, not 2.
        (
            "down, Percent truncates the float product",
            Direction::Down,
            10,
            Max,
            vec![(Percent, 80, 60)],
            1,
            1,
        ),
        (
            "down, Percent above 100 goes negative",
            Direction::Down,
            10,
            Max,
            vec![(Percent, 150, 60)],
            -5,
            -5,
        ),
        (
            "down, Max picks the smaller count",
            Direction::Down,
            100,
            Max,
            vec![(Percent, 10, 60), (Pods, 5, 60)],
            90,
            90,
        ),
        (
            "down, Min picks the larger count",
            Direction::Down,
            100,
            Min,
            vec![(Percent, 10, 60), (Pods, 15, 60)],
            90,
            90,
        ),
        (
            "down, Disabled keeps the count",
            Direction::Down,
            10,
            Disabled,
            vec![(Percent, 20, 60)],
            10,
            10,
        ),
    ];
    for (name, direction, current, select, policies, selected, want_limit) in cases {
        let rules = rules(select, &policies);
        let got = limit(direction, current, &[], &[], &rules, NOW);
        assert_eq!((got.selected, got.limit), (selected, want_limit), "{name}");
        if select == Disabled {
            assert!(got.policies.is_empty(), "{name}");
        }
    }
}

#[test]
fn period_start_uses_both_directions_and_caps_at_current() {
    let up = [event(4, NOW - Duration::from_secs(10))];
    let down = [event(1, NOW - Duration::from_secs(5))];
    let pods_per_minute = rules(SelectPolicy::Max, &[(PolicyKind::Pods, 2, 60)]);
    // start = 6 - 4 + 1 = 3, so 3 + 2 = 5 < 6: no further scale-up until the events age out.
    let got = limit(Direction::Up, 6, &up, &down, &pods_per_minute, NOW);
    assert_eq!(
        got.policies.first().map(|policy| policy.period_start),
        Some(3)
    );
    assert_eq!((got.selected, got.limit), (5, 6));
    assert_eq!(
        got.to_string(),
        "scale-up policy 2 pods per 60 s (period start 3, used up by recent scale-up events)"
    );
    // A scale-down in the same minute: start = 6 - 4 + 1 = 3, 3 - 2 = 1.
    let got = limit(Direction::Down, 6, &up, &down, &pods_per_minute, NOW);
    assert_eq!((got.selected, got.limit), (1, 1));
}
