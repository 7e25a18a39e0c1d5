//! `--engine`: the user-space pipeline alone on a synthetic recording.

use anyhow::{bail, Result};

pub fn run(_connections: usize) -> Result<()> {
    bail!("TODO: engine benchmark")
}
