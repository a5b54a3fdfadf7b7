//! The watcher against a mocked API server: each test serves the calls the reflector makes (the
//! initial list, then watches), asserts each call's path and field selector, and checks the
//! mappings that result.

use std::{future::Future, path::PathBuf, time::Duration};

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle, SendResponse};

use super::*;

const NODE: &str = "node-a";
const SELECTOR: &str = "fieldSelector=spec.nodeName%3Dnode-a";
const WEB_UID: &str = "0f3c2a9e-5b1d-4c8e-9a7f-2d6b1e4f8c03";
const NEW_UID: &str = "7d1e5c4b-3a29-4f18-8e07-6c5b4a392817";
const DB_UID: &str = "a1b2c3d4-e5f6-4a7b-8c9d-0e1f2a3b4c5d";
const WAIT: Duration = Duration::from_secs(5);

/// The mocked API server: serves and checks the reflector's calls in order.
struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
    /// The call being answered.
    pending: Option<SendResponse<Response<Body>>>,
}

impl ApiServer {
    fn start() -> (KubernetesIdentity, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(service, "default");
        (
            KubernetesIdentity::start(client, NODE),
            Self {
                handle,
                pending: None,
            },
        )
    }

    /// Takes the next call and checks it lists or watches this node's pods in all namespaces;
    /// returns its query.
    async fn next(&mut self) -> String {
        let (request, send) = tokio::time::timeout(WAIT, self.handle.next_request())
            .await
            .expect("the reflector calls the API server")
            .expect("a request");
        assert_eq!(request.method(), http::Method::GET);
        let uri = request.uri().clone();
        assert_eq!(uri.path(), "/api/v1/pods", "all namespaces, pods only");
        let query = uri.query().unwrap_or_default().to_owned();
        assert!(
            query.split('&').any(|p| p == SELECTOR),
            "only this node's pods: {query}"
        );
        self.pending = Some(send);
        query
    }

    /// Expects the initial list and answers it with `pods` at resource version `rv`.
    async fn list(&mut self, pods: &[Value], rv: &str) {
        let query = self.next().await;
        assert!(!query.contains("watch=true"), "a list first: {query}");
        self.reply(json!({
            "apiVersion": "v1",
            "kind": "PodList",
            "metadata": {"resourceVersion": rv},
            "items": pods,
        }));
    }

    /// Expects a watch from `since` and streams `events` (type, pod), then ends the stream.
    async fn watch(&mut self, since: &str, events: &[(&str, Value)]) {
        let query = self.next().await;
        assert!(query.contains("watch=true"), "a watch: {query}");
        assert!(
            query
                .split('&')
                .any(|p| p == format!("resourceVersion={since}")),
            "resumes from {since}: {query}"
        );
        let mut body = String::new();
        for (kind, pod) in events {
            body.push_str(&json!({"type": kind, "object": pod}).to_string());
            body.push('\n');
        }
        self.reply_bytes(body.into_bytes());
    }

    fn reply(&mut self, value: Value) {
        self.reply_bytes(serde_json::to_vec(&value).expect("json"));
    }

    fn reply_bytes(&mut self, bytes: Vec<u8>) {
        let send = self.pending.take().expect("a request to answer");
        send.send_response(
            Response::builder()
                .status(200)
                .body(Body::from(bytes))
                .expect("response"),
        );
    }
}

/// A pod as the API server sends it.
struct PodSpec<'a> {
    name: &'a str,
    uid: &'a str,
    rv: &'a str,
    ips: &'a [&'a str],
    owner: Option<(&'a str, &'a str)>,
    labels: Value,
    phase: &'a str,
    host_network: bool,
    created: &'a str,
    deleting: bool,
}

impl Default for PodSpec<'_> {
    fn default() -> Self {
        Self {
            name: "web-7f9c6d5b8-x2x4z",
            uid: WEB_UID,
            rv: "1",
            ips: &["10.244.1.7"],
            owner: Some(("ReplicaSet", "web-7f9c6d5b8")),
            labels: json!({"app": "web", "pod-template-hash": "7f9c6d5b8"}),
            phase: "Running",
            host_network: false,
            created: "2026-11-23T10:00:00Z",
            deleting: false,
        }
    }
}

