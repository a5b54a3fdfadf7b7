//! `cargo xtask image`: the container image's binary (static, musl; the eBPF programs are embedded)
//! and the OCI image from deploy/image/Containerfile, built with buildah (no daemon needed) and
//! written as the OCI archive target/image/podmeter-image.tar, which `ctr -n k8s.io images import`
//! and `podman load` accept.

use std::process::Command;

use anyhow::{Context as _, bail};

use crate::test::{cargo, run_checked, target_dir, workspace};

const TARGET: &str = "x86_64-unknown-linux-musl";

/// Image options.
#[derive(clap::Args)]
pub struct Args {
    /// Image name and tag.
    #[arg(long, default_value = DEFAULT_TAG)]
    tag: String,
}

impl Default for Args {
    fn default() -> Self {
        Self {
            tag: DEFAULT_TAG.to_owned(),
        }
    }
}

/// The name the manifests in deploy/ use.
const DEFAULT_TAG: &str = "podmeter:0.1.0";

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
    let name = full_name(&args.tag);
    let archive = context.join(ARCHIVE);
    // buildah refuses to overwrite an archive.
    if archive.exists() {
        std::fs::remove_file(&archive)?;
    }
    let mut build = Command::new("buildah");
    build
        .args(["bud", "--format", "oci", "--layers=false", "-f"])
        .arg(&containerfile)
        .args(["-t", &name])
        .arg(&context);
    run_checked(build, "buildah bud (scripts/setup.sh installs buildah)")?;
    let mut push = Command::new("buildah");
    push.args(["push", "--quiet", &name])
        .arg(format!("oci-archive:{}:{name}", archive.display()));
    run_checked(push, "buildah push")?;
    let size = Command::new("buildah")
        .args(["images", "--format", "{{.Size}}", &name])
        .output()
        .ok()
        .filter(|output| output.status.success())
        .map(|output| String::from_utf8_lossy(&output.stdout).trim().to_owned());
    println!(
        "image {name}: {} (OCI archive, {} bytes; image size {})\n\
         import it on a node with: ctr -n k8s.io images import {}",
        archive.display(),
        std::fs::metadata(&archive)?.len(),
        size.as_deref().unwrap_or("unknown"),
        archive.display()
    );
    Ok(())
}

/// The OCI archive `cargo xtask image` writes into target/image.
pub const ARCHIVE: &str = "podmeter-image.tar";

/// The name containerd gives an image reference (`podmeter:0.1.0` is
/// `docker.io/library/podmeter:0.1.0`), so that the archive imports under the name the manifests'
/// `image: podmeter:0.1.0` resolves to.
fn full_name(reference: &str) -> String {
    let (first, rest) = reference.split_once('/').unwrap_or(("", reference));
    let has_domain = first.contains('.') || first.contains(':') || first == "localhost";
    match (first.is_empty(), has_domain) {
        (true, _) => format!("docker.io/library/{rest}"),
        (false, true) => reference.to_owned(),
        (false, false) => format!("docker.io/{reference}"),
    }
}

#[cfg(test)]
mod tests {
    use super::full_name;

    #[test]
    fn references_get_containerds_full_names() {
        assert_eq!(
            full_name("podmeter:0.1.0"),
            "docker.io/library/podmeter:0.1.0"
        );
        assert_eq!(full_name("me/podmeter:1"), "docker.io/me/podmeter:1");
        assert_eq!(full_name("ghcr.io/me/podmeter:1"), "ghcr.io/me/podmeter:1");
        assert_eq!(full_name("localhost/podmeter:1"), "localhost/podmeter:1");
    }
}
