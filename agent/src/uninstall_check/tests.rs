//! The rule ([`decide`]) for every answer, the owner found from the Pod's owner references, and
//! the check against a mocked API server: found at start, asked at exit, bounded in time.

use std::time::Duration;

use http::{Request, Response};
use kube::client::Body;
use serde_json::{Value, json};
use tower_test::mock::{self, Handle};

use super::*;

const NAMESPACE: &str = "podmeter-system";
const DAEMONSET: &str = "podmeter-agent";
const POD: &str = "podmeter-agent-x7k2p";
const POD_PATH: &str = "/api/v1/namespaces/podmeter-system/pods/podmeter-agent-x7k2p";
const DAEMONSET_PATH: &str = "/apis/apps/v1/namespaces/podmeter-system/daemonsets/podmeter-agent";
const WAIT: Duration = Duration::from_secs(5);

fn daemonset_ref() -> DaemonSetRef {
    DaemonSetRef {
        namespace: NAMESPACE.to_owned(),
        name: DAEMONSET.to_owned(),
    }
}

const NAMESPACE_PATH: &str = "/api/v1/namespaces/podmeter-system";

fn namespace_json(deleting: bool) -> Value {
    let mut meta = json!({"name": NAMESPACE, "uid": "n5"});
    let mut phase = "Active";
    if deleting {
        meta["deletionTimestamp"] = json!("2026-11-23T11:00:00Z");
        phase = "Terminating";
    }
    json!({"apiVersion": "v1", "kind": "Namespace", "metadata": meta,
           "spec": {"finalizers": ["kubernetes"]}, "status": {"phase": phase}})
}

fn namespace(deleting: bool) -> Result<Namespace, kube::Error> {
    Ok(serde_json::from_value(namespace_json(deleting)).expect("a Namespace"))
}

fn pod_ref() -> PodRef {
    PodRef {
        namespace: NAMESPACE.to_owned(),
        name: POD.to_owned(),
    }
}

fn daemonset_json(deleting: bool) -> Value {
    let mut meta = json!({"name": DAEMONSET, "namespace": NAMESPACE, "uid": "d5e1"});
    if deleting {
        meta["deletionTimestamp"] = json!("2026-11-23T11:00:00Z");
        meta["finalizers"] = json!(["foregroundDeletion"]);
    }
    json!({"apiVersion": "apps/v1", "kind": "DaemonSet", "metadata": meta})
}

fn daemonset(deleting: bool) -> DaemonSet {
    serde_json::from_value(daemonset_json(deleting)).expect("a DaemonSet")
}

/// A pod with these owner references: (apiVersion, kind, name, controller).
fn pod_json(owners: &[(&str, &str, &str, bool)]) -> Value {
    let owners: Vec<Value> = owners
        .iter()
        .map(|(api_version, kind, name, controller)| {
            json!({"apiVersion": api_version, "kind": kind, "name": name, "uid": "u1",
                   "controller": controller, "blockOwnerDeletion": true})
        })
        .collect();
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": POD, "namespace": NAMESPACE, "ownerReferences": owners},
    })
}

fn pod(owners: &[(&str, &str, &str, bool)]) -> Pod {
    serde_json::from_value(pod_json(owners)).expect("a Pod")
}

fn our_pod_json() -> Value {
    pod_json(&[("apps/v1", "DaemonSet", DAEMONSET, true)])
}

/// The apiserver's Status for `code` on the DaemonSet (reason and details as it sends them).
fn status_json(code: u16) -> Value {
    let reason = match code {
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "NotFound",
        429 => "TooManyRequests",
        _ => "InternalError",
    };
    let mut status = json!({
        "kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
        "message": format!("{reason} (test)"), "reason": reason, "code": code,
    });
    // A 401 comes before the request is looked at: no details.
    if code != 401 {
        status["details"] = json!({"name": DAEMONSET, "group": "apps", "kind": "daemonsets"});
    }
    status
}

fn api_error(status: Value) -> kube::Error {
    kube::Error::Api(
        serde_json::from_value::<kube::core::Status>(status)
            .expect("a Status")
            .boxed(),
    )
}

fn is_uninstall(verdict: &Verdict) -> bool {
    matches!(verdict, Verdict::Uninstall(_))
}

