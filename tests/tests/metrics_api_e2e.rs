//! `podmeter metrics-api` behind a real kube-apiserver (v1.20.2): netns pods run nginx, the node
//! agent counts their requests, the metrics API collects from it and is registered as the
//! aggregated `custom.metrics.k8s.io` (v1beta1, v1beta2) and `external.metrics.k8s.io` server.
//! The HPA controller's ServiceAccount reads per-pod `http_requests_per_second` through the
//! apiserver and gets hey's rates; an unauthorised user gets 403; the values vanish within the
//! staleness bound once the node agent stops. The node agent's API serves TLS only and only the
//! metrics API's token for the agents' audience reads it. Without certificate flags, the metrics
//! API makes its own certificate in a Secret and sets its APIServices' caBundle.

use std::{
    collections::BTreeMap,
    process::Command,
    thread,
    time::{Duration, Instant},
};

use podmeter_tests::{
    AgentProcess, Cluster, Nginx,
    clients::parse_hey,
    control_plane::{ControlPlane, wait_until},
    metrics_api::{self, MetricsApiProcess, pod_values, quantity},
    run, serial, tempdir,
};

const NAMESPACE: &str = "default";
/// hey's rates: workers x requests per second per worker, for `LOAD` seconds.
const RATE_A: (u32, u32) = (2, 10);
const RATE_B: (u32, u32) = (5, 10);
const LOAD: Duration = Duration::from_secs(30);
/// The agent's rate window (short, so the rate settles early in the load).
const RATE_WINDOW_SECS: &str = "5";
/// How far the served per-pod rate may be from hey's configured rate.
const TOLERANCE: f64 = 0.15;
/// The metrics API's staleness flag, and the bound the test allows for values to disappear:
/// staleness + one collection interval (1 s) + one read timeout (1 s) + polling slack.
const STALENESS_SECS: u64 = 5;
const DISAPPEAR_WITHIN: Duration = Duration::from_secs(STALENESS_SECS + 4);

const PODS_PATH: &str = "/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests_per_second?labelSelector=app%3Dweb";

const EXTERNAL_PATH: &str = "/apis/external.metrics.k8s.io/v1beta1/namespaces/default/http_requests_per_second?labelSelector=app%3Dweb";

fn pod_yaml(name: &str) -> String {
    format!(
        "apiVersion: v1
kind: Pod
metadata: {{name: {name}, namespace: {NAMESPACE}, labels: {{app: web}}}}
spec:
  containers: [{{name: web, image: nginx}}]
"
    )
}

fn within(value: f64, expected: f64) -> bool {
    (value - expected).abs() <= expected * TOLERANCE
}

