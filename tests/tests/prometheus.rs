//! The agent's `/metrics` as Prometheus sees it: a real Prometheus scrapes the agent while hey
//! drives a known rate at a pod, and the rates, exact counts, status classes and latency
//! percentiles it reports are checked against what hey says; the exposition passes `promtool
//! check metrics`; route labels stay under their cap; a deleted pod's series go away; and every
//! query of the Grafana dashboard runs against that Prometheus.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::Path,
    process::Command,
    time::{Duration, Instant},
};

use podmeter_tests::{
    AgentProcess, Cluster, Curl, Hey, Nginx,
    paced::PacedHey,
    process::run_with_input,
    prometheus::{Prometheus, free_loopback_port, promtool_check_metrics},
    scripted::ScriptedServer,
    serial,
};
use serde_json::Value;

/// Upper bounds of the agent's request duration buckets (agent/src/metrics/http.rs).
const DURATION_BUCKETS: [f64; 18] = [
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
    5.0, 10.0, 30.0, 60.0,
];

/// Values of the samples of `name` in a Prometheus text scrape whose labels include `labels`.
fn samples(text: &str, name: &str, labels: &[(&str, &str)]) -> Vec<f64> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            let matches = metric == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            matches.then(|| value.parse().ok()).flatten()
        })
        .collect()
}

fn sum(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    samples(text, name, labels).iter().sum()
}

