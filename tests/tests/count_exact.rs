//! Exact counts for the kinds of HTTP/1.x traffic a pod serves and makes: each request once for
//! its server (inbound) and once for its client (outbound), whatever the framing, and under loss.

use std::time::Duration;

use podmeter_tests::{
    AgentProcess, Cluster, Curl, Hey, Nginx, PodCounts, serial, wait::poll_until,
};

#[test]
fn keepalive_requests_between_two_pods_count_once_for_each_side() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");

    let report = Hey::new(nginx.url("/"))
        .requests(1000)
        .concurrency(4)
        .run_from(&pod_a)
        .expect("hey");
    assert_eq!(
        (report.status(200), report.failed()),
        (1000, 0),
        "{report:?}"
    );

    let b = agent
        .wait_stable_counts("default", "pod-b")
        .expect("pod b counts");
    let a = agent
        .wait_stable_counts("default", "pod-a")
        .expect("pod a counts");
    assert_eq!(
        b,
        PodCounts {
            inbound: 1000,
            outbound: 0
        }
    );
    assert_eq!(
        a,
        PodCounts {
            inbound: 0,
            outbound: 1000
        }
    );

    let entry = agent.pod_entry("default", "pod-b").expect("pod entry");
    assert_eq!(entry.inbound.totals.responses.success, 1000, "{entry:?}");
    // hey keeps 4 connections open: the events paired every request with its response.
    let observed = &entry.observed.inbound;
    assert_eq!(observed.exchanges, 1000, "{entry:?}");
    assert_eq!(observed.by_method.get("GET"), Some(&1000), "{entry:?}");
    assert_eq!(observed.latency_count, 1000, "{entry:?}");
    assert!(agent.terminate().expect("stop agent").success());
}

#[test]
fn close_http10_bodies_chunked_and_100_continue_each_count_once() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_c = cluster.pod("default", "pod-c").expect("pod c");
    let nginx = Nginx::start(&pod_c).expect("nginx in pod c");
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");

    // Bodies that begin with, and contain, a request line: they must never count.
    let small_body = b"GET / HTTP/1.1\r\nHost: inside-a-body\r\n\r\n".to_vec();
    let mut large_body = Vec::new();
    while large_body.len() < 256 * 1024 {
        large_body.extend_from_slice(b"GET / HTTP/1.1\r\nHost: x\r\n\r\nHTTP/1.1 200 OK\r\n\r\n");
    }
    let runs = [
        (
            "Connection: close",
            Curl::new(nginx.url("/")).count(20).connection_close(),
        ),
        ("HTTP/1.0", Curl::new(nginx.url("/")).count(20).http10()),
        (
            "POST small request-like body",
            Curl::new(nginx.url("/echo"))
                .count(20)
                .data_binary(small_body),
        ),
        (
            "POST 256 KiB request-like body",
            Curl::new(nginx.url("/echo"))
                .count(10)
                .data_binary(large_body.clone()),
        ),
        (
            "chunked gzip responses",
            Curl::new(nginx.url("/chunked")).count(20).compressed(),
        ),
        (
            "Expect: 100-continue",
            Curl::new(nginx.url("/echo"))
                .count(10)
                .expect_continue()
                .data_binary(large_body),
        ),
    ];
    let mut sent = 0;
    for (what, curl) in runs {
        let report = curl
            .deadline(Duration::from_secs(60))
            .run_from(&pod_a)
            .expect(what);
        assert_eq!(
            (report.status(200), report.failed()),
            (report.completed(), 0),
            "{what}: {report:?}"
        );
        sent += report.completed();
    }
    assert_eq!(sent, 100);

    assert_eq!(
        agent.wait_stable_counts("default", "pod-c").expect("c"),
        PodCounts {
            inbound: sent,
            outbound: 0
        }
    );
    assert_eq!(
        agent.wait_stable_counts("default", "pod-a").expect("a"),
        PodCounts {
            inbound: 0,
            outbound: 100
        }
    );
    let c = agent.pod_entry("default", "pod-c").expect("pod entry");
    // 100 Continue is interim: the exchanges end with their 200, none with the 100.
    assert_eq!(c.inbound.totals.responses.success, 100, "{c:?}");
    assert_eq!(c.inbound.totals.responses.informational, 0, "{c:?}");
    assert_eq!(c.observed.inbound.by_method.get("POST"), Some(&40), "{c:?}");
    let a = agent.pod_entry("default", "pod-a").expect("pod entry");
    assert_eq!(a.outbound.totals.responses.success, 100, "{a:?}");
    let stats = agent.health().expect("agent stats");
    assert!(
        stats.kernel.body_matches_skipped > 0,
        "bodies were looked at: {stats:?}"
    );
    assert!(agent.terminate().expect("stop agent").success());
}

