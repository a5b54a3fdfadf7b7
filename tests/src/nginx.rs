//! A real nginx inside a pod, with a generated configuration that offers the request shapes the
//! tests need.
//!
//! | location | behaviour |
//! |---|---|
//! | `/` | 200, small fixed body ([`ROOT_BODY`]) |
//! | `/echo` | any method; reads the request body, then 200 `ok\n`. nginx only sends `100 Continue` when it really reads the body, so this location proxies to an upstream on a **unix socket** inside the pod: `Expect: 100-continue` gets `100 Continue` before the final response, and no extra TCP traffic appears |
//! | `/chunked` | 200 with `Transfer-Encoding: chunked` for every HTTP/1.1 client (`sub_filter` drops the length of a static file of [`CHUNKED_BODY_LEN`] bytes); gzip-compressed as well when the client sends `Accept-Encoding: gzip` |
//! | `/proxy/<rest>` | proxied over TCP to a second server on `127.0.0.1:8081` in the same pod (keep-alive upstream), which answers 200 `backend\n`: each external request makes exactly one loopback request inside the pod |
//! | anything else | 404 |

use std::{fmt::Write as _, fs, path::Path, process::Stdio, time::Duration};

use anyhow::{Context, Result, bail};

use crate::{
    netns::Pod,
    process::{ChildGuard, TERM_GRACE},
    tempdir::{self, TempDir},
    wait::poll_until,
};

/// nginx listens on this port on all of the pod's addresses.
pub const PORT: u16 = 80;
/// The in-pod backend behind `/proxy/`.
pub const BACKEND_PORT: u16 = 8081;
/// Body of `GET /`.
pub const ROOT_BODY: &str = "hello from podmeter-tests\n";
/// Body of `/echo` and of the unix-socket upstream.
pub const ECHO_BODY: &str = "ok\n";
/// Body of `/proxy/...`.
pub const BACKEND_BODY: &str = "backend\n";
/// Size of the static file behind `/chunked`: several chunks and several TCP segments.
pub const CHUNKED_BODY_LEN: usize = 24 * 1024;
/// How long to wait for nginx to listen.
const START_TIMEOUT: Duration = Duration::from_secs(10);

/// A running nginx (master + 1 worker) in a pod; dropping it stops nginx and removes its files.
#[derive(Debug)]
pub struct Nginx<'p> {
    pod: &'p Pod<'p>,
    // Field order matters: the process stops before its directory is removed.
    process: ChildGuard,
    dir: TempDir,
}

impl<'p> Nginx<'p> {
    /// Starts nginx in `pod` and returns once it listens on port 80 and on its backends.
    pub fn start(pod: &'p Pod<'p>) -> Result<Self> {
        let dir = tempdir::new("nginx")?;
        tempdir::write(&dir, "chunked.txt", chunked_body())?;
        let config = config(dir.path());
        let config_path = tempdir::write(&dir, "nginx.conf", &config)?;
        let error_log = dir.path().join("error.log");

        let mut command = pod.command("nginx")?;
        // -e: the packaged default error log would be opened before our config is read.
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(&error_log)
            .stdin(Stdio::null());
        let process = ChildGuard::spawn_forwarding(
            command,
            format!("nginx {}/{}", pod.namespace(), pod.name()),
        )?;
        let mut nginx = Self { pod, process, dir };
        nginx.wait_listening().with_context(|| {
            let log = fs::read_to_string(&error_log).unwrap_or_default();
            format!(
                "nginx in pod {}/{} did not come up; error.log:\n{log}\nconfig:\n{config}",
                pod.namespace(),
                pod.name()
            )
        })?;
        Ok(nginx)
    }

