//! The snapshot every test serves, and a one-shot request helper.

use std::{
    sync::Arc,
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use axum::{
    Router,
    body::{Body, to_bytes},
    http::{HeaderValue, Method, Request, StatusCode, header},
};
use tower::ServiceExt as _;

use crate::source::{
    HTTP_REQUEST_BYTES_PER_SECOND, HTTP_REQUEST_DURATION_SECONDS_P95, HTTP_REQUESTS_CONCURRENCY,
    HTTP_REQUESTS_PER_SECOND, MemorySource, PodSample, Sample, podmeter_metrics,
};

/// 2024-01-29T18:21:27Z
pub(crate) const T: u64 = 1_706_552_487;

fn at(seconds: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(seconds)
}

pub(crate) fn sample(value: f64, seconds: u64) -> Sample {
    Sample {
        value,
        timestamp: at(seconds),
        window: Some(Duration::from_secs(30)),
    }
}

pub(crate) fn pod(name: &str, labels: &[(&str, &str)], values: &[(&str, Sample)]) -> PodSample {
    PodSample {
        name: name.to_owned(),
        labels: labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        values: values
            .iter()
            .map(|(k, v)| ((*k).to_owned(), v.clone()))
            .collect(),
    }
}

/// `default`: web-1 and web-2 (app=web) serve 25.5 and 24.5 req/s, db-1 3 req/s; web-3 has no
/// sample (its agent went stale). Concurrency: web-1 1.2345, db-1 0.5, web-2 none (its agent
/// answered `null`). Request bytes per second: web-1 2048.5, web-2 12000, db-1 300. `other`:
/// one pod.
pub(crate) fn fixture() -> Arc<MemorySource> {
    let source = MemorySource::new(podmeter_metrics());
    source.set_namespace(
        "default",
        vec![
            pod(
                "web-2",
                &[("app", "web")],
                &[
                    (HTTP_REQUESTS_PER_SECOND, sample(24.5, T - 5)),
                    (HTTP_REQUEST_DURATION_SECONDS_P95, sample(0.2, T - 5)),
                    (HTTP_REQUEST_BYTES_PER_SECOND, sample(12_000.0, T - 5)),
                ],
            ),
            pod(
                "web-1",
                &[("app", "web"), ("tier", "frontend")],
                &[
                    (HTTP_REQUESTS_PER_SECOND, sample(25.5, T)),
                    (HTTP_REQUEST_DURATION_SECONDS_P95, sample(0.0125, T)),
                    (HTTP_REQUESTS_CONCURRENCY, sample(1.2345, T)),
                    (HTTP_REQUEST_BYTES_PER_SECOND, sample(2_048.5, T)),
                ],
            ),
            pod(
                "db-1",
                &[("app", "db")],
                &[
                    (HTTP_REQUESTS_PER_SECOND, sample(3.0, T)),
                    (HTTP_REQUESTS_CONCURRENCY, sample(0.5, T)),
                    (HTTP_REQUEST_BYTES_PER_SECOND, sample(300.0, T)),
                ],
            ),
            pod("web-3", &[("app", "web")], &[]),
        ],
    );
    source.set_namespace(
        "other",
        vec![pod(
            "x",
            &[("app", "web")],
            &[(HTTP_REQUESTS_PER_SECOND, sample(1.0, T))],
        )],
    );
    Arc::new(source)
}

pub(crate) async fn call(app: Router, method: Method, uri: &str) -> (StatusCode, String) {
    let response = app
        .oneshot(
            Request::builder()
                .method(method)
                .uri(uri)
                .body(Body::empty())
                .expect("request"),
        )
        .await
        .expect("infallible");
    let status = response.status();
    if status != StatusCode::OK || uri.starts_with("/apis") {
        assert_eq!(
            response
                .headers()
                .get(header::CONTENT_TYPE)
                .map(HeaderValue::as_bytes),
            Some(&b"application/json"[..]),
            "{uri}"
        );
    }
    let body = to_bytes(response.into_body(), usize::MAX)
        .await
        .expect("body");
    (status, String::from_utf8(body.to_vec()).expect("UTF-8"))
}
