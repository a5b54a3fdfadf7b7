//! Authentication and authorisation of the agent API's callers, as kube-rbac-proxy does it: a
//! ServiceAccount bearer token checked with a `TokenReview` that names this API's audience, then
//! a `SubjectAccessReview` asking whether that user may `get` `nodes/podmeter` ([`PERMISSION`]);
//! both answers are cached briefly. No or an invalid token gets 401, a valid one without the
//! permission 403. `/healthz` stays open for probes. When callers authenticate, the API is served
//! over TLS only ([`ProtectedApi`]). The [`Reviewer`] trait lets tests inject their own answers.

use std::{
    collections::HashMap,
    future::Future,
    path::PathBuf,
    sync::{Arc, Mutex, PoisonError},
    time::{Duration, Instant},
};

use axum::{
    Router,
    extract::{Request, State},
    http::{HeaderMap, StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use k8s_openapi::api::{
    authentication::v1::{TokenReview, TokenReviewSpec, TokenReviewStatus, UserInfo},
    authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec},
};
use kube::api::{Api, PostParams};

use super::api_tls::{ServingCertificate, TlsError, TlsListener, server_config};

/// Whether and how the agent API authenticates its callers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ApiAuth {
    /// Plain HTTP; anyone who can reach the address may read it (loopback, local use).
    #[default]
    None,
    /// TLS, bearer tokens checked with TokenReview for `audience`, then a SubjectAccessReview
    /// for [`PERMISSION`]. The client from `kubeconfig`, else in-cluster or `$KUBECONFIG`; the
    /// serving certificate from `tls_cert_file`/`tls_private_key_file`, else self-signed.
    TokenReview {
        kubeconfig: Option<PathBuf>,
        audience: String,
        tls_cert_file: Option<PathBuf>,
        tls_private_key_file: Option<PathBuf>,
    },
}

/// What a caller must be allowed (a SubjectAccessReview's resource attributes): `get` on the
/// `podmeter` subresource of `nodes` in the core group, named like the kubelet's
/// `nodes/metrics` and `nodes/stats` but granted by none of the roles that grant those.
pub const PERMISSION: Permission = Permission {
    verb: "get",
    group: "",
    resource: "nodes",
    subresource: "podmeter",
};

/// A SubjectAccessReview's resource attributes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Permission {
    pub verb: &'static str,
    pub group: &'static str,
    pub resource: &'static str,
    pub subresource: &'static str,
}

/// Setting up the guarded API failed.
#[derive(Debug, thiserror::Error)]
pub enum ProtectError {
    #[error(transparent)]
    Client(#[from] podmeter_kube::ClientError),
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("--tls-cert-file and --tls-private-key-file go together")]
    HalfACertificate,
}

/// The API's routes as `auth` asks, and how to serve them: plain HTTP, or TLS.
pub struct ProtectedApi {
    router: Router,
    tls: Option<Arc<rustls::ServerConfig>>,
}

impl ProtectedApi {
    /// Serves the API on `listener` until `shutdown` completes.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        match self.tls {
            None => super::api::serve(listener, self.router, shutdown).await,
            Some(tls) => {
                super::api::serve(TlsListener::new(listener, tls)?, self.router, shutdown).await
            }
        }
    }
}

