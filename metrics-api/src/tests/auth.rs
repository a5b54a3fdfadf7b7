//! The filter chain without TLS: client certificates are put in the request as the TLS layer
//! puts them, and a fake authoriser records what it is asked.

use std::sync::{Arc, Mutex, PoisonError};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{Method, Request, StatusCode},
};
use tower::ServiceExt as _;

use super::{fixture::fixture, pki::Ca};
use crate::{
    ApiOptions, RequestHeaderAuth, RequestHeaderConfig,
    authorizer::{AuthorizeError, Authorizer},
    protect,
    request_header::{PeerCertificates, UserInfo},
    request_info::{Attributes, ResourceAttributes},
    router,
};

/// Allows the users it is given, denies the rest, or fails; remembers every question.
#[derive(Default)]
pub(crate) struct FakeAuthorizer {
    pub allowed_users: Vec<String>,
    pub fail: bool,
    pub asked: Mutex<Vec<(UserInfo, Attributes)>>,
}

impl FakeAuthorizer {
    pub fn allowing(users: &[&str]) -> Arc<Self> {
        Arc::new(Self {
            allowed_users: users.iter().map(|u| (*u).to_owned()).collect(),
            ..Self::default()
        })
    }

    pub fn asked(&self) -> Vec<(UserInfo, Attributes)> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Authorizer for FakeAuthorizer {
    async fn allowed(
        &self,
        user: &UserInfo,
        attributes: &Attributes,
    ) -> Result<bool, AuthorizeError> {
        self.asked
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push((user.clone(), attributes.clone()));
        if self.fail {
            return Err(AuthorizeError::Timeout {
                user: user.name.clone(),
                timeout: std::time::Duration::from_secs(10),
            });
        }
        Ok(self.allowed_users.contains(&user.name))
    }
}

pub(crate) const HPA_USER: &str = "system:serviceaccount:kube-system:horizontal-pod-autoscaler";
pub(crate) const HPA_PATH: &str = "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/%2A/http_requests_per_second?labelSelector=app%3Dweb";

/// What the HPA gets for [`HPA_PATH`] (see `routes/tests.rs` for the field-by-field reasoning).
pub(crate) const HPA_REPLY: &str = concat!(
    r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
    r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"},"metricName":"http_requests_per_second","timestamp":"2024-01-29T18:21:27Z","window":30,"value":"25500m","selector":null},"#,
    r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-2","apiVersion":"/v1"},"metricName":"http_requests_per_second","timestamp":"2024-01-29T18:21:22Z","window":30,"value":"24500m","selector":null}"#,
    "]}\n"
);

pub(crate) const UNAUTHORIZED: &str = "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"Unauthorized\",\"reason\":\"Unauthorized\",\"code\":401}\n";

/// `responsewriters.Forbidden` for mallory's HPA-style request.
pub(crate) const FORBIDDEN: &str = concat!(
    r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","#,
    r#""message":"pods.custom.metrics.k8s.io \"*\" is forbidden: User \"mallory\" cannot get resource \"pods/http_requests_per_second\" in API group \"custom.metrics.k8s.io\" in the namespace \"default\"","#,
    r#""reason":"Forbidden","details":{"name":"*","group":"custom.metrics.k8s.io","kind":"pods"},"code":403}"#,
    "\n"
);

struct Setup {
    app: Router,
    authorizer: Arc<FakeAuthorizer>,
    proxy: PeerCertificates,
}

fn setup(authorizer: Arc<FakeAuthorizer>) -> Setup {
    let ca = Ca::new("front-proxy-ca");
    let proxy = ca.client("front-proxy-client");
    let auth = RequestHeaderAuth::new(
        RequestHeaderConfig::from_pem(ca.pem.as_bytes(), vec!["front-proxy-client".into()])
            .expect("PEM"),
    )
    .expect("config");
    let app = protect(
        router(fixture(), ApiOptions::default()),
        auth.authenticator(),
        Arc::clone(&authorizer),
    );
    Setup {
        app,
        authorizer,
        proxy: PeerCertificates(Arc::from(vec![proxy.der])),
    }
}

async fn send(
    app: &Router,
    uri: &str,
    peer: Option<&PeerCertificates>,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut request = Request::builder().method(Method::GET).uri(uri);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let mut request = request.body(Body::empty()).expect("request");
    if let Some(peer) = peer {
        request.extensions_mut().insert(peer.clone());
    }
    let response = app.clone().oneshot(request).await.expect("infallible");
    let status = response.status();
    let body = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
}

#[tokio::test]
async fn anonymous_requests_are_unauthorized_whatever_they_claim() {
    let s = setup(FakeAuthorizer::allowing(&[HPA_USER]));
    let claims = [
        ("X-Remote-User", HPA_USER),
        ("X-Remote-Group", "system:masters"),
    ];
    for uri in [HPA_PATH, "/apis", "/nowhere"] {
        assert_eq!(
            send(&s.app, uri, None, &claims).await,
            (StatusCode::UNAUTHORIZED, UNAUTHORIZED.to_owned()),
            "{uri}"
        );
    }
    // A trusted proxy that names no user is no better.
    assert_eq!(
        send(&s.app, HPA_PATH, Some(&s.proxy), &[]).await,
        (StatusCode::UNAUTHORIZED, UNAUTHORIZED.to_owned())
    );
    assert!(s.authorizer.asked().is_empty(), "nobody was authorised");
}

#[tokio::test]
async fn an_allowed_user_gets_the_metrics_after_one_review() {
    let s = setup(FakeAuthorizer::allowing(&[HPA_USER]));
    let (status, body) = send(
        &s.app,
        HPA_PATH,
        Some(&s.proxy),
        &[
            ("X-Remote-User", HPA_USER),
            ("X-Remote-Group", "system:serviceaccounts"),
        ],
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, HPA_REPLY));
    let asked = s.authorizer.asked();
    assert_eq!(asked.len(), 1);
    let (user, attributes) = &asked[0];
    assert_eq!(user.name, HPA_USER);
    assert_eq!(
        user.groups,
        ["system:serviceaccounts", "system:authenticated"]
    );
    assert_eq!(
        attributes,
        &Attributes::Resource(ResourceAttributes {
            verb: "get".into(),
            namespace: "default".into(),
            group: "custom.metrics.k8s.io".into(),
            version: "v1beta1".into(),
            resource: "pods".into(),
            subresource: "http_requests_per_second".into(),
            name: "*".into(),
        })
    );
}