fn text(verdict: &Verdict) -> &str {
    match verdict {
        Verdict::Uninstall(why) | Verdict::Keep(why) => why,
    }
}

#[test]
fn a_daemonset_that_is_there_keeps_the_pins() {
    for readable in [true, false] {
        let verdict = decide(
            &daemonset_ref(),
            &Ok(daemonset(false)),
            readable,
            &namespace(false),
        );
        assert_eq!(
            verdict,
            Verdict::Keep("DaemonSet podmeter-system/podmeter-agent is still there".into())
        );
    }
}

#[test]
fn a_daemonset_gone_or_being_deleted_is_an_uninstall() {
    for readable in [true, false] {
        let gone = decide(
            &daemonset_ref(),
            &Err(api_error(status_json(404))),
            readable,
            &namespace(false),
        );
        assert_eq!(
            gone,
            Verdict::Uninstall(
                "DaemonSet podmeter-system/podmeter-agent is gone (404 Not Found)".into()
            )
        );
        let deleting = decide(
            &daemonset_ref(),
            &Ok(daemonset(true)),
            readable,
            &namespace(false),
        );
        assert!(is_uninstall(&deleting), "{deleting:?}");
        assert!(text(&deleting).contains("being deleted"), "{deleting:?}");
    }
}

#[test]
fn credentials_refused_after_they_worked_are_an_uninstall() {
    for (code, says) in [(401, "401 Unauthorized"), (403, "403 Forbidden")] {
        let verdict = decide(
            &daemonset_ref(),
            &Err(api_error(status_json(code))),
            true,
            &namespace(false),
        );
        assert!(is_uninstall(&verdict), "{code}: {verdict:?}");
        assert!(text(&verdict).contains(says), "{verdict:?}");
    }
}

#[test]
fn credentials_that_never_worked_keep_the_pins() {
    for code in [401, 403] {
        let verdict = decide(
            &daemonset_ref(),
            &Err(api_error(status_json(code))),
            false,
            &namespace(false),
        );
        assert!(!is_uninstall(&verdict), "{code}: {verdict:?}");
        assert!(text(&verdict).contains("never was allowed"), "{verdict:?}");
    }
}

#[test]
fn other_answers_and_no_answer_keep_the_pins() {
    for code in [429, 500, 503] {
        let verdict = decide(
            &daemonset_ref(),
            &Err(api_error(status_json(code))),
            true,
            &namespace(false),
        );
        assert!(!is_uninstall(&verdict), "{code}: {verdict:?}");
        assert!(
            text(&verdict).contains(&format!("HTTP {code}")),
            "{verdict:?}"
        );
    }
    let unreachable = kube::Error::Service(Box::new(std::io::Error::new(
        std::io::ErrorKind::ConnectionRefused,
        "connection refused",
    )));
    let verdict = decide(&daemonset_ref(), &Err(unreachable), true, &namespace(false));
    assert!(!is_uninstall(&verdict), "{verdict:?}");
    assert!(
        text(&verdict)
            .contains("could not tell whether DaemonSet podmeter-system/podmeter-agent is gone"),
        "{verdict:?}"
    );
}

#[test]
fn a_404_that_is_not_the_apiservers_about_this_daemonset_keeps_the_pins() {
    // A proxy's plain-text 404 (kube makes a Status with the code and no reason).
    let proxy = kube::core::Status::failure("404 page not found", "Failed to parse error data")
        .with_code(404)
        .boxed();
    let verdict = decide(
        &daemonset_ref(),
        &Err(kube::Error::Api(proxy)),
        true,
        &namespace(false),
    );
    assert!(!is_uninstall(&verdict), "{verdict:?}");
    // Another object's NotFound.
    let mut other = status_json(404);
    other["details"]["name"] = json!("something-else");
    let verdict = decide(
        &daemonset_ref(),
        &Err(api_error(other)),
        true,
        &namespace(false),
    );
    assert!(!is_uninstall(&verdict), "{verdict:?}");
}

