//! Real HTTP clients (hey, curl) run inside a pod or in the root namespace, with what they report
//! parsed into requests completed per status code.

use std::{collections::BTreeMap, fmt::Write as _, path::Path, process::Command, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    netns::Pod,
    process::{CommandOutput, place, run, run_with_input},
    tempdir::{self, TempDir},
};

/// What a client saw: completed requests by HTTP status, and failures by error text.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ClientReport {
    pub by_status: BTreeMap<u16, u64>,
    pub errors: BTreeMap<String, u64>,
}

impl ClientReport {
    /// Requests that got a response, whatever its status.
    pub fn completed(&self) -> u64 {
        self.by_status.values().sum()
    }

    /// Requests that got `status`.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Requests that got no response at all.
    pub fn failed(&self) -> u64 {
        self.errors.values().sum()
    }
}

/// hey: `-n N -c C` load with keep-alive by default.
#[derive(Debug, Clone)]
pub struct Hey {
    url: String,
    requests: u64,
    concurrency: u32,
    keepalive: bool,
    method: Option<String>,
    body: Option<Vec<u8>>,
    rate_per_worker: Option<u32>,
    request_timeout_secs: u32,
    deadline: Duration,
}

impl Hey {
    /// 200 requests over 2 workers, keep-alive on, GET; override with the builder methods.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            requests: 200,
            concurrency: 2,
            keepalive: true,
            method: None,
            body: None,
            rate_per_worker: None,
            request_timeout_secs: 10,
            deadline: Duration::from_secs(120),
        }
    }

    /// Total requests (`-n`).
    pub fn requests(mut self, requests: u64) -> Self {
        self.requests = requests;
        self
    }

    /// Concurrent workers (`-c`); hey needs `requests >= concurrency`.
    pub fn concurrency(mut self, concurrency: u32) -> Self {
        self.concurrency = concurrency;
        self
    }

    /// A new TCP connection for every request (`-disable-keepalive`).
    pub fn disable_keepalive(mut self) -> Self {
        self.keepalive = false;
        self
    }

    /// `POST` with `body` (`-m POST -D <file>`).
    pub fn post(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.method = Some("POST".to_owned());
        self.body = Some(body.into());
        self
    }

    /// A fixed rate: `rate` requests per second per worker (`-q`).
    pub fn rate_per_worker(mut self, rate: u32) -> Self {
        self.rate_per_worker = Some(rate);
        self
    }

    /// Per-request timeout in seconds (`-t`, default 10).
    pub fn request_timeout_secs(mut self, seconds: u32) -> Self {
        self.request_timeout_secs = seconds;
        self
    }

    /// Upper bound for the whole run; hey is killed and the run fails after it (default 120 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Runs hey inside `pod` (its netns and cgroup).
    pub fn run_from(&self, pod: &Pod<'_>) -> Result<ClientReport> {
        self.run_with(pod.command("hey")?)
    }

    /// Runs hey in the root namespace and the caller's cgroup.
    pub fn run_from_root(&self) -> Result<ClientReport> {
        self.run_with(Command::new("hey"))
    }

    /// Runs hey in the root namespace and in `cgroup`: a process of the node itself, as the
    /// agent sees one when `cgroup` is below its root and belongs to no pod (a kubelet).
    pub fn run_from_node(&self, cgroup: &Path) -> Result<ClientReport> {
        let mut command = Command::new("hey");
        place(&mut command, None, Some(cgroup))?;
        self.run_with(command)
    }

    fn run_with(&self, mut command: Command) -> Result<ClientReport> {
        let body_dir = tempdir::new("hey-body")?;
        command.arg("-n").arg(self.requests.to_string());
        command.arg("-c").arg(self.concurrency.to_string());
        command.arg("-t").arg(self.request_timeout_secs.to_string());
        if !self.keepalive {
            command.arg("-disable-keepalive");
        }
        if let Some(method) = &self.method {
            command.args(["-m", method]);
        }
        if let Some(body) = &self.body {
            // A file, not -d: arbitrary bytes and sizes beyond the argv limit.
            command
                .arg("-D")
                .arg(tempdir::write(&body_dir, "body", body)?);
        }
        if let Some(rate) = self.rate_per_worker {
            command.arg("-q").arg(rate.to_string());
        }
        command.arg(&self.url);
        let output = run(command, self.deadline)?.check("hey")?;
        parse_hey(&output.stdout).with_context(|| format!("parsing hey output:\n{}", output.stdout))
    }
}