#[test]
fn the_hpa_reads_per_pod_rates_through_the_real_apiserver() {
    let _serial = serial();
    let test_started = Instant::now();
    let cp = ControlPlane::start().expect("control plane starts");
    println!("control plane ready in {:?}", cp.startup_time());

    let cluster = Cluster::new().expect("cluster");
    let web_a = cluster.pod(NAMESPACE, "web-a").expect("pod web-a");
    let web_b = cluster.pod(NAMESPACE, "web-b").expect("pod web-b");
    let loadgen = cluster.pod(NAMESPACE, "loadgen").expect("pod loadgen");
    let nginx_a = Nginx::start(&web_a).expect("nginx in web-a");
    let nginx_b = Nginx::start(&web_b).expect("nginx in web-b");
    // The node agent's API checks callers' tokens with TokenReview, as its own ServiceAccount.
    cp.apply(metrics_api::AGENT_RBAC).expect("agent RBAC");
    let agent_identity = cp
        .service_account_credentials(
            metrics_api::NAMESPACE,
            metrics_api::AGENT_NAME,
            Duration::from_secs(3600),
        )
        .expect("agent ServiceAccount token");
    // The cgroup layout <root>/default/<pod> names the agent's pods like the Kubernetes ones.
    let mut agent = AgentProcess::start(
        cluster.cgroup_root(),
        &[
            "--rate-window-secs",
            RATE_WINDOW_SECS,
            "--api-auth",
            "token-review",
            "--kubeconfig",
            agent_identity.kubeconfig().to_str().expect("utf-8 path"),
        ],
    )
    .expect("node agent");

    for pod in [&web_a, &web_b] {
        cp.apply(&pod_yaml(pod.name())).expect("create the Pod");
        cp.mark_pod_running(NAMESPACE, pod.name(), &pod.ip().to_string())
            .expect("mark the Pod Running");
    }

    // The metrics API's own identity, with the RBAC an install gives it.
    cp.apply(metrics_api::RBAC).expect("RBAC");
    let identity = cp
        .service_account_credentials(
            metrics_api::NAMESPACE,
            metrics_api::NAME,
            Duration::from_secs(3600),
        )
        .expect("metrics-api ServiceAccount token");
    let sans = metrics_api::serving_sans();
    let sans: Vec<&str> = sans.iter().map(String::as_str).collect();
    let serving = cp
        .issue_serving_cert(metrics_api::NAME, &sans)
        .expect("serving certificate");
    // The metrics API's token for the agents, as its projected volume holds it.
    let agent_token = cp
        .service_account_token(
            metrics_api::NAMESPACE,
            metrics_api::NAME,
            &[metrics_api::AGENT_AUDIENCE],
            Duration::from_secs(3600),
        )
        .expect("metrics-api token for the agents");
    // Another ServiceAccount's token for the same audience: valid, but not allowed.
    let intruder_token = cp
        .service_account_token(
            "default",
            "intruder",
            &[metrics_api::AGENT_AUDIENCE],
            Duration::from_secs(3600),
        )
        .expect("intruder token");
    let files = tempdir::new("metrics-api-e2e").expect("temp dir");
    let token_file =
        tempdir::write(&files, "agent-token", agent_token.as_bytes()).expect("token file");
    // The agent's API is TLS only (a self-signed certificate: -k), then 401 / 403 / 200.
    assert!(
        agent.base_url().starts_with("https://"),
        "{}",
        agent.base_url()
    );
    let curl_agent = |base_url: &str, token: Option<&str>| {
        let mut curl = Command::new("curl");
        curl.args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
            .arg(format!("{base_url}/v1/pods"));
        if let Some(token) = token {
            curl.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        run(curl, Duration::from_secs(10)).expect("curl").stdout
    };
    let https = agent.base_url();
    let cases = [
        ("no token", curl_agent(https, None), "401"),
        ("not a token", curl_agent(https, Some("not-a-token")), "401"),
        (
            "the metrics API's token for the apiserver's audience",
            curl_agent(https, identity.token()),
            "401",
        ),
        (
            "another ServiceAccount's token for the agents' audience",
            curl_agent(https, Some(&intruder_token)),
            "403",
        ),
        (
            "the metrics API's token for the agents' audience",
            curl_agent(https, Some(&agent_token)),
            "200",
        ),
    ];
    for (case, got, expected) in &cases {
        println!("node agent, {case}: HTTP {got}");
        assert_eq!(got, expected, "{case}");
    }
    // Plain HTTP to the same port: no HTTP answer at all (curl reports 000 and fails).
    let plain = {
        let mut curl = Command::new("curl");
        curl.args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "5",
        ])
        .arg(format!(
            "{}/v1/pods",
            https.replacen("https://", "http://", 1)
        ))
        .args(["-H", &format!("Authorization: Bearer {agent_token}")]);
        run(curl, Duration::from_secs(10)).expect("curl")
    };
    println!(
        "node agent, plain HTTP: {:?} ({})",
        plain.stdout,
        if plain.success() {
            "succeeded"
        } else {
            "failed"
        }
    );
    assert!(!plain.success() && plain.stdout == "000", "{plain:?}");
    let staleness = STALENESS_SECS.to_string();
    let server = MetricsApiProcess::start(&[
        "--kubeconfig",
        identity.kubeconfig().to_str().expect("utf-8 path"),
        "--tls-cert-file",
        serving.cert.to_str().expect("utf-8 path"),
        "--tls-private-key-file",
        serving.key.to_str().expect("utf-8 path"),
        "--agent",
        agent.base_url(),
        "--staleness-secs",
        &staleness,
        "--agent-token-file",
        token_file.to_str().expect("utf-8 path"),
    ])
    .expect("metrics-api starts");

    // Without the front proxy's client certificate, nobody is anybody: 401 or 403, no data.
    let direct = run(
        {
            let mut curl = Command::new("curl");
            curl.args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
                .arg(format!(
                    "https://127.0.0.1:{}/apis/custom.metrics.k8s.io/v1beta2/namespaces/default/pods/*/http_requests_per_second",
                    server.port()
                ))
                .args(["-H", "X-Remote-User: system:admin", "-H", "X-Remote-Group: system:masters"]);
            curl
        },
        Duration::from_secs(10),
    )
    .expect("curl");
    println!("direct request with forged headers: HTTP {}", direct.stdout);
    assert!(
        direct.stdout == "401" || direct.stdout == "403",
        "{direct:?}"
    );

    let ca = std::fs::read(cp.ca_cert()).expect("cluster CA");
    cp.apply(&metrics_api::registration(server.port(), Some(&ca)))
        .expect("Service and APIServices");
    let registered = Instant::now();
    for name in [
        "v1beta1.custom.metrics.k8s.io",
        "v1beta2.custom.metrics.k8s.io",
        "v1beta1.external.metrics.k8s.io",
    ] {
        let condition = wait_until(Duration::from_secs(60), name, || {
            let (available, condition) = metrics_api::apiservice_available(&cp, name)?;
            Ok(available.then_some(condition))
        })
        .unwrap_or_else(|e| panic!("APIService {name} Available: {e:#}"));
        println!("{name}: {condition}");
    }
    println!(
        "APIServices Available {:?} after registration",
        registered.elapsed()
    );

    // A renewed certificate written over the files is served without a restart.
    let fingerprint = |command: &str| {
        let mut sh = Command::new("sh");
        sh.args(["-c", command]);
        run(sh, Duration::from_secs(10))
            .expect("openssl")
            .stdout
            .trim()
            .to_owned()
    };
    let served_fingerprint = format!(
        "openssl s_client -connect 127.0.0.1:{} -servername localhost </dev/null 2>/dev/null \
         | openssl x509 -noout -fingerprint -sha256",
        server.port()
    );
    let before = fingerprint(&served_fingerprint);
    let renewed = cp
        .issue_serving_cert(&format!("{}-renewed", metrics_api::NAME), &sans)
        .expect("renewed serving certificate");
    std::fs::copy(&renewed.key, &serving.key).expect("replace the key");
    std::fs::copy(&renewed.cert, &serving.cert).expect("replace the certificate");
    let expected = fingerprint(&format!(
        "openssl x509 -noout -fingerprint -sha256 -in {}",
        serving.cert.display()
    ));
    assert_ne!(before, expected, "the renewed certificate must differ");
    let replaced = Instant::now();
    wait_until(
        Duration::from_secs(15),
        "the renewed certificate to be served",
        || Ok((fingerprint(&served_fingerprint) == expected).then_some(())),
    )
    .expect("certificate reloaded");
    println!(
        "renewed certificate served {:?} after the files changed",
        replaced.elapsed()
    );

    let hpa = cp
        .service_account_credentials(
            "kube-system",
            "horizontal-pod-autoscaler",
            Duration::from_secs(3600),
        )
        .expect("HPA controller token");
    let mallory = cp.user_credentials("mallory", &[]).expect("mallory");

    let expected_a = f64::from(RATE_A.0 * RATE_A.1);
    let expected_b = f64::from(RATE_B.0 * RATE_B.1);
    let (served, reports) = thread::scope(|scope| {
        // Pods are not Send: the commands are made here and only run in the threads.
        let hey = |nginx: &Nginx<'_>, (workers, rate): (u32, u32)| {
            let mut command = loadgen.command("hey").expect("hey in loadgen");
            command
                .arg("-n")
                .arg((u64::from(workers * rate) * LOAD.as_secs()).to_string())
                .arg("-c")
                .arg(workers.to_string())
                .arg("-q")
                .arg(rate.to_string())
                .arg(nginx.url("/"));
            scope.spawn(move || {
                let output = run(command, LOAD + Duration::from_secs(30))?.check("hey")?;
                parse_hey(&output.stdout)
            })
        };
        let load_a = hey(&nginx_a, RATE_A);
        let load_b = hey(&nginx_b, RATE_B);
        let load_started = Instant::now();
        // The window must fill before the rate means anything.
        thread::sleep(Duration::from_secs(8));
        let mut last = BTreeMap::new();
        let served = wait_until(
            LOAD.saturating_sub(load_started.elapsed() + Duration::from_secs(2)),
            "per-pod rates within tolerance",
            || {
                last = pod_values(&cp, &hpa, PODS_PATH)?;
                println!("served at {:?}: {last:?}", load_started.elapsed());
                let ok = last.len() == 2
                    && last.get("web-a").is_some_and(|&v| within(v, expected_a))
                    && last.get("web-b").is_some_and(|&v| within(v, expected_b));
                Ok(ok.then(|| last.clone()))
            },
        );
        // The external API's total over the selected pods, read while the load runs.
        let external = cp.get_json(EXTERNAL_PATH);
        let reports = [load_a, load_b].map(|h| h.join().expect("hey thread"));
        (served.map(|served| (served, external)), reports)
    });
    for report in reports {
        let report = report.expect("hey");
        assert_eq!(report.failed(), 0, "{report:?}");
    }
    let (served, external) = served.expect("the HPA's view of the pods");
    let external = external.expect("external metrics as admin");
    let total = quantity(external["items"][0]["value"].as_str().unwrap_or_default());
    println!("external.metrics.k8s.io total for app=web: {total}");
    assert_eq!(external["kind"], "ExternalMetricValueList", "{external}");
    assert!(within(total, expected_a + expected_b), "{external}");
    println!(
        "HPA service account read {served:?} (hey: web-a {expected_a}/s, web-b {expected_b}/s, tolerance {TOLERANCE})"
    );

    // v1beta1 serves the same pods.
    let v1beta1 =
        pod_values(&cp, &hpa, &PODS_PATH.replace("/v1beta2/", "/v1beta1/")).expect("v1beta1 list");
    assert_eq!(
        v1beta1.keys().collect::<Vec<_>>(),
        ["web-a", "web-b"],
        "{v1beta1:?}"
    );

    let denied = cp
        .request_as(&mallory, "GET", PODS_PATH, None)
        .expect("request as mallory");
    println!("mallory: HTTP {} {}", denied.status, denied.body.trim());
    assert_eq!(denied.status, 403, "{denied:?}");
    let denied = cp
        .kubectl_as(&mallory, &["get", "--raw", PODS_PATH])
        .expect("kubectl as mallory");
    assert!(
        !denied.success() && denied.stderr.contains("forbidden"),
        "{denied:?}"
    );

    // The node agent stops: its pods' values must disappear, not freeze.
    agent.terminate().expect("stop the node agent");
    let stopped = Instant::now();
    wait_until(DISAPPEAR_WITHIN, "the pods' values to disappear", || {
        let now = pod_values(&cp, &hpa, PODS_PATH)?;
        Ok(now.is_empty().then_some(()))
    })
    .expect("values gone after the agent stopped");
    let gone_after = stopped.elapsed();
    println!(
        "values gone {gone_after:?} after the agent stopped (staleness {STALENESS_SECS} s, bound {DISAPPEAR_WITHIN:?})"
    );
    assert!(
        gone_after >= Duration::from_secs(STALENESS_SECS - 1),
        "values vanished before the staleness bound ({gone_after:?}): the last answer must be served that long"
    );

    drop(server);
    println!("test body took {:?}", test_started.elapsed());
}

