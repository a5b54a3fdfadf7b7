//! The bench's results: the table on stdout, `summary.json`, and a verdict per target.

use std::{fmt::Write as _, path::Path};

use anyhow::{Context as _, Result};
use serde::Serialize;

use super::{
    Plan,
    ceiling::{self, CriterionBench, LiveCeiling},
    chain::ChainResult,
    concurrency::ConcurrencyResult,
    cpu::CpuResult,
    freshness::FreshnessResult,
    memory::MemoryResult,
    overhead::OverheadResult,
    profile::ProfileResult,
    system::Machine,
};

/// podmeter's targets: issue 7's, tightened by "aggregate in the kernel" (agent CPU per request
/// 2 us -> 0.6 us, of which the kernel programs 500 ns; throughput loss 1 % of any server ->
/// 5 % of nginx answering a constant and 1 % of a server spending 100 us per request).
const MAX_NS_PER_REQUEST: f64 = 600.0;
const MAX_KERNEL_NS_PER_REQUEST: f64 = 500.0;
const MAX_THROUGHPUT_LOSS_NGINX: f64 = 0.05;
const MAX_THROUGHPUT_LOSS_BUSY: f64 = 0.01;
const MIN_PIPELINE_REQUESTS_PER_SEC: f64 = 500_000.0;
const MAX_RSS_MIB: f64 = 32.0;
const MAX_DELAY_MS: f64 = 1_000.0;
/// Issue 15: the average concurrency within 1 % of Little's law.
const MAX_LITTLES_LAW_ERROR: f64 = 0.01;
/// Issue 14: a served request in kube-apiserver's custom-metrics answer within 1.5 s (p95).
const MAX_CHAIN_P95_MS: f64 = 1_500.0;

/// One target and where this run stands.
#[derive(Clone, Debug, Serialize)]
pub struct Target {
    pub name: &'static str,
    pub target: &'static str,
    pub measured: String,
    /// `met`, `missed` or `not measured`.
    pub verdict: String,
    pub note: String,
}

