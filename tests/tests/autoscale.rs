//! The reference scenario end to end: per-pod rates measured in the kernel drive the HPA's
//! algorithm, pods start and stop on its decisions, and the backends settle at 2 and 5 replicas
//! (a source counting each request at both ends would settle them at 4 and 10). And the
//! concurrency scenario: per-pod requests in flight measured in the kernel settle a backend whose
//! requests take 100 ms, at 50 req/s, at 3 replicas (Little's law: 5.0 in flight, target 2).

use std::{sync::atomic::AtomicBool, time::Duration};

use podmeter_tests::{
    autoscale::{self, Scenario},
    serial,
};

#[test]
fn backends_settle_at_two_and_five_replicas() {
    let _serial = serial();
    let scenario = Scenario {
        sync_period: Duration::from_secs(6),
        rate_window_secs: 5,
        max_duration: Duration::from_secs(120),
        settle_syncs: 3,
        ..Scenario::reference()
    };
    let mut syncs = Vec::new();
    let outcome = autoscale::run(&scenario, &AtomicBool::new(false), |report| {
        syncs.push(report.clone())
    })
    .expect("scenario runs");
    for report in &syncs {
        eprintln!(
            "t={:?} {:?}",
            report.elapsed,
            report
                .backends
                .iter()
                .map(|b| (&b.name, b.replicas, b.desired))
                .collect::<Vec<_>>()
        );
    }
    assert!(
        outcome.settled,
        "settled within {:?}: {outcome:?}",
        scenario.max_duration
    );
    assert_eq!(outcome.final_replicas["backend-1"], 2, "{outcome:?}");
    assert_eq!(outcome.final_replicas["backend-2"], 5, "{outcome:?}");
    assert_eq!(
        outcome.double_counted_replicas["backend-1"], 4,
        "{outcome:?}"
    );
    assert_eq!(
        outcome.double_counted_replicas["backend-2"], 10,
        "{outcome:?}"
    );
    // 1 -> 2, and 1 -> 4 -> 5 (the scale-up limit max(2x1, 4) makes it two steps).
    assert_eq!(outcome.scale_events, 3, "{outcome:?}");
    // Stayed there: the last `settle_syncs` syncs kept both counts.
    let last = &syncs[syncs.len() - scenario.settle_syncs as usize..];
    assert!(
        last.iter()
            .all(|r| r.backends.iter().all(|b| b.replicas == b.desired)),
        "{last:?}"
    );
    // ... and the double-counted view held its answer too (settling does not look at it).
    assert!(
        last.iter().all(|r| r
            .backends
            .iter()
            .all(|b| b.double_counted_desired == outcome.double_counted_replicas[&b.name])),
        "{last:?}"
    );
    // And through all the scaling, every request answered was counted once.
    assert!(outcome.counted_exactly(), "{outcome:?}");
}

#[test]
fn slow_backend_settles_at_three_replicas_on_concurrency() {
    let _serial = serial();
    let scenario = Scenario {
        sync_period: Duration::from_secs(6),
        rate_window_secs: 5,
        max_duration: Duration::from_secs(120),
        settle_syncs: 3,
        ..Scenario::concurrency()
    };
    let mut syncs = Vec::new();
    let outcome = autoscale::run(&scenario, &AtomicBool::new(false), |report| {
        syncs.push(report.clone())
    })
    .expect("scenario runs");
    for report in &syncs {
        eprintln!(
            "t={:?} {:?}",
            report.elapsed,
            report
                .backends
                .iter()
                .map(|b| (
                    &b.name,
                    b.replicas,
                    b.desired,
                    b.pods
                        .iter()
                        .map(|(_, c)| c.map(|c| format!("{c:.3}")))
                        .collect::<Vec<_>>(),
                    format!("double counted {:.3}/pod", b.double_counted_per_pod),
                    b.double_counted_desired
                ))
                .collect::<Vec<_>>()
        );
    }
    eprintln!("{outcome:?}");
    assert!(
        outcome.settled,
        "settled within {:?}: {outcome:?}",
        scenario.max_duration
    );
    // ceil(5.0 / 2) = 3, in one step (the scale-up limit from 1 is max(2x1, 4)).
    assert_eq!(outcome.final_replicas["slow-backend"], 3, "{outcome:?}");
    assert_eq!(outcome.scale_events, 1, "{outcome:?}");
    // Stayed there, with about 50 req/s x 0.1 s in flight in total (a little more: the server's
    // own time over its 100 ms sleep) ...
    let last = &syncs[syncs.len() - scenario.settle_syncs as usize..];
    for report in last {
        let backend = &report.backends[0];
        assert_eq!((backend.replicas, backend.desired), (3, 3), "{report:?}");
        let values: Vec<f64> = backend.pods.iter().filter_map(|(_, c)| *c).collect();
        assert_eq!(values.len(), 3, "{report:?}");
        let total: f64 = values.iter().sum();
        assert!(
            (4.75..=5.5).contains(&total),
            "{total} in flight: {report:?}"
        );
        // Counted at both ends, about 10 in flight over 3 pods: 5 replicas, or 6 as soon as the
        // doubled total reads a hair over 10.0 (shown, not applied).
        assert!(
            (5..=6).contains(&backend.double_counted_desired),
            "{report:?}"
        );
    }
    // ... each pod about a third of it (round robin per request), 5.0 / 3 = 1.67, once the
    // window no longer holds the first pod's time alone (the first sync after the scale does).
    for report in &last[1..] {
        for (pod, value) in &report.backends[0].pods {
            let value = value.expect("a value");
            assert!(
                (1.45..=1.9).contains(&value),
                "{value} in flight on {pod}: {report:?}"
            );
        }
    }
    // And every request answered was counted once.
    assert!(outcome.counted_exactly(), "{outcome:?}");
}
