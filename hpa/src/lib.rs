//! What the Kubernetes HorizontalPodAutoscaler will decide for `Pods` metrics with
//! `AverageValue` targets: a faithful, explained re-implementation of its replica computation.
//! [`recommend`] applies it to a running agent's live per-pod rates (`podmeter recommend`).

mod autoscaler;
mod decision;
mod history;
mod observed;
mod rate;
mod replicas;
mod spec;
mod stabilize;

pub mod recommend;

#[cfg(test)]
mod scenarios;
