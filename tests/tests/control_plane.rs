//! A real Kubernetes control plane (etcd + kube-apiserver + kube-controller-manager v1.20.2) on
//! loopback: its controllers turn a Deployment into a Pod, a Pod's status can be patched as a
//! kubelet would, and the real HPA controller asks `custom.metrics.k8s.io` for a Pods metric
//! (and reports that no such API exists yet).

use std::{path::Path, time::Duration, time::Instant};

use podmeter_tests::{
    control_plane::{ControlPlane, ControlPlaneOptions, K8S_VERSION, wait_until},
    serial,
};
use serde_json::{Value, json};

const NAMESPACE: &str = "default";
const METRIC: &str = "http_requests_per_second";

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata:
  name: web
  namespace: default
spec:
  replicas: 1
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers:
      - name: web
        image: nginx
";

fn condition<'a>(object: &'a Value, kind: &str) -> Option<&'a Value> {
    object["status"]["conditions"]
        .as_array()?
        .iter()
        .find(|condition| condition["type"] == kind)
}

#[test]
fn controllers_make_pods_and_the_hpa_queries_custom_metrics() {
    let _serial = serial();
    let test_started = Instant::now();
    let cp = ControlPlane::start().expect("control plane starts");
    println!("control plane ready in {:?}", cp.startup_time());
    let version = cp.get_json("/version").expect("GET /version");
    assert_eq!(
        version["gitVersion"],
        format!("v{K8S_VERSION}"),
        "{version}"
    );

    // The Deployment goes in with kubectl (a 1.32 client against this 1.20 server).
    cp.apply(DEPLOYMENT)
        .expect("kubectl apply of the Deployment");
    let pods_path = format!("/api/v1/namespaces/{NAMESPACE}/pods?labelSelector=app%3Dweb");
    let pod = wait_until(
        Duration::from_secs(60),
        "the ReplicaSet controller to create a pod",
        || {
            let pods = cp.get_json(&pods_path)?;
            Ok(pods["items"]
                .as_array()
                .and_then(|items| items.first())
                .cloned())
        },
    )
    .expect("a pod of Deployment web");
    let pod_name = pod["metadata"]["name"]
        .as_str()
        .expect("pod name")
        .to_owned();
    let owner = &pod["metadata"]["ownerReferences"][0];
    assert_eq!(owner["kind"], "ReplicaSet", "{pod}");
    let replica_set = cp
        .get_json(&format!(
            "/apis/apps/v1/namespaces/{NAMESPACE}/replicasets/{}",
            owner["name"].as_str().expect("owner name")
        ))
        .expect("the pod's ReplicaSet");
    assert_eq!(
        replica_set["metadata"]["ownerReferences"][0]["kind"],
        "Deployment"
    );
    assert_eq!(replica_set["metadata"]["ownerReferences"][0]["name"], "web");
    assert_eq!(pod["status"]["phase"], "Pending", "no kubelet runs: {pod}");
    println!("pod {pod_name} created after {:?}", test_started.elapsed());

    // Patch the status subresource as a kubelet would (raw API, JSON merge patch).
    let pod_path = format!("/api/v1/namespaces/{NAMESPACE}/pods/{pod_name}");
    let patched = cp
        .merge_patch(
            &format!("{pod_path}/status"),
            &json!({"status": {
                "phase": "Running",
                "podIP": "10.244.0.5",
                "conditions": [{"type": "Ready", "status": "True"}],
            }}),
        )
        .expect("PATCH pods/NAME/status");
    assert_eq!(patched["status"]["phase"], "Running", "{patched}");
    let read_back = cp.get_json(&pod_path).expect("GET the pod");
    assert_eq!(read_back["status"]["phase"], "Running", "{read_back}");
    assert_eq!(read_back["status"]["podIP"], "10.244.0.5", "{read_back}");
    assert_eq!(
        condition(&read_back, "Ready").map(|ready| ready["status"].clone()),
        Some(json!("True")),
        "{read_back}"
    );
    // The helper does the same with a full set of conditions.
    let helper = cp
        .mark_pod_running(NAMESPACE, &pod_name, "10.244.0.6")
        .expect("mark_pod_running");
    assert_eq!(helper["status"]["podIP"], "10.244.0.6", "{helper}");

    // The HPA reads scale.status.replicas and does nothing at 0.
    wait_until(
        Duration::from_secs(30),
        "Deployment web to report 1 replica",
        || {
            let deployment = cp.get_json(&format!(
                "/apis/apps/v1/namespaces/{NAMESPACE}/deployments/web"
            ))?;
            Ok((deployment["status"]["replicas"] == 1).then_some(()))
        },
    )
    .expect("deployment status");

    // autoscaling/v2 is GA only from 1.23; this server has v2beta2.
    let hpas = format!("/apis/autoscaling/v2beta2/namespaces/{NAMESPACE}/horizontalpodautoscalers");
    cp.post_json(
        &hpas,
        &json!({
            "apiVersion": "autoscaling/v2beta2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": NAMESPACE},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 1,
                "maxReplicas": 5,
                "metrics": [{"type": "Pods", "pods": {
                    "metric": {"name": METRIC},
                    "target": {"type": "AverageValue", "averageValue": "10"},
                }}],
            },
        }),
    )
    .expect("create the HPA");
    let hpa_created = Instant::now();
    let message = wait_until(
        Duration::from_secs(60),
        "the HPA controller to report that it could not get the Pods metric",
        || {
            let hpa = cp.get_json(&format!("{hpas}/web"))?;
            Ok(condition(&hpa, "ScalingActive")
                .filter(|active| {
                    active["status"] == "False" && active["reason"] == "FailedGetPodsMetric"
                })
                .map(|active| active["message"].as_str().unwrap_or_default().to_owned()))
        },
    )
    .expect("ScalingActive=False, FailedGetPodsMetric");
    println!("HPA condition after {:?}: {message}", hpa_created.elapsed());
    assert!(message.contains(METRIC), "{message}");
    assert!(
        message.contains("custom metrics API") || message.contains("custom.metrics.k8s.io"),
        "the HPA must have asked the custom metrics API: {message}"
    );
    let events_path = format!(
        "/api/v1/namespaces/{NAMESPACE}/events?fieldSelector=involvedObject.kind%3DHorizontalPodAutoscaler,involvedObject.name%3Dweb"
    );
    let event = wait_until(
        Duration::from_secs(20),
        "a FailedGetPodsMetric event",
        || {
            let events = cp.get_json(&events_path)?;
            Ok(events["items"].as_array().and_then(|items| {
                items
                    .iter()
                    .find(|event| event["reason"] == "FailedGetPodsMetric")
                    .cloned()
            }))
        },
    )
    .expect("event");
    println!("HPA event: {}", event["message"]);
    assert_eq!(
        event["source"]["component"], "horizontal-pod-autoscaler",
        "{event}"
    );

    // Identities for `kubectl get --raw`: a ServiceAccount token without any RBAC grant is
    // authenticated but forbidden; a client certificate in system:masters may read anything.
    let reader = cp
        .service_account_credentials(NAMESPACE, "reader", Duration::from_secs(3600))
        .expect("ServiceAccount token");
    let denied = cp
        .kubectl_as(
            &reader,
            &["get", "--raw", "/api/v1/namespaces/default/pods"],
        )
        .expect("kubectl as the ServiceAccount");
    assert!(!denied.success(), "{denied:?}");
    assert!(
        denied
            .stderr
            .contains("system:serviceaccount:default:reader")
            && denied.stderr.contains("forbidden"),
        "{denied:?}"
    );
    let alice = cp
        .user_credentials("alice", &["system:masters"])
        .expect("client certificate");
    let allowed = cp
        .kubectl_as(&alice, &["get", "--raw", "/apis/autoscaling/v2beta2"])
        .expect("kubectl as alice")
        .check("kubectl get --raw as alice")
        .expect("alice may read");
    assert!(
        allowed.stdout.contains("horizontalpodautoscalers"),
        "{allowed:?}"
    );
    let whoami = cp
        .request_as(&reader, "GET", "/api/v1/namespaces/default/pods", None)
        .expect("raw request as the ServiceAccount");
    assert_eq!(whoami.status, 403, "{whoami:?}");

    // Drop stops the processes and removes the directory.
    let dir = cp.dir().to_path_buf();
    let pids = cp.pids();
    let stopping = Instant::now();
    drop(cp);
    println!("control plane stopped in {:?}", stopping.elapsed());
    assert!(!dir.exists(), "{} must be removed", dir.display());
    for pid in pids {
        assert!(
            !Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} must be gone"
        );
    }
    println!("test body took {:?}", test_started.elapsed());
}

#[test]
fn an_apiserver_that_exits_is_reported_at_once_with_its_log() {
    let _serial = serial();
    let started = Instant::now();
    let error = ControlPlane::start_with(ControlPlaneOptions {
        apiserver_args: vec!["--no-such-flag".into()],
        ..ControlPlaneOptions::default()
    })
    .expect_err("an unknown flag stops kube-apiserver");
    let message = format!("{error:#}");
    assert!(
        message.contains("kube-apiserver exited") && message.contains("unknown flag"),
        "{message}"
    );
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "took {:?}: the wait must end when the process exits",
        started.elapsed()
    );
    let leftovers: Vec<_> = std::fs::read_dir(std::env::temp_dir())
        .expect("temp dir")
        .flatten()
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        .filter(|name| name.starts_with(&format!("podmeter-test-{}-", std::process::id())))
        .collect();
    assert!(leftovers.is_empty(), "left behind: {leftovers:?}");
}
