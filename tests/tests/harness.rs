//! Tests of the harness itself: pods, nginx, clients and cleanup, without the agent.

use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    process::Command,
    sync::Mutex,
    time::{Duration, Instant},
};

use podmeter_tests::{
    AgentProcess, Cluster, Curl, Hey, Nginx, Pod, PodCounts,
    cgroup::cgroup_of_pid,
    nginx::{BACKEND_BODY, CHUNKED_BODY_LEN, ECHO_BODY, ROOT_BODY},
    run_ok, serial,
};

const SHORT: Duration = Duration::from_secs(10);

/// Everything a test created, recorded so that its removal can be checked after the guards drop.
#[derive(Debug, Default, Clone)]
struct Created {
    netns: Vec<String>,
    veths: Vec<String>,
    bridge: String,
    cgroup_root: PathBuf,
    /// Processes seen in the pods, with their command lines.
    pids: Vec<(u32, String)>,
}

impl Created {
    fn record_cluster(&mut self, cluster: &Cluster) {
        self.bridge = cluster.bridge().to_owned();
        self.cgroup_root = cluster.cgroup_root().to_path_buf();
    }

    fn record_pod(&mut self, pod: &Pod<'_>) {
        self.netns.push(pod.netns_name().to_owned());
        self.veths.push(pod.host_veth().to_owned());
        // Each with its command line now: later, the same PID with another command line is
        // another process (PID reuse), and this one is gone.
        for pid in pod.pids().expect("pod pids") {
            self.pids.push((pid, cmdline(pid)));
        }
    }
}

fn stdout_of(program: &str, args: &[&str]) -> String {
    let mut command = Command::new(program);
    command.args(args);
    run_ok(command, SHORT).expect("host command").stdout
}

/// The command line of process `pid`, empty when there is none.
fn cmdline(pid: u32) -> String {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|c| String::from_utf8_lossy(&c).into_owned())
        .unwrap_or_default()
}

/// A PID is gone when /proc has no such process, or it runs another command line (PID reuse).
fn process_gone(pid: u32, recorded: &str) -> bool {
    cmdline(pid) != recorded
}

fn assert_removed(created: &Created) {
    let netns_list = stdout_of("ip", &["netns", "list"]);
    for name in &created.netns {
        assert!(
            !netns_list
                .lines()
                .any(|line| line.split_whitespace().next() == Some(name)),
            "netns {name} left"
        );
        assert!(
            !Path::new("/run/netns").join(name).exists(),
            "/run/netns/{name} left"
        );
    }
    let veth_list = stdout_of("ip", &["-o", "link", "show", "type", "veth"]);
    for veth in &created.veths {
        assert!(
            !veth_list.contains(&format!(" {veth}@")),
            "veth {veth} left:\n{veth_list}"
        );
    }
    assert!(!created.bridge.is_empty(), "no bridge was recorded");
    assert!(
        !Path::new("/sys/class/net").join(&created.bridge).exists(),
        "bridge {} left",
        created.bridge
    );
    assert!(
        !created.cgroup_root.as_os_str().is_empty(),
        "no cgroup was recorded"
    );
    assert!(
        !created.cgroup_root.exists(),
        "cgroup {} left",
        created.cgroup_root.display()
    );
    for (pid, recorded) in &created.pids {
        assert!(
            process_gone(*pid, recorded),
            "process {pid} ({recorded:?}) left"
        );
    }
}

#[test]
fn hey_from_pod_a_gets_200_from_nginx_in_pod_b() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx");

    let report = Hey::new(nginx.url("/"))
        .requests(200)
        .concurrency(2)
        .run_from(&pod_a)
        .expect("hey");

    assert_eq!(report.by_status, [(200, 200)].into(), "{report:?}");
    assert_eq!(report.failed(), 0);
}