    /// Polls the listening sockets of the pod's namespace via /proc rather than connecting, so
    /// readiness checks add no connections that an agent already watching the pod could see.
    fn wait_listening(&mut self) -> Result<()> {
        let master = self.process.pid();
        let unix_socket = self.backend_socket();
        let mut exited = None;
        let ready = poll_until(START_TIMEOUT, Duration::from_millis(20), || {
            if let Ok(Some(status)) = self.process.try_wait() {
                exited = Some(status);
                return true;
            }
            let listening = listening_tcp_ports(master);
            listening.contains(&PORT) && listening.contains(&BACKEND_PORT) && unix_socket.exists()
        });
        if let Some(status) = exited {
            bail!("nginx exited during start-up: {status}");
        }
        if !ready {
            bail!(
                "nginx did not listen on ports {PORT} and {BACKEND_PORT} within {START_TIMEOUT:?}"
            );
        }
        Ok(())
    }

    /// `http://<pod ip><path>`.
    pub fn url(&self, path: &str) -> String {
        self.pod.url(path)
    }

    /// PID of the nginx master process (the worker is its child, in the same cgroup).
    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    fn backend_socket(&self) -> std::path::PathBuf {
        self.dir.path().join("backend.sock")
    }

    /// Stops nginx (SIGTERM: fast shutdown of master and worker) and returns its exit status.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        self.process.terminate(TERM_GRACE)
    }
}

/// TCP ports in LISTEN state in the network namespace of process `pid`.
pub fn listening_tcp_ports(pid: u32) -> Vec<u16> {
    const TCP_LISTEN: &str = "0A";
    let Ok(table) = fs::read_to_string(format!("/proc/{pid}/net/tcp")) else {
        return Vec::new();
    };
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (local, state) = (fields.get(1)?, fields.get(3)?);
            if *state != TCP_LISTEN {
                return None;
            }
            u16::from_str_radix(local.rsplit_once(':')?.1, 16).ok()
        })
        .collect()
}

/// Readable text so a failing test's dump makes sense; lines are numbered so `sub_filter` has
/// something to match on every line.
fn chunked_body() -> String {
    let mut body = String::with_capacity(CHUNKED_BODY_LEN);
    let mut line_number = 0;
    while body.len() < CHUNKED_BODY_LEN {
        let _ = writeln!(
            body,
            "podmeter chunked body line {line_number:05} ................................"
        );
        line_number += 1;
    }
    body.truncate(CHUNKED_BODY_LEN);
    body
}

fn config(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        r#"# Generated by podmeter-tests.
daemon off;
master_process on;
worker_processes 1;
# The worker keeps root's identity so it can use files in the temp dir without chown games.
user root;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 1024;
}}

http {{
    access_log off;
    default_type text/plain;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    # The default of 1000 would close every keep-alive connection after 1000 requests, which adds
    # connection churn that load tests do not ask for.
    keepalive_requests 1000000;
    keepalive_timeout 75s;

    upstream backend_tcp {{
        server 127.0.0.1:{BACKEND_PORT};
        keepalive 16;
    }}

    upstream backend_unix {{
        server unix:{dir}/backend.sock;
        keepalive 16;
    }}

    server {{
        listen {PORT} default_server;

        location = / {{
            return 200 "{root}";
        }}

        location = /echo {{
            proxy_pass http://backend_unix;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}

        location = /chunked {{
            alias {dir}/chunked.txt;
            sub_filter_types *;
            sub_filter_once off;
            sub_filter "podmeter" "podmeter";
            gzip on;
            gzip_min_length 0;
            gzip_types *;
        }}

        location /proxy/ {{
            proxy_pass http://backend_tcp/;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
        }}
    }}

    server {{
        listen 127.0.0.1:{BACKEND_PORT};
        location / {{
            return 200 "{backend}";
        }}
    }}

    server {{
        listen unix:{dir}/backend.sock;
        location / {{
            return 200 "{echo}";
        }}
    }}
}}
"#,
        root = escape(ROOT_BODY),
        backend = escape(BACKEND_BODY),
        echo = escape(ECHO_BODY),
    )
}

/// nginx string literals understand `\n`.
fn escape(text: &str) -> String {
    text.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}