/// Parses hey's summary: the lines under `Status code distribution:` (`  [200]\t1000 responses`)
/// and under `Error distribution:` (`  [10]\tGet "...": dial tcp ...`).
///
/// The histogram above them has lines of the same `[n]` shape (`  0.001 [12]\t|■■`), so only the
/// two sections are read. hey prints the `Error distribution:` header twice.
pub fn parse_hey(output: &str) -> Result<ClientReport> {
    enum Section {
        Other,
        Status,
        Errors,
    }
    let mut report = ClientReport::default();
    let mut section = Section::Other;
    let mut saw_summary = false;
    for line in output.lines() {
        let trimmed = line.trim();
        match trimmed {
            "Status code distribution:" => {
                section = Section::Status;
                saw_summary = true;
                continue;
            }
            "Error distribution:" => {
                section = Section::Errors;
                continue;
            }
            _ => {}
        }
        let Some((count, rest)) = trimmed
            .strip_prefix('[')
            .and_then(|text| text.split_once(']'))
        else {
            if !trimmed.is_empty() {
                section = Section::Other;
            }
            continue;
        };
        match section {
            Section::Status => {
                let status: u16 = count
                    .parse()
                    .with_context(|| format!("bad status in {line:?}"))?;
                let responses = rest.split_whitespace().next().unwrap_or_default();
                let responses: u64 = responses
                    .parse()
                    .with_context(|| format!("bad count in {line:?}"))?;
                *report.by_status.entry(status).or_default() += responses;
            }
            Section::Errors => {
                let count: u64 = count
                    .parse()
                    .with_context(|| format!("bad error count in {line:?}"))?;
                *report.errors.entry(rest.trim().to_owned()).or_default() += count;
            }
            Section::Other => {}
        }
    }
    if !saw_summary {
        bail!("no `Status code distribution:` section");
    }
    Ok(report)
}

/// curl: `count` requests to one URL in a single invocation (one connection, reused, unless the
/// options forbid it), one after another.
#[derive(Debug, Clone)]
pub struct Curl {
    url: String,
    count: u32,
    http10: bool,
    connection_close: bool,
    body: Option<Vec<u8>>,
    expect_continue: bool,
    compressed: bool,
    deadline: Duration,
}

