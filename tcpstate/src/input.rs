//! What flows from the kernel (or a recording) into the pure pipeline.
//!
//! A live trace and a replay feed the same sequence of [`Input`]s to the same code, which is why
//! a replay reproduces the live output byte for byte: a recording stores exactly this stream.

use crate::event::Event;

/// The kernel program's counters plus the kernel's own count of skipped runs of the program,
/// each known or unknown; the one type every output and the recording use.
pub use tcpstate_common::{Counter, KernelCounters};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// One state change.
    Event(Event),
    /// The clock moved on (CLOCK_MONOTONIC ns, the clock of `Event::ts_ns`) with no event
    /// before it still to come: lets time-driven output (interval summaries, the reorder window)
    /// advance while the host is quiet.
    Tick { now_ns: u64 },
    /// A snapshot of the kernel's counters.
    Counters(KernelCounters),
}
