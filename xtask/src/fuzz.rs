//! `cargo xtask fuzz`: the cargo-fuzz targets in `fuzz/` (every parser of network or caller
//! bytes), built once, their regression inputs replayed, then each run for a bounded time with a
//! memory limit. Any crash, leak, timeout or out-of-memory fails the task.
//!
//! Layout: `fuzz/fuzz_targets/<target>.rs`; `fuzz/corpus/<target>/` the committed seeds (read
//! only: what a run finds goes to `fuzz/target/corpus/<target>/`); `fuzz/regressions/<target>/`
//! inputs that once crashed, replayed on every run; `fuzz/artifacts/<target>/` where libFuzzer
//! saves a crashing input.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::SystemTime,
};

use anyhow::{Context as _, bail};

use crate::test::{run_checked, workspace};

/// Seconds each target runs by default: 8 targets × 15 s is 2 min, plus the replays.
pub const DEFAULT_SECONDS: u64 = 15;

/// libFuzzer's memory limit per target process, in MiB (a run of 15 s peaks near 550 MiB, most of
/// it the address sanitizer's quarantine).
const RSS_LIMIT_MB: u32 = 1024;

/// Largest single allocation, in MiB: no input of at most 4 KiB has a reason to ask for more.
const MALLOC_LIMIT_MB: u32 = 256;

/// libFuzzer's limit for one input, in seconds; a slower input is a failure (`timeout-*`).
const INPUT_TIMEOUT_SECS: u32 = 10;

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Seconds each target runs after the regression inputs are replayed.
    #[arg(long, default_value_t = DEFAULT_SECONDS)]
    pub seconds: u64,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            seconds: DEFAULT_SECONDS,
        }
    }
}

fn fuzz_dir() -> PathBuf {
    workspace().join("fuzz")
}

fn cargo_command() -> Command {
    Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()))
}

/// `cargo fuzz <args>` in `fuzz/`, with its build in `fuzz/target`.
fn cargo_fuzz(args: &[&str]) -> Command {
    let mut command = cargo_command();
    command.arg("fuzz").args(args).current_dir(fuzz_dir());
    command
}

