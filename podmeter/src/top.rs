//! `podmeter top`: a live per-pod view of a running agent.

use std::{fmt::Write as _, time::Duration};

use podmeter_wire::PodsReply;

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
            "{:<16} {:<24} {:>10} {:>9} {:>10} {:>9} {:>7} {:>7} {:>9} {:>7} {:>10}   (rates and p95 over {} s)",
            "NAMESPACE",
            "POD",
            "IN",
            "IN/s",
            "OUT",
            "OUT/s",
            "2xx",
            "5xx",
            "LOOPBACK",
            "PROBES",
            "IN p95 ms",
            reply.rate_window_seconds
        );
        for p in &reply.pods {
            let (inbound, responses) = (&p.inbound.totals, &p.inbound.totals.responses);
            let _ = writeln!(
                out,
                "{:<16} {:<24} {:>10} {:>9.1} {:>10} {:>9.1} {:>7} {:>7} {:>9} {:>7} {:>10}",
                p.namespace,
                p.name,
                inbound.requests,
                p.inbound.rate,
                p.outbound.totals.requests,
                p.outbound.rate,
                responses.success,
                responses.server_error,
                p.loopback_inbound.totals.requests,
                p.node_inbound.totals.requests,
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
