//! Traffic that is not HTTP/1.x adds nothing: TLS handshakes, a Redis-style protocol, random
//! bytes, and text that only resembles HTTP. Real requests right after still count exactly.

use std::time::Duration;

use podmeter_tests::{
    AgentProcess, Cluster, Curl, Nginx, PodCounts, nginx::listening_tcp_ports, run_with_input,
    serial, wait::poll_until,
};

#[test]
fn non_http_traffic_adds_nothing() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let _nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    // An echo server: whatever a client sends comes back, so the client also receives it.
    let echo = pod_b
        .spawn(
            "ncat",
            &["--listen", "--keep-open", "--exec", "/bin/cat", "6379"],
        )
        .expect("echo server in pod b");
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");
    let b = pod_b.ip().to_string();
    assert!(
        poll_until(Duration::from_secs(10), Duration::from_millis(50), || {
            listening_tcp_ports(echo.pid()).contains(&6379)
        }),
        "the echo server listens on 6379"
    );

    let mut random = vec![0u8; 256 * 1024];
    let mut state = 0x9e37_79b9_7f4a_7c15u64;
    for byte in &mut random {
        // xorshift: reproducible pseudo-random bytes
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte = state as u8;
    }
    let redis = b"*1\r\n$4\r\nPING\r\n*3\r\n$3\r\nSET\r\n$3\r\nkey\r\n$5\r\nvalue\r\n*2\r\n$3\r\nGET\r\n$3\r\nkey\r\n".to_vec();
    let look_alikes = b"GETX / HTTP/1.1\r\n\r\nget / http/1.1\r\n\r\nHTTP/1.1 200 OK\r\n\r\nHTTP/2.0 200 OK\r\n\r\n".to_vec();
    for (what, port, input) in [
        ("redis protocol to the echo server", "6379", redis.clone()),
        ("redis protocol to nginx", "80", redis),
        ("random bytes to the echo server", "6379", random.clone()),
        ("random bytes to nginx", "80", random),
        ("HTTP look-alikes to the echo server", "6379", look_alikes),
    ] {
        let mut ncat = pod_a.command("ncat").expect("ncat");
        // --no-shutdown: a half-close after the input makes the echo server's ncat end the
        // connection before cat has written the echo back.
        ncat.args([
            "--no-shutdown",
            "--wait",
            "5",
            "--idle-timeout",
            "2",
            &b,
            port,
        ]);
        let out = run_with_input(ncat, &input, Duration::from_secs(20)).expect(what);
        eprintln!("{what}: {} bytes back", out.stdout.len());
        // An answer (the echo, or nginx's 400) proves the bytes reached the server's socket.
        assert!(!out.stdout.is_empty(), "{what}: nothing came back: {out:?}");
    }
    for port in ["80", "6379"] {
        let mut tls = pod_a.command("openssl").expect("openssl");
        tls.args([
            "s_client",
            "-connect",
            &format!("{b}:{port}"),
            "-servername",
            "podmeter.test",
        ]);
        let out = run_with_input(tls, b"", Duration::from_secs(20)).expect("tls handshake");
        assert!(!out.success(), "no TLS server there: the handshake fails");
        // ... after the connection was made, so the ClientHello went out.
        assert!(out.stdout.contains("CONNECTED("), "port {port}: {out:?}");
    }

    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        PodCounts::default()
    );
    assert_eq!(
        agent.wait_stable_counts("default", "pod-a").expect("a"),
        PodCounts::default()
    );

    // The agent was watching all along: real requests count at once.
    let report = Curl::new(format!("http://{b}/"))
        .count(5)
        .run_from(&pod_a)
        .expect("curl");
    assert_eq!(report.status(200), 5);
    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        PodCounts {
            inbound: 5,
            outbound: 0
        }
    );
    assert!(agent.terminate().expect("stop agent").success());
}