/// Values of label `label` among the series of `name` that include `labels`.
fn label_values(text: &str, name: &str, labels: &[(&str, &str)], label: &str) -> BTreeSet<String> {
    let key = format!("{label}=\"");
    text.lines()
        .filter(|line| line.starts_with(&format!("{name}{{")))
        .filter(|line| {
            labels
                .iter()
                .all(|(k, v)| line.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|line| {
            let start = line.find(&key)? + key.len();
            let end = line[start..].find('"')?;
            Some(line[start..start + end].to_owned())
        })
        .collect()
}

/// `host:port` of the agent's API.
fn agent_address(agent: &AgentProcess) -> SocketAddr {
    agent
        .base_url()
        .trim_start_matches("http://")
        .parse()
        .expect("the agent prints http://host:port")
}

/// The inbound `rate` of a pod in `/v1/pods` (0 while the pod is not listed).
fn json_rate(agent: &AgentProcess, namespace: &str, name: &str) -> f64 {
    agent
        .pod_entry(namespace, name)
        .ok()
        .map_or(0.0, |pod| pod.inbound.rate)
}

fn relative_error(measured: f64, expected: f64) -> f64 {
    (measured - expected).abs() / expected
}

/// The index of the duration bucket a value falls in (upper bounds inclusive).
fn bucket_of(seconds: f64) -> usize {
    DURATION_BUCKETS
        .iter()
        .position(|upper| seconds <= *upper)
        .unwrap_or(DURATION_BUCKETS.len())
}

/// Requests per second hey drives: 4 workers at 25 requests per second each.
const RATE_PER_WORKER: u32 = 25;
const WORKERS: u32 = 4;
/// A short window keeps the test short; the arithmetic is the same for any window.
const WINDOW_SECS: u64 = 10;
/// How far the gauge and PromQL's rate may be from the driven rate. hey paces each worker with
/// a 40 ms ticker, so a 10 s window holds 1000 +- 4 requests (a burst of 4 at each edge); the
/// agent books counts every 250 ms, so a Prometheus sample can lag by up to 25 requests, and
/// `rate()` over 10 one-second scrapes extrapolates from ~9 s of samples: +-3 % at most. A
/// loaded 2-core machine can delay hey's ticks a little more; 5 % still catches any real error
/// (a double count is +100 %, a lost poll -2.5 %).
const TOLERANCE: f64 = 0.05;

#[test]
fn prometheus_rate_and_the_gauge_match_the_rate_hey_drives() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    let mut agent = AgentProcess::start(
        cluster.cgroup_root(),
        &["--rate-window-secs", &WINDOW_SECS.to_string()],
    )
    .expect("agent");
    let prometheus =
        Prometheus::start(agent_address(&agent), Duration::from_secs(1)).expect("prometheus");
    prometheus
        .wait_target_up(Duration::from_secs(20))
        .expect("prometheus scrapes the agent");

    let load = PacedHey::new(
        nginx.url("/"),
        RATE_PER_WORKER,
        WORKERS,
        Duration::from_secs(30),
    );
    let driven = load.target_rate();
    let hey = load.prepare(&pod_a).expect("hey in pod a");
    let window = WINDOW_SECS as f64;
    // A step change reaches 90 % of its new value within 0.9 W + 1 s.
    let step_bound = Duration::from_secs_f64(0.9 * window + 1.0);
    let gauge_query =
        r#"podmeter_http_server_requests_per_second{namespace="default",pod="pod-b"}"#;
    let rate_query = format!(
        r#"sum(rate(podmeter_http_server_requests_total{{namespace="default",pod="pod-b"}}[{WINDOW_SECS}s]))"#
    );

    let started = Instant::now();
    let mut reached_90 = None;
    let mut steady = Vec::new();
    let report = std::thread::scope(|scope| {
        let run = scope.spawn(move || hey.run());
        let mut next_sample = started + Duration::from_secs(WINDOW_SECS + 4);
        while !run.is_finished() {
            let rate = json_rate(&agent, "default", "pod-b");
            if reached_90.is_none() && rate >= 0.9 * driven {
                reached_90 = Some(started.elapsed());
            }
            // Steady state: a full window after the start, until shortly before the end.
            let now = Instant::now();
            if now >= next_sample && now < started + Duration::from_secs(28) {
                let gauge = prometheus.value(gauge_query).expect("gauge query");
                let promql = prometheus.value(&rate_query).expect("rate query");
                steady.push((started.elapsed().as_secs_f64(), rate, gauge, promql));
                next_sample += Duration::from_secs(2);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        run.join().expect("hey thread")
    })
    .expect("hey");
    let ended = Instant::now();

    let served = report.statuses.status(200);
    assert_eq!(report.statuses.failed(), 0, "{report:?}");
    assert_eq!(served, report.statuses.completed(), "{report:?}");
    eprintln!(
        "hey: {served} requests in {:.3} s = {:.3} req/s (driven {driven} req/s)",
        report.total_secs, report.requests_per_sec
    );
    for (t, json, gauge, promql) in &steady {
        eprintln!(
            "t={t:5.1}s  /v1/pods rate {json:8.3}  gauge {:8.3}  rate()[10s] {:8.3}",
            gauge.unwrap_or(f64::NAN),
            promql.unwrap_or(f64::NAN)
        );
    }
    assert!(steady.len() >= 5, "sampled the steady state: {steady:?}");
    for (t, json, gauge, promql) in &steady {
        let gauge = gauge.unwrap_or_else(|| panic!("no gauge at t={t}"));
        let promql = promql.unwrap_or_else(|| panic!("no rate() at t={t}"));
        for (what, value) in [
            ("/v1/pods rate", *json),
            ("gauge", gauge),
            ("rate()", promql),
        ] {
            assert!(
                relative_error(value, driven) <= TOLERANCE,
                "{what} {value:.3} at t={t:.1}s is not within {TOLERANCE} of {driven}"
            );
            assert!(
                relative_error(value, report.requests_per_sec) <= TOLERANCE,
                "{what} {value:.3} at t={t:.1}s is not within {TOLERANCE} of hey's {:.3}",
                report.requests_per_sec
            );
        }
    }
    let reached_90 = reached_90.expect("the rate reached 90 % of the load");
    eprintln!("step up: 90 % of {driven} req/s after {reached_90:?} (bound {step_bound:?})");
    assert!(reached_90 <= step_bound, "{reached_90:?} > {step_bound:?}");

    // The step down after the load: 90 % of the way to zero within the same bound.
    let mut fell_to_10 = None;
    while ended.elapsed() < Duration::from_secs(WINDOW_SECS + 5) {
        // pod-b is listed for sure now: an error here must fail, not read as a fallen rate.
        let rate = agent
            .pod_entry("default", "pod-b")
            .expect("pod-b stays listed")
            .inbound
            .rate;
        if rate <= 0.1 * driven {
            fell_to_10 = Some(ended.elapsed());
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let fell_to_10 = fell_to_10.expect("the rate fell after the load");
    eprintln!("step down: 10 % of {driven} req/s after {fell_to_10:?} (bound {step_bound:?})");
    assert!(fell_to_10 <= step_bound, "{fell_to_10:?} > {step_bound:?}");

    // The exact counters equal hey's total, in the agent's scrape and in Prometheus.
    let counts = agent
        .wait_stable_counts("default", "pod-b")
        .expect("pod b counts");
    assert_eq!(counts.inbound, served);
    let scrape = agent.get_text("/metrics").expect("scrape");
    let b = [("namespace", "default"), ("pod", "pod-b")];
    let a = [("namespace", "default"), ("pod", "pod-a")];
    assert_eq!(
        sum(&scrape, "podmeter_http_server_requests_total", &b),
        served as f64
    );
    assert_eq!(
        sum(&scrape, "podmeter_http_server_requests_started_total", &b),
        served as f64
    );
    assert_eq!(
        sum(
            &scrape,
            "podmeter_http_server_requests_total",
            &[("pod", "pod-b"), ("status_class", "2xx")]
        ),
        served as f64
    );
    assert_eq!(
        sum(&scrape, "podmeter_http_client_requests_total", &a),
        served as f64
    );
    assert_eq!(
        sum(&scrape, "podmeter_http_server_requests_total", &a),
        0.0,
        "pod a served nothing"
    );
    let in_prometheus = prometheus
        .wait_value(
            r#"sum(podmeter_http_server_requests_total{namespace="default",pod="pod-b"})"#,
            Duration::from_secs(10),
            |v| v == served as f64,
        )
        .expect("Prometheus has the exact total");
    eprintln!("Prometheus: sum(podmeter_http_server_requests_total) = {in_prometheus}");
    let health: Vec<String> = scrape
        .lines()
        .filter(|l| {
            [
                "podmeter_events_",
                "podmeter_connections_",
                "podmeter_ring_buffer_used",
            ]
            .iter()
            .any(|p| l.starts_with(p))
        })
        .map(str::to_owned)
        .collect();
    eprintln!("agent health after the run: {health:?}");
    drop(prometheus);
    assert!(agent.terminate().expect("stop agent").success());
}

#[test]
fn status_classes_methods_and_latency_percentiles_agree_with_hey() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let server = ScriptedServer::start(&pod_b).expect("scripted server in pod b");
    let mut agent = AgentProcess::start(
        cluster.cgroup_root(),
        &["--route-labels", "--rate-window-secs", "10"],
    )
    .expect("agent");
    let prometheus =
        Prometheus::start(agent_address(&agent), Duration::from_secs(1)).expect("prometheus");
    prometheus
        .wait_target_up(Duration::from_secs(20))
        .expect("prometheus scrapes the agent (OpenMetrics parses)");

    // Two of three requests take 15 ms at the server, one 350 ms: hey's p50 is a fast one, its
    // p95 and p99 slow ones, each in the middle of one of the agent's duration buckets.
    let mix = PacedHey::new(server.url("/mix/15/350/3"), 10, 4, Duration::from_secs(15))
        .run_from(&pod_a)
        .expect("hey /mix");
    assert_eq!(mix.statuses.failed(), 0, "{:?}", mix.statuses);
    let mixed = mix.statuses.status(200);

    // Latency, from the kernel's histogram (no route label: the kernel knows no routes), before
    // any other request: the percentiles Prometheus computes fall in the bucket of hey's, and the
    // mean server-side duration is hey's mean minus the client's own overhead.
    let pod = r#"namespace="default",pod="pod-b""#;
    let duration = "podmeter_http_server_request_duration_seconds";
    prometheus
        .wait_value(
            &format!("sum({duration}_count{{{pod}}})"),
            Duration::from_secs(10),
            |n| n == mixed as f64,
        )
        .expect("every exchange of the mix in Prometheus");
    let mut compared = BTreeMap::new();
    for percent in [50u32, 95, 99] {
        let hey = mix.percentile(percent).expect("hey prints the percentile");
        let ours = prometheus
            .wait_value(
                &format!(
                    "histogram_quantile({}, sum by (le) ({duration}_bucket{{{pod}}}))",
                    f64::from(percent) / 100.0
                ),
                Duration::from_secs(10),
                f64::is_finite,
            )
            .expect("histogram_quantile");
        compared.insert(percent, (hey, ours));
        assert_eq!(
            bucket_of(ours),
            bucket_of(hey),
            "p{percent}: Prometheus {ours:.4} s and hey {hey:.4} s are in different buckets"
        );
    }
    let scrape = agent.get_text("/metrics").expect("scrape");
    let pod_label = [("pod", "pod-b")];
    let count = sum(&scrape, &format!("{duration}_count"), &pod_label);
    let mean = sum(&scrape, &format!("{duration}_sum"), &pod_label) / count;
    eprintln!(
        "latency p50/p95/p99 (hey, Prometheus): {compared:?}; mean server side {mean:.4} s over {count} requests, hey average {:.4} s",
        mix.average_secs
    );
    assert_eq!(count, mixed as f64);
    assert!(
        mean <= mix.average_secs && mix.average_secs - mean < 0.01,
        "server-side mean {mean:.4} s vs hey's average {:.4} s",
        mix.average_secs
    );

    let not_found = Hey::new(server.url("/status/404"))
        .requests(60)
        .concurrency(2)
        .run_from(&pod_a)
        .expect("hey 404");
    let unavailable = Hey::new(server.url("/status/503"))
        .post("payload")
        .requests(40)
        .concurrency(2)
        .run_from(&pod_a)
        .expect("hey POST 503");
    for report in [&not_found, &unavailable] {
        assert_eq!(report.failed(), 0, "{report:?}");
    }
    let total = mixed + not_found.completed() + unavailable.completed();
    assert_eq!(not_found.status(404), 60);
    assert_eq!(unavailable.status(503), 40);
    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        podmeter_tests::PodCounts {
            inbound: total,
            outbound: 0
        }
    );

    // Exact status classes equal hey's status distribution, on both sides.
    let scrape = agent.get_text("/metrics").expect("scrape");
    for (class, expected) in [("2xx", mixed), ("4xx", 60), ("5xx", 40)] {
        for (name, pod) in [
            ("podmeter_http_server_requests_total", "pod-b"),
            ("podmeter_http_client_requests_total", "pod-a"),
        ] {
            let got = sum(&scrape, name, &[("pod", pod), ("status_class", class)]);
            assert_eq!(
                got, expected as f64,
                "{name}{{pod={pod},status_class={class}}}"
            );
        }
    }
    // With route labels on, methods and routes come from the paired events: exact as long as
    // none was dropped.
    let stats = agent.health().expect("agent stats");
    assert_eq!(stats.kernel.events_dropped, 0, "{stats:?}");
    let b = [("pod", "pod-b")];
    let observed = "podmeter_http_server_observed_requests_total";
    assert_eq!(
        sum(&scrape, observed, &[b[0], ("method", "GET")]),
        (mixed + 60) as f64
    );
    assert_eq!(
        sum(
            &scrape,
            observed,
            &[b[0], ("method", "POST"), ("status_class", "5xx")]
        ),
        40.0
    );
    assert_eq!(
        label_values(&scrape, observed, &b, "route"),
        BTreeSet::from(["/mix/{id}/{id}/{id}", "/status/{id}"].map(str::to_owned))
    );
    // The duration histogram holds every exchange with a response.
    assert_eq!(
        sum(&scrape, &format!("{duration}_count"), &pod_label),
        total as f64
    );

    // The exposition passes promtool, and names what the dashboard queries.
    let check = promtool_check_metrics(&scrape).expect("promtool");
    assert!(
        check.success() && check.stdout.trim().is_empty() && check.stderr.trim().is_empty(),
        "promtool check metrics: {check:?}\n{scrape}"
    );
    check_dashboard(&scrape, &prometheus);
    drop(prometheus);
    drop(server);
    assert!(agent.terminate().expect("stop agent").success());
}

/// Every query of the dashboard names only metrics in `scrape`, and Prometheus runs it; the
/// per-pod panels return pod-b.
fn check_dashboard(scrape: &str, prometheus: &Prometheus) {
    let path =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/grafana/podmeter-dashboard.json");
    let text = std::fs::read_to_string(&path).expect("dashboard file");
    let dashboard: Value = serde_json::from_str(&text).expect("the dashboard is JSON");
    let mut exported = BTreeSet::new();
    for line in scrape.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            if let (Some(name), Some(kind)) = (parts.next(), parts.next()) {
                exported.insert(name.to_owned());
                if kind == "histogram" {
                    for suffix in ["_bucket", "_sum", "_count"] {
                        exported.insert(format!("{name}{suffix}"));
                    }
                }
            }
        }
    }
    let mut exprs = Vec::new();
    collect_exprs(&dashboard, &mut exprs);
    assert!(exprs.len() >= 15, "{exprs:?}");
    for expr in &exprs {
        for name in expr
            .split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .filter(|word| word.starts_with("podmeter_"))
        {
            assert!(
                exported.contains(name),
                "the dashboard queries {name}, which a real scrape does not contain: {expr}"
            );
        }
        let promql = grafana_to_promql(expr)
            .replace("$__rate_interval", "30s")
            .replace("$namespace", ".*")
            .replace("$pod", ".*");
        let result = prometheus
            .query(&promql)
            .unwrap_or_else(|e| panic!("the dashboard query {promql} fails: {e:#}"));
        if promql.contains("podmeter_http_server_requests_per_second")
            || promql.contains("podmeter_http_server_request_duration_seconds_bucket")
        {
            assert!(
                result
                    .iter()
                    .any(|s| s.labels.get("pod").map(String::as_str) == Some("pod-b")),
                "{promql} returned no series of pod-b: {result:?}"
            );
        }
    }
}

/// Grafana's variable query `label_values(<selector>, <label>)` as the PromQL that answers it;
/// other expressions are PromQL already.
fn grafana_to_promql(expr: &str) -> String {
    let Some(args) = expr
        .strip_prefix("label_values(")
        .and_then(|rest| rest.strip_suffix(')'))
    else {
        return expr.to_owned();
    };
    let (selector, label) = args
        .rsplit_once(',')
        .expect("label_values(selector, label)");
    format!("group by ({}) ({})", label.trim(), selector.trim())
}

fn collect_exprs(value: &Value, out: &mut Vec<String>) {
    match value {
        Value::Object(map) => {
            for (key, v) in map {
                match (key.as_str(), v) {
                    ("expr", Value::String(s)) => out.push(s.clone()),
                    ("query", Value::Object(q)) => {
                        if let Some(Value::String(s)) = q.get("query") {
                            out.push(s.clone());
                        }
                    }
                    _ => collect_exprs(v, out),
                }
            }
        }
        Value::Array(items) => items.iter().for_each(|v| collect_exprs(v, out)),
        _ => {}
    }
}

/// Distinct paths, each at most 20 characters: 5,000 that collapse (`/items/<n>`) then 5,000
/// that do not (`/page-<letters>`).
fn ten_thousand_paths() -> Vec<String> {
    let mut paths: Vec<String> = (0..5_000).map(|i| format!("/items/{i}")).collect();
    for i in 0..5_000u32 {
        let mut word = String::new();
        let mut n = i;
        for _ in 0..4 {
            word.push(char::from(b'a' + (n % 26) as u8));
            n /= 26;
        }
        paths.push(format!("/page-{word}"));
    }
    paths
}

#[test]
fn ten_thousand_distinct_paths_stay_under_the_route_cap() {
    const CAP: usize = 20;
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    let mut agent = AgentProcess::start(
        cluster.cgroup_root(),
        &["--route-labels", "--max-routes-per-pod", &CAP.to_string()],
    )
    .expect("agent");

    let paths = ten_thousand_paths();
    assert_eq!(paths.iter().collect::<BTreeSet<_>>().len(), 10_000);
    // One curl, one keep-alive connection, 10,000 sequential requests.
    let mut config = String::new();
    for path in &paths {
        config.push_str(&format!(
            "url = \"{}\"\noutput = \"/dev/null\"\n",
            nginx.url(path)
        ));
    }
    let mut command: Command = pod_a.command("curl").expect("curl in pod a");
    command.args([
        "--silent",
        "--show-error",
        "--write-out",
        "%{http_code}\\n",
        "--config",
        "-",
    ]);
    let output =
        run_with_input(command, config.as_bytes(), Duration::from_secs(300)).expect("curl");
    let codes = podmeter_tests::clients::parse_curl_codes(&output.stdout);
    assert_eq!(codes.status(404), 10_000, "{codes:?} {}", output.stderr);

    assert_eq!(
        agent
            .wait_stable_counts("default", "pod-b")
            .expect("b")
            .inbound,
        10_000
    );
    let stats = agent.health().expect("agent stats");
    assert_eq!(stats.kernel.events_dropped, 0, "{stats:?}");
    let scrape = agent.get_text("/metrics").expect("scrape");
    for (side, pod) in [("server", "pod-b"), ("client", "pod-a")] {
        let observed = format!("podmeter_http_{side}_observed_requests_total");
        let labels = [("pod", pod)];
        let routes = label_values(&scrape, &observed, &labels, "route");
        eprintln!("{side} routes of {pod}: {} ({routes:?})", routes.len());
        assert!(routes.len() <= CAP + 1, "{routes:?}");
        assert!(routes.contains("other") && routes.contains("/items/{id}"));
        assert_eq!(sum(&scrape, &observed, &labels), 10_000.0);
        // 5,000 requests on /items/{id}; 19 page routes fill the cap; the rest are `other`.
        assert_eq!(
            sum(
                &scrape,
                &observed,
                &[("pod", pod), ("route", "/items/{id}")]
            ),
            5_000.0
        );
        assert_eq!(
            sum(&scrape, &observed, &[("pod", pod), ("route", "other")]),
            (5_000 - (CAP - 1)) as f64
        );
        // Every series of the pod: per route one observed counter and one histogram (buckets,
        // +Inf, sum, count), plus the pod's exact counters and gauge.
        let series = scrape
            .lines()
            .filter(|l| !l.starts_with('#') && l.contains(&format!("pod=\"{pod}\"")))
            .count();
        let bound = (CAP + 1) * (1 + DURATION_BUCKETS.len() + 3) + 1 + 7 + 1;
        eprintln!("{pod}: {series} series (bound {bound})");
        assert!(series <= bound, "{series} series for {pod}");
    }
    assert_eq!(
        sum(&scrape, "podmeter_routes_folded_total", &[]),
        (2 * (5_000 - (CAP - 1))) as f64
    );
    let total_series = scrape.lines().filter(|l| !l.starts_with('#')).count();
    eprintln!("whole scrape: {total_series} series");
    assert!(total_series < 2 * 500 + 100, "{total_series}");
    assert!(agent.terminate().expect("stop agent").success());
}

#[test]
fn a_request_shows_within_a_second_and_a_deleted_pods_series_disappear() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_c = cluster.pod("default", "pod-c").expect("pod c");
    let nginx = Nginx::start(&pod_c).expect("nginx in pod c");
    let metrics_port = free_loopback_port().expect("a free port");
    let metrics_listen = format!("127.0.0.1:{metrics_port}");
    let mut agent = AgentProcess::start(
        cluster.cgroup_root(),
        &["--pod-grace-secs", "1", "--metrics-listen", &metrics_listen],
    )
    .expect("agent");

    let curl = Curl::new(nginx.url("/")).run_from(&pod_a).expect("curl");
    assert_eq!(curl.status(200), 1);
    let served = Instant::now();
    let started = "podmeter_http_server_requests_started_total";
    let gauge = "podmeter_http_server_requests_per_second";
    let c = [("namespace", "default"), ("pod", "pod-c")];
    let shown = loop {
        let scrape = agent.get_text("/metrics").expect("scrape");
        if sum(&scrape, started, &c) == 1.0 && sum(&scrape, gauge, &c) > 0.0 {
            break served.elapsed();
        }
        assert!(
            served.elapsed() < Duration::from_secs(5),
            "the request never showed:\n{scrape}"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    eprintln!("a served request showed in the counter and the gauge after {shown:?}");
    assert!(shown <= Duration::from_secs(1), "{shown:?}");

    // The extra metrics address serves /metrics and nothing else.
    let http: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(Duration::from_secs(5)))
        .http_status_as_error(false)
        .build()
        .into();
    let mut reply = http
        .get(&format!("http://{metrics_listen}/metrics"))
        .call()
        .expect("GET /metrics on --metrics-listen");
    assert!(reply.status().is_success());
    let body = reply.body_mut().read_to_string().expect("body");
    assert_eq!(sum(&body, started, &c), 1.0);
    let pods = http
        .get(&format!("http://{metrics_listen}/v1/pods"))
        .call()
        .expect("GET /v1/pods on --metrics-listen");
    assert_eq!(pods.status().as_u16(), 404);

    // Delete the pod: after the grace period all of its series are gone at once.
    drop(nginx);
    drop(pod_c);
    let deleted = Instant::now();
    loop {
        let scrape = agent.get_text("/metrics").expect("scrape");
        let listed = agent.pod_entry("default", "pod-c").is_ok();
        if !scrape.contains("pod=\"pod-c\"") && !listed {
            assert_eq!(sum(&scrape, "podmeter_pods_removed_total", &[]), 1.0);
            break;
        }
        assert!(
            deleted.elapsed() < Duration::from_secs(20),
            "pod-c is still there 20 s after deletion (listed in /v1/pods: {listed}):\n{scrape}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "pod-c's series were removed {:?} after deletion",
        deleted.elapsed()
    );
    // pod-a's client series stay.
    let scrape = agent.get_text("/metrics").expect("scrape");
    assert_eq!(
        sum(
            &scrape,
            "podmeter_http_client_requests_total",
            &[("pod", "pod-a")]
        ),
        1.0
    );
    assert!(agent.terminate().expect("stop agent").success());
}
