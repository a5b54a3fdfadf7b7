//! Replica recommendations from live per-pod rates: for each workload, what a
//! HorizontalPodAutoscaler on `http_requests_per_second` would decide, and why.
//!
//! A workload is the set of pods of one namespace whose names start with its prefix (a
//! Deployment's pods are `<name>-<hash>-<id>`). Its spec is the HPA's: target requests per second
//! per pod (`AverageValue`), min/max replicas and an optional `behavior`, written as in an HPA
//! manifest:
//!
//! ```toml
//! sync_period_secs = 15
//!
//! [[workloads]]
//! name = "backend-1"
//! namespace = "demo"          # default "default"
//! target_per_pod = 25.0       # http_requests_per_second
//! max_replicas = 10           # min_replicas defaults to 1
//!
//! [workloads.behavior.scaleDown]
//! stabilizationWindowSeconds = 60
//! policies = [{ type = "Percent", value = 100, periodSeconds = 15 }]
//! ```

use std::{collections::BTreeMap, path::Path, time::Duration};

use serde::{Deserialize, Serialize};

pub mod command;

use crate::{
    autoscaler::Autoscaler,
    decision::Decision,
    observed::{MetricSample, Pod, PodState},
    spec::{
        Behavior, ControllerConfig, DEFAULT_MIN_REPLICAS, DEFAULT_SYNC_PERIOD_SECONDS, HpaSpec,
        PodsMetricTarget, SpecError,
    },
};

/// The metric podmeter serves to the HPA: inbound requests per second, per pod.
pub(crate) const METRIC: &str = "http_requests_per_second";

/// A recommendation spec file.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct SpecFile {
    /// How often `podmeter recommend --watch` decides (the HPA controller's default is 15 s).
    #[serde(default = "default_sync_period_secs")]
    pub(crate) sync_period_secs: u64,
    pub(crate) workloads: Vec<WorkloadSpec>,
}

fn default_sync_period_secs() -> u64 {
    DEFAULT_SYNC_PERIOD_SECONDS
}

fn default_namespace() -> String {
    "default".to_owned()
}

fn default_min_replicas() -> u32 {
    DEFAULT_MIN_REPLICAS
}

/// One HPA-like spec.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkloadSpec {
    pub name: String,
    #[serde(default = "default_namespace")]
    pub namespace: String,
    /// Pods whose names start with this belong to the workload (default `<name>-`).
    #[serde(default)]
    pub pod_prefix: Option<String>,
    /// Target `http_requests_per_second` per pod.
    pub target_per_pod: f64,
    #[serde(default = "default_min_replicas")]
    pub min_replicas: u32,
    pub max_replicas: u32,
    #[serde(default)]
    pub behavior: Option<Behavior>,
}

impl WorkloadSpec {
    /// Whether pod `namespace/name` belongs to this workload.
    pub(crate) fn owns(&self, namespace: &str, name: &str) -> bool {
        let prefix = self
            .pod_prefix
            .clone()
            .unwrap_or_else(|| format!("{}-", self.name));
        namespace == self.namespace && name.starts_with(&prefix)
    }

