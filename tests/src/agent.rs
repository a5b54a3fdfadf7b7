//! The podmeter agent as a real process: started on a test's parent cgroup, read through its HTTP
//! API, stopped with SIGTERM.

use std::{
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};
use podmeter_wire::{AgentReply, PodReply, PodsReply};
use serde_json::Value;

use crate::process::{ChildGuard, die_with_parent, forward_lines};

/// Environment variable with the agent binary to test.
pub const AGENT_BIN_ENV: &str = "PODMETER_BIN";
/// The line prefix the agent prints once it is attached and serving.
pub const LISTENING_PREFIX: &str = "podmeter: listening on ";
/// How long the agent may take to attach and listen.
const START_TIMEOUT: Duration = Duration::from_secs(20);
/// How long `terminate` waits for a clean exit after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(10);
/// Polling cadence of [`AgentProcess::wait_stable_counts`].
const STABLE_POLL: Duration = Duration::from_millis(250);
/// Counts must stay unchanged this long to count as stable.
const STABLE_FOR: Duration = Duration::from_secs(2);
/// Upper bound of [`AgentProcess::wait_stable_counts`].
const STABLE_TIMEOUT: Duration = Duration::from_secs(15);

/// Requests the agent counted for one pod.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PodCounts {
    /// Requests the pod served.
    pub inbound: u64,
    /// Requests the pod made.
    pub outbound: u64,
}

/// A running agent; dropping it stops it (SIGTERM, then SIGKILL).
#[derive(Debug)]
pub struct AgentProcess {
    process: ChildGuard,
    base_url: String,
    http: ureq::Agent,
}

impl AgentProcess {
    /// The binary under test: `$PODMETER_BIN`, else `podmeter` in the debug directory of
    /// `$CARGO_TARGET_DIR` or `<workspace>/target`.
    pub fn binary() -> PathBuf {
        if let Some(path) = std::env::var_os(AGENT_BIN_ENV) {
            return PathBuf::from(path);
        }
        crate::target_dir().join("debug").join("podmeter")
    }

    /// Starts `podmeter agent --cgroup-root <cgroup_root> --listen 127.0.0.1:0 <extra_args>` and
    /// returns once it prints that it listens. Panics with instructions when the binary is missing.
    pub fn start(cgroup_root: &Path, extra_args: &[&str]) -> Result<Self> {
        Self::start_binary(&Self::binary(), cgroup_root, extra_args)
    }

    /// Like [`AgentProcess::start`] with the API on `listen` (e.g. `198.18.3.1:0`, an address
    /// other processes reach it on, as a DaemonSet's pod address).
    pub fn start_listening(cgroup_root: &Path, listen: &str, extra_args: &[&str]) -> Result<Self> {
        Self::spawn(&Self::binary(), cgroup_root, listen, extra_args)
    }

    /// Like [`AgentProcess::start`] with an explicit binary (e.g. a stand-in for harness tests).
    pub fn start_binary(binary: &Path, cgroup_root: &Path, extra_args: &[&str]) -> Result<Self> {
        Self::spawn(binary, cgroup_root, "127.0.0.1:0", extra_args)
    }

