//! Stabilisation windows and clamps, with ports of `TestNormalizeDesiredReplicas`,
//! `TestNormalizeDesiredReplicasWithBehavior` and `TestScalingWithRules` (kubernetes
//! `pkg/controller/podautoscaler/horizontal_test.go`).

use std::time::Duration;

use super::super::history::{History, Recommendation, ScaleEvent, uniform_events};
use super::super::spec::{
    ControllerConfig, Direction, PolicyKind, Rules, ScalingPolicy, ScalingRules, SelectPolicy,
};
use super::{
    Bounds, Clamp, Stabilisation, clamp_default, clamp_with_behavior, stabilize_default,
    stabilize_with_behaviors,
};

const NOW: Duration = Duration::from_secs(1_000_000);

fn ago(seconds: u64) -> Duration {
    NOW - Duration::from_secs(seconds)
}

fn recommendations(list: &[(i64, u64)]) -> Vec<Recommendation> {
    list.iter()
        .map(|&(replicas, seconds_ago)| Recommendation {
            replicas,
            at: ago(seconds_ago),
        })
        .collect()
}

fn replicas(list: &[Recommendation]) -> Vec<i64> {
    list.iter()
        .map(|recommendation| recommendation.replicas)
        .collect()
}

#[test]
fn default_window_kubernetes_cases() {
    // TestNormalizeDesiredReplicas: window 5 min; (log, proposal, stabilised, log length).
    type Case<'a> = (&'a str, &'a [(i64, u64)], i64, i64, usize);
    let cases: [Case<'_>; 5] = [
        ("empty log", &[], 5, 5, 1),
        ("stabilize", &[(4, 120), (5, 60)], 3, 5, 3),
        ("no stabilize", &[(1, 120), (2, 60)], 3, 3, 3),
        (
            "no stabilize - old recommendations",
            &[(10, 600), (9, 540)],
            3,
            3,
            2,
        ),
        (
            "stabilize - old recommendations",
            &[(10, 600), (4, 60), (5, 120), (9, 540)],
            3,
            5,
            4,
        ),
    ];
    for (name, log, proposal, want, want_len) in cases {
        let mut log = recommendations(log);
        let got = stabilize_default(&mut log, NOW, 300, proposal);
        assert_eq!(
            got,
            Stabilisation::Default {
                window_seconds: 300,
                recommendation: want
            },
            "{name}"
        );
        assert_eq!(log.len(), want_len, "{name}");
    }
}

#[test]
fn default_window_edges() {
    // A recommendation exactly 300 s old is not `Before(now - 300 s)`: it still holds.
    let mut log = recommendations(&[(7, 300)]);
    assert_eq!(stabilize_default(&mut log, NOW, 300, 2).recommendation(), 7);
    assert_eq!(replicas(&log), [7, 2]);

    // One nanosecond older and it no longer counts; its slot is reused.
    let mut log = vec![Recommendation {
        replicas: 7,
        at: ago(300) - Duration::from_nanos(1),
    }];
    assert_eq!(stabilize_default(&mut log, NOW, 300, 2).recommendation(), 2);
    assert_eq!(replicas(&log), [2]);

    // The last of several old slots is the one reused.
    let mut log = recommendations(&[(1, 900), (2, 800), (3, 10)]);
    stabilize_default(&mut log, NOW, 300, 4);
    assert_eq!(replicas(&log), [1, 4, 3]);
}

/// TestNormalizeDesiredReplicasWithBehavior: (name, log, current, proposal, stabilised,
/// stored log, up window, down window).
type WindowCase = (
    &'static str,
    &'static [(i64, u64)],
    i64,
    i64,
    i64,
    &'static [i64],
    u32,
    u32,
);

#[rustfmt::skip]
const WINDOW_CASES: [WindowCase; 11] = [
    ("empty recommendations for scaling down", &[], 100, 5, 5, &[5], 0, 0),
    ("simple scale down stabilization", &[(4, 120), (5, 60)], 100, 3, 5, &[4, 5, 3], 0, 180),
    ("simple scale up stabilization", &[(4, 120), (5, 60)], 1, 7, 4, &[4, 5, 7], 300, 0),
    ("no scale down stabilization", &[(1, 120), (2, 60)], 100, 3, 3, &[1, 2, 3], 300, 0),
    ("no scale up stabilization", &[(4, 120), (5, 60)], 1, 3, 3, &[4, 5, 3], 0, 300),
    ("no scale down stabilization, reuse recommendation element", &[(10, 600), (9, 540)], 100, 3, 3, &[10, 3], 0, 0),
    ("no scale up stabilization, reuse recommendation element", &[(10, 600), (9, 540)], 1, 100, 100, &[10, 100], 0, 0),
    ("scale down stabilization, reuse one of obsolete recommendation element", &[(10, 600), (4, 60), (5, 120), (9, 540)], 100, 3, 5, &[10, 4, 5, 3], 0, 180),
    ("scale up stabilization, reuse one of obsolete recommendation element", &[(10, 6000), (6, 60), (5, 120), (9, 180)], 1, 100, 5, &[100, 6, 5, 9], 300, 0),
    ("scale up and down stabilization, do not scale up when prenormalized rec goes down", &[(2, 6000), (3, 180)], 2, 1, 2, &[1, 3], 300, 300),
    ("scale up and down stabilization, do not scale down when prenormalized rec goes up", &[(2, 6000), (1, 180)], 2, 3, 2, &[3, 1], 300, 300),
];

