//! The agent's life: it attaches on start, detaches on SIGTERM, SIGINT and even SIGKILL (BPF
//! links die with their process), says in one line what is missing when it cannot start, and
//! `podmeter top` shows what it counted.

use std::{path::Path, process::Command, time::Duration};

use podmeter_tests::{AgentProcess, Cluster, Hey, Nginx, PodCounts, run, serial};

/// Names of the podmeter programs attached to `cgroup` (from `bpftool cgroup show`).
fn attached(cgroup: &Path) -> Vec<String> {
    let mut bpftool = Command::new("bpftool");
    bpftool.arg("cgroup").arg("show").arg(cgroup);
    let out = run(bpftool, Duration::from_secs(10)).expect("bpftool cgroup show");
    assert!(out.success(), "bpftool failed: {}", out.stderr);
    out.stdout
        .split_whitespace()
        .filter(|w| w.starts_with("podmeter_"))
        .map(str::to_owned)
        .collect()
}

#[test]
fn programs_detach_on_sigterm_sigint_and_sigkill() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let root = cluster.cgroup_root();
    assert!(
        attached(root).is_empty(),
        "nothing attached before the agent starts"
    );
    for (signal, clean_exit) in [
        (libc::SIGTERM, true),
        (libc::SIGINT, true),
        (libc::SIGKILL, false),
    ] {
        let mut agent = AgentProcess::start(root, &[]).expect("agent");
        let mut names = attached(root);
        names.sort();
        assert_eq!(
            names,
            ["podmeter_egress", "podmeter_ingress", "podmeter_sock_ops"],
            "attached"
        );
        agent.signal(signal).expect("signal the agent");
        let status = agent
            .wait_timeout(Duration::from_secs(10))
            .expect("wait")
            .expect("agent exits within 10 s");
        assert_eq!(status.success(), clean_exit, "signal {signal}: {status:?}");
        assert!(
            attached(root).is_empty(),
            "signal {signal} left attachments: {:?}",
            attached(root)
        );
    }
}

/// Runs `podmeter agent ...` (as the given user, when set) and returns (exit code, stderr).
fn agent_failure(args: &[&str], as_nobody: bool) -> (Option<i32>, String) {
    let mut command = if as_nobody {
        let mut c = Command::new("setpriv");
        c.args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
            "--bounding-set=-all",
        ]);
        c.arg(AgentProcess::binary());
        c
    } else {
        Command::new(AgentProcess::binary())
    };
    command
        .arg("agent")
        .args(args)
        .arg("--listen")
        .arg("127.0.0.1:0");
    let out = run(command, Duration::from_secs(20)).expect("run the agent");
    (out.status.code(), out.stderr)
}

#[test]
fn missing_privileges_or_cgroup2_is_one_clear_line() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let root = cluster
        .cgroup_root()
        .to_str()
        .expect("utf-8 path")
        .to_owned();

    let (code, stderr) = agent_failure(&["--cgroup-root", &root], true);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("run it as root, or grant CAP_BPF, CAP_PERFMON and CAP_NET_ADMIN"),
        "{stderr}"
    );

    let (code, stderr) = agent_failure(&["--cgroup-root", "/tmp"], false);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("/tmp is not a cgroup v2 directory: mount cgroup2"),
        "{stderr}"
    );

    let (code, stderr) = agent_failure(&["--cgroup-root", "/nonexistent/podmeter"], false);
    assert_eq!(code, Some(1), "{stderr}");
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("cannot open cgroup /nonexistent/podmeter"),
        "{stderr}"
    );
    assert!(attached(cluster.cgroup_root()).is_empty());
}

#[test]
fn top_shows_the_exact_counts_of_a_running_agent() {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx");
    let mut agent = AgentProcess::start(cluster.cgroup_root(), &[]).expect("agent");
    let report = Hey::new(nginx.url("/"))
        .requests(777)
        .concurrency(3)
        .run_from(&pod_a)
        .expect("hey");
    assert_eq!(report.status(200), 777);
    assert_eq!(
        agent.wait_stable_counts("default", "pod-b").expect("b"),
        PodCounts {
            inbound: 777,
            outbound: 0
        }
    );

    let mut top = Command::new(AgentProcess::binary());
    top.args(["top", "--agent", agent.base_url(), "--count", "1"]);
    let out = run(top, Duration::from_secs(20)).expect("podmeter top");
    assert!(out.success(), "{}", out.stderr);
    let row = |pod: &str| -> Vec<String> {
        out.stdout
            .lines()
            .find(|l| l.split_whitespace().nth(1) == Some(pod))
            .unwrap_or_else(|| panic!("no row for {pod} in:\n{}", out.stdout))
            .split_whitespace()
            .map(str::to_owned)
            .collect()
    };
    // NAMESPACE POD IN IN/s OUT OUT/s ...
    assert_eq!(
        (row("pod-b")[2].as_str(), row("pod-b")[4].as_str()),
        ("777", "0"),
        "{}",
        out.stdout
    );
    assert_eq!(
        (row("pod-a")[2].as_str(), row("pod-a")[4].as_str()),
        ("0", "777"),
        "{}",
        out.stdout
    );
    assert!(agent.terminate().expect("stop agent").success());
}
