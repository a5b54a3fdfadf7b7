//! No count lost across an agent restart or upgrade: with `--bpffs-dir` the programs and counters
//! stay attached and counting while no agent runs, the next agent takes them over and books the
//! gap exactly once, spread over the gap (no rate spike), and `agent-uninstall` removes them.

use std::{
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::Command,
    thread,
    time::Duration,
};

use podmeter_tests::{AgentProcess, Cluster, Nginx, PodCounts, paced::PacedHey, run, serial};

/// hey's load: one worker at 100 requests/s for 8 s.
const RATE: u32 = 100;
const LOAD: Duration = Duration::from_secs(8);
/// How long no agent runs.
const GAP: Duration = Duration::from_secs(2);

/// A throwaway pin directory under bpffs (mounted for the test when it is not), uninstalled and
/// removed on drop, also when the test fails.
struct PinDir {
    path: PathBuf,
    mounted_bpffs: bool,
}

impl PinDir {
    fn new() -> Self {
        let mounted_bpffs = !is_bpffs("/sys/fs/bpf");
        if mounted_bpffs {
            let mut mount = Command::new("mount");
            mount.args(["-t", "bpf", "bpf", "/sys/fs/bpf"]);
            let out = run(mount, Duration::from_secs(10)).expect("mount bpffs");
            assert!(
                out.success(),
                "this kernel cannot mount bpffs: {}",
                out.stderr
            );
        }
        Self {
            path: PathBuf::from(format!("/sys/fs/bpf/podmeter-test-{}", std::process::id())),
            mounted_bpffs,
        }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("UTF-8 path")
    }

    /// `podmeter agent-uninstall --bpffs-dir <dir>`: (success, stdout).
    fn uninstall(&self) -> (bool, String) {
        let mut command = Command::new(AgentProcess::binary());
        command.args(["agent-uninstall", "--bpffs-dir", self.arg()]);
        let out = run(command, Duration::from_secs(20)).expect("run agent-uninstall");
        (out.success(), out.stdout)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = self.uninstall();
        let _ = std::fs::remove_dir_all(&self.path);
        if self.mounted_bpffs {
            let mut umount = Command::new("umount");
            umount.arg("/sys/fs/bpf");
            let _ = run(umount, Duration::from_secs(10));
        }
    }
}

fn is_bpffs(path: &str) -> bool {
    std::fs::read_to_string("/proc/mounts").is_ok_and(|mounts| {
        mounts.lines().any(|l| {
            let mut fields = l.split_whitespace().skip(1);
            fields.next() == Some(path) && fields.next() == Some("bpf")
        })
    })
}

/// (program id, name) of the podmeter programs attached to `cgroup`, sorted by name.
fn attached(cgroup: &Path) -> Vec<(u32, String)> {
    let mut bpftool = Command::new("bpftool");
    bpftool.arg("cgroup").arg("show").arg(cgroup);
    let out = run(bpftool, Duration::from_secs(10)).expect("bpftool cgroup show");
    assert!(out.success(), "bpftool failed: {}", out.stderr);
    let mut programs: Vec<(u32, String)> = out
        .stdout
        .lines()
        .filter_map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            let name = words.last().filter(|w| w.starts_with("podmeter_"))?;
            Some((words.first()?.parse().ok()?, (*name).to_owned()))
        })
        .collect();
    programs.sort_by(|a, b| a.1.cmp(&b.1));
    programs
}

fn names(programs: &[(u32, String)]) -> Vec<&str> {
    programs.iter().map(|(_, n)| n.as_str()).collect()
}

const PROGRAMS: [&str; 3] = ["podmeter_egress", "podmeter_ingress", "podmeter_sock_ops"];

/// Makes the pinned programs look like another build's, so that the next agent replaces them
/// inside their links (BPF_LINK_UPDATE) as an upgrade does.
fn forge_other_build(pins: &PinDir, cgroup: &Path) {
    let ino = std::fs::metadata(cgroup).expect("cgroup").ino();
    let meta = pins.path.join(format!("cgroup-{ino}")).join("META");
    let mut bpftool = Command::new("bpftool");
    bpftool.args(["map", "update", "pinned"]).arg(&meta);
    bpftool.args([
        "key", "1", "0", "0", "0", "value", "1", "2", "3", "4", "5", "6", "7", "8",
    ]);
    let out = run(bpftool, Duration::from_secs(10)).expect("bpftool map update");
    assert!(out.success(), "bpftool failed: {}", out.stderr);
}

