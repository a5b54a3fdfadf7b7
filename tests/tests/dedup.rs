//! The dedup rule in practice: a sidecar's loopback hop adds no second inbound count, and
//! connections opened before the agent started are classified from their first request, and
//! their close, which no sock_ops callback reports, still ends the exchange in flight.

use std::{
    io::{BufRead, BufReader, Write},
    process::Stdio,
    time::{Duration, Instant},
};

use podmeter_tests::{
    AgentProcess, ChildGuard, Cluster, Hey, Nginx, PodCounts,
    scripted::{self, ScriptedServer},
    serial,
    wait::poll_until,
};
use podmeter_wire::StatusCounts;

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

/// A raw client: one keep-alive connection to the scripted server and one exchange on it; then,
/// on a line from stdin, one more request, ended as `argv[3]` says:
/// - `reset`: the request takes 3 s, and the client resets the connection (SO_LINGER 0) 0.5 s
///   into it, while it is in flight;
/// - `half-close`: the client sends its FIN right after the request (shutdown), and reads the
///   answer until the server closes too.
const ENDING_CLIENT: &str = r#"
import socket, struct, sys, time
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"GET /status/200 HTTP/1.1\r\nHost: b\r\n\r\n")
buf = b""
while not buf.endswith(b"scripted\n"):
    data = s.recv(4096)
    if not data:
        sys.exit("closed early")
    buf += data
print("first", buf.split(b" ")[1].decode(), flush=True)
sys.stdin.readline()
if sys.argv[3] == "reset":
    s.sendall(b"GET /delay/3000 HTTP/1.1\r\nHost: b\r\n\r\n")
    time.sleep(0.5)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    s.close()
    print("reset", flush=True)
else:
    s.sendall(b"GET /delay/300 HTTP/1.1\r\nHost: b\r\n\r\n")
    s.shutdown(socket.SHUT_WR)
    buf = b""
    while True:
        data = s.recv(4096)
        if not data:
            break
        buf += data
    s.close()
    print("closed", buf.split(b" ")[1].decode(), flush=True)
"#;

/// The agent's rate window in the tests below: the average concurrency covers it.
const WINDOW_SECS: u64 = 5;

/// One connection opened before the agent started, ended by `how` (see [`ENDING_CLIENT`]) once
/// the agent runs: no sock_ops callback reports that close, only its segments. Checks that both
/// sockets saw it end (the table's closed count), that the second exchange ended once on each
/// side with `class`, and that nothing stays in flight (the window's average concurrency falls
/// to exactly 0). Returns the client's last line.
fn pre_existing_connection_ends(how: &str, class: fn(&StatusCounts) -> u64) -> String {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let _server = ScriptedServer::start(&pod_b).expect("scripted server in pod b");

    let mut command = pod_a.command("python3").expect("python3 in pod a");
    command
        .args([
            "-c",
            ENDING_CLIENT,
            &pod_b.ip().to_string(),
            &scripted::PORT.to_string(),
            how,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped());
    let mut client = ChildGuard::spawn(command, "ending client").expect("start client");
    let mut stdin = client.child_mut().stdin.take().expect("client stdin");
    let mut stdout = BufReader::new(client.child_mut().stdout.take().expect("client stdout"));
    let mut line = String::new();
    stdout.read_line(&mut line).expect("client output");
    assert_eq!(
        line.trim(),
        "first 200",
        "connection open, one request served"
    );

    let mut agent = AgentProcess::start(
        cluster.cgroup_root(),
        &["--rate-window-secs", &WINDOW_SECS.to_string()],
    )
    .expect("agent");
    writeln!(stdin, "go").expect("ask for the ending");
    line.clear();
    stdout.read_line(&mut line).expect("client output");
    let ended_at = Instant::now();
    let last = line.trim().to_owned();

    // Both sockets saw the end, and the exchange ended once on each side.
    let ended = |agent: &AgentProcess| {
        let b = agent.pod_entry("default", "pod-b");
        let a = agent.pod_entry("default", "pod-a");
        agent
            .health()
            .is_ok_and(|h| h.kernel.connections_closed == 2)
            && b.is_ok_and(|b| b.inbound.totals.responses.total() == 1)
            && a.is_ok_and(|a| a.outbound.totals.responses.total() == 1)
    };
    let closed = poll_until(Duration::from_secs(5), Duration::from_millis(250), || {
        ended(&agent)
    });
    let health = agent.health().expect("agent health");
    assert!(closed, "both sockets closed: {:?}", health.kernel);
    assert_eq!(health.kernel.connections_opened, 2, "{:?}", health.kernel);
    let b = agent.pod_entry("default", "pod-b").expect("pod b entry");
    let a = agent.pod_entry("default", "pod-a").expect("pod a entry");
    for (flow, entry) in [(&b.inbound, &b), (&a.outbound, &a)] {
        assert_eq!(flow.totals.requests, 1, "{entry:?}");
        assert_eq!(flow.totals.responses.total(), 1, "{entry:?}");
        assert_eq!(class(&flow.totals.responses), 1, "{entry:?}");
    }

    // Nothing stays in flight: once the window has passed the end, the average concurrency is
    // exactly 0 (an exchange left in flight would hold it at 1).
    let window_passed = ended_at + Duration::from_secs(WINDOW_SECS + 2);
    std::thread::sleep(window_passed.saturating_duration_since(Instant::now()));
    let b = agent.pod_entry("default", "pod-b").expect("pod b entry");
    let a = agent.pod_entry("default", "pod-a").expect("pod a entry");
    assert_eq!(b.inbound.concurrency, Some(0.0), "{b:?}");
    assert_eq!(a.outbound.concurrency, Some(0.0), "{a:?}");

    drop(stdin);
    client
        .wait_timeout(Duration::from_secs(10))
        .expect("client exits");
    assert!(agent.terminate().expect("stop agent").success());
    last
}

#[test]
fn an_exchange_in_flight_ends_when_a_connection_opened_before_the_agent_is_reset() {
    let last = pre_existing_connection_ends("reset", |r| r.none);
    assert_eq!(last, "reset");
}

#[test]
fn a_connection_opened_before_the_agent_ends_at_its_fins_after_the_answer_is_counted() {
    let last = pre_existing_connection_ends("half-close", |r| r.success);
    assert_eq!(
        last, "closed 200",
        "the server answered after the client's FIN"
    );
}
