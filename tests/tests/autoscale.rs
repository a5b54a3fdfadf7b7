//! The reference scenario end to end: per-pod rates measured in the kernel drive the HPA's
//! algorithm, pods start and stop on its decisions, and the backends settle at 2 and 5 replicas
//! (a source counting each request at both ends would settle them at 4 and 10).

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
    assert!(outcome.answered > 0);
    assert_eq!(outcome.counted_inbound, outcome.answered, "{outcome:?}");
}
