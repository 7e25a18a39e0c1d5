// Temporary driver for the bench module until xtask's main.rs calls it. Delete when done.
#[path = "../bench/mod.rs"]
mod bench;

use clap::Parser;

#[derive(Parser)]
struct Cli {
    #[command(flatten)]
    args: bench::BenchArgs,
}

fn main() -> anyhow::Result<()> {
    bench::run(&Cli::parse().args)
}
