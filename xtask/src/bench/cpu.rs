//! Agent CPU per request: the userspace process's CPU time (`/proc/<pid>/stat`) and the kernel
//! programs' run time (BPF run-time statistics, `kernel.bpf_stats_enabled`), divided by the
//! requests served, under saturating load with the agent on.

use std::{collections::BTreeMap, fs, path::Path, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use podmeter_tests::run;
use serde::Serialize;
use serde_json::Value;

use super::{
    Lab,
    system::{self, median},
};

const BPF_STATS: &str = "/proc/sys/kernel/bpf_stats_enabled";

/// BPF run-time statistics on while it lives; the previous setting is restored on drop. They
/// cost two clock reads per program run, so the overhead runs do not use them.
pub struct BpfStats {
    previous: String,
}

impl BpfStats {
    pub fn enable() -> Result<Self> {
        let previous = fs::read_to_string(BPF_STATS)
            .with_context(|| format!("reading {BPF_STATS}"))?
            .trim()
            .to_owned();
        fs::write(BPF_STATS, "1").with_context(|| format!("writing 1 to {BPF_STATS}"))?;
        Ok(Self { previous })
    }
}

impl Drop for BpfStats {
    fn drop(&mut self) {
        if let Err(e) = fs::write(BPF_STATS, &self.previous) {
            eprintln!(
                "bench: could not restore {BPF_STATS} to {}: {e}",
                self.previous
            );
        }
    }
}

/// One program attached to a cgroup.
#[derive(Clone, Debug)]
pub struct Attached {
    pub id: u64,
    /// `ingress`, `egress` or `sock_ops`.
    pub hook: String,
}

/// The programs attached to `cgroup` itself (the agent's three), from `bpftool cgroup show`.
pub fn attached_programs(cgroup: &Path) -> Result<Vec<Attached>> {
    let mut command = Command::new("bpftool");
    command.args(["-j", "cgroup", "show"]).arg(cgroup);
    let output = run(command, Duration::from_secs(10))?.check("bpftool cgroup show")?;
    let list: Value = serde_json::from_str(output.stdout.trim())
        .with_context(|| format!("bpftool cgroup show: not JSON: {}", output.stdout))?;
    let programs: Vec<Attached> = list
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| {
            let hook = match p["attach_type"].as_str()? {
                "cgroup_inet_ingress" | "ingress" => "ingress",
                "cgroup_inet_egress" | "egress" => "egress",
                "cgroup_sock_ops" | "sock_ops" => "sock_ops",
                _ => return None,
            };
            Some(Attached {
                id: p["id"].as_u64()?,
                hook: hook.to_owned(),
            })
        })
        .collect();
    if programs.is_empty() {
        bail!(
            "no podmeter programs attached to {}: {}",
            cgroup.display(),
            output.stdout
        );
    }
    Ok(programs)
}

/// Cumulative run time and run count of each program, by hook.
pub fn run_times(programs: &[Attached]) -> Result<BTreeMap<String, (u64, u64)>> {
    let mut times = BTreeMap::new();
    for p in programs {
        let mut command = Command::new("bpftool");
        command.args(["-j", "prog", "show", "id", &p.id.to_string()]);
        let output = run(command, Duration::from_secs(10))?.check("bpftool prog show")?;
        let prog: Value = serde_json::from_str(output.stdout.trim())
            .with_context(|| format!("bpftool prog show: not JSON: {}", output.stdout))?;
        let entry = times.entry(p.hook.clone()).or_insert((0, 0));
        entry.0 += prog["run_time_ns"].as_u64().unwrap_or(0);
        entry.1 += prog["run_cnt"].as_u64().unwrap_or(0);
    }
    Ok(times)
}

/// One saturating run with the agent on and the statistics enabled.
#[derive(Clone, Debug, Serialize)]
pub struct CpuRun {
    pub requests: u64,
    pub requests_per_sec: f64,
    pub userspace_ns_per_request: f64,
    pub kernel_ns_per_request: f64,
    /// Kernel nanoseconds per request, by program.
    pub kernel_ns_per_request_by_program: BTreeMap<String, f64>,
    /// Program runs per request (each TCP segment runs ingress or egress once).
    pub program_runs_per_request: BTreeMap<String, f64>,
    /// Mean nanoseconds per program run.
    pub ns_per_program_run: BTreeMap<String, f64>,
}

