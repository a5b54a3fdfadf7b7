//! The reference demo (design doc, "How the HPA computes replicas"): a Deployment serving a
//! steady load spread evenly over its ready pods, synced every 15 s until the HPA settles.

use std::collections::BTreeMap;
use std::time::Duration;

use super::autoscaler::Autoscaler;
use super::observed::{MetricSample, Pod, PodState};
use super::spec::{
    Behavior, ControllerConfig, DEFAULT_MIN_REPLICAS, DEFAULT_SYNC_PERIOD_SECONDS, HpaSpec,
    PodsMetricTarget,
};

/// The deployment under test: `load_milli` requests per second in total, shared by the pods
/// that are ready (a Service only routes to those). New pods stay Pending, without values, for
/// `startup_syncs` syncs.
struct Demo {
    load_milli: i64,
    startup_syncs: u64,
    /// Sync number from which each pod is ready.
    pods: Vec<u64>,
}

impl Demo {
    fn observe(&self, sync: u64) -> (Vec<Pod>, MetricSample) {
        let is_ready = |ready_from: u64| sync >= ready_from;
        let ready = self
            .pods
            .iter()
            .filter(|ready_from| is_ready(**ready_from))
            .count();
        let per_pod = self.load_milli / i64::try_from(ready.max(1)).unwrap_or(i64::MAX);
        let mut pods = Vec::new();
        let mut sample = MetricSample::new();
        for (index, ready_from) in self.pods.iter().enumerate() {
            let name = format!("web-{index}");
            if is_ready(*ready_from) {
                sample.insert(name.clone(), per_pod);
                pods.push(Pod::new(name, PodState::Ready));
            } else {
                pods.push(Pod::new(name, PodState::Unready));
            }
        }
        (pods, sample)
    }

    /// Scales to `replicas` after sync `sync`: new pods exist from the next sync on and are ready
    /// `startup_syncs` later; surplus pods vanish at once.
    fn scale(&mut self, replicas: u32, sync: u64) {
        let replicas = usize::try_from(replicas).unwrap_or(usize::MAX);
        self.pods.truncate(replicas);
        while self.pods.len() < replicas {
            self.pods.push(sync + 1 + self.startup_syncs);
        }
    }
}

/// Runs `syncs` syncs from one replica; returns the replica count after each.
fn converge(
    load_rps: i64,
    target_rps: i64,
    behavior: Option<Behavior>,
    startup_syncs: u64,
    syncs: u64,
) -> Vec<u32> {
    let spec = HpaSpec {
        min_replicas: DEFAULT_MIN_REPLICAS,
        max_replicas: 20,
        metrics: vec![PodsMetricTarget {
            name: "http_requests_per_second".to_owned(),
            average_value_milli: target_rps * 1000,
        }],
        behavior,
    };
    let mut hpa = match Autoscaler::new(spec, ControllerConfig::default()) {
        Ok(hpa) => hpa,
        Err(error) => panic!("demo spec rejected: {error}"),
    };
    // The deployment starts with one pod that has long been ready.
    let mut demo = Demo {
        load_milli: load_rps * 1000,
        startup_syncs,
        pods: vec![0],
    };
    let mut replicas = 1;
    let mut trajectory = Vec::new();
    for sync in 0..syncs {
        let (pods, sample) = demo.observe(sync);
        let metrics = BTreeMap::from([("http_requests_per_second".to_owned(), sample)]);
        let now = Duration::from_secs(sync * DEFAULT_SYNC_PERIOD_SECONDS);
        let decision = hpa.decide(now, replicas, &pods, &metrics);
        replicas = decision.desired_replicas;
        demo.scale(replicas, sync);
        trajectory.push(replicas);
    }
    trajectory
}

#[test]
fn reference_demo_without_behavior() {
    // (load req/s, target req/s per pod, replicas after each sync). Pods are ready at once.
    let cases: [(i64, i64, &[u32]); 4] = [
        (50, 25, &[2, 2, 2, 2, 2, 2]),
        (50, 10, &[4, 5, 5, 5, 5, 5]),
        // Each request counted twice: the HPA sees 100 req/s.
        (100, 25, &[4, 4, 4, 4, 4, 4]),
        (100, 10, &[4, 8, 10, 10, 10, 10]),
    ];
    for (load, target, want) in cases {
        assert_eq!(
            converge(load, target, None, 0, 6),
            want,
            "{load} req/s, target {target}"
        );
    }
}

#[test]
fn reference_demo_with_pending_pods() {
    // New pods are Pending for one sync. While the ratio is above 1 they count as 0, so the
    // count still climbs, and it stops where the Pending pods would bring the ratio to 1.
    assert_eq!(converge(100, 10, None, 1, 6), [4, 8, 10, 10, 10, 10]);
    assert_eq!(converge(50, 10, None, 1, 6), [4, 5, 5, 5, 5, 5]);
}

#[test]
fn reference_demo_settles_with_slow_pods_and_behavior() {
    // New pods are Pending for one sync (counted as 0 while scaling up), with and without the
    // default `behavior`: the HPAs settle at the same counts after 10 minutes.
    for behavior in [None, Some(Behavior::default())] {
        for (load, target, settled) in [(50, 25, 2), (50, 10, 5), (100, 25, 4), (100, 10, 10)] {
            let trajectory = converge(load, target, behavior.clone(), 1, 40);
            let tail = trajectory.get(20..).unwrap_or_default();
            assert!(
                tail.iter().all(|replicas| *replicas == settled),
                "{load} req/s, target {target}, behavior {}: {trajectory:?}",
                behavior.is_some()
            );
        }
    }
}

#[test]
fn reference_demo_with_default_behavior_trajectory() {
    // behavior: {} allows +4 pods or +100 % per 15 s instead of max(2x, 4).
    assert_eq!(
        converge(100, 10, Some(Behavior::default()), 0, 4),
        [5, 10, 10, 10]
    );
    assert_eq!(converge(50, 10, Some(Behavior::default()), 0, 3), [5, 5, 5]);
}
