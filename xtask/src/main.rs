//! Build, run and test automation: `cargo xtask <command>`.

mod bench;
mod man;
mod msrv;
mod setup;
mod toolchain;

use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(name = "xtask", about = "tcpstate's build, run and test automation")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Install what building the eBPF program needs (idempotent).
    Setup,
    /// Set up, then build the release binary (target/release/tcpstate, self-contained).
    Build,
    /// Set up, build, and run tcpstate with the given arguments (through sudo if not root).
    Run {
        /// Arguments for tcpstate, e.g. `trace --port 443`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Measure what tracing costs: loopback connection storm, untraced vs traced
    /// (docs/benchmark.md).
    Bench(bench::BenchArgs),
    /// Write man pages generated from the CLI definition to target/man (tcpstate.1 and one page
    /// per subcommand).
    Man,
    /// Fail if Cargo.lock (or fuzz/Cargo.lock) resolves a package whose rust-version is newer
    /// than the compilers the project is built with.
    CheckMsrv,
    /// Set up, check the lock files (check-msrv), then run the whole test suite (kernel tests
    /// need root; they say so otherwise) and the core's tests without the `kernel` feature.
    Test {
        /// Extra arguments for `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.env_remove("RUSTUP_TOOLCHAIN");
    c
}

fn status(cmd: &mut Command) -> Result<()> {
    let shown = format!("{cmd:?}");
    let s = cmd.status().with_context(|| format!("starting {shown}"))?;
    if !s.success() {
        bail!("{shown} failed with {s}");
    }
    Ok(())
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => {
            setup::ensure()?;
        }
        Cmd::Build => {
            setup::ensure()?;
            status(cargo().args(["build", "--release", "--package", "tcpstate"]))?;
        }
        Cmd::Run { args } => {
            setup::ensure()?;
            status(cargo().args(["build", "--release", "--package", "tcpstate"]))?;
            let bin = std::env::current_dir()?.join("target/release/tcpstate");
            let mut cmd = if is_root() {
                Command::new(&bin)
            } else {
                let mut c = Command::new("sudo");
                c.arg(&bin);
                c
            };
            let s = cmd.args(&args).status().with_context(|| {
                if is_root() {
                    "starting tcpstate".to_string()
                } else {
                    "starting tcpstate through sudo (tracing needs root): run this as root"
                        .to_string()
                }
            })?;
            std::process::exit(s.code().unwrap_or(1));
        }
        Cmd::Man => {
            let dir = std::env::current_dir()?.join("target/man");
            for page in man::write_pages(&dir)? {
                println!("{}", page.display());
            }
        }
        Cmd::Bench(args) => {
            setup::ensure()?;
            bench::run(&args)?;
        }
        Cmd::CheckMsrv => msrv::run()?,
        Cmd::Test { args } => {
            setup::ensure()?;
            setup::ensure_test_tools()?;
            msrv::run()?;
            if !is_root() {
                eprintln!(
                    "xtask: not root: the kernel tests will be skipped (each says so; with CI=true \
                     each skip fails); run `cargo xtask test` as root to run them"
                );
            }
            status(cargo().args(["test", "--workspace"]).args(&args))?;
            // The pure core must build and pass without the eBPF toolchain.
            status(
                cargo()
                    .args(["test", "--package", "tcpstate", "--no-default-features"])
                    .args(&args),
            )?;
        }
    }
    Ok(())
}
