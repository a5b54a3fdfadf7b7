//! Uninstall is one command: with `--bpffs-dir`, the Kubernetes identity and its own Pod
//! (`POD_NAME`, `POD_NAMESPACE`), the agent removes its pins at SIGTERM once its DaemonSet is gone,
//! and keeps them for the next agent otherwise. Against a real kube-apiserver (v1.20.2) with
//! `deploy/base/agent-rbac.yaml` as the agent's RBAC:
//! 1. without `get` on its DaemonSet from the start (no RoleBinding), SIGTERM keeps the pins;
//! 2. with the DaemonSet there (a restart), SIGTERM keeps them and the next agent takes them over;
//! 3. once the DaemonSet is deleted, SIGTERM detaches and unpins everything;
//! 4. once the agent's ServiceAccount and RBAC are deleted (`kubectl delete -k` deletes them in
//!    the same call as the DaemonSet, before the pods stop), SIGTERM does too;
//! 5. and so it does once its namespace is being deleted.
//!
//! No kubelet or DaemonSet controller runs: the test creates the DaemonSet and a Pod it owns
//! through the API, and the agent process plays that Pod.

use std::{
    io::{BufRead as _, BufReader},
    os::unix::fs::MetadataExt as _,
    path::{Path, PathBuf},
    process::{Command, ExitStatus, Stdio},
    sync::{Arc, Mutex, mpsc},
    time::{Duration, Instant},
};

use podmeter_tests::{
    AgentProcess, ChildGuard,
    agent::LISTENING_PREFIX,
    cgroup::CgroupGuard,
    control_plane::{ControlPlane, Credentials, wait_until},
    process::die_with_parent,
    run, serial,
};
use serde_json::json;

const NAMESPACE: &str = "podmeter-system";
/// The DaemonSet and ServiceAccount names of `deploy/base`.
const DAEMONSET: &str = "podmeter-agent";
const NODE: &str = "node-1";
const DAEMONSETS: &str = "/apis/apps/v1/namespaces/podmeter-system/daemonsets";
const PODS: &str = "/api/v1/namespaces/podmeter-system/pods";
const PROGRAMS: [&str; 3] = ["podmeter_egress", "podmeter_ingress", "podmeter_sock_ops"];
const WAIT: Duration = Duration::from_secs(20);

