//! podmeter installed as the README tells users to install it, on a real node (issue 12): the
//! image from `cargo xtask image` imported into containerd, `kubectl apply -k deploy/base` and
//! nothing else. The real kubelet runs the agent's DaemonSet pod (with the manifest's capabilities,
//! not privileged) and the metrics API's two replicas; the real kube-proxy gives them the
//! `kubernetes` Service and the aggregation layer the metrics API's Service. Then:
//!
//! - the agent API answers only the metrics API's ServiceAccount, over TLS;
//! - two backend Deployments (busybox httpd pods) behind an L7 load balancer each get 48 req/s,
//!   and the real HPA controller, with the HPAs of `deploy/examples/hpa-reference.yaml`, settles
//!   them at 2 and 5 replicas;
//! - the agent's pod is deleted under that load: the DaemonSet's replacement takes over the
//!   pinned counters, the HPAs keep 2 and 5, and no value served meanwhile is older than the
//!   metrics API's staleness bound;
//! - every backend pod's exact request total, read from the agent at the end, equals what the
//!   load balancer sent it (its access log), the agent restart included, and the kubelet's HTTP
//!   readiness probes are booked apart as the node's requests;
//! - `kubectl delete -k deploy/base` removes everything, the pinned programs included.

use std::{
    collections::BTreeMap,
    path::{Path, PathBuf},
    process::Command,
    time::{Duration, Instant, SystemTime, UNIX_EPOCH},
};

use podmeter_tests::{
    AgentProcess, ChildGuard,
    autoscale::{self, start_paced_hey_with},
    cgroup::cgroup2_mount,
    clients::parse_hey,
    control_plane::{ControlPlane, ControlPlaneOptions, wait_until},
    ingress::{Ingress, is_ready},
    metrics_api::{apiservice_available, quantity},
    node::{BusyboxImage, HTTPD_IMAGE, HTTPD_PORT, RealNode},
    run, serial,
};
use serde_json::Value;

const SYSTEM: &str = "podmeter-system";
const AGENT_SELECTOR: &str = "app.kubernetes.io%2Fname%3Dpodmeter-agent";
const METRICS_API_SELECTOR: &str = "app.kubernetes.io%2Fname%3Dpodmeter-metrics-api";
/// The DaemonSet's `--bpffs-dir`.
const BPFFS_DIR: &str = "/sys/fs/bpf/podmeter";
const APISERVICES: [&str; 3] = [
    "v1beta2.custom.metrics.k8s.io",
    "v1beta1.custom.metrics.k8s.io",
    "v1beta1.external.metrics.k8s.io",
];
/// `--horizontal-pod-autoscaler-sync-period`.
const HPA_SYNC: Duration = Duration::from_secs(5);
/// `--horizontal-pod-autoscaler-downscale-stabilization`: see hpa_e2e.rs.
const DOWNSCALE_STABILIZATION: Duration = Duration::from_secs(30);
/// Requests per second to each backend (48, not 50: see `autoscale::REFERENCE_RATE`).
const RATE: u32 = autoscale::REFERENCE_RATE;
/// (Deployment, the replicas its HPA of deploy/examples must settle at).
const BACKENDS: [(&str, u64); 2] = [("backend-1", 2), ("backend-2", 5)];
const HOLD_SYNCS: u32 = 3;
/// From the load's start to the end of the hold.
const SCALING_BOUND: Duration = Duration::from_secs(180);
/// From the agent pod's deletion to its replacement serving values again. Usually 12 to 15 s:
/// the old agent exits within a few seconds, and the DaemonSet's replacement process starts 9
/// to 11 s after it, once kubelet 1.20 has reported the old pod gone (its status sync runs every
/// 10 s). Once in the day's first eight runs the replacement was Ready only after 74 s, and the
/// kubelet log shows the new pod created only then: the bound leaves room for that, and the
/// HPAs must hold and no value may freeze meanwhile either way.
const TAKEOVER_BOUND: Duration = Duration::from_secs(120);
/// The metrics API's staleness bound (its default) plus one collection and a second of slack:
/// no value may be older than this when served.
const MAX_VALUE_AGE: Duration = Duration::from_secs(5 + 1 + 1);
/// How often the values are queried while a metrics API replica goes away.
const HA_QUERY_EVERY: Duration = Duration::from_millis(200);
/// How long the queries go on after the deleted replica's process exited and its replacement
/// is Ready.
const HA_HOLD: Duration = Duration::from_secs(3);
/// How long hey runs at most (it is stopped before).
const LOAD_DURATION: Duration = Duration::from_secs(420);
const POLL: Duration = Duration::from_millis(750);

fn deploy_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy")
}

