//! An L7 load balancer in front of one Deployment's pods on a [`crate::node::RealNode`], as an
//! ingress controller runs it: nginx on the host's loopback, round robin per request, whose
//! upstream list is the Deployment's Ready pods, rewritten and reloaded whenever they change.
//! It runs in a cgroup of the kubelet's pods tree, as an ingress controller's pod would: a
//! process in a cgroup of no pod is the node's own to the agent (a kubelet, a node agent), and
//! its requests are booked apart from the pods' rates.
//!
//! nginx never retries a request on another pod (`proxy_next_upstream off`), and its access log
//! names the pod address each request went to, so a test knows exactly how many requests every
//! pod was sent ([`Ingress::sent`]).

use std::{
    collections::{BTreeMap, BTreeSet},
    net::TcpListener,
    path::PathBuf,
    process::{Command, Stdio},
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::Value;

use crate::{ChildGuard, TempDir, cgroup::CgroupGuard, process::place, tempdir, wait::poll_until};

const UPSTREAM_FILE: &str = "upstream.conf";
const ACCESS_LOG: &str = "access.log";

/// nginx balancing requests over the Ready pods labelled `app=<name>`.
#[derive(Debug)]
pub struct Ingress {
    name: String,
    port: u16,
    pod_port: u16,
    /// `ip:port` of the pods in the upstream list.
    upstreams: BTreeSet<String>,
    process: ChildGuard,
    dir: TempDir,
    /// Held for its drop only, which runs after the process's: the cgroup is empty by then.
    _cgroup: CgroupGuard,
}

impl Ingress {
    /// Starts nginx on a free loopback port, in the new cgroup `cgroup` (removed at drop),
    /// sending to `pod_port` of the pods of Deployment `name` (an empty list answers 502 until
    /// [`Ingress::sync`] finds a Ready pod).
    pub fn start(name: &str, pod_port: u16, cgroup: PathBuf) -> Result<Self> {
        let cgroup = CgroupGuard::create(cgroup)?;
        let dir = tempdir::new(&format!("ingress-{name}"))?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let d = dir.path().display();
        write_upstream(&dir, &BTreeSet::new())?;
        let config = format!(
            "daemon off; master_process on; worker_processes 1; user root;\n\
             pid {d}/nginx.pid; error_log {d}/error.log warn;\n\
             events {{ worker_connections 4096; }}\n\
             http {{\n\
             log_format upstream '$upstream_addr $upstream_status $status';\n\
             access_log {d}/{ACCESS_LOG} upstream;\n\
             client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
             uwsgi_temp_path {d}/uwsgi; scgi_temp_path {d}/scgi;\n\
             upstream pods {{ include {d}/{UPSTREAM_FILE}; }}\n\
             server {{ listen 127.0.0.1:{port};\n\
               location / {{ proxy_pass http://pods; proxy_next_upstream off;\n\
                 proxy_connect_timeout 2s; proxy_read_timeout 5s; }} }} }}\n"
        );
        let config_path = tempdir::write(&dir, "nginx.conf", &config)?;
        let mut command = Command::new("nginx");
        command
            .arg("-p")
            .arg(dir.path())
            .arg("-c")
            .arg(&config_path)
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        place(&mut command, None, Some(cgroup.path()))?;
        let mut process = ChildGuard::spawn(command, format!("ingress {name}"))?;
        let pid = process.pid();
        let up = poll_until(Duration::from_secs(10), Duration::from_millis(20), || {
            crate::nginx::listening_tcp_ports(pid).contains(&port)
        });
        if !up || process.try_wait()?.is_some() {
            let log = std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default();
            bail!("ingress {name} did not start:\n{log}\n{config}");
        }
        Ok(Self {
            name: name.to_owned(),
            port,
            pod_port,
            upstreams: BTreeSet::new(),
            process,
            dir,
            _cgroup: cgroup,
        })
    }

    /// Where clients send requests.
    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}/", self.port)
    }

    /// The pod addresses requests go to now.
    pub fn upstreams(&self) -> &BTreeSet<String> {
        &self.upstreams
    }

    /// Follows `pods` (any list of Pod objects): the Ready, not terminating pods labelled
    /// `app=<name>` become the upstream list. Returns whether it changed (nginx reloaded).
    pub fn sync(&mut self, pods: &[Value]) -> Result<bool> {
        let wanted: BTreeSet<String> = pods
            .iter()
            .filter(|pod| pod["metadata"]["labels"]["app"].as_str() == Some(self.name.as_str()))
            .filter(|pod| pod["metadata"]["deletionTimestamp"].is_null())
            .filter(|pod| is_ready(pod))
            .filter_map(|pod| pod["status"]["podIP"].as_str())
            .map(|ip| format!("{ip}:{}", self.pod_port))
            .collect();
        if wanted == self.upstreams {
            return Ok(false);
        }
        write_upstream(&self.dir, &wanted)?;
        self.process
            .signal(libc::SIGHUP)
            .with_context(|| format!("reloading ingress {}", self.name))?;
        self.upstreams = wanted;
        Ok(true)
    }

    /// Requests sent to each pod address (`ip:port`) so far, by the status the pod answered,
    /// from the access log. Requests nginx could not send anywhere are under `""`.
    pub fn sent(&self) -> Result<BTreeMap<String, BTreeMap<String, u64>>> {
        let log = std::fs::read_to_string(self.dir.path().join(ACCESS_LOG))?;
        let mut sent: BTreeMap<String, BTreeMap<String, u64>> = BTreeMap::new();
        for line in log.lines() {
            let mut fields = line.split(' ');
            let (Some(upstream), Some(upstream_status)) = (fields.next(), fields.next()) else {
                bail!("ingress {}: unexpected log line {line:?}", self.name);
            };
            let upstream = if upstream == "-" { "" } else { upstream };
            *sent
                .entry(upstream.to_owned())
                .or_default()
                .entry(upstream_status.to_owned())
                .or_default() += 1;
        }
        Ok(sent)
    }
}

/// A pod's `Ready` condition is `True`.
pub fn is_ready(pod: &Value) -> bool {
    pod["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn write_upstream(dir: &TempDir, servers: &BTreeSet<String>) -> Result<()> {
    let list = if servers.is_empty() {
        // An upstream needs a server: this one is never tried.
        "server 127.0.0.1:9 down;\n".to_owned()
    } else {
        servers
            .iter()
            .map(|server| format!("server {server};\n"))
            .collect()
    };
    tempdir::write(dir, UPSTREAM_FILE, list)?;
    Ok(())
}