#[test]
fn curl_from_root_namespace_reaches_the_pod_and_its_locations() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx");

    let report = Curl::new(nginx.url("/"))
        .count(5)
        .run_from_root()
        .expect("curl /");
    assert_eq!(report.by_status, [(200, 5)].into());

    let root = Curl::new(nginx.url("/"))
        .verbose_from_root()
        .expect("curl -v /");
    assert_eq!(root.stdout, ROOT_BODY);
    let proxied = Curl::new(nginx.url("/proxy/anything"))
        .verbose_from_root()
        .expect("curl /proxy/");
    assert_eq!(proxied.stdout, BACKEND_BODY);
    let echo = Curl::new(nginx.url("/echo"))
        .data_binary("hello")
        .verbose_from_root()
        .expect("curl POST /echo");
    assert_eq!(echo.stdout, ECHO_BODY);

    let missing = Curl::new(nginx.url("/missing"))
        .count(2)
        .run_from_root()
        .expect("curl /missing");
    assert_eq!(missing.by_status, [(404, 2)].into());
}

#[test]
fn chunked_location_really_answers_chunked() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx");

    let plain = Curl::new(nginx.url("/chunked"))
        .verbose_from(&pod_a)
        .expect("curl /chunked");
    assert!(
        plain.stderr.contains("< HTTP/1.1 200 OK"),
        "{}",
        plain.stderr
    );
    assert!(
        plain.stderr.contains("< Transfer-Encoding: chunked"),
        "{}",
        plain.stderr
    );
    assert!(
        !plain.stderr.contains("< Content-Length"),
        "{}",
        plain.stderr
    );
    assert_eq!(plain.stdout.len(), CHUNKED_BODY_LEN);

    let gzip = Curl::new(nginx.url("/chunked"))
        .compressed()
        .verbose_from(&pod_a)
        .expect("curl --compressed");
    assert!(
        gzip.stderr.contains("< Transfer-Encoding: chunked"),
        "{}",
        gzip.stderr
    );
    assert!(
        gzip.stderr.contains("< Content-Encoding: gzip"),
        "{}",
        gzip.stderr
    );
    assert_eq!(
        gzip.stdout, plain.stdout,
        "curl decodes gzip back to the same body"
    );
}

#[test]
fn expect_100_continue_gets_100_before_the_final_response() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx");

    for path in ["/echo", "/proxy/upload"] {
        let started = Instant::now();
        let exchange = Curl::new(nginx.url(path))
            .data_binary(vec![b'x'; 4096])
            .expect_continue()
            .verbose_from(&pod_a)
            .expect("curl POST with Expect");
        let log = &exchange.stderr;
        let position = |needle: &str| {
            log.find(needle)
                .unwrap_or_else(|| panic!("{path}: no {needle:?} in:\n{log}"))
        };
        let sent_expect = position("> Expect: 100-continue");
        let got_continue = position("< HTTP/1.1 100 Continue");
        let uploaded = position("We are completely uploaded and fine");
        let got_final = position("< HTTP/1.1 200 OK");
        assert!(
            sent_expect < got_continue && got_continue < uploaded && uploaded < got_final,
            "{path}:\n{log}"
        );
        // Without a 100 Continue curl would have waited its 1 s expect timeout before sending.
        assert!(
            started.elapsed() < Duration::from_millis(900),
            "{path} took {:?}",
            started.elapsed()
        );
    }
}

#[test]
fn curl_variants_all_complete() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx");

    let variants = [
        ("keep-alive", Curl::new(nginx.url("/")).count(20)),
        ("http/1.0", Curl::new(nginx.url("/")).count(5).http10()),
        (
            "connection close",
            Curl::new(nginx.url("/")).count(5).connection_close(),
        ),
        (
            "post",
            Curl::new(nginx.url("/echo")).count(5).data_binary("body"),
        ),
        (
            "expect",
            Curl::new(nginx.url("/echo"))
                .count(3)
                .data_binary(vec![b'y'; 2048])
                .expect_continue(),
        ),
        (
            "compressed chunked",
            Curl::new(nginx.url("/chunked")).count(3).compressed(),
        ),
        ("proxied", Curl::new(nginx.url("/proxy/x")).count(5)),
    ];
    for (name, curl) in variants {
        let report = curl
            .run_from(&pod_a)
            .unwrap_or_else(|error| panic!("{name}: {error:#}"));
        assert_eq!(report.failed(), 0, "{name}: {report:?}");
        assert_eq!(
            report.by_status.keys().copied().collect::<Vec<_>>(),
            [200],
            "{name}: {report:?}"
        );
    }
}

