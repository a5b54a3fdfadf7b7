//! HTTP/1.1 over raw sockets, for tests that need to know every byte and every instant: a payload
//! server with a chosen delay and response size, and two Python clients that count each byte they
//! write and read (each response read to its `Content-Length`).
//!
//! | server path | behaviour |
//! |---|---|
//! | `/<delay_ms>/<size>` | reads the request body (`Content-Length`), sleeps `<delay_ms>`, answers 200 with a `<size>`-byte body (at most 1 MiB) |
//!
//! - [`PacedClient`]: `threads` keep-alive connections, each sending `GET <path>` at a fixed rate
//!   on an absolute schedule, the threads staggered evenly over one period, so requests arrive
//!   one every `1 / (threads * rate)` seconds rather than in bursts.
//! - [`run_plan`]: keep-alive connections opened one after another, each sending its planned
//!   `POST`s (chosen body and response sizes) one at a time, then closing.

use std::{
    collections::BTreeMap, io::Read, net::Ipv4Addr, process::Stdio, thread::JoinHandle,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{
    netns::Pod,
    process::{ChildGuard, forward_lines, run_with_input},
    tempdir::{self, TempDir},
    wait::poll_until,
};

/// The payload server listens on this port on all of the pod's addresses.
pub const PORT: u16 = 8090;

const SERVER: &str = r#"
import http.server, sys, time

PATTERN = bytes(range(256)) * 4096

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # Headers and a small body leave in one write, with no Nagle delay.
    wbufsize = 65536
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self):
        remaining = int(self.headers.get("Content-Length") or 0)
        while remaining:
            chunk = self.rfile.read(min(remaining, 65536))
            if not chunk:
                self.close_connection = True
                return
            remaining -= len(chunk)
        try:
            delay_ms, size = (int(p) for p in self.path.strip("/").split("/"))
        except ValueError:
            self.send_error(400)
            return
        if delay_ms:
            time.sleep(delay_ms / 1000)
        body = PATTERN[:size]
        self.send_response(200)
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = answer

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"#;

/// What both clients share: one exchange on a socket, every byte counted.
const EXCHANGE: &str = r#"
import json, socket, sys, threading, time

def connect(host, port):
    sock = socket.create_connection((host, port), timeout=60)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock

def exchange(sock, message):
    """Sends `message`, reads one response to its Content-Length; (status, bytes read)."""
    sock.sendall(message)
    data = bytearray()
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed before the response head")
        data += chunk
    end = data.index(b"\r\n\r\n") + 4
    lines = bytes(data[:end - 4]).split(b"\r\n")
    status = int(lines[0].split()[1])
    length = 0
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(data) < end + length:
        chunk = sock.recv(65536)
        if not chunk:
            raise EOFError("closed in the response body")
        data += chunk
    if len(data) != end + length:
        raise ValueError(f"{len(data) - end - length} bytes beyond the response")
    return status, len(data)

class Totals:
    def __init__(self):
        self.lock = threading.Lock()
        self.requests = 0
        self.by_status = {}
        self.errors = []
        self.written = 0
        self.read = 0
        self.latency_sum = 0.0
        self.late = 0

    def add(self, status, written, read, latency):
        with self.lock:
            self.requests += 1
            self.by_status[status] = self.by_status.get(status, 0) + 1
            self.written += written
            self.read += read
            self.latency_sum += latency

    def error(self, text):
        with self.lock:
            self.errors.append(text)

    def report(self, elapsed):
        print(json.dumps({
            "requests": self.requests, "by_status": self.by_status, "errors": self.errors,
            "written": self.written, "read": self.read, "latency_sum": self.latency_sum,
            "late": self.late, "elapsed": elapsed,
        }), flush=True)
"#;

const PACED: &str = r#"
host, port, path = sys.argv[1], int(sys.argv[2]), sys.argv[3]
threads, rate, duration = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
message = f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\n\r\n".encode()
period = 1 / rate
totals = Totals()
# Connections are open before the first request is due.
start = time.monotonic() + 0.5
end = start + duration

def worker(i):
    try:
        sock = connect(host, port)
    except OSError as e:
        totals.error(f"connect: {e}")
        return
    k = 0
    try:
        while True:
            due = start + (i / threads + k) * period
            if due >= end:
                break
            wait = due - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            elif wait < -0.01:
                with totals.lock:
                    totals.late += 1
            sent = time.monotonic()
            status, read = exchange(sock, message)
            totals.add(status, len(message), read, time.monotonic() - sent)
            k += 1
    except Exception as e:
        totals.error(f"worker {i}: {e!r}")
    finally:
        sock.close()

workers = [threading.Thread(target=worker, args=(i,)) for i in range(threads)]
for w in workers:
    w.start()