/// Started without certificate flags, the metrics API made a CA and a serving certificate in its
/// Secret and set that CA as the caBundle of its APIServices, which become Available; the CA
/// verifies the served certificate under the name the aggregator checks; a second replica serves
/// the same certificate; `kubectl get --raw` answers through the APIService.
fn check_self_managed_certificate(cp: &ControlPlane, server: &MetricsApiProcess, agent_url: &str) {
    let started = Instant::now();
    let secret = cp
        .get_json(&format!(
            "/api/v1/namespaces/{}/secrets/{}",
            metrics_api::NAMESPACE,
            metrics_api::CERT_SECRET
        ))
        .expect("the certificate Secret");
    let ca = secret["data"]["ca.crt"]
        .as_str()
        .expect("ca.crt in the Secret")
        .to_owned();
    assert!(secret["data"]["tls.crt"].is_string() && secret["data"]["tls.key"].is_string());
    for name in [
        "v1beta1.custom.metrics.k8s.io",
        "v1beta2.custom.metrics.k8s.io",
        "v1beta1.external.metrics.k8s.io",
    ] {
        wait_until(Duration::from_secs(60), name, || {
            let service = cp.get_json(&format!(
                "/apis/apiregistration.k8s.io/v1/apiservices/{name}"
            ))?;
            let (available, _) = metrics_api::apiservice_available(cp, name)?;
            Ok((service["spec"]["caBundle"] == ca.as_str() && available).then_some(()))
        })
        .unwrap_or_else(|e| panic!("APIService {name}: caBundle set and Available: {e:#}"));
    }
    println!(
        "caBundle set by the metrics API and APIServices Available {:?} after it started",
        started.elapsed()
    );

    let files = tempdir::new("ca-bundle").expect("temp dir");
    let sh = |script: String| {
        let mut sh = Command::new("sh");
        sh.args(["-c", &script]);
        run(sh, Duration::from_secs(20)).expect("sh")
    };
    let ca_file = files.path().join("ca.crt");
    let decoded = sh(format!("echo '{ca}' | base64 -d > {}", ca_file.display()));
    assert!(decoded.success(), "{decoded:?}");
    let name = format!("{}.{}.svc", metrics_api::NAME, metrics_api::NAMESPACE);
    let verify = sh(format!(
        "openssl s_client -connect 127.0.0.1:{} -servername {name} -verify_hostname {name} \
         -CAfile {} -verify_return_error </dev/null 2>&1",
        server.port(),
        ca_file.display()
    ));
    assert!(
        verify.stdout.contains("Verify return code: 0 (ok)"),
        "{verify:?}"
    );
    println!("the caBundle verifies the served certificate for {name}");

    let second =
        metrics_api::start_self_managed(cp, &["--agent", agent_url]).expect("a second replica");
    let fingerprint = |port: u16| {
        sh(format!(
            "openssl s_client -connect 127.0.0.1:{port} -servername {name} </dev/null 2>/dev/null \
             | openssl x509 -noout -fingerprint -sha256"
        ))
        .stdout
        .trim()
        .to_owned()
    };
    let (first_print, second_print) = (fingerprint(server.port()), fingerprint(second.port()));
    assert!(first_print.contains("Fingerprint"), "{first_print}");
    assert_eq!(
        first_print, second_print,
        "both replicas serve the Secret's certificate"
    );
    println!("a second replica serves the same certificate: {second_print}");
    drop(second);

    let raw = cp
        .kubectl(&["get", "--raw", "/apis/custom.metrics.k8s.io/v1beta2"])
        .expect("kubectl get --raw")
        .check("kubectl get --raw /apis/custom.metrics.k8s.io/v1beta2")
        .expect("an answer through the APIService");
    assert!(raw.stdout.contains("APIResourceList"), "{raw:?}");
    println!(
        "kubectl get --raw /apis/custom.metrics.k8s.io/v1beta2 answers through the APIService"
    );
}

