//! A real node: the real kube-scheduler places a Deployment's two pods on a real kubelet
//! (v1.20.2), which runs them on Debian's containerd and runc with a CNI bridge network; the pods
//! serve HTTP from their own addresses, sit in the cgroupfs layout podmeter's identity relies on
//! (`kubepods/.../pod<uid>/<container id>`, here in the unified tree), go away with their
//! Deployment, and the node's teardown leaves nothing on the machine (iptables included).
//!
//! The real kube-proxy makes a ClusterIP Service in front of the Deployment answer from the host
//! and from inside a pod, gives it an EndpointSlice, and lets a pod reach the apiserver the way
//! in-cluster config does: `https://$KUBERNETES_SERVICE_HOST:$KUBERNETES_SERVICE_PORT`, verified
//! against the cluster CA, authenticated by a ServiceAccount token.

use std::{
    collections::BTreeSet,
    fs,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant},
};

use podmeter_tests::{
    cgroup::cgroup2_mount,
    control_plane::{
        ControlPlane, ControlPlaneOptions, KUBERNETES_CLUSTER_IP, SERVICE_CIDR, wait_until,
    },
    node::{self, BusyboxImage, HTTPD_BODY, HTTPD_IMAGE, HTTPD_PORT, RealNode},
    run_ok, serial,
};
use serde_json::{Value, json};

const DEPLOYMENT: &str = "web";
const PODS: &str = "/api/v1/namespaces/default/pods?labelSelector=app%3Dweb";
const SERVICE_PORT: u16 = 80;
const SLICES: &str = "/apis/discovery.k8s.io/v1beta1/namespaces/default/endpointslices?\
     labelSelector=kubernetes.io%2Fservice-name%3Dweb";
/// Requests through the ClusterIP from each side: kube-proxy picks an endpoint at random, so
/// these reach both pods (and, from a pod, the pod itself) with near certainty.
const SERVICE_REQUESTS: usize = 12;

/// A ClusterIP Service in front of the Deployment.
fn service() -> String {
    format!(
        "\
apiVersion: v1
kind: Service
metadata: {{name: {DEPLOYMENT}, namespace: default}}
spec:
  type: ClusterIP
  selector: {{app: web}}
  ports: [{{name: http, port: {SERVICE_PORT}, targetPort: {HTTPD_PORT}}}]
"
    )
}

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
    /// `net.ipv4.conf.all.route_localnet`, which kube-proxy 1.20 sets.
    route_localnet: String,
    /// `iptables-save` and `ip6tables-save` lines (tables, chains, rules; no counters), and the
    /// nf_tables tables.
    iptables: BTreeSet<String>,
    /// Routes of the main table, and the policy-routing rules.
    routes: BTreeSet<String>,
}

/// `iptables-save` and `ip6tables-save` (only the tables that exist) with their comment lines
/// and counters dropped, and `nft list tables`, each line prefixed with its tool.
fn iptables_lines() -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for tool in ["iptables-save", "ip6tables-save"] {
        let output = run_ok(Command::new(tool), Duration::from_secs(30)).expect(tool);
        for line in output.stdout.lines().filter(|line| !line.starts_with('#')) {
            let line = match line.rsplit_once(" [") {
                Some((chain, _counters)) if line.starts_with(':') => chain,
                _ => line,
            };
            lines.insert(format!("{tool}: {line}"));
        }
    }
    let mut command = Command::new("nft");
    command.args(["list", "tables"]);
    let output = run_ok(command, Duration::from_secs(30)).expect("nft list tables");
    lines.extend(output.stdout.lines().map(|line| format!("nft: {line}")));
    lines
}

fn routes() -> BTreeSet<String> {
    let mut lines = BTreeSet::new();
    for object in ["route", "rule"] {
        let mut command = Command::new("ip");
        command.args(["-4", object, "show"]);
        let output = run_ok(command, Duration::from_secs(10)).expect("ip route/rule");
        lines.extend(
            output
                .stdout
                .lines()
                .map(|line| format!("{object}: {line}")),
        );
    }
    lines
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
                    "kube-proxy",
                    "kube-scheduler",
                    "kube-apiserver",
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
            route_localnet: fs::read_to_string("/proc/sys/net/ipv4/conf/all/route_localnet")
                .unwrap_or_default(),
            iptables: iptables_lines(),
            routes: routes(),
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
            ("iptables", &self.iptables, &before.iptables),
            ("route", &self.routes, &before.routes),
        ] {
            added.extend(now.difference(then).map(|item| format!("{kind} {item}")));
        }
        // Removed ones too: teardown must not take what was there.
        for (kind, now, then) in [
            ("iptables", &self.iptables, &before.iptables),
            ("route", &self.routes, &before.routes),
        ] {
            added.extend(
                then.difference(now)
                    .map(|item| format!("{kind} removed: {item}")),
            );
        }
        for (sysctl, now, then) in [
            ("net.ipv4.ip_forward", &self.ip_forward, &before.ip_forward),
            (
                "net.ipv4.conf.all.route_localnet",
                &self.route_localnet,
                &before.route_localnet,
            ),
        ] {
            if now != then {
                added.push(format!("{sysctl} {} -> {}", then.trim(), now.trim()));
            }
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
    curl_from(None, &[url]).expect("curl")
}

