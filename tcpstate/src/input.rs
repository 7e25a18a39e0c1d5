//! What flows from the kernel (or a recording) into the pure pipeline.
//!
//! A live trace and a replay feed the same sequence of [`Input`]s to the same code, which is why
//! a replay reproduces the live output byte for byte: a recording stores exactly this stream.

use crate::event::Event;
use crate::facts::{Facts, ResetRecord, RetransmitRecord};
use crate::listeners::{ListenerRecord, NetstatSample};

/// The kernel program's counters plus the kernel's own count of skipped runs of the program,
/// each known or unknown; the one type every output and the recording use.
pub use tcpstate_common::{Counter, KernelCounters};

#[derive(Debug, Clone, PartialEq, Eq)]
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
    /// A listener's accept-queue reading or a packet dropped for it.
    Listener(ListenerRecord),
    /// One network namespace's listen and SYN-cookie counters.
    Netstat(NetstatSample),
    /// What a cgroup v2 id means: its path relative to the cgroup v2 root. Comes before the
    /// first event that carries the id, once per id (live, from the host's hierarchy).
    Cgroup { id: u64, path: String },
}

#[cfg(test)]
mod tests {
    use super::{Counter, KernelCounters};

    #[test]
    fn json_names_every_counter_and_null_for_unknown() {
        let c = KernelCounters::unknown()
            .with(Counter::Seen, 7)
            .with(Counter::OwnerUpdateFailed, 2);
        let text = serde_json::to_string(&c).unwrap_or_default();
        assert_eq!(
            text,
            r#"{"seen":7,"filtered":null,"submitted":null,"ringbuf_full":null,"hold_failed":null,"recursion_misses":null,"deferred":null,"released":null,"held_dropped":null,"owner_update_failed":2,"facts_submitted":null,"facts_ringbuf_full":null,"joined_seen":null,"joined_filtered":null,"joined_submitted":null,"joined_ringbuf_full":null,"rescued":null}"#
        );
        let back: KernelCounters = serde_json::from_str(&text).expect("parse");
        assert_eq!(back, c);
        // Other fields are ignored, a missing counter is unknown.
        let back: KernelCounters =
            serde_json::from_str(r#"{"delivered":3,"seen":1}"#).expect("parse");
        assert_eq!(back, KernelCounters::unknown().with(Counter::Seen, 1));
    }

    #[test]
    fn derived_values_are_unknown_when_an_input_is() {
        let mut c = KernelCounters::zero()
            .with(Counter::Seen, 100)
            .with(Counter::Filtered, 50)
            .with(Counter::Submitted, 40)
            .with(Counter::RingbufFull, 2)
            .with(Counter::HoldFailed, 1)
            .with(Counter::RecursionMisses, 4)
            .with(Counter::Deferred, 20)
            .with(Counter::Released, 10)
            .with(Counter::HeldDropped, 3);
        assert_eq!(c.lost(), Some(7));
        assert_eq!(c.held(), Some(7));
        assert_eq!(c.unaccounted(), Some(0));
        c.set(Counter::HeldDropped, None);
        assert_eq!((c.held(), c.unaccounted()), (None, None));
        assert_eq!(c.lost(), Some(7));
        c.set(Counter::RecursionMisses, None);
        assert_eq!(c.lost(), None);
        assert_eq!(
            c.unknown_counters().collect::<Vec<_>>(),
            [Counter::RecursionMisses, Counter::HeldDropped]
        );
    }

    #[test]
    fn raw_form_round_trips_and_ignores_unknown_values() {
        let c = KernelCounters::unknown().with(Counter::Released, 9);
        let (values, valid) = c.to_raw();
        assert_eq!(KernelCounters::from_raw(values, valid), c);
        let mut noisy = values;
        noisy[0] = 123;
        assert_eq!(KernelCounters::from_raw(noisy, valid | 1 << 31), c);
    }
}