/// Installs cargo-fuzz into the active `CARGO_HOME` unless `cargo fuzz` runs already.
pub fn install_cargo_fuzz() -> anyhow::Result<()> {
    let present = cargo_fuzz(&["--version"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if present {
        return Ok(());
    }
    eprintln!("xtask: installing cargo-fuzz (cargo install cargo-fuzz --locked)");
    let mut install = cargo_command();
    install
        .args(["install", "cargo-fuzz", "--locked"])
        .current_dir(workspace());
    run_checked(install, "cargo install cargo-fuzz --locked")
}

/// The targets `fuzz/Cargo.toml` declares.
fn targets() -> anyhow::Result<Vec<String>> {
    let out = cargo_fuzz(&["list"])
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo fuzz list")?;
    if !out.status.success() {
        bail!("cargo fuzz list failed: {}", out.status);
    }
    let targets: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect();
    if targets.is_empty() {
        bail!("fuzz/Cargo.toml declares no target");
    }
    Ok(targets)
}

/// The build's options: debug assertions on (overflow checks), the address sanitizer (its leak
/// check included), for the host, under `fuzz/target`.
fn build_options(host: &str) -> Vec<String> {
    vec![
        "--debug-assertions".into(),
        "--sanitizer=address".into(),
        format!("--target={host}"),
        format!("--target-dir={}", fuzz_dir().join("target").display()),
    ]
}

/// Files in `dir`, sorted; none when it does not exist.
fn files(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return Ok(Vec::new());
    };
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("reading {}", dir.display()))?
            .path();
        if path.is_file() {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// The inputs libFuzzer saved for `target` since `since`, for the failure message.
fn saved_inputs(target: &str, since: SystemTime) -> Vec<PathBuf> {
    files(&fuzz_dir().join("artifacts").join(target))
        .unwrap_or_default()
        .into_iter()
        .filter(|p| {
            p.metadata()
                .and_then(|m| m.modified())
                .is_ok_and(|t| t >= since)
        })
        .collect()
}

/// The host's target triple (`rustc -vV`), which the targets are built for.
fn host() -> anyhow::Result<String> {
    let out = Command::new("rustc")
        .arg("-vV")
        .current_dir(workspace())
        .output()
        .context("running rustc -vV")?;
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("host: "))
        .map(str::to_owned)
        .context("rustc -vV names no host")
}

/// Where `cargo fuzz build` put `target`'s binary.
fn binary(host: &str, target: &str) -> PathBuf {
    fuzz_dir()
        .join("target")
        .join(host)
        .join("release")
        .join(target)
}

/// Runs the built `target` on `inputs` (libFuzzer's corpus directories or single files) with
/// `libfuzzer` flags; on failure, names the saved input. The binary runs directly, not through
/// `cargo fuzz run`, which would build again first: the one build is its own step.
fn run_target(
    binary: &Path,
    target: &str,
    inputs: &[PathBuf],
    libfuzzer: &[String],
) -> anyhow::Result<()> {
    let artifacts = fuzz_dir().join("artifacts").join(target);
    std::fs::create_dir_all(&artifacts)
        .with_context(|| format!("creating {}", artifacts.display()))?;
    let started = SystemTime::now();
    let status = Command::new(binary)
        .args(libfuzzer)
        .arg(format!("-artifact_prefix={}/", artifacts.display()))
        .arg(format!("-rss_limit_mb={RSS_LIMIT_MB}"))
        .arg(format!("-malloc_limit_mb={MALLOC_LIMIT_MB}"))
        .arg(format!("-timeout={INPUT_TIMEOUT_SECS}"))
        .args(inputs)
        // As cargo fuzz runs them: ASan's ODR check misfires on Rust's duplicated statics.
        .env("ASAN_OPTIONS", "detect_odr_violation=0")
        .current_dir(fuzz_dir())
        .status()
        .with_context(|| format!("running {}", binary.display()))?;
    if status.success() {
        return Ok(());
    }
    let saved = saved_inputs(target, started);
    if saved.is_empty() {
        bail!("fuzz target {target} failed ({status}); no input was saved");
    }
    let saved: Vec<String> = saved.iter().map(|p| p.display().to_string()).collect();
    bail!(
        "fuzz target {target} failed ({status}); the input is saved at {}. Fix the parser, add a \
         unit test, and move the input to fuzz/regressions/{target}/",
        saved.join(", ")
    )
}

/// Installs cargo-fuzz if needed, builds every target, replays the regression inputs, then
/// fuzzes each target for `args.seconds`.
pub fn run(args: &Args) -> anyhow::Result<()> {
    install_cargo_fuzz()?;
    let targets = targets()?;
    let host = host()?;
    let mut build = cargo_fuzz(&["build"]);
    build.args(build_options(&host));
    run_checked(build, "cargo fuzz build")?;
    for target in &targets {
        let regressions = files(&fuzz_dir().join("regressions").join(target))?;
        if regressions.is_empty() {
            continue;
        }
        eprintln!(
            "xtask: fuzz {target}: replaying {} regression inputs",
            regressions.len()
        );
        // Files given one by one are each run once, and nothing is written back.
        run_target(&binary(&host, target), target, &regressions, &[])?;
    }
    for target in &targets {
        eprintln!("xtask: fuzz {target}: {} s", args.seconds);
        // New inputs go to a corpus under fuzz/target; the committed seeds are only read.
        let found = fuzz_dir().join("target/corpus").join(target);
        std::fs::create_dir_all(&found).with_context(|| format!("creating {}", found.display()))?;
        let seeds = fuzz_dir().join("corpus").join(target);
        let mut corpora = vec![found];
        if seeds.is_dir() {
            corpora.push(seeds);
        }
        run_target(
            &binary(&host, target),
            target,
            &corpora,
            &[format!("-max_total_time={}", args.seconds)],
        )?;
    }
    Ok(())
}
