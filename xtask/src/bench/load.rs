//! wrk as the saturating load generator: closed-loop keep-alive connections from a pod, pinned to
//! one core, with the throughput, latency percentiles and errors its summary prints.

use std::{collections::BTreeMap, process::Command, time::Duration};

use anyhow::{Context as _, Result, bail};
use podmeter_tests::{Pod, run};
use serde::Serialize;

/// `wrk -t<threads> -c<connections> -d<secs>s --latency <url>`, pinned with `taskset`.
#[derive(Clone, Debug)]
pub struct Wrk {
    pub url: String,
    pub connections: u32,
    pub threads: u32,
    pub duration: Duration,
    pub cpu: usize,
}

/// What wrk reported.
#[derive(Clone, Debug, Default, Serialize)]
pub struct WrkReport {
    /// Completed requests.
    pub requests: u64,
    pub secs: f64,
    pub requests_per_sec: f64,
    /// Latency percentiles (50, 75, 90, 99) in milliseconds.
    pub latency_ms: BTreeMap<u32, f64>,
    /// Socket errors: connect, read, write, timeout.
    pub socket_errors: u64,
    pub non_2xx_3xx: u64,
}

impl WrkReport {
    pub fn p99_ms(&self) -> f64 {
        self.latency_ms.get(&99).copied().unwrap_or(f64::NAN)
    }
}

impl Wrk {
    /// The command, inside `pod` (its netns and cgroup).
    pub fn command(&self, pod: &Pod<'_>) -> Result<Command> {
        let mut command = pod.command("taskset")?;
        command
            .args(["-c", &self.cpu.to_string(), "wrk"])
            .arg(format!("-t{}", self.threads))
            .arg(format!("-c{}", self.connections))
            .arg(format!("-d{}s", self.duration.as_secs().max(1)))
            .args(["--timeout", "10s", "--latency"])
            .arg(&self.url);
        Ok(command)
    }

    /// Runs wrk to completion inside `pod`.
    pub fn run_from(&self, pod: &Pod<'_>) -> Result<WrkReport> {
        run_prepared(self.command(pod)?, self.duration)
    }
}

/// Runs a command made by [`Wrk::command`] (e.g. on another thread) and parses its summary.
pub fn run_prepared(command: Command, duration: Duration) -> Result<WrkReport> {
    // wrk stops at the duration; connecting 10,000 sockets and the summary take a few seconds.
    let output = run(command, duration + Duration::from_secs(30))?.check("wrk")?;
    parse(&output.stdout).with_context(|| format!("parsing wrk output:\n{}", output.stdout))
}

/// `580.00us`, `1.20ms`, `2.01s`, `3.00m` in milliseconds.
fn duration_ms(text: &str) -> Option<f64> {
    let split = text.find(|c: char| c.is_ascii_alphabetic())?;
    let (number, unit) = text.split_at(split);
    let number: f64 = number.parse().ok()?;
    let factor = match unit {
        "us" => 1e-3,
        "ms" => 1.0,
        "s" => 1e3,
        "m" => 60e3,
        "h" => 3_600e3,
        _ => return None,
    };
    Some(number * factor)
}

/// Parses wrk's summary (`--latency`).
pub fn parse(output: &str) -> Result<WrkReport> {
    let mut report = WrkReport::default();
    let mut in_distribution = false;
    let mut saw_rate = false;
    for line in output.lines().map(str::trim) {
        if line == "Latency Distribution" {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some((percent, value)) = line.split_once('%')
                && let Ok(percent) = percent.trim().parse::<u32>()
                && let Some(ms) = duration_ms(value.trim())
            {
                report.latency_ms.insert(percent, ms);
                continue;
            }
            in_distribution = false;
        }
        if let Some((requests, rest)) = line.split_once(" requests in ") {
            report.requests = requests
                .trim()
                .parse()
                .with_context(|| format!("bad request count in {line:?}"))?;
            let secs = rest.split(',').next().unwrap_or_default().trim();
            report.secs = duration_ms(secs).map_or(0.0, |ms| ms / 1e3);
        } else if let Some(rest) = line.strip_prefix("Requests/sec:") {
            report.requests_per_sec = rest.trim().parse().context("bad Requests/sec")?;
            saw_rate = true;
        } else if let Some(rest) = line.strip_prefix("Socket errors:") {
            report.socket_errors = rest
                .split(',')
                .filter_map(|part| part.split_whitespace().last()?.parse::<u64>().ok())
                .sum();
        } else if let Some(rest) = line.strip_prefix("Non-2xx or 3xx responses:") {
            report.non_2xx_3xx = rest.trim().parse().unwrap_or(0);
        }
    }
    if !saw_rate {
        bail!("no `Requests/sec:` line");
    }
    Ok(report)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OUTPUT: &str = "Running 5s test @ http://198.18.1.2/\n  1 threads and 64 connections\n  \
Thread Stats   Avg      Stdev     Max   +/- Stdev\n    Latency     1.23ms  301.00us   9.87ms   88.00%\n    \
Req/Sec    52.10k     1.20k   54.00k    80.00%\n  Latency Distribution\n     50%    1.20ms\n     \
75%    1.35ms\n     90%    1.50ms\n     99%    2.10ms\n  259210 requests in 5.00s, 40.55MB read\n  \
Socket errors: connect 3, read 0, write 0, timeout 2\n  Non-2xx or 3xx responses: 7\n\
Requests/sec:  51842.00\nTransfer/sec:      8.11MB\n";

    #[test]
    fn the_summary_is_parsed() {
        let r = parse(OUTPUT).expect("parses");
        assert_eq!(r.requests, 259_210);
        assert_eq!(r.secs, 5.0);
        assert_eq!(r.requests_per_sec, 51_842.0);
        assert_eq!(r.p99_ms(), 2.1);
        assert_eq!(r.latency_ms.get(&50), Some(&1.2));
        assert_eq!(r.socket_errors, 5);
        assert_eq!(r.non_2xx_3xx, 7);
    }

    #[test]
    fn units_convert_to_milliseconds() {
        let close = |text: &str, ms: f64| duration_ms(text).is_some_and(|v| (v - ms).abs() < 1e-9);
        assert!(close("580.00us", 0.58));
        assert!(close("2.01s", 2010.0));
        assert!(close("1.5m", 90_000.0));
        assert_eq!(duration_ms("fast"), None);
    }

    #[test]
    fn output_without_a_rate_is_an_error() {
        assert!(parse("unable to connect to 198.18.1.2:80 Connection refused\n").is_err());
    }
}
