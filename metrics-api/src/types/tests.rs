//! Each wire type against the JSON Go writes for the same value, written by hand from the
//! struct tags quoted on the fields (field order is Go's declaration order).

use std::time::Duration;

use super::*;

fn json<T: Serialize>(value: &T) -> String {
    String::from_utf8(encode(value).expect("serialises")).expect("UTF-8")
}

fn at(seconds: u64) -> Time {
    Time(UNIX_EPOCH + Duration::from_secs(seconds))
}

#[test]
fn times_are_rfc3339_utc_seconds() {
    assert_eq!(at(0).rfc3339(), "1970-01-01T00:00:00Z");
    assert_eq!(at(1_706_552_487).rfc3339(), "2024-01-29T18:21:27Z");
    // Leap day, end of a leap year, and the year 2100 (not a leap year).
    assert_eq!(at(951_782_400).rfc3339(), "2000-02-29T00:00:00Z");
    assert_eq!(at(1_735_603_200 + 86_399).rfc3339(), "2024-12-31T23:59:59Z");
    assert_eq!(at(4_107_542_400).rfc3339(), "2100-03-01T00:00:00Z");
    // The fraction is dropped, not rounded (Go's Format).
    assert_eq!(
        Time(UNIX_EPOCH + Duration::from_millis(1_999)).rfc3339(),
        "1970-01-01T00:00:01Z"
    );
    assert_eq!(
        Time(UNIX_EPOCH - Duration::from_millis(500)).rfc3339(),
        "1969-12-31T23:59:59Z"
    );
    assert_eq!(json(&at(0)), "\"1970-01-01T00:00:00Z\"\n");
}

#[test]
fn strings_are_escaped_like_go_encoding_json() {
    assert_eq!(
        json(&"a<b>&c\u{2028}d\u{2029}\"\\\n\u{1}é"),
        "\"a\\u003cb\\u003e\\u0026c\\u2028d\\u2029\\\"\\\\\\n\\u0001é\"\n"
    );
}

fn pod() -> ObjectReference {
    ObjectReference {
        kind: "Pod".into(),
        namespace: "default".into(),
        name: "web-1".into(),
        api_version: "/v1".into(),
        ..ObjectReference::default()
    }
}

#[test]
fn object_reference_omits_empty_fields() {
    // core/v1 ObjectReference: every field `omitempty`, order kind, namespace, name, uid,
    // apiVersion, resourceVersion, fieldPath.
    assert_eq!(
        json(&pod()),
        "{\"kind\":\"Pod\",\"namespace\":\"default\",\"name\":\"web-1\",\"apiVersion\":\"/v1\"}\n"
    );
    let full = ObjectReference {
        uid: "u".into(),
        resource_version: "7".into(),
        field_path: "spec".into(),
        ..pod()
    };
    assert_eq!(
        json(&full),
        "{\"kind\":\"Pod\",\"namespace\":\"default\",\"name\":\"web-1\",\"uid\":\"u\",\"apiVersion\":\"/v1\",\"resourceVersion\":\"7\",\"fieldPath\":\"spec\"}\n"
    );
    assert_eq!(json(&ObjectReference::default()), "{}\n");
}

#[test]
fn v1beta1_metric_value_has_window_and_a_null_selector() {
    let value = MetricValueV1Beta1 {
        described_object: pod(),
        metric_name: "http_requests_per_second".into(),
        timestamp: at(1_706_552_487),
        window_seconds: Some(30),
        value: Quantity::from_milli(25_500),
        selector: None,
    };
    assert_eq!(
        json(&value),
        concat!(
            "{\"describedObject\":{\"kind\":\"Pod\",\"namespace\":\"default\",\"name\":\"web-1\",\"apiVersion\":\"/v1\"},",
            "\"metricName\":\"http_requests_per_second\",\"timestamp\":\"2024-01-29T18:21:27Z\",",
            "\"window\":30,\"value\":\"25500m\",\"selector\":null}\n"
        )
    );
    let without_window = MetricValueV1Beta1 {
        window_seconds: None,
        ..value
    };
    assert!(!json(&without_window).contains("window"));
}

