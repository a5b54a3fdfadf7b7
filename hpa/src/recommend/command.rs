//! `podmeter recommend`: reads live per-pod rates from an agent and prints, per workload, the
//! replicas the HPA would set and why.

use std::{
    collections::BTreeMap,
    path::Path,
    time::{Duration, Instant},
};

use podmeter_wire::PodsReply;

use super::{PodRate, Recommendation, Recommender, SpecFile};

/// Output format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum Output {
    /// A few lines per workload.
    Text,
    /// One JSON array of recommendations per sync.
    Json,
}

/// The pods the agent knows, with their inbound rates.
fn fetch(agent: &ureq::Agent, base: &str) -> anyhow::Result<Vec<PodRate>> {
    let reply: PodsReply = agent
        .get(&format!("{base}/v1/pods"))
        .call()?
        .body_mut()
        .read_json()?;
    Ok(reply
        .pods
        .into_iter()
        .map(|p| PodRate {
            namespace: p.namespace,
            name: p.name,
            rate: Some(p.inbound.rate),
            ready: true,
        })
        .collect())
}

fn print(recs: &[Recommendation], output: Output) -> anyhow::Result<()> {
    match output {
        Output::Json => println!("{}", serde_json::to_string(recs)?),
        Output::Text => {
            for r in recs {
                let rates: Vec<String> = r
                    .pods
                    .iter()
                    .map(|p| p.rate.map_or_else(|| "-".into(), |v| format!("{v:.1}")))
                    .collect();
                println!(
                    "{}/{}: replicas {} -> {} (target {}/pod; per-pod QPS [{}])\n  {}",
                    r.namespace,
                    r.workload,
                    r.current_replicas,
                    r.desired_replicas,
                    r.target_per_pod,
                    rates.join(" "),
                    r.reason
                );
            }
        }
    }
    Ok(())
}

/// One decision, or (with `watch`) one every sync period of the spec file, keeping the HPA's
/// history so that stabilisation windows and rate limits apply as they would in the cluster.
pub fn run(base: &str, spec: &Path, watch: bool, output: Output) -> anyhow::Result<()> {
    let file = SpecFile::read(spec)?;
    let period = Duration::from_secs(file.sync_period_secs.max(1));
    let mut recommender = Recommender::new(file.workloads)?;
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .build()
        .into();
    let started = Instant::now();
    loop {
        // The current count of a workload is the number of its pods the agent sees.
        let pods = fetch(&agent, base)?;
        let recs = recommender.sync(started.elapsed(), &pods, &BTreeMap::new());
        print(&recs, output)?;
        if !watch {
            return Ok(());
        }
        std::thread::sleep(period);
    }
}
