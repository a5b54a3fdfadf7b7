//! The Prometheus metrics served at `GET /metrics`: per-pod HTTP families for each side
//! ([`http`]), the agent's own health ([`health`]), their label sets ([`labels`]) and the text
//! formats they are written in ([`exposition`]).
//!
//! Two sources, named apart: `requests_started_total`, `requests_total`, `requests_per_second`
//! and the server side's `node_requests_total` come from the kernel's exact counters;
//! `observed_requests_total` and `request_duration_seconds` come from paired request/response
//! events, which the kernel drops when the ring buffer is full (`podmeter_events_dropped_total`
//! says how many).

pub(crate) mod exposition;
pub(crate) mod health;
pub(crate) mod http;
pub(crate) mod labels;

use prometheus_client::registry::Registry;

use self::{
    health::{AgentInfo, HealthMetrics},
    http::{HttpFamilies, HttpMetrics, Side},
};

/// Every family the agent exports. The series of each pod live in its book
/// (`books::PodBook`), which holds a clone of `http` (a family's clone is a handle to it).
pub struct Metrics {
    /// `podmeter_http_server_*` and `podmeter_http_client_*`: requests pods served and sent.
    pub http: HttpMetrics,
    /// `podmeter_*`: the agent itself.
    pub health: HealthMetrics,
}

impl Metrics {
    /// Registers every family under `podmeter_`.
    pub fn register(registry: &mut Registry, info: &AgentInfo) -> Self {
        let registry = registry.sub_registry_with_prefix("podmeter");
        Self {
            http: HttpMetrics {
                server: HttpFamilies::register(registry, Side::Server, info.rate_window_secs),
                client: HttpFamilies::register(registry, Side::Client, info.rate_window_secs),
            },
            health: HealthMetrics::register(registry, info),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::{collections::BTreeSet, sync::Arc, time::Duration};

    use super::{
        exposition::Format,
        health::{HealthCollector, HealthReading},
        http::PodSeries,
        *,
    };
    use crate::{
        books::routes::Route,
        connections::pairing::{Exchange, Outcome},
        events::decode::Method,
        health::Health,
        identity::PodId,
        kernel::counters::Counts,
    };

    fn info() -> AgentInfo {
        AgentInfo::for_tests(30)
    }

    fn exchange(method: Method, outcome: Outcome, latency_us: Option<u64>) -> Exchange {
        Exchange {
            cgroup_id: 1,
            role: 1,
            peer: 0,
            method,
            target: Some("/".to_owned()),
            outcome,
            latency: latency_us.map(Duration::from_micros),
        }
    }

    fn counts(requests: u64, ok: u64, server_error: u64) -> Counts {
        let mut c = Counts {
            requests,
            ..Counts::default()
        };
        c.responses[2] = ok;
        c.responses[5] = server_error;
        c
    }

    fn render(registry: &Registry) -> String {
        exposition::render(registry, Format::Prometheus).expect("renders")
    }

    fn render_openmetrics(registry: &Registry) -> String {
        exposition::render(registry, Format::OpenMetrics).expect("renders")
    }

    /// Sample lines of `text` for pod `pod`, without the HELP/TYPE metadata.
    fn samples_of<'a>(text: &'a str, pod: &str) -> Vec<&'a str> {
        let needle = format!("pod=\"{pod}\"");
        text.lines()
            .filter(|l| !l.starts_with('#') && l.contains(&needle))
            .collect()
    }

