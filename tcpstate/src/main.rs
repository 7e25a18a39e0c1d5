use std::process::ExitCode;

use clap::Parser;
use tcpstate::cli::{Cli, Command};

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match &cli.command {
        Command::Trace(args) => tcpstate::live::run(args),
        Command::Replay(args) => tcpstate::replay::run(args),
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