fn backend_yaml(name: &str) -> String {
    format!(
        "\
apiVersion: apps/v1
kind: Deployment
metadata: {{name: {name}, namespace: default}}
spec:
  replicas: 1
  selector: {{matchLabels: {{app: {name}}}}}
  template:
    metadata: {{labels: {{app: {name}}}}}
    spec:
      automountServiceAccountToken: false
      enableServiceLinks: false
      # busybox httpd ignores SIGTERM as PID 1.
      terminationGracePeriodSeconds: 1
      containers:
      - name: httpd
        image: {HTTPD_IMAGE}
        imagePullPolicy: Never
        ports: [{{containerPort: {HTTPD_PORT}}}]
        # The kubelet's HTTP probes are the node's requests: booked apart, not in the rate.
        readinessProbe:
          httpGet: {{path: /, port: {HTTPD_PORT}}}
          periodSeconds: 1
"
    )
}

/// deploy/examples/hpa-reference.yaml as a 1.20 server takes it: `autoscaling/v2beta2`, whose
/// Pods metric spec is the same as `autoscaling/v2`'s.
fn example_hpas() -> String {
    let yaml = std::fs::read_to_string(deploy_dir().join("examples/hpa-reference.yaml"))
        .expect("deploy/examples/hpa-reference.yaml");
    assert!(yaml.contains("apiVersion: autoscaling/v2\n"), "{yaml}");
    yaml.replace(
        "apiVersion: autoscaling/v2\n",
        "apiVersion: autoscaling/v2beta2\n",
    )
}

fn pods(cp: &ControlPlane, namespace: &str, selector: &str) -> anyhow::Result<Vec<Value>> {
    let list = cp.get_json(&format!(
        "/api/v1/namespaces/{namespace}/pods?labelSelector={selector}"
    ))?;
    Ok(list["items"].as_array().cloned().unwrap_or_default())
}

fn name_of(object: &Value) -> &str {
    object["metadata"]["name"].as_str().unwrap_or_default()
}

/// Seconds since the epoch of an RFC 3339 UTC time (`2026-12-04T20:50:01Z`, fractions allowed).
fn rfc3339_seconds(text: &str) -> Option<f64> {
    let (date, time) = text.strip_suffix('Z')?.split_once('T')?;
    let mut ymd = date.split('-').map(|part| part.parse::<i64>().ok());
    let (year, month, day) = (ymd.next()??, ymd.next()??, ymd.next()??);
    let mut hms = time.split(':');
    let (hour, minute) = (
        hms.next()?.parse::<i64>().ok()?,
        hms.next()?.parse::<i64>().ok()?,
    );
    let second = hms.next()?.parse::<f64>().ok()?;
    // Days from the civil date (H. Hinnant's algorithm).
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (month + 9) % 12;
    let doy = (153 * mp + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some((days * 86_400 + hour * 3_600 + minute * 60) as f64 + second)
}

fn now_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("clock")
        .as_secs_f64()
}

/// The served `http_requests_per_second` of Deployment `app`'s pods: name -> (value, age).
fn served(cp: &ControlPlane, app: &str) -> anyhow::Result<BTreeMap<String, (f64, f64)>> {
    let list = cp.get_json(&format!(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/http_requests_per_second?labelSelector=app%3D{app}"
    ))?;
    anyhow::ensure!(list["kind"] == "MetricValueList", "{list}");
    let now = now_seconds();
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|item| {
            let age = item["timestamp"]
                .as_str()
                .and_then(rfc3339_seconds)
                .map_or(f64::INFINITY, |at| now - at);
            (
                item["describedObject"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                (quantity(item["value"].as_str().unwrap_or_default()), age),
            )
        })
        .collect())
}

/// HPA name -> (desired replicas, the Deployment's ready replicas).
fn scale_state(cp: &ControlPlane) -> anyhow::Result<BTreeMap<String, (u64, u64)>> {
    let hpas =
        cp.get_json("/apis/autoscaling/v2beta2/namespaces/default/horizontalpodautoscalers")?;
    let mut state = BTreeMap::new();
    for hpa in hpas["items"].as_array().into_iter().flatten() {
        let name = name_of(hpa).to_owned();
        let desired = hpa["status"]["desiredReplicas"].as_u64().unwrap_or(0);
        let deployment = cp.get_json(&format!(
            "/apis/apps/v1/namespaces/default/deployments/{name}"
        ))?;
        let ready = deployment["status"]["readyReplicas"].as_u64().unwrap_or(0);
        let replicas = deployment["spec"]["replicas"].as_u64().unwrap_or(0);
        state.insert(name, (desired, if replicas == ready { ready } else { 0 }));
    }
    Ok(state)
}

