//! `cargo xtask lint` and `cargo xtask test`.

use std::{path::PathBuf, process::Command};

use anyhow::{Context as _, bail};

/// The workspace root (xtask lives one level below it).
pub fn workspace() -> PathBuf {
    let manifest = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    manifest.parent().map(PathBuf::from).unwrap_or(manifest)
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

/// Builds the agent binary the integration tests run, then runs every test. Privileged tests
/// serialise themselves (a lock file), so the test binaries may run in parallel.
pub fn test(extra: &[String]) -> anyhow::Result<()> {
    cargo(&["build", "--package", "podmeter", "--bin", "podmeter"])?;
    let bin = workspace().join("target/debug/podmeter");
    // SAFETY: single-threaded here; the child processes inherit it.
    unsafe { std::env::set_var("PODMETER_BIN", &bin) };
    let mut args = vec!["test", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args)
}