    fn spawn(binary: &Path, cgroup_root: &Path, listen: &str, extra_args: &[&str]) -> Result<Self> {
        assert!(
            binary.is_file(),
            "podmeter agent binary not found at {}: build it with `cargo build -p podmeter` or run \
             `cargo xtask test` (or point {AGENT_BIN_ENV} at a binary)",
            binary.display()
        );
        let mut command = Command::new(binary);
        command
            .arg("agent")
            .arg("--cgroup-root")
            .arg(cgroup_root)
            .args(["--listen", listen])
            .args(extra_args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let child = command
            .spawn()
            .with_context(|| format!("spawning {command:?}"))?;
        let mut process = ChildGuard::from_child(child, "podmeter agent");
        let stdout = process
            .child_mut()
            .stdout
            .take()
            .context("agent stdout was not piped")?;
        let stderr = process
            .child_mut()
            .stderr
            .take()
            .context("agent stderr was not piped")?;
        process.attach_thread(forward_lines(stderr, "[podmeter stderr]".to_owned()));
        // One thread reads stdout for the whole run: it reports the listening line, and forwards
        // every line (including that one) to the test's output.
        let (address_tx, address_rx) = mpsc::channel();
        process.attach_thread(std::thread::spawn(move || {
            let mut address_tx = Some(address_tx);
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("[podmeter] {line}");
                if let Some(url) = line.strip_prefix(LISTENING_PREFIX)
                    && let Some(tx) = address_tx.take()
                {
                    let _ = tx.send(url.trim().to_owned());
                }
            }
        }));

        let deadline = Instant::now() + START_TIMEOUT;
        let base_url = loop {
            match address_rx.recv_timeout(Duration::from_millis(100)) {
                Ok(url) => break url,
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                // The reader ended: stdout closed, so the agent is exiting.
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let ended = match process.wait_timeout(Duration::from_secs(5))? {
                        Some(status) => format!("it exited: {status}"),
                        None => "it is still running".to_owned(),
                    };
                    bail!(
                        "the agent closed stdout before printing `{LISTENING_PREFIX}...` ({ended}); \
                         see the [podmeter stderr] lines above"
                    );
                }
            }
            if let Some(status) = process.try_wait()? {
                bail!(
                    "the agent exited before listening: {status}; see the [podmeter] lines above"
                );
            }
            if Instant::now() >= deadline {
                bail!("the agent did not print `{LISTENING_PREFIX}...` within {START_TIMEOUT:?}");
            }
        };
        let http: ureq::Agent = ureq::Agent::config_builder()
            .timeout_global(Some(Duration::from_secs(5)))
            .http_status_as_error(false)
            .build()
            .into();
        Ok(Self {
            process,
            base_url: base_url.trim_end_matches('/').to_owned(),
            http,
        })
    }

    /// `http://127.0.0.1:PORT`, as the agent printed it.
    pub fn base_url(&self) -> &str {
        &self.base_url
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// `GET <path>` on the agent's API, parsed as JSON; fails on a non-2xx status.
    pub fn get(&self, path: &str) -> Result<Value> {
        let text = self.get_text(path)?;
        serde_json::from_str(&text)
            .with_context(|| format!("GET {path}: body is not JSON:\n{text}"))
    }

    /// `GET /v1/pods`: every pod the agent has seen.
    pub fn pods(&self) -> Result<PodsReply> {
        let text = self.get_text("/v1/pods")?;
        serde_json::from_str(&text)
            .with_context(|| format!("GET /v1/pods: unexpected body:\n{text}"))
    }

    /// `GET /v1/agent`: the agent's own health.
    pub fn health(&self) -> Result<AgentReply> {
        let text = self.get_text("/v1/agent")?;
        serde_json::from_str(&text)
            .with_context(|| format!("GET /v1/agent: unexpected body:\n{text}"))
    }

    /// `GET <path>` on the agent's API as text (e.g. Prometheus metrics); fails on a non-2xx status.
    pub fn get_text(&self, path: &str) -> Result<String> {
        let url = format!("{}{path}", self.base_url);
        let mut response = self
            .http
            .get(&url)
            .call()
            .with_context(|| format!("GET {url}"))?;
        let status = response.status();
        let text = response
            .body_mut()
            .read_to_string()
            .with_context(|| format!("reading body of GET {url}"))?;
        if !status.is_success() {
            bail!("GET {url}: {status}\n{text}");
        }
        Ok(text)
    }

    /// The counts of pod `<namespace>/<name>` from `GET /v1/pods`; a pod not listed has zeros.
    pub fn pod_counts(&self, namespace: &str, name: &str) -> Result<PodCounts> {
        Ok(pod_counts_in(&self.pods()?, namespace, name))
    }

    /// The whole `/v1/pods` entry of pod `<namespace>/<name>` (an error naming the reply when the
    /// pod is not listed).
    pub fn pod_entry(&self, namespace: &str, name: &str) -> Result<PodReply> {
        let pods = self.pods()?;
        pod_in(&pods, namespace, name)
            .cloned()
            .with_context(|| format!("{namespace}/{name} not in {pods:?}"))
    }

    /// Polls the pod's counts every 250 ms until they have not changed for 2 s (at most 15 s;
    /// then the last counts are returned with a warning on the test output).
    pub fn wait_stable_counts(&self, namespace: &str, name: &str) -> Result<PodCounts> {
        let started = Instant::now();
        let mut last = self.pod_counts(namespace, name)?;
        let mut unchanged_since = Instant::now();
        loop {
            if unchanged_since.elapsed() >= STABLE_FOR {
                return Ok(last);
            }
            if started.elapsed() >= STABLE_TIMEOUT {
                eprintln!(
                    "podmeter-tests: counts of {namespace}/{name} still changing after {STABLE_TIMEOUT:?}; last {last:?}"
                );
                return Ok(last);
            }
            std::thread::sleep(STABLE_POLL);
            let now = self.pod_counts(namespace, name)?;
            if now != last {
                last = now;
                unchanged_since = Instant::now();
            }
        }
    }

    /// Sends SIGTERM and returns the exit status (SIGKILL after 10 s).
    pub fn terminate(&mut self) -> Result<ExitStatus> {
        self.process.terminate(STOP_GRACE)
    }

    /// Sends `signal` to the agent (nothing once it has exited).
    pub fn signal(&mut self, signal: libc::c_int) -> Result<()> {
        self.process.signal(signal)
    }

    /// Waits up to `timeout` for the agent to exit; `None` if it still runs.
    pub fn wait_timeout(&mut self, timeout: Duration) -> Result<Option<ExitStatus>> {
        self.process.wait_timeout(timeout)
    }
}