#[test]
fn a_namespace_being_deleted_is_an_uninstall_whatever_the_daemonset_says() {
    let deleting = namespace(true);
    let verdict = decide(&daemonset_ref(), &Ok(daemonset(false)), true, &deleting);
    assert_eq!(
        verdict,
        Verdict::Uninstall(
            "namespace podmeter-system is being deleted, and DaemonSet \
             podmeter-system/podmeter-agent with it"
                .into()
        )
    );
    let unanswered = decide(
        &daemonset_ref(),
        &Err(api_error(status_json(503))),
        true,
        &deleting,
    );
    assert!(is_uninstall(&unanswered), "{unanswered:?}");
    // What the DaemonSet says first when it says it.
    let gone = decide(
        &daemonset_ref(),
        &Err(api_error(status_json(404))),
        true,
        &deleting,
    );
    assert!(text(&gone).contains("404"), "{gone:?}");
    // A namespace the agent may not read says nothing.
    let refused = Err(api_error(status_json(403)));
    let verdict = decide(&daemonset_ref(), &Ok(daemonset(false)), true, &refused);
    assert!(!is_uninstall(&verdict), "{verdict:?}");
}

#[test]
fn the_owner_is_the_controlling_daemonset() {
    assert_eq!(
        daemonset_owner(&pod(&[("apps/v1", "DaemonSet", DAEMONSET, true)])),
        Some(daemonset_ref())
    );
    // A controller among other owners.
    assert_eq!(
        daemonset_owner(&pod(&[
            ("v1", "ConfigMap", "keeper", false),
            ("apps/v1", "DaemonSet", DAEMONSET, true),
        ])),
        Some(daemonset_ref())
    );
    for owners in [
        &[][..],
        &[("apps/v1", "ReplicaSet", "web-7f9c6d5b8", true)][..],
        &[("apps/v1", "DaemonSet", DAEMONSET, false)][..],
        &[("example.com/v1", "DaemonSet", DAEMONSET, true)][..],
    ] {
        assert_eq!(daemonset_owner(&pod(owners)), None, "{owners:?}");
    }
}

/// The mocked API server: answers each call with a JSON body and status, checking its path.
struct ApiServer {
    handle: Handle<Request<Body>, Response<Body>>,
}

impl ApiServer {
    fn client() -> (Client, Self) {
        let (service, handle) = mock::pair::<Request<Body>, Response<Body>>();
        (Client::new(service, "default"), Self { handle })
    }

    /// Answers the next call, which must be a GET of `path`.
    async fn answer(&mut self, path: &str, code: u16, body: Value) {
        self.answer_each(&[(path, code, body)]).await;
    }

    /// Answers as many calls as `answers`, in any order, each by its path: (path, code, body).
    async fn answer_each(&mut self, answers: &[(&str, u16, Value)]) {
        let mut left: Vec<&(&str, u16, Value)> = answers.iter().collect();
        while !left.is_empty() {
            let (request, send) = tokio::time::timeout(WAIT, self.handle.next_request())
                .await
                .expect("the check calls the API server")
                .expect("a request");
            assert_eq!(request.method(), http::Method::GET);
            let path = request.uri().path();
            let at = left
                .iter()
                .position(|(p, _, _)| *p == path)
                .unwrap_or_else(|| panic!("unexpected call {path}; expecting {left:?}"));
            let (_, code, body) = left.remove(at);
            send.send_response(
                Response::builder()
                    .status(*code)
                    .body(Body::from(serde_json::to_vec(body).expect("json")))
                    .expect("response"),
            );
        }
    }

    /// Answers the exit's two calls: the DaemonSet with `code` and `body`, its namespace with
    /// `namespace`.
    async fn answer_exit(&mut self, code: u16, body: Value, namespace: Value) {
        self.answer_each(&[
            (DAEMONSET_PATH, code, body),
            (NAMESPACE_PATH, 200, namespace),
        ])
        .await;
    }
}