const DEPLOYMENT: &str = "\
apiVersion: apps/v1
kind: Deployment
metadata: {name: web, namespace: default}
spec:
  replicas: 2
  selector:
    matchLabels: {app: web}
  template:
    metadata:
      labels: {app: web}
    spec:
      containers: [{name: web, image: nginx}]
";

/// The real HPA controller (kube-controller-manager) reads the per-pod rates through the
/// aggregated API and reports their average in the HPA's status.
#[test]
fn the_real_hpa_controller_reads_the_average_rate() {
    let _serial = serial();
    let test_started = Instant::now();
    let cp = ControlPlane::start().expect("control plane starts");
    cp.apply(DEPLOYMENT).expect("Deployment");
    let names: Vec<String> = wait_until(Duration::from_secs(60), "two pods of web", || {
        let pods = cp.get_json("/api/v1/namespaces/default/pods?labelSelector=app%3Dweb")?;
        let names: Vec<String> = pods["items"]
            .as_array()
            .map(|items| {
                items
                    .iter()
                    .filter_map(|p| p["metadata"]["name"].as_str().map(str::to_owned))
                    .collect()
            })
            .unwrap_or_default();
        Ok((names.len() == 2).then_some(names))
    })
    .expect("pods");
    println!("Deployment pods: {names:?}");

    // Netns pods named like the Deployment's pods, each running nginx.
    let cluster = Cluster::new().expect("cluster");
    let pods: Vec<_> = names
        .iter()
        .map(|name| cluster.pod(NAMESPACE, name).expect("netns pod"))
        .collect();
    let loadgen = cluster.pod(NAMESPACE, "loadgen").expect("loadgen");
    let servers: Vec<_> = pods
        .iter()
        .map(|p| Nginx::start(p).expect("nginx"))
        .collect();
    for pod in &pods {
        cp.mark_pod_running(NAMESPACE, pod.name(), &pod.ip().to_string())
            .expect("mark Running");
    }
    let agent = AgentProcess::start(cluster.cgroup_root(), &["--rate-window-secs", "5"])
        .expect("node agent");

    let server =
        metrics_api::start_registered(&cp, &["--agent", agent.base_url()]).expect("metrics API");
    check_self_managed_certificate(&cp, &server, agent.base_url());

    // A target far above the load: the HPA only measures, it has no reason to scale.
    let hpas = "/apis/autoscaling/v2beta2/namespaces/default/horizontalpodautoscalers";
    cp.post_json(
        hpas,
        &serde_json::json!({
            "apiVersion": "autoscaling/v2beta2",
            "kind": "HorizontalPodAutoscaler",
            "metadata": {"name": "web", "namespace": NAMESPACE},
            "spec": {
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": "web"},
                "minReplicas": 2,
                "maxReplicas": 4,
                "metrics": [{"type": "Pods", "pods": {
                    "metric": {"name": "http_requests_per_second"},
                    "target": {"type": "AverageValue", "averageValue": "1k"},
                }}],
            },
        }),
    )
    .expect("HPA");

    // 20 requests per second to each pod: the average the HPA must see is 20.
    let per_pod = f64::from(RATE_A.0 * RATE_A.1);
    let seen = thread::scope(|scope| {
        let loads: Vec<_> = servers
            .iter()
            .map(|nginx| {
                let mut command = loadgen.command("hey").expect("hey");
                command
                    .arg("-n")
                    .arg((u64::from(RATE_A.0 * RATE_A.1) * LOAD.as_secs()).to_string())
                    .arg("-c")
                    .arg(RATE_A.0.to_string())
                    .arg("-q")
                    .arg(RATE_A.1.to_string())
                    .arg(nginx.url("/"));
                scope.spawn(move || run(command, LOAD + Duration::from_secs(30)))
            })
            .collect();
        let load_started = Instant::now();
        thread::sleep(Duration::from_secs(7));
        let seen = wait_until(
            LOAD.saturating_sub(load_started.elapsed() + Duration::from_secs(2)),
            "the HPA's status to show the average rate",
            || {
                let hpa = cp.get_json(&format!("{hpas}/web"))?;
                let active = hpa["status"]["conditions"]
                    .as_array()
                    .and_then(|c| c.iter().find(|c| c["type"] == "ScalingActive"))
                    .cloned()
                    .unwrap_or_default();
                let average = quantity(
                    hpa["status"]["currentMetrics"][0]["pods"]["current"]["averageValue"]
                        .as_str()
                        .unwrap_or_default(),
                );
                println!(
                    "HPA at {:?}: ScalingActive={} average={average}",
                    load_started.elapsed(),
                    active["status"]
                );
                Ok((active["status"] == "True" && within(average, per_pod))
                    .then_some((average, hpa["status"].clone())))
            },
        );
        for load in loads {
            load.join().expect("hey thread").expect("hey");
        }
        seen
    });
    let (average, status) = seen.expect("the HPA controller's view");
    println!("HPA status: {status}");
    println!("the HPA controller saw an average of {average}/s per pod (hey: {per_pod}/s)");
    assert_eq!(status["desiredReplicas"], 2, "{status}");
    drop(server);
    println!("test body took {:?}", test_started.elapsed());
}