fn settled(state: &BTreeMap<String, (u64, u64)>) -> bool {
    BACKENDS
        .iter()
        .all(|(name, want)| state.get(*name) == Some(&(*want, *want)))
}

/// `bpftool cgroup show` of `cgroup`: the programs attached there.
fn attached_programs(cgroup: &Path) -> String {
    let mut command = Command::new("bpftool");
    command.arg("cgroup").arg("show").arg(cgroup);
    run(command, Duration::from_secs(10))
        .map(|out| out.stdout)
        .unwrap_or_default()
}

/// What the DaemonSet's agents pinned: removed with `podmeter agent-uninstall` if a test fails
/// before `kubectl delete -k` does it (or a killed run left it).
struct Pins;

impl Pins {
    fn remove() {
        if !Path::new(BPFFS_DIR).exists() {
            return;
        }
        let mut command = Command::new(AgentProcess::binary());
        command.args(["agent-uninstall", "--bpffs-dir", BPFFS_DIR]);
        match run(command, Duration::from_secs(30)) {
            Ok(out) => eprintln!(
                "podmeter-tests: agent-uninstall: {}{}",
                out.stdout, out.stderr
            ),
            Err(error) => eprintln!("podmeter-tests: agent-uninstall: {error:#}"),
        }
        let _ = std::fs::remove_dir(BPFFS_DIR);
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        Pins::remove();
    }
}

/// bpffs mounted at /sys/fs/bpf for the test when the machine has none there; unmounted at drop.
struct BpffsMount {
    mounted: bool,
}

impl BpffsMount {
    fn ensure() -> Self {
        let mounts = std::fs::read_to_string("/proc/self/mounts").expect("mounts");
        let present = mounts
            .lines()
            .any(|line| line.split(' ').nth(1) == Some("/sys/fs/bpf") && line.contains(" bpf "));
        if present {
            return Self { mounted: false };
        }
        let mut command = Command::new("mount");
        command.args(["-t", "bpf", "bpf", "/sys/fs/bpf"]);
        let out = run(command, Duration::from_secs(10)).expect("mount bpffs");
        assert!(
            out.success(),
            "mount -t bpf bpf /sys/fs/bpf: {}",
            out.stderr
        );
        Self { mounted: true }
    }
}

impl Drop for BpffsMount {
    fn drop(&mut self) {
        if self.mounted {
            let mut command = Command::new("umount");
            command.arg("/sys/fs/bpf");
            if let Err(error) = run(command, Duration::from_secs(10)) {
                eprintln!("podmeter-tests: umount /sys/fs/bpf: {error:#}");
            }
        }
    }
}