/// Pod `<namespace>/<name>` in a `/v1/pods` reply.
pub fn pod_in<'a>(pods: &'a PodsReply, namespace: &str, name: &str) -> Option<&'a PodReply> {
    pods.pods
        .iter()
        .find(|pod| pod.namespace == namespace && pod.name == name)
}

/// The counts of `<namespace>/<name>` in a `/v1/pods` reply; a pod not listed has zeros.
fn pod_counts_in(pods: &PodsReply, namespace: &str, name: &str) -> PodCounts {
    pod_in(pods, namespace, name).map_or_else(PodCounts::default, |pod| PodCounts {
        inbound: pod.inbound.totals.requests,
        outbound: pod.outbound.totals.requests,
    })
}

#[cfg(test)]
mod tests {
    use podmeter_wire::{FlowReply, FlowTotals, Observed, ObservedReply, UnattributedReply};

    use super::*;

    fn flow(requests: u64) -> FlowReply {
        FlowReply {
            totals: FlowTotals {
                requests,
                ..FlowTotals::default()
            },
            rate: 0.0,
            duration: None,
            ..FlowReply::default()
        }
    }

    fn pod(namespace: &str, name: &str, inbound: u64, outbound: u64) -> PodReply {
        PodReply {
            namespace: namespace.into(),
            name: name.into(),
            uid: None,
            workload: None,
            inbound: flow(inbound),
            outbound: flow(outbound),
            loopback_inbound: flow(0),
            loopback_outbound: flow(0),
            node_inbound: flow(0),
            observed: ObservedReply::default(),
        }
    }

    #[test]
    fn pod_counts_are_read_and_missing_pods_are_zero() {
        let pods = PodsReply {
            rate_window_seconds: 30,
            pods: vec![
                pod("default", "pod-b", 1000, 0),
                pod("other", "pod-b", 7, 3),
            ],
            unattributed: UnattributedReply {
                inbound: flow(0),
                outbound: flow(0),
                loopback_inbound: flow(0),
                loopback_outbound: flow(0),
                node_inbound: flow(0),
                observed_inbound: Observed::default(),
                observed_outbound: Observed::default(),
            },
        };
        assert_eq!(
            pod_counts_in(&pods, "default", "pod-b"),
            PodCounts {
                inbound: 1000,
                outbound: 0
            }
        );
        assert_eq!(
            pod_counts_in(&pods, "other", "pod-b"),
            PodCounts {
                inbound: 7,
                outbound: 3
            }
        );
        assert_eq!(
            pod_counts_in(&pods, "default", "pod-a"),
            PodCounts::default()
        );
    }
}