#[test]
fn behavior_windows_kubernetes_cases() {
    for (name, log, current, proposal, want, want_log, up, down) in WINDOW_CASES {
        let mut log = recommendations(log);
        let got = stabilize_with_behaviors(&mut log, NOW, up, down, current, proposal);
        assert_eq!(got.recommendation(), want, "{name}");
        assert_eq!(replicas(&log), want_log, "{name}");
    }
}

#[test]
fn behavior_window_explanations() {
    let up_held = Stabilisation::Behavior {
        scale_up_window_seconds: 60,
        scale_down_window_seconds: 300,
        scale_up_floor: 4,
        scale_down_ceiling: 7,
        recommendation: 4,
    };
    assert_eq!(
        up_held.explain(7).as_deref(),
        Some("held at 4 by the lowest recommendation of the 60 s scale-up window")
    );
    assert_eq!(up_held.explain(4), None);
    let down_held = Stabilisation::Behavior {
        scale_up_window_seconds: 0,
        scale_down_window_seconds: 300,
        scale_up_floor: 2,
        scale_down_ceiling: 5,
        recommendation: 5,
    };
    assert_eq!(
        down_held.explain(2).as_deref(),
        Some("held at 5 by the highest recommendation of the 300 s scale-down window")
    );
}

#[test]
fn default_clamps() {
    // convertDesiredReplicasWithRules: (name, current, desired, min, max, want, clamp).
    let cases = [
        ("within range", 3, 5, 1, 10, 5, Clamp::DesiredWithinRange),
        (
            "from 1 at most to 4",
            1,
            10,
            1,
            20,
            4,
            Clamp::ScaleUpLimit { limit: 4 },
        ),
        (
            "from 3 at most to 6",
            3,
            10,
            1,
            20,
            6,
            Clamp::ScaleUpLimit { limit: 6 },
        ),
        (
            "max below the limit",
            3,
            10,
            1,
            5,
            5,
            Clamp::TooManyReplicas { max_replicas: 5 },
        ),
        (
            "max equal to the limit",
            2,
            10,
            1,
            4,
            4,
            Clamp::TooManyReplicas { max_replicas: 4 },
        ),
        (
            "below min",
            3,
            0,
            2,
            10,
            2,
            Clamp::TooFewReplicas { min_replicas: 2 },
        ),
        (
            "down is not rate limited",
            10,
            1,
            1,
            10,
            1,
            Clamp::DesiredWithinRange,
        ),
    ];
    for (name, current, desired, min, max, want, clamp) in cases {
        assert_eq!(
            clamp_default(current, desired, Bounds { min, max }),
            (want, clamp),
            "{name}"
        );
    }
}

/// Kubernetes' `generateScalingRules`: a Pods and/or a Percent policy, selectPolicy Max.
fn generate_rules(
    pods: u32,
    pods_period: u32,
    percent: u32,
    percent_period: u32,
    window: u32,
) -> ScalingRules {
    let mut policies = Vec::new();
    if pods != 0 {
        policies.push(ScalingPolicy {
            kind: PolicyKind::Pods,
            value: pods,
            period_seconds: pods_period,
        });
    }
    if percent != 0 {
        policies.push(ScalingPolicy {
            kind: PolicyKind::Percent,
            value: percent,
            period_seconds: percent_period,
        });
    }
    ScalingRules {
        stabilization_window_seconds: Some(window),
        select_policy: Some(SelectPolicy::Max),
        policies: Some(policies),
        tolerance: None,
    }
}

fn resolve(rules: Option<ScalingRules>, direction: Direction) -> Rules {
    rules
        .unwrap_or_default()
        .resolve(direction, &ControllerConfig::default())
}

/// TestScalingWithRules: (name, up events, down events, min, max, up rules, down rules,
/// current, desired, want, condition). `None` rules are Kubernetes' defaults.
type RateCase = (
    &'static str,
    Vec<ScaleEvent>,
    Vec<ScaleEvent>,
    i64,
    i64,
    Option<ScalingRules>,
    Option<ScalingRules>,
    i64,
    i64,
    i64,
    &'static str,
);

