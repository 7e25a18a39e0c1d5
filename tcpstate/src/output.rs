//! Connects the command-line output flags to the pipeline and maps write errors.

use std::io;

use crate::{
    cli::{OutputArgs, OutputFormat},
    input::Input,
    pipeline::{ClockBase, Format, Mode, OutputConfig, Pipeline, ResetReasons, TimeColumn},
};

#[derive(Debug, thiserror::Error)]
pub enum OutputError {
    /// The reader went away (`| head`): a normal way to stop.
    #[error("output closed")]
    Closed,
    #[error("writing output: {0}")]
    Io(io::Error),
}

// By hand, not #[from]: a broken pipe is the reader leaving, not an I/O failure.
impl From<io::Error> for OutputError {
    fn from(e: io::Error) -> Self {
        if e.kind() == io::ErrorKind::BrokenPipe {
            OutputError::Closed
        } else {
            OutputError::Io(e)
        }
    }
}

fn ms_to_ns(ms: f64) -> u64 {
    (ms * 1e6).round() as u64
}

/// The pipeline's configuration for these flags; the same for `trace` and `replay`, so both
/// print the same bytes for the same inputs. `max_records` is `trace --count`.
pub fn config(args: &OutputArgs, clock: ClockBase, max_records: Option<u64>) -> OutputConfig {
    OutputConfig {
        mode: if args.transitions {
            Mode::Transitions
        } else if args.timeline {
            Mode::Timeline
        } else {
            Mode::Connections
        },
        format: match args.format {
            OutputFormat::Table => Format::Table,
            OutputFormat::Json => Format::Json,
        },
        time: if args.wall_time {
            TimeColumn::Wall
        } else if args.relative_time {
            TimeColumn::Relative
        } else {
            TimeColumn::None
        },
        wide: args.wide,
        containers: args.containers,
        min_handshake_ns: args.min_handshake_ms.map(ms_to_ns),
        min_close_wait_ns: args.min_close_wait_ms.map(ms_to_ns),
        interval_ns: args.interval.map(|s| (s * 1e9).round() as u64),
        max_tracked: args.max_tracked as usize,
        clock,
        summary_at_end: !args.no_summary,
        max_records,
        stuck: crate::timeline::stuck::Thresholds::from_specs(&args.stuck),
        ..OutputConfig::default()
    }
}

/// The pipeline with its output errors mapped.
pub struct Output {
    pipeline: Pipeline,
}

impl Output {
    /// With the kernel's reset reason names (from BTF live, from the header in a replay).
    pub fn with_reasons(
        args: &OutputArgs,
        clock: ClockBase,
        max_records: Option<u64>,
        reasons: ResetReasons,
    ) -> Self {
        Output {
            pipeline: Pipeline::new(OutputConfig {
                reset_reasons: reasons,
                ..config(args, clock, max_records)
            }),
        }
    }

    /// Around a pipeline built elsewhere (the exporter's, with its metrics renderer).
    #[cfg(feature = "kernel")]
    pub(crate) fn from_pipeline(pipeline: Pipeline) -> Self {
        Output { pipeline }
    }

    pub fn push(&mut self, input: &Input, out: &mut impl io::Write) -> Result<(), OutputError> {
        Ok(self.pipeline.push(input, out)?)
    }

    pub fn finish(&mut self, out: &mut impl io::Write) -> Result<(), OutputError> {
        Ok(self.pipeline.finish(out)?)
    }

    /// Whether `--count` output records were written.
    #[cfg(feature = "kernel")]
    pub fn limit_reached(&self) -> bool {
        self.pipeline.limit_reached()
    }
}