fn curl_status(args: &[&str]) -> String {
    let mut command = Command::new("curl");
    command
        .args([
            "-sS",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .args(args);
    let out = run(command, Duration::from_secs(10)).expect("curl");
    if out.success() {
        out.stdout
    } else {
        format!("curl failed ({})", out.stderr.trim())
    }
}

fn kubectl_table(cp: &ControlPlane, args: &[&str]) -> String {
    let out = cp.kubectl(args).expect("kubectl");
    format!("$ kubectl {}\n{}{}", args.join(" "), out.stdout, out.stderr)
}

struct Load {
    ingress: Ingress,
    hey: Option<ChildGuard>,
}

#[test]
fn kubectl_apply_k_installs_podmeter_on_a_real_node_and_its_hpas_settle_at_2_and_5() {
    let _serial = serial();
    let started = Instant::now();
    let archive = podmeter_tests::target_dir().join("image/podmeter-image.tar");
    assert!(
        archive.exists(),
        "{} is missing: `cargo xtask image` builds it (`./run test` does it first)",
        archive.display()
    );
    let cgroup2 = cgroup2_mount().expect("cgroup2 mount");
    let attached_before = attached_programs(&cgroup2);
    // A node has bpffs at /sys/fs/bpf (systemd mounts it); this machine may not.
    let _bpffs = BpffsMount::ensure();
    // A killed run may have left the DaemonSet's pins.
    Pins::remove();
    let _pins = Pins;
    let mut last = Instant::now();
    let mut phase = |what: &str| {
        println!("phase: {what}: {:.1?}", last.elapsed());
        last = Instant::now();
    };

    let mut options = ControlPlaneOptions::for_real_node();
    options.hpa_sync_period = HPA_SYNC;
    options.hpa_downscale_stabilization = Some(DOWNSCALE_STABILIZATION);
    let cp = ControlPlane::start_with(options).expect("control plane");
    let node = RealNode::start(&cp).expect("a real node");
    node.containerd()
        .import(&archive)
        .expect("import the podmeter image");
    node.import(&BusyboxImage::httpd()).expect("httpd image");
    phase("control plane, node, images");

    // 1. Install: exactly the directory the README names.
    let base = deploy_dir().join("base");
    let applied = cp
        .kubectl(&["apply", "-k", &base.to_string_lossy()])
        .expect("kubectl apply -k");
    assert!(applied.success(), "{}{}", applied.stdout, applied.stderr);
    println!("$ kubectl apply -k deploy/base\n{}", applied.stdout);
    let agent = wait_until(
        Duration::from_secs(120),
        "the agent pod to be Ready",
        || {
            let agents = pods(&cp, SYSTEM, AGENT_SELECTOR)?;
            Ok(agents
                .into_iter()
                .find(|pod| is_ready(pod) && pod["metadata"]["deletionTimestamp"].is_null()))
        },
    )
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}\n{}\ncontainer logs:\n{}",
            kubectl_table(&cp, &["-n", SYSTEM, "get", "pods", "-o", "wide"]),
            container_logs(SYSTEM)
        )
    });
    phase("agent pod Ready");
    wait_until(
        Duration::from_secs(120),
        "2 metrics API pods Ready and the APIServices Available",
        || {
            let ready = pods(&cp, SYSTEM, METRICS_API_SELECTOR)?
                .iter()
                .filter(|pod| is_ready(pod))
                .count();
            let mut available = 0;
            for name in APISERVICES {
                available += usize::from(apiservice_available(&cp, name)?.0);
            }
            Ok((ready == 2 && available == APISERVICES.len()).then_some(()))
        },
    )
    .unwrap_or_else(|error| {
        panic!(
            "{error:#}\n{}\n{}",
            kubectl_table(&cp, &["-n", SYSTEM, "get", "pods", "-o", "wide"]),
            kubectl_table(&cp, &["get", "apiservices", "-o", "yaml"])
        )
    });
    phase("metrics API Ready, APIServices Available");

    // The agent runs with the manifest's capabilities, not privileged, and was Ready only once
    // its programs were attached (and pinned).
    let container = &agent["spec"]["containers"][0];
    assert_ne!(container["securityContext"]["privileged"], true);
    let agent_pid = container_pid(&node, &cgroup2, &agent);
    let status = std::fs::read_to_string(format!("/proc/{agent_pid}/status")).expect("status");
    let effective = status
        .lines()
        .find_map(|line| line.strip_prefix("CapEff:"))
        .map(|hex| u64::from_str_radix(hex.trim(), 16).expect("CapEff"))
        .expect("CapEff");
    const CAP_NET_ADMIN: u64 = 1 << 12;
    const CAP_PERFMON: u64 = 1 << 38;
    const CAP_BPF: u64 = 1 << 39;
    assert_eq!(
        effective,
        CAP_NET_ADMIN | CAP_PERFMON | CAP_BPF,
        "the agent (pid {agent_pid}) has exactly BPF, PERFMON and NET_ADMIN: CapEff {effective:#x}"
    );
    let pinned: Vec<_> = std::fs::read_dir(BPFFS_DIR)
        .expect("the agent pinned its programs")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        pinned.iter().any(|name| name.starts_with("cgroup-")),
        "{BPFFS_DIR}: {pinned:?}"
    );
    assert_ne!(attached_programs(&cgroup2), attached_before);

    // 2. The agent API: TLS, and only the metrics API's ServiceAccount may read it.
    let agent_ip = agent["status"]["podIP"].as_str().expect("agent pod IP");
    let url = format!("https://{agent_ip}:9464/v1/pods");
    let token = |namespace: &str, account: &str, audience: &str| {
        cp.service_account_token(namespace, account, &[audience], Duration::from_secs(600))
            .expect("TokenRequest")
    };
    let reader = token(SYSTEM, "podmeter-metrics-api", "podmeter-agent");
    let bearer = |token: &str| format!("Authorization: Bearer {token}");
    let cases = [
        ("no token", curl_status(&["-k", &url])),
        (
            "the metrics API's token for another audience",
            curl_status(&[
                "-k",
                "-H",
                &bearer(&token(SYSTEM, "podmeter-metrics-api", "elsewhere")),
                &url,
            ]),
        ),
        (
            "another pod's ServiceAccount (default/default), audience podmeter-agent",
            curl_status(&[
                "-k",
                "-H",
                &bearer(&token("default", "default", "podmeter-agent")),
                &url,
            ]),
        ),
        (
            "the metrics API's ServiceAccount, audience podmeter-agent",
            curl_status(&["-k", "-H", &bearer(&reader), &url]),
        ),
        (
            "plain HTTP with the metrics API's token",
            curl_status(&[
                "-H",
                &bearer(&reader),
                &format!("http://{agent_ip}:9464/v1/pods"),
            ]),
        ),
    ];
    for (case, status) in &cases {
        println!("agent API auth: {case}: {status}");
    }
    assert_eq!(cases[0].1, "401");
    assert_eq!(cases[1].1, "401");
    assert_eq!(cases[2].1, "403");
    assert_eq!(cases[3].1, "200");
    assert!(
        !cases[4].1.starts_with('2'),
        "plain HTTP must be refused: {}",
        cases[4].1
    );
    phase("agent API auth cases");

    // 3. Two backends behind L7 load balancers, with the example HPAs, under load.
    for (name, _) in BACKENDS {
        cp.apply(&backend_yaml(name)).expect("backend Deployment");
    }
    cp.apply(&example_hpas()).expect("the example HPAs");
    let mut loads: Vec<Load> = BACKENDS
        .iter()
        .map(|(name, _)| Load {
            ingress: Ingress::start(
                name,
                HTTPD_PORT,
                node.kubepods_cgroup(&cgroup2)
                    .join(format!("ingress-{name}")),
            )
            .expect("ingress"),
            hey: None,
        })
        .collect();
    let sync = |loads: &mut Vec<Load>| -> anyhow::Result<()> {
        let backend_pods = pods(&cp, "default", "app")?;
        for load in loads.iter_mut() {
            load.ingress.sync(&backend_pods)?;
        }
        Ok(())
    };
    wait_until(Duration::from_secs(60), "one Ready pod per backend", || {
        sync(&mut loads)?;
        Ok(loads
            .iter()
            .all(|load| !load.ingress.upstreams().is_empty())
            .then_some(()))
    })
    .expect("backends Ready");
    phase("backends Ready");
    let load_started = Instant::now();
    for (load, (name, _)) in loads.iter_mut().zip(BACKENDS) {
        load.hey = Some(
            start_paced_hey_with(
                Command::new("hey"),
                &load.ingress.url(),
                (RATE, Duration::ZERO),
                LOAD_DURATION,
                format!("hey {name}"),
            )
            .expect("hey"),
        );
    }

    // 4. The real HPA controller settles them at 2 and 5, and they hold.
    let mut reached: BTreeMap<String, Duration> = BTreeMap::new();
    let mut settled_since: Option<Instant> = None;
    let hold = HPA_SYNC * HOLD_SYNCS + HPA_SYNC / 2;
    let mut history = String::new();
    while settled_since.is_none_or(|since| since.elapsed() < hold) {
        assert!(
            load_started.elapsed() < SCALING_BOUND,
            "not settled at 2 and 5 within {SCALING_BOUND:?}:\n{history}\n{}",
            kubectl_table(&cp, &["get", "hpa"])
        );
        std::thread::sleep(POLL);
        sync(&mut loads).expect("ingress sync");
        let state = scale_state(&cp).expect("HPAs");
        for (name, want) in BACKENDS {
            if state.get(name).is_some_and(|(_, ready)| *ready == want) {
                reached
                    .entry(name.to_owned())
                    .or_insert(load_started.elapsed());
            }
        }
        let line = format!("{:>5.1?} {state:?}", load_started.elapsed());
        if !history.ends_with(&format!("{state:?}\n")) {
            history.push_str(&line);
            history.push('\n');
        }
        match (settled(&state), settled_since) {
            (true, None) => settled_since = Some(Instant::now()),
            (false, Some(_)) => settled_since = None,
            _ => {}
        }
    }
    println!("scaling (since the load started, HPA -> (desired, ready)):\n{history}");
    for (name, took) in &reached {
        println!("load start to {name} at its replicas: {took:.1?}");
    }
    let hpa_table = kubectl_table(&cp, &["get", "hpa"]);
    println!("{hpa_table}");
    for (name, target) in [("backend-1", "/25"), ("backend-2", "/10")] {
        let row = hpa_table
            .lines()
            .find(|line| line.starts_with(name))
            .unwrap_or_else(|| panic!("no {name} row:\n{hpa_table}"));
        assert!(
            row.contains(target) && !row.contains("<unknown>"),
            "TARGETS shows podmeter's value: {row}"
        );
    }
    phase("HPAs settled at 2 and 5 and held");

    // 5. The agent's pod is deleted under load: its replacement takes over.
    let old_agent = name_of(&agent).to_owned();
    let deleted_at = delete_system_pod(&cp, &old_agent);
    let mut longest_gap = Duration::ZERO;
    let mut gap_since: Option<Instant> = None;
    let mut oldest = 0.0_f64;
    let mut new_agent: Option<(String, Duration)> = None;
    let mut back: Option<Duration> = None;
    loop {
        std::thread::sleep(Duration::from_secs(1));
        sync(&mut loads).expect("ingress sync");
        let state = scale_state(&cp).expect("HPAs");
        assert!(
            settled(&state),
            "the HPAs left 2 and 5 after the agent pod was deleted: {state:?}"
        );
        let mut complete = true;
        for (name, want) in BACKENDS {
            let values = served(&cp, name).unwrap_or_default();
            for (pod, (value, age)) in &values {
                oldest = oldest.max(*age);
                assert!(
                    *age <= MAX_VALUE_AGE.as_secs_f64(),
                    "{pod}'s value {value} is {age:.1} s old: frozen"
                );
            }
            complete &= values.len() as u64 == want;
        }
        match (complete, gap_since) {
            (false, None) => gap_since = Some(Instant::now()),
            (true, Some(since)) => {
                longest_gap = longest_gap.max(since.elapsed());
                gap_since = None;
            }
            _ => {}
        }
        if new_agent.is_none() {
            new_agent = pods(&cp, SYSTEM, AGENT_SELECTOR)
                .expect("agent pods")
                .iter()
                .find(|pod| name_of(pod) != old_agent && is_ready(pod))
                .map(|pod| (name_of(pod).to_owned(), deleted_at.elapsed()));
        }
        if let Some((_, ready_after)) = &new_agent
            && complete
            && back.is_none()
            && deleted_at.elapsed() > *ready_after
        {
            back = Some(deleted_at.elapsed());
        }
        // Values back, then three more syncs with the replacement serving.
        if back.is_some_and(|at| deleted_at.elapsed() > at + HPA_SYNC * HOLD_SYNCS) {
            break;
        }
        assert!(
            deleted_at.elapsed() < TAKEOVER_BOUND + HPA_SYNC * HOLD_SYNCS,
            "the replacement agent did not serve again: new agent {new_agent:?}"
        );
    }
    let (new_agent, ready_after) = new_agent.expect("a replacement agent");
    println!(
        "agent pod {old_agent} deleted: {new_agent} Ready after {ready_after:.1?}, all values \
         served again after {:.1?}; longest span without every pod's value {longest_gap:.1?}; \
         oldest value served {oldest:.1} s; HPAs stayed at 2 and 5",
        back.expect("values back")
    );
    phase("agent pod replaced under load");

    // 6. A metrics API replica is deleted under load: the other answers every query.
    metrics_api_replica_deleted_under_load(&cp, &node, &cgroup2, &mut || {
        sync(&mut loads).expect("ingress sync");
        let state = scale_state(&cp).expect("HPAs");
        assert!(
            settled(&state),
            "the HPAs left 2 and 5 after a metrics API pod was deleted: {state:?}"
        );
    });
    phase("metrics API replica replaced under load");

    // 7. Exact: each backend pod's total equals what its load balancer sent it.
    for load in &mut loads {
        let mut hey = load.hey.take().expect("hey runs");
        hey.signal(libc::SIGINT).expect("stop hey");
        hey.wait_timeout(Duration::from_secs(20))
            .expect("hey exits");
        let mut out = String::new();
        if let Some(stdout) = hey.child_mut().stdout.as_mut() {
            std::io::Read::read_to_string(stdout, &mut out).expect("hey output");
        }
        let report = parse_hey(&out).expect("hey summary");
        println!("hey: {report:?}");
    }
    std::thread::sleep(Duration::from_secs(2));
    let new_agent_pod = pods(&cp, SYSTEM, AGENT_SELECTOR)
        .expect("agent pods")
        .into_iter()
        .find(|pod| name_of(pod) == new_agent)
        .expect("the replacement agent pod");
    let new_ip = new_agent_pod["status"]["podIP"].as_str().expect("pod IP");
    let mut command = Command::new("curl");
    command.args([
        "-sS",
        "-k",
        "--max-time",
        "5",
        "-H",
        &bearer(&reader),
        &format!("https://{new_ip}:9464/v1/pods"),
    ]);
    let reply = run(command, Duration::from_secs(10)).expect("curl /v1/pods");
    let reply: podmeter_wire::PodsReply =
        serde_json::from_str(&reply.stdout).expect("a /v1/pods reply");
    let backend_pods = pods(&cp, "default", "app").expect("backend pods");
    let mut compared = 0;
    for load in &loads {
        let sent = load.ingress.sent().expect("access log");
        for (upstream, statuses) in &sent {
            let ip = upstream.rsplit_once(':').map_or("", |(ip, _)| ip);
            let Some(pod) = backend_pods.iter().find(|pod| {
                pod["status"]["podIP"] == ip && pod["metadata"]["deletionTimestamp"].is_null()
            }) else {
                // A pod the HPA removed while scaling: its numbers went with it.
                continue;
            };
            let name = name_of(pod);
            let counted = reply
                .pods
                .iter()
                .find(|p| p.namespace == "default" && p.name == name)
                .unwrap_or_else(|| panic!("the agent reports no {name}"));
            let total: u64 = statuses.values().sum();
            println!(
                "{name} ({upstream}): sent {statuses:?}, agent counted {} requests, {} 2xx, \
                 and {} probes from the node",
                counted.inbound.totals.requests,
                counted.inbound.totals.responses.success,
                counted.node_inbound.totals.requests
            );
            assert_eq!(
                counted.inbound.totals.requests, total,
                "{name}: every request sent, across the agent's restart"
            );
            assert_eq!(
                counted.inbound.totals.responses.success,
                statuses.get("200").copied().unwrap_or(0)
            );
            // The kubelet probed it every second; none of that is in the total above.
            assert!(
                counted.node_inbound.totals.requests > 0,
                "{name}: the kubelet's probes, booked as the node's: {counted:?}"
            );
            compared += 1;
        }
    }
    assert_eq!(compared, 7, "2 + 5 backend pods compared");
    phase("exact totals compared");

    println!(
        "{}",
        kubectl_table(&cp, &["get", "pods", "-A", "-o", "wide"])
    );
    println!("{}", kubectl_table(&cp, &["get", "hpa"]));

    // 8. Uninstall: one command, nothing left.
    drop(loads);
    // The namespace goes once the kubelet has reported its pods gone: usually within 15 s, but
    // kubelet 1.20's status sync (every 10 s) took longer than 30 s here once.
    let uninstalled = cp
        .kubectl_within(
            &[
                "delete",
                "-k",
                &base.to_string_lossy(),
                "--wait=true",
                "--timeout=120s",
            ],
            Duration::from_secs(130),
        )
        .expect("kubectl delete -k");
    assert!(
        uninstalled.success(),
        "{}{}",
        uninstalled.stdout,
        uninstalled.stderr
    );
    wait_until(
        Duration::from_secs(120),
        "the namespace and the pins to go",
        || {
            let namespace = cp.request("GET", &format!("/api/v1/namespaces/{SYSTEM}"), None)?;
            let pins = std::fs::read_dir(BPFFS_DIR)
                .into_iter()
                .flatten()
                .flatten()
                .count();
            Ok((namespace.status == 404 && pins == 0).then_some(()))
        },
    )
    .unwrap_or_else(|error| panic!("{error:#}\n{}", kubectl_table(&cp, &["get", "all", "-A"])));
    for name in APISERVICES {
        let response = cp
            .request(
                "GET",
                &format!("/apis/apiregistration.k8s.io/v1/apiservices/{name}"),
                None,
            )
            .expect("GET APIService");
        assert_eq!(response.status, 404, "{name} is gone");
    }
    assert_eq!(
        attached_programs(&cgroup2),
        attached_before,
        "nothing of podmeter's is attached to {} any more",
        cgroup2.display()
    );
    phase("kubectl delete -k: everything gone");
    drop(node);
    drop(cp);
    phase("node and control plane torn down");
    println!("test wall time: {:.1?}", started.elapsed());
}

