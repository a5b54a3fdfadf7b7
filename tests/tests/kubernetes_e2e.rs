//! The Kubernetes side of a node, against a real kube-apiserver and kube-controller-manager
//! (v1.20.2), as an install runs it:
//! - the node agent names pods with `--identity kubernetes`: a watch of its node's pods, matched
//!   by the pod UID in kubelet cgroup paths (cgroupfs and systemd layouts);
//! - `podmeter metrics-api` finds the agent through the EndpointSlices that the real EndpointSlice
//!   controller makes for the agent Service of `deploy/base` (`discovery.k8s.io/v1beta1` on 1.20),
//!   with `--agent-service` as the Deployment runs it, and a bearer token checked by TokenReview;
//! - the HPA controller's ServiceAccount reads `http_requests_per_second` and
//!   `http_request_duration_seconds_p95` through the aggregation layer for the pods a
//!   Deployment's ReplicaSet created;
//! - a deleted pod leaves the API's answer and its ReplicaSet's replacement joins it with counts of
//!   its own.
//!
//! No kubelet runs: the test binds the ReplicaSet's pods to the node, runs each in a netns pod whose
//! cgroup is where a kubelet would put it, and marks it Running with the netns address.

use std::{
    collections::{BTreeMap, BTreeSet},
    path::PathBuf,
    process::Command,
    time::{Duration, Instant},
};

use podmeter_tests::{
    AgentProcess, Cluster, Pod,
    agent::pod_in,
    autoscale::start_paced_hey,
    control_plane::{CONTROLLERS, ControlPlane, ControlPlaneOptions, wait_until},
    metrics_api::{self, pod_values},
    run,
    scripted::ScriptedServer,
    serial,
};
use podmeter_wire::{PodReply, PodsReply, Workload};
use serde_json::json;

const SHOP: &str = "shop";
const NODE: &str = "node-1";
const AGENT_NAMESPACE: &str = "podmeter-system";
/// Short, so that rates settle early and a replacement pod's rate ramps in quickly.
const RATE_WINDOW_SECS: &str = "5";
/// Requests per second to the two pods.
const RATES: [u32; 2] = [20, 30];
/// Every fifth request takes 100 ms at the server, the others 10 ms: p95 is 100 ms.
const MIX_PATH: &str = "/mix/10/100/5";
const SLOW_SECONDS: f64 = 0.100;
/// The slow requests' time, for hey's workers: enough of them to keep the rate with every fifth
/// request taking it.
const SLOW: Duration = Duration::from_millis(100);
/// How far a served rate may be from hey's.
const TOLERANCE: f64 = 0.15;
const HEY_FOR: Duration = Duration::from_secs(120);