impl PodSpec<'_> {
    fn json(&self) -> Value {
        let mut meta = json!({
            "name": self.name,
            "namespace": "shop",
            "uid": self.uid,
            "resourceVersion": self.rv,
            "creationTimestamp": self.created,
            "labels": self.labels,
            "managedFields": [{"manager": "kubelet", "operation": "Update"}],
        });
        if let Some((kind, name)) = self.owner {
            meta["ownerReferences"] = json!([{
                "apiVersion": "apps/v1", "kind": kind, "name": name,
                "uid": "11111111-2222-4333-8444-555555555555", "controller": true,
            }]);
        }
        if self.deleting {
            meta["deletionTimestamp"] = json!("2026-11-23T11:00:00Z");
        }
        let mut status = json!({"phase": self.phase});
        if let Some(first) = self.ips.first() {
            status["podIP"] = json!(first);
            status["podIPs"] = self.ips.iter().map(|ip| json!({"ip": ip})).collect();
        }
        json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": meta,
            "spec": {
                "nodeName": NODE,
                "hostNetwork": self.host_network,
                "containers": [{"name": "app", "image": "nginx"}],
            },
            "status": status,
        })
    }
}

fn cgroup(uid: &str) -> PathBuf {
    PathBuf::from(format!(
        "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{}.slice/cri-containerd-4b8f1c2d.scope",
        uid.replace('-', "_")
    ))
}