/// Deletes one of the two metrics API pods and queries both backends' values through the
/// aggregation layer every [`HA_QUERY_EVERY`] until its process has exited, its replacement is
/// Ready, and [`HA_HOLD`] more has passed; `each_second` runs about once a second meanwhile.
/// Every query must answer every backend pod's value, none older than [`MAX_VALUE_AGE`]: the
/// deleted replica goes unready but serves on for its shutdown delay, and the Service sends the
/// rest to the other.
fn metrics_api_replica_deleted_under_load(
    cp: &ControlPlane,
    node: &RealNode<'_>,
    cgroup2: &Path,
    each_second: &mut dyn FnMut(),
) {
    let replicas = pods(cp, SYSTEM, METRICS_API_SELECTOR).expect("metrics API pods");
    assert_eq!(replicas.len(), 2, "two metrics API replicas");
    let victim = name_of(&replicas[0]).to_owned();
    let pid = container_pid(node, cgroup2, &replicas[0]);
    let deleted_at = delete_system_pod(cp, &victim);
    let (mut queries, mut oldest) = (0_u32, 0.0_f64);
    let mut exited: Option<Duration> = None;
    let mut replacement: Option<(String, Duration)> = None;
    let mut last_second = Instant::now();
    loop {
        for (name, want) in BACKENDS {
            let values = served(cp, name).unwrap_or_else(|error| {
                panic!(
                    "{:.1?} after {victim} was deleted (its process {}), a query for {name} \
                     failed: {error:#}",
                    deleted_at.elapsed(),
                    exited.map_or("running".to_owned(), |at| format!("gone at {at:.1?}"))
                )
            });
            queries += 1;
            assert_eq!(
                values.len() as u64,
                want,
                "{:.1?} after {victim} was deleted, {name}'s values are incomplete: {values:?}",
                deleted_at.elapsed()
            );
            for (pod, (value, age)) in &values {
                oldest = oldest.max(*age);
                assert!(
                    *age <= MAX_VALUE_AGE.as_secs_f64(),
                    "{pod}'s value {value} is {age:.1} s old"
                );
            }
        }
        if exited.is_none() && !Path::new(&format!("/proc/{pid}")).exists() {
            exited = Some(deleted_at.elapsed());
        }
        if replacement.is_none() {
            replacement = pods(cp, SYSTEM, METRICS_API_SELECTOR)
                .expect("metrics API pods")
                .iter()
                .find(|pod| {
                    let name = name_of(pod);
                    name != victim && name != name_of(&replicas[1]) && is_ready(pod)
                })
                .map(|pod| (name_of(pod).to_owned(), deleted_at.elapsed()));
        }
        if let (Some(exited), Some((_, ready))) = (exited, &replacement)
            && deleted_at.elapsed() >= exited.max(*ready) + HA_HOLD
        {
            break;
        }
        assert!(
            deleted_at.elapsed() < TAKEOVER_BOUND,
            "{victim}'s process exited at {exited:?}, replacement {replacement:?}"
        );
        if last_second.elapsed() >= Duration::from_secs(1) {
            each_second();
            last_second = Instant::now();
        }
        std::thread::sleep(HA_QUERY_EVERY);
    }
    let (replacement, ready) = replacement.expect("a replacement");
    println!(
        "metrics API pod {victim} deleted: its process exited after {:.1?}, {replacement} Ready \
         after {ready:.1?}; {queries} queries through the aggregation layer meanwhile, every one \
         complete; oldest value served {oldest:.1} s",
        exited.expect("exited")
    );
}

