//! The request filter chain of an aggregated API server, in the apiserver's order:
//! authenticate (request headers, trusted only behind a verified front-proxy certificate),
//! add `system:authenticated`, authorise (the injected [`Authorizer`], normally a
//! SubjectAccessReview), then serve. Unauthenticated requests get 401, denied ones 403, an
//! authoriser failure 500, all as `metav1.Status`.
//!
//! Two fixed exceptions, the apiserver's defaults for delegated authorisation: `/healthz`,
//! `/readyz` and `/livez` need neither (kubelet probes carry no certificate), and members of
//! `system:masters` are allowed without a review.

use std::sync::Arc;

use axum::{
    Router,
    extract::{Request, State},
    middleware::{self, Next},
    response::{IntoResponse, Response},
};

use super::{
    authorizer::Authorizer,
    request_header::{PeerCertificates, RequestHeaderAuthenticator},
    request_info,
    status::StatusError,
    uri,
};

/// Paths served to anyone (`AlwaysAllowPaths`).
pub const ALWAYS_ALLOW_PATHS: [&str; 3] = ["/healthz", "/readyz", "/livez"];

/// Groups allowed everything without a review (`AlwaysAllowGroups`).
pub const ALWAYS_ALLOW_GROUPS: [&str; 1] = ["system:masters"];

struct Guard<A> {
    authenticator: RequestHeaderAuthenticator,
    authorizer: Arc<A>,
}

impl<A> Clone for Guard<A> {
    fn clone(&self) -> Self {
        Self {
            authenticator: self.authenticator.clone(),
            authorizer: Arc::clone(&self.authorizer),
        }
    }
}

/// `router` behind authentication and authorisation. Every path is covered, unknown ones
/// included: as in the apiserver, an anonymous client learns nothing, not even a 404.
pub fn protect<A: Authorizer>(
    router: Router,
    authenticator: RequestHeaderAuthenticator,
    authorizer: Arc<A>,
) -> Router {
    let guard = Guard {
        authenticator,
        authorizer,
    };
    Router::new()
        .fallback_service(router)
        .layer(middleware::from_fn_with_state(guard, check::<A>))
}

async fn check<A: Authorizer>(
    State(guard): State<Guard<A>>,
    mut request: Request,
    next: Next,
) -> Response {
    let raw_path = request.uri().path();
    if ALWAYS_ALLOW_PATHS.contains(&raw_path) {
        return next.run(request).await;
    }
    let path = match uri::decode_path(raw_path) {
        Ok(path) => path,
        Err(error) => return StatusError::bad_request(error.to_string()).into_response(),
    };
    let user = match guard.authenticator.authenticate(
        request.extensions().get::<PeerCertificates>(),
        request.headers(),
    ) {
        Ok(user) => user,
        Err(error) => {
            tracing::debug!(%path, %error, "unauthenticated request");
            return StatusError::unauthorized().into_response();
        }
    };
    let attributes = request_info::attributes(request.method(), &path, request.uri().query());
    let privileged = user
        .groups
        .iter()
        .any(|g| ALWAYS_ALLOW_GROUPS.contains(&g.as_str()));
    if !privileged {
        match guard.authorizer.allowed(&user, &attributes).await {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!(user = %user.name, ?attributes, "forbidden");
                return StatusError::forbidden(&user.name, &attributes).into_response();
            }
            Err(error) => {
                tracing::warn!(user = %user.name, %error, "authorisation failed");
                return StatusError::internal(&error).into_response();
            }
        }
    }
    request.extensions_mut().insert(user);
    next.run(request).await
}
