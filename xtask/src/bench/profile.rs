//! Where the time goes (`--profile`): one saturating run with the agent on under a system-wide
//! `perf record -g` (cpu-clock sampling, which works without hardware counters, e.g. in a VM).
//! Each sample's stack says whether it ran inside podmeter's BPF programs (JIT-compiled, named
//! `bpf_prog_<tag>_podmeter_*`, with the helpers and map code they call), in the cgroup hook
//! around them, or in the agent process; the hottest leaf functions of each are listed.

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Command,
    time::Duration,
};

use anyhow::{Context as _, Result};
use podmeter_tests::{ChildGuard, run};
use serde::Serialize;

use super::{Lab, system};

/// Sampling frequency: 2 CPUs x 2 kHz keeps `perf.data` small and the listing stable.
const SAMPLE_HZ: u32 = 1999;
/// Leaf functions listed per part.
const TOP: usize = 12;

/// A leaf function and its share of one part's samples.
#[derive(Clone, Debug, Serialize)]
pub struct Leaf {
    pub symbol: String,
    pub percent: f64,
}

/// One part of the profile.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Part {
    pub samples: u64,
    /// CPU time per request served, estimated from the samples.
    pub ns_per_request: f64,
    pub top: Vec<Leaf>,
}

impl Part {
    /// The `n` hottest leaves: `symbol 12%, ...`.
    pub fn hottest(&self, n: usize) -> String {
        self.top
            .iter()
            .take(n)
            .map(|l| format!("{} {:.0}%", l.symbol, l.percent))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[derive(Clone, Debug, Serialize)]
pub struct ProfileResult {
    pub perf_data: PathBuf,
    pub requests: u64,
    pub requests_per_sec: f64,
    pub samples: u64,
    /// Inside podmeter's programs, including the helpers and map operations they call.
    pub programs: Part,
    /// The cgroup hook that runs them (`__cgroup_bpf_run_filter_skb` and around), outside them.
    pub hook: Part,
    /// The agent process.
    pub agent: Part,
    /// Everything else (nginx, wrk, the network stack, idle), by process name, in percent.
    pub by_process: Vec<Leaf>,
}

/// Whether `perf` runs here.
pub fn perf_available() -> bool {
    Command::new("perf")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success())
}

pub fn measure(lab: &Lab<'_>, dir: &Path) -> Result<ProfileResult> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let perf_data = dir.join("perf.data");
    let agent = lab.start_agent(&lab.observed_root, &[])?;
    system::sleep(Duration::from_millis(500))?;
    let wrk = lab.saturating_wrk(lab.app_url());
    let mut record = Command::new("perf");
    record
        .args(["record", "-a", "-g", "-e", "cpu-clock", "-F"])
        .arg(SAMPLE_HZ.to_string())
        .arg("-o")
        .arg(&perf_data)
        .args(["--", "sleep", &wrk.duration.as_secs().to_string()]);
    let mut perf = ChildGuard::spawn_forwarding(record, "perf record")?;
    let report = wrk.run_from(&lab.client)?;
    perf.wait_timeout(Duration::from_secs(30))?
        .context("perf record did not finish")?;
    let agent_pid = agent.pid();
    drop(agent);
    // perf keeps the previous recording as perf.data.old; one is enough.
    let _ = std::fs::remove_file(dir.join("perf.data.old"));

    let mut command = Command::new("perf");
    command
        .args(["script", "-F", "comm,pid,tid,ip,sym", "-i"])
        .arg(&perf_data);
    let output = run(command, Duration::from_secs(180))?.check("perf script")?;
    let mut profile = analyse(&output.stdout, agent_pid, report.requests);
    profile.perf_data = perf_data;
    profile.requests_per_sec = report.requests_per_sec;
    for (name, part) in [
        ("podmeter's BPF programs", &profile.programs),
        ("the cgroup hook around them", &profile.hook),
        ("the agent process", &profile.agent),
    ] {
        println!(
            "  {name}: {:.0} ns per request ({} samples); hottest: {}",
            part.ns_per_request,
            part.samples,
            part.hottest(5)
        );
    }
    Ok(profile)
}

/// The program's own code shows as its JIT symbol: name it by program.
fn program_leaf(leaf: &str) -> &str {
    if !leaf.starts_with("bpf_prog_") {
        return leaf;
    }
    if leaf.contains("podmeter_ingres") {
        "program code: ingress"
    } else if leaf.contains("podmeter_egress") {
        "program code: egress"
    } else if leaf.contains("podmeter_sock_o") {
        "program code: sock_ops"
    } else {
        "program code: subprograms (memset, memmove, closures)"
    }
}

/// Splits the samples of `perf script` output into the parts.
fn analyse(script: &str, agent_pid: u32, requests: u64) -> ProfileResult {
    #[derive(Default)]
    struct Tally {
        samples: u64,
        leaves: HashMap<String, u64>,
    }
    impl Tally {
        fn add(&mut self, leaf: &str) {
            self.samples += 1;
            *self.leaves.entry(leaf.to_owned()).or_default() += 1;
        }
        fn part(self, requests: u64) -> Part {
            let mut top: Vec<(String, u64)> = self.leaves.into_iter().collect();
            top.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
            let samples = self.samples.max(1) as f64;
            Part {
                samples: self.samples,
                ns_per_request: self.samples as f64 * 1e9
                    / f64::from(SAMPLE_HZ)
                    / requests.max(1) as f64,
                top: top
                    .into_iter()
                    .take(TOP)
                    .map(|(symbol, n)| Leaf {
                        symbol,
                        percent: n as f64 * 100.0 / samples,
                    })
                    .collect(),
            }
        }
    }
    let (mut programs, mut hook, mut agent) =
        (Tally::default(), Tally::default(), Tally::default());
    let mut by_process: HashMap<String, u64> = HashMap::new();
    let mut total = 0u64;
    for sample in script.split("\n\n") {
        let mut lines = sample.lines().filter(|l| !l.trim().is_empty());
        let Some(header) = lines.next() else { continue };
        let mut fields = header.split_whitespace();
        let (Some(comm), Some(ids)) = (fields.next(), fields.next()) else {
            continue;
        };
        let pid: u32 = ids
            .split('/')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(0);
        // Frames: `<address> <symbol>`, leaf first.
        let frames: Vec<&str> = lines
            .map(|l| {
                let l = l.trim();
                l.split_once(' ').map_or("[unknown]", |(_, s)| s.trim())
            })
            .collect();
        let leaf = frames.first().copied().unwrap_or("[unknown]");
        total += 1;
        // Only podmeter's programs run in the pods' cgroups: every JIT frame there is theirs,
        // including their subprograms (memset, memmove, closures).
        if frames.iter().any(|f| f.starts_with("bpf_prog_")) {
            programs.add(program_leaf(leaf));
        } else if frames
            .iter()
            .any(|f| f.starts_with("__cgroup_bpf_run_filter") || f.starts_with("__bpf_prog_run"))
        {
            hook.add(leaf);
        } else if pid == agent_pid {
            agent.add(leaf);
        } else {
            *by_process.entry(comm.to_owned()).or_default() += 1;
        }
    }
    let mut by_process: Vec<(String, u64)> = by_process.into_iter().collect();
    by_process.sort_by_key(|p| std::cmp::Reverse(p.1));
    ProfileResult {
        perf_data: PathBuf::new(),
        requests,
        requests_per_sec: 0.0,
        samples: total,
        programs: programs.part(requests),
        hook: hook.part(requests),
        agent: agent.part(requests),
        by_process: by_process
            .into_iter()
            .map(|(symbol, n)| Leaf {
                symbol,
                percent: n as f64 * 100.0 / total.max(1) as f64,
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SCRIPT: &str = "nginx 20691/20691 \n\
\tffffffff8151b499 __htab_map_lookup_elem\n\
\tffffffffc002ab3b bpf_prog_9c52af4c33d01870_podmeter_egress\n\
\tffffffff81556294 __cgroup_bpf_run_filter_skb\n\
\n\
wrk 20708/20709 \n\
\tffffffffc0025bd2 bpf_prog_6389d972e7cd5a66_podmeter_ingress\n\
\tffffffff81556116 __cgroup_bpf_run_filter_skb\n\
\n\
nginx 20691/20691 \n\
\tffffffffc0025bd2 bpf_prog_4f9302ba65b90ccd_memset\n\
\n\
wrk 20708/20709 \n\
\tffffffff81556116 __cgroup_bpf_run_filter_skb\n\
\tffffffff82034750 tcp_v4_rcv\n\
\n\
tokio-runtime-w 777/778 \n\
\t55d86b9fa630 podmeter::events::decode\n\
\n\
nginx 20691/20691 \n\
\tffffffff8200e18f tcp_sendmsg_locked\n";

    #[test]
    fn samples_are_split_by_where_their_stack_runs() {
        let p = analyse(SCRIPT, 777, 1);
        assert_eq!(p.samples, 6);
        assert_eq!(p.programs.samples, 3);
        let leaves: Vec<&str> = p.programs.top.iter().map(|l| l.symbol.as_str()).collect();
        assert_eq!(
            leaves,
            [
                "__htab_map_lookup_elem",
                "program code: ingress",
                "program code: subprograms (memset, memmove, closures)"
            ]
        );
        assert_eq!(p.hook.samples, 1);
        assert_eq!(p.agent.samples, 1);
        assert_eq!(p.agent.top[0].symbol, "podmeter::events::decode");
        assert_eq!(p.by_process[0].symbol, "nginx");
        // Three samples at 1999 Hz for one request.
        assert!((p.programs.ns_per_request - 3.0 * 1e9 / 1999.0).abs() < 1e-3);
    }
}
