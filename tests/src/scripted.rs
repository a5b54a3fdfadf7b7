//! A small scripted HTTP/1.1 server (Python's standard library) inside a pod, for responses nginx
//! cannot give without extra modules: chosen status codes and known server-side delays.
//!
//! | path | behaviour |
//! |---|---|
//! | `/status/<code>` | answers `<code>` at once (any method; a request body is read first) |
//! | `/delay/<ms>` | answers 200 after `<ms>` milliseconds |
//! | `/mix/<fast_ms>/<slow_ms>/<every>` | 200 after `<slow_ms>` for every `<every>`-th request, else after `<fast_ms>` |
//!
//! Keep-alive is on (HTTP/1.1 with `Content-Length`), one thread per connection; each response
//! leaves in one write, so what a client measures and what the server side sees differ only by
//! the network and the client's own overhead.

use std::time::Duration;

use anyhow::{Result, bail};

use crate::{
    netns::Pod,
    process::ChildGuard,
    tempdir::{self, TempDir},
    wait::poll_until,
};

/// The server listens on this port on all of the pod's addresses.
pub const PORT: u16 = 8080;

const SCRIPT: &str = r#"
import http.server, itertools, sys, threading, time

counter = itertools.count()
lock = threading.Lock()

class Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    # One write per response (headers and body buffered, flushed after each request) and no
    # Nagle: otherwise the body waits for the client's delayed ACK, 40 ms after the headers.
    wbufsize = 65536
    disable_nagle_algorithm = True

    def log_message(self, *args):
        pass

    def answer(self):
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        parts = self.path.split("?")[0].strip("/").split("/")
        status = 200
        try:
            if parts[0] == "status":
                status = int(parts[1])
            elif parts[0] == "delay":
                time.sleep(int(parts[1]) / 1000)
            elif parts[0] == "mix":
                fast, slow, every = (int(p) for p in parts[1:4])
                with lock:
                    n = next(counter)
                time.sleep((slow if n % every == every - 1 else fast) / 1000)
            else:
                status = 404
        except (IndexError, ValueError):
            status = 400
        body = b"scripted\n"
        self.send_response(status)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = answer

class Server(http.server.ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 128

Server(("0.0.0.0", int(sys.argv[1])), Handler).serve_forever()
"#;

/// A running scripted server in a pod; dropping it stops the process.
#[derive(Debug)]
pub struct ScriptedServer<'p> {
    pod: &'p Pod<'p>,
    _process: ScriptedProcess,
}

impl<'p> ScriptedServer<'p> {
    /// Starts the server in `pod` and returns once it listens on [`PORT`].
    pub fn start(pod: &'p Pod<'p>) -> Result<Self> {
        Ok(Self {
            pod,
            _process: ScriptedProcess::start(pod)?,
        })
    }

    /// `http://<pod ip>:8080<path>`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}:{PORT}{path}", self.pod.ip())
    }
}

/// The server's process without a borrow of its pod, for owners that keep the pod beside it (the
/// autoscaling scenario's replicas); dropping it stops the process.
#[derive(Debug)]
pub(crate) struct ScriptedProcess {
    // Field order matters: the process stops before its directory is removed.
    _process: ChildGuard,
    _dir: TempDir,
}

impl ScriptedProcess {
    /// Starts the server in `pod` and returns once it listens on [`PORT`].
    pub(crate) fn start(pod: &Pod<'_>) -> Result<Self> {
        let dir = tempdir::new("scripted")?;
        let script = tempdir::write(&dir, "server.py", SCRIPT)?;
        let mut command = pod.command("python3")?;
        command.arg(&script).arg(PORT.to_string());
        let mut process = ChildGuard::spawn_forwarding(
            command,
            format!("scripted {}/{}", pod.namespace(), pod.name()),
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
            bail!("the scripted server exited during start-up: {status}");
        }
        if !ready {
            bail!("the scripted server did not listen on {PORT} within 10 s");
        }
        Ok(Self {
            _process: process,
            _dir: dir,
        })
    }
}
