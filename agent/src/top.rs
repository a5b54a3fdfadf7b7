//! `podmeter top`: a live per-pod view of a running agent.

use std::{
    collections::HashMap,
    fmt::Write as _,
    time::{Duration, Instant},
};

use serde::Deserialize;

#[derive(Deserialize)]
struct PodsReply {
    pods: Vec<Pod>,
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
    responses: HashMap<String, u64>,
}

/// Inbound and outbound request counts per (namespace, pod) at one refresh.
type Snapshot = HashMap<(String, String), (u64, u64)>;

/// Fetches `/v1/pods` from the agent at `base` (e.g. `http://127.0.0.1:9464`).
fn fetch(agent: &ureq::Agent, base: &str) -> anyhow::Result<Vec<Pod>> {
    let reply: PodsReply = agent
        .get(&format!("{base}/v1/pods"))
        .call()?
        .body_mut()
        .read_json()?;
    Ok(reply.pods)
}

/// Prints the table every `interval`, `iterations` times (forever when `None`).
pub fn run(base: &str, interval: Duration, iterations: Option<u64>) -> anyhow::Result<()> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let mut previous: Option<(Instant, Snapshot)> = None;
    let mut n = 0u64;
    loop {
        let pods = fetch(&agent, base)?;
        let now = Instant::now();
        let mut out = String::new();
        let _ = writeln!(
            out,
            "{:<16} {:<24} {:>10} {:>9} {:>10} {:>9} {:>7} {:>7} {:>9}",
            "NAMESPACE", "POD", "IN", "IN/s", "OUT", "OUT/s", "2xx", "5xx", "LOOPBACK"
        );
        let mut counts = HashMap::new();
        for p in &pods {
            let key = (p.namespace.clone(), p.name.clone());
            let (in_rate, out_rate) = match &previous {
                Some((t, before)) => {
                    let dt = now.duration_since(*t).as_secs_f64().max(1e-3);
                    let (i, o) = before
                        .get(&key)
                        .copied()
                        .unwrap_or((p.inbound.requests, p.outbound.requests));
                    (
                        (p.inbound.requests - i.min(p.inbound.requests)) as f64 / dt,
                        (p.outbound.requests - o.min(p.outbound.requests)) as f64 / dt,
                    )
                }
                None => (0.0, 0.0),
            };
            let _ = writeln!(
                out,
                "{:<16} {:<24} {:>10} {:>9.1} {:>10} {:>9.1} {:>7} {:>7} {:>9}",
                p.namespace,
                p.name,
                p.inbound.requests,
                in_rate,
                p.outbound.requests,
                out_rate,
                p.inbound.responses.get("2xx").copied().unwrap_or(0),
                p.inbound.responses.get("5xx").copied().unwrap_or(0),
                p.loopback_inbound.requests,
            );
            counts.insert(key, (p.inbound.requests, p.outbound.requests));
        }
        print!("{out}");
        println!();
        previous = Some((now, counts));
        n += 1;
        if iterations.is_some_and(|max| n >= max) {
            return Ok(());
        }
        std::thread::sleep(interval);
    }
}