/// `curl ARGS` (status and body) on the host, or in the network namespace of process `pid` (a
/// pod's) with `nsenter --net`.
fn curl_from(pid: Option<&str>, args: &[&str]) -> anyhow::Result<(String, String)> {
    let mut command = match pid {
        Some(pid) => {
            let mut command = Command::new("nsenter");
            command.arg(format!("--net=/proc/{pid}/ns/net")).arg("curl");
            command
        }
        None => Command::new("curl"),
    };
    command.args(["-sS", "--max-time", "5", "-w", "\n%{http_code}"]);
    command.args(args);
    let output = run_ok(command, Duration::from_secs(10))?;
    let (body, status) = output
        .stdout
        .rsplit_once('\n')
        .ok_or_else(|| anyhow::anyhow!("no status line: {:?}", output.stdout))?;
    Ok((status.to_owned(), body.to_owned()))
}

/// The addresses of the Service's EndpointSlices whose endpoints are ready, once there are two.
fn ready_slice_addresses(cp: &ControlPlane) -> anyhow::Result<Option<BTreeSet<String>>> {
    let slices = cp.get_json(SLICES)?;
    let addresses: BTreeSet<String> = slices["items"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|slice| slice["endpoints"].as_array().cloned().unwrap_or_default())
        .filter(|endpoint| endpoint["conditions"]["ready"] == true)
        .flat_map(|endpoint| {
            endpoint["addresses"]
                .as_array()
                .cloned()
                .unwrap_or_default()
        })
        .filter_map(|address| address.as_str().map(str::to_owned))
        .collect();
    Ok((addresses.len() == 2).then_some(addresses))
}

/// `ADDRESS:PORT` of every TCP/UDP listener of `pids` (from `ss`), as `comm address`.
fn listeners_of(pids: &[u32]) -> Vec<String> {
    let mut command = Command::new("ss");
    command.args(["-Hlntup"]);
    let output = run_ok(command, Duration::from_secs(10)).expect("ss");
    output
        .stdout
        .lines()
        .filter(|line| pids.iter().any(|pid| line.contains(&format!("pid={pid},"))))
        .filter_map(|line| {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let users = fields.last()?;
            let comm = users.split('"').nth(1)?;
            Some(format!("{comm} {}", fields.get(4)?))
        })
        .collect()
}