#[test]
fn hey_variants_all_complete() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx");

    let no_keepalive = Hey::new(nginx.url("/"))
        .requests(50)
        .concurrency(2)
        .disable_keepalive()
        .run_from(&pod_a)
        .expect("hey");
    assert_eq!(no_keepalive.by_status, [(200, 50)].into());

    let post = Hey::new(nginx.url("/echo"))
        .requests(50)
        .concurrency(2)
        .post("a=1")
        .run_from(&pod_a)
        .expect("hey");
    assert_eq!(post.by_status, [(200, 50)].into());

    // 2 workers at 20 requests/s each: 40 requests take about a second.
    let started = Instant::now();
    let paced = Hey::new(nginx.url("/"))
        .requests(40)
        .concurrency(2)
        .rate_per_worker(20)
        .run_from(&pod_a)
        .expect("hey");
    assert_eq!(paced.by_status, [(200, 40)].into());
    assert!(
        started.elapsed() >= Duration::from_millis(800),
        "rate limit not applied: {:?}",
        started.elapsed()
    );

    let from_root = Hey::new(nginx.url("/proxy/"))
        .requests(20)
        .concurrency(2)
        .run_from_root()
        .expect("hey");
    assert_eq!(from_root.by_status, [(200, 20)].into());
}

#[test]
fn processes_start_inside_the_pod_netns_and_cgroup() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("team-x", "pod-a").expect("pod a");

    let mut sleeper = pod_a.spawn("sleep", &["30"]).expect("sleep in pod");
    let mount = podmeter_tests::cgroup::cgroup2_mount().expect("cgroup2");
    let expected = format!(
        "/{}",
        pod_a
            .cgroup_dir()
            .strip_prefix(&mount)
            .expect("under mount")
            .display()
    );
    assert!(expected.ends_with("/team-x/pod-a"), "{expected}");
    assert_eq!(cgroup_of_pid(sleeper.pid()).expect("cgroup"), expected);
    assert_eq!(pod_a.pids().expect("pids"), vec![sleeper.pid()]);

    let netns_inode = std::fs::metadata(pod_a.netns_path())
        .expect("netns file")
        .ino();
    let link = std::fs::read_link(format!("/proc/{}/ns/net", sleeper.pid())).expect("ns link");
    assert_eq!(link.to_string_lossy(), format!("net:[{netns_inode}]"));

    let addresses = pod_a
        .run("ip", &["-o", "-4", "addr", "show"], SHORT)
        .expect("ip addr")
        .stdout;
    assert!(
        addresses.contains(&format!("eth0    inet {}/24", pod_a.ip())),
        "{addresses}"
    );
    assert!(addresses.contains("lo    inet 127.0.0.1/8"), "{addresses}");

    let status = sleeper
        .terminate(Duration::from_secs(5))
        .expect("terminate");
    assert!(!status.success(), "sleep was ended by SIGTERM: {status}");
    assert!(pod_a.pids().expect("pids").is_empty());
}

#[test]
fn packet_loss_rule_is_installed_and_removed() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx");

    pod_b.set_ingress_loss(5).expect("set loss");
    pod_b
        .set_ingress_loss(5)
        .expect("setting it again replaces it");
    let ruleset = pod_b.nft_ruleset().expect("ruleset");
    assert!(
        ruleset.contains("numgen random mod 100 < 5 drop"),
        "{ruleset}"
    );
    // nft prints priority -300 by its name in the ip family.
    assert!(ruleset.contains("priority raw"), "{ruleset}");

    // TCP retransmits what is lost: every request still completes.
    let report = Hey::new(nginx.url("/"))
        .requests(200)
        .concurrency(2)
        .run_from(&pod_a)
        .expect("hey");
    assert_eq!(report.by_status, [(200, 200)].into());

    pod_b.clear_ingress_loss().expect("clear loss");
    pod_b
        .clear_ingress_loss()
        .expect("clearing twice is harmless");
    assert!(
        !pod_b
            .nft_ruleset()
            .expect("ruleset")
            .contains("podmeter_loss")
    );
}

