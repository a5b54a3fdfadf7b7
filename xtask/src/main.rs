//! Project tasks: `cargo xtask test | lint | fuzz | demo | bench | image`. `./run <task>` installs what is missing first.

mod bench;
mod demo;
mod fuzz;
mod image;
mod interrupt;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "xtask", about = "podmeter's build, test and demo tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// rustfmt and clippy (host crates and the eBPF crate), all warnings are errors.
    Lint,
    /// Lints, then unit tests and the privileged integration tests (root, one at a time).
    Test {
        /// Skip the lints.
        #[arg(long)]
        no_lint: bool,
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// The cargo-fuzz targets in fuzz/: installs cargo-fuzz if missing, builds them, replays
    /// fuzz/regressions/, then runs each for `--seconds` (about 2 min 15 s in all by default).
    Fuzz(fuzz::Args),
    /// The local demo: netns pods with real nginx, hey load, and the agent counting each request once.
    Demo(demo::Args),
    /// Measures podmeter against its performance targets; prints a table and writes
    /// target/bench/summary.json (root; about 4 minutes after the builds, `--quick` about 70 s).
    Bench(bench::Args),
    /// The image's static binary (musl) and the OCI image built with buildah, both in target/image.
    Image(image::Args),
}

fn main() -> anyhow::Result<()> {
    match Cli::parse().task {
        Task::Lint => test::lint(),
        Task::Test { no_lint, args } => test::test(!no_lint, &args),
        Task::Fuzz(args) => fuzz::run(&args),
        Task::Demo(args) => demo::run(&args),
        Task::Bench(args) => bench::run(&args),
        Task::Image(args) => image::run(&args),
    }
}
