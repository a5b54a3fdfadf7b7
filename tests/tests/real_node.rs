//! A real node: the real kube-scheduler places a Deployment's two pods on a real kubelet
//! (v1.20.2), which runs them on Debian's containerd and runc with a CNI bridge network; the pods
//! serve HTTP from their own addresses, sit in the cgroupfs layout podmeter's identity relies on
//! (`kubepods/.../pod<uid>/<container id>`, here in the unified tree), go away with their
//! Deployment, and the node's teardown leaves nothing on the machine.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use podmeter_tests::{
    cgroup::cgroup2_mount,
    control_plane::{ControlPlane, ControlPlaneOptions, wait_until},
    node::{self, BusyboxImage, HTTPD_BODY, HTTPD_IMAGE, HTTPD_PORT, RealNode},
    run_ok, serial,
};
use serde_json::{Value, json};

const DEPLOYMENT: &str = "web";
const PODS: &str = "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb";

fn deployment() -> String {
    format!(
        "\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {DEPLOYMENT}, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      dnsPolicy: Default
      # busybox httpd ignores SIGTERM as PID 1: do not wait 30 s for it.
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {HTTPD_IMAGE}
        imagePullPolicy: Never
        ports: [{{containerPort: {HTTPD_PORT}}}]
        readinessProbe:
          httpGet: {{path: /, port: {HTTPD_PORT}}}
          periodSeconds: 1
"
    )
}

/// What a node could leave behind on this machine.
#[derive(Debug, PartialEq, Eq)]
struct HostSnapshot {
    netns: BTreeSet<String>,
    links: BTreeSet<String>,
    /// Top-level cgroups of every hierarchy.
    cgroups: BTreeSet<String>,
    mounts: BTreeSet<String>,
    /// `pid comm` of the processes a node runs.
    processes: BTreeSet<String>,
    /// Machine-wide paths a kubelet or containerd would create with default settings.
    paths: BTreeSet<String>,
    ip_forward: String,
}

fn names_in(dir: &Path) -> BTreeSet<String> {
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect()
}

impl HostSnapshot {
    fn take() -> Self {
        let mut cgroups = BTreeSet::new();
        for hierarchy in node::cgroups::hierarchies().expect("cgroup hierarchies") {
            for name in names_in(&hierarchy) {
                if hierarchy.join(&name).is_dir() {
                    cgroups.insert(format!("{}/{name}", hierarchy.display()));
                }
            }
        }
        let mounts = fs::read_to_string("/proc/self/mountinfo")
            .expect("mountinfo")
            .lines()
            .filter_map(|line| line.split(' ').nth(4).map(str::to_owned))
            .collect();
        let processes = fs::read_dir("/proc")
            .expect("/proc")
            .flatten()
            .filter_map(|entry| {
                let pid = entry.file_name().to_str()?.parse::<u32>().ok()?;
                let comm = fs::read_to_string(format!("/proc/{pid}/comm")).ok()?;
                let comm = comm.trim();
                [
                    "containerd",
                    "containerd-shim",
                    "kubelet",
                    "kube-scheduler",
                    "busybox",
                    "runc",
                ]
                .contains(&comm)
                .then(|| format!("{pid} {comm}"))
            })
            .collect();
        let paths = [
            "/var/log/pods",
            "/var/log/containers",
            "/var/lib/kubelet",
            "/var/lib/cni",
            "/run/containerd",
            "/opt/containerd",
            "/etc/cni/net.d",
            "/usr/libexec/kubernetes",
        ]
        .into_iter()
        .filter(|path| Path::new(path).exists())
        .map(str::to_owned)
        .collect();
        Self {
            netns: names_in(Path::new("/var/run/netns")),
            links: names_in(Path::new("/sys/class/net")),
            cgroups,
            mounts,
            processes,
            paths,
            ip_forward: fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap_or_default(),
        }
    }

    /// What is in `self` and was not in `before`, kind by kind.
    fn added_since(&self, before: &Self) -> Vec<String> {
        let mut added = Vec::new();
        for (kind, now, then) in [
            ("netns", &self.netns, &before.netns),
            ("link", &self.links, &before.links),
            ("cgroup", &self.cgroups, &before.cgroups),
            ("mount", &self.mounts, &before.mounts),
            ("process", &self.processes, &before.processes),
            ("path", &self.paths, &before.paths),
        ] {
            added.extend(now.difference(then).map(|item| format!("{kind} {item}")));
        }
        if self.ip_forward != before.ip_forward {
            added.push(format!(
                "net.ipv4.ip_forward {} -> {}",
                before.ip_forward.trim(),
                self.ip_forward.trim()
            ));
        }
        added
    }
}

