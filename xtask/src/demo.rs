//! `cargo xtask demo`: the local demo.

/// Demo options.
#[derive(clap::Args)]
pub struct Args {}

pub fn run(_args: &Args) -> anyhow::Result<()> {
    anyhow::bail!("the demo is not written yet")
}