    fn hpa_spec(&self) -> Result<HpaSpec, RecommendError> {
        if !(self.target_per_pod.is_finite() && self.target_per_pod > 0.0) {
            return Err(RecommendError::Target {
                workload: self.name.clone(),
            });
        }
        Ok(HpaSpec {
            min_replicas: self.min_replicas,
            max_replicas: self.max_replicas,
            metrics: vec![PodsMetricTarget {
                name: METRIC.to_owned(),
                average_value_milli: (self.target_per_pod * 1000.0).round() as i64,
            }],
            behavior: self.behavior.clone(),
        })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum RecommendError {
    #[error("spec file {path}: {reason}")]
    File { path: String, reason: String },
    #[error("workload {workload}: target_per_pod must be a positive number")]
    Target { workload: String },
    #[error("workload {workload}: {source}")]
    Spec { workload: String, source: SpecError },
}

impl SpecFile {
    pub(crate) fn parse(text: &str) -> Result<Self, String> {
        toml::from_str(text).map_err(|e| e.to_string())
    }

    pub(crate) fn read(path: &Path) -> Result<Self, RecommendError> {
        let file = |reason: String| RecommendError::File {
            path: path.display().to_string(),
            reason,
        };
        let text = std::fs::read_to_string(path).map_err(|e| file(e.to_string()))?;
        Self::parse(&text).map_err(file)
    }
}

/// One pod as the recommender sees it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PodRate {
    pub namespace: String,
    pub name: String,
    /// Inbound requests per second; `None` when the pod has no value yet (a missing pod to the
    /// HPA).
    pub rate: Option<f64>,
    /// Whether the pod is Running (a Pending pod is unready to the HPA).
    pub ready: bool,
}

/// One workload's decision at one sync.
#[derive(Clone, Debug, Serialize)]
pub struct Recommendation {
    pub(crate) workload: String,
    pub(crate) namespace: String,
    pub(crate) target_per_pod: f64,
    /// Pods of the workload and the values used.
    pub pods: Vec<PodRate>,
    pub current_replicas: u32,
    pub desired_replicas: u32,
    /// The one-line reason (tolerance, stabilisation, limits...).
    pub reason: String,
    pub(crate) decision: Decision,
}

/// Keeps an autoscaler per workload, with its recommendation and scale history.
pub struct Recommender {
    workloads: Vec<(WorkloadSpec, Autoscaler)>,
}

impl Recommender {
    pub fn new(specs: Vec<WorkloadSpec>) -> Result<Self, RecommendError> {
        let workloads = specs
            .into_iter()
            .map(|spec| {
                let hpa = spec.hpa_spec()?;
                let autoscaler =
                    Autoscaler::new(hpa, ControllerConfig::default()).map_err(|source| {
                        RecommendError::Spec {
                            workload: spec.name.clone(),
                            source,
                        }
                    })?;
                Ok((spec, autoscaler))
            })
            .collect::<Result<_, RecommendError>>()?;
        Ok(Self { workloads })
    }