fn ready_pods(cp: &ControlPlane) -> anyhow::Result<Option<Vec<Value>>> {
    let pods = cp.get_json(PODS)?;
    let items = pods["items"].as_array().cloned().unwrap_or_default();
    let ready = items.iter().filter(|pod| {
        pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True")
    });
    Ok((items.len() == 2 && ready.count() == 2).then_some(items))
}

fn curl(url: &str) -> (String, String) {
    let mut command = Command::new("curl");
    command.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}", url]);
    let output = run_ok(command, Duration::from_secs(10)).expect("curl");
    let (body, status) = output.stdout.rsplit_once('\n').expect("status line");
    (status.to_owned(), body.to_owned())
}

/// The pod's cgroup directory under `kubepods` (`pod<uid>` below a QoS class, or directly for
/// Guaranteed pods), in the unified tree.
fn pod_cgroup(kubepods: &Path, uid: &str) -> Option<PathBuf> {
    let name = format!("pod{uid}");
    ["", "besteffort", "burstable"]
        .into_iter()
        .map(|qos| kubepods.join(qos).join(&name))
        .find(|dir| dir.is_dir())
}

struct Phases {
    last: Instant,
}

impl Phases {
    fn done(&mut self, what: &str) {
        println!("phase: {what}: {:.1?}", self.last.elapsed());
        self.last = Instant::now();
    }
}

