//! Server overhead and the proxy baseline: wrk saturates the app (nginx `return 200`) with the
//! agent off, with the agent on, through an L7 proxy in the app's pod (the agent off), and the
//! server that spends 100 µs of CPU per request ([`super::busy`]) with the agent off and on, in
//! alternating rounds (ABCDE, then EDCBA, ...) so that drift cancels; each figure is the median
//! over the rounds.

use std::time::Duration;

use anyhow::Result;
use serde::Serialize;

use super::{
    Lab,
    load::WrkReport,
    system::{self, CoreTimes, median},
};

/// What serves the load in a run.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Variant {
    /// The app, no agent.
    AgentOff,
    /// The app, with the agent attached to the app's pod tree.
    AgentOn,
    /// The app behind the sidecar proxy, no agent.
    Proxy,
    /// The 100 µs-per-request server, no agent.
    BusyAgentOff,
    /// The 100 µs-per-request server, with the agent attached.
    BusyAgentOn,
}

impl Variant {
    const ALL: [Self; 5] = [
        Self::AgentOff,
        Self::AgentOn,
        Self::Proxy,
        Self::BusyAgentOff,
        Self::BusyAgentOn,
    ];

    fn agent(self) -> bool {
        matches!(self, Self::AgentOn | Self::BusyAgentOn)
    }
}

/// One load run.
#[derive(Clone, Debug, Serialize)]
pub struct Run {
    pub round: u32,
    pub variant: Variant,
    pub wrk: WrkReport,
    /// Busy share of each CPU during the run.
    pub core_busy: Vec<f64>,
    /// With the agent on: requests it counted for the server's pod (its inbound), to compare
    /// with wrk's.
    pub counted: Option<u64>,
    /// With the agent on: events the kernel wrote to the ring buffer (0 without route labels).
    pub events_sent: Option<u64>,
}

/// Medians of one variant's runs.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Medians {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    /// Busy share of each CPU.
    pub core_busy: Vec<f64>,
}

#[derive(Clone, Debug, Serialize)]
pub struct OverheadResult {
    pub runs: Vec<Run>,
    pub agent_off: Medians,
    pub agent_on: Medians,
    pub proxy: Medians,
    pub busy_agent_off: Medians,
    pub busy_agent_on: Medians,
    /// Medians with the agent on over medians with it off.
    pub on_off_rps_ratio: f64,
    pub on_off_p99_ratio: f64,
    /// Medians through the proxy over medians direct with the agent off.
    pub proxy_direct_rps_ratio: f64,
    pub proxy_direct_p99_ratio: f64,
    /// The 100 µs server's medians with the agent on over its medians with it off.
    pub busy_on_off_rps_ratio: f64,
    pub busy_on_off_p99_ratio: f64,
    /// The same ratios within each round (paired runs), for the spread.
    pub on_off_rps_ratio_by_round: Vec<f64>,
    pub proxy_direct_rps_ratio_by_round: Vec<f64>,
    pub busy_on_off_rps_ratio_by_round: Vec<f64>,
}

