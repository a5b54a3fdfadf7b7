//! Requests from the node itself (a kubelet's probes, node agents): the kernel sees the client's
//! socket in a cgroup of no pod, so the server pod books them apart as `node_inbound`, never in
//! `inbound`, which `http_requests_per_second` is made of. An idle pod probed every few seconds
//! reads 0 req/s. `--node-requests-in-rate` puts them back.

use std::time::Duration;

use podmeter_tests::{AgentProcess, Cluster, Hey, Nginx, PodCounts, serial, wait::poll_until};

/// Probes per round: a kubelet's come one at a time, each on a new connection.
const PROBES: u64 = 40;

fn probe(cluster: &Cluster, url: &str) {
    // The root of the agent's tree is no pod's cgroup (pods are `<namespace>/<pod>` below it):
    // a client there, in the root network namespace, is what a kubelet is on a real node.
    let report = Hey::new(url)
        .requests(PROBES)
        .concurrency(1)
        .disable_keepalive()
        .run_from_node(cluster.cgroup_root())
        .expect("probes from the node");
    assert_eq!(
        (report.status(200), report.failed()),
        (PROBES, 0),
        "{report:?}"
    );
}

/// The samples of `name` for pod `default/<pod>` in the agent's `/metrics`.
fn metric(agent: &AgentProcess, name: &str, pod: &str) -> Vec<f64> {
    let text = agent.get_text("/metrics").expect("GET /metrics");
    text.lines()
        .filter(|line| {
            line.starts_with(&format!("{name}{{"))
                && line.contains("namespace=\"default\"")
                && line.contains(&format!("pod=\"{pod}\""))
        })
        .filter_map(|line| line.rsplit_once(' ')?.1.parse().ok())
        .collect()
}

#[test]
fn probes_from_the_node_add_nothing_to_the_pods_request_rate() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    let url = nginx.url("/");
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");

    // An idle pod, probed: its request rate stays 0.
    probe(&cluster, &url);
    let booked = poll_until(Duration::from_secs(5), Duration::from_millis(250), || {
        agent
            .pod_entry("default", "pod-b")
            .is_ok_and(|b| b.node_inbound.totals.requests >= PROBES)
    });
    let b = agent.pod_entry("default", "pod-b").expect("pod b entry");
    assert!(booked, "the probes are booked as the node's: {b:?}");
    assert_eq!(b.node_inbound.totals.requests, PROBES, "{b:?}");
    assert_eq!(b.node_inbound.totals.responses.success, PROBES, "{b:?}");
    assert!(b.node_inbound.rate > 0.0, "{b:?}");
    assert_eq!(b.inbound.totals.requests, 0, "{b:?}");
    assert_eq!(b.inbound.rate, 0.0, "{b:?}");
    assert_eq!(
        metric(&agent, "podmeter_http_server_node_requests_total", "pod-b"),
        [PROBES as f64]
    );

    // Traffic from a pod while the node probes: only the traffic is inbound.
    let traffic = Hey::new(&url)
        .requests(300)
        .concurrency(3)
        .run_from(&pod_a)
        .expect("hey from pod a");
    assert_eq!(traffic.status(200), 300, "{traffic:?}");
    probe(&cluster, &url);
    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        PodCounts {
            inbound: 300,
            outbound: 0
        }
    );
    let b = agent.pod_entry("default", "pod-b").expect("pod b entry");
    assert_eq!(b.node_inbound.totals.requests, 2 * PROBES, "{b:?}");
    let a = agent.pod_entry("default", "pod-a").expect("pod a entry");
    assert_eq!(
        (a.outbound.totals.requests, a.node_inbound.totals.requests),
        (300, 0),
        "a pod's requests are never the node's: {a:?}"
    );
    assert!(agent.terminate().expect("stop agent").success());

    // With --node-requests-in-rate the same probes are ordinary traffic.
    let agent =
        AgentProcess::start(cluster.cgroup_root(), &["--node-requests-in-rate"]).expect("agent");
    probe(&cluster, &url);
    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        PodCounts {
            inbound: PROBES,
            outbound: 0
        }
    );
    let b = agent.pod_entry("default", "pod-b").expect("pod b entry");
    assert_eq!(b.node_inbound.totals.requests, 0, "{b:?}");
    let mut agent = agent;
    assert!(agent.terminate().expect("stop agent").success());
}