/// `router` as `auth` asks: unchanged over plain HTTP, or over TLS behind [`require_token`]
/// with a [`KubeReviewer`].
pub async fn protect_api(router: Router, auth: &ApiAuth) -> Result<ProtectedApi, ProtectError> {
    match auth {
        ApiAuth::None => Ok(ProtectedApi { router, tls: None }),
        ApiAuth::TokenReview {
            kubeconfig,
            audience,
            tls_cert_file,
            tls_private_key_file,
        } => {
            let certificate = match (tls_cert_file, tls_private_key_file) {
                (None, None) => ServingCertificate::SelfSigned,
                (Some(cert), Some(key)) => ServingCertificate::Files {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                _ => return Err(ProtectError::HalfACertificate),
            };
            let tls = server_config(&certificate)?;
            let client = podmeter_kube::client(kubeconfig.as_deref()).await?;
            Ok(ProtectedApi {
                router: require_token(router, KubeReviewer::new(client, audience.clone())),
                tls: Some(tls),
            })
        }
    }
}

/// Paths served without a token.
pub const OPEN_PATHS: &[&str] = &["/healthz"];
/// How long a review's answer is trusted (the apiserver's webhook cache default).
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Cached tokens before the cache is emptied (bounds memory against token spraying).
const CACHE_MAX: usize = 1024;
/// Bound on one TokenReview or SubjectAccessReview.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Asking kube-apiserver failed; the request is answered 500 and nothing is cached.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("{what} failed: {source}")]
    Review {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
    #[error("{what} took longer than {timeout:?}")]
    Timeout {
        what: &'static str,
        timeout: Duration,
    },
}

/// Says who a bearer token belongs to and what that user may do.
pub trait Reviewer: Send + Sync + 'static {
    /// `Ok(Some(user))` when the token is valid for this API's audience, `Ok(None)` when not.
    fn authenticate(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Option<UserInfo>, ReviewError>> + Send;

    /// Whether `user` has [`PERMISSION`].
    fn authorize(&self, user: &UserInfo) -> impl Future<Output = Result<bool, ReviewError>> + Send;
}

/// [`Reviewer`] asking kube-apiserver.
#[derive(Clone)]
pub struct KubeReviewer {
    client: kube::Client,
    audience: String,
}

impl KubeReviewer {
    pub fn new(client: kube::Client, audience: String) -> Self {
        Self { client, audience }
    }
}

async fn bounded<T>(
    what: &'static str,
    call: impl Future<Output = Result<T, kube::Error>>,
) -> Result<T, ReviewError> {
    tokio::time::timeout(REVIEW_TIMEOUT, call)
        .await
        .map_err(|_| ReviewError::Timeout {
            what,
            timeout: REVIEW_TIMEOUT,
        })?
        .map_err(|source| ReviewError::Review { what, source })
}

/// The user of an authenticated review whose audiences include `audience` (the apiserver
/// answers with the requested audiences the token is valid for; an authenticator that ignored
/// them would answer none, and is not trusted).
fn reviewed_user(status: TokenReviewStatus, audience: &str) -> Option<UserInfo> {
    let audiences = status.audiences.unwrap_or_default();
    (status.authenticated == Some(true) && audiences.iter().any(|a| a == audience))
        .then(|| status.user.unwrap_or_default())
}

impl Reviewer for KubeReviewer {
    async fn authenticate(&self, token: &str) -> Result<Option<UserInfo>, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                audiences: Some(vec![self.audience.clone()]),
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer = bounded("TokenReview", api.create(&PostParams::default(), &review)).await?;
        Ok(reviewed_user(
            answer.status.unwrap_or_default(),
            &self.audience,
        ))
    }

    async fn authorize(&self, user: &UserInfo) -> Result<bool, ReviewError> {
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: user.username.clone(),
                uid: user.uid.clone(),
                groups: user.groups.clone(),
                extra: user.extra.clone(),
                resource_attributes: Some(ResourceAttributes {
                    verb: Some(PERMISSION.verb.to_owned()),
                    group: Some(PERMISSION.group.to_owned()),
                    resource: Some(PERMISSION.resource.to_owned()),
                    subresource: Some(PERMISSION.subresource.to_owned()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let answer = bounded(
            "SubjectAccessReview",
            api.create(&PostParams::default(), &review),
        )
        .await?;
        Ok(answer.status.is_some_and(|s| s.allowed))
    }
}

/// What a valid token may do.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Decision {
    Allowed(String),
    Forbidden(String),
}

struct Guard<R> {
    reviewer: R,
    /// Decisions on valid tokens and when they expire (invalid tokens are not cached).
    cache: Mutex<HashMap<String, (Decision, Instant)>>,
}

impl<R: Reviewer> Guard<R> {
    async fn decide(&self, token: &str) -> Result<Option<Decision>, ReviewError> {
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((decision, expires)) = cache.get(token)
                && *expires > now
            {
                return Ok(Some(decision.clone()));
            }
        }
        let Some(user) = self.reviewer.authenticate(token).await? else {
            return Ok(None);
        };
        let name = user.username.clone().unwrap_or_default();
        let decision = if self.reviewer.authorize(&user).await? {
            Decision::Allowed(name)
        } else {
            Decision::Forbidden(name)
        };
        let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
        if cache.len() >= CACHE_MAX {
            cache.clear();
        }
        cache.insert(token.to_owned(), (decision.clone(), now + CACHE_TTL));
        Ok(Some(decision))
    }
}

/// `router` behind bearer-token authentication and authorisation by `reviewer`.
pub fn require_token<R: Reviewer>(router: Router, reviewer: R) -> Router {
    let guard = Arc::new(Guard {
        reviewer,
        cache: Mutex::new(HashMap::new()),
    });
    Router::new()
        .fallback_service(router)
        .layer(middleware::from_fn_with_state(guard, check::<R>))
}

fn unauthorized() -> Response {
    (
        StatusCode::UNAUTHORIZED,
        [(header::WWW_AUTHENTICATE, "Bearer")],
        "a valid bearer token is required\n",
    )
        .into_response()
}

/// The token of an `Authorization: Bearer <token>` header; `None` without one.
pub fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty())
}

