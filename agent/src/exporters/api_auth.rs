//! Authentication of the agent API's callers: a ServiceAccount bearer token checked with a
//! `TokenReview` (authentication.k8s.io/v1) and cached briefly; a request without a valid token
//! gets 401. `/healthz` stays open for probes. The [`TokenReviewer`] trait lets tests inject
//! their own answers.

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
    http::{StatusCode, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use kube::api::{Api, PostParams};

/// Whether and how the agent API authenticates its callers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum ApiAuth {
    /// Anyone who can reach the address may read it (loopback, local use).
    #[default]
    None,
    /// Bearer tokens checked with TokenReview; the client from `kubeconfig`, else in-cluster or
    /// `$KUBECONFIG`.
    TokenReview { kubeconfig: Option<PathBuf> },
}

/// `router` as `auth` asks: unchanged, or behind [`require_token`] with a [`KubeTokenReviewer`].
pub async fn protect_api(
    router: Router,
    auth: &ApiAuth,
) -> Result<Router, podmeter_kube::ClientError> {
    match auth {
        ApiAuth::None => Ok(router),
        ApiAuth::TokenReview { kubeconfig } => {
            let client = podmeter_kube::client(kubeconfig.as_deref()).await?;
            Ok(require_token(router, KubeTokenReviewer::new(client)))
        }
    }
}

/// Paths served without a token.
pub const OPEN_PATHS: &[&str] = &["/healthz"];
/// How long a successful review is trusted (the apiserver's token-webhook cache default).
const CACHE_TTL: Duration = Duration::from_secs(10);
/// Cached tokens before the cache is emptied (bounds memory against token spraying).
const CACHE_MAX: usize = 1024;
/// Bound on one TokenReview.
const REVIEW_TIMEOUT: Duration = Duration::from_secs(5);

/// Asking kube-apiserver failed; the request is answered 500 and nothing is cached.
#[derive(Debug, thiserror::Error)]
pub enum ReviewError {
    #[error("TokenReview failed: {0}")]
    Review(#[from] kube::Error),
    #[error("TokenReview took longer than {0:?}")]
    Timeout(Duration),
}

/// Says who a bearer token belongs to.
pub trait TokenReviewer: Send + Sync + 'static {
    /// `Ok(Some(user))` when the token is valid, `Ok(None)` when it is not.
    fn review(
        &self,
        token: &str,
    ) -> impl Future<Output = Result<Option<String>, ReviewError>> + Send;
}

/// [`TokenReviewer`] asking kube-apiserver.
#[derive(Clone)]
pub struct KubeTokenReviewer {
    client: kube::Client,
}

impl KubeTokenReviewer {
    pub fn new(client: kube::Client) -> Self {
        Self { client }
    }
}

impl TokenReviewer for KubeTokenReviewer {
    async fn review(&self, token: &str) -> Result<Option<String>, ReviewError> {
        let review = TokenReview {
            spec: TokenReviewSpec {
                token: Some(token.to_owned()),
                ..TokenReviewSpec::default()
            },
            ..TokenReview::default()
        };
        let api: Api<TokenReview> = Api::all(self.client.clone());
        let answer =
            tokio::time::timeout(REVIEW_TIMEOUT, api.create(&PostParams::default(), &review))
                .await
                .map_err(|_| ReviewError::Timeout(REVIEW_TIMEOUT))??;
        let status = answer.status.unwrap_or_default();
        Ok(status
            .authenticated
            .unwrap_or(false)
            .then(|| status.user.and_then(|u| u.username).unwrap_or_default()))
    }
}

struct Guard<R> {
    reviewer: R,
    /// Valid tokens and when their review expires.
    cache: Mutex<HashMap<String, (String, Instant)>>,
}

impl<R: TokenReviewer> Guard<R> {
    async fn user(&self, token: &str) -> Result<Option<String>, ReviewError> {
        let now = Instant::now();
        {
            let cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if let Some((user, expires)) = cache.get(token)
                && *expires > now
            {
                return Ok(Some(user.clone()));
            }
        }
        let user = self.reviewer.review(token).await?;
        if let Some(user) = &user {
            let mut cache = self.cache.lock().unwrap_or_else(PoisonError::into_inner);
            if cache.len() >= CACHE_MAX {
                cache.clear();
            }
            cache.insert(token.to_owned(), (user.clone(), now + CACHE_TTL));
        }
        Ok(user)
    }
}

/// `router` behind bearer-token authentication by `reviewer`.
pub fn require_token<R: TokenReviewer>(router: Router, reviewer: R) -> Router {
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

async fn check<R: TokenReviewer>(
    State(guard): State<Arc<Guard<R>>>,
    request: Request,
    next: Next,
) -> Response {
    if OPEN_PATHS.contains(&request.uri().path()) {
        return next.run(request).await;
    }
    let token = request
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .map(str::trim)
        .filter(|t| !t.is_empty());
    let Some(token) = token else {
        return unauthorized();
    };
    match guard.user(token).await {
        Ok(Some(user)) => {
            tracing::debug!(%user, path = request.uri().path(), "authenticated");
            next.run(request).await
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

    #[derive(Clone, Default)]
    struct Fake {
        calls: Arc<AtomicUsize>,
    }

    impl TokenReviewer for Fake {
        async fn review(&self, token: &str) -> Result<Option<String>, ReviewError> {
            self.calls.fetch_add(1, Ordering::SeqCst);
            Ok((token == "good").then(|| "system:serviceaccount:kube-system:metrics".to_owned()))
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
    async fn only_reviewed_tokens_pass_and_reviews_are_cached() {
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
        // bad, then good once: the second good was served from the cache.
        assert_eq!(fake.calls.load(Ordering::SeqCst), 2);
    }
}
