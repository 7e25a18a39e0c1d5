//! The kernel's counters as user space reports them: one list ([`Counter::ALL`]) that the probe,
//! the recording, the text and JSON summaries, `--counters-json` and the benchmark all iterate,
//! so a counter cannot be added to one of them and forgotten in another.
//!
//! A counter that could not be read is *unknown*, never 0: [`KernelCounters`] carries a value and
//! a validity bit for each counter.
//!
//! # The accounting identity
//!
//! Every TCP state change the kernel program runs for is counted once in `seen`, and ends in
//! exactly one of: `filtered` (rejected), `submitted` (written to the ring buffer),
//! `ringbuf_full` (lost, buffer full), `hold_failed` (a `connect()` event that had to be held
//! until its local port was known, lost because the table of held events was full), or held
//! (`deferred`). A held event is later *released* (`released`, then counted in `submitted` or
//! `ringbuf_full` at that moment: its own `seen` was counted when it was held), *dropped* with its
//! socket when that turns out not to match (`held_dropped`, and counted in `filtered` then), or
//! still held. So, once the program is detached (per-CPU counters are not read atomically while
//! it runs):
//!
//! ```text
//! seen = filtered + submitted + ringbuf_full + hold_failed + held
//! held = deferred - released - held_dropped          (held connect() events not yet released)
//! ```
//!
//! The joined programs (retransmits and resets) keep the same identity of their own:
//!
//! ```text
//! joined_seen = joined_filtered + joined_submitted + joined_ringbuf_full
//! ```
//!
//! and every delivered event at a transition that needs socket facts carries its facts in the
//! same record (`facts_submitted`; `facts_ringbuf_full` stays for recordings of versions that
//! reserved them apart, where the facts could be lost alone).
//!
//! `owner_update_failed` is not part of it: a failed owner-table insert loses no event, only the
//! owner of a socket (reported as unknown). `recursion_misses` are runs of tcpstate's programs
//! (the state-change one and the joined ones) the kernel skipped and no program made up for, so
//! they are not in `seen` (nor `joined_seen`); they are lost events. On the BTF tracepoint, a
//! state change the kernel skipped the main program for because it happened inside that
//! program's run on the same CPU is handled by the rescue program instead: it is `rescued`
//! (and then in `seen` like any other), and not in `recursion_misses`, which is the kernel's
//! count of skipped runs minus `rescued`.

/// Indexes of the kernel program's per-CPU `COUNTERS` array.
pub mod index {
    /// TCP state changes the program ran for.
    pub const SEEN: u32 = 0;
    /// Events rejected by the in-kernel filters, held connect() events dropped with their socket
    /// included (also counted in `HELD_DROPPED`).
    pub const FILTERED: u32 = 1;
    /// Events written to the ring buffer, released held events included.
    pub const SUBMITTED: u32 = 2;
    /// Events lost because the ring buffer was full, released held events included.
    pub const RINGBUF_FULL: u32 = 3;
    /// connect() events held back until the local port was known.
    pub const DEFERRED: u32 = 4;
    /// Owner-table inserts that failed because the table was full: that socket's owner stays
    /// unknown (the table is a plain hash; entries leave it when their socket closes).
    pub const OWNER_UPDATE_FAILED: u32 = 5;
    /// connect() events that should have been held but could not be (table of held events full,
    /// or an entry for the socket still there): lost.
    pub const HOLD_FAILED: u32 = 6;
    /// Held events taken out of the table to be delivered.
    pub const RELEASED: u32 = 7;
    /// Held events dropped because their socket turned out not to match.
    pub const HELD_DROPPED: u32 = 8;
    /// `FactsRecord`s written to the ring buffer (one per delivered event at a transition that
    /// needs socket facts).
    pub const FACTS_SUBMITTED: u32 = 9;
    /// `FactsRecord`s lost because the ring buffer was full (their event was delivered).
    pub const FACTS_RINGBUF_FULL: u32 = 10;
    /// Runs of the joined programs (`tcp:*` retransmit and reset tracepoints).
    pub const JOINED_SEEN: u32 = 11;
    /// Joined events rejected by the in-kernel filters.
    pub const JOINED_FILTERED: u32 = 12;
    /// Joined events written to the ring buffer.
    pub const JOINED_SUBMITTED: u32 = 13;
    /// Joined events lost because the ring buffer was full.
    pub const JOINED_RINGBUF_FULL: u32 = 14;
    /// Runs of the rescue program that handled a state change the BTF-tracepoint program was
    /// skipped for (the kernel counted them in its recursion misses).
    pub const RESCUED: u32 = 15;
    /// Slots of one bank of the array.
    pub const COUNT: u32 = 16;
    /// The array holds one bank of `COUNT` slots per kind of program, each written only by its
    /// own programs (user space sums them): the state-change program, the rescue program, and
    /// the joined programs.
    pub const BANKS: u32 = 3;
    pub const BANK_MAIN: u32 = 0;
    pub const BANK_RESCUE: u32 = COUNT;
    pub const BANK_JOINED: u32 = 2 * COUNT;
}