/// Medians over the runs.
#[derive(Clone, Debug, Serialize)]
pub struct CpuResult {
    pub runs: Vec<CpuRun>,
    pub userspace_ns_per_request: f64,
    pub kernel_ns_per_request: f64,
    pub total_ns_per_request: f64,
    pub kernel_ns_per_request_by_program: BTreeMap<String, f64>,
    pub program_runs_per_request: BTreeMap<String, f64>,
    pub ns_per_program_run: BTreeMap<String, f64>,
}

pub fn measure(lab: &Lab<'_>) -> Result<CpuResult> {
    let _stats = BpfStats::enable()?;
    let agent = lab.start_agent(&lab.observed_root, &[])?;
    let programs = attached_programs(&lab.observed_root)?;
    system::sleep(Duration::from_secs(1))?;
    let mut runs = Vec::new();
    for i in 0..lab.plan.cpu_runs {
        system::check_interrupted()?;
        let wrk = lab.saturating_wrk(lab.app_url());
        let (kernel0, user0) = (run_times(&programs)?, system::process_cpu(agent.pid())?);
        let report = wrk.run_from(&lab.client)?;
        // The agent drains the ring at least every 100 ms: let it book the last events.
        system::sleep(Duration::from_millis(400))?;
        let (kernel1, user1) = (run_times(&programs)?, system::process_cpu(agent.pid())?);
        let requests = report.requests.max(1) as f64;
        let mut by_program = BTreeMap::new();
        let mut runs_per_request = BTreeMap::new();
        let mut ns_per_run = BTreeMap::new();
        for (hook, (t1, c1)) in &kernel1 {
            let (t0, c0) = kernel0.get(hook).copied().unwrap_or((0, 0));
            let (ns, count) = (t1.saturating_sub(t0) as f64, c1.saturating_sub(c0) as f64);
            by_program.insert(hook.clone(), ns / requests);
            runs_per_request.insert(hook.clone(), count / requests);
            ns_per_run.insert(hook.clone(), if count > 0.0 { ns / count } else { 0.0 });
        }
        let run = CpuRun {
            requests: report.requests,
            requests_per_sec: report.requests_per_sec,
            userspace_ns_per_request: user1.saturating_sub(user0).as_nanos() as f64 / requests,
            kernel_ns_per_request: by_program.values().sum(),
            kernel_ns_per_request_by_program: by_program,
            program_runs_per_request: runs_per_request,
            ns_per_program_run: ns_per_run,
        };
        println!(
            "  cpu run {}: {:.0} req/s, userspace {:.0} ns/req, kernel programs {:.0} ns/req",
            i + 1,
            run.requests_per_sec,
            run.userspace_ns_per_request,
            run.kernel_ns_per_request
        );
        runs.push(run);
    }
    drop(agent);
    let med = |f: &dyn Fn(&CpuRun) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
    let med_map = |f: &dyn Fn(&CpuRun) -> &BTreeMap<String, f64>| -> BTreeMap<String, f64> {
        let hooks: Vec<String> = runs
            .first()
            .map(|r| f(r).keys().cloned().collect())
            .unwrap_or_default();
        hooks
            .into_iter()
            .map(|h| {
                let v = med(&|r: &CpuRun| f(r).get(&h).copied().unwrap_or(f64::NAN));
                (h, v)
            })
            .collect()
    };
    let userspace = med(&|r| r.userspace_ns_per_request);
    let kernel = med(&|r| r.kernel_ns_per_request);
    Ok(CpuResult {
        userspace_ns_per_request: userspace,
        kernel_ns_per_request: kernel,
        total_ns_per_request: med(&|r| r.userspace_ns_per_request + r.kernel_ns_per_request),
        kernel_ns_per_request_by_program: med_map(&|r| &r.kernel_ns_per_request_by_program),
        program_runs_per_request: med_map(&|r| &r.program_runs_per_request),
        ns_per_program_run: med_map(&|r| &r.ns_per_program_run),
        runs,
    })
}