#[test]
fn dropping_the_guards_removes_everything() {
    let _serial = serial();
    let mut created = Created::default();
    {
        let cluster = Cluster::new().expect("cluster");
        created.record_cluster(&cluster);
        let pod_a = cluster.pod("default", "pod-a").expect("pod a");
        let pod_b = cluster.pod("default", "pod-b").expect("pod b");
        let nginx = Nginx::start(&pod_b).expect("nginx");
        let report = Hey::new(nginx.url("/"))
            .requests(20)
            .concurrency(2)
            .run_from(&pod_a)
            .expect("hey");
        assert_eq!(report.status(200), 20);
        created.record_pod(&pod_a);
        created.record_pod(&pod_b);
        assert!(created.pids.iter().any(|(pid, _)| *pid == nginx.pid()));
        assert_eq!(
            created.pids.len(),
            2,
            "nginx master and one worker: {:?}",
            created.pids
        );
    }
    assert_removed(&created);
}

#[test]
fn a_panicking_test_body_still_cleans_up() {
    let _serial = serial();
    let created = Mutex::new(Created::default());
    let outcome = std::panic::catch_unwind(|| {
        let cluster = Cluster::new().expect("cluster");
        created.lock().expect("lock").record_cluster(&cluster);
        let pod_a = cluster.pod("default", "pod-a").expect("pod a");
        let pod_b = cluster.pod("default", "pod-b").expect("pod b");
        let _nginx = Nginx::start(&pod_b).expect("nginx");
        let _sleeper = pod_a.spawn("sleep", &["60"]).expect("sleep");
        created.lock().expect("lock").record_pod(&pod_a);
        created.lock().expect("lock").record_pod(&pod_b);
        panic!("deliberate panic inside a test body");
    });
    assert!(outcome.is_err(), "the body was supposed to panic");
    let created = created.into_inner().expect("lock");
    assert_eq!(created.netns.len(), 2);
    assert!(
        created.pids.iter().any(|(_, c)| c.starts_with("sleep")),
        "the sleeper was recorded: {:?}",
        created.pids
    );
    assert_removed(&created);
}

#[test]
fn pod_creation_and_removal_timing() {
    let _serial = serial();
    let started = Instant::now();
    let cluster = Cluster::new().expect("cluster");
    let cluster_setup = started.elapsed();
    let mut create = Vec::new();
    let mut destroy = Vec::new();
    for index in 0..5 {
        let started = Instant::now();
        let pod = cluster
            .pod("default", &format!("pod-{index}"))
            .expect("pod");
        create.push(started.elapsed());
        let started = Instant::now();
        drop(pod);
        destroy.push(started.elapsed());
    }
    let pod = cluster.pod("default", "web").expect("pod");
    let started = Instant::now();
    let nginx = Nginx::start(&pod).expect("nginx");
    let nginx_start = started.elapsed();
    let started = Instant::now();
    nginx.stop().expect("stop nginx");
    let nginx_stop = started.elapsed();
    drop(pod);
    let started = Instant::now();
    drop(cluster);
    let cluster_teardown = started.elapsed();
    println!(
        "cluster setup {cluster_setup:?}, teardown {cluster_teardown:?}; pod create {create:?}; \
         pod destroy {destroy:?}; nginx start {nginx_start:?}, stop {nginx_stop:?}"
    );
    for took in create.iter().chain(&destroy) {
        assert!(*took < Duration::from_secs(5), "a pod took {took:?}");
    }
}

#[test]
fn agent_process_plumbing_works_with_a_stand_in_agent() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let stand_in = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/stand-in-agent.py");
    let mut agent =
        AgentProcess::start_binary(&stand_in, cluster.cgroup_root(), &[]).expect("stand-in agent");
    assert!(
        agent.base_url().starts_with("http://127.0.0.1:"),
        "{}",
        agent.base_url()
    );

    let pods = agent.get("/v1/pods").expect("GET /v1/pods");
    assert_eq!(
        pods["cgroup_root"],
        cluster.cgroup_root().display().to_string()
    );
    assert!(agent.get("/missing").is_err(), "a 404 is an error");
    assert_eq!(
        agent.pod_counts("default", "pod-a").expect("absent pod"),
        PodCounts::default()
    );

    let started = Instant::now();
    let counts = agent
        .wait_stable_counts("default", "pod-b")
        .expect("stable counts");
    assert_eq!(
        counts,
        PodCounts {
            inbound: 50,
            outbound: 0
        }
    );
    assert!(
        started.elapsed() >= Duration::from_secs(2),
        "stable means unchanged for 2 s"
    );

    let status = agent.terminate().expect("terminate");
    assert!(
        status.success(),
        "the stand-in exits 0 on SIGTERM: {status}"
    );
}