/// One counter user space reports.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Counter {
    Seen,
    Filtered,
    Submitted,
    RingbufFull,
    HoldFailed,
    RecursionMisses,
    Deferred,
    Released,
    HeldDropped,
    OwnerUpdateFailed,
    FactsSubmitted,
    FactsRingbufFull,
    JoinedSeen,
    JoinedFiltered,
    JoinedSubmitted,
    JoinedRingbufFull,
    Rescued,
}

/// How many counters [`Counter::ALL`] lists.
pub const COUNTERS: usize = 17;

impl Counter {
    /// Every counter, in the order every output lists them (and the recording stores them).
    pub const ALL: [Counter; COUNTERS] = [
        Counter::Seen,
        Counter::Filtered,
        Counter::Submitted,
        Counter::RingbufFull,
        Counter::HoldFailed,
        Counter::RecursionMisses,
        Counter::Deferred,
        Counter::Released,
        Counter::HeldDropped,
        Counter::OwnerUpdateFailed,
        Counter::FactsSubmitted,
        Counter::FactsRingbufFull,
        Counter::JoinedSeen,
        Counter::JoinedFiltered,
        Counter::JoinedSubmitted,
        Counter::JoinedRingbufFull,
        Counter::Rescued,
    ];

    /// The counter's name in JSON and in the text summary.
    pub const fn name(self) -> &'static str {
        match self {
            Counter::Seen => "seen",
            Counter::Filtered => "filtered",
            Counter::Submitted => "submitted",
            Counter::RingbufFull => "ringbuf_full",
            Counter::HoldFailed => "hold_failed",
            Counter::RecursionMisses => "recursion_misses",
            Counter::Deferred => "deferred",
            Counter::Released => "released",
            Counter::HeldDropped => "held_dropped",
            Counter::OwnerUpdateFailed => "owner_update_failed",
            Counter::FactsSubmitted => "facts_submitted",
            Counter::FactsRingbufFull => "facts_ringbuf_full",
            Counter::JoinedSeen => "joined_seen",
            Counter::JoinedFiltered => "joined_filtered",
            Counter::JoinedSubmitted => "joined_submitted",
            Counter::JoinedRingbufFull => "joined_ringbuf_full",
            Counter::Rescued => "rescued",
        }
    }

    /// Its slot in the kernel program's `COUNTERS` array; `None` for `recursion_misses`, which
    /// the kernel keeps in the program's info.
    pub const fn kernel_index(self) -> Option<u32> {
        match self {
            Counter::Seen => Some(index::SEEN),
            Counter::Filtered => Some(index::FILTERED),
            Counter::Submitted => Some(index::SUBMITTED),
            Counter::RingbufFull => Some(index::RINGBUF_FULL),
            Counter::HoldFailed => Some(index::HOLD_FAILED),
            Counter::RecursionMisses => None,
            Counter::Deferred => Some(index::DEFERRED),
            Counter::Released => Some(index::RELEASED),
            Counter::HeldDropped => Some(index::HELD_DROPPED),
            Counter::OwnerUpdateFailed => Some(index::OWNER_UPDATE_FAILED),
            Counter::FactsSubmitted => Some(index::FACTS_SUBMITTED),
            Counter::FactsRingbufFull => Some(index::FACTS_RINGBUF_FULL),
            Counter::JoinedSeen => Some(index::JOINED_SEEN),
            Counter::JoinedFiltered => Some(index::JOINED_FILTERED),
            Counter::JoinedSubmitted => Some(index::JOINED_SUBMITTED),
            Counter::JoinedRingbufFull => Some(index::JOINED_RINGBUF_FULL),
            Counter::Rescued => Some(index::RESCUED),
        }
    }

    /// Whether it counts events that existed but never reached user space.
    pub const fn is_loss(self) -> bool {
        matches!(
            self,
            Counter::RingbufFull
                | Counter::HoldFailed
                | Counter::RecursionMisses
                | Counter::FactsRingbufFull
                | Counter::JoinedRingbufFull
        )
    }

    /// Its position in [`Counter::ALL`].
    pub const fn position(self) -> usize {
        self as usize
    }

    pub fn from_name(name: &str) -> Option<Counter> {
        Counter::ALL.into_iter().find(|c| c.name() == name)
    }
}

// `position()` is the discriminant: the list must be in declaration order.
const _: () = {
    let mut i = 0;
    while i < COUNTERS {
        assert!(Counter::ALL[i].position() == i);
        i += 1;
    }
    assert!(COUNTERS <= 32, "the validity mask is a u32");
};

/// A snapshot of the kernel's counters (summed over CPUs), cumulative since tracing started,
/// each either known or unknown.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KernelCounters {
    values: [u64; COUNTERS],
    /// Bit `Counter::position()` set: that value is known.
    valid: u32,
}

impl Default for KernelCounters {
    fn default() -> Self {
        KernelCounters::unknown()
    }
}

impl KernelCounters {
    /// Every counter unknown.
    pub const fn unknown() -> Self {
        KernelCounters {
            values: [0; COUNTERS],
            valid: 0,
        }
    }