/// The PID of `pod`'s first container, from its cgroup in the unified tree.
fn container_pid(node: &RealNode<'_>, cgroup2: &Path, pod: &Value) -> u32 {
    let uid = pod["metadata"]["uid"].as_str().expect("uid");
    let id = pod["status"]["containerStatuses"][0]["containerID"]
        .as_str()
        .and_then(|id| id.strip_prefix("containerd://"))
        .expect("a containerd:// container ID");
    let kubepods = node.kubepods_cgroup(cgroup2);
    let dir = ["", "besteffort", "burstable"]
        .into_iter()
        .map(|qos| kubepods.join(qos).join(format!("pod{uid}")).join(id))
        .find(|dir| dir.is_dir())
        .unwrap_or_else(|| panic!("no cgroup of container {id} under {}", kubepods.display()));
    let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("cgroup.procs");
    procs
        .lines()
        .next()
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no process in {}", dir.display()))
}

/// The last lines the containers of `namespace`'s pods wrote (the kubelet's log files).
fn container_logs(namespace: &str) -> String {
    let mut out = String::new();
    for pod in std::fs::read_dir("/var/log/pods")
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = pod.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&format!("{namespace}_")) {
            continue;
        }
        for container in std::fs::read_dir(pod.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            for log in std::fs::read_dir(container.path())
                .into_iter()
                .flatten()
                .flatten()
            {
                let text = std::fs::read_to_string(log.path()).unwrap_or_default();
                let lines: Vec<&str> = text.lines().collect();
                out.push_str(&format!(
                    "{}:\n{}\n",
                    log.path().display(),
                    lines[lines.len().saturating_sub(5)..].join("\n")
                ));
            }
        }
    }
    out
}

/// Deletes pod `name` of podmeter's namespace (as `kubectl delete pod` does: graceful, the
/// kubelet stops it); returns when kube-apiserver accepted it.
fn delete_system_pod(cp: &ControlPlane, name: &str) -> Instant {
    let deleted = cp
        .request(
            "DELETE",
            &format!("/api/v1/namespaces/{SYSTEM}/pods/{name}"),
            None,
        )
        .unwrap_or_else(|error| panic!("DELETE pod {name}: {error:#}"));
    assert!(deleted.is_success(), "DELETE pod {name}: {deleted:?}");
    Instant::now()
}