#[rustfmt::skip]
fn rate_cases() -> Vec<RateCase> {
    let none = Vec::new;
    let events = |changes: &[i64]| uniform_events(changes, 120, NOW);
    let rules = |pods, pods_period, percent, percent_period, window| {
        Some(generate_rules(pods, pods_period, percent, percent_period, window))
    };
    vec![
        ("prenormalized desired replicas within range", none(), none(), 3, 8, None, None, 5, 7, 7, "DesiredWithinRange"),
        ("prenormalized desired replicas < minReplicas", none(), none(), 2, 8, None, None, 3, 1, 2, "TooFewReplicas"),
        ("prenormalized desired replicas within range when minReplicas is 0", none(), none(), 0, 10, None, None, 1, 0, 0, "DesiredWithinRange"),
        ("maxReplicas is the limit because maxReplicas < scaleUpLimit", none(), none(), 1, 10, None, None, 20, 1000, 10, "TooManyReplicas"),
        ("desired replica count is more than the maximum replica count", none(), none(), 100, 150, None, None, 100, 1000, 150, "TooManyReplicas"),
        ("scaleUpLimit is the limit because scaleUpLimit < maxReplicas with user policies", none(), none(), 1, 2000, rules(0, 0, 1, 60, 0), None, 3, 1000, 4, "ScaleUpLimit"),
        ("scaleUp with default behavior", none(), none(), 1, 1000, None, None, 10, 50, 20, "ScaleUpLimit"),
        ("scaleUp with pods policy larger than percent policy", none(), none(), 1, 1000, rules(100, 60, 100, 60, 0), None, 10, 500, 110, "ScaleUpLimit"),
        ("scaleUp with percent policy larger than pods policy", none(), none(), 1, 1000, rules(2, 60, 100, 60, 0), None, 10, 500, 20, "ScaleUpLimit"),
        ("scaleUp with spec MaxReplicas limitation with large pod policy", none(), none(), 1, 1000, rules(100, 60, 0, 0, 0), None, 10, 50, 50, "DesiredWithinRange"),
        ("scaleUp with spec MaxReplicas limitation with large percent policy", none(), none(), 1, 1000, rules(10000, 60, 0, 0, 0), None, 10, 50, 50, "DesiredWithinRange"),
        ("scaleUp with pod policy limitation", none(), none(), 1, 1000, rules(30, 60, 0, 0, 0), None, 10, 50, 40, "ScaleUpLimit"),
        ("scaleUp with percent policy limitation", none(), none(), 1, 1000, rules(0, 0, 200, 60, 0), None, 10, 50, 30, "ScaleUpLimit"),
        ("scaleDown with percent policy larger than pod policy", none(), none(), 1, 1000, None, rules(20, 60, 1, 60, 300), 100, 2, 80, "ScaleDownLimit"),
        ("scaleDown with pod policy larger than percent policy", none(), none(), 1, 1000, None, rules(2, 60, 1, 60, 300), 100, 2, 98, "ScaleDownLimit"),
        ("scaleDown with spec MinReplicas limitation with large pod policy", none(), none(), 1, 1000, None, rules(100, 60, 0, 0, 300), 10, 0, 1, "TooFewReplicas"),
        ("scaleDown with spec MinReplicas limitation with large percent policy", none(), none(), 5, 1000, None, rules(0, 0, 100, 60, 300), 10, 2, 5, "TooFewReplicas"),
        ("scaleDown with pod policy limitation", none(), none(), 1, 1000, None, rules(5, 60, 0, 0, 300), 10, 2, 5, "ScaleDownLimit"),
        ("scaleDown with percent policy limitation", none(), none(), 1, 1000, None, rules(0, 0, 50, 60, 300), 10, 5, 5, "DesiredWithinRange"),
        ("scaleUp with spec MaxReplicas limitation with large pod policy and events", events(&[1, 5, 9]), none(), 1, 200, rules(300, 60, 0, 0, 0), None, 100, 500, 200, "TooManyReplicas"),
        ("scaleUp with spec MaxReplicas limitation with large percent policy and events", events(&[1, 5, 9]), none(), 1, 200, rules(0, 0, 10000, 60, 0), None, 100, 500, 200, "TooManyReplicas"),
        ("scaleUp with currentReplicas limitation with rate.PeriodSeconds with a lot of recent scale up events", events(&[1, 5, 9]), none(), 1, 1000, rules(5, 120, 0, 0, 0), None, 100, 500, 100, "ScaleUpLimit"),
        ("scaleUp with pod policy and previous scale up events", events(&[1, 5, 9]), none(), 1, 1000, rules(150, 120, 0, 0, 0), None, 100, 500, 235, "ScaleUpLimit"),
        ("scaleUp with percent policy and previous scale up events", events(&[1, 5, 9]), none(), 1, 1000, rules(0, 0, 200, 120, 0), None, 100, 500, 255, "ScaleUpLimit"),
        ("scaleUp with percent policy and previous scale up and down events", events(&[4]), events(&[2]), 1, 1000, rules(0, 0, 300, 300, 0), None, 6, 24, 16, "ScaleUpLimit"),
        ("scaleDown with default policy and previous events", none(), events(&[1, 5, 9]), 1, 1000, None, None, 10, 5, 5, "DesiredWithinRange"),
        ("scaleDown with spec MinReplicas=nil limitation with large pod policy and previous events", none(), events(&[1, 5, 9]), 1, 1000, None, rules(115, 120, 0, 0, 300), 100, 0, 1, "TooFewReplicas"),
        ("scaleDown with spec MinReplicas limitation with large pod policy and previous events", none(), events(&[1, 5, 9]), 5, 1000, None, rules(130, 120, 0, 0, 300), 100, 0, 5, "TooFewReplicas"),
        ("scaleDown with spec MinReplicas limitation with large percent policy and previous events", none(), events(&[1, 5, 9]), 5, 1000, None, rules(0, 0, 100, 120, 300), 100, 2, 5, "TooFewReplicas"),
        ("scaleDown with pod policy limitation and previous events", none(), events(&[1, 5, 9]), 1, 1000, None, rules(5, 120, 0, 0, 300), 100, 2, 100, "ScaleDownLimit"),
        ("scaleDown with percent policy limitation and previous events", none(), events(&[2, 4, 6]), 1, 1000, None, rules(0, 0, 50, 120, 300), 100, 0, 56, "ScaleDownLimit"),
        ("scaleDown with percent policy and previous scale up and down events", events(&[2]), events(&[4]), 1, 1000, None, rules(0, 0, 50, 180, 0), 10, 1, 6, "ScaleDownLimit"),
        ("scaleDown with previous events preventing further scale down", none(), events(&[10, 10, 10]), 1, 1000, None, rules(0, 0, 10, 120, 300), 100, 0, 100, "ScaleDownLimit"),
        ("scaleDown with with previous events still allowing more scale down", none(), events(&[10, 10, 10]), 1, 1000, None, rules(0, 0, 1000, 120, 300), 10, 5, 5, "DesiredWithinRange"),
        ("check 'outdated' flag for events for one behavior for up", events(&[8, 12, 9, 11]), none(), 1, 1000, rules(1000, 60, 0, 0, 0), None, 100, 200, 200, "DesiredWithinRange"),
        ("check that events were not marked 'outdated' for two different policies in the behavior for up", events(&[8, 12, 9, 11]), none(), 1, 1000, rules(1000, 120, 100, 60, 0), None, 100, 200, 200, "DesiredWithinRange"),
        ("check that events were marked 'outdated' for two different policies in the behavior for up", events(&[8, 12, 9, 11]), none(), 1, 1000, rules(1000, 30, 100, 60, 0), None, 100, 200, 200, "DesiredWithinRange"),
        ("check 'outdated' flag for events for one behavior for down", none(), events(&[8, 12, 9, 11]), 1, 1000, None, rules(1000, 60, 0, 0, 300), 100, 5, 5, "DesiredWithinRange"),
        ("check that events were not marked 'outdated' for two different policies in the behavior for down", none(), events(&[8, 12, 9, 11]), 1, 1000, None, rules(1000, 120, 100, 60, 300), 100, 5, 5, "DesiredWithinRange"),
        ("check that events were marked 'outdated' for two different policies in the behavior for down", none(), events(&[8, 12, 9, 11]), 1, 1000, None, rules(1000, 30, 100, 60, 300), 100, 5, 5, "DesiredWithinRange"),
    ]
}

#[test]
fn behavior_rate_kubernetes_cases() {
    let cases = rate_cases();
    assert_eq!(cases.len(), 40);
    for (name, up_events, down_events, min, max, up, down, current, desired, want, condition) in
        cases
    {
        let history = History {
            scale_up_events: up_events,
            scale_down_events: down_events,
            ..History::default()
        };
        let (up, down) = (resolve(up, Direction::Up), resolve(down, Direction::Down));
        let (got, clamp, _) = clamp_with_behavior(
            &history,
            NOW,
            &up,
            &down,
            current,
            desired,
            Bounds { min, max },
        );
        assert_eq!(
            (got, clamp.to_string().as_str()),
            (want, condition),
            "{name}"
        );
    }
}

#[test]
fn behavior_clamp_leaves_an_unchanged_count_alone() {
    let up = resolve(None, Direction::Up);
    let down = resolve(None, Direction::Down);
    let got = clamp_with_behavior(
        &History::default(),
        NOW,
        &up,
        &down,
        7,
        7,
        Bounds { min: 1, max: 10 },
    );
    assert_eq!(got, (7, Clamp::DesiredWithinRange, None));
}