impl Curl {
    /// One GET; override with the builder methods.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            count: 1,
            http10: false,
            connection_close: false,
            body: None,
            expect_continue: false,
            compressed: false,
            deadline: Duration::from_secs(60),
        }
    }

    /// Number of sequential requests.
    pub fn count(mut self, count: u32) -> Self {
        self.count = count;
        self
    }

    /// `--http1.0` (no keep-alive unless asked: nginx closes after each response).
    pub fn http10(mut self) -> Self {
        self.http10 = true;
        self
    }

    /// `-H 'Connection: close'`: a new connection per request over HTTP/1.1.
    pub fn connection_close(mut self) -> Self {
        self.connection_close = true;
        self
    }

    /// `--data-binary @file` with `body` (makes the requests POSTs).
    pub fn data_binary(mut self, body: impl Into<Vec<u8>>) -> Self {
        self.body = Some(body.into());
        self
    }

    /// `-H 'Expect: 100-continue'`: curl sends the body only after `100 Continue` (or after its
    /// one-second expect timeout).
    pub fn expect_continue(mut self) -> Self {
        self.expect_continue = true;
        self
    }

    /// `--compressed`: sends `Accept-Encoding` and decodes the response.
    pub fn compressed(mut self) -> Self {
        self.compressed = true;
        self
    }

    /// Upper bound for the whole run (default 60 s).
    pub fn deadline(mut self, deadline: Duration) -> Self {
        self.deadline = deadline;
        self
    }

    /// Runs the requests inside `pod`, parsing one `%{http_code}` per request.
    pub fn run_from(&self, pod: &Pod<'_>) -> Result<ClientReport> {
        self.run_counting(pod.command("curl")?)
    }

    /// Runs the requests in the root namespace.
    pub fn run_from_root(&self) -> Result<ClientReport> {
        self.run_counting(Command::new("curl"))
    }

    /// One verbose request (`-v`, body to stdout) inside `pod`, for assertions on the exchange.
    pub fn verbose_from(&self, pod: &Pod<'_>) -> Result<CommandOutput> {
        self.run_verbose(pod.command("curl")?)
    }

    /// One verbose request in the root namespace.
    pub fn verbose_from_root(&self) -> Result<CommandOutput> {
        self.run_verbose(Command::new("curl"))
    }

    fn common_args(&self, command: &mut Command, body_dir: &TempDir) -> Result<()> {
        // --globoff: URLs are taken as written (an IPv6 literal's brackets are not a glob).
        command.args(["--silent", "--show-error", "--globoff", "--max-time", "20"]);
        if self.http10 {
            command.arg("--http1.0");
        }
        if self.connection_close {
            command.args(["-H", "Connection: close"]);
        }
        if self.expect_continue {
            command.args(["-H", "Expect: 100-continue"]);
        }
        if self.compressed {
            command.arg("--compressed");
        }
        if let Some(body) = &self.body {
            let mut arg = std::ffi::OsString::from("@");
            arg.push(tempdir::write(body_dir, "body", body)?);
            command.arg("--data-binary").arg(arg);
        }
        Ok(())
    }

    fn run_counting(&self, mut command: Command) -> Result<ClientReport> {
        let body_dir = tempdir::new("curl-body")?;
        self.common_args(&mut command, &body_dir)?;
        command.args(["--write-out", "%{http_code}\\n", "--config", "-"]);
        // The URLs come from a config on stdin: no argv limit, and each gets its own output.
        let mut config = String::new();
        let url = self.url.replace('\\', "\\\\").replace('"', "\\\"");
        for _ in 0..self.count {
            let _ = writeln!(config, "url = \"{url}\"\noutput = \"/dev/null\"");
        }
        let output = run_with_input(command, config.as_bytes(), self.deadline)?;
        // curl's exit status only reflects the last transfer; the codes tell about each one.
        let report = parse_curl_codes(&output.stdout);
        if report.completed() + report.failed() != u64::from(self.count) {
            bail!(
                "curl reported {} results for {} requests ({}):\nstdout:\n{}\nstderr:\n{}",
                report.completed() + report.failed(),
                self.count,
                output.status,
                output.stdout,
                output.stderr
            );
        }
        Ok(report)
    }

    fn run_verbose(&self, mut command: Command) -> Result<CommandOutput> {
        let body_dir = tempdir::new("curl-body")?;
        command.arg("--verbose");
        self.common_args(&mut command, &body_dir)?;
        command.arg(&self.url);
        run(command, self.deadline)?.check("curl --verbose")
    }
}

/// One `%{http_code}` per line; `000` means the transfer got no response.
pub fn parse_curl_codes(stdout: &str) -> ClientReport {
    let mut report = ClientReport::default();
    for code in stdout
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty())
    {
        match code.parse::<u16>() {
            Ok(0) | Err(_) => {
                *report
                    .errors
                    .entry(format!("curl http_code {code}"))
                    .or_default() += 1
            }
            Ok(status) => *report.by_status.entry(status).or_default() += 1,
        }
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;

    const HEY_OK: &str = "\nSummary:\n  Total:\t0.0035 secs\n\nResponse time histogram:\n  0.000 [1]\t|■\n  0.000 [32]\t|■■■■\n\n\
Latency distribution:\n  10% in 0.0001 secs\n\nStatus code distribution:\n  [200]\t50 responses\n  [404]\t3 responses\n\n\n";

    const HEY_ERRORS: &str = "\nStatus code distribution:\n\nError distribution:\nError distribution:\n  \
[10]\tGet \"http://127.0.0.1:18099/\": dial tcp 127.0.0.1:18099: connect: connection refused\n\n";

    #[test]
    fn hey_status_lines_are_counted_and_histogram_is_ignored() {
        let report = parse_hey(HEY_OK).expect("parses");
        assert_eq!(report.by_status, BTreeMap::from([(200, 50), (404, 3)]));
        assert_eq!(report.completed(), 53);
        assert_eq!(report.failed(), 0);
    }

    #[test]
    fn hey_errors_are_counted() {
        let report = parse_hey(HEY_ERRORS).expect("parses");
        assert_eq!(report.completed(), 0);
        assert_eq!(report.failed(), 10);
    }

    #[test]
    fn hey_output_without_summary_is_an_error() {
        assert!(parse_hey("Usage: hey [options...] <url>\n").is_err());
    }

    #[test]
    fn curl_codes_are_counted() {
        let report = parse_curl_codes("200\n200\n404\n000\n");
        assert_eq!(report.by_status, BTreeMap::from([(200, 2), (404, 1)]));
        assert_eq!(report.failed(), 1);
    }
}
