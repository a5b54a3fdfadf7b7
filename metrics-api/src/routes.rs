//! The HTTP surface: an axum [`Router`] serving discovery, the custom metrics API (v1beta1 and
//! v1beta2, the same paths as custom-metrics-apiserver's `cmhandlers.go`), the external metrics
//! API (v1beta1) and health probes. It authenticates nobody: wrap it with [`super::auth::protect`].
//!
//! Paths under `/apis/custom.metrics.k8s.io/{version}/`, percent-decoded first (`%2A` is `*`):
//! - `namespaces/{ns}/pods/*/{metric}?labelSelector=&metricLabelSelector=`: every pod picked;
//! - `namespaces/{ns}/pods/{name}/{metric}`: one pod, still a list (of one);
//! - `namespaces/{ns}/metrics/{metric}` and the root-scoped `namespaces/{ns}/{metric}`: the
//!   namespace's total (go-restful routes the latter to the root-scoped handler, which serves
//!   the same Namespace object);
//! - any other `{resource}`: 404 "the server could not find the metric X for {resource}".
//!
//! Errors: a malformed selector or escape is 400 BadRequest, an unknown metric, object or path
//! 404 NotFound, a method other than GET/HEAD 405 MethodNotAllowed, all as `metav1.Status`.

use std::sync::Arc;

use axum::{
    Router,
    extract::State,
    http::{StatusCode, Uri},
    response::Response,
    routing::get,
};

use super::{
    Readiness,
    discovery::{self, CustomVersion},
    selector::Selector,
    source::MetricsSource,
    status::{StatusError, json_response},
    types::{List, ListMeta},
    uri, values,
};

/// What the router serves besides the custom metrics API.
#[derive(Clone, Debug)]
pub struct ApiOptions {
    /// Serve `external.metrics.k8s.io/v1beta1` (namespace and workload totals) and list it in
    /// `/apis`. Register its APIService only if this is on.
    pub external_metrics: bool,
    /// What `/readyz` answers.
    pub readiness: Readiness,
}

impl Default for ApiOptions {
    fn default() -> Self {
        Self {
            // The external API adds workload totals at no cost; serving it is harmless when no
            // APIService routes to it.
            external_metrics: true,
            readiness: Readiness::default(),
        }
    }
}

#[derive(Clone)]
struct Api {
    source: Arc<dyn MetricsSource>,
    options: ApiOptions,
}

/// Every route of the metrics API server, unauthenticated.
pub fn router(source: Arc<dyn MetricsSource>, options: ApiOptions) -> Router {
    let mut router = Router::new()
        .route("/healthz", get(ok))
        .route("/readyz", get(readyz))
        .route("/livez", get(ok))
        .route("/apis", get(group_list))
        .route("/apis/custom.metrics.k8s.io", get(custom_group))
        .route("/apis/custom.metrics.k8s.io/", get(custom_group))
        .route(
            "/apis/custom.metrics.k8s.io/{version}",
            get(custom_resources),
        )
        .route(
            "/apis/custom.metrics.k8s.io/{version}/{*rest}",
            get(custom_metric),
        );
    if options.external_metrics {
        router = router
            .route("/apis/external.metrics.k8s.io", get(external_group))
            .route("/apis/external.metrics.k8s.io/", get(external_group))
            .route(
                "/apis/external.metrics.k8s.io/{version}",
                get(external_resources),
            )
            .route(
                "/apis/external.metrics.k8s.io/{version}/{*rest}",
                get(external_metric),
            );
    }
    router
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(Api { source, options })
}

async fn ok() -> &'static str {
    "ok"
}