fn agent_rbac_path() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/base/agent-rbac.yaml")
}

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
            assert!(out.success(), "cannot mount bpffs: {}", out.stderr);
        }
        Self {
            path: PathBuf::from(format!(
                "/sys/fs/bpf/podmeter-test-uninstall-{}",
                std::process::id()
            )),
            mounted_bpffs,
        }
    }

    fn arg(&self) -> &str {
        self.path.to_str().expect("UTF-8 path")
    }

    /// The pins of `cgroup`'s programs.
    fn root_dir(&self, cgroup: &Path) -> PathBuf {
        let ino = std::fs::metadata(cgroup).expect("cgroup").ino();
        self.path.join(format!("cgroup-{ino}"))
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let mut command = Command::new(AgentProcess::binary());
        command.args(["agent-uninstall", "--bpffs-dir", self.arg()]);
        let _ = run(command, Duration::from_secs(20));
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

/// The agent as its DaemonSet's pod `pod` runs it: `POD_NAME` and `POD_NAMESPACE` from the
/// downward API, the Kubernetes identity with the agent's ServiceAccount, pins under `pins`. Its
/// log lines are kept for the test to read.
struct PodAgent {
    process: ChildGuard,
    log: Arc<Mutex<Vec<String>>>,
}

impl PodAgent {
    fn start(cgroup: &Path, pins: &PinDir, identity: &Credentials, pod: &str) -> Self {
        let mut command = Command::new(AgentProcess::binary());
        command
            .arg("agent")
            .arg("--cgroup-root")
            .arg(cgroup)
            .args(["--listen", "127.0.0.1:0", "--identity", "kubernetes"])
            .args(["--node-name", NODE, "--bpffs-dir", pins.arg()])
            .arg("--kubeconfig")
            .arg(identity.kubeconfig())
            .env("POD_NAME", pod)
            .env("POD_NAMESPACE", NAMESPACE)
            .env("PODMETER_LOG", "info")
            .env("NO_COLOR", "1")
            .env_remove("KUBECONFIG")
            .env_remove("KUBERNETES_SERVICE_HOST")
            .env_remove("PODMETER_BPFFS_DIR")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        die_with_parent(&mut command);
        let child = command.spawn().expect("spawn the agent");
        let mut process = ChildGuard::from_child(child, format!("podmeter agent ({pod})"));
        let stdout = process.child_mut().stdout.take().expect("stdout");
        let stderr = process.child_mut().stderr.take().expect("stderr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let lines = log.clone();
        process.attach_thread(std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                println!("[podmeter stderr] {line}");
                lines.lock().expect("log").push(line);
            }
        }));
        let (listening_tx, listening_rx) = mpsc::channel();
        process.attach_thread(std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                println!("[podmeter] {line}");
                if line.starts_with(LISTENING_PREFIX) {
                    let _ = listening_tx.send(());
                }
            }
        }));
        listening_rx
            .recv_timeout(WAIT)
            .expect("the agent attaches and listens (see its lines above)");
        Self { process, log }
    }

    /// Waits for a log line containing `text`; returns it.
    fn wait_for_line(&self, text: &str) -> String {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(line) = self.line(text) {
                return line;
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {text:?} within {WAIT:?}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn line(&self, text: &str) -> Option<String> {
        let log = self.log.lock().expect("log");
        log.iter().find(|line| line.contains(text)).cloned()
    }

    /// SIGTERM, as the kubelet stops a pod; returns its exit status and the one line that says
    /// what it did with the pins.
    fn terminate(mut self) -> (ExitStatus, String) {
        let started = Instant::now();
        let status = self
            .process
            .terminate(Duration::from_secs(15))
            .expect("stop the agent");
        let took = started.elapsed();
        println!("the agent exited {took:?} after SIGTERM");
        assert!(
            took < Duration::from_secs(6),
            "the exit is bounded: {took:?}"
        );
        let log = self.log.lock().expect("log");
        let verdicts: Vec<&String> = log
            .iter()
            .filter(|line| {
                line.contains("keeping the pins for the next agent")
                    || line.contains("uninstalled:")
            })
            .collect();
        assert_eq!(
            verdicts.len(),
            1,
            "one line says what became of the pins: {log:#?}"
        );
        (status, verdicts[0].clone())
    }
}

/// Creates DaemonSet `podmeter-agent`; returns its UID.
fn create_daemonset(cp: &ControlPlane) -> String {
    let labels = json!({"app.kubernetes.io/name": "podmeter-agent"});
    let created = cp
        .post_json(
            DAEMONSETS,
            &json!({
                "apiVersion": "apps/v1", "kind": "DaemonSet",
                "metadata": {"name": DAEMONSET, "namespace": NAMESPACE},
                "spec": {
                    "selector": {"matchLabels": labels},
                    "template": {
                        "metadata": {"labels": labels},
                        "spec": {"containers": [{"name": "agent", "image": "podmeter:0.1.0"}]},
                    },
                },
            }),
        )
        .expect("create the DaemonSet");
    created["metadata"]["uid"]
        .as_str()
        .expect("a UID")
        .to_owned()
}

/// Creates Pod `name` on [`NODE`] as the DaemonSet with `daemonset_uid` would.
fn create_pod(cp: &ControlPlane, name: &str, daemonset_uid: &str) {
    cp.post_json(
        PODS,
        &json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {
                "name": name, "namespace": NAMESPACE,
                "labels": {"app.kubernetes.io/name": "podmeter-agent"},
                "ownerReferences": [{
                    "apiVersion": "apps/v1", "kind": "DaemonSet", "name": DAEMONSET,
                    "uid": daemonset_uid, "controller": true, "blockOwnerDeletion": true,
                }],
            },
            "spec": {
                "nodeName": NODE,
                "serviceAccountName": DAEMONSET,
                "automountServiceAccountToken": false,
                "containers": [{"name": "agent", "image": "podmeter:0.1.0"}],
            },
        }),
    )
    .unwrap_or_else(|e| panic!("create Pod {name}: {e:#}"));
}

