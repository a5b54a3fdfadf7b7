//! Golden replies for every endpoint, both custom metrics versions: each expected body is the
//! JSON the Go types write for the same values, by hand from their struct tags (see `types.rs`
//! for the tag of every field): v1beta1 `metricName` + `window` + `selector: null`; v1beta2
//! `metric: {name, selector: null}` + `windowSeconds`; `metadata: {}`; `describedObject.apiVersion`
//! `"/v1"` as `helpers.ReferenceFor` writes it; values as canonical Quantities.

use axum::{
    body::{Body, to_bytes},
    http::{HeaderValue, Method, Request, StatusCode, header},
};
use tower::ServiceExt as _;

use super::*;
use crate::tests::fixture::{call, fixture};

fn app() -> Router {
    router(fixture(), ApiOptions::default())
}

async fn get(uri: &str) -> (StatusCode, String) {
    call(app(), Method::GET, uri).await
}

/// `expected` is compact JSON; the apiserver ends its body with a newline.
async fn assert_golden(uri: &str, status: StatusCode, expected: &str) {
    let (actual_status, body) = get(uri).await;
    assert_eq!(actual_status, status, "{uri}: {body}");
    assert_eq!(body, format!("{expected}\n"), "{uri}");
}

const CUSTOM_VERSIONS: &str = r#""versions":[{"groupVersion":"custom.metrics.k8s.io/v1beta2","version":"v1beta2"},{"groupVersion":"custom.metrics.k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"custom.metrics.k8s.io/v1beta2","version":"v1beta2"}"#;
const EXTERNAL_VERSIONS: &str = r#""versions":[{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}],"preferredVersion":{"groupVersion":"external.metrics.k8s.io/v1beta1","version":"v1beta1"}"#;

#[tokio::test]
async fn group_list() {
    assert_golden(
        "/apis",
        StatusCode::OK,
        &format!(
            r#"{{"kind":"APIGroupList","apiVersion":"v1","groups":[{{"name":"custom.metrics.k8s.io",{CUSTOM_VERSIONS}}},{{"name":"external.metrics.k8s.io",{EXTERNAL_VERSIONS}}}]}}"#
        ),
    )
    .await;
}

#[tokio::test]
async fn groups() {
    assert_golden(
        "/apis/custom.metrics.k8s.io",
        StatusCode::OK,
        &format!(
            r#"{{"kind":"APIGroup","apiVersion":"v1","name":"custom.metrics.k8s.io",{CUSTOM_VERSIONS}}}"#
        ),
    )
    .await;
    assert_golden(
        "/apis/external.metrics.k8s.io",
        StatusCode::OK,
        &format!(
            r#"{{"kind":"APIGroup","apiVersion":"v1","name":"external.metrics.k8s.io",{EXTERNAL_VERSIONS}}}"#
        ),
    )
    .await;
}

#[tokio::test]
async fn custom_resource_lists_both_versions() {
    // resource_lister.go: "{resource}/{metric}", singularName "", kind MetricValueList,
    // verbs [get]; namespace metrics are not namespaced.
    let resources = concat!(
        r#""resources":["#,
        r#"{"name":"pods/http_requests_per_second","singularName":"","namespaced":true,"kind":"MetricValueList","verbs":["get"]},"#,
        r#"{"name":"namespaces/http_requests_per_second","singularName":"","namespaced":false,"kind":"MetricValueList","verbs":["get"]},"#,
        r#"{"name":"pods/http_request_duration_seconds_p95","singularName":"","namespaced":true,"kind":"MetricValueList","verbs":["get"]},"#,
        r#"{"name":"pods/http_requests_concurrency","singularName":"","namespaced":true,"kind":"MetricValueList","verbs":["get"]},"#,
        r#"{"name":"namespaces/http_requests_concurrency","singularName":"","namespaced":false,"kind":"MetricValueList","verbs":["get"]},"#,
        r#"{"name":"pods/http_request_bytes_per_second","singularName":"","namespaced":true,"kind":"MetricValueList","verbs":["get"]},"#,
        r#"{"name":"namespaces/http_request_bytes_per_second","singularName":"","namespaced":false,"kind":"MetricValueList","verbs":["get"]}"#,
        "]"
    );
    for version in ["v1beta1", "v1beta2"] {
        assert_golden(
            &format!("/apis/custom.metrics.k8s.io/{version}"),
            StatusCode::OK,
            &format!(
                r#"{{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"custom.metrics.k8s.io/{version}",{resources}}}"#
            ),
        )
        .await;
    }
}

