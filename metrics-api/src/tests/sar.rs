//! The SubjectAccessReview authoriser against a fake kube-apiserver on loopback (plain HTTP
//! through a real `kube::Client`): the review it posts, the answers it believes, the cache.

use std::{
    collections::BTreeMap,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use axum::{Json, Router, extract::State, http::StatusCode, routing::post};
use serde_json::{Value, json};

use crate::{
    ReviewCache, SubjectAccessReviewAuthorizer,
    authorizer::{AuthorizeError, Authorizer, review_spec},
    request_header::UserInfo,
    request_info::{Attributes, NonResourceAttributes, ResourceAttributes},
};

#[derive(Clone, Default)]
struct FakeApiserver {
    reviews: Arc<Mutex<Vec<Value>>>,
    broken: Arc<AtomicBool>,
}

impl FakeApiserver {
    fn reviews(&self) -> Vec<Value> {
        self.reviews
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

/// Allows alice, denies everyone else; 500 while broken.
async fn review(
    State(server): State<FakeApiserver>,
    Json(mut body): Json<Value>,
) -> Result<(StatusCode, Json<Value>), StatusCode> {
    server
        .reviews
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(body.clone());
    if server.broken.load(Ordering::SeqCst) {
        return Err(StatusCode::INTERNAL_SERVER_ERROR);
    }
    let allowed = body["spec"]["user"] == "alice";
    body["status"] = if allowed {
        json!({"allowed": true, "reason": "RBAC: allowed by ClusterRoleBinding"})
    } else {
        json!({"allowed": false})
    };
    Ok((StatusCode::CREATED, Json(body)))
}

async fn start(cache: ReviewCache) -> (SubjectAccessReviewAuthorizer, FakeApiserver) {
    let server = FakeApiserver::default();
    let app = Router::new()
        .route(
            "/apis/authorization.k8s.io/v1/subjectaccessreviews",
            post(review),
        )
        .with_state(server.clone());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let address = listener.local_addr().expect("address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    let config = kube::Config::new(format!("http://{address}").parse().expect("URL"));
    let client = kube::Client::try_from(config).expect("client");
    (SubjectAccessReviewAuthorizer::new(client, cache), server)
}

fn user(name: &str) -> UserInfo {
    UserInfo {
        name: name.into(),
        uid: "u-1".into(),
        groups: vec![
            "system:serviceaccounts".into(),
            "system:authenticated".into(),
        ],
        extra: BTreeMap::from([("scopes".to_owned(), vec!["a".to_owned()])]),
    }
}

fn pods_query() -> Attributes {
    Attributes::Resource(ResourceAttributes {
        verb: "get".into(),
        namespace: "default".into(),
        group: "custom.metrics.k8s.io".into(),
        version: "v1beta1".into(),
        resource: "pods".into(),
        subresource: "http_requests_per_second".into(),
        name: "*".into(),
    })
}

#[test]
fn the_review_spec_is_what_the_webhook_authoriser_sends() {
    let spec = serde_json::to_value(review_spec(&user("alice"), &pods_query())).expect("JSON");
    assert_eq!(
        spec,
        json!({
            "user": "alice",
            "uid": "u-1",
            "groups": ["system:serviceaccounts", "system:authenticated"],
            "extra": {"scopes": ["a"]},
            "resourceAttributes": {
                "namespace": "default",
                "verb": "get",
                "group": "custom.metrics.k8s.io",
                "version": "v1beta1",
                "resource": "pods",
                "subresource": "http_requests_per_second",
                "name": "*"
            }
        })
    );
    let discovery = Attributes::NonResource(NonResourceAttributes {
        verb: "get".into(),
        path: "/apis".into(),
    });
    let anonymous_ish = UserInfo {
        name: "bob".into(),
        ..UserInfo::default()
    };
    assert_eq!(
        serde_json::to_value(review_spec(&anonymous_ish, &discovery)).expect("JSON"),
        json!({"user": "bob", "nonResourceAttributes": {"path": "/apis", "verb": "get"}})
    );
}

#[tokio::test]
async fn answers_come_from_kube_apiserver_and_are_cached() {
    let (authorizer, server) = start(ReviewCache::default()).await;
    assert!(
        authorizer
            .allowed(&user("alice"), &pods_query())
            .await
            .expect("reviewed")
    );
    assert!(
        !authorizer
            .allowed(&user("mallory"), &pods_query())
            .await
            .expect("reviewed")
    );
    let reviews = server.reviews();
    assert_eq!(reviews.len(), 2);
    assert_eq!(reviews[0]["apiVersion"], "authorization.k8s.io/v1");
    assert_eq!(reviews[0]["kind"], "SubjectAccessReview");
    assert_eq!(
        reviews[0]["spec"],
        serde_json::to_value(review_spec(&user("alice"), &pods_query())).expect("JSON")
    );
    // Both answers, the allow and the deny, are remembered.
    for _ in 0..3 {
        assert!(
            authorizer
                .allowed(&user("alice"), &pods_query())
                .await
                .expect("cached")
        );
        assert!(
            !authorizer
                .allowed(&user("mallory"), &pods_query())
                .await
                .expect("cached")
        );
    }
    assert_eq!(server.reviews().len(), 2);
    // Another question is another review.
    let other = Attributes::NonResource(NonResourceAttributes {
        verb: "get".into(),
        path: "/apis".into(),
    });
    assert!(
        authorizer
            .allowed(&user("alice"), &other)
            .await
            .expect("reviewed")
    );
    assert_eq!(server.reviews().len(), 3);
}

#[tokio::test]
async fn answers_expire_and_failures_are_not_remembered() {
    let cache = ReviewCache {
        allowed_ttl: Duration::from_millis(100),
        denied_ttl: Duration::from_millis(100),
        ..ReviewCache::default()
    };
    let (authorizer, server) = start(cache).await;
    assert!(
        authorizer
            .allowed(&user("alice"), &pods_query())
            .await
            .expect("reviewed")
    );
    tokio::time::sleep(Duration::from_millis(150)).await;
    server.broken.store(true, Ordering::SeqCst);
    let error = authorizer
        .allowed(&user("alice"), &pods_query())
        .await
        .expect_err("kube-apiserver is broken");
    assert!(matches!(error, AuthorizeError::Review { .. }), "{error}");
    server.broken.store(false, Ordering::SeqCst);
    assert!(
        authorizer
            .allowed(&user("alice"), &pods_query())
            .await
            .expect("reviewed")
    );
    assert_eq!(server.reviews().len(), 3, "expired, failed, asked again");
}
