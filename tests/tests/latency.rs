//! The agent's windowed request duration quantiles (`/v1/pods`, `duration` of each flow): a
//! scripted server with known delays is driven by hey, and the p50/p90/p95/p99 the agent reports
//! for the server's inbound and the client's outbound flow are checked against the delays and
//! against hey's own percentiles; then the window slides to a new delay, and empties when idle.

use std::time::Duration;

use podmeter_tests::{
    AgentProcess, Cluster, paced::PacedHey, scripted::ScriptedServer, serial, wait::poll_until,
};
use podmeter_wire::{DurationSummary, FlowReply, PodReply};

/// The agent's window; every phase below runs longer than it.
const WINDOW_SECS: u64 = 5;
/// A bucket's midpoint is within 0.78 % of the durations it holds (`podmeter_common::latency`).
const PRECISION: f64 = 0.0078;

/// The `duration` of one flow of a pod, `None` when the window has no exchanges.
fn duration(
    agent: &AgentProcess,
    pod: &str,
    flow: fn(&PodReply) -> &FlowReply,
) -> Option<DurationSummary> {
    let entry = agent.pod_entry("default", pod).expect("pod listed");
    flow(&entry).duration
}

fn seconds(d: &DurationSummary, quantile: &str) -> f64 {
    match quantile {
        "p50" => d.p50_seconds,
        "p90" => d.p90_seconds,
        "p95" => d.p95_seconds,
        "p99" => d.p99_seconds,
        _ => panic!("no {quantile} in {d:?}"),
    }
}

/// `value` is a server-side duration of a request the server delayed by `delay_ms`: at least the
/// delay (less the bucket precision), and at most a few milliseconds of Python and network more.
fn assert_served_after(value: f64, delay_ms: u64, what: &str) {
    let delay = delay_ms as f64 / 1000.0;
    assert!(
        value >= delay * (1.0 - PRECISION) && value <= delay * (1.0 + PRECISION) + 0.005,
        "{what}: {value:.5} s for a {delay_ms} ms delay"
    );
}

#[test]
fn windowed_duration_quantiles_follow_the_servers_delays() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let server = ScriptedServer::start(&pod_b).expect("scripted server in pod b");
    let window = WINDOW_SECS.to_string();
    let agent = AgentProcess::start(cluster.cgroup_root(), &["--rate-window-secs", &window])
        .expect("agent");

    // Every fifth request takes 200 ms, the others 20 ms: 20 % slow, so the median is fast and
    // p90, p95 and p99 are slow, far from any rank's edge.
    let mix = PacedHey::new(server.url("/mix/20/200/5"), 5, 4, Duration::from_secs(4))
        .run_from(&pod_a)
        .expect("hey /mix");
    assert_eq!(mix.statuses.failed(), 0, "{mix:?}");
    // The last exchanges reach the window at the agent's next read of the kernel's latency
    // histogram (every second).
    std::thread::sleep(Duration::from_millis(1_300));
    let server_side = duration(&agent, "pod-b", |p| &p.inbound);
    let client_side = duration(&agent, "pod-a", |p| &p.outbound);
    eprintln!(
        "hey p50/p90/p95/p99: {:?}; agent inbound of pod-b {server_side:?}; outbound of pod-a {client_side:?}",
        mix.latency
    );
    let server_side = server_side.expect("exchanges in pod-b's inbound window");
    let client_side = client_side.expect("exchanges in pod-a's outbound window");
    let exchanges = server_side.exchanges;
    let completed = mix.statuses.status(200);
    assert!(
        exchanges <= completed && exchanges * 2 >= completed,
        "{exchanges} exchanges in the window of {completed} sent over 4 s"
    );
    assert_eq!(client_side.exchanges, server_side.exchanges);
    assert_served_after(seconds(&server_side, "p50"), 20, "p50");
    for q in ["p90", "p95", "p99"] {
        assert_served_after(seconds(&server_side, q), 200, q);
    }
    // The client's socket sees each exchange a little later than the server's; hey, above the
    // socket, later still.
    for (q, percent) in [("p50", 50), ("p90", 90), ("p95", 95)] {
        let server = seconds(&server_side, q);
        let client = seconds(&client_side, q);
        let hey = mix.percentile(percent).expect("hey prints it");
        assert!(
            client >= server * (1.0 - PRECISION) && client <= hey * (1.0 + PRECISION),
            "{q}: server {server:.5} s, client socket {client:.5} s, hey {hey:.5} s"
        );
    }

    // A new delay for longer than the window: only it is left.
    let steady = PacedHey::new(
        server.url("/delay/50"),
        5,
        4,
        Duration::from_secs(WINDOW_SECS + 1),
    )
    .run_from(&pod_a)
    .expect("hey /delay");
    assert_eq!(steady.statuses.failed(), 0, "{steady:?}");
    std::thread::sleep(Duration::from_millis(1_300));
    let server_side =
        duration(&agent, "pod-b", |p| &p.inbound).expect("exchanges in pod-b's inbound window");
    for q in ["p50", "p90", "p95", "p99"] {
        assert_served_after(seconds(&server_side, q), 50, q);
    }

    // Idle for the window: no exchanges, no quantiles (not zeros), while the pod stays listed.
    let emptied = poll_until(
        Duration::from_secs(WINDOW_SECS + 3),
        Duration::from_millis(250),
        || duration(&agent, "pod-b", |p| &p.inbound).is_none(),
    );
    assert!(
        emptied,
        "still {:?} after the window",
        duration(&agent, "pod-b", |p| &p.inbound)
    );
    assert!(duration(&agent, "pod-a", |p| &p.outbound).is_none());
    drop(server);
}