/// Waits until `cond` holds (the reflector applies events on its own task).
async fn eventually(what: &str, cond: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !cond() {
        assert!(tokio::time::Instant::now() < deadline, "never: {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Runs `test` against a fresh identity and API server.
async fn with_server<F, Fut>(test: F)
where
    F: FnOnce(KubernetesIdentity, ApiServer) -> Fut,
    Fut: Future<Output = ()>,
{
    let (identity, server) = ApiServer::start();
    tokio::time::timeout(Duration::from_secs(20), test(identity, server))
        .await
        .expect("test finished in time");
}

#[tokio::test]
async fn initial_list_maps_cgroups_and_workloads() {
    with_server(|identity, mut server| async move {
        let web = PodSpec::default();
        let db = PodSpec {
            name: "db-0",
            uid: DB_UID,
            owner: Some(("StatefulSet", "db")),
            labels: json!({"app": "db"}),
            ..PodSpec::default()
        };
        server.list(&[web.json(), db.json()], "10").await;
        identity.ready(WAIT).await.expect("ready after the list");
        assert_eq!(identity.len(), 2);

        let got = identity
            .pod_of_cgroup(&cgroup(WEB_UID))
            .expect("web by cgroup");
        assert_eq!(
            (got.namespace.as_str(), got.name.as_str()),
            ("shop", web.name)
        );
        assert_eq!(got.uid.as_deref(), Some(WEB_UID));
        assert_eq!(got.workload, Some(Workload::new("Deployment", "web")));

        let db_id = identity
            .pod_of_cgroup(&cgroup(DB_UID))
            .expect("db by cgroup");
        assert_eq!(db_id.name, "db-0");
        assert_eq!(db_id.uid.as_deref(), Some(DB_UID));
        assert_eq!(db_id.workload, Some(Workload::new("StatefulSet", "db")));
        assert_eq!(identity.pod_of_uid(DB_UID), Some(db_id));
        assert_eq!(identity.pod_of_uid(NEW_UID), None, "no such pod");
        assert_eq!(
            identity.pod_of_cgroup(Path::new("system.slice/containerd.service")),
            None
        );

        // Managed fields are stripped before the store keeps a pod.
        let stored = identity.find_uid(WEB_UID).expect("stored");
        assert!(
            stored
                .metadata
                .managed_fields
                .as_ref()
                .is_none_or(Vec::is_empty)
        );

        // The watch that follows resumes from the list's version, with the same selector.
        server.watch("10", &[]).await;
    })
    .await;
}

#[tokio::test]
async fn added_then_deleted_pods_come_and_go() {
    with_server(|identity, mut server| async move {
        server.list(&[], "1").await;
        identity.ready(WAIT).await.expect("ready with no pods");
        assert_eq!(identity.len(), 0);
        assert_eq!(
            identity.pod_of_cgroup(&cgroup(WEB_UID)),
            None,
            "not yet known"
        );

        let web = PodSpec {
            rv: "2",
            ..PodSpec::default()
        };
        server.watch("1", &[("ADDED", web.json())]).await;
        eventually("web is added", || {
            identity.pod_of_cgroup(&cgroup(WEB_UID)).is_some()
        })
        .await;
        assert_eq!(
            identity.pod_of_uid(WEB_UID).map(|p| p.name),
            Some(web.name.into())
        );

        let gone = PodSpec {
            rv: "3",
            ..PodSpec::default()
        };
        server.watch("2", &[("DELETED", gone.json())]).await;
        eventually("web is deleted", || identity.pod_of_uid(WEB_UID).is_none()).await;
        assert_eq!(
            identity.pod_of_cgroup(&cgroup(WEB_UID)),
            None,
            "never a deleted pod"
        );
        assert_eq!(identity.len(), 0);
        server.watch("3", &[]).await;
    })
    .await;
}

#[tokio::test]
async fn a_pod_created_again_under_its_name_is_a_new_pod() {
    with_server(|identity, mut server| async move {
        let old = PodSpec {
            name: "web-0",
            owner: Some(("StatefulSet", "web")),
            labels: json!({"app": "web"}),
            ..PodSpec::default()
        };
        server.list(&[old.json()], "5").await;
        identity.ready(WAIT).await.expect("ready");
        let old_id = identity.pod_of_cgroup(&cgroup(WEB_UID)).expect("old pod");
        assert_eq!(old_id.uid.as_deref(), Some(WEB_UID));

        // The old pod's own cgroup still names the old pod while it terminates.
        let terminating = PodSpec {
            rv: "6",
            deleting: true,
            ..old
        };
        server.watch("5", &[("MODIFIED", terminating.json())]).await;
        eventually("the old pod is terminating", || {
            identity
                .find_uid(WEB_UID)
                .is_some_and(|pod| pod.metadata.deletion_timestamp.is_some())
        })
        .await;
        assert_eq!(
            identity.pod_of_cgroup(&cgroup(WEB_UID)),
            Some(old_id.clone())
        );

        // The StatefulSet creates `web-0` again once the old one is gone: same name, new UID.
        let deleted = PodSpec {
            rv: "7",
            ..terminating
        };
        let new = PodSpec {
            name: "web-0",
            uid: NEW_UID,
            rv: "8",
            owner: Some(("StatefulSet", "web")),
            labels: json!({"app": "web"}),
            created: "2026-11-23T11:00:05Z",
            ..PodSpec::default()
        };
        server
            .watch("6", &[("DELETED", deleted.json()), ("ADDED", new.json())])
            .await;
        eventually("the new pod is added", || {
            identity.pod_of_cgroup(&cgroup(NEW_UID)).is_some()
        })
        .await;
        let new_id = identity.pod_of_cgroup(&cgroup(NEW_UID)).expect("new pod");
        assert_eq!(
            (new_id.namespace.as_str(), new_id.name.as_str()),
            ("shop", "web-0")
        );
        assert_eq!(new_id.uid.as_deref(), Some(NEW_UID));
        assert_eq!(new_id.workload, Some(Workload::new("StatefulSet", "web")));
        assert_ne!(new_id, old_id, "a new pod is a new identity");
        assert_eq!(
            identity.pod_of_cgroup(&cgroup(WEB_UID)),
            None,
            "the old pod's cgroups name nobody"
        );
        assert_eq!(identity.len(), 1);
        server.watch("8", &[]).await;
    })
    .await;
}

#[tokio::test]
async fn missing_fields_and_finished_pods() {
    with_server(|identity, mut server| async move {
        let pending = PodSpec {
            name: "pending",
            uid: NEW_UID,
            ips: &[],
            owner: None,
            labels: json!(null),
            phase: "Pending",
            ..PodSpec::default()
        };
        let finished = PodSpec {
            name: "migrate-abcde",
            uid: DB_UID,
            owner: Some(("Job", "migrate")),
            labels: json!({"job-name": "migrate"}),
            phase: "Succeeded",
            ..PodSpec::default()
        };
        // A ReplicaSet without a pod-template-hash label is its own workload.
        let bare_rs = PodSpec {
            name: "legacy-abc12",
            labels: json!({"app": "legacy"}),
            owner: Some(("ReplicaSet", "legacy")),
            ..PodSpec::default()
        };
        server
            .list(&[pending.json(), finished.json(), bare_rs.json()], "3")
            .await;
        identity.ready(WAIT).await.expect("ready");

        let p = identity
            .pod_of_cgroup(&cgroup(NEW_UID))
            .expect("a pending pod has a cgroup");
        assert_eq!(p.name, "pending");
        assert_eq!(p.workload, None, "no ownerReferences");
        assert_eq!(identity.pod_of_uid(NEW_UID), Some(p));

        // A finished pod keeps its identity until it is deleted: its last counts are its own.
        let job = identity
            .pod_of_cgroup(&cgroup(DB_UID))
            .expect("job pod by cgroup");
        assert_eq!(job.workload, Some(Workload::new("Job", "migrate")));

        let legacy = identity
            .pod_of_cgroup(&cgroup(WEB_UID))
            .expect("legacy by cgroup");
        assert_eq!(legacy.name, "legacy-abc12");
        assert_eq!(legacy.workload, Some(Workload::new("ReplicaSet", "legacy")));
        server.watch("3", &[]).await;
    })
    .await;
}

#[tokio::test]
async fn host_network_pods_are_found_by_cgroup() {
    with_server(|identity, mut server| async move {
        let node_exporter = PodSpec {
            name: "node-exporter-7xk2p",
            owner: Some(("DaemonSet", "node-exporter")),
            labels: json!({"app": "node-exporter"}),
            host_network: true,
            ..PodSpec::default()
        };
        server.list(&[node_exporter.json()], "4").await;
        identity.ready(WAIT).await.expect("ready");
        let by_cgroup = identity.pod_of_cgroup(&cgroup(WEB_UID)).expect("by cgroup");
        assert_eq!(
            by_cgroup.workload,
            Some(Workload::new("DaemonSet", "node-exporter"))
        );
        assert_eq!(by_cgroup.name, "node-exporter-7xk2p");
        server.watch("4", &[]).await;
    })
    .await;
}

#[tokio::test]
async fn static_pods_are_found_by_their_config_hash() {
    with_server(|identity, mut server| async move {
        let hash = "6a5a1b2c3d4e5f60718293a4b5c6d7e8";
        let mut mirror = PodSpec {
            name: "kube-apiserver-node-a",
            owner: Some(("Node", NODE)),
            labels: json!({"component": "kube-apiserver"}),
            ..PodSpec::default()
        }
        .json();
        mirror["metadata"]["annotations"] = json!({"kubernetes.io/config.hash": hash});
        server.list(&[mirror], "9").await;
        identity.ready(WAIT).await.expect("ready");
        let path = PathBuf::from(format!("kubepods/burstable/pod{hash}/4b8f1c2d"));
        let pod = identity.pod_of_cgroup(&path).expect("mirror pod");
        assert_eq!(pod.name, "kube-apiserver-node-a");
        server.watch("9", &[]).await;
    })
    .await;
}

#[tokio::test]
async fn not_ready_says_what_to_check() {
    let (identity, _server) = ApiServer::start();
    let err = identity
        .ready(Duration::from_millis(50))
        .await
        .expect_err("nobody answers");
    assert!(err.to_string().contains("list and watch pods"), "{err}");
}

#[test]
fn workloads_from_owner_references() {
    let pod = |owner: Option<(&str, &str)>, labels: Value| -> Pod {
        serde_json::from_value(
            PodSpec {
                owner,
                labels,
                ..PodSpec::default()
            }
            .json(),
        )
        .expect("pod")
    };
    let hash = json!({"pod-template-hash": "7f9c6d5b8"});
    assert_eq!(
        workload(&pod(Some(("ReplicaSet", "web-7f9c6d5b8")), hash.clone())),
        Some(Workload::new("Deployment", "web"))
    );
    assert_eq!(
        workload(&pod(Some(("ReplicaSet", "other-1234")), hash)),
        Some(Workload::new("ReplicaSet", "other-1234")),
        "the hash must be the name's suffix"
    );
    for kind in ["StatefulSet", "DaemonSet", "Job"] {
        assert_eq!(
            workload(&pod(Some((kind, "w")), json!({}))),
            Some(Workload::new(kind, "w"))
        );
    }
    assert_eq!(workload(&pod(None, json!({}))), None);
}