#[test]
fn a_client_outside_the_pods_counts_for_the_server_only() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");

    let report = Hey::new(nginx.url("/"))
        .requests(300)
        .concurrency(3)
        .run_from_root()
        .expect("hey from root");
    assert_eq!(report.status(200), 300, "{report:?}");
    let curl = Curl::new(nginx.url("/"))
        .count(7)
        .run_from_root()
        .expect("curl from root");
    assert_eq!(curl.status(200), 7, "{curl:?}");

    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        PodCounts {
            inbound: 307,
            outbound: 0
        }
    );
    let pods = agent.pods().expect("pods");
    assert_eq!(pods.pods.len(), 1, "only pod-b saw traffic: {pods:?}");
    assert_eq!(pods.unattributed.outbound.totals.requests, 0, "{pods:?}");
    assert!(agent.terminate().expect("stop agent").success());
}

#[test]
fn five_percent_packet_loss_keeps_counts_exact() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");
    // Loss on both sides: the sender's egress sees every retransmission again.
    pod_a.set_ingress_loss(5).expect("loss on a");
    pod_b.set_ingress_loss(5).expect("loss on b");

    let keepalive = Hey::new(nginx.url("/"))
        .requests(1500)
        .concurrency(6)
        .request_timeout_secs(30)
        .deadline(Duration::from_secs(120))
        .run_from(&pod_a)
        .expect("hey keep-alive");
    let fresh = Hey::new(nginx.url("/chunked"))
        .requests(300)
        .concurrency(6)
        .disable_keepalive()
        .request_timeout_secs(30)
        .deadline(Duration::from_secs(120))
        .run_from(&pod_a)
        .expect("hey new connections");
    let served = keepalive.status(200) + fresh.status(200);
    assert_eq!(
        keepalive.failed() + fresh.failed(),
        0,
        "{keepalive:?} {fresh:?}"
    );
    assert_eq!(served, 1800);

    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        PodCounts {
            inbound: served,
            outbound: 0
        }
    );
    assert_eq!(
        agent.wait_stable_counts("default", "pod-a").expect("a"),
        PodCounts {
            inbound: 0,
            outbound: served
        }
    );
    let b = agent.pod_entry("default", "pod-b").expect("pod entry");
    assert_eq!(
        b.inbound.totals.responses.success, served,
        "every exchange ended with its 200: {b:?}"
    );
    let stats = agent.health().expect("agent stats");
    eprintln!("agent statistics after the lossy run: {stats:?}");
    assert!(
        stats.kernel.retransmissions_skipped > 0,
        "with 5% loss some request starts were retransmitted and skipped: {stats:?}"
    );
    pod_a.clear_ingress_loss().expect("clear loss a");
    pod_b.clear_ingress_loss().expect("clear loss b");
    assert!(agent.terminate().expect("stop agent").success());
}

/// An HTTP server on the pod's IPv6 loopback address, and 25 requests to it from the same
/// process, one connection each; prints the number answered 200.
const IPV6_LOOPBACK: &str = r#"
import http.client, http.server, socket, threading
class Server(http.server.ThreadingHTTPServer):
    address_family = socket.AF_INET6
server = Server(("::1", 0), http.server.SimpleHTTPRequestHandler)
threading.Thread(target=server.serve_forever, daemon=True).start()
port = server.server_address[1]
ok = 0
for _ in range(25):
    c = http.client.HTTPConnection("::1", port, timeout=10)
    c.request("GET", "/")
    r = c.getresponse()
    r.read()
    ok += r.status == 200
    c.close()
server.shutdown()
print(ok, flush=True)
"#;

#[test]
fn ipv6_requests_count_once_for_each_side() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");

    // IPv6 headers, booked as loopback traffic on both sides.
    let out = pod_b
        .run("python3", &["-c", IPV6_LOOPBACK], Duration::from_secs(30))
        .expect("python3 in pod b")
        .check("IPv6 loopback server and client")
        .expect("runs");
    assert_eq!(out.stdout.trim(), "25", "{out:?}");
    let counted = poll_until(Duration::from_secs(5), Duration::from_millis(100), || {
        agent.pod_entry("default", "pod-b").is_ok_and(|p| {
            p.loopback_inbound.totals.responses.success == 25
                && p.loopback_outbound.totals.responses.success == 25
        })
    });
    let entry = agent.pod_entry("default", "pod-b").expect("pod b entry");
    assert!(counted, "{entry:?}");
    for flow in [&entry.loopback_inbound, &entry.loopback_outbound] {
        assert_eq!(flow.totals.requests, 25, "{entry:?}");
        assert_eq!(flow.totals.responses.total(), 25, "{entry:?}");
    }
    assert_eq!(entry.inbound.totals.requests, 0, "{entry:?}");
    assert!(agent.terminate().expect("stop agent").success());
}
