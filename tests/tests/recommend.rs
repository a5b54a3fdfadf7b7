//! `podmeter recommend` on a running agent: live per-pod rates in, the HPA's decision and its
//! reason out, as text and as JSON.

use std::{process::Command, time::Duration};

use podmeter_tests::{AgentProcess, Cluster, Nginx, run, serial, tempdir};

#[test]
fn recommend_reads_live_rates_and_explains_the_decision() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let client = cluster.pod("shop", "client").expect("client pod");
    let web = cluster.pod("shop", "web-0").expect("web pod");
    let nginx = Nginx::start(&web).expect("nginx");
    let agent =
        AgentProcess::start(cluster.cgroup_root(), &["--rate-window-secs", "5"]).expect("agent");
    // 50 req/s for 12 s; the decision is read while it runs, after one full rate window. Against
    // a target of 20 that is a ratio of 2.5, well away from a whole number, so `ceil` gives 3
    // whatever the last digits of the measured rate (at exactly 60/20 a reading of 60.006 gives 4).
    let _load = client
        .spawn(
            "hey",
            &["-z", "12s", "-c", "5", "-q", "10", &nginx.url("/")],
        )
        .expect("hey");
    std::thread::sleep(Duration::from_secs(7));

    let dir = tempdir::new("recommend").expect("temp dir");
    let spec = tempdir::write(
        &dir,
            "spec.toml",
            "[[workloads]]\nname = \"web\"\nnamespace = \"shop\"\ntarget_per_pod = 20\nmax_replicas = 10\n",
        )
        .expect("spec file");
    let recommend = |output: &str| {
        let mut command = Command::new(AgentProcess::binary());
        command
            .args(["recommend", "--agent", agent.base_url(), "--output", output])
            .arg("--spec")
            .arg(&spec);
        let out = run(command, Duration::from_secs(20)).expect("podmeter recommend");
        assert!(out.success(), "{}", out.stderr);
        out.stdout
    };

    let json: serde_json::Value = serde_json::from_str(&recommend("json")).expect("JSON output");
    let rec = &json[0];
    assert_eq!(rec["workload"], "web", "{json}");
    assert_eq!(rec["current_replicas"], 1, "{json}");
    let rate = rec["pods"][0]["rate"].as_f64().expect("a rate");
    assert!(
        (rate - 50.0).abs() <= 2.5,
        "per-pod rate {rate} near hey's 50 req/s: {json}"
    );
    // 50/20 = ratio 2.5 from one pod: 3 replicas (within the 2x/4 scale-up limit).
    assert_eq!(rec["desired_replicas"], 3, "{json}");

    let text = recommend("text");
    assert!(text.contains("shop/web: replicas 1 -> 3"), "{text}");
    assert!(
        text.contains("scale 1 -> 3"),
        "the reason is printed: {text}"
    );
}