#[tokio::test]
async fn external_resource_list() {
    assert_golden(
        "/apis/external.metrics.k8s.io/v1beta1",
        StatusCode::OK,
        concat!(
            r#"{"kind":"APIResourceList","apiVersion":"v1","groupVersion":"external.metrics.k8s.io/v1beta1","resources":["#,
            r#"{"name":"http_requests_per_second","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]},"#,
            r#"{"name":"http_requests_concurrency","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]},"#,
            r#"{"name":"http_request_bytes_per_second","singularName":"","namespaced":true,"kind":"ExternalMetricValueList","verbs":["get"]}"#,
            "]}"
        ),
    )
    .await;
}

/// The HPA's call for a Pods metric, verbatim (`*` percent-encoded).
const HPA_QUERY: &str =
    "namespaces/default/pods/%2A/http_requests_per_second?labelSelector=app%3Dweb";

#[tokio::test]
async fn pods_by_selector_v1beta1() {
    assert_golden(
        &format!("/apis/custom.metrics.k8s.io/v1beta1/{HPA_QUERY}"),
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"},"metricName":"http_requests_per_second","timestamp":"2024-01-29T18:21:27Z","window":30,"value":"25500m","selector":null},"#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-2","apiVersion":"/v1"},"metricName":"http_requests_per_second","timestamp":"2024-01-29T18:21:22Z","window":30,"value":"24500m","selector":null}"#,
            "]}"
        ),
    )
    .await;
}

#[tokio::test]
async fn pods_by_selector_v1beta2() {
    assert_golden(
        &format!("/apis/custom.metrics.k8s.io/v1beta2/{HPA_QUERY}"),
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"},"metric":{"name":"http_requests_per_second","selector":null},"timestamp":"2024-01-29T18:21:27Z","windowSeconds":30,"value":"25500m"},"#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-2","apiVersion":"/v1"},"metric":{"name":"http_requests_per_second","selector":null},"timestamp":"2024-01-29T18:21:22Z","windowSeconds":30,"value":"24500m"}"#,
            "]}"
        ),
    )
    .await;
}