fn kubectl_ok(cp: &ControlPlane, args: &[&str]) {
    cp.kubectl(args)
        .and_then(|out| out.check(&format!("kubectl {args:?}")))
        .unwrap_or_else(|e| panic!("{e:#}"));
}

fn apply_agent_rbac(cp: &ControlPlane) {
    let path = agent_rbac_path();
    kubectl_ok(
        cp,
        &["apply", "-n", NAMESPACE, "-f", path.to_str().expect("path")],
    );
}

/// Waits until reading the DaemonSet with `identity` answers `wanted` (RBAC changes reach the
/// authorizer through a watch).
fn wait_daemonset_read(cp: &ControlPlane, identity: &Credentials, wanted: &[u16]) {
    let path = format!("{DAEMONSETS}/{DAEMONSET}");
    wait_until(
        WAIT,
        &format!("reading the DaemonSet as the agent answers {wanted:?}"),
        || {
            let response = cp.request_as(identity, "GET", &path, None)?;
            Ok(wanted.contains(&response.status).then_some(()))
        },
    )
    .unwrap_or_else(|e| panic!("{e:#}"));
}

#[test]
fn sigterm_keeps_the_pins_unless_the_daemonset_is_gone() {
    let _serial = serial();
    let cp = ControlPlane::start().expect("control plane starts");
    println!("control plane ready in {:?}", cp.startup_time());
    cp.apply(&format!(
        "apiVersion: v1\nkind: Namespace\nmetadata: {{name: {NAMESPACE}}}\n"
    ))
    .expect("namespace");
    apply_agent_rbac(&cp);
    let agent = cp
        .service_account_credentials(NAMESPACE, DAEMONSET, Duration::from_secs(3600))
        .expect("the agent's ServiceAccount token");
    let daemonset_uid = create_daemonset(&cp);
    create_pod(&cp, "podmeter-agent-a1", &daemonset_uid);

    let cgroup = CgroupGuard::create_test_parent().expect("cgroup root");
    let root = cgroup.path();
    let pins = PinDir::new();
    let root_pins = pins.root_dir(root);

    // 1. RBAC that never allowed reading the DaemonSet (no RoleBinding): a 403 at exit is no
    //    uninstall.
    kubectl_ok(&cp, &["delete", "-n", NAMESPACE, "rolebinding", DAEMONSET]);
    wait_daemonset_read(&cp, &agent, &[403]);
    let first = PodAgent::start(root, &pins, &agent, "podmeter-agent-a1");
    first.wait_for_line("may not read its DaemonSet (403)");
    let pinned = attached(root);
    assert_eq!(names(&pinned), PROGRAMS, "attached");
    let (status, verdict) = first.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        verdict.contains("keeping the pins for the next agent: reading DaemonSet podmeter-system/podmeter-agent is refused (403) and never was allowed"),
        "{verdict}"
    );
    assert_eq!(attached(root), pinned, "the pins stay attached");

    // 2. A restart (a deleted pod, a rolling update): the DaemonSet is there.
    apply_agent_rbac(&cp);
    wait_daemonset_read(&cp, &agent, &[200]);
    let second = PodAgent::start(root, &pins, &agent, "podmeter-agent-a1");
    second.wait_for_line("took over the pinned programs and counters");
    second.wait_for_line("uninstall check ready");
    assert_eq!(attached(root), pinned, "the same programs, taken over");
    let (status, verdict) = second.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        verdict.contains("keeping the pins for the next agent: DaemonSet podmeter-system/podmeter-agent is still there"),
        "{verdict}"
    );
    assert_eq!(attached(root), pinned, "the pins stay attached");
    assert!(root_pins.is_dir(), "{} is kept", root_pins.display());

    // 3. The DaemonSet is deleted (its pods are stopped after it is gone).
    let third = PodAgent::start(root, &pins, &agent, "podmeter-agent-a1");
    third.wait_for_line("took over the pinned programs and counters");
    third.wait_for_line("uninstall check ready");
    assert_eq!(attached(root), pinned, "taken over again");
    kubectl_ok(&cp, &["delete", "-n", NAMESPACE, "daemonset", DAEMONSET]);
    let (status, verdict) = third.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        verdict.contains(&format!(
            "uninstalled: DaemonSet podmeter-system/podmeter-agent is gone (404 Not Found), removed pins under {}",
            root_pins.display()
        )),
        "{verdict}"
    );
    assert!(attached(root).is_empty(), "nothing stays attached");
    assert!(!pins.path.exists(), "the pin directory is removed");

    // 4. `kubectl delete -k deploy/base` deletes the agent's ServiceAccount and RBAC in the same
    //    call as the DaemonSet, so the agent's read is refused: here the DaemonSet stays, so
    //    that only the refusal tells.
    let daemonset_uid = create_daemonset(&cp);
    // No kubelet confirms a graceful deletion here.
    kubectl_ok(
        &cp,
        &[
            "delete",
            "-n",
            NAMESPACE,
            "pod",
            "podmeter-agent-a1",
            "--grace-period=0",
            "--force",
        ],
    );
    create_pod(&cp, "podmeter-agent-b2", &daemonset_uid);
    let fourth = PodAgent::start(root, &pins, &agent, "podmeter-agent-b2");
    fourth.wait_for_line("pinned the programs and counters: they outlive this agent");
    fourth.wait_for_line("uninstall check ready");
    assert_eq!(names(&attached(root)), PROGRAMS, "attached");
    let path = agent_rbac_path();
    kubectl_ok(
        &cp,
        &[
            "delete",
            "-n",
            NAMESPACE,
            "-f",
            path.to_str().expect("path"),
        ],
    );
    wait_daemonset_read(&cp, &agent, &[401, 403]);
    let (status, verdict) = fourth.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        verdict.contains("uninstalled: DaemonSet podmeter-system/podmeter-agent is gone (40"),
        "{verdict}"
    );
    assert!(
        verdict.contains(&format!("removed pins under {}", root_pins.display())),
        "{verdict}"
    );
    assert!(attached(root).is_empty(), "nothing stays attached");
    assert!(!pins.path.exists(), "the pin directory is removed");

    // 5. `kubectl delete namespace`: the namespace controller deletes the DaemonSet and the pods
    //    in no set order. None runs here, so the DaemonSet and the RBAC stay: only the
    //    namespace's deletionTimestamp tells.
    apply_agent_rbac(&cp);
    let agent = cp
        .service_account_credentials(NAMESPACE, DAEMONSET, Duration::from_secs(3600))
        .expect("a token of the re-created ServiceAccount");
    wait_daemonset_read(&cp, &agent, &[200]);
    let fifth = PodAgent::start(root, &pins, &agent, "podmeter-agent-b2");
    fifth.wait_for_line("uninstall check ready");
    assert_eq!(names(&attached(root)), PROGRAMS, "attached");
    kubectl_ok(&cp, &["delete", "namespace", NAMESPACE, "--wait=false"]);
    let (status, verdict) = fifth.terminate();
    assert!(status.success(), "{status:?}");
    assert!(
        verdict.contains(&format!(
            "uninstalled: namespace podmeter-system is being deleted, and DaemonSet \
             podmeter-system/podmeter-agent with it, removed pins under {}",
            root_pins.display()
        )),
        "{verdict}"
    );
    assert!(attached(root).is_empty(), "nothing stays attached");
    assert!(!pins.path.exists(), "the pin directory is removed");
}