const RATE_PATH: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/http_requests_per_second?labelSelector=app%3Dweb";
const P95_PATH: &str = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/shop/pods/*/http_request_duration_seconds_p95?labelSelector=app%3Dweb";
/// Average requests in flight per pod, in both API versions.
const CONCURRENCY_PATHS: [&str; 2] = [
    "/apis/custom.metrics.k8s.io/v1beta1/namespaces/shop/pods/*/http_requests_concurrency?labelSelector=app%3Dweb",
    "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/http_requests_concurrency?labelSelector=app%3Dweb",
];
const BYTES_PATH: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/shop/pods/*/http_request_bytes_per_second?labelSelector=app%3Dweb";
/// The mean server-side duration of `MIX_PATH`: (4 x 10 ms + 100 ms) / 5.
const MIX_MEAN_SECONDS: f64 = 0.028;

const CLUSTER_OBJECTS: &str = "\
apiVersion: v1
kind: Node
metadata: {name: node-1, labels: {kubernetes.io/hostname: node-1}}
---
apiVersion: v1
kind: Namespace
metadata: {name: shop}
---
apiVersion: v1
kind: Namespace
metadata: {name: podmeter-system}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: shop}
spec:
  replicas: 2
  selector: {matchLabels: {app: web}}
  template:
    metadata: {labels: {app: web}}
    spec: {containers: [{name: web, image: web:1}]}
";

/// The node agent as a DaemonSet's pod on [`NODE`]: its ports name the agent API's port, which
/// the agent Service targets by name.
fn agent_pod_yaml(api_port: u16) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: podmeter-agent-{NODE}, namespace: {AGENT_NAMESPACE}, labels: {{app.kubernetes.io/name: podmeter-agent}}}}
spec:
  nodeName: {NODE}
  containers:
  - name: agent
    image: podmeter:0.1.0
    ports: [{{name: api, containerPort: {api_port}}}, {{name: metrics, containerPort: {metrics}}}]
",
        metrics = api_port + 1
    )
}

/// `deploy/base/agent-service.yaml`, in [`AGENT_NAMESPACE`] as the kustomization puts it.
fn agent_service_yaml() -> String {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/agent-service.yaml");
    let yaml = std::fs::read_to_string(&path).expect("deploy/base/agent-service.yaml");
    assert!(yaml.contains("\nmetadata:\n"), "{yaml}");
    yaml.replacen(
        "\nmetadata:\n",
        &format!("\nmetadata:\n  namespace: {AGENT_NAMESPACE}\n"),
        1,
    )
}

/// Where a kubelet puts a pod's container cgroup: the cgroupfs driver's layout for the first pod,
/// the systemd driver's for the others (container ids are 64 hex digits).
/// The UID of a pod the API server does not have.
const UNLISTED_UID: &str = "0c11e470-0000-4000-8000-000000000001";

fn kubelet_cgroup(uid: &str, systemd: bool) -> PathBuf {
    let container = uid.replace('-', "").repeat(2);
    if systemd {
        PathBuf::from(format!(
            "kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod{}.slice/cri-containerd-{container}.scope",
            uid.replace('-', "_")
        ))
    } else {
        PathBuf::from(format!("kubepods/besteffort/pod{uid}/{container}"))
    }
}

/// The ReplicaSet's pods in [`SHOP`] without a node yet, by name with their UIDs.
fn unbound_pods(cp: &ControlPlane) -> anyhow::Result<BTreeMap<String, String>> {
    let list = cp.get_json("/api/v1/namespaces/shop/pods?labelSelector=app%3Dweb")?;
    Ok(list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["spec"]["nodeName"].is_null() && p["metadata"]["deletionTimestamp"].is_null())
        .map(|p| {
            (
                p["metadata"]["name"]
                    .as_str()
                    .unwrap_or_default()
                    .to_owned(),
                p["metadata"]["uid"].as_str().unwrap_or_default().to_owned(),
            )
        })
        .collect())
}

/// Binds pod `name` of [`SHOP`] to [`NODE`], as the scheduler would.
fn bind(cp: &ControlPlane, name: &str) {
    cp.post_json(
        &format!("/api/v1/namespaces/shop/pods/{name}/binding"),
        &json!({
            "apiVersion": "v1", "kind": "Binding",
            "metadata": {"name": name},
            "target": {"apiVersion": "v1", "kind": "Node", "name": NODE},
        }),
    )
    .unwrap_or_else(|e| panic!("binding {name}: {e:#}"));
}

/// The agent's `/v1/pods`, with the bearer token its API requires.
fn agent_pods(agent: &AgentProcess, token: &str) -> PodsReply {
    let mut curl = Command::new("curl");
    // TLS with the agent's self-signed certificate (-k), as the metrics API reads it.
    curl.args(["-sfk", "-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{}/v1/pods", agent.base_url()));
    let out = run(curl, Duration::from_secs(10)).expect("curl the agent");
    serde_json::from_str(&out.stdout).unwrap_or_else(|e| panic!("{e}: {out:?}"))
}

fn entry<'a>(pods: &'a PodsReply, name: &str) -> Option<&'a PodReply> {
    pod_in(pods, SHOP, name)
}

fn within(value: f64, expected: f64) -> bool {
    (value - expected).abs() <= expected * TOLERANCE
}

/// The p95 of a pod whose every fifth request takes 100 ms: 100 ms, within a bucket's 1.1 % and a
/// few milliseconds of server overhead, in the API's whole milli-units.
fn slow_p95(value: f64) -> bool {
    (SLOW_SECONDS * 0.989 - 0.001..=SLOW_SECONDS + 0.010).contains(&value)
}

/// One replica: the Pod's name and UID, and its netns pod.
struct Replica<'c> {
    name: String,
    uid: String,
    pod: Pod<'c>,
}

/// Runs the ReplicaSet's unbound pod `name` on the node: binds it, makes its netns pod in the
/// kubelet cgroup layout, and (once `serve` started its server) marks it Running.
fn place<'c>(
    cp: &ControlPlane,
    cluster: &'c Cluster,
    name: &str,
    uid: &str,
    systemd: bool,
) -> Replica<'c> {
    bind(cp, name);
    let pod = cluster
        .pod_in_cgroup(SHOP, name, &kubelet_cgroup(uid, systemd))
        .expect("netns pod");
    Replica {
        name: name.to_owned(),
        uid: uid.to_owned(),
        pod,
    }
}

fn mark_running(cp: &ControlPlane, replica: &Replica<'_>) {
    cp.mark_pod_running(SHOP, &replica.name, &replica.pod.ip().to_string())
        .expect("mark the Pod Running");
}

#[test]
fn the_agent_names_pods_from_the_api_and_the_metrics_api_finds_it_by_endpointslices() {
    let _serial = serial();
    let cp = ControlPlane::start_with(ControlPlaneOptions {
        controller_manager_args: vec![format!("--controllers={CONTROLLERS},endpointslice")],
        ..ControlPlaneOptions::default()
    })
    .expect("control plane starts");
    println!("control plane ready in {:?}", cp.startup_time());
    cp.apply(CLUSTER_OBJECTS)
        .expect("node, namespaces, Deployment");

    // The node agent: its own ServiceAccount, pods named from the API, callers' tokens checked.
    cp.apply(metrics_api::AGENT_RBAC).expect("agent RBAC");
    let agent_identity = cp
        .service_account_credentials(
            metrics_api::NAMESPACE,
            metrics_api::AGENT_NAME,
            Duration::from_secs(3600),
        )
        .expect("agent ServiceAccount token");
    let cluster = Cluster::new().expect("cluster");
    // The agent listens on the bridge's address: the address of its pod, which other processes
    // (here the metrics API) reach.
    let agent = AgentProcess::start_listening(
        cluster.cgroup_root(),
        &format!("{}:0", cluster.gateway()),
        &[
            "--identity",
            "kubernetes",
            "--node-name",
            NODE,
            "--kubeconfig",
            agent_identity.kubeconfig().to_str().expect("utf-8 path"),
            "--api-auth",
            "token-review",
            "--rate-window-secs",
            RATE_WINDOW_SECS,
            "--pod-grace-secs",
            "5",
        ],
    )
    .expect("node agent");
    let api_port: u16 = agent
        .base_url()
        .rsplit(':')
        .next()
        .and_then(|p| p.parse().ok())
        .expect("the agent's port");

    // The agent's Service from deploy/base and its DaemonSet pod, Running at the agent's address:
    // the EndpointSlice controller lists it.
    cp.apply(&agent_service_yaml()).expect("agent Service");
    cp.apply(&agent_pod_yaml(api_port)).expect("agent pod");
    cp.mark_pod_running(
        AGENT_NAMESPACE,
        &format!("podmeter-agent-{NODE}"),
        &cluster.gateway().to_string(),
    )
    .expect("agent pod Running");
    let slices = wait_until(Duration::from_secs(30), "the agent Service's EndpointSlice", || {
        let list = cp.get_json(
            "/apis/discovery.k8s.io/v1beta1/namespaces/podmeter-system/endpointslices?labelSelector=kubernetes.io%2Fservice-name%3Dpodmeter-agent",
        )?;
        let ready = list["items"].as_array().is_some_and(|items| {
            items.iter().any(|s| {
                s["endpoints"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["conditions"]["ready"] == true))
            })
        });
        Ok(ready.then_some(list))
    })
    .expect("EndpointSlice");
    println!("EndpointSlices of podmeter-agent: {}", slices["items"]);

    // The metrics API discovers the agent as its Deployment does: by the Service's slices.
    let service = format!("{AGENT_NAMESPACE}/podmeter-agent");
    let metrics_api = metrics_api::start_registered(
        &cp,
        &[
            "--agent-service",
            &service,
            "--agent-port-name",
            "api",
            "--staleness-secs",
            "5",
        ],
    )
    .expect("metrics API");
    let token = std::fs::read_to_string(metrics_api.agent_token_file().expect("token file"))
        .expect("metrics API token");
    for name in [
        "v1beta1.custom.metrics.k8s.io",
        "v1beta2.custom.metrics.k8s.io",
    ] {
        wait_until(Duration::from_secs(60), name, || {
            Ok(metrics_api::apiservice_available(&cp, name)?
                .0
                .then_some(()))
        })
        .unwrap_or_else(|e| panic!("APIService {name} Available: {e:#}"));
    }

    // The ReplicaSet's two pods, bound to the node and run where a kubelet would run them.
    let created = wait_until(Duration::from_secs(30), "the ReplicaSet's two pods", || {
        let pods = unbound_pods(&cp)?;
        Ok((pods.len() == 2).then_some(pods))
    })
    .expect("pods");
    let mut created = created.into_iter();
    let (name, uid) = created.next().expect("first pod");
    let first = place(&cp, &cluster, &name, &uid, false);
    let (name, uid) = created.next().expect("second pod");
    let second = place(&cp, &cluster, &name, &uid, true);
    // The client is a pod the API does not list (as if it ran on another node): its requests
    // are traffic, and count for no pod. A client in a cgroup outside the kubelet's pods tree
    // would be the node's own, booked apart from the web pods' rates (`node_requests`).
    let client = cluster
        .pod_in_cgroup("load", "client", &kubelet_cgroup(UNLISTED_UID, false))
        .expect("client pod");
    let first_server = ScriptedServer::start(&first.pod).expect("server in the first pod");
    let second_server = ScriptedServer::start(&second.pod).expect("server in the second pod");
    for replica in [&first, &second] {
        mark_running(&cp, replica);
    }
    let first_load = start_paced_hey(
        &client,
        &first_server.url(MIX_PATH),
        (RATES[0], SLOW),
        HEY_FOR,
        format!("hey {}", first.name),
    )
    .expect("hey");
    let _second_load = start_paced_hey(
        &client,
        &second_server.url(MIX_PATH),
        (RATES[1], SLOW),
        HEY_FOR,
        format!("hey {}", second.name),
    )
    .expect("hey");
    let load_started = Instant::now();

    // Through the aggregation layer, as the HPA controller: each pod's rate and p95.
    let hpa = cp
        .service_account_credentials(
            "kube-system",
            "horizontal-pod-autoscaler",
            Duration::from_secs(3600),
        )
        .expect("HPA controller token");
    let expected = BTreeMap::from([
        (first.name.clone(), f64::from(RATES[0])),
        (second.name.clone(), f64::from(RATES[1])),
    ]);
    let (rates, p95) = wait_until(
        Duration::from_secs(40),
        "rates and p95 of both pods",
        || {
            let rates = pod_values(&cp, &hpa, RATE_PATH)?;
            let p95 = pod_values(&cp, &hpa, P95_PATH)?;
            println!(
                "at {:?}: rates {rates:?}, p95 {p95:?}",
                load_started.elapsed()
            );
            let ok = rates.len() == 2
                && p95.len() == 2
                && expected
                    .iter()
                    .all(|(name, &rate)| rates.get(name).is_some_and(|&r| within(r, rate)))
                && p95.values().all(|&v| slow_p95(v));
            Ok(ok.then_some((rates, p95)))
        },
    )
    .expect("the HPA's view of the Deployment's pods");
    println!(
        "HPA service account read rates {rates:?} and p95 {p95:?} {:?} after the load started",
        load_started.elapsed()
    );

    // Concurrency, in both versions, is Little's law's rate x mean duration (the scripted
    // server adds about a millisecond to each); the request bytes rate is the agent's own.
    let concurrency = wait_until(Duration::from_secs(20), "concurrency of both pods", || {
        let mut both = Vec::new();
        for path in CONCURRENCY_PATHS {
            both.push(pod_values(&cp, &hpa, path)?);
        }
        println!("concurrency (v1beta1, v1beta2): {both:?}");
        let littles_law = |values: &BTreeMap<String, f64>| {
            values.len() == 2
                && expected.iter().all(|(name, &rate)| {
                    let l = rate * MIX_MEAN_SECONDS;
                    values
                        .get(name)
                        .is_some_and(|&c| c >= 0.8 * l && c <= 1.3 * l)
                })
        };
        Ok(both.iter().all(littles_law).then_some(both))
    })
    .expect("http_requests_concurrency as Little's law says, in both API versions");
    let served_bytes = pod_values(&cp, &hpa, BYTES_PATH).expect("request bytes per second");
    let pods = agent_pods(&agent, &token);
    for name in expected.keys() {
        let own = entry(&pods, name)
            .unwrap_or_else(|| panic!("{name} in {pods:?}"))
            .inbound
            .request_bytes_per_second;
        let served = served_bytes.get(name).copied().unwrap_or_default();
        assert!(
            own > 0.0 && (served - own).abs() <= 0.2 * own,
            "{name}: served {served} B/s, the agent's own {own} B/s"
        );
    }
    println!("concurrency {concurrency:?}; request bytes per second {served_bytes:?}");

    // The agent named them from the API: namespace, name, UID and the owning Deployment. The
    // client's pod is not in the API: its requests count for no pod.
    let pods = agent_pods(&agent, &token);
    for replica in [&first, &second] {
        let e =
            entry(&pods, &replica.name).unwrap_or_else(|| panic!("{} in {pods:?}", replica.name));
        assert_eq!(e.uid.as_deref(), Some(replica.uid.as_str()), "{e:?}");
        assert_eq!(
            e.workload,
            Some(Workload::new("Deployment", "web")),
            "{e:?}"
        );
    }
    assert!(
        pods.unattributed.outbound.totals.requests > 0,
        "{:?}",
        pods.unattributed
    );
    assert!(pods.pods.iter().all(|p| p.namespace == SHOP), "{pods:?}");

    // Churn: the first pod is deleted (its load, server and netns pod go) and the ReplicaSet
    // makes a replacement, which runs under the same load.
    drop(first_load);
    drop(first_server);
    let deleted = first.name.clone();
    cp.kubectl(&[
        "delete",
        "pod",
        "-n",
        SHOP,
        &deleted,
        "--grace-period=0",
        "--force",
    ])
    .expect("kubectl delete")
    .check("kubectl delete pod")
    .expect("pod deleted");
    drop(first);
    let deleted_at = Instant::now();
    let (name, uid) = wait_until(Duration::from_secs(30), "the replacement pod", || {
        Ok(unbound_pods(&cp)?.into_iter().next())
    })
    .expect("replacement");
    let replacement = place(&cp, &cluster, &name, &uid, false);
    let replacement_server =
        ScriptedServer::start(&replacement.pod).expect("server in the replacement");
    mark_running(&cp, &replacement);
    let hey_started = Instant::now();
    let replacement_load = start_paced_hey(
        &client,
        &replacement_server.url(MIX_PATH),
        (RATES[0], SLOW),
        HEY_FOR,
        format!("hey {}", replacement.name),
    )
    .expect("hey");
    let after = wait_until(Duration::from_secs(40), "the replacement's rate", || {
        let rates = pod_values(&cp, &hpa, RATE_PATH)?;
        println!("{:?} after the delete: {rates:?}", deleted_at.elapsed());
        let names: BTreeSet<&str> = rates.keys().map(String::as_str).collect();
        let ok = names == BTreeSet::from([second.name.as_str(), replacement.name.as_str()])
            && rates
                .get(&replacement.name)
                .is_some_and(|&r| within(r, f64::from(RATES[0])));
        Ok(ok.then_some(rates))
    })
    .expect("the replacement takes the deleted pod's place");
    println!("after the delete: {after:?}");

    // The replacement's counts are its own: no more than its hey has sent since it started.
    drop(replacement_load);
    let sent_bound = f64::from(RATES[0]) * hey_started.elapsed().as_secs_f64() * (1.0 + TOLERANCE);
    let pods = agent_pods(&agent, &token);
    let e = entry(&pods, &replacement.name).expect("replacement listed");
    assert_eq!(e.uid.as_deref(), Some(replacement.uid.as_str()));
    let counted = e.inbound.totals.requests as f64;
    assert!(
        counted > 0.0 && counted <= sent_bound,
        "the replacement counted {counted}, more than its hey could send ({sent_bound:.0})"
    );
    drop(replacement_server);
    drop(replacement);
    drop(second_server);
    drop(metrics_api);
    drop(agent);
}
