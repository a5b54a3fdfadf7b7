//! A kubelet stand-in for end-to-end tests against a real [`ControlPlane`], which runs no
//! kubelet: each [`Workload`] runs the Pods the ReplicaSet controller creates for one Deployment
//! as netns pods with nginx, and puts them behind the Deployment's own ingress.
//!
//! - A Pod of the Deployment (label `app=<name>`) that has no netns pod yet gets one named
//!   exactly like it, in its namespace: cgroup `<root>/<namespace>/<pod>`, so the agent's
//!   `cgroup-dirs` identity names it as Kubernetes does. Once nginx listens there, the ingress
//!   sends to it and the Pod is marked Running and Ready with the netns address.
//! - A Pod that is gone from the API, or has a `deletionTimestamp`, leaves the ingress first; its
//!   netns pod is removed after the ingress's old worker let go of it, and a terminating Pod is
//!   then deleted for good (grace period 0), as a kubelet confirms a termination.
//!
//! The ingress is nginx as an L7 load balancer (round robin per request, keep-alive both ways)
//! whose upstream list is rewritten and reloaded on every change, as in the demo
//! ([`crate::autoscale`]). A client pod runs hey against it at a fixed total rate.

use std::{
    collections::BTreeMap,
    io::Read as _,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::Value;

use crate::{
    ChildGuard, ClientReport, Cluster, Pod, TempDir, autoscale::Server, clients::parse_hey,
    control_plane::ControlPlane, tempdir,
};

/// Namespace of the ingress and client pods (they are no Kubernetes objects).
pub const LOAD_NAMESPACE: &str = "load";
/// How long the ingress's old worker gets to finish with a leaving pod before it stops.
const DRAIN: Duration = Duration::from_millis(300);
const UPSTREAM_FILE: &str = "upstream.conf";

/// One running replica: a netns pod named like its Pod, with nginx answering `200 ok`.
struct Replica<'c> {
    // Field order: nginx stops before its pod goes.
    _server: Server,
    pod: Pod<'c>,
}

impl<'c> Replica<'c> {
    fn start(cluster: &'c Cluster, namespace: &str, name: &str) -> Result<Self> {
        let pod = cluster.pod(namespace, name)?;
        let server = Server::start(&pod, name, "location / { return 200 \"ok\\n\"; }", "")?;
        Ok(Self {
            _server: server,
            pod,
        })
    }
}

/// What one [`Workload::sync`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct SyncChanges {
    /// Pods started (and marked Running), by name.
    pub started: Vec<String>,
    /// Pods taken out of the ingress and removed, by name.
    pub stopped: Vec<String>,
    /// Pods whose status patch failed (e.g. deleted meanwhile), with the error.
    pub failed: Vec<(String, String)>,
}

impl SyncChanges {
    pub fn is_empty(&self) -> bool {
        self.started.is_empty() && self.stopped.is_empty() && self.failed.is_empty()
    }
}

/// The Pods of one Deployment, run as netns pods behind the Deployment's ingress, and the load.
pub struct Workload<'c> {
    // Field order is drop order: the load stops, then the ingress, then the replicas.
    load: Option<ChildGuard>,
    ingress: Server,
    replicas: BTreeMap<String, Replica<'c>>,
    upstream_dir: TempDir,
    ingress_pod: Pod<'c>,
    client: Pod<'c>,
    cluster: &'c Cluster,
    namespace: String,
    name: String,
}

impl<'c> Workload<'c> {
    /// The ingress and client pods of Deployment `namespace/name` (pods labelled `app=<name>`);
    /// no replica runs until [`Workload::sync`] sees a Pod.
    pub fn start(cluster: &'c Cluster, namespace: &str, name: &str) -> Result<Self> {
        let client = cluster.pod(LOAD_NAMESPACE, &format!("client-{name}"))?;
        let ingress_pod = cluster.pod(LOAD_NAMESPACE, &format!("ingress-{name}"))?;
        let upstream_dir = tempdir::new(&format!("upstream-{name}"))?;
        let upstream = write_upstream(&upstream_dir, std::iter::empty())?;
        let ingress = Server::start(
            &ingress_pod,
            &format!("ingress-{name}"),
            // One request in, one request out: round robin over the pods, keep-alive both ways.
            "location / { proxy_pass http://backends; proxy_http_version 1.1; proxy_set_header Connection \"\"; }",
            &format!(
                "upstream backends {{ include {}; keepalive 64; }}",
                upstream.display()
            ),
        )?;
        Ok(Self {
            load: None,
            ingress,
            replicas: BTreeMap::new(),
            upstream_dir,
            ingress_pod,
            client,
            cluster,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
        })
    }

    /// The Deployment's name (and the `app` label of its pods).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Names of the pods running now (in the ingress).
    pub fn running(&self) -> Vec<String> {
        self.replicas.keys().cloned().collect()
    }

