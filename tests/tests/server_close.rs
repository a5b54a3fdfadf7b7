//! Requests that race the server's close of a keep-alive connection. A request that arrives after
//! the server's FIN can never be answered, and the client sends it again on a new connection: it
//! is not counted (`requests_after_close`). One that reaches the socket just before the server
//! closes it unread counts, and ends as `none`.

use std::{
    io::{BufRead, BufReader},
    process::Stdio,
    sync::atomic::{AtomicBool, Ordering},
    time::Duration,
};

use podmeter_tests::{AgentProcess, ChildGuard, Cluster, Hey, Nginx, serial, wait::poll_until};

const PORT: u16 = 8090;

/// One connection: answers one request, then half-closes (FIN) and reads what comes after it.
const HALF_CLOSING_SERVER: &str = r#"
import socket, sys
l = socket.socket()
l.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
l.bind(("0.0.0.0", int(sys.argv[1])))
l.listen(1)
print("ready", flush=True)
c, _ = l.accept()
buf = b""
while b"\r\n\r\n" not in buf:
    buf += c.recv(4096)
c.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n")
c.shutdown(socket.SHUT_WR)
late = b""
while True:
    data = c.recv(4096)
    if not data:
        break
    late += data
print("late", late.split(b" ")[1].decode(), flush=True)
c.close()
"#;

/// Sends a request, reads the answer up to the server's FIN, then sends one more request.
const LATE_CLIENT: &str = r#"
import socket, sys
s = socket.create_connection((sys.argv[1], int(sys.argv[2])))
s.sendall(b"GET /first HTTP/1.1\r\nHost: b\r\n\r\n")
buf = b""
while True:
    data = s.recv(4096)
    if not data:
        break
    buf += data
s.sendall(b"GET /late HTTP/1.1\r\nHost: b\r\n\r\n")
s.shutdown(socket.SHUT_WR)
print("answered", buf.split(b" ")[1].decode(), flush=True)
"#;

#[test]
fn a_request_sent_after_the_servers_fin_is_not_counted_on_either_side() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");

    let mut command = pod_b.command("python3").expect("python3 in pod b");
    command
        .args(["-c", HALF_CLOSING_SERVER, &PORT.to_string()])
        .stdout(Stdio::piped());
    let mut server = ChildGuard::spawn(command, "half-closing server").expect("start server");
    let mut server_out = BufReader::new(server.child_mut().stdout.take().expect("server stdout"));
    let mut line = String::new();
    server_out.read_line(&mut line).expect("server output");
    assert_eq!(line.trim(), "ready");

    let mut command = pod_a.command("python3").expect("python3 in pod a");
    command.args([
        "-c",
        LATE_CLIENT,
        &pod_b.ip().to_string(),
        &PORT.to_string(),
    ]);
    let client = podmeter_tests::run(command, Duration::from_secs(10))
        .expect("client")
        .check("late client")
        .expect("client succeeds");
    assert_eq!(client.stdout.trim(), "answered 200");
    line.clear();
    server_out.read_line(&mut line).expect("server output");
    // The server read the late request, and could not answer it.
    assert_eq!(line.trim(), "late /late");

    // Both sockets saw the late request after the server's FIN, and neither counted it.
    let seen = poll_until(Duration::from_secs(5), Duration::from_millis(100), || {
        agent
            .health()
            .is_ok_and(|h| h.kernel.requests_after_close == 2 && h.kernel.connections_closed == 2)
    });
    let health = agent.health().expect("health");
    assert!(seen, "{:?}", health.kernel);
    let b = agent.pod_entry("default", "pod-b").expect("pod b entry");
    let a = agent.pod_entry("default", "pod-a").expect("pod a entry");
    for (flow, entry) in [(&b.inbound, &b), (&a.outbound, &a)] {
        assert_eq!(flow.totals.requests, 1, "{entry:?}");
        assert_eq!(flow.totals.responses.success, 1, "{entry:?}");
        assert_eq!(flow.totals.responses.total(), 1, "{entry:?}");
    }
    server
        .wait_timeout(Duration::from_secs(5))
        .expect("server exits");
}

#[test]
fn nginx_reloads_under_keepalive_load_lose_and_double_count_nothing() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    let agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");

    // Each reload closes the old workers' idle keep-alive connections, some of them just as hey
    // sends its next request on them; hey (Go) then sends that request again on a new connection.
    let pid = libc::pid_t::try_from(nginx.pid()).expect("pid");
    let done = AtomicBool::new(false);
    let mut reloads = 0u32;
    let report = std::thread::scope(|s| {
        s.spawn(|| {
            while !done.load(Ordering::SeqCst) && reloads < 200 {
                std::thread::sleep(Duration::from_millis(150));
                // SAFETY: signals the nginx master this test started, by its PID.
                assert_eq!(unsafe { libc::kill(pid, libc::SIGHUP) }, 0, "reload nginx");
                reloads += 1;
            }
        });
        let report = Hey::new(nginx.url("/"))
            .requests(40_000)
            .concurrency(32)
            .deadline(Duration::from_secs(90))
            .run_from(&pod_a);
        done.store(true, Ordering::SeqCst);
        report
    })
    .expect("hey");
    assert_eq!(report.failed(), 0, "{report:?}");
    assert_eq!(report.status(200), 40_000, "{report:?}");

    agent
        .wait_stable_counts("default", "pod-b")
        .expect("pod b counts");
    let b = agent.pod_entry("default", "pod-b").expect("pod b entry");
    let kernel = agent.health().expect("health").kernel;
    let totals = &b.inbound.totals;
    eprintln!(
        "{reloads} reloads: {} requests, {} answered, {} closed unread by the server, {} after its FIN (not counted)",
        totals.requests,
        totals.responses.success,
        totals.responses.none,
        kernel.requests_after_close
    );
    // Every answered request counted once, with its response; every other count is a request the
    // server closed unread, which ended as `none`.
    assert_eq!(totals.responses.success, 40_000, "{b:?}");
    assert_eq!(totals.responses.total(), totals.requests, "{b:?}");
    assert_eq!(totals.requests, 40_000 + totals.responses.none, "{b:?}");
}