for w in workers:
    w.join()
totals.report(time.monotonic() - start)
"#;

const PLANNED: &str = r#"
host, port = sys.argv[1], int(sys.argv[2])
plan = json.load(sys.stdin)
totals = Totals()
started = time.monotonic()
PATTERN = bytes((i * 7 + 3) % 256 for i in range(256)) * 4096
for requests in plan:
    sock = connect(host, port)
    try:
        for body_len, delay_ms, response_len in requests:
            body = (PATTERN * (body_len // len(PATTERN) + 1))[:body_len]
            message = (
                f"POST /{delay_ms}/{response_len} HTTP/1.1\r\nHost: {host}:{port}\r\n"
                f"Content-Type: application/octet-stream\r\nContent-Length: {body_len}\r\n\r\n"
            ).encode() + body
            sent = time.monotonic()
            status, read = exchange(sock, message)
            totals.add(status, len(message), read, time.monotonic() - sent)
    except Exception as e:
        totals.error(repr(e))
        break
    finally:
        sock.close()
totals.report(time.monotonic() - started)
"#;

/// A running payload server in a pod; dropping it stops the process.
#[derive(Debug)]
pub struct PayloadServer<'p> {
    pod: &'p Pod<'p>,
    // Field order matters: the process stops before its directory is removed.
    _process: ChildGuard,
    _dir: TempDir,
}

impl<'p> PayloadServer<'p> {
    /// Starts the server in `pod` and returns once it listens on [`PORT`].
    pub fn start(pod: &'p Pod<'p>) -> Result<Self> {
        let dir = tempdir::new("payload")?;
        let script = tempdir::write(&dir, "server.py", SERVER)?;
        let mut command = pod.command("python3")?;
        command.arg(&script).arg(PORT.to_string());
        let mut process = ChildGuard::spawn_forwarding(
            command,
            format!("payload {}/{}", pod.namespace(), pod.name()),
        )?;
        let pid = process.pid();
        let mut exited = None;
        let ready = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            if let Ok(Some(status)) = process.try_wait() {
                exited = Some(status);
                return true;
            }
            crate::nginx::listening_tcp_ports(pid).contains(&PORT)
        });
        if let Some(status) = exited {
            bail!("the payload server exited during start-up: {status}");
        }
        if !ready {
            bail!("the payload server did not listen on {PORT} within 10 s");
        }
        Ok(Self {
            pod,
            _process: process,
            _dir: dir,
        })
    }

    /// The pod address the server listens on (with [`PORT`]).
    pub fn ip(&self) -> Ipv4Addr {
        self.pod.ip()
    }
}

/// What a raw client did, every byte counted.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RawReport {
    /// Exchanges completed (a whole response read).
    pub requests: u64,
    pub by_status: BTreeMap<u16, u64>,
    /// Failures (a connection that failed stops its thread or the plan).
    pub errors: Vec<String>,
    /// Bytes written: request lines, headers and bodies.
    pub bytes_written: u64,
    /// Bytes read: response heads and bodies.
    pub bytes_read: u64,
    /// Sum over exchanges of the time from sending the request to reading the whole response.
    pub latency_sum_secs: f64,
    /// Paced requests sent more than 10 ms after they were due.
    pub late: u64,
    /// Seconds from the first due request (or the first connection) to the end.
    pub elapsed_secs: f64,
}

impl RawReport {
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    fn parse(stdout: &str) -> Result<Self> {
        let value: Value = serde_json::from_str(stdout.trim())
            .with_context(|| format!("client output is not JSON:\n{stdout}"))?;
        let number = |key: &str| {
            value[key]
                .as_u64()
                .with_context(|| format!("no `{key}` in {value}"))
        };
        let seconds = |key: &str| {
            value[key]
                .as_f64()
                .with_context(|| format!("no `{key}` in {value}"))
        };
        let mut by_status = BTreeMap::new();
        for (status, count) in value["by_status"].as_object().into_iter().flatten() {
            by_status.insert(
                status.parse().context("status")?,
                count.as_u64().context("status count")?,
            );
        }
        Ok(Self {
            requests: number("requests")?,
            by_status,
            errors: value["errors"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|e| e.as_str().unwrap_or_default().to_owned())
                .collect(),
            bytes_written: number("written")?,
            bytes_read: number("read")?,
            latency_sum_secs: seconds("latency_sum")?,
            late: number("late")?,
            elapsed_secs: seconds("elapsed")?,
        })
    }
}

/// `threads` keep-alive connections, each sending `GET <path>` every `1 / rate_per_thread`
/// seconds for `duration`, staggered evenly over one period.
#[derive(Debug, Clone)]
pub struct PacedClient {
    path: String,
    threads: u32,
    rate_per_thread: f64,
    duration: Duration,
}