    /// The ingress pod the load goes to.
    pub fn ingress_pod(&self) -> &Pod<'c> {
        &self.ingress_pod
    }

    /// Brings the running pods in line with `pods` (the namespace's Pod objects, as listed by
    /// [`list_pods`]; only those labelled `app=<name>` are ours).
    pub fn sync(&mut self, cp: &ControlPlane, pods: &[Value]) -> Result<SyncChanges> {
        let mut wanted = Vec::new();
        let mut terminating = Vec::new();
        for pod in pods {
            if pod["metadata"]["labels"]["app"].as_str() != Some(self.name.as_str()) {
                continue;
            }
            let Some(name) = pod["metadata"]["name"].as_str() else {
                continue;
            };
            let finished = matches!(
                pod["status"]["phase"].as_str(),
                Some("Succeeded" | "Failed")
            );
            if !pod["metadata"]["deletionTimestamp"].is_null() {
                terminating.push(name.to_owned());
            } else if !finished {
                wanted.push(name.to_owned());
            }
        }
        let mut changes = SyncChanges::default();
        let leaving: Vec<Replica<'c>> = self
            .replicas
            .keys()
            .filter(|name| !wanted.contains(name))
            .cloned()
            .collect::<Vec<_>>()
            .into_iter()
            .filter_map(|name| {
                let replica = self.replicas.remove(&name);
                changes.stopped.push(name);
                replica
            })
            .collect();
        for name in &wanted {
            if !self.replicas.contains_key(name) {
                let replica = Replica::start(self.cluster, &self.namespace, name)
                    .with_context(|| format!("starting pod {}/{name}", self.namespace))?;
                self.replicas.insert(name.clone(), replica);
                changes.started.push(name.clone());
            }
        }
        if !changes.started.is_empty() || !changes.stopped.is_empty() {
            write_upstream(&self.upstream_dir, self.replicas.values())?;
            self.ingress.reload()?;
        }
        for name in &changes.started {
            let ip = self.replicas[name].pod.ip().to_string();
            if let Err(error) = cp.mark_pod_running(&self.namespace, name, &ip) {
                changes.failed.push((name.clone(), format!("{error:#}")));
            }
        }
        if !leaving.is_empty() {
            // Let the old ingress worker finish with the leaving pods before they stop.
            std::thread::sleep(DRAIN);
            drop(leaving);
        }
        for name in terminating {
            let path = format!(
                "/api/v1/namespaces/{}/pods/{name}?gracePeriodSeconds=0",
                self.namespace
            );
            let response = cp.request("DELETE", &path, None)?;
            if !response.is_success() && response.status != 404 {
                changes
                    .failed
                    .push((name, format!("HTTP {} {}", response.status, response.body)));
            }
        }
        Ok(changes)
    }

    /// Starts hey in the client pod: `rate` requests per second in total (workers that divide it
    /// exactly, see `autoscale::hey_workers`), to the ingress (nginx to nginx: answered at once),
    /// for at most `duration`.
    pub fn start_load(&mut self, rate: u32, duration: Duration) -> Result<()> {
        let url = self.ingress_pod.url("/");
        let label = format!("hey {}", self.name);
        self.load = Some(crate::autoscale::start_paced_hey(
            &self.client,
            &url,
            (rate, Duration::ZERO),
            duration,
            label,
        )?);
        Ok(())
    }

    /// Stops the load (SIGINT: hey prints its summary) and returns what hey saw.
    pub fn stop_load(&mut self) -> Result<ClientReport> {
        let Some(mut load) = self.load.take() else {
            return Ok(ClientReport::default());
        };
        load.signal(libc::SIGINT)?;
        load.wait_timeout(Duration::from_secs(20))?;
        let mut out = String::new();
        if let Some(stdout) = load.child_mut().stdout.as_mut() {
            stdout.read_to_string(&mut out)?;
        }
        parse_hey(&out)
    }
}

/// The Pod objects of `namespace`.
pub fn list_pods(cp: &ControlPlane, namespace: &str) -> Result<Vec<Value>> {
    let list = cp.get_json(&format!("/api/v1/namespaces/{namespace}/pods"))?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

/// Runs [`Workload::sync`] for every workload until each runs `replicas` pods, for at most
/// `timeout`.
pub fn sync_until_running(
    cp: &ControlPlane,
    namespace: &str,
    workloads: &mut [Workload<'_>],
    replicas: usize,
    timeout: Duration,
) -> Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        let pods = list_pods(cp, namespace)?;
        for workload in workloads.iter_mut() {
            workload.sync(cp, &pods)?;
        }
        if workloads.iter().all(|w| w.replicas.len() == replicas) {
            return Ok(());
        }
        anyhow::ensure!(
            Instant::now() < deadline,
            "pods running after {timeout:?}: {:?}",
            workloads
                .iter()
                .map(|w| (w.name(), w.running()))
                .collect::<Vec<_>>()
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Writes the ingress's upstream servers; with no pod, one server marked `down` keeps the
/// configuration valid (nginx answers 502 until a pod comes).
fn write_upstream<'a, 'c: 'a>(
    dir: &TempDir,
    replicas: impl Iterator<Item = &'a Replica<'c>>,
) -> Result<std::path::PathBuf> {
    let mut servers: String = replicas
        .map(|r| format!("server {}:80;\n", r.pod.ip()))
        .collect();
    if servers.is_empty() {
        servers.push_str("server 127.0.0.1:1 down;\n");
    }
    tempdir::write(dir, UPSTREAM_FILE, servers)
}