#[tokio::test]
async fn wildcard_without_selector_lists_every_pod_with_a_value() {
    let (status, body) = get(
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/*/http_requests_per_second",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = ["db-1", "web-1", "web-2", "web-3"]
        .into_iter()
        .filter(|n| body.contains(&format!("\"name\":\"{n}\"")))
        .collect();
    assert_eq!(
        names,
        ["db-1", "web-1", "web-2"],
        "web-3 has no sample: {body}"
    );
    // A selector nobody matches is an empty list, not an error.
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/%2A/http_requests_per_second?labelSelector=app%3Dnone",
        StatusCode::OK,
        r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":[]}"#,
    )
    .await;
}

#[tokio::test]
async fn one_pod_both_versions() {
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/web-1/http_request_duration_seconds_p95",
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"},"metricName":"http_request_duration_seconds_p95","timestamp":"2024-01-29T18:21:27Z","window":30,"value":"12m","selector":null}"#,
            "]}"
        ),
    )
    .await;
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/web-2/http_requests_per_second",
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-2","apiVersion":"/v1"},"metric":{"name":"http_requests_per_second","selector":null},"timestamp":"2024-01-29T18:21:22Z","windowSeconds":30,"value":"24500m"}"#,
            "]}"
        ),
    )
    .await;
}

#[tokio::test]
async fn namespace_metric_both_paths_both_versions() {
    // 25.5 + 24.5 + 3 = 53 req/s; the oldest sample's timestamp; the Namespace has no namespace.
    let v1beta1 = concat!(
        r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
        r#"{"describedObject":{"kind":"Namespace","name":"default","apiVersion":"/v1"},"metricName":"http_requests_per_second","timestamp":"2024-01-29T18:21:22Z","window":30,"value":"53","selector":null}"#,
        "]}"
    );
    let v1beta2 = concat!(
        r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":["#,
        r#"{"describedObject":{"kind":"Namespace","name":"default","apiVersion":"/v1"},"metric":{"name":"http_requests_per_second","selector":null},"timestamp":"2024-01-29T18:21:22Z","windowSeconds":30,"value":"53"}"#,
        "]}"
    );
    for (version, expected) in [("v1beta1", v1beta1), ("v1beta2", v1beta2)] {
        for path in [
            "namespaces/default/metrics/http_requests_per_second",
            "namespaces/default/http_requests_per_second",
        ] {
            assert_golden(
                &format!("/apis/custom.metrics.k8s.io/{version}/{path}"),
                StatusCode::OK,
                expected,
            )
            .await;
        }
    }
}

#[tokio::test]
async fn metric_label_selector_is_echoed_in_both_versions() {
    // route!=login selects label-less series; it is echoed as ParseToLabelSelector builds it.
    let query = "namespaces/default/pods/web-1/http_requests_per_second?metricLabelSelector=route%21%3Dlogin";
    let echoed = r#"{"matchExpressions":[{"key":"route","operator":"NotIn","values":["login"]}]}"#;
    assert_golden(
        &format!("/apis/custom.metrics.k8s.io/v1beta1/{query}"),
        StatusCode::OK,
        &format!(
            r#"{{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{{}},"items":[{{"describedObject":{{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"}},"metricName":"http_requests_per_second","timestamp":"2024-01-29T18:21:27Z","window":30,"value":"25500m","selector":{echoed}}}]}}"#
        ),
    )
    .await;
    assert_golden(
        &format!("/apis/custom.metrics.k8s.io/v1beta2/{query}"),
        StatusCode::OK,
        &format!(
            r#"{{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{{}},"items":[{{"describedObject":{{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"}},"metric":{{"name":"http_requests_per_second","selector":{echoed}}},"timestamp":"2024-01-29T18:21:27Z","windowSeconds":30,"value":"25500m"}}]}}"#
        ),
    )
    .await;
    // Series carry no labels: a selector that requires one selects nothing.
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/%2A/http_requests_per_second?metricLabelSelector=route%3Dlogin",
        StatusCode::OK,
        r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{},"items":[]}"#,
    )
    .await;
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/web-1/http_requests_per_second?metricLabelSelector=route%3Dlogin",
        StatusCode::NOT_FOUND,
        r#"{"kind":"Status","apiVersion":"v1","metadata":{},"status":"Failure","message":"the server could not find the metric http_requests_per_second for pods web-1","reason":"NotFound","code":404}"#,
    )
    .await;
}

#[tokio::test]
async fn external_metric_is_the_total_over_the_selected_pods() {
    assert_golden(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second?labelSelector=app%3Dweb",
        StatusCode::OK,
        concat!(
            r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
            r#"{"metricName":"http_requests_per_second","metricLabels":{"app":"web"},"timestamp":"2024-01-29T18:21:22Z","window":30,"value":"50"}"#,
            "]}"
        ),
    )
    .await;
    assert_golden(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/other/http_requests_per_second",
        StatusCode::OK,
        concat!(
            r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
            r#"{"metricName":"http_requests_per_second","metricLabels":{},"timestamp":"2024-01-29T18:21:27Z","window":30,"value":"1"}"#,
            "]}"
        ),
    )
    .await;
}

/// The HPA's call for the concurrency of app=web's pods, both versions.
const CONCURRENCY_QUERY: &str =
    "namespaces/default/pods/%2A/http_requests_concurrency?labelSelector=app%3Dweb";

#[tokio::test]
async fn concurrency_per_pod_both_versions_without_pods_whose_agent_has_none() {
    // web-1 averaged 1.2345 requests in flight: 1234m, truncated as the other metrics are. web-2's
    // agent answered `concurrency: null`: it is left out (missing to the HPA), not served as 0.
    assert_golden(
        &format!("/apis/custom.metrics.k8s.io/v1beta1/{CONCURRENCY_QUERY}"),
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"},"metricName":"http_requests_concurrency","timestamp":"2024-01-29T18:21:27Z","window":30,"value":"1234m","selector":null}"#,
            "]}"
        ),
    )
    .await;
    assert_golden(
        &format!("/apis/custom.metrics.k8s.io/v1beta2/{CONCURRENCY_QUERY}"),
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"},"metric":{"name":"http_requests_concurrency","selector":null},"timestamp":"2024-01-29T18:21:27Z","windowSeconds":30,"value":"1234m"}"#,
            "]}"
        ),
    )
    .await;
    // Every pod of the namespace with a value, without a selector.
    let (status, body) = get(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests_concurrency",
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let names: Vec<_> = ["db-1", "web-1", "web-2", "web-3"]
        .into_iter()
        .filter(|n| body.contains(&format!("\"name\":\"{n}\"")))
        .collect();
    assert_eq!(names, ["db-1", "web-1"], "{body}");
    assert!(body.contains(r#""value":"500m""#), "{body}");
}

#[tokio::test]
async fn one_pod_concurrency_both_versions_and_not_found_when_null() {
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/db-1/http_requests_concurrency",
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"db-1","apiVersion":"/v1"},"metricName":"http_requests_concurrency","timestamp":"2024-01-29T18:21:27Z","window":30,"value":"500m","selector":null}"#,
            "]}"
        ),
    )
    .await;
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/db-1/http_requests_concurrency",
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"db-1","apiVersion":"/v1"},"metric":{"name":"http_requests_concurrency","selector":null},"timestamp":"2024-01-29T18:21:27Z","windowSeconds":30,"value":"500m"}"#,
            "]}"
        ),
    )
    .await;
    for version in ["v1beta1", "v1beta2"] {
        assert_golden(
            &format!(
                "/apis/custom.metrics.k8s.io/{version}/namespaces/default/pods/web-2/http_requests_concurrency"
            ),
            StatusCode::NOT_FOUND,
            &not_found(
                "the server could not find the metric http_requests_concurrency for pods web-2",
            ),
        )
        .await;
    }
}

#[tokio::test]
async fn request_bytes_per_pod_both_versions() {
    let query = "namespaces/default/pods/%2A/http_request_bytes_per_second?labelSelector=app%3Dweb";
    assert_golden(
        &format!("/apis/custom.metrics.k8s.io/v1beta1/{query}"),
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"},"metricName":"http_request_bytes_per_second","timestamp":"2024-01-29T18:21:27Z","window":30,"value":"2048500m","selector":null},"#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-2","apiVersion":"/v1"},"metricName":"http_request_bytes_per_second","timestamp":"2024-01-29T18:21:22Z","window":30,"value":"12k","selector":null}"#,
            "]}"
        ),
    )
    .await;
    assert_golden(
        &format!("/apis/custom.metrics.k8s.io/v1beta2/{query}"),
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-1","apiVersion":"/v1"},"metric":{"name":"http_request_bytes_per_second","selector":null},"timestamp":"2024-01-29T18:21:27Z","windowSeconds":30,"value":"2048500m"},"#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"web-2","apiVersion":"/v1"},"metric":{"name":"http_request_bytes_per_second","selector":null},"timestamp":"2024-01-29T18:21:22Z","windowSeconds":30,"value":"12k"}"#,
            "]}"
        ),
    )
    .await;
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/db-1/http_request_bytes_per_second",
        StatusCode::OK,
        concat!(
            r#"{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{},"items":["#,
            r#"{"describedObject":{"kind":"Pod","namespace":"default","name":"db-1","apiVersion":"/v1"},"metric":{"name":"http_request_bytes_per_second","selector":null},"timestamp":"2024-01-29T18:21:27Z","windowSeconds":30,"value":"300"}"#,
            "]}"
        ),
    )
    .await;
}

#[tokio::test]
async fn concurrency_and_request_bytes_add_up_per_namespace_and_as_external_metrics() {
    // Concurrency: 1234m + 500m (web-2 has none and adds nothing); bytes: 2048500m + 12k + 300.
    for (metric, timestamp, value) in [
        ("http_requests_concurrency", "2024-01-29T18:21:27Z", "1734m"),
        (
            "http_request_bytes_per_second",
            "2024-01-29T18:21:22Z",
            "14348500m",
        ),
    ] {
        let v1beta1 = format!(
            r#"{{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta1","metadata":{{}},"items":[{{"describedObject":{{"kind":"Namespace","name":"default","apiVersion":"/v1"}},"metricName":"{metric}","timestamp":"{timestamp}","window":30,"value":"{value}","selector":null}}]}}"#
        );
        let v1beta2 = format!(
            r#"{{"kind":"MetricValueList","apiVersion":"custom.metrics.k8s.io/v1beta2","metadata":{{}},"items":[{{"describedObject":{{"kind":"Namespace","name":"default","apiVersion":"/v1"}},"metric":{{"name":"{metric}","selector":null}},"timestamp":"{timestamp}","windowSeconds":30,"value":"{value}"}}]}}"#
        );
        for (version, expected) in [("v1beta1", &v1beta1), ("v1beta2", &v1beta2)] {
            assert_golden(
                &format!(
                    "/apis/custom.metrics.k8s.io/{version}/namespaces/default/metrics/{metric}"
                ),
                StatusCode::OK,
                expected,
            )
            .await;
        }
    }
    assert_golden(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_concurrency?labelSelector=app%3Dweb",
        StatusCode::OK,
        concat!(
            r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
            r#"{"metricName":"http_requests_concurrency","metricLabels":{"app":"web"},"timestamp":"2024-01-29T18:21:27Z","window":30,"value":"1234m"}"#,
            "]}"
        ),
    )
    .await;
    assert_golden(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_request_bytes_per_second?labelSelector=app%3Dweb",
        StatusCode::OK,
        concat!(
            r#"{"kind":"ExternalMetricValueList","apiVersion":"external.metrics.k8s.io/v1beta1","metadata":{},"items":["#,
            r#"{"metricName":"http_request_bytes_per_second","metricLabels":{"app":"web"},"timestamp":"2024-01-29T18:21:22Z","window":30,"value":"14048500m"}"#,
            "]}"
        ),
    )
    .await;
}

fn not_found(message: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{message}","reason":"NotFound","code":404}}"#
    )
}

fn bad_request(message: &str) -> String {
    format!(
        r#"{{"kind":"Status","apiVersion":"v1","metadata":{{}},"status":"Failure","message":"{message}","reason":"BadRequest","code":400}}"#
    )
}

#[tokio::test]
async fn unknown_metrics_and_objects_are_not_found() {
    let cases = [
        (
            // Three segments are the root-scoped route: namespace default, "metric" pods.
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods",
            "the server could not find the metric pods for namespaces",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/%2A/nope",
            "the server could not find the metric nope for pods",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/ghost/http_requests_per_second",
            "the server could not find the metric http_requests_per_second for pods ghost",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/web-3/http_requests_per_second",
            "the server could not find the metric http_requests_per_second for pods web-3",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/services/web/http_requests_per_second",
            "the server could not find the metric http_requests_per_second for services",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta1/nodes/n1/http_requests_per_second",
            "the server could not find the metric http_requests_per_second for nodes",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/metrics/http_request_duration_seconds_p95",
            "the server could not find the metric http_request_duration_seconds_p95 for namespaces",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/empty/metrics/http_requests_per_second",
            "the server could not find the metric http_requests_per_second for namespaces empty",
        ),
        (
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_request_duration_seconds_p95",
            "the server could not find the metric http_request_duration_seconds_p95 for provided labels",
        ),
        (
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second?labelSelector=app%3Dnone",
            "the server could not find the metric http_requests_per_second for provided labels",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/services/web/http_requests_concurrency",
            "the server could not find the metric http_requests_concurrency for services",
        ),
        (
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/web-3/http_request_bytes_per_second",
            "the server could not find the metric http_request_bytes_per_second for pods web-3",
        ),
        (
            // Only x, whose agent answered no concurrency, lives in `other`.
            "/apis/custom.metrics.k8s.io/v1beta2/namespaces/other/metrics/http_requests_concurrency",
            "the server could not find the metric http_requests_concurrency for namespaces other",
        ),
        (
            "/apis/external.metrics.k8s.io/v1beta1/namespaces/other/http_request_bytes_per_second",
            "the server could not find the metric http_request_bytes_per_second for provided labels",
        ),
    ];
    for (uri, message) in cases {
        assert_golden(uri, StatusCode::NOT_FOUND, &not_found(message)).await;
    }
}

#[tokio::test]
async fn unknown_paths_are_not_found() {
    for uri in [
        "/",
        "/api",
        "/apis/foo.example.com",
        "/apis/custom.metrics.k8s.io/v1beta3",
        "/apis/custom.metrics.k8s.io/v1beta3/namespaces/default/pods/%2A/http_requests_per_second",
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/%2A",
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/a/b/c",
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces//pods/%2A/http_requests_per_second",
        "/apis/external.metrics.k8s.io/v1beta2",
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default",
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/m/extra",
    ] {
        assert_golden(
            uri,
            StatusCode::NOT_FOUND,
            &not_found("the server could not find the requested resource"),
        )
        .await;
    }
}

#[tokio::test]
async fn malformed_selectors_and_escapes_are_bad_requests() {
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/%2A/http_requests_per_second?labelSelector=app+in+web",
        StatusCode::BAD_REQUEST,
        &bad_request(
            r#"invalid labelSelector \"app in web\": unable to parse requirement: found 'web' expected: '('"#,
        ),
    )
    .await;
    assert_golden(
        "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/web-1/http_requests_per_second?metricLabelSelector=a%3Db%2C",
        StatusCode::BAD_REQUEST,
        &bad_request(
            r#"invalid metricLabelSelector \"a=b,\": found '', expected: identifier after ','"#,
        ),
    )
    .await;
    // Selectors are checked before the metric: a bad one on an unknown metric is still a 400.
    let (status, _) = get(
        "/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/%2A/nope?labelSelector=%3D",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = get(
        "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second?labelSelector=x%3E",
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) =
        get("/apis/custom.metrics.k8s.io/v1beta1/namespaces/default/pods/%zz/m").await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body.contains("\"reason\":\"BadRequest\""), "{body}");
}

#[tokio::test]
async fn only_get_and_head_are_allowed() {
    let uri = format!("/apis/custom.metrics.k8s.io/v1beta1/{HPA_QUERY}");
    for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
        let response = app()
            .oneshot(
                Request::builder()
                    .method(method.clone())
                    .uri(&uri)
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        assert_eq!(
            response.status(),
            StatusCode::METHOD_NOT_ALLOWED,
            "{method}"
        );
        assert_eq!(
            response
                .headers()
                .get(header::ALLOW)
                .map(HeaderValue::as_bytes),
            Some(&b"GET, HEAD"[..])
        );
        let body = to_bytes(response.into_body(), usize::MAX)
            .await
            .expect("body");
        assert_eq!(
            body,
            "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"the server does not allow this method on the requested resource\",\"reason\":\"MethodNotAllowed\",\"code\":405}\n"
        );
    }
    let (status, body) = call(app(), Method::HEAD, &uri).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, ""));
}

#[tokio::test]
async fn health_probes_answer_ok() {
    for uri in ["/healthz", "/readyz", "/livez"] {
        assert_eq!(
            call(app(), Method::GET, uri).await,
            (StatusCode::OK, "ok".to_owned())
        );
    }
}

#[tokio::test]
async fn readyz_is_503_with_the_reason_until_collected_and_once_stopping() {
    // Plain text, as kube-apiserver's own /readyz: the kubelet reads only the status.
    async fn readyz(app: &Router) -> (StatusCode, String) {
        let response = app
            .clone()
            .oneshot(
                Request::get("/readyz")
                    .body(Body::empty())
                    .expect("request"),
            )
            .await
            .expect("infallible");
        let status = response.status();
        let body = to_bytes(response.into_body(), 1 << 10).await.expect("body");
        (status, String::from_utf8_lossy(&body).into_owned())
    }
    let readiness = Readiness::starting();
    let app = router(
        fixture(),
        ApiOptions {
            readiness: readiness.clone(),
            ..ApiOptions::default()
        },
    );
    assert_eq!(
        readyz(&app).await,
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "no collection has read a node agent yet".to_owned()
        )
    );
    readiness.ready();
    assert_eq!(readyz(&app).await, (StatusCode::OK, "ok".to_owned()));
    readiness.stopping();
    assert_eq!(
        readyz(&app).await,
        (StatusCode::SERVICE_UNAVAILABLE, "shutting down".to_owned())
    );
    // Still serving while it stops: liveness, and the metrics themselves.
    assert_eq!(
        call(app.clone(), Method::GET, "/livez").await.0,
        StatusCode::OK
    );
    let (status, _) = call(
        app,
        Method::GET,
        &format!("/apis/custom.metrics.k8s.io/v1beta2/{HPA_QUERY}"),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn external_metrics_can_be_switched_off() {
    let app = router(
        fixture(),
        ApiOptions {
            external_metrics: false,
            ..ApiOptions::default()
        },
    );
    let (status, body) = call(app.clone(), Method::GET, "/apis").await;
    assert_eq!(status, StatusCode::OK);
    assert!(!body.contains("external"), "{body}");
    let (status, _) = call(app, Method::GET, "/apis/external.metrics.k8s.io/v1beta1").await;
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn served_values_feed_the_hpa_model_as_the_design_card_computes_them() {
    // The HPA reads MilliValue() of each item: 25500 and 24500, average 25000m = 25 req/s per
    // pod, which against a 25 req/s target is a ratio of exactly 1 (no scaling).
    let (_, body) = get(&format!("/apis/custom.metrics.k8s.io/v1beta2/{HPA_QUERY}")).await;
    let list: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    let milli: Vec<i64> = list["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|item| {
            crate::quantity::Quantity::parse(item["value"].as_str().expect("value"))
                .expect("a Quantity")
                .milli()
        })
        .collect();
    assert_eq!(milli, [25_500, 24_500]);
    assert_eq!(milli.iter().sum::<i64>() / 2, 25_000);
}