#[test]
fn the_scheduler_places_a_deployment_on_a_real_kubelet_and_teardown_leaves_nothing() {
    let _serial = serial();
    let started = Instant::now();
    let cgroup2 = cgroup2_mount().expect("cgroup2 mount");
    let before = HostSnapshot::take();
    let mut phases = Phases { last: started };
    let (node_dir, node_name, node_pids) = {
        let cp = ControlPlane::start_with(ControlPlaneOptions::for_real_node())
            .expect("control plane with scheduler");
        phases.done("control plane (etcd, apiserver, controllers, scheduler)");
        let node = RealNode::start(&cp).expect("a real node");
        for (what, took) in node.phases() {
            println!("phase:   node: {what}: {took:.1?}");
        }
        phases.done("real node Ready");
        node.import(&BusyboxImage::httpd()).expect("httpd image");
        phases.done("httpd image built and imported");

        cp.apply(&deployment()).expect("apply the Deployment");
        let pods = wait_until(Duration::from_secs(120), "2 Ready pods", || ready_pods(&cp))
            .unwrap_or_else(|error| {
                panic!(
                    "{error:#}\npods: {}\nscheduler log:\n{}",
                    cp.get_json(PODS).unwrap_or_default(),
                    cp.log_tail("kube-scheduler", 20)
                )
            });
        phases.done("2 pods scheduled, running and Ready");

        let kubepods = node.kubepods_cgroup(&cgroup2);
        let mut ips = BTreeSet::new();
        let mut pod_cgroups = Vec::new();
        for pod in &pods {
            let name = pod["metadata"]["name"].as_str().expect("name");
            assert_eq!(
                pod["spec"]["nodeName"],
                node.name(),
                "the scheduler bound {name} to our node"
            );
            let ip = pod["status"]["podIP"].as_str().expect("podIP").to_owned();
            assert!(
                node.network().contains(&ip),
                "{name}'s IP {ip} is in {}",
                node.network().cidr()
            );
            let (status, body) = curl(&format!("http://{ip}:{HTTPD_PORT}/"));
            assert_eq!(status, "200", "GET / from {name} at {ip}");
            assert_eq!(body, HTTPD_BODY);

            // The cgroupfs layout, in the unified tree: kubepods/<qos>/pod<uid>/<container id>.
            let uid = pod["metadata"]["uid"].as_str().expect("uid");
            let container_id = pod["status"]["containerStatuses"][0]["containerID"]
                .as_str()
                .and_then(|id| id.strip_prefix("containerd://"))
                .expect("a containerd:// container ID")
                .to_owned();
            let pod_dir = pod_cgroup(&kubepods, uid)
                .unwrap_or_else(|| panic!("no pod{uid} cgroup under {}", kubepods.display()));
            let container_dir = pod_dir.join(&container_id);
            let procs = fs::read_to_string(container_dir.join("cgroup.procs"))
                .unwrap_or_else(|error| panic!("{}: {error}", container_dir.display()));
            let pid = procs
                .lines()
                .next()
                .expect("httpd runs in its container cgroup");
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).expect("comm");
            assert_eq!(
                comm.trim(),
                "busybox",
                "pid {pid} in {}",
                container_dir.display()
            );
            let own = fs::read_to_string(format!("/proc/{pid}/cgroup")).expect("cgroup");
            let unified = own
                .lines()
                .find_map(|line| line.strip_prefix("0::"))
                .expect("a unified-tree line");
            let relative = container_dir
                .strip_prefix(&cgroup2)
                .expect("under the mount");
            assert_eq!(Path::new(unified), Path::new("/").join(relative));
            println!("{name}: {ip}, 200 OK, cgroup {unified}");
            ips.insert(ip);
            pod_cgroups.push(pod_dir);
        }
        assert_eq!(ips.len(), 2, "two distinct pod IPs: {ips:?}");
        phases.done("HTTP 200 from each pod IP, cgroups checked");

        let deleted = cp
            .request(
                "DELETE",
                &format!("/apis/apps/v1/namespaces/default/deployments/{DEPLOYMENT}"),
                Some(&json!({"kind": "DeleteOptions", "apiVersion": "v1",
                    "propagationPolicy": "Background"})),
            )
            .expect("DELETE the Deployment");
        assert!(deleted.is_success(), "{deleted:?}");
        wait_until(Duration::from_secs(60), "the pods to be gone", || {
            let pods = cp.get_json(PODS)?;
            Ok(pods["items"]
                .as_array()
                .is_some_and(Vec::is_empty)
                .then_some(()))
        })
        .expect("deleting the Deployment deletes its pods");
        wait_until(
            Duration::from_secs(30),
            "the kubelet to remove the pod cgroups and CNI to release the addresses",
            || {
                // The kubelet (1.20, cgroupfs driver) removes the pod cgroups it made in the v1
                // hierarchies; runc removes the container cgroups. The pod directory runc made in
                // the unified tree (hybrid mode) is nobody's to remove: it stays, empty, until
                // the node goes. podmeter must not take such a directory for a live pod.
                let mut left = Vec::new();
                for dir in &pod_cgroups {
                    let relative = dir.strip_prefix(&cgroup2)?;
                    for hierarchy in node::cgroups::hierarchies()? {
                        let copy = hierarchy.join(relative);
                        if hierarchy != cgroup2 && copy.exists() {
                            left.push(copy);
                        }
                    }
                    let children = fs::read_dir(dir)
                        .into_iter()
                        .flatten()
                        .flatten()
                        .filter(|entry| entry.path().is_dir())
                        .count();
                    let procs = fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default();
                    if children > 0 || !procs.trim().is_empty() {
                        left.push(dir.clone());
                    }
                }
                let allocated = node.network().allocated()?;
                if left.is_empty() && allocated.is_empty() {
                    return Ok(Some(()));
                }
                anyhow::bail!(
                    "pod cgroups left: {left:?}; addresses still allocated: {allocated:?}"
                )
            },
        )
        .expect("pods stopped for real");
        for ip in &ips {
            let mut command = Command::new("curl");
            command.args([
                "-sS",
                "--max-time",
                "1",
                &format!("http://{ip}:{HTTPD_PORT}/"),
            ]);
            let output = podmeter_tests::run(command, Duration::from_secs(5)).expect("curl");
            assert!(
                !output.success(),
                "{ip} still answers after its pod was deleted"
            );
        }
        phases.done("Deployment deleted: pods, cgroups and addresses gone");

        let node_dir = node.dir().to_owned();
        let node_name = node.name().to_owned();
        let node_pids = node.pids();
        drop(node);
        phases.done("node torn down");
        drop(cp);
        phases.done("control plane stopped");
        (node_dir, node_name, node_pids)
    };

    let after = HostSnapshot::take();
    let added = after.added_since(&before);
    assert!(added.is_empty(), "left behind: {added:#?}");
    assert!(!node_dir.exists(), "{} is gone", node_dir.display());
    assert!(
        node::cgroups::roots_with_prefix(&node_name).is_empty(),
        "the cgroup root /{node_name} is gone from every hierarchy"
    );
    let naming = node::processes_naming(&node_dir.to_string_lossy());
    assert!(
        naming.is_empty(),
        "processes naming the node dir: {naming:?}"
    );
    for pid in node_pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "pid {pid} exited"
        );
    }
    println!("test wall time: {:.1?}", started.elapsed());
}