/// Waits until the check found the owner at start.
async fn armed(check: &UninstallCheck) -> Owner {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        if let Some(owner) = check.owner.lock().expect("lock").clone() {
            return owner;
        }
        assert!(tokio::time::Instant::now() < deadline, "never armed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A check that found nothing at start (as when the agent is stopped right after it started).
fn unarmed(client: Client) -> UninstallCheck {
    UninstallCheck {
        client,
        pod: pod_ref(),
        owner: Arc::new(Mutex::new(None)),
        arming: tokio::spawn(async {}),
    }
}

#[tokio::test]
async fn found_at_start_then_refused_at_exit_is_an_uninstall() {
    let (client, mut server) = ApiServer::client();
    let check = UninstallCheck::start(client, pod_ref());
    server.answer(POD_PATH, 200, our_pod_json()).await;
    server
        .answer(DAEMONSET_PATH, 200, daemonset_json(false))
        .await;
    let owner = armed(&check).await;
    assert_eq!(owner.daemonset, daemonset_ref());
    assert!(owner.readable);

    // A restart: the DaemonSet is there.
    let (verdict, ()) = tokio::join!(
        check.verdict(WAIT),
        server.answer_exit(200, daemonset_json(false), namespace_json(false))
    );
    assert!(!is_uninstall(&verdict), "{verdict:?}");
    // `kubectl delete -k`: its RoleBinding went with it.
    let (verdict, ()) = tokio::join!(
        check.verdict(WAIT),
        server.answer_exit(403, status_json(403), namespace_json(false))
    );
    assert!(is_uninstall(&verdict), "{verdict:?}");
    // `kubectl delete namespace`, before the DaemonSet's turn.
    let (verdict, ()) = tokio::join!(
        check.verdict(WAIT),
        server.answer_exit(200, daemonset_json(false), namespace_json(true))
    );
    assert!(is_uninstall(&verdict), "{verdict:?}");
}

#[tokio::test]
async fn refused_from_the_start_keeps_the_pins() {
    let (client, mut server) = ApiServer::client();
    let check = UninstallCheck::start(client, pod_ref());
    server.answer(POD_PATH, 200, our_pod_json()).await;
    server.answer(DAEMONSET_PATH, 403, status_json(403)).await;
    let owner = armed(&check).await;
    assert!(!owner.readable);
    let (verdict, ()) = tokio::join!(
        check.verdict(WAIT),
        server.answer_exit(403, status_json(403), namespace_json(false))
    );
    assert!(!is_uninstall(&verdict), "{verdict:?}");
}

#[tokio::test]
async fn an_owner_not_found_at_start_is_found_at_exit() {
    let (client, mut server) = ApiServer::client();
    let check = unarmed(client);
    let (verdict, ()) = tokio::join!(check.verdict(WAIT), async {
        server.answer(POD_PATH, 200, our_pod_json()).await;
        server
            .answer_exit(404, status_json(404), namespace_json(false))
            .await;
    });
    assert!(is_uninstall(&verdict), "{verdict:?}");
    // Credentials never proven: a refusal is not an uninstall.
    let (verdict, ()) = tokio::join!(check.verdict(WAIT), async {
        server.answer(POD_PATH, 200, our_pod_json()).await;
        server
            .answer_exit(401, status_json(401), namespace_json(false))
            .await;
    });
    assert!(!is_uninstall(&verdict), "{verdict:?}");
}

#[tokio::test]
async fn a_pod_without_a_daemonset_keeps_the_pins() {
    let (client, mut server) = ApiServer::client();
    let check = unarmed(client);
    let (verdict, ()) = tokio::join!(
        check.verdict(WAIT),
        server.answer(
            POD_PATH,
            200,
            pod_json(&[("apps/v1", "ReplicaSet", "web-1", true)])
        )
    );
    assert_eq!(
        verdict,
        Verdict::Keep(
            "the agent's Pod podmeter-system/podmeter-agent-x7k2p is no DaemonSet's pod".into()
        )
    );
}

#[tokio::test]
async fn no_answer_within_the_bound_keeps_the_pins() {
    let (client, mut server) = ApiServer::client();
    let check = unarmed(client);
    let within = Duration::from_millis(300);
    let started = tokio::time::Instant::now();
    let (verdict, _request) = tokio::join!(check.verdict(within), async {
        // Take the call and never answer it.
        tokio::time::timeout(WAIT, server.handle.next_request()).await
    });
    assert!(started.elapsed() < WAIT, "bounded: {:?}", started.elapsed());
    assert!(!is_uninstall(&verdict), "{verdict:?}");
    assert!(text(&verdict).contains("no answer"), "{verdict:?}");
}
