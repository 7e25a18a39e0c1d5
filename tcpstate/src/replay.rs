//! `tcpstate replay FILE`: the same pipeline as a live trace, fed from a recording.

use anyhow::Result;

use crate::cli::ReplayArgs;

pub fn run(args: &ReplayArgs) -> Result<i32> {
    anyhow::bail!("replay of {} is not available yet", args.file.display())
}
