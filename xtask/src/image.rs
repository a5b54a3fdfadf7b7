//! `cargo xtask image`: the container image's binary (static, musl; the eBPF programs are embedded)
//! and, where a container engine runs, the image itself from deploy/image/Containerfile.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::test::{cargo, target_dir, workspace};

const TARGET: &str = "x86_64-unknown-linux-musl";

/// Image options.
#[derive(clap::Args)]
pub struct Args {
    /// Image name and tag.
    #[arg(long, default_value = "podmeter:0.1.0")]
    tag: String,
}

pub fn run(args: &Args) -> anyhow::Result<()> {
    cargo(&[
        "build",
        "--release",
        "--package",
        "podmeter",
        "--bin",
        "podmeter",
        "--target",
        TARGET,
    ])?;
    let root = workspace();
    let built = target_dir().join(TARGET).join("release/podmeter");
    let context = target_dir().join("image");
    std::fs::create_dir_all(&context)?;
    let binary = context.join("podmeter");
    std::fs::copy(&built, &binary).with_context(|| format!("copying {}", built.display()))?;
    // The release profile keeps debug info for profiling; the image does not need it.
    let stripped = Command::new("strip")
        .arg(&binary)
        .status()
        .context("running strip")?;
    if !stripped.success() {
        bail!("strip {} failed: {stripped}", binary.display());
    }
    // A static executable has no program interpreter: `ldd` says so.
    let ldd = Command::new("ldd")
        .arg(&binary)
        .output()
        .context("running ldd")?;
    let ldd =
        String::from_utf8_lossy(&ldd.stdout).into_owned() + &String::from_utf8_lossy(&ldd.stderr);
    if !ldd.contains("not a dynamic executable") && !ldd.contains("statically linked") {
        bail!("{} is not static:\n{ldd}", binary.display());
    }
    println!(
        "static binary: {} ({} bytes)",
        binary.display(),
        std::fs::metadata(&binary)?.len()
    );
    let containerfile = root.join("deploy/image/Containerfile");
    for engine in ["podman", "docker"] {
        let usable = Command::new(engine)
            .arg("info")
            .output()
            .is_ok_and(|o| o.status.success());
        if usable {
            let status = Command::new(engine)
                .args(["build", "-f"])
                .arg(&containerfile)
                .args(["-t", &args.tag])
                .arg(&context)
                .status()?;
            if !status.success() {
                bail!("{engine} build failed: {status}");
            }
            println!("image {} built with {engine}", args.tag);
            return Ok(());
        }
    }
    println!(
        "no container engine runs here; build the image where one does:\n  podman build -f {} -t {} {}",
        containerfile.display(),
        args.tag,
        context.display()
    );
    Ok(())
}
