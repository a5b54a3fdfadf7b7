//! Error replies: `metav1.Status` bodies with the codes, reasons and messages the apiserver and
//! the custom-metrics-apiserver library use (`k8s.io/apimachinery/pkg/api/errors`,
//! `sigs.k8s.io/custom-metrics-apiserver/pkg/provider/errors.go`,
//! `k8s.io/apiserver/pkg/endpoints/handlers/responsewriters`).

use std::fmt;

use axum::{
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};

use super::{
    request_info::Attributes,
    types::{self, Status, StatusCause, StatusDetails},
};

/// A failed request, answered with a `metav1.Status` (boxed: errors travel in `Result`s).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatusError {
    pub status: Box<Status>,
}

impl From<Status> for StatusError {
    fn from(status: Status) -> Self {
        Self {
            status: Box::new(status),
        }
    }
}

impl StatusError {
    /// `provider.NewMetricNotFoundError`: "the server could not find the metric X for pods".
    pub fn metric_not_found(resource: &str, metric: &str) -> Self {
        Self::not_found_with(format!(
            "the server could not find the metric {metric} for {resource}"
        ))
    }

    /// `provider.NewMetricNotFoundForError`: "... for pods web-1".
    pub fn metric_not_found_for(resource: &str, metric: &str, name: &str) -> Self {
        Self::not_found_with(format!(
            "the server could not find the metric {metric} for {resource} {name}"
        ))
    }

    /// `provider.NewExternalMetricNotFoundError`.
    pub fn external_metric_not_found(metric: &str) -> Self {
        Self::not_found_with(format!(
            "the server could not find the metric {metric} for provided labels"
        ))
    }

    /// A path no route serves. (The apiserver's own mux answers these with a plain-text
    /// `404 page not found`; a Status says the same in the API's own terms.)
    pub fn not_found() -> Self {
        Self::not_found_with("the server could not find the requested resource".to_owned())
    }

    fn not_found_with(message: String) -> Self {
        Self::from(Status::failure(404, "NotFound", message))
    }

    /// `errors.NewBadRequest`.
    pub fn bad_request(message: impl Into<String>) -> Self {
        Self::from(Status::failure(400, "BadRequest", message))
    }

    /// What the apiserver answers a request it could not authenticate.
    pub fn unauthorized() -> Self {
        Self::from(Status::failure(401, "Unauthorized", "Unauthorized"))
    }

    /// `responsewriters.Forbidden`: `errors.NewForbidden` with the authoriser's message.
    pub fn forbidden(user: &str, attributes: &Attributes) -> Self {
        let (message, details) = match attributes {
            Attributes::NonResource(n) => (
                format!(
                    "forbidden: User {user:?} cannot {} path {:?}",
                    n.verb, n.path
                ),
                StatusDetails::default(),
            ),
            Attributes::Resource(r) => {
                let mut resource = r.resource.clone();
                if !r.subresource.is_empty() {
                    resource = format!("{resource}/{}", r.subresource);
                }
                let scope = if r.namespace.is_empty() {
                    "at the cluster scope".to_owned()
                } else {
                    format!("in the namespace {:?}", r.namespace)
                };
                let reason = format!(
                    "User {user:?} cannot {} resource {resource:?} in API group {:?} {scope}",
                    r.verb, r.group
                );
                // schema.GroupResource.String(): "resource.group", or "resource" without group.
                let qualified = if r.group.is_empty() {
                    r.resource.clone()
                } else {
                    format!("{}.{}", r.resource, r.group)
                };
                let message = match (qualified.is_empty(), r.name.is_empty()) {
                    (true, _) => format!("forbidden: {reason}"),
                    (false, true) => format!("{qualified} is forbidden: {reason}"),
                    (false, false) => format!("{qualified} {:?} is forbidden: {reason}", r.name),
                };
                let details = StatusDetails {
                    name: r.name.clone(),
                    group: r.group.clone(),
                    kind: r.resource.clone(),
                    ..StatusDetails::default()
                };
                (message, details)
            }
        };
        let mut status = Status::failure(403, "Forbidden", message);
        status.details = Some(details);
        Self::from(status)
    }

    /// `errors.NewInternalError`.
    pub fn internal(error: &dyn fmt::Display) -> Self {
        let mut status = Status::failure(
            500,
            "InternalError",
            format!("Internal error occurred: {error}"),
        );
        status.details = Some(StatusDetails {
            causes: vec![StatusCause {
                message: error.to_string(),
                ..StatusCause::default()
            }],
            ..StatusDetails::default()
        });
        Self::from(status)
    }

    /// A method other than GET on a read-only API.
    pub fn method_not_allowed() -> Self {
        Self::from(Status::failure(
            405,
            "MethodNotAllowed",
            "the server does not allow this method on the requested resource",
        ))
    }

    pub fn code(&self) -> StatusCode {
        u16::try_from(self.status.code)
            .ok()
            .and_then(|code| StatusCode::from_u16(code).ok())
            .unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
    }
}

impl fmt::Display for StatusError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.status.message, self.status.code)
    }
}

impl std::error::Error for StatusError {}

impl IntoResponse for StatusError {
    fn into_response(self) -> Response {
        let code = self.code();
        let mut response = json_response(code, &*self.status);
        if code == StatusCode::METHOD_NOT_ALLOWED {
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
        }
        response
    }
}

/// A JSON reply as the apiserver writes it (see [`types::encode`]).
pub fn json_response<T: serde::Serialize>(code: StatusCode, body: &T) -> Response {
    match types::encode(body) {
        Ok(bytes) => (
            code,
            [(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/json"),
            )],
            bytes,
        )
            .into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("encoding the reply failed: {error}\n"),
        )
            .into_response(),
    }
}