async fn check<R: Reviewer>(
    State(guard): State<Arc<Guard<R>>>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let Some(token) = bearer_token(request.headers()) else {
        return unauthorized();
    };
    match guard.decide(token).await {
        Ok(Some(Decision::Allowed(user))) => {
            tracing::debug!(%user, path = request.uri().path(), "authorised");
            next.run(request).await
        }
        Ok(Some(Decision::Forbidden(user))) => {
            tracing::debug!(%user, path = request.uri().path(), "forbidden");
            let Permission {
                verb,
                resource,
                subresource,
                ..
            } = PERMISSION;
            (
                StatusCode::FORBIDDEN,
                format!("{user} may not {verb} {resource}/{subresource}\n"),
            )
                .into_response()
        }
        Ok(None) => unauthorized(),
        Err(error) => {
            tracing::warn!(%error, "cannot authenticate a caller");
            (StatusCode::INTERNAL_SERVER_ERROR, "authentication failed\n").into_response()
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::{body::Body, routing::get};
    use tower::ServiceExt;

    use super::*;

    const AUDIENCE: &str = "podmeter-agent";

    /// "good" belongs to the metrics API, "other" to a user without the permission.
    #[derive(Clone, Default)]
    struct Fake {
        authentications: Arc<AtomicUsize>,
        authorizations: Arc<AtomicUsize>,
    }

    impl Reviewer for Fake {
        async fn authenticate(&self, token: &str) -> Result<Option<UserInfo>, ReviewError> {
            self.authentications.fetch_add(1, Ordering::SeqCst);
            let name = match token {
                "good" => "system:serviceaccount:podmeter-system:podmeter-metrics-api",
                "other" => "system:serviceaccount:default:other",
                _ => return Ok(None),
            };
            Ok(Some(UserInfo {
                username: Some(name.to_owned()),
                ..UserInfo::default()
            }))
        }

        async fn authorize(&self, user: &UserInfo) -> Result<bool, ReviewError> {
            self.authorizations.fetch_add(1, Ordering::SeqCst);
            Ok(user
                .username
                .as_deref()
                .is_some_and(|u| u.ends_with(":podmeter-metrics-api")))
        }
    }

    async fn status(app: &Router, path: &str, token: Option<&str>) -> StatusCode {
        let mut request = Request::builder().uri(path);
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        let request = request.body(Body::empty()).expect("request");
        app.clone()
            .oneshot(request)
            .await
            .expect("infallible")
            .status()
    }

    #[tokio::test]
    async fn unknown_tokens_get_401_unpermitted_users_403_and_answers_are_cached() {
        let fake = Fake::default();
        let app = require_token(
            Router::new()
                .route("/v1/pods", get(|| async { "pods" }))
                .route("/healthz", get(|| async { "ok" })),
            fake.clone(),
        );
        assert_eq!(status(&app, "/healthz", None).await, StatusCode::OK);
        assert_eq!(
            status(&app, "/v1/pods", None).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            status(&app, "/v1/pods", Some("bad")).await,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(status(&app, "/nope", None).await, StatusCode::UNAUTHORIZED);
        assert_eq!(status(&app, "/v1/pods", Some("good")).await, StatusCode::OK);
        assert_eq!(status(&app, "/v1/pods", Some("good")).await, StatusCode::OK);
        assert_eq!(
            status(&app, "/v1/pods", Some("other")).await,
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            status(&app, "/v1/pods", Some("other")).await,
            StatusCode::FORBIDDEN
        );
        // bad, good and other once each: the repeated good and other came from the cache.
        assert_eq!(fake.authentications.load(Ordering::SeqCst), 3);
        assert_eq!(fake.authorizations.load(Ordering::SeqCst), 2);
    }

    fn status_for(authenticated: bool, audiences: &[&str]) -> TokenReviewStatus {
        TokenReviewStatus {
            authenticated: Some(authenticated),
            audiences: Some(audiences.iter().map(|a| (*a).to_owned()).collect()),
            user: Some(UserInfo {
                username: Some("someone".to_owned()),
                ..UserInfo::default()
            }),
            ..TokenReviewStatus::default()
        }
    }

    #[test]
    fn a_review_counts_only_for_the_required_audience() {
        let user = |s| reviewed_user(s, AUDIENCE).and_then(|u| u.username);
        assert_eq!(
            user(status_for(true, &[AUDIENCE])).as_deref(),
            Some("someone")
        );
        assert_eq!(user(status_for(true, &[])), None);
        assert_eq!(
            user(status_for(true, &["https://kubernetes.default.svc"])),
            None
        );
        assert_eq!(user(status_for(false, &[AUDIENCE])), None);
    }

    #[test]
    fn a_bearer_token_needs_the_scheme_and_a_value() {
        let token = |value: &'static str| {
            let mut headers = HeaderMap::new();
            headers.insert(header::AUTHORIZATION, value.parse().unwrap());
            bearer_token(&headers).map(str::to_owned)
        };
        assert_eq!(token("Bearer abc.def ").as_deref(), Some("abc.def"));
        assert_eq!(token("Bearer   "), None);
        assert_eq!(token("bearer abc"), None);
        assert_eq!(token("Basic YWxhZGRpbjpvcGVuc2VzYW1l"), None);
        assert_eq!(bearer_token(&HeaderMap::new()), None);
    }
}
