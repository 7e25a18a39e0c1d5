use std::process::ExitCode;

use clap::Parser;
use tcpstate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Trace(args) => trace(args),
        Command::Exporter(args) => exporter(args),
        Command::Replay(args) => tcpstate::replay::run(args),
        Command::Top(args) => tcpstate::top::run(args),
        Command::Completions(args) => completions(args),
    };
    match result {
        Ok(0) => ExitCode::SUCCESS,
        Ok(code) => ExitCode::from(code.clamp(1, 255) as u8),
        Err(e) => {
            eprintln!("tcpstate: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn completions(args: &tcpstate::cli::CompletionsArgs) -> anyhow::Result<i32> {
    let mut out = std::io::stdout().lock();
    args.write(&mut out);
    std::io::Write::flush(&mut out)?;
    Ok(0)
}

#[cfg(feature = "kernel")]
fn trace(args: &tcpstate::cli::TraceArgs) -> anyhow::Result<i32> {
    tcpstate::live::run(args)
}

#[cfg(feature = "kernel")]
fn exporter(args: &tcpstate::cli::ExporterArgs) -> anyhow::Result<i32> {
    tcpstate::exporter::run(args)
}

#[cfg(not(feature = "kernel"))]
fn exporter(_: &tcpstate::cli::ExporterArgs) -> anyhow::Result<i32> {
    anyhow::bail!(
        "this tcpstate was built without the eBPF program (--no-default-features): `exporter` \
         needs the default build (`cargo xtask build`)"
    )
}

#[cfg(not(feature = "kernel"))]
fn trace(_: &tcpstate::cli::TraceArgs) -> anyhow::Result<i32> {
    anyhow::bail!(
        "this tcpstate was built without the eBPF program (--no-default-features): `trace` \
         needs the default build (`cargo xtask build`); `replay` works in this one"
    )
}