/// Loopback, or inside 198.18.0.0/15.
fn allowed_listen_address(address: &str) -> bool {
    let host = address
        .rsplit_once(':')
        .map_or(address, |(host, _port)| host)
        .trim_start_matches('[')
        .trim_end_matches(']');
    let host = host.split('%').next().unwrap_or(host);
    match host.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V4(ip)) => {
            ip.is_loopback() || (ip.octets()[0] == 198 && (ip.octets()[1] & 0xfe) == 18)
        }
        Ok(std::net::IpAddr::V6(ip)) => ip.is_loopback(),
        Err(_) => false,
    }
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
        cp.apply(&service()).expect("apply the Service");
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
        let mut httpd_pids = Vec::new();
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
            httpd_pids.push(pid.to_owned());
        }
        assert_eq!(ips.len(), 2, "two distinct pod IPs: {ips:?}");
        phases.done("HTTP 200 from each pod IP, cgroups checked");

        // The ClusterIP Service: an EndpointSlice with both pods, and kube-proxy's rules.
        let service = cp
            .get_json("/api/v1/namespaces/default/services/web")
            .expect("the Service");
        let cluster_ip = service["spec"]["clusterIP"]
            .as_str()
            .expect("clusterIP")
            .to_owned();
        assert!(
            cluster_ip.starts_with("198.19.0.") && cluster_ip != KUBERNETES_CLUSTER_IP,
            "the ClusterIP {cluster_ip} is in {SERVICE_CIDR}"
        );
        let slice_addresses = wait_until(
            Duration::from_secs(30),
            "an EndpointSlice with both pods ready",
            || ready_slice_addresses(&cp),
        )
        .expect("the EndpointSlice controller publishes the Service's endpoints");
        assert_eq!(slice_addresses, ips, "the EndpointSlice lists the pods");
        let service_url = format!("http://{cluster_ip}:{SERVICE_PORT}/");
        wait_until(
            Duration::from_secs(30),
            "the ClusterIP to answer from the host",
            || Ok(curl_from(None, &[&service_url])?.0.eq("200").then_some(())),
        )
        .unwrap_or_else(|error| {
            panic!(
                "{error:#}\nkube-proxy log:\n{}",
                node.kube_proxy_log_tail(30)
            )
        });
        for (from, pid) in [("host", None), ("pod", Some(httpd_pids[0].as_str()))] {
            for _ in 0..SERVICE_REQUESTS {
                let (status, body) = curl_from(pid, &[&service_url])
                    .unwrap_or_else(|error| panic!("GET {service_url} from the {from}: {error:#}"));
                assert_eq!(status, "200", "GET {service_url} from the {from}");
                assert_eq!(body, HTTPD_BODY);
            }
        }
        println!(
            "Service web: ClusterIP {cluster_ip}, endpoints {slice_addresses:?}, 200 OK from the \
             host and from a pod"
        );
        phases.done("ClusterIP Service: EndpointSlice, HTTP 200 from the host and a pod");

        // In-cluster config, from inside a pod: the kubelet's KUBERNETES_SERVICE_* variables,
        // the `kubernetes` Service's ClusterIP through kube-proxy to the apiserver's
        // pod-reachable address, its certificate verified against the cluster CA (by IP and by
        // the Service's DNS name), a ServiceAccount token authenticated.
        let apiserver = cp.apiserver_address().expect("a pod-reachable apiserver");
        let endpoints = cp
            .get_json("/api/v1/namespaces/default/endpoints/kubernetes")
            .expect("the kubernetes Endpoints");
        assert_eq!(
            endpoints["subsets"][0]["addresses"][0]["ip"],
            apiserver.to_string(),
            "the kubernetes Endpoints: {endpoints}"
        );
        let environ = fs::read(format!("/proc/{}/environ", httpd_pids[0])).expect("environ");
        let environ = String::from_utf8_lossy(&environ);
        let variables: BTreeSet<&str> = environ.split('\0').collect();
        for expected in [
            format!("KUBERNETES_SERVICE_HOST={KUBERNETES_CLUSTER_IP}"),
            "KUBERNETES_SERVICE_PORT=443".to_owned(),
        ] {
            assert!(
                variables.contains(expected.as_str()),
                "the pod's environment has {expected}: {variables:?}"
            );
        }
        let token = cp
            .service_account_token("default", "default", &[], Duration::from_secs(600))
            .expect("a ServiceAccount token");
        let ca = cp.ca_cert().to_str().expect("UTF-8 path").to_owned();
        let bearer = format!("Authorization: Bearer {token}");
        let in_pod = |url: &str, extra: &[&str]| {
            let mut args = vec!["--cacert", &ca, "-H", &bearer];
            args.extend(extra);
            args.push(url);
            curl_from(Some(&httpd_pids[0]), &args)
                .unwrap_or_else(|error| panic!("GET {url} from a pod: {error:#}"))
        };
        let readyz = format!("https://{KUBERNETES_CLUSTER_IP}:443/readyz");
        assert_eq!(in_pod(&readyz, &[]), ("200".to_owned(), "ok".to_owned()));
        // The same from the host's network namespace (a hostNetwork pod's, e.g. a DaemonSet's).
        let from_host = curl_from(None, &["--cacert", &ca, "-H", &bearer, &readyz])
            .unwrap_or_else(|error| panic!("GET {readyz} from the host: {error:#}"));
        assert_eq!(from_host, ("200".to_owned(), "ok".to_owned()));
        let resolve = format!("kubernetes.default.svc:443:{KUBERNETES_CLUSTER_IP}");
        let (status, body) = in_pod(
            "https://kubernetes.default.svc/version",
            &["--resolve", &resolve],
        );
        assert_eq!(status, "200", "{body}");
        assert!(body.contains("\"gitVersion\": \"v1.20.2\""), "{body}");
        // Authenticated as the ServiceAccount (which may not read ServiceAccounts).
        let (status, body) = in_pod(
            &format!(
                "https://{KUBERNETES_CLUSTER_IP}:443/api/v1/namespaces/default/\
                 serviceaccounts/default"
            ),
            &[],
        );
        assert_eq!(status, "403", "{body}");
        assert!(
            body.contains("system:serviceaccount:default:default"),
            "the token authenticated: {body}"
        );
        phases.done("in-cluster config from a pod and the host: kubernetes ClusterIP, CA, token");

        // Nothing of the cluster listens outside loopback and 198.18.0.0/15.
        let mut pids: Vec<u32> = cp.pids().to_vec();
        pids.extend(node.pids());
        let listeners = listeners_of(&pids);
        println!("listeners: {listeners:?}");
        assert!(
            listeners
                .iter()
                .any(|listener| listener.starts_with("kube-proxy ")),
            "kube-proxy's healthz and metrics listen: {listeners:?}"
        );
        let outside: Vec<&String> = listeners
            .iter()
            .filter(|listener| {
                !allowed_listen_address(listener.split(' ').nth(1).unwrap_or_default())
            })
            .collect();
        assert!(
            outside.is_empty(),
            "listeners outside loopback and 198.18.0.0/15: {outside:?} (all: {listeners:?})"
        );

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