#[derive(Debug, Serialize)]
pub struct Summary {
    pub machine: Machine,
    pub cores: String,
    pub quick: bool,
    /// Seconds of measurement (after the builds and the test lock).
    pub elapsed_secs: f64,
    /// Seconds spent building the release agent and the benches first (cached after a first run).
    pub build_secs: f64,
    pub overhead: Option<OverheadResult>,
    pub cpu: Option<CpuResult>,
    pub criterion: Option<Vec<CriterionBench>>,
    pub live: Option<LiveCeiling>,
    pub freshness: Option<FreshnessResult>,
    pub memory: Option<MemoryResult>,
    pub concurrency: Option<ConcurrencyResult>,
    pub chain: Option<ChainResult>,
    pub profile: Option<ProfileResult>,
    pub targets: Vec<Target>,
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// `1234567.0` as `1.23 M`, `12345.0` as `12.3 k`.
fn si(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2} M", v / 1e6)
    } else if v >= 1e3 {
        format!("{:.1} k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

fn verdict(met: bool) -> String {
    if met { "met" } else { "missed" }.to_owned()
}

impl Summary {
    pub fn new(machine: Machine, cores: String, quick: bool) -> Self {
        Self {
            machine,
            cores,
            quick,
            elapsed_secs: 0.0,
            build_secs: 0.0,
            overhead: None,
            cpu: None,
            criterion: None,
            live: None,
            freshness: None,
            memory: None,
            concurrency: None,
            chain: None,
            profile: None,
            targets: Vec::new(),
        }
    }

    fn ceiling_bench(&self) -> Option<&CriterionBench> {
        self.criterion
            .as_ref()?
            .iter()
            .find(|b| b.name == ceiling::CEILING_BENCH)
    }

    pub fn evaluate_targets(&mut self) {
        let mut targets = Vec::new();
        let not_measured = |name, target| Target {
            name,
            target,
            measured: "-".to_owned(),
            verdict: "not measured".to_owned(),
            note: String::new(),
        };

        let (name, target) = ("agent CPU per request", "<= 0.6 us");
        targets.push(match &self.cpu {
            Some(c) => Target {
                name,
                target,
                measured: format!("{:.2} us", c.total_ns_per_request / 1e3),
                verdict: verdict(c.total_ns_per_request <= MAX_NS_PER_REQUEST),
                note: format!(
                    "userspace {:.0} ns + kernel programs {:.0} ns; {}",
                    c.userspace_ns_per_request,
                    c.kernel_ns_per_request,
                    by_how_much(c.total_ns_per_request, MAX_NS_PER_REQUEST, true)
                ),
            },
            None => not_measured(name, target),
        });
        let (name, target) = ("  of which kernel programs", "<= 500 ns");
        targets.push(match &self.cpu {
            Some(c) => Target {
                name,
                target,
                measured: format!("{:.0} ns", c.kernel_ns_per_request),
                verdict: verdict(c.kernel_ns_per_request <= MAX_KERNEL_NS_PER_REQUEST),
                note: by_how_much(c.kernel_ns_per_request, MAX_KERNEL_NS_PER_REQUEST, true),
            },
            None => not_measured(name, target),
        });

        let rounds = |ratios: &[f64]| {
            ratios
                .iter()
                .map(|r| format!("{r:.3}"))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let (name, target) = ("throughput loss, nginx constant", "<= 5 %");
        targets.push(match &self.overhead {
            Some(o) => {
                let loss = 1.0 - o.on_off_rps_ratio;
                Target {
                    name,
                    target,
                    measured: format!("{:.1} %", loss * 100.0),
                    verdict: verdict(loss <= MAX_THROUGHPUT_LOSS_NGINX),
                    note: format!(
                        "on/off {:.3} (rounds {}); the proxy loses {:.1} %",
                        o.on_off_rps_ratio,
                        rounds(&o.on_off_rps_ratio_by_round),
                        (1.0 - o.proxy_direct_rps_ratio) * 100.0
                    ),
                }
            }
            None => not_measured(name, target),
        });
        let (name, target) = ("throughput loss, 100 us server", "<= 1 %");
        targets.push(match &self.overhead {
            Some(o) => {
                let loss = 1.0 - o.busy_on_off_rps_ratio;
                Target {
                    name,
                    target,
                    measured: format!("{:.1} %", loss * 100.0),
                    verdict: verdict(loss <= MAX_THROUGHPUT_LOSS_BUSY),
                    note: format!(
                        "on/off {:.3} (rounds {})",
                        o.busy_on_off_rps_ratio,
                        rounds(&o.busy_on_off_rps_ratio_by_round)
                    ),
                }
            }
            None => not_measured(name, target),
        });

        let (name, target) = ("userspace pipeline, one core", ">= 500k req/s");
        targets.push(match self.ceiling_bench() {
            Some(b) => {
                // A request is two ring records: its request event and its response event.
                let requests = b.elements_per_sec / 2.0;
                Target {
                    name,
                    target,
                    measured: format!("{} req/s", si(requests)),
                    verdict: verdict(requests >= MIN_PIPELINE_REQUESTS_PER_SEC),
                    note: format!(
                        "{} events/s in {} (the event path: --route-labels only); {}",
                        si(b.elements_per_sec),
                        b.name,
                        by_how_much(requests, MIN_PIPELINE_REQUESTS_PER_SEC, false)
                    ),
                }
            }
            None => not_measured(name, target),
        });

        let (name, target) = ("resident memory, 10,000 connections", "<= 32 MiB");
        targets.push(match &self.memory {
            Some(m) => {
                let rss = mib(m.connections_rss_kib);
                Target {
                    name,
                    target,
                    measured: format!("{rss:.1} MiB"),
                    verdict: verdict(
                        rss <= MAX_RSS_MIB
                            && m.connections_tracked >= u64::from(m.connections_wanted),
                    ),
                    note: format!(
                        "{} connections tracked; idle {:.1} MiB",
                        m.connections_tracked,
                        mib(m.idle_rss_kib)
                    ),
                }
            }
            None => not_measured(name, target),
        });

        let (name, target) = ("served request in the rate", "<= 1 s");
        targets.push(match &self.freshness {
            Some(f) => {
                let d = &f.pipeline_delay;
                let worst = d.v1_pods.max_ms.max(d.metrics.max_ms);
                let missed = d.v1_pods.missed + d.metrics.missed;
                Target {
                    name,
                    target,
                    measured: format!("{:.0} ms max", worst),
                    verdict: verdict(worst <= MAX_DELAY_MS && missed == 0),
                    note: format!(
                        "median {:.0} ms over {} requests",
                        d.v1_pods.median_ms,
                        d.v1_pods.samples_ms.len()
                    ),
                }
            }
            None => not_measured(name, target),
        });
        let (name, target) = ("concurrency against Little's law", "<= 1 %");
        targets.push(match &self.concurrency {
            Some(c) => Target {
                name,
                target,
                measured: format!("{:.3} % max", c.littles_law_error_max * 100.0),
                verdict: verdict(c.littles_law_error_max <= MAX_LITTLES_LAW_ERROR),
                note: format!(
                    "L {:.3} at {:.0} req/s x {} ms (ideal {:.2}); median error {:.3} % over {} readings",
                    c.concurrency_median,
                    c.driven_rps,
                    c.delay_ms,
                    c.ideal,
                    c.littles_law_error_median * 100.0,
                    c.readings
                ),
            },
            None => not_measured(name, target),
        });
        let (name, target) = ("served request via kube-apiserver", "p95 <= 1.5 s");
        targets.push(match &self.chain {
            Some(c) => {
                let d = &c.delay;
                Target {
                    name,
                    target,
                    measured: format!("{:.0} ms p95", d.p95_ms),
                    verdict: verdict(d.p95_ms <= MAX_CHAIN_P95_MS && d.missed == 0),
                    note: format!(
                        "median {:.0} ms, max {:.0} ms over {} requests, {} missed",
                        d.median_ms,
                        d.max_ms,
                        d.samples_ms.len(),
                        d.missed
                    ),
                }
            }
            None => not_measured(name, target),
        });
        self.targets = targets;
    }

    pub fn print(&self, plan: &Plan) {
        print!("{}", self.table(plan));
    }

    fn table(&self, plan: &Plan) -> String {
        let mut t = String::new();
        let m = &self.machine;
        let _ = writeln!(
            t,
            "podmeter bench{} | {} | {} x {} | kernel {} | {} MiB | load {} (end {}) | {:.0} s",
            if self.quick { " (quick)" } else { "" },
            m.date_utc,
            m.cpus,
            m.cpu_model,
            m.kernel,
            m.memory_mib,
            m.load_average_at_start,
            m.load_average_at_end,
            self.elapsed_secs
        );
        let _ = writeln!(t, "cores: {}", self.cores);
        if let Some(o) = &self.overhead {
            let _ = writeln!(
                t,
                "\n1-2. server overhead and proxy baseline: wrk -t1 -c{} for {} s, median of {} alternating rounds; agent with default flags (no route labels, no events)",
                plan.connections,
                plan.run.as_secs(),
                plan.rounds
            );
            let _ = writeln!(
                t,
                "  {:<26} {:>10} {:>9} {:>9} {:>12} {:>12}  CPUs busy",
                "", "req/s", "p50 ms", "p99 ms", "req/s ratio", "p99 ratio"
            );
            for (label, v, rps, p99) in [
                ("nginx, agent off", &o.agent_off, 1.0, 1.0),
                (
                    "nginx, agent on",
                    &o.agent_on,
                    o.on_off_rps_ratio,
                    o.on_off_p99_ratio,
                ),
                (
                    "L7 proxy sidecar (nginx)",
                    &o.proxy,
                    o.proxy_direct_rps_ratio,
                    o.proxy_direct_p99_ratio,
                ),
                ("100 us server, agent off", &o.busy_agent_off, 1.0, 1.0),
                (
                    "100 us server, agent on",
                    &o.busy_agent_on,
                    o.busy_on_off_rps_ratio,
                    o.busy_on_off_p99_ratio,
                ),
            ] {
                let busy = super::overhead::busy(&v.core_busy);
                let _ = writeln!(
                    t,
                    "  {label:<26} {:>10.0} {:>9.3} {:>9.3} {rps:>12.3} {p99:>12.3}  {busy}",
                    v.requests_per_sec, v.p50_ms, v.p99_ms
                );
            }
            let events: Vec<u64> = o.runs.iter().filter_map(|r| r.events_sent).collect();
            let counts: Vec<String> = o
                .runs
                .iter()
                .filter_map(|r| Some(r.counted? as i64 - r.wrk.requests as i64))
                .map(|d| format!("{d:+}"))
                .collect();
            let _ = writeln!(
                t,
                "  agent on: counted - wrk completed {}; ring events sent {}",
                if counts.is_empty() {
                    "-".to_owned()
                } else {
                    counts.join(" ")
                },
                if events.iter().all(|&e| e == 0) {
                    format!("0 in all {} runs", events.len())
                } else {
                    events
                        .iter()
                        .map(u64::to_string)
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            );
        }
        if let Some(c) = &self.cpu {
            let programs = c
                .kernel_ns_per_request_by_program
                .iter()
                .map(|(hook, ns)| {
                    format!(
                        "{hook} {ns:.0} ({:.2} runs x {:.0} ns)",
                        c.program_runs_per_request.get(hook).copied().unwrap_or(0.0),
                        c.ns_per_program_run.get(hook).copied().unwrap_or(0.0)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ");
            let _ = writeln!(
                t,
                "\n3. agent CPU per request (agent on, saturation, median of {} runs)\n  \
                 userspace {:.0} ns + kernel programs {:.0} ns = {:.0} ns per request\n  \
                 kernel by program: {programs}",
                c.runs.len(),
                c.userspace_ns_per_request,
                c.kernel_ns_per_request,
                c.total_ns_per_request
            );
        }
        if self.criterion.is_some() || self.live.is_some() {
            let _ = writeln!(t, "\n4. pipeline ceiling");
        }
        if let Some(benches) = &self.criterion {
            for b in benches {
                let rate = if b.name.starts_with("rates/") {
                    format!("{:.1} us per counter read", b.ns_per_iteration / 1e3)
                } else {
                    format!(
                        "{} events/s = {} req/s",
                        si(b.elements_per_sec),
                        si(b.elements_per_sec / 2.0)
                    )
                };
                let _ = writeln!(t, "  criterion {:<34} {rate}", b.name);
            }
        }
        if let Some(l) = &self.live {
            let _ = match (
                l.sustained_observed_requests_per_sec,
                l.sustained_events_per_sec,
            ) {
                (Some(r), Some(e)) => writeln!(
                    t,
                    "  live agent {}: {}{} observed req/s ({} events/s) with 0 lost events{}",
                    l.agent_args.join(" "),
                    if l.load_bound { ">= " } else { "" },
                    si(r),
                    si(e),
                    if l.load_bound {
                        " (the most wrk could drive here)"
                    } else {
                        ""
                    }
                ),
                _ => writeln!(
                    t,
                    "  live agent {}: events lost at every rate tried",
                    l.agent_args.join(" ")
                ),
            };
        }
        if let Some(f) = &self.freshness {
            let d = &f.pipeline_delay;
            let _ = writeln!(
                t,
                "\n5. freshness\n  pipeline delay, served -> in the served rate ({} requests):\n    \
                 /v1/pods  median {:.0} ms, p95 {:.0} ms, max {:.0} ms\n    \
                 /metrics  median {:.0} ms, p95 {:.0} ms, max {:.0} ms",
                d.v1_pods.samples_ms.len(),
                d.v1_pods.median_ms,
                d.v1_pods.p95_ms,
                d.v1_pods.max_ms,
                d.metrics.median_ms,
                d.metrics.p95_ms,
                d.metrics.max_ms
            );
            let _ = writeln!(
                t,
                "  step response, N = {} req/s, time to 90 % of the new value (model):",
                f.step_load_rps
            );
            for s in &f.steps {
                let _ = writeln!(
                    t,
                    "    window {:>2} s  {:<5} {:>6.0} -> {:>4.0} req/s  {:>8} ({:.1} s)",
                    s.window_secs,
                    s.step,
                    s.from_rps,
                    s.to_rps,
                    s.secs_to_90pct_of_new_value
                        .map_or_else(|| "never".to_owned(), |x| format!("{x:.2} s")),
                    s.model_secs
                );
            }
        }
        if let Some(m) = &self.memory {
            let _ = writeln!(
                t,
                "\n6. memory (agent resident set)\n  idle {:.1} MiB; with {} keep-alive connections {:.1} MiB \
                 (peak {:.1} MiB, {} tracked, wrk {:.0} req/s)",
                mib(m.idle_rss_kib),
                m.connections_wanted,
                mib(m.connections_rss_kib),
                mib(m.peak_rss_kib),
                m.connections_tracked,
                m.wrk.requests_per_sec
            );
        }
        if let Some(c) = &self.concurrency {
            let _ = writeln!(
                t,
                "\n7. concurrency accuracy ({:.0} req/s, every request answered after {} ms, window {} s)\n  \
                 L median {:.3}, ideal {:.2}; kernel's mean latency {:.5} s; |L / (rate x mean latency) - 1| \
                 median {:.3} %, max {:.3} % over {} readings",
                c.driven_rps,
                c.delay_ms,
                c.window_secs,
                c.concurrency_median,
                c.ideal,
                c.mean_latency_secs,
                c.littles_law_error_median * 100.0,
                c.littles_law_error_max * 100.0,
                c.readings
            );
        }
        if let Some(c) = &self.chain {
            let d = &c.delay;
            let _ = writeln!(
                t,
                "\n8. chain freshness: one GET to an idle pod -> its value > 0 in kube-apiserver's \
                 custom.metrics.k8s.io answer, polled every {:.0} ms ({} pods, window {} s)\n  \
                 {} requests: median {:.0} ms, p95 {:.0} ms, max {:.0} ms; {} missed (none within 5 s)\n  \
                 one query through kube-apiserver: p50 {:.1} ms, p95 {:.1} ms, {} failed\n  \
                 set-up: control plane {:.1} s, APIService Available {:.1} s, first answer {:.1} s, warm-up {:.1} s; section {:.0} s",
                c.poll_ms,
                c.pods,
                c.rate_window_secs,
                d.samples_ms.len() + d.missed as usize,
                d.median_ms,
                d.p95_ms,
                d.max_ms,
                d.missed,
                c.query_p50_ms,
                c.query_p95_ms,
                c.query_errors,
                c.control_plane_start_secs,
                c.apiservice_available_secs,
                c.first_answer_secs,
                c.warmup_secs,
                c.section_secs
            );
        }
        if let Some(p) = &self.profile {
            let _ = writeln!(
                t,
                "\nprofile: perf record -a -g (cpu-clock), agent on, {:.0} req/s, {} samples",
                p.requests_per_sec, p.samples
            );
            for (name, part) in [
                ("BPF programs", &p.programs),
                ("cgroup hook", &p.hook),
                ("agent process", &p.agent),
            ] {
                let _ = writeln!(
                    t,
                    "  {name:<14} {:>5.0} ns/req: {}",
                    part.ns_per_request,
                    part.hottest(6)
                );
            }
        }
        let _ = writeln!(t, "\ntargets");
        for target in &self.targets {
            let _ = writeln!(
                t,
                "  {:<36} {:<14} {:>14}  {:<12} {}",
                target.name, target.target, target.measured, target.verdict, target.note
            );
        }
        t
    }

    pub fn write(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let json = serde_json::to_string_pretty(self)?;
        std::fs::write(path, json + "\n").with_context(|| format!("writing {}", path.display()))
    }
}

/// How far a measurement is from its target, in percent of the target.
fn by_how_much(measured: f64, target: f64, lower_is_better: bool) -> String {
    let ratio = measured / target - 1.0;
    match (lower_is_better, ratio > 0.0) {
        (true, true) => format!("{:.0} % over the target", ratio * 100.0),
        (false, false) => format!("{:.0} % short of the target", -ratio * 100.0),
        _ => format!("{:.0} % headroom", ratio.abs() * 100.0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(si(1_234_567.0), "1.23 M");
        assert_eq!(si(12_345.0), "12.3 k");
        assert_eq!(si(999.0), "999");
        assert_eq!(by_how_much(3_000.0, 2_000.0, true), "50 % over the target");
        assert_eq!(by_how_much(1_000.0, 2_000.0, true), "50 % headroom");
        assert_eq!(
            by_how_much(250_000.0, 500_000.0, false),
            "50 % short of the target"
        );
        assert_eq!(by_how_much(750_000.0, 500_000.0, false), "50 % headroom");
    }
}