impl PacedClient {
    pub fn new(
        path: impl Into<String>,
        threads: u32,
        rate_per_thread: f64,
        duration: Duration,
    ) -> Self {
        Self {
            path: path.into(),
            threads,
            rate_per_thread,
            duration,
        }
    }

    /// The rate the schedule sends at.
    pub fn rate(&self) -> f64 {
        f64::from(self.threads) * self.rate_per_thread
    }

    /// The exact bytes of each request sent to `ip:port`.
    pub fn request_len(&self, ip: Ipv4Addr, port: u16) -> u64 {
        format!("GET {} HTTP/1.1\r\nHost: {ip}:{port}\r\n\r\n", self.path).len() as u64
    }

    /// Starts the client in `pod` against `ip:port`; [`RunningClient::wait`] collects its report.
    pub fn spawn(&self, pod: &Pod<'_>, ip: Ipv4Addr, port: u16) -> Result<RunningClient> {
        let mut command = pod.command("python3")?;
        command
            .arg("-c")
            .arg(format!("{EXCHANGE}{PACED}"))
            .arg(ip.to_string())
            .arg(port.to_string())
            .arg(&self.path)
            .arg(self.threads.to_string())
            .arg(self.rate_per_thread.to_string())
            .arg(self.duration.as_secs_f64().to_string())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let label = format!("paced client {}/{}", pod.namespace(), pod.name());
        let mut process = ChildGuard::spawn(command, label.clone())?;
        let mut stdout = process
            .child_mut()
            .stdout
            .take()
            .context("client stdout was not piped")?;
        let stderr = process
            .child_mut()
            .stderr
            .take()
            .context("client stderr was not piped")?;
        process.attach_thread(forward_lines(stderr, format!("[{label} stderr]")));
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        Ok(RunningClient {
            process,
            stdout: Some(stdout),
            deadline: self.duration + Duration::from_secs(30),
        })
    }
}

/// A paced client running in a pod; dropping it stops it.
#[derive(Debug)]
pub struct RunningClient {
    process: ChildGuard,
    stdout: Option<JoinHandle<String>>,
    deadline: Duration,
}

impl RunningClient {
    /// Waits for the schedule to end (bounded) and returns what the client counted.
    pub fn wait(mut self) -> Result<RawReport> {
        let Some(status) = self.process.wait_timeout(self.deadline)? else {
            bail!("the paced client did not finish within {:?}", self.deadline);
        };
        let stdout = self
            .stdout
            .take()
            .context("output already taken")?
            .join()
            .unwrap_or_default();
        if !status.success() {
            bail!("the paced client failed ({status}):\n{stdout}");
        }
        RawReport::parse(&stdout)
    }
}

/// One planned `POST /<delay_ms>/<response_len>` with a `body_len`-byte body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PlannedRequest {
    pub body_len: usize,
    pub delay_ms: u32,
    pub response_len: usize,
}

/// Runs `plan` from `pod` against `ip:port`: each inner list on its own keep-alive connection,
/// one request at a time, the connections one after another, each closed at its end.
pub fn run_plan(
    pod: &Pod<'_>,
    ip: Ipv4Addr,
    port: u16,
    plan: &[Vec<PlannedRequest>],
    timeout: Duration,
) -> Result<RawReport> {
    let plan: Vec<Vec<[u64; 3]>> = plan
        .iter()
        .map(|connection| {
            connection
                .iter()
                .map(|r| {
                    [
                        r.body_len as u64,
                        u64::from(r.delay_ms),
                        r.response_len as u64,
                    ]
                })
                .collect()
        })
        .collect();
    let input = serde_json::to_vec(&plan)?;
    let mut command = pod.command("python3")?;
    command
        .arg("-c")
        .arg(format!("{EXCHANGE}{PLANNED}"))
        .arg(ip.to_string())
        .arg(port.to_string());
    let output = run_with_input(command, &input, timeout)?.check("planned raw client")?;
    RawReport::parse(&output.stdout)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_client_report_is_parsed() {
        let report = RawReport::parse(
            r#"{"requests": 3, "by_status": {"200": 2, "503": 1}, "errors": ["x"], "written": 120, "read": 900, "latency_sum": 0.75, "late": 0, "elapsed": 1.5}"#,
        )
        .expect("parses");
        assert_eq!(report.requests, 3);
        assert_eq!(report.status(200), 2);
        assert_eq!(report.status(503), 1);
        assert_eq!(report.errors, ["x"]);
        assert_eq!((report.bytes_written, report.bytes_read), (120, 900));
        assert_eq!(report.latency_sum_secs, 0.75);
    }
}