    #[test]
    fn exact_counts_and_the_rate_gauge_are_exported_per_pod() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, &info());
        let server = &m.http.server;
        let mut web = PodSeries::new(server, &PodId::new("shop", "web"));
        web.add_counts(server, &counts(10, 9, 1), false);
        web.add_counts(server, &counts(2, 2, 0), false);
        web.set_rate(4.5);
        let text = render(&registry);
        let mut samples = samples_of(&text, "web");
        // Series of one family come in no particular order.
        samples.sort_unstable();
        assert_eq!(
            samples,
            [
                "podmeter_http_server_concurrency{namespace=\"shop\",pod=\"web\"} 0.0",
                "podmeter_http_server_request_bytes_total{namespace=\"shop\",pod=\"web\"} 0",
                "podmeter_http_server_requests_per_second{namespace=\"shop\",pod=\"web\"} 4.5",
                "podmeter_http_server_requests_started_total{namespace=\"shop\",pod=\"web\"} 12",
                "podmeter_http_server_requests_total{namespace=\"shop\",pod=\"web\",status_class=\"2xx\"} 11",
                "podmeter_http_server_requests_total{namespace=\"shop\",pod=\"web\",status_class=\"5xx\"} 1",
                "podmeter_http_server_response_bytes_total{namespace=\"shop\",pod=\"web\"} 0",
            ]
        );
        assert!(!text.contains("podmeter_http_client_requests_total{"));
    }

    #[test]
    fn without_route_labels_methods_and_classes_come_from_the_kernel_counters() {
        use podmeter_common::{counter, method, status_class};
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, &info());
        let server = &m.http.server;
        let mut web = PodSeries::new(server, &PodId::new("shop", "web"));
        let mut delta = Counts::default();
        delta.add(counter::requests(method::GET), 7);
        delta.add(counter::requests(method::DELETE), 2);
        delta.add(counter::responses(method::GET, 2), 6);
        delta.add(counter::responses(method::GET, status_class::NONE), 1);
        delta.add(counter::responses(method::DELETE, 4), 2);
        web.add_counts(server, &delta, true);
        let text = render(&registry);
        let observed =
            "podmeter_http_server_observed_requests_total{namespace=\"shop\",pod=\"web\"";
        for (labels, n) in [
            ("method=\"GET\",status_class=\"2xx\"", 6),
            ("method=\"GET\",status_class=\"none\"", 1),
            ("method=\"DELETE\",status_class=\"4xx\"", 2),
        ] {
            assert!(
                text.contains(&format!("{observed},{labels}}} {n}\n")),
                "{labels}\n{text}"
            );
        }
        assert_eq!(
            text.matches("podmeter_http_server_observed_requests_total{")
                .count(),
            3
        );
        // With route labels on, the events book them (with routes) instead.
        let mut api = PodSeries::new(server, &PodId::new("shop", "api"));
        api.add_counts(server, &delta, false);
        assert!(
            !render(&registry).contains("observed_requests_total{namespace=\"shop\",pod=\"api\"")
        );
    }

    #[test]
    fn durations_land_in_the_buckets_of_their_kernel_bucket_midpoints() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, &info());
        let server = &m.http.server;
        let mut web = PodSeries::new(server, &PodId::new("shop", "web"));
        for latency_us in [90, 300, 2_000, 2_000, 45_000_000, 120_000_000] {
            web.observe(
                server,
                &exchange(Method::Get, Outcome::Status(200), Some(latency_us)),
                None,
            );
            let bucket = podmeter_common::latency::bucket(latency_us * 1_000);
            web.observe_durations(server, &[(bucket, 1)]);
        }
        // Closed without a response: counted, but no duration.
        web.observe(
            server,
            &exchange(Method::Post, Outcome::NoResponse, None),
            None,
        );
        let text = render(&registry);
        let bucket = |le: &str| {
            let prefix = format!(
                "podmeter_http_server_request_duration_seconds_bucket{{le=\"{le}\",namespace=\"shop\",pod=\"web\"}} "
            );
            text.lines()
                .find_map(|l| l.strip_prefix(prefix.as_str()))
                .unwrap_or_else(|| panic!("no bucket {le} in\n{text}"))
                .to_owned()
        };
        assert_eq!(bucket("0.0001"), "1");
        assert_eq!(bucket("0.00025"), "1");
        assert_eq!(bucket("0.0005"), "2");
        assert_eq!(bucket("0.0025"), "4");
        assert_eq!(bucket("30.0"), "4");
        assert_eq!(bucket("60.0"), "5");
        assert_eq!(bucket("+Inf"), "6");
        assert!(text.contains(
            "podmeter_http_server_request_duration_seconds_count{namespace=\"shop\",pod=\"web\"} 6\n"
        ));
        assert!(text.contains("podmeter_http_server_observed_requests_total{namespace=\"shop\",pod=\"web\",method=\"GET\",status_class=\"2xx\"} 6\n"));
        assert!(text.contains("podmeter_http_server_observed_requests_total{namespace=\"shop\",pod=\"web\",method=\"POST\",status_class=\"none\"} 1\n"));
        let buckets = text
            .lines()
            .filter(|l| l.starts_with("podmeter_http_server_request_duration_seconds_bucket"))
            .count();
        assert_eq!(buckets, http::DURATION_BUCKETS.len() + 1);
    }

    #[test]
    fn routes_are_a_label_only_when_given() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, &info());
        let client = &m.http.client;
        let mut api = PodSeries::new(client, &PodId::new("shop", "api"));
        let route = Route {
            id: 1,
            name: Arc::from("/items/{id}"),
        };
        api.observe(
            client,
            &exchange(Method::Delete, Outcome::Status(404), Some(900)),
            Some(route),
        );
        let text = render(&registry);
        assert!(text.contains("podmeter_http_client_observed_requests_total{namespace=\"shop\",pod=\"api\",method=\"DELETE\",status_class=\"4xx\",route=\"/items/{id}\"} 1\n"), "{text}");
        // Durations come from the kernel, which knows no routes.
        assert!(!text.contains("podmeter_http_client_request_duration_seconds_count{namespace=\"shop\",pod=\"api\",route="), "{text}");
    }

    #[test]
    fn a_removed_pod_leaves_no_series_behind() {
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, &info());
        let (web, db) = (PodId::new("shop", "web"), PodId::new("shop", "db"));
        let series = |pod: &PodId| {
            let [mut server, mut client] =
                Side::ALL.map(|side| PodSeries::new(m.http.side(side), pod));
            server.add_counts(&m.http.server, &counts(3, 2, 1), false);
            server.add_node_requests(&m.http.server, 2);
            client.add_counts(&m.http.client, &counts(1, 1, 0), false);
            server.observe(
                &m.http.server,
                &exchange(Method::Get, Outcome::Status(200), Some(500)),
                None,
            );
            client.observe(
                &m.http.client,
                &exchange(Method::Other, Outcome::Unrecognised, Some(500)),
                None,
            );
            [server, client]
        };
        let [web_server, web_client] = series(&web);
        let _db = series(&db);
        let before = render(&registry);
        assert!(before.contains(
            "podmeter_http_server_node_requests_total{namespace=\"shop\",pod=\"web\"} 2\n"
        ));
        web_server.remove_from(&m.http.server);
        web_client.remove_from(&m.http.client);
        let after = render(&registry);
        assert_eq!(samples_of(&after, "web"), Vec::<&str>::new());
        assert_eq!(samples_of(&after, "db"), samples_of(&before, "db"));
        // How many pods have series after a removal is the books' (see `books::tests`).
        // A pod that comes back starts from zero.
        PodSeries::new(&m.http.server, &web).add_counts(&m.http.server, &counts(1, 1, 0), false);
        assert!(render(&registry).contains(
            "podmeter_http_server_requests_started_total{namespace=\"shop\",pod=\"web\"} 1\n"
        ));
    }

    /// Registers the health collector as `Shared::new` does, reading `reading`.
    fn with_health(registry: &mut Registry, reading: HealthReading, ring_positions: bool) {
        registry
            .sub_registry_with_prefix("podmeter")
            .register_collector(Box::new(HealthCollector::new(
                move || Some(reading.clone()),
                ring_positions,
            )));
    }

    #[test]
    fn health_families_encode_the_readings_at_each_scrape() {
        let mut registry = Registry::default();
        let _m = Metrics::register(&mut registry, &info());
        let mut health = Health::default();
        health.kernel.events_dropped = 7;
        health.events_received = 100;
        health.connections_tracked = 12;
        health.ring_used_bytes = 4096;
        health.routes_folded = 2;
        with_health(&mut registry, HealthReading { health, pods: 3 }, true);
        let text = render(&registry);
        for line in [
            "podmeter_events_dropped_total 7",
            "podmeter_events_received_total 100",
            "podmeter_connections_tracked 12",
            "podmeter_ring_buffer_used_bytes 4096",
            "podmeter_ring_buffer_capacity_bytes 4194304",
            "podmeter_pods 3",
            "podmeter_routes_folded_total 2",
            "podmeter_rate_window_seconds 30",
            "podmeter_build_info{version=\"0.1.0\"} 1",
            "podmeter_parse_failures_total{kind=\"request_line\"} 0",
        ] {
            assert!(text.lines().any(|l| l == line), "no `{line}` in\n{text}");
        }
        for line in [
            "# TYPE podmeter_events_dropped counter",
            "# TYPE podmeter_connections_tracked gauge",
            "# UNIT podmeter_ring_buffer_used_bytes bytes",
        ] {
            assert!(
                render_openmetrics(&registry).lines().any(|l| l == line),
                "no `{line}`"
            );
        }
    }

    #[test]
    fn help_texts_need_no_escaping() {
        let mut registry = Registry::default();
        let _m = Metrics::register(&mut registry, &info());
        with_health(&mut registry, HealthReading::default(), true);
        let text = render(&registry);
        for line in text.lines().filter(|l| l.starts_with("# HELP ")) {
            assert!(
                !line.contains(['\\', '"']),
                "HELP texts must not need escaping: {line}"
            );
        }
    }

    /// Every name a scrape can contain: family names and their sample suffixes.
    fn exported_names(text: &str) -> BTreeSet<String> {
        let mut names = BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let mut parts = rest.split(' ');
                let (Some(name), Some(kind)) = (parts.next(), parts.next()) else {
                    continue;
                };
                names.insert(name.to_owned());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        names.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
        names
    }

    /// The metric names a PromQL expression refers to (every `podmeter_...` identifier).
    fn metric_names(expr: &str) -> Vec<String> {
        let mut names = Vec::new();
        let mut rest = expr;
        while let Some(at) = rest.find("podmeter_") {
            let tail = &rest[at..];
            let end = tail
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(tail.len());
            names.push(tail[..end].to_owned());
            rest = &tail[end..];
        }
        names
    }

    fn exprs(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr" | "query", serde_json::Value::String(s)) => out.push(s.clone()),
                        ("query", serde_json::Value::Object(q)) => {
                            if let Some(serde_json::Value::String(s)) = q.get("query") {
                                out.push(s.clone());
                            }
                        }
                        _ => exprs(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| exprs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn the_dashboard_queries_only_metrics_the_agent_exports() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../deploy/grafana/podmeter-dashboard.json"
        );
        let text = std::fs::read_to_string(path).expect("the dashboard is in deploy/grafana");
        let dashboard: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
        let mut registry = Registry::default();
        let m = Metrics::register(&mut registry, &info());
        // Families without series are not written: give one pod every series.
        let web = PodId::new("shop", "web");
        let _series = Side::ALL.map(|side| {
            let families = m.http.side(side);
            let mut series = PodSeries::new(families, &web);
            series.add_counts(families, &counts(2, 1, 1), false);
            series.observe(
                families,
                &exchange(Method::Get, Outcome::Status(200), Some(800)),
                None,
            );
            series.observe_durations(families, &[(podmeter_common::latency::bucket(800_000), 1)]);
            series
        });
        with_health(&mut registry, HealthReading::default(), true);
        let exported = exported_names(&render(&registry));
        let mut queries = Vec::new();
        exprs(&dashboard, &mut queries);
        assert!(
            queries.len() >= 10,
            "the dashboard has queries: {queries:?}"
        );
        let mut checked = 0;
        for query in &queries {
            for name in metric_names(query) {
                assert!(
                    exported.contains(&name),
                    "the dashboard queries `{name}` ({query}), which the agent does not export; it exports {exported:?}"
                );
                checked += 1;
            }
        }
        assert!(checked >= 10, "the dashboard names podmeter metrics");
        // The datasource is a variable, so the dashboard works with any Prometheus.
        assert!(text.contains("${datasource}"));
        assert!(!text.contains("\"uid\": \"prometheus\""));
    }
}