#[test]
fn v1beta2_metric_value_nests_the_metric_and_says_window_seconds() {
    let value = MetricValueV1Beta2 {
        described_object: pod(),
        metric: MetricIdentifier {
            name: "http_requests_per_second".into(),
            selector: None,
        },
        timestamp: at(1_706_552_487),
        window_seconds: Some(30),
        value: Quantity::from_milli(10_000),
    };
    assert_eq!(
        json(&value),
        concat!(
            "{\"describedObject\":{\"kind\":\"Pod\",\"namespace\":\"default\",\"name\":\"web-1\",\"apiVersion\":\"/v1\"},",
            "\"metric\":{\"name\":\"http_requests_per_second\",\"selector\":null},",
            "\"timestamp\":\"2024-01-29T18:21:27Z\",\"windowSeconds\":30,\"value\":\"10\"}\n"
        )
    );
}

#[test]
fn lists_always_carry_metadata_and_items() {
    let list: List<MetricValueV1Beta2> = List {
        kind: "MetricValueList",
        api_version: "custom.metrics.k8s.io/v1beta2",
        metadata: ListMeta {},
        items: Vec::new(),
    };
    assert_eq!(
        json(&list),
        "{\"kind\":\"MetricValueList\",\"apiVersion\":\"custom.metrics.k8s.io/v1beta2\",\"metadata\":{},\"items\":[]}\n"
    );
}

#[test]
fn external_metric_value_has_labels_and_window() {
    let value = ExternalMetricValue {
        metric_name: "http_requests_per_second".into(),
        metric_labels: [("app".to_owned(), "web".to_owned())].into(),
        timestamp: at(1_706_552_487),
        window_seconds: Some(30),
        value: Quantity::from_milli(50_000),
    };
    assert_eq!(
        json(&value),
        "{\"metricName\":\"http_requests_per_second\",\"metricLabels\":{\"app\":\"web\"},\"timestamp\":\"2024-01-29T18:21:27Z\",\"window\":30,\"value\":\"50\"}\n"
    );
}

#[test]
fn status_omits_empty_fields_but_not_metadata() {
    // The body kubectl shows for a 404 from a metrics adapter.
    assert_eq!(
        json(&Status::failure(
            404,
            "NotFound",
            "the server could not find the metric X for pods"
        )),
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"the server could not find the metric X for pods\",\"reason\":\"NotFound\",\"code\":404}\n"
    );
    let mut status = Status::failure(503, "ServiceUnavailable", "later");
    status.details = Some(StatusDetails {
        retry_after_seconds: 5,
        ..StatusDetails::default()
    });
    // notfoundhandler_test.go's expected body has exactly this shape.
    assert_eq!(
        json(&status),
        "{\"kind\":\"Status\",\"apiVersion\":\"v1\",\"metadata\":{},\"status\":\"Failure\",\"message\":\"later\",\"reason\":\"ServiceUnavailable\",\"details\":{\"retryAfterSeconds\":5},\"code\":503}\n"
    );
    status.details = Some(StatusDetails::default());
    assert!(json(&status).contains("\"details\":{}"));
}

#[test]
fn discovery_documents() {
    let version = GroupVersionForDiscovery {
        group_version: "custom.metrics.k8s.io/v1beta2".into(),
        version: "v1beta2".into(),
    };
    let group = ApiGroup {
        kind: "",
        api_version: "",
        name: "custom.metrics.k8s.io".into(),
        versions: vec![version.clone()],
        preferred_version: version,
        server_address_by_client_cidrs: Vec::new(),
    };
    let list = ApiGroupList {
        kind: "APIGroupList",
        api_version: "v1",
        groups: vec![group],
    };
    assert_eq!(
        json(&list),
        "{\"kind\":\"APIGroupList\",\"apiVersion\":\"v1\",\"groups\":[{\"name\":\"custom.metrics.k8s.io\",\"versions\":[{\"groupVersion\":\"custom.metrics.k8s.io/v1beta2\",\"version\":\"v1beta2\"}],\"preferredVersion\":{\"groupVersion\":\"custom.metrics.k8s.io/v1beta2\",\"version\":\"v1beta2\"}}]}\n"
    );
    let resource = ApiResource {
        name: "pods/http_requests_per_second".into(),
        singular_name: String::new(),
        namespaced: true,
        group: String::new(),
        version: String::new(),
        kind: "MetricValueList".into(),
        verbs: vec!["get".into()],
        short_names: Vec::new(),
        categories: Vec::new(),
        storage_version_hash: String::new(),
    };
    // The entry the design card quotes, field for field.
    assert_eq!(
        json(&resource),
        "{\"name\":\"pods/http_requests_per_second\",\"singularName\":\"\",\"namespaced\":true,\"kind\":\"MetricValueList\",\"verbs\":[\"get\"]}\n"
    );
}