    /// Every counter known and 0.
    pub const fn zero() -> Self {
        KernelCounters {
            values: [0; COUNTERS],
            valid: (1 << COUNTERS) - 1,
        }
    }

    /// From values in [`Counter::ALL`] order and a validity mask (bit i: `ALL[i]` known);
    /// values of unknown counters are ignored, mask bits beyond the list too.
    pub fn from_raw(values: [u64; COUNTERS], valid: u32) -> Self {
        let valid = valid & ((1 << COUNTERS) - 1);
        let mut out = KernelCounters { values, valid };
        for c in Counter::ALL {
            if out.get(c).is_none() {
                out.values[c.position()] = 0;
            }
        }
        out
    }

    /// Values in [`Counter::ALL`] order (0 where unknown) and the validity mask.
    pub fn to_raw(&self) -> ([u64; COUNTERS], u32) {
        (self.values, self.valid)
    }

    pub fn get(&self, c: Counter) -> Option<u64> {
        (self.valid & (1 << c.position()) != 0).then_some(self.values[c.position()])
    }

    pub fn set(&mut self, c: Counter, value: Option<u64>) {
        let bit = 1 << c.position();
        match value {
            Some(v) => {
                self.values[c.position()] = v;
                self.valid |= bit;
            }
            None => {
                self.values[c.position()] = 0;
                self.valid &= !bit;
            }
        }
    }

    /// The same with `c` set to `value`.
    pub fn with(mut self, c: Counter, value: u64) -> Self {
        self.set(c, Some(value));
        self
    }

    /// Every counter and its value, in [`Counter::ALL`] order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, Option<u64>)> + '_ {
        Counter::ALL.into_iter().map(|c| (c, self.get(c)))
    }

    /// The counters that are unknown.
    pub fn unknown_counters(&self) -> impl Iterator<Item = Counter> + '_ {
        Counter::ALL.into_iter().filter(|&c| self.get(c).is_none())
    }

    pub fn all_known(&self) -> bool {
        self.unknown_counters().next().is_none()
    }

    /// Events that existed but never reached user space; unknown if any loss counter is.
    pub fn lost(&self) -> Option<u64> {
        Counter::ALL
            .into_iter()
            .filter(|c| c.is_loss())
            .try_fold(0u64, |sum, c| Some(sum.wrapping_add(self.get(c)?)))
    }

    /// Held connect() events not yet released or dropped: `deferred - released - held_dropped`.
    pub fn held(&self) -> Option<u64> {
        let d = self.get(Counter::Deferred)?;
        let gone = self
            .get(Counter::Released)?
            .wrapping_add(self.get(Counter::HeldDropped)?);
        Some(d.wrapping_sub(gone))
    }

    /// `seen` minus everything the identity (module docs) accounts it by; 0 when every event
    /// is accounted for, unknown if a counter in it is. Exact only once the program stopped.
    pub fn unaccounted(&self) -> Option<i128> {
        let seen = i128::from(self.get(Counter::Seen)?);
        let mut accounted = i128::from(self.held()?);
        for c in [
            Counter::Filtered,
            Counter::Submitted,
            Counter::RingbufFull,
            Counter::HoldFailed,
        ] {
            accounted += i128::from(self.get(c)?);
        }
        Some(seen - accounted)
    }
}

/// Serialized as an object of every counter by name, `null` when unknown; deserialized from
/// such an object, where a missing or `null` counter is unknown and other fields are ignored.
#[cfg(feature = "serde")]
mod serde_impl {
    use core::fmt;

    use serde::{
        de::{IgnoredAny, MapAccess, Visitor},
        ser::SerializeMap,
        Deserialize, Deserializer, Serialize, Serializer,
    };

    use super::{Counter, KernelCounters};

    impl Serialize for KernelCounters {
        fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
            let mut map = s.serialize_map(Some(Counter::ALL.len()))?;
            for (c, v) in self.iter() {
                map.serialize_entry(c.name(), &v)?;
            }
            map.end()
        }
    }

    /// A key: one of the counters, or something else to skip.
    enum Key {
        Counter(Counter),
        Other,
    }

    impl<'de> Deserialize<'de> for Key {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct KeyVisitor;
            impl Visitor<'_> for KeyVisitor {
                type Value = Key;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("a counter name")
                }
                fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key, E> {
                    Ok(Counter::from_name(v).map_or(Key::Other, Key::Counter))
                }
            }
            d.deserialize_identifier(KeyVisitor)
        }
    }

    impl<'de> Deserialize<'de> for KernelCounters {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct CountersVisitor;
            impl<'de> Visitor<'de> for CountersVisitor {
                type Value = KernelCounters;
                fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                    f.write_str("an object of kernel counters")
                }
                fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Self::Value, A::Error> {
                    let mut out = KernelCounters::unknown();
                    while let Some(key) = map.next_key::<Key>()? {
                        match key {
                            Key::Counter(c) => out.set(c, map.next_value::<Option<u64>>()?),
                            Key::Other => {
                                map.next_value::<IgnoredAny>()?;
                            }
                        }
                    }
                    Ok(out)
                }
            }
            d.deserialize_map(CountersVisitor)
        }
    }
}