/// hey sends `RATE` requests a second for `LOAD` from pod-a to pod-b while the agent is stopped with `signal`
/// and a new one starts `GAP` later; the new agent's totals are exactly what hey sent.
fn restart_while_serving(signal: libc::c_int, upgrade: bool) {
    let _serial = serial();
    let cluster = Cluster::new().expect("cluster");
    let root = cluster.cgroup_root();
    let pod_a = cluster.pod("default", "pod-a").expect("pod a");
    let pod_b = cluster.pod("default", "pod-b").expect("pod b");
    let nginx = Nginx::start(&pod_b).expect("nginx in pod b");
    let pins = PinDir::new();
    let args = ["--bpffs-dir", pins.arg()];

    let mut first = AgentProcess::start(root, &args).expect("first agent");
    let before = attached(root);
    assert_eq!(names(&before), PROGRAMS, "attached");

    let hey = PacedHey::new(nginx.url("/"), RATE, 1, LOAD)
        .prepare(&pod_a)
        .expect("hey in pod a");
    let (report, (mut second, rate_after)) = thread::scope(|s| {
        let load = s.spawn(|| hey.run());
        thread::sleep(Duration::from_secs(3));
        first.signal(signal).expect("signal the first agent");
        let status = first
            .wait_timeout(Duration::from_secs(10))
            .expect("wait")
            .expect("the first agent exits within 10 s");
        assert_eq!(status.success(), signal != libc::SIGKILL, "{status:?}");
        assert_eq!(
            attached(root),
            before,
            "the pinned programs stay attached while no agent runs"
        );
        if upgrade {
            forge_other_build(&pins, root);
        }
        thread::sleep(GAP);
        let second = AgentProcess::start(root, &args).expect("second agent");
        thread::sleep(Duration::from_millis(1500));
        let rate = second
            .pod_entry("default", "pod-b")
            .expect("pod b after the takeover")
            .inbound
            .rate;
        let report = load.join().expect("hey thread").expect("hey").statuses;
        (report, (second, rate))
    });
    let sent = report.status(200);
    assert_eq!(report.failed(), 0, "{report:?}");
    assert!(sent > 700, "hey sent about 800: {report:?}");

    let after = attached(root);
    assert_eq!(names(&after), PROGRAMS, "attached after the takeover");
    if upgrade {
        for ((old, name), (new, _)) in before.iter().zip(&after) {
            assert_ne!(old, new, "{name}: another build's program is replaced");
        }
    } else {
        assert_eq!(after, before, "the same build's programs are kept");
    }

    let b = second.wait_stable_counts("default", "pod-b").expect("b");
    let a = second.wait_stable_counts("default", "pod-a").expect("a");
    println!(
        "takeover after signal {signal} (upgrade: {upgrade}): hey sent {}, counted inbound {}, outbound {}, rate {rate_after:.1}/s",
        sent, b.inbound, a.outbound
    );
    assert_eq!(
        b,
        PodCounts {
            inbound: sent,
            outbound: 0
        }
    );
    assert_eq!(
        a,
        PodCounts {
            inbound: 0,
            outbound: sent
        }
    );
    let rate = f64::from(RATE);
    assert!(
        (0.6 * rate..=1.4 * rate).contains(&rate_after),
        "the rate after the takeover is the sent rate, not a spike: {rate_after}"
    );

    assert!(second.terminate().expect("stop agent").success());
    assert_eq!(names(&attached(root)), PROGRAMS, "still pinned");
    let (ok, removed) = pins.uninstall();
    assert!(ok, "agent-uninstall failed: {removed}");
    assert!(removed.contains("link-podmeter_ingress"), "{removed}");
    assert!(removed.contains("FLOWS"), "{removed}");
    assert!(attached(root).is_empty(), "uninstall detached everything");
    assert!(!pins.path.exists(), "uninstall removed the pin directory");
}

#[test]
fn sigterm_then_a_new_agent_of_the_same_build_counts_every_request_once() {
    restart_while_serving(libc::SIGTERM, false);
}

#[test]
fn sigkill_then_an_upgrade_counts_every_request_once() {
    restart_while_serving(libc::SIGKILL, true);
}