#[tokio::test]
async fn a_denied_user_is_forbidden_in_the_apiserver_words() {
    let s = setup(FakeAuthorizer::allowing(&[HPA_USER]));
    let mallory = [("X-Remote-User", "mallory")];
    assert_eq!(
        send(&s.app, HPA_PATH, Some(&s.proxy), &mallory).await,
        (StatusCode::FORBIDDEN, FORBIDDEN.to_owned())
    );
    assert_eq!(
        send(&s.app, "/apis", Some(&s.proxy), &mallory).await,
        (
            StatusCode::FORBIDDEN,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"forbidden: User \\\"mallory\\\" cannot get path \\\"/apis\\\"\",\"reason\":\"Forbidden\",\"details\":{},\"code\":403}\n".to_owned()
        )
    );
    // Authorisation comes before routing: a denied user cannot probe for paths either.
    let (status, _) = send(&s.app, "/nowhere", Some(&s.proxy), &mallory).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    let external =
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second";
    let (status, body) = send(&s.app, external, Some(&s.proxy), &mallory).await;
    assert_eq!(status, StatusCode::FORBIDDEN);
    assert!(
        body.contains("http_requests_per_second.external.metrics.k8s.io is forbidden: User \\\"mallory\\\" cannot list resource \\\"http_requests_per_second\\\" in API group \\\"external.metrics.k8s.io\\\" in the namespace \\\"default\\\""),
        "{body}"
    );
}

#[tokio::test]
async fn system_masters_skip_the_review_and_health_needs_nobody() {
    let s = setup(FakeAuthorizer::allowing(&[]));
    let (status, body) = send(
        &s.app,
        HPA_PATH,
        Some(&s.proxy),
        &[
            ("X-Remote-User", "system:kube-aggregator"),
            ("X-Remote-Group", "system:masters"),
        ],
    )
    .await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, HPA_REPLY));
    for probe in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(
            send(&s.app, probe, None, &[]).await,
            (StatusCode::OK, "ok".to_owned())
        );
    }
    assert_eq!(s.authorizer.asked(), []);
    // An authenticated, allowed request for a path nobody serves is a plain 404.
    let (status, body) = send(
        &s.app,
        "/nowhere",
        Some(&s.proxy),
        &[
            ("X-Remote-User", "admin"),
            ("X-Remote-Group", "system:masters"),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
}

#[tokio::test]
async fn an_authoriser_failure_is_an_internal_error_never_an_allow() {
    let authorizer = Arc::new(FakeAuthorizer {
        allowed_users: vec![HPA_USER.into()],
        fail: true,
        ..FakeAuthorizer::default()
    });
    let s = setup(authorizer);
    let (status, body) = send(
        &s.app,
        HPA_PATH,
        Some(&s.proxy),
        &[("X-Remote-User", HPA_USER)],
    )
    .await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    let cause = format!("SubjectAccessReview for user {HPA_USER:?} took longer than 10s")
        .replace('"', "\\\"");
    assert_eq!(
        body,
        format!(
            "{{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{{}},\"status\":\"Failure\",\"message\":\"Internal error occurred: {cause}\",\"reason\":\"InternalError\",\"details\":{{\"causes\":[{{\"message\":\"{cause}\"}}]}},\"code\":500}}\n"
        )
    );
}

#[tokio::test]
async fn a_broken_escape_is_a_bad_request_before_anything_else() {
    let s = setup(FakeAuthorizer::allowing(&[]));
    let (status, body) = send(&s.app, "/apis/%zz", None, &[]).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
}
