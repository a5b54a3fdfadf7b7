//! Builds the kernel programs (`agent-ebpf`) for the BPF target so `kernel/programs.rs` can embed them.
use anyhow::{Context as _, anyhow};
// A build-dependency only so cargo rebuilds the agent when the kernel programs change.
use podmeter_ebpf as _;

fn main() -> anyhow::Result<()> {
    let manifest_dir = std::env::var("CARGO_MANIFEST_DIR").context("CARGO_MANIFEST_DIR")?;
    let workspace = std::path::Path::new(&manifest_dir)
        .parent()
        .ok_or_else(|| anyhow!("agent/ has no parent directory"))?;
    // Build the kernel side with the toolchain pinned in rust-toolchain.toml (it needs nightly's
    // -Z build-std); scripts/setup.sh installs that toolchain and bpf-linker.
    let pin = workspace.join("rust-toolchain.toml");
    println!("cargo::rerun-if-changed={}", pin.display());
    let pin =
        std::fs::read_to_string(&pin).with_context(|| format!("reading {}", pin.display()))?;
    let toolchain = pin
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("channel")
                .map(|v| v.trim_start_matches([' ', '=']).trim_matches([' ', '"']))
        })
        .ok_or_else(|| anyhow!("rust-toolchain.toml names no channel"))?
        .to_owned();
    let ebpf = workspace.join("agent-ebpf");
    let ebpf = ebpf
        .to_str()
        .ok_or_else(|| anyhow!("non UTF-8 path {}", ebpf.display()))?;
    // aya-build forwards every line the inner cargo prints to stderr as a `cargo::warning`, so
    // its `Compiling ...` progress would reach users as a page of warnings. Quiet, the inner cargo
    // prints only what the compiler says about the kernel crate (real warnings and errors).
    // SAFETY: the build script is single-threaded here; the inner cargo inherits the variable.
    unsafe { std::env::set_var("CARGO_TERM_QUIET", "true") };
    aya_build::build_ebpf(
        [aya_build::Package {
            name: "podmeter-ebpf",
            root_dir: ebpf,
            ..Default::default()
        }],
        aya_build::Toolchain::Custom(&toolchain),
    )
}