/// 200 `ok`, or 503 with the reason (starting, or shutting down).
async fn readyz(State(api): State<Api>) -> (StatusCode, &'static str) {
    match api.options.readiness.check() {
        Ok(()) => (StatusCode::OK, "ok"),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

async fn not_found() -> StatusError {
    StatusError::not_found()
}

async fn method_not_allowed() -> StatusError {
    StatusError::method_not_allowed()
}

async fn group_list(State(api): State<Api>) -> Response {
    json_response(
        StatusCode::OK,
        &discovery::group_list(api.options.external_metrics),
    )
}

async fn custom_group() -> Response {
    json_response(
        StatusCode::OK,
        &discovery::standalone(discovery::custom_group()),
    )
}

async fn external_group() -> Response {
    json_response(
        StatusCode::OK,
        &discovery::standalone(discovery::external_group()),
    )
}

/// The decoded segments of the request path.
fn path_segments(uri: &Uri) -> Result<Vec<String>, StatusError> {
    let path = uri::decode_path(uri.path()).map_err(|e| StatusError::bad_request(e.to_string()))?;
    Ok(uri::segments(&path)
        .into_iter()
        .map(str::to_owned)
        .collect())
}

async fn custom_resources(State(api): State<Api>, uri: Uri) -> Result<Response, StatusError> {
    let segments = path_segments(&uri)?;
    let version = segments
        .get(2)
        .and_then(|v| CustomVersion::parse(v))
        .ok_or_else(StatusError::not_found)?;
    Ok(json_response(
        StatusCode::OK,
        &discovery::custom_resources(version, api.source.metrics()),
    ))
}

async fn external_resources(State(api): State<Api>, uri: Uri) -> Result<Response, StatusError> {
    let segments = path_segments(&uri)?;
    if segments.get(2).map(String::as_str) != Some(discovery::EXTERNAL_VERSION) {
        return Err(StatusError::not_found());
    }
    Ok(json_response(
        StatusCode::OK,
        &discovery::external_resources(api.source.metrics()),
    ))
}

/// `labelSelector`/`metricLabelSelector`: absent is everything, malformed is 400.
fn selector_param(uri: &Uri, name: &str) -> Result<Selector, StatusError> {
    match uri::query_param(uri.query(), name) {
        None => Ok(Selector::everything()),
        Some(text) => Selector::parse(&text)
            .map_err(|e| StatusError::bad_request(format!("invalid {name} {text:?}: {e}"))),
    }
}

/// What a custom metrics path asks for.
#[derive(Debug, PartialEq, Eq)]
enum CustomQuery<'a> {
    /// `namespaces/{ns}/{resource}/{name}/{metric}`
    Namespaced {
        namespace: &'a str,
        resource: &'a str,
        name: &'a str,
        metric: &'a str,
    },
    /// `namespaces/{ns}/metrics/{metric}`, or root-scoped `namespaces/{ns}/{metric}`.
    Namespace { namespace: &'a str, metric: &'a str },
    /// `{resource}/{name}/{metric}` for a cluster-scoped resource other than namespaces.
    RootScoped { resource: &'a str, metric: &'a str },
}

impl<'a> CustomQuery<'a> {
    /// The segments after `/apis/custom.metrics.k8s.io/{version}`.
    fn parse(rest: &'a [String]) -> Option<Self> {
        if rest.iter().any(String::is_empty) {
            return None;
        }
        Some(match rest {
            [ns, namespace, metrics, metric] if ns == "namespaces" && metrics == "metrics" => {
                CustomQuery::Namespace { namespace, metric }
            }
            [ns, namespace, resource, name, metric] if ns == "namespaces" => {
                CustomQuery::Namespaced {
                    namespace,
                    resource,
                    name,
                    metric,
                }
            }
            [resource, namespace, metric] if resource == "namespaces" => {
                CustomQuery::Namespace { namespace, metric }
            }
            [resource, _name, metric] => CustomQuery::RootScoped { resource, metric },
            _ => return None,
        })
    }
}

async fn custom_metric(State(api): State<Api>, uri: Uri) -> Result<Response, StatusError> {
    let segments = path_segments(&uri)?;
    let version = segments
        .get(2)
        .and_then(|v| CustomVersion::parse(v))
        .ok_or_else(StatusError::not_found)?;
    let query = segments
        .get(3..)
        .and_then(CustomQuery::parse)
        .ok_or_else(StatusError::not_found)?;
    // Selectors are read before the metric is looked up, as the apiserver decodes list options
    // before it calls the provider.
    let selector = selector_param(&uri, "labelSelector")?;
    let metric_selector = selector_param(&uri, "metricLabelSelector")?;
    let source = api.source.as_ref();
    let items = match query {
        CustomQuery::Namespaced {
            namespace,
            resource: "pods",
            name: "*",
            metric,
        } => values::pods_by_selector(source, namespace, metric, &selector, &metric_selector)?,
        CustomQuery::Namespaced {
            namespace,
            resource: "pods",
            name,
            metric,
        } => vec![values::one_pod(
            source,
            namespace,
            name,
            metric,
            &metric_selector,
        )?],
        CustomQuery::Namespace { namespace, metric } => vec![values::namespace_total(
            source,
            namespace,
            metric,
            &metric_selector,
        )?],
        CustomQuery::Namespaced {
            resource, metric, ..
        }
        | CustomQuery::RootScoped { resource, metric } => {
            return Err(StatusError::metric_not_found(resource, metric));
        }
    };
    Ok(match version {
        CustomVersion::V1Beta1 => metric_value_list(
            version,
            items
                .into_iter()
                .map(values::MetricValue::v1beta1)
                .collect(),
        ),
        CustomVersion::V1Beta2 => metric_value_list(
            version,
            items
                .into_iter()
                .map(values::MetricValue::v1beta2)
                .collect(),
        ),
    })
}

fn metric_value_list<T: serde::Serialize>(version: CustomVersion, items: Vec<T>) -> Response {
    json_response(
        StatusCode::OK,
        &List {
            kind: "MetricValueList",
            api_version: version.api_version(),
            metadata: ListMeta {},
            items,
        },
    )
}

/// `namespaces/{ns}/{metric}?labelSelector=`: the total over the pods the selector picks.
async fn external_metric(State(api): State<Api>, uri: Uri) -> Result<Response, StatusError> {
    let segments = path_segments(&uri)?;
    let [_, _, version, ns, namespace, metric] = segments.as_slice() else {
        return Err(StatusError::not_found());
    };
    if version != discovery::EXTERNAL_VERSION
        || ns != "namespaces"
        || namespace.is_empty()
        || metric.is_empty()
    {
        return Err(StatusError::not_found());
    }
    let selector = selector_param(&uri, "labelSelector")?;
    let value = values::external_total(api.source.as_ref(), namespace, metric, &selector)?;
    Ok(json_response(
        StatusCode::OK,
        &List {
            kind: "ExternalMetricValueList",
            api_version: discovery::EXTERNAL_API_VERSION,
            metadata: ListMeta {},
            items: vec![value],
        },
    ))
}

#[cfg(test)]
mod tests;
