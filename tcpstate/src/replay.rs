//! `tcpstate replay FILE`: the same pipeline as a live trace, fed from a recording, so it prints
//! what the live trace printed with the same output flags.

use std::{
    fs::File,
    io::{self, BufReader, BufWriter, Write},
};

use anyhow::{Context, Result};

use crate::{
    cli::ReplayArgs,
    output::{Output, OutputError},
    pipeline::{ClockBase, ResetReasons},
    record::RecordReader,
};

pub fn run(args: &ReplayArgs) -> Result<i32> {
    let path = &args.file;
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (reader, header) = RecordReader::open(BufReader::with_capacity(1 << 20, file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let clock = ClockBase {
        start_mono_ns: header.start_mono_ns,
        realtime_minus_mono_ns: header.realtime_minus_mono_ns,
    };
    let reasons = ResetReasons::leak(header.reset_reasons);
    let mut output = Output::with_reasons(&args.output, clock, None, reasons)
        .with_drop_reasons(ResetReasons::leak(header.drop_reasons));
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());

    let mut damage = None;
    for item in reader {
        let input = match item {
            Ok(input) => input,
            Err(e) => {
                damage = Some(e);
                break;
            }
        };
        match output.push(&input, &mut out) {
            Ok(()) => {}
            Err(OutputError::Closed) => return Ok(0),
            Err(e) => return Err(e.into()),
        }
    }
    // Everything valid before any damage is shown in full, summary included.
    match output
        .finish(&mut out)
        .and_then(|()| out.flush().map_err(OutputError::from))
    {
        Ok(()) | Err(OutputError::Closed) => {}
        Err(e) => return Err(e.into()),
    }
    if let Some(e) = damage {
        eprintln!("tcpstate: error: {}: {e}", path.display());
        return Ok(1);
    }
    Ok(0)
}