    /// Decides for every workload. `pods` is every pod known on the node; each workload takes
    /// its own. `current` overrides the replica count of a workload (e.g. the Deployment's
    /// `spec.replicas`); by default it is the number of its pods.
    pub fn sync(
        &mut self,
        now: Duration,
        pods: &[PodRate],
        current: &BTreeMap<String, u32>,
    ) -> Vec<Recommendation> {
        self.workloads
            .iter_mut()
            .map(|(spec, autoscaler)| {
                let mine: Vec<PodRate> = pods
                    .iter()
                    .filter(|p| spec.owns(&p.namespace, &p.name))
                    .cloned()
                    .collect();
                let current_replicas = current
                    .get(&spec.name)
                    .copied()
                    .unwrap_or(mine.len() as u32);
                let hpa_pods: Vec<Pod> = mine
                    .iter()
                    .map(|p| {
                        let state = if p.ready {
                            PodState::Ready
                        } else {
                            PodState::Unready
                        };
                        Pod::new(p.name.clone(), state)
                    })
                    .collect();
                let sample: MetricSample = mine
                    .iter()
                    .filter_map(|p| Some((p.name.clone(), (p.rate? * 1000.0).round() as i64)))
                    .collect();
                let metrics = BTreeMap::from([(METRIC.to_owned(), sample)]);
                let decision = autoscaler.decide(now, current_replicas, &hpa_pods, &metrics);
                Recommendation {
                    workload: spec.name.clone(),
                    namespace: spec.namespace.clone(),
                    target_per_pod: spec.target_per_pod,
                    pods: mine,
                    current_replicas,
                    desired_replicas: decision.desired_replicas,
                    reason: decision.to_string(),
                    decision,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pods(rates: &[(&str, f64)]) -> Vec<PodRate> {
        rates
            .iter()
            .map(|(name, rate)| PodRate {
                namespace: "demo".into(),
                name: (*name).into(),
                rate: Some(*rate),
                ready: true,
            })
            .collect()
    }

    fn spec(name: &str, target: f64) -> WorkloadSpec {
        WorkloadSpec {
            name: name.into(),
            namespace: "demo".into(),
            pod_prefix: None,
            target_per_pod: target,
            min_replicas: 1,
            max_replicas: 10,
            behavior: None,
        }
    }

    #[test]
    fn each_workload_takes_its_own_pods() {
        let mut r = Recommender::new(vec![spec("backend-1", 25.0), spec("backend-2", 10.0)])
            .expect("valid specs");
        let all = pods(&[
            ("backend-1-a", 50.0),
            ("backend-2-a", 50.0),
            ("other-a", 999.0),
        ]);
        let recs = r.sync(Duration::from_secs(0), &all, &BTreeMap::new());
        assert_eq!(recs[0].pods.len(), 1);
        assert_eq!((recs[0].current_replicas, recs[0].desired_replicas), (1, 2));
        // 5x the target from one pod: the scale-up limit max(2x1, 4) caps it at 4 first.
        assert_eq!((recs[1].current_replicas, recs[1].desired_replicas), (1, 4));
        assert!(recs[1].reason.contains("4"), "{}", recs[1].reason);
        assert!(
            recs[1].reason.contains("max(2x1, 4)"),
            "the scale-up limit is named: {}",
            recs[1].reason
        );
    }

    #[test]
    fn the_reference_scenario_settles_at_two_and_five() {
        let mut r = Recommender::new(vec![spec("backend-1", 25.0), spec("backend-2", 10.0)])
            .expect("valid specs");
        let mut replicas =
            BTreeMap::from([("backend-1".to_owned(), 1u32), ("backend-2".into(), 1)]);
        for sync in 0..8u64 {
            // 50 req/s spread evenly over each backend's current pods.
            let mut all = Vec::new();
            for (name, n) in &replicas {
                for i in 0..*n {
                    all.extend(pods(&[(&format!("{name}-{i}"), 50.0 / f64::from(*n))]));
                }
            }
            for rec in r.sync(Duration::from_secs(15 * sync), &all, &replicas) {
                replicas.insert(rec.workload, rec.desired_replicas);
            }
        }
        assert_eq!(replicas["backend-1"], 2);
        assert_eq!(replicas["backend-2"], 5);
    }

    #[test]
    fn pods_without_a_value_are_missing_and_pending_pods_unready() {
        let mut r = Recommender::new(vec![spec("web", 10.0)]).expect("valid spec");
        let mut all = pods(&[("web-a", 30.0)]);
        all.push(PodRate {
            namespace: "demo".into(),
            name: "web-b".into(),
            rate: None,
            ready: true,
        });
        all.push(PodRate {
            namespace: "demo".into(),
            name: "web-c".into(),
            rate: Some(0.0),
            ready: false,
        });
        let rec = r.sync(Duration::ZERO, &all, &BTreeMap::new()).remove(0);
        assert_eq!(rec.current_replicas, 3);
        // ratio 3 > 1: the missing pod counts as 0, the unready one too: (30+0+0)/3 = 10 -> keep 3.
        assert_eq!(rec.desired_replicas, 3, "{}", rec.reason);
        // And that is why: each pod was counted as the controller counts it.
        for why in [
            "ratio 3.00",
            "1 missing pod counted as 0",
            "1 pending pod counted as 0",
            "ratio 1.00 within tolerance",
        ] {
            assert!(rec.reason.contains(why), "{why:?} not in {:?}", rec.reason);
        }
    }

    #[test]
    fn spec_files_read_like_hpa_manifests() {
        let file = SpecFile::parse(
            r#"
            sync_period_secs = 5
            [[workloads]]
            name = "backend-1"
            namespace = "demo"
            target_per_pod = 25
            max_replicas = 10
            [workloads.behavior.scaleDown]
            stabilizationWindowSeconds = 60
            policies = [{ type = "Percent", value = 100, periodSeconds = 15 }]
            "#,
        )
        .expect("valid file");
        assert_eq!(file.sync_period_secs, 5);
        let w = &file.workloads[0];
        assert!(w.owns("demo", "backend-1-7d9f-abc") && !w.owns("default", "backend-1-x"));
        let down = &w.behavior.as_ref().expect("behavior").scale_down;
        assert_eq!(down.stabilization_window_seconds, Some(60));
        assert!(Recommender::new(file.workloads).is_ok());
        assert!(
            SpecFile::parse("[[workloads]]\nname='x'\ntarget_per_pod=1\nmax_replicas=2\nbogus=1")
                .is_err()
        );
        let bad = SpecFile::parse("[[workloads]]\nname='x'\ntarget_per_pod=0\nmax_replicas=2")
            .expect("parses");
        assert!(matches!(
            Recommender::new(bad.workloads),
            Err(RecommendError::Target { .. })
        ));
    }
}
