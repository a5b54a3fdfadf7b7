//! `cargo xtask lint` and `cargo xtask test`.
//!
//! The test command runs in steps, each announced with what it does and how long a first run
//! takes, and timed: a one-time build (the Kubernetes control plane, the Rust crates) is a step of
//! its own and never spends a test's deadline.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
}

/// Cargo's target directory: `$CARGO_TARGET_DIR`, else `<workspace>/target`.
pub fn target_dir() -> PathBuf {
    podmeter_tests::target_dir()
}

pub fn cargo(args: &[&str]) -> anyhow::Result<()> {
    let status = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
        .args(args)
        .current_dir(workspace())
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed: {status}", args.join(" "));
    }
    Ok(())
}

/// Runs `command`, failing with `what` unless it exits successfully.
pub fn run_checked(mut command: Command, what: &str) -> anyhow::Result<()> {
    let status = command
        .status()
        .with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed: {status}");
    }
    Ok(())
}

/// One announced, timed step of a task.
pub struct Steps {
    total: usize,
    done: usize,
    started: Instant,
}

impl Steps {
    pub fn new(total: usize) -> Self {
        Self {
            total,
            done: 0,
            started: Instant::now(),
        }
    }

    /// Runs `step`, printing `what` (and how long a first run takes) before and its time after.
    pub fn run<T>(
        &mut self,
        what: &str,
        first_run: &str,
        step: impl FnOnce() -> anyhow::Result<T>,
    ) -> anyhow::Result<T> {
        self.done += 1;
        let n = format!("[{}/{}]", self.done, self.total);
        eprintln!("xtask: {n} {what} (first run: {first_run})");
        let started = Instant::now();
        let out = step().with_context(|| format!("step {n} {what}"))?;
        eprintln!(
            "xtask: {n} {what}: done in {:.0} s ({:.0} s in all)",
            started.elapsed().as_secs_f64(),
            self.started.elapsed().as_secs_f64()
        );
        Ok(out)
    }
}

pub fn lint() -> anyhow::Result<()> {
    cargo(&["fmt", "--all", "--check"])?;
    cargo(&["clippy", "--all-targets", "--", "-D", "warnings"])?;
    // The kernel programs build for the BPF target only.
    cargo(&[
        "clippy",
        "--package",
        "podmeter-ebpf",
        "--target",
        "bpfel-unknown-none",
        "-Z",
        "build-std=core",
        "--release",
        "--",
        "-D",
        "warnings",
    ])
}

/// Runs `scripts/k8s-control-plane.sh` (it builds the control plane once, then only checks) and
/// returns the directory of the binaries, the last line it prints.
pub(crate) fn kubernetes_control_plane() -> anyhow::Result<PathBuf> {
    let script = workspace().join("scripts/k8s-control-plane.sh");
    let out = Command::new("bash")
        .arg(&script)
        .stderr(Stdio::inherit())
        .output()
        .with_context(|| format!("running {}", script.display()))?;
    if !out.status.success() {
        bail!("{} failed: {}", script.display(), out.status);
    }
    let stdout = String::from_utf8_lossy(&out.stdout);
    let dir = stdout
        .lines()
        .last()
        .context("the script printed no binary directory")?;
    Ok(PathBuf::from(dir))
}

/// Lints (unless `lint` is false), prepares everything the tests need, each as a step of its
/// own, then runs every test. Privileged tests serialise themselves (a lock file), so the test
/// binaries may run in parallel.
pub fn test(lint_first: bool, extra: &[String]) -> anyhow::Result<()> {
    let mut steps = Steps::new(if lint_first { 7 } else { 6 });
    if lint_first {
        steps.run(
            "rustfmt and clippy, host crates and the eBPF crate",
            "builds every crate's dependencies, about 6 min on 2 cores",
            lint,
        )?;
    }
    let k8s = steps.run(
        "the Kubernetes control plane the end-to-end tests run (scripts/k8s-control-plane.sh)",
        "builds kube-apiserver, kube-controller-manager, kube-scheduler and kubelet from Debian's source, 5 to 8 min",
        kubernetes_control_plane,
    )?;
    steps.run(
        "building the agent binary the integration tests run",
        "about 2 min",
        || cargo(&["build", "--package", "podmeter", "--bin", "podmeter"]),
    )?;
    steps.run(
        "the container image the real-node test installs (cargo xtask image)",
        "a static release build of podmeter and a buildah image, about 5 min",
        || crate::image::run(&crate::image::Args::default()),
    )?;
    steps.run("building the test binaries", "about 3 min", || {
        cargo(&["test", "--no-run"])
    })?;
    let bin = target_dir().join("debug/podmeter");
    // SAFETY: single-threaded here; the child processes inherit it.
    unsafe {
        std::env::set_var("PODMETER_BIN", &bin);
        std::env::set_var("PODMETER_K8S_BIN", &k8s);
    }
    let mut args = vec!["test", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    steps.run(
        "running the unit and privileged integration tests",
        "about 12 min",
        || cargo(&args),
    )?;
    steps.run(
        "fuzzing every parser of network and caller bytes (cargo xtask fuzz)",
        "installs cargo-fuzz (30 s) and builds the instrumented targets (about 8 min on 2 cores), then 2 min 15 s",
        || crate::fuzz::run(&crate::fuzz::Args::default()),
    )
}
