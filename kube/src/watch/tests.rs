//! [`reflect`] against a mocked API server: the calls carry the selectors, the store keeps
//! trimmed objects, and the callback sees each change after the store applied it.

use std::time::Duration;

use http::{Request, Response};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::{Client, ResourceExt as _, client::Body};
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tower_test::mock;

use super::*;

const WAIT: Duration = Duration::from_secs(5);

fn map(name: &str, rv: &str) -> Value {
    json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "ns", "resourceVersion": rv,
                     "annotations": {"big": "x"},
                     "managedFields": [{"manager": "kubectl", "operation": "Update"}]},
        "data": {"k": "v"},
    })
}

#[tokio::test]
async fn the_store_keeps_trimmed_objects_and_the_callback_follows_it() {
    let (service, mut handle) = mock::pair::<Request<Body>, Response<Body>>();
    let api: Api<ConfigMap> = Api::namespaced(Client::new(service, "ns"), "ns");
    let (changes, mut seen) = mpsc::unbounded_channel();
    let watch = Watch::new("configmaps")
        .labels("app=x")
        .fields("metadata.name=a")
        .trim(|map: &mut ConfigMap| {
            map.annotations_mut().remove("big");
        })
        .on_change(move |change, store: &Store<ConfigMap>| {
            let change = match change {
                Change::Listed => "listed".to_owned(),
                Change::Applied(map) => format!("applied {}", map.name_any()),
                Change::Deleted(map) => format!("deleted {}", map.name_any()),
            };
            changes
                .send((change, store.len()))
                .expect("the test listens");
        });
    let (store, run) = reflect(api, watch);
    let run = tokio::spawn(run);

    let mut answer = async |watch: bool, body: Vec<u8>| {
        let (request, send) = tokio::time::timeout(WAIT, handle.next_request())
            .await
            .expect("the watcher calls")
            .expect("a request");
        let query = request.uri().query().unwrap_or_default().to_owned();
        assert_eq!(request.uri().path(), "/api/v1/namespaces/ns/configmaps");
        assert!(query.contains("labelSelector=app%3Dx"), "{query}");
        assert!(query.contains("fieldSelector=metadata.name%3Da"), "{query}");
        assert_eq!(query.contains("watch=true"), watch, "{query}");
        send.send_response(Response::new(Body::from(body)));
    };
    let list = json!({"apiVersion": "v1", "kind": "ConfigMapList",
                      "metadata": {"resourceVersion": "1"}, "items": [map("a", "1")]});
    answer(false, list.to_string().into_bytes()).await;
    tokio::time::timeout(WAIT, store.wait_until_ready())
        .await
        .expect("listed in time")
        .expect("ready");
    let kept = store.state();
    let [kept] = &kept[..] else {
        panic!("one object: {kept:?}")
    };
    assert!(kept.metadata.managed_fields.is_none(), "managed fields go");
    assert!(kept.annotations().is_empty(), "trimmed");

    let events = [("MODIFIED", map("a", "2")), ("DELETED", map("a", "3"))]
        .map(|(kind, object)| json!({"type": kind, "object": object}).to_string() + "\n")
        .concat();
    answer(true, events.into_bytes()).await;
    let mut got = Vec::new();
    while got.len() < 3 {
        let change = tokio::time::timeout(WAIT, seen.recv()).await;
        got.push(change.expect("a change in time").expect("a change"));
    }
    assert_eq!(
        got,
        [
            ("listed".to_owned(), 1),
            ("applied a".to_owned(), 1),
            ("deleted a".to_owned(), 0)
        ]
    );
    run.abort();
}
