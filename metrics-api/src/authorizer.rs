//! Authorisation, delegated to kube-apiserver as an aggregated API server does it: each request's
//! user and attributes go into a `SubjectAccessReview` (authorization.k8s.io/v1), and the answer
//! is cached briefly (10 s either way by default, the apiserver's `--authorization-webhook-cache-
//! authorized-ttl`/`-unauthorized-ttl` for delegated authorisation). The [`Authorizer`] trait lets
//! tests and other deployments inject their own decision.

use std::{
    collections::HashMap,
    future::Future,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use k8s_openapi::api::authorization::v1::{
    NonResourceAttributes as SarNonResourceAttributes, ResourceAttributes as SarResourceAttributes,
    SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::{request_header::UserInfo, request_info::Attributes};

/// Decides whether a user may do what a request asks.
pub trait Authorizer: Send + Sync + 'static {
    /// `Ok(true)` allows, `Ok(false)` denies (403); an error is a 500, never an allow.
    fn allowed(
        &self,
        user: &UserInfo,
        attributes: &Attributes,
    ) -> impl Future<Output = Result<bool, AuthorizeError>> + Send;
}

/// Asking kube-apiserver failed; the request is answered 500 (as the apiserver's authorisation
/// filter does) and nothing is cached.
#[derive(Debug, thiserror::Error)]
pub enum AuthorizeError {
    #[error("SubjectAccessReview for user {user:?} failed: {source}")]
    Review { user: String, source: kube::Error },
    #[error("SubjectAccessReview for user {user:?} took longer than {timeout:?}")]
    Timeout { user: String, timeout: Duration },
    #[error("cannot encode the SubjectAccessReview: {0}")]
    Encode(#[from] serde_json::Error),
}

/// The `spec` of a SubjectAccessReview for `user` doing `attributes`, as the apiserver's webhook
/// authoriser fills it.
pub fn review_spec(user: &UserInfo, attributes: &Attributes) -> SubjectAccessReviewSpec {
    let optional = |s: &str| (!s.is_empty()).then(|| s.to_owned());
    let (resource_attributes, non_resource_attributes) = match attributes {
        Attributes::Resource(r) => (
            Some(SarResourceAttributes {
                namespace: optional(&r.namespace),
                verb: optional(&r.verb),
                group: optional(&r.group),
                version: optional(&r.version),
                resource: optional(&r.resource),
                subresource: optional(&r.subresource),
                name: optional(&r.name),
                ..SarResourceAttributes::default()
            }),
            None,
        ),
        Attributes::NonResource(n) => (
            None,
            Some(SarNonResourceAttributes {
                path: optional(&n.path),
                verb: optional(&n.verb),
            }),
        ),
    };
    SubjectAccessReviewSpec {
        user: optional(&user.name),
        uid: optional(&user.uid),
        groups: (!user.groups.is_empty()).then(|| user.groups.clone()),
        extra: (!user.extra.is_empty()).then(|| user.extra.clone()),
        resource_attributes,
        non_resource_attributes,
    }
}

/// How long answers are remembered, and how many.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ReviewCache {
    pub allowed_ttl: Duration,
    pub denied_ttl: Duration,
    /// At most this many answers are kept; expired ones go first, then everything.
    pub capacity: usize,
    /// How long one review may take.
    pub timeout: Duration,
}

impl Default for ReviewCache {
    fn default() -> Self {
        Self {
            // The apiserver's DelegatingAuthorizationOptions defaults: AllowCacheTTL and
            // DenyCacheTTL 10 s, ClientTimeout 10 s.
            allowed_ttl: Duration::from_secs(10),
            denied_ttl: Duration::from_secs(10),
            // Users times paths of a metrics server are few (the HPA controller, kube-aggregator).
            capacity: 4096,
            timeout: Duration::from_secs(10),
        }
    }
}

/// The real [`Authorizer`]: POSTs SubjectAccessReviews through a `kube::Client` (needs the
/// `system:auth-delegator` ClusterRole), caching each answer.
pub struct SubjectAccessReviewAuthorizer {
    api: Api<SubjectAccessReview>,
    cache: ReviewCache,
    answers: Mutex<HashMap<String, (bool, Instant)>>,
}

impl SubjectAccessReviewAuthorizer {
    pub fn new(client: kube::Client, cache: ReviewCache) -> Self {
        Self {
            api: Api::all(client),
            cache,
            answers: Mutex::new(HashMap::new()),
        }
    }

    fn cached(&self, key: &str) -> Option<bool> {
        let answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        let (allowed, expires) = answers.get(key)?;
        (Instant::now() < *expires).then_some(*allowed)
    }

    fn remember(&self, key: String, allowed: bool) {
        let ttl = if allowed {
            self.cache.allowed_ttl
        } else {
            self.cache.denied_ttl
        };
        let now = Instant::now();
        let mut answers = self.answers.lock().unwrap_or_else(PoisonError::into_inner);
        if answers.len() >= self.cache.capacity {
            answers.retain(|_, (_, expires)| *expires > now);
            if answers.len() >= self.cache.capacity {
                answers.clear();
            }
        }
        answers.insert(key, (allowed, now + ttl));
    }
}

impl Authorizer for SubjectAccessReviewAuthorizer {
    async fn allowed(
        &self,
        user: &UserInfo,
        attributes: &Attributes,
    ) -> Result<bool, AuthorizeError> {
        let spec = review_spec(user, attributes);
        let key = serde_json::to_string(&spec)?;
        if let Some(allowed) = self.cached(&key) {
            return Ok(allowed);
        }
        let review = SubjectAccessReview {
            spec,
            ..SubjectAccessReview::default()
        };
        let answer = tokio::time::timeout(
            self.cache.timeout,
            self.api.create(&PostParams::default(), &review),
        )
        .await
        .map_err(|_| AuthorizeError::Timeout {
            user: user.name.clone(),
            timeout: self.cache.timeout,
        })?
        .map_err(|source| AuthorizeError::Review {
            user: user.name.clone(),
            source,
        })?;
        // `allowed` decides; `denied` only matters to authoriser chains, which end here.
        let allowed = answer.status.is_some_and(|s| s.allowed);
        self.remember(key, allowed);
        Ok(allowed)
    }
}
