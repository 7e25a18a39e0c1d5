//! What flows from the kernel (or a recording) into the pure pipeline.
//!
//! A live trace and a replay feed the same sequence of [`Input`]s to the same code, which is why
//! a replay reproduces the live output byte for byte: a recording stores exactly this stream.

use crate::event::Event;
use crate::facts::{Facts, ResetRecord, RetransmitRecord};

/// Totals of the kernel program's counters (summed over CPUs) plus the kernel's own count of
/// skipped runs of the program. All are cumulative since tracing started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KernelCounters {
    /// TCP state changes the program ran for.
    pub seen: u64,
    /// Rejected by the in-kernel filters.
    pub filtered: u64,
    /// Written to the ring buffer.
    pub submitted: u64,
    /// Lost: the ring buffer was full.
    pub ringbuf_full: u64,
    /// First events of a connect() held back until their local port was known.
    pub deferred: u64,
    /// Lost: the kernel skipped the program because another BPF program ran on that CPU
    /// (`recursion_misses` of the program's info).
    pub recursion_misses: u64,
}

impl KernelCounters {
    /// Events that existed but never reached user space.
    pub fn lost(&self) -> u64 {
        self.ringbuf_full + self.recursion_misses
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Input {
    /// One state change.
    Event(Event),
    /// Socket facts read at the transition of the same `ts_ns` and `skaddr` (it follows it).
    Facts(Facts),
    /// A retransmitted segment or SYN-ACK.
    Retransmit(RetransmitRecord),
    /// A reset sent or received.
    Reset(ResetRecord),
    /// The clock moved on (CLOCK_MONOTONIC ns, the clock of `Event::ts_ns`) with no event
    /// before it still to come: lets time-driven output (interval summaries, the reorder window)
    /// advance while the host is quiet.
    Tick { now_ns: u64 },
    /// A snapshot of the kernel's counters.
    Counters(KernelCounters),
}