pub fn measure(lab: &Lab<'_>) -> Result<OverheadResult> {
    // Warm caches, the ARP entries and both servers before anything counts.
    for url in [lab.app_url(), lab.busy_url()] {
        lab.wrk(url, lab.plan.connections, lab.plan.warmup)
            .run_from(&lab.client)?;
    }
    let mut runs = Vec::new();
    for round in 1..=lab.plan.rounds {
        let mut order = Variant::ALL;
        if round % 2 == 0 {
            order.reverse();
        }
        for variant in order {
            system::check_interrupted()?;
            let run = one_run(lab, round, variant)?;
            println!(
                "  round {round} {:<12} {:>9.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  cores busy {}{}{}",
                format!("{variant:?}"),
                run.wrk.requests_per_sec,
                run.wrk.latency_ms.get(&50).copied().unwrap_or(f64::NAN),
                run.wrk.p99_ms(),
                busy(&run.core_busy),
                run.counted
                    .map(|c| format!("  counted {c} (wrk completed {})", run.wrk.requests))
                    .unwrap_or_default(),
                run.events_sent
                    .map(|e| format!(", {e} events sent"))
                    .unwrap_or_default()
            );
            runs.push(run);
        }
    }
    let medians = |variant: Variant| {
        let of = |f: &dyn Fn(&Run) -> f64| {
            median(
                &runs
                    .iter()
                    .filter(|r| r.variant == variant)
                    .map(f)
                    .collect::<Vec<_>>(),
            )
        };
        Medians {
            requests_per_sec: of(&|r| r.wrk.requests_per_sec),
            p50_ms: of(&|r| r.wrk.latency_ms.get(&50).copied().unwrap_or(f64::NAN)),
            p99_ms: of(&|r| r.wrk.p99_ms()),
            core_busy: (0..runs.first().map_or(0, |r| r.core_busy.len()))
                .map(|cpu| of(&|r| r.core_busy.get(cpu).copied().unwrap_or(f64::NAN)))
                .collect(),
        }
    };
    // `variant` over `base` within each round.
    let by_round = |variant: Variant, base: Variant| -> Vec<f64> {
        (1..=lab.plan.rounds)
            .filter_map(|round| {
                let rps = |v: Variant| {
                    runs.iter()
                        .find(|r| r.round == round && r.variant == v)
                        .map(|r| r.wrk.requests_per_sec)
                };
                Some(rps(variant)? / rps(base)?)
            })
            .collect()
    };
    let (off, on, proxy) = (
        medians(Variant::AgentOff),
        medians(Variant::AgentOn),
        medians(Variant::Proxy),
    );
    let (busy_off, busy_on) = (
        medians(Variant::BusyAgentOff),
        medians(Variant::BusyAgentOn),
    );
    Ok(OverheadResult {
        on_off_rps_ratio: on.requests_per_sec / off.requests_per_sec,
        on_off_p99_ratio: on.p99_ms / off.p99_ms,
        proxy_direct_rps_ratio: proxy.requests_per_sec / off.requests_per_sec,
        proxy_direct_p99_ratio: proxy.p99_ms / off.p99_ms,
        busy_on_off_rps_ratio: busy_on.requests_per_sec / busy_off.requests_per_sec,
        busy_on_off_p99_ratio: busy_on.p99_ms / busy_off.p99_ms,
        on_off_rps_ratio_by_round: by_round(Variant::AgentOn, Variant::AgentOff),
        proxy_direct_rps_ratio_by_round: by_round(Variant::Proxy, Variant::AgentOff),
        busy_on_off_rps_ratio_by_round: by_round(Variant::BusyAgentOn, Variant::BusyAgentOff),
        agent_off: off,
        agent_on: on,
        proxy,
        busy_agent_off: busy_off,
        busy_agent_on: busy_on,
        runs,
    })
}

fn one_run(lab: &Lab<'_>, round: u32, variant: Variant) -> Result<Run> {
    let (url, pod) = match variant {
        Variant::AgentOff | Variant::AgentOn => (lab.app_url(), &lab.server),
        Variant::Proxy => (lab.proxy_url(), &lab.server),
        Variant::BusyAgentOff | Variant::BusyAgentOn => (lab.busy_url(), &lab.busy),
    };
    let agent = if variant.agent() {
        // The default flags: no route labels, so no per-request events.
        let agent = lab.start_agent(&lab.observed_root, &[])?;
        // Attached and idle before the load starts.
        system::sleep(Duration::from_millis(500))?;
        Some(agent)
    } else {
        None
    };
    let before = CoreTimes::read();
    let wrk = lab.saturating_wrk(url).run_from(&lab.client)?;
    let core_busy = before.busy_until(&CoreTimes::read());
    let (counted, events_sent) = match &agent {
        Some(agent) => {
            // The next counter read (every 250 ms) books the last requests.
            system::sleep(Duration::from_millis(400))?;
            let counted = agent.pod_counts("default", pod.name())?.inbound;
            let events = agent.get("/v1/agent")?["kernel"]["events_sent"].as_u64();
            (Some(counted), events)
        }
        None => (None, None),
    };
    drop(agent);
    Ok(Run {
        round,
        variant,
        wrk,
        core_busy,
        counted,
        events_sent,
    })
}

/// How busy each core was, as `99%/92%`.
pub fn busy(core_busy: &[f64]) -> String {
    core_busy
        .iter()
        .map(|b| format!("{:.0}%", b * 100.0))
        .collect::<Vec<_>>()
        .join("/")
}
