//! Scale-event storage, a port of `TestStoreScaleEvents` (kubernetes
//! `pkg/controller/podautoscaler/horizontal_test.go`).

use std::time::Duration;

use super::super::rate::replicas_changed_in_period;
use super::{History, Recommendation, ScaleEvent};

const NOW: Duration = Duration::from_secs(1_000_000);

fn events(list: &[(i64, u64)]) -> Vec<ScaleEvent> {
    list.iter()
        .map(|&(replica_change, seconds_ago)| ScaleEvent {
            replica_change,
            at: NOW - Duration::from_secs(seconds_ago),
            outdated: false,
        })
        .collect()
}

#[test]
fn store_scale_events_kubernetes_cases() {
    // (name, previous events, longest policy period, stored (change, outdated), change in the
    // last 60 s before storing). Kubernetes' cases without a behavior store nothing; here the
    // caller skips the call then (see the autoscaler tests).
    type Case<'a> = (&'a str, &'a [(i64, u64)], u32, &'a [(i64, bool)], i64);
    let cases: [Case<'_>; 6] = [
        (
            "empty entries with two-policy-behavior",
            &[],
            60,
            &[(5, false)],
            0,
        ),
        (
            "one outdated entry to be replaced with behavior",
            &[(7, 61)],
            60,
            &[(5, false)],
            0,
        ),
        (
            "one actual entry to be not touched with behavior",
            &[(7, 58)],
            60,
            &[(7, false), (5, false)],
            7,
        ),
        (
            "two entries, one of them to be replaced",
            &[(7, 61), (6, 59)],
            60,
            &[(5, false), (6, false)],
            6,
        ),
        (
            "replace one entry, use policies with different periods",
            &[(8, 29), (6, 59), (7, 61), (9, 61)],
            60,
            &[(8, false), (6, false), (7, true), (5, false)],
            14,
        ),
        (
            "two entries, both actual",
            &[(7, 58), (6, 59)],
            120,
            &[(7, false), (6, false), (5, false)],
            13,
        ),
    ];
    for (name, previous, longest, want, want_change) in cases {
        for (direction, new) in [("up", 15), ("down", 5)] {
            let mut history = History::default();
            let stored = if new > 10 {
                &mut history.scale_up_events
            } else {
                &mut history.scale_down_events
            };
            *stored = events(previous);
            assert_eq!(
                replicas_changed_in_period(60, stored, NOW),
                want_change,
                "{name} ({direction})"
            );
            history.store_scale_event(10, new, longest, NOW);
            let stored = if new > 10 {
                &history.scale_up_events
            } else {
                &history.scale_down_events
            };
            let got: Vec<(i64, bool)> = stored
                .iter()
                .map(|event| (event.replica_change, event.outdated))
                .collect();
            assert_eq!(got, want, "{name} ({direction})");
        }
    }
}

#[test]
fn initial_recommendation_only_once() {
    let mut history = History::default();
    history.record_initial(3, NOW);
    history.record_initial(5, NOW + Duration::from_secs(15));
    assert_eq!(
        history.recommendations,
        [Recommendation {
            replicas: 3,
            at: NOW
        }]
    );
}
