//! hey at a fixed rate for a fixed time (`-q R -c C -z D`: `R * C` requests per second), with
//! everything its summary reports: total time, requests per second, latency percentiles and
//! status codes. The run is prepared on the test's thread (inside a pod) and can then run on
//! another thread while the test watches the agent.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    clients::{ClientReport, parse_hey},
    netns::Pod,
    process::run,
};

/// What hey reported about a paced run.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PacedReport {
    /// Completed requests by status, and failures.
    pub statuses: ClientReport,
    /// `Total:`: seconds from the first request to the end.
    pub total_secs: f64,
    /// `Requests/sec:`.
    pub requests_per_sec: f64,
    /// `Average:`: mean seconds per request, client side.
    pub average_secs: f64,
    /// `Latency distribution:` (`50% in 0.0012 secs`): percent -> seconds, client side.
    pub latency: BTreeMap<u32, f64>,
}

impl PacedReport {
    /// The latency hey reports for a percentile it prints (10, 25, 50, 75, 90, 95, 99).
    pub fn percentile(&self, percent: u32) -> Option<f64> {
        self.latency.get(&percent).copied()
    }
}

/// `hey -q <rate_per_worker> -c <workers> -z <duration>`.
#[derive(Debug, Clone)]
pub struct PacedHey {
    url: String,
    rate_per_worker: u32,
    workers: u32,
    duration: Duration,
}

impl PacedHey {
    /// `rate_per_worker * workers` requests per second for `duration` (whole seconds).
    pub fn new(
        url: impl Into<String>,
        rate_per_worker: u32,
        workers: u32,
        duration: Duration,
    ) -> Self {
        Self {
            url: url.into(),
            rate_per_worker,
            workers,
            duration,
        }
    }

    /// The rate hey is asked for.
    pub fn target_rate(&self) -> f64 {
        f64::from(self.rate_per_worker) * f64::from(self.workers)
    }

    /// Builds the hey command inside `pod`; [`PreparedHey::run`] may run on any thread.
    pub fn prepare(&self, pod: &Pod<'_>) -> Result<PreparedHey> {
        let mut command = pod.command("hey")?;
        command
            .arg("-q")
            .arg(self.rate_per_worker.to_string())
            .arg("-c")
            .arg(self.workers.to_string())
            .arg("-z")
            .arg(format!("{}s", self.duration.as_secs().max(1)))
            .args(["-t", "10"])
            .arg(&self.url);
        Ok(PreparedHey {
            command,
            // hey stops at the duration, then finishes the requests in flight.
            deadline: self.duration + Duration::from_secs(30),
        })
    }

    /// Runs inside `pod` on this thread.
    pub fn run_from(&self, pod: &Pod<'_>) -> Result<PacedReport> {
        self.prepare(pod)?.run()
    }
}

/// A hey command ready to run.
#[derive(Debug)]
pub struct PreparedHey {
    command: Command,
    deadline: Duration,
}

impl PreparedHey {
    pub fn run(self) -> Result<PacedReport> {
        let output = run(self.command, self.deadline)?.check("hey")?;
        parse_summary(&output.stdout)
            .with_context(|| format!("parsing hey output:\n{}", output.stdout))
    }
}

/// Parses hey's whole summary.
pub fn parse_summary(output: &str) -> Result<PacedReport> {
    let statuses = parse_hey(output)?;
    let mut report = PacedReport {
        statuses,
        ..PacedReport::default()
    };
    let seconds = |text: &str| -> Result<f64> {
        let number = text.split_whitespace().next().unwrap_or_default();
        number
            .parse()
            .with_context(|| format!("bad number in {text:?}"))
    };
    for line in output.lines().map(str::trim) {
        if let Some(rest) = line.strip_prefix("Total:") {
            report.total_secs = seconds(rest)?;
        } else if let Some(rest) = line.strip_prefix("Average:") {
            report.average_secs = seconds(rest)?;
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            report.requests_per_sec = seconds(rest)?;
        } else if let Some((percent, rest)) = line.split_once("% in ")
            && let Ok(percent) = percent.parse::<u32>()
        {
            report.latency.insert(percent, seconds(rest)?);
        }
    }
    if report.total_secs <= 0.0 {
        bail!("no `Total:` line");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SUMMARY: &str = "\nSummary:\n  Total:\t10.0042 secs\n  Slowest:\t0.3051 secs\n  Fastest:\t0.0201 secs\n  \
Average:\t0.0486 secs\n  Requests/sec:\t39.9832\n  \n  Total data:\t800 bytes\n  Size/request:\t2 bytes\n\n\
Response time histogram:\n  0.020 [360]\t|■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■■\n  0.049 [0]\t|\n\n\n\
Latency distribution:\n  10% in 0.0203 secs\n  25% in 0.0204 secs\n  50% in 0.0206 secs\n  75% in 0.0209 secs\n  \
90% in 0.3012 secs\n  95% in 0.3021 secs\n  99% in 0.3040 secs\n\nDetails (average, fastest, slowest):\n  \
DNS+dialup:\t0.0000 secs, 0.0201 secs, 0.3051 secs\n\nStatus code distribution:\n  [200]\t400 responses\n\n";

    #[test]
    fn the_whole_summary_is_parsed() {
        let report = parse_summary(SUMMARY).expect("parses");
        assert_eq!(report.statuses.status(200), 400);
        assert_eq!(report.total_secs, 10.0042);
        assert_eq!(report.requests_per_sec, 39.9832);
        assert_eq!(report.average_secs, 0.0486);
        assert_eq!(report.percentile(50), Some(0.0206));
        assert_eq!(report.percentile(99), Some(0.3040));
        assert_eq!(report.latency.len(), 7);
    }
}
