//! The dedup rule in practice: a sidecar's loopback hop adds no second inbound count, and
//! connections opened before the agent started are classified from their first request.

use std::{
    io::{BufRead, BufReader, Write},
    process::Stdio,
    time::{Duration, Instant},
};

use podmeter_tests::{AgentProcess, ChildGuard, Cluster, Hey, Nginx, PodCounts, serial};

#[test]
fn a_sidecar_handing_requests_to_its_app_over_loopback_counts_once() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    // nginx on :80 proxies /proxy/ to the app on 127.0.0.1:8081, inside pod B.
    let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");

    let report = Hey::new(nginx.url("/proxy/item"))
        .requests(400)
        .concurrency(4)
        .run_from(&pod_a)
        .expect("hey");
    assert_eq!(
        (report.status(200), report.failed()),
        (400, 0),
        "{report:?}"
    );

    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        PodCounts {
            inbound: 400,
            outbound: 0
        }
    );
    assert_eq!(
        agent.wait_stable_counts("default", "pod-a").expect("a"),
        PodCounts {
            inbound: 0,
            outbound: 400
        }
    );
    // The loopback hop was seen on both of its sockets, and kept apart.
    let b = agent.pod_entry("default", "pod-b").expect("pod entry");
    assert_eq!(b.loopback_inbound.totals.requests, 400, "{b:?}");
    assert_eq!(b.loopback_outbound.totals.requests, 400, "{b:?}");
    assert_eq!(b.inbound.totals.responses.success, 400, "{b:?}");
    assert!(agent.terminate().expect("stop agent").success());
}

/// A real HTTP client (Python's http.client) that opens one keep-alive connection, sends one
/// request, then sends N more on the same connection each time it reads a line `N`.
const KEEPALIVE_CLIENT: &str = r#"
import http.client, sys
conn = http.client.HTTPConnection(sys.argv[1], 80, timeout=10)
def get():
    conn.request("GET", "/")
    r = conn.getresponse()
    r.read()
    return r.status == 200
print("first", int(get()), flush=True)
sock = conn.sock
for line in sys.stdin:
    n = int(line)
    ok = sum(get() for _ in range(n))
    print("done", ok, int(conn.sock is sock), flush=True)
"#;

#[test]
fn a_connection_opened_before_the_agent_started_is_classified_by_its_first_request() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let _nginx = Nginx::start(&pod_b).expect("nginx in pod b");

    let mut command = pod_a.command("python3").expect("python3 in pod a");
    command
        .args(["-c", KEEPALIVE_CLIENT, &pod_b.ip().to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut client = ChildGuard::spawn(command, "keep-alive client").expect("start client");
    let mut stdin = client.child_mut().stdin.take().expect("client stdin");
    let mut stdout = BufReader::new(client.child_mut().stdout.take().expect("client stdout"));
    let read_line = |stdout: &mut BufReader<_>| {
        let mut line = String::new();
        stdout.read_line(&mut line).expect("client output");
        line.trim().to_owned()
    };
    assert_eq!(
        read_line(&mut stdout),
        "first 1",
        "connection open, one request served"
    );

    // The agent starts with the connection already established: no sock_ops callback for it.
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");
    writeln!(stdin, "25").expect("ask for 25 requests");
    let started = Instant::now();
    assert_eq!(
        read_line(&mut stdout),
        "done 25 1",
        "25 requests on the same connection"
    );
    assert!(started.elapsed() < Duration::from_secs(30));

    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        PodCounts {
            inbound: 25,
            outbound: 0
        }
    );
    assert_eq!(
        agent.wait_stable_counts("default", "pod-a").expect("a"),
        PodCounts {
            inbound: 0,
            outbound: 25
        }
    );
    drop(stdin);
    client
        .wait_timeout(Duration::from_secs(10))
        .expect("client exits");
    assert!(agent.terminate().expect("stop agent").success());
}
