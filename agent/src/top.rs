//! `podmeter top`: a live per-pod view of a running agent.

use std::{collections::HashMap, fmt::Write as _, time::Duration};

use serde::Deserialize;

#[derive(Deserialize)]
struct PodsReply {
    pods: Vec<Pod>,
    rate_window_seconds: u32,
}

#[derive(Deserialize)]
struct Pod {
    namespace: String,
    name: String,
    inbound: Flow,
    outbound: Flow,
    loopback_inbound: Flow,
}

#[derive(Deserialize)]
struct Flow {
    requests: u64,
    /// Requests per second over the agent's rate window: the number the HPA sees.
    rate: f64,
    responses: HashMap<String, u64>,
    /// Duration quantiles over the same window; `null` without exchanges in it.
    duration: Option<Durations>,
}

#[derive(Deserialize)]
struct Durations {
    p95_seconds: f64,
}

/// Prints the table every `interval`, `iterations` times (forever when `None`).
pub fn run(base: &str, interval: Duration, iterations: Option<u64>) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut n = 0u64;
    loop {
        let reply: PodsReply = agent
            .get(&format!("{base}/v1/pods"))
            .call()?
            .body_mut()
            .read_json()?;
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:>10} {:>9} {:>10} {:>9} {:>7} {:>7} {:>9} {:>10}   (rates and p95 over {} s)",
            "NAMESPACE",
            "POD",
            "IN",
            "IN/s",
            "OUT",
            "OUT/s",
            "2xx",
            "5xx",
            "LOOPBACK",
            "IN p95 ms",
            reply.rate_window_seconds
        );
        for p in &reply.pods {
            let class = |c: &str| p.inbound.responses.get(c).copied().unwrap_or(0);
            let _ = writeln!(
                out,
                "{:<16} {:<24} {:>10} {:>9.1} {:>10} {:>9.1} {:>7} {:>7} {:>9} {:>10}",
                p.namespace,
                p.name,
                p.inbound.requests,
                p.inbound.rate,
                p.outbound.requests,
                p.outbound.rate,
                class("2xx"),
                class("5xx"),
                p.loopback_inbound.requests,
                p.inbound
                    .duration
                    .as_ref()
                    .map_or_else(|| "-".to_owned(), |d| format!("{:.1}", d.p95_seconds * 1e3)),
            );
        }
        println!("{out}");
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}
