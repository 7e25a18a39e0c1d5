//! Recordings: `tcpstate trace --record FILE` stores the stream of [`Input`]s the pipeline saw,
//! `tcpstate replay FILE` feeds it to the same pipeline again.
//!
//! The byte layout is specified in `docs/record-format.md`; keep the two in step. In short: a
//! header (magic, format version, tool version, kernel release, clock, start time, command line)
//! closed by a CRC-32, then one record per input, each `kind, length, payload, CRC-32`. Everything
//! is little-endian. A reader yields every record before the first damaged one, then one error
//! naming the byte offset where the damage starts; a file that ends exactly after a record is a
//! complete (possibly cut short) recording, one that ends inside a record is an error.

mod file;
mod reader;
mod writer;

#[cfg(test)]
mod tests;

use std::{fmt, io};

use crate::le::{Get, Put};
use tcpstate_common::{Counter, EVENT_SIZE, EVENT_V1_SIZE};

use crate::{
    event::Event,
    facts::{Facts, PackedFacts, ResetRecord, RetransmitRecord, PACKED_FACTS_LEN},
    input::KernelCounters,
    listeners::{ListenerRecord, NetstatSample},
};

pub use file::{create_record_file, CreateError};
pub use reader::RecordReader;
pub use writer::RecordWriter;

/// First bytes of every recording. PNG's trick: the high-bit byte and the CR LF / ^Z / LF
/// sequence expose transfers that mangle binary files.
pub const MAGIC: [u8; 8] = *b"\x89TSR\r\n\x1a\n";
/// The format this code writes.
pub const FORMAT_VERSION: u16 = 3;
/// The oldest format it still reads (version 1 had six counters without a validity mask, and
/// no facts, retransmits, resets nor reset reason names).
pub const OLDEST_FORMAT_VERSION: u16 = 1;
/// The clock of every timestamp in a recording.
pub const CLOCK: &str = "CLOCK_MONOTONIC";

/// Magic, version, event size, header body length.
const FIXED_HEADER_LEN: usize = 16;
/// Two timestamps and four strings of at most `u16::MAX` bytes, each with its length; since
/// version 2 also, twice (reset and drop reasons), a count and up to `MAX_REASONS` reason
/// names of at most 255 bytes.
const MAX_HEADER_BODY: u32 =
    16 + 4 * (2 + u16::MAX as u32) + 2 * (2 + MAX_REASONS as u32 * (2 + 255));
const CRC_LEN: usize = 4;
/// Kind and payload length.
const RECORD_HEAD_LEN: usize = 4;
/// Version 1: six counters, all known.
const COUNTERS_V1_LEN: usize = 6 * 8;
/// Version 2: the validity mask, then the first 16 counters of `Counter::ALL` (before
/// `rescued`); version 3 on: every counter of `Counter::ALL`.
const COUNTERS_V2_LEN: usize = 8 + 16 * 8;
const COUNTERS_LEN: usize = 8 + Counter::ALL.len() * 8;
const TICK_LEN: usize = 8;
const FACTS_LEN: usize = PACKED_FACTS_LEN;
const RETRANSMIT_LEN: usize = 64;
const RESET_LEN: usize = 72;
const LISTENER_LEN: usize = 56;
/// Namespace, pid, time, validity mask, five counters.
const NETSTAT_LEN: usize = 8 + 4 + 8 + 4 + 5 * 8;
/// Most reset reason names a header holds.
const MAX_REASONS: usize = 256;
/// A cgroup record: the id, the path's length, the path, zero padding. Fixed like every kind,
/// so the length stays redundant with the kind (a flipped length bit is damage, not a
/// different record).
const CGROUP_LEN: usize = 8 + 2 + crate::cgroup::MAX_PATH_LEN;
/// The largest payload of any kind (a cgroup record).
const MAX_PAYLOAD_LEN: usize = CGROUP_LEN;
const _: () = assert!(COUNTERS_LEN <= MAX_PAYLOAD_LEN && EVENT_SIZE <= MAX_PAYLOAD_LEN);
const MAX_RECORD_LEN: usize = RECORD_HEAD_LEN + MAX_PAYLOAD_LEN + CRC_LEN;
const _: () = assert!(
    FACTS_LEN <= MAX_PAYLOAD_LEN
        && RETRANSMIT_LEN <= MAX_PAYLOAD_LEN
        && RESET_LEN <= MAX_PAYLOAD_LEN
        && LISTENER_LEN <= MAX_PAYLOAD_LEN
        && NETSTAT_LEN <= MAX_PAYLOAD_LEN
        && MAX_PAYLOAD_LEN <= u16::MAX as usize
);

/// Record kinds. 0 is never used, so a run of zero bytes (a hole left by a crash) is damage.
mod kinds {
    pub const EVENT: u16 = 1;
    pub const TICK: u16 = 2;
    pub const COUNTERS: u16 = 3;
    /// Version 2 on.
    pub const FACTS: u16 = 4;
    pub const RETRANSMIT: u16 = 5;
    pub const RESET: u16 = 6;
    /// Version 2 on.
    pub const CGROUP: u16 = 7;
    /// Listener health (issue 13, still version 2).
    pub const LISTENER: u16 = 8;
    pub const NETSTAT: u16 = 9;
}

/// What a recording says about where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Header {
    /// tcpstate's version that wrote it (`env!("CARGO_PKG_VERSION")`).
    pub tool_version: String,
    /// `uname -r` of the traced host.
    pub kernel_release: String,
    /// CLOCK_MONOTONIC when tracing started.
    pub start_mono_ns: u64,
    /// CLOCK_REALTIME minus CLOCK_MONOTONIC at the start, so a replay prints the wall-clock times
    /// the live trace printed.
    pub realtime_minus_mono_ns: i64,
    /// The command line or flags of the trace, free-form.
    pub command: String,
    /// The kernel's reset reason names by value (`enum sk_rst_reason`, lower case; empty where
    /// unnamed). Version 2 on; empty when read from version 1.
    pub reset_reasons: Vec<String>,
    /// The kernel's packet drop reason names (`enum skb_drop_reason`), the same way. After the
    /// reset reasons in version 2; empty when a header ends before them.
    pub drop_reasons: Vec<String>,
}

impl Header {
    /// A header for a recording made now by this build of tcpstate.
    pub fn new(
        kernel_release: String,
        start_mono_ns: u64,
        realtime_minus_mono_ns: i64,
        command: String,
    ) -> Self {
        Header {
            tool_version: env!("CARGO_PKG_VERSION").to_string(),
            kernel_release,
            start_mono_ns,
            realtime_minus_mono_ns,
            command,
            reset_reasons: Vec::new(),
            drop_reasons: Vec::new(),
        }
    }
}

/// A recording that cannot be read (further).
#[derive(Debug)]
pub struct RecordError {
    /// Where the damage starts: the records before this byte were all valid.
    pub offset: u64,
    pub kind: RecordErrorKind,
}

#[derive(Debug)]
pub enum RecordErrorKind {
    /// Reading the file failed.
    Io(io::Error),
    /// Not a recording at all.
    BadMagic,
    UnsupportedVersion(u16),
    /// Events of another size than this build's `Event`.
    EventSize(u16),
    HeaderTooLong(u32),
    /// The header's checksum is right but its content is not.
    BadHeader(&'static str),
    /// The file ends inside the header: `have` of `need` bytes.
    TruncatedHeader {
        have: usize,
        need: usize,
    },
    /// The file ends `have` bytes into a record (of `need` bytes when its length was readable).
    TruncatedRecord {
        have: usize,
        need: Option<usize>,
    },
    BadChecksum {
        stored: u32,
        computed: u32,
    },
    UnknownKind(u16),
    /// A payload that the writer could not have written (a value marked absent that is not
    /// zero, nonzero padding, unknown bits).
    BadPayload {
        kind: u16,
    },
    /// A known kind with another payload length than the kind has.
    BadLength {
        kind: u16,
        len: u16,
        expected: u16,
    },
}

impl RecordError {
    fn new(offset: u64, kind: RecordErrorKind) -> Self {
        RecordError { offset, kind }
    }

    /// Whether the recording merely ends early (a writer that was killed or ran out of disk),
    /// rather than being damaged or unreadable.
    pub fn is_truncation(&self) -> bool {
        matches!(
            self.kind,
            RecordErrorKind::TruncatedHeader { .. } | RecordErrorKind::TruncatedRecord { .. }
        )
    }
}

impl fmt::Display for RecordError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use RecordErrorKind as K;
        let at = self.offset;
        match &self.kind {
            K::Io(e) => write!(f, "cannot read recording at byte {at}: {e}"),
            K::BadMagic => write!(f, "not a tcpstate recording (bad magic at byte {at})"),
            K::UnsupportedVersion(v) => write!(
                f,
                "unsupported recording at byte {at}: format version {v}, tcpstate {} reads versions {OLDEST_FORMAT_VERSION} to {FORMAT_VERSION}",
                env!("CARGO_PKG_VERSION")
            ),
            K::EventSize(n) => write!(
                f,
                "unsupported recording at byte {at}: events of {n} bytes, this tcpstate reads {EVENT_SIZE}"
            ),
            K::HeaderTooLong(n) => write!(
                f,
                "corrupt recording at byte {at}: header of {n} bytes, at most {MAX_HEADER_BODY} allowed"
            ),
            K::BadHeader(what) => write!(f, "corrupt recording at byte {at}: {what}"),
            K::TruncatedHeader { have, need } => write!(
                f,
                "truncated recording at byte {at}: the file ends {have} bytes into a header of {need}"
            ),
            K::TruncatedRecord { have, need: Some(need) } => write!(
                f,
                "truncated recording at byte {at}: the file ends {have} bytes into a record of {need}"
            ),
            K::TruncatedRecord { have, need: None } => write!(
                f,
                "truncated recording at byte {at}: the file ends {have} bytes into a record"
            ),
            K::BadChecksum { stored, computed } => write!(
                f,
                "corrupt recording at byte {at}: bad checksum (stored {stored:#010x}, computed {computed:#010x})"
            ),
            K::UnknownKind(k) => write!(f, "corrupt recording at byte {at}: unknown record kind {k}"),
            K::BadPayload { kind } => write!(
                f,
                "corrupt recording at byte {at}: record kind {kind} holds values no writer writes"
            ),
            K::BadLength { kind, len, expected } => write!(
                f,
                "corrupt recording at byte {at}: record kind {kind} has length {len}, expected {expected}"
            ),
        }
    }
}

impl std::error::Error for RecordError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match &self.kind {
            RecordErrorKind::Io(e) => Some(e),
            _ => None,
        }
    }
}

/// The payload length of a record kind in a format version, `None` for kinds it does not know.
fn payload_len(kind: u16, version: u16) -> Option<usize> {
    match kind {
        kinds::EVENT if version == 1 => Some(EVENT_V1_SIZE),
        kinds::EVENT => Some(EVENT_SIZE),
        kinds::TICK => Some(TICK_LEN),
        kinds::COUNTERS if version == 1 => Some(COUNTERS_V1_LEN),
        kinds::COUNTERS if version == 2 => Some(COUNTERS_V2_LEN),
        kinds::COUNTERS => Some(COUNTERS_LEN),
        kinds::FACTS if version >= 2 => Some(FACTS_LEN),
        kinds::RETRANSMIT if version >= 2 => Some(RETRANSMIT_LEN),
        kinds::RESET if version >= 2 => Some(RESET_LEN),
        kinds::LISTENER if version >= 2 => Some(LISTENER_LEN),
        kinds::NETSTAT if version >= 2 => Some(NETSTAT_LEN),
        kinds::CGROUP if version >= 2 => Some(CGROUP_LEN),
        _ => None,
    }
}

/// Facts (kind 4): the packed form of [`Facts`] (see `facts::PackedFacts`).
fn facts_to_bytes(f: &Facts, out: &mut [u8]) {
    out[..FACTS_LEN].copy_from_slice(&PackedFacts::pack(f).0);
}

fn facts_from_bytes(b: &[u8]) -> Facts {
    PackedFacts(array_of(b)).unpack()
}

fn array_of<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[..N]);
    out
}

/// Retransmit (kind 5): `RetransmitRecord` field by field, its in-memory layout on
/// little-endian hosts.
fn retransmit_to_bytes(r: &RetransmitRecord, out: &mut [u8]) {
    let mut p = Put { buf: out, pos: 0 };
    p.bytes(&r.ts_ns.to_le_bytes());
    p.bytes(&r.skaddr.to_le_bytes());
    p.bytes(&[r.kind, r.state, r.tcp_flags, r.known]);
    for v in [r.segs, r.family, r.sport, r.dport] {
        p.bytes(&v.to_le_bytes());
    }
    p.bytes(&r.err.to_le_bytes());
    p.bytes(&r.saddr);
    p.bytes(&r.daddr);
}

fn retransmit_from_bytes(b: &[u8]) -> RetransmitRecord {
    let mut g = Get { buf: b, pos: 0 };
    RetransmitRecord {
        ts_ns: g.u64(),
        skaddr: g.u64(),
        kind: g.u8(),
        state: g.u8(),
        tcp_flags: g.u8(),
        known: g.u8(),
        segs: g.u16(),
        family: g.u16(),
        sport: g.u16(),
        dport: g.u16(),
        err: g.i32(),
        saddr: g.take(),
        daddr: g.take(),
    }
}

/// Reset (kind 6): `ResetRecord` field by field, padding included (stored as zero).
fn reset_to_bytes(r: &ResetRecord, out: &mut [u8]) {
    let mut p = Put { buf: out, pos: 0 };
    p.bytes(&r.ts_ns.to_le_bytes());
    p.bytes(&r.skaddr.to_le_bytes());
    p.bytes(&[r.direction, r.state, r.seg_flags, r.seg_flags_known]);
    p.bytes(&r.reason.to_le_bytes());
    for v in [r.family, r.sport, r.dport, r._pad] {
        p.bytes(&v.to_le_bytes());
    }
    p.bytes(&r.ctx_pid.to_le_bytes());
    p.bytes(&r._pad2.to_le_bytes());
    p.bytes(&r.saddr);
    p.bytes(&r.daddr);
}

fn reset_from_bytes(b: &[u8]) -> ResetRecord {
    let mut g = Get { buf: b, pos: 0 };
    ResetRecord {
        ts_ns: g.u64(),
        skaddr: g.u64(),
        direction: g.u8(),
        state: g.u8(),
        seg_flags: g.u8(),
        seg_flags_known: g.u8(),
        reason: g.u32(),
        family: g.u16(),
        sport: g.u16(),
        dport: g.u16(),
        _pad: g.u16(),
        ctx_pid: g.u32(),
        _pad2: g.u32(),
        saddr: g.take(),
        daddr: g.take(),
    }
}

/// Listener (kind 8): `ListenerRecord` field by field, padding included (stored as zero).
fn listener_to_bytes(r: &ListenerRecord, out: &mut [u8]) {
    let mut p = Put { buf: out, pos: 0 };
    p.bytes(&r.ts_ns.to_le_bytes());
    p.bytes(&r.skaddr.to_le_bytes());
    p.bytes(&[r.kind, r.known]);
    for v in [r.family, r.port, r._pad] {
        p.bytes(&v.to_le_bytes());
    }
    for v in [r.depth, r.limit, r.reason, r._pad2] {
        p.bytes(&v.to_le_bytes());
    }
    p.bytes(&r.addr);
}

fn listener_from_bytes(b: &[u8]) -> ListenerRecord {
    let mut g = Get { buf: b, pos: 0 };
    ListenerRecord {
        ts_ns: g.u64(),
        skaddr: g.u64(),
        kind: g.u8(),
        known: g.u8(),
        family: g.u16(),
        port: g.u16(),
        _pad: g.u16(),
        depth: g.u32(),
        limit: g.u32(),
        reason: g.u32(),
        _pad2: g.u32(),
        addr: g.take(),
    }
}

/// Netstat (kind 9): namespace, pid, time, validity mask (bit i: value i known), values (0
/// where unknown).
fn netstat_to_bytes(n: &NetstatSample, out: &mut [u8]) {
    let mut p = Put { buf: out, pos: 0 };
    p.bytes(&n.netns.to_le_bytes());
    p.bytes(&n.pid.to_le_bytes());
    p.bytes(&n.ts_ns.to_le_bytes());
    let mask = n
        .values
        .iter()
        .enumerate()
        .fold(0u32, |m, (i, v)| m | u32::from(v.is_some()) << i);
    p.bytes(&mask.to_le_bytes());
    for v in n.values {
        p.bytes(&v.unwrap_or(0).to_le_bytes());
    }
}

fn netstat_from_bytes(b: &[u8]) -> NetstatSample {
    let mut g = Get { buf: b, pos: 0 };
    let netns = g.u64();
    let pid = g.u32();
    let ts_ns = g.u64();
    let mask = g.u32();
    let mut values = [None; 5];
    for (i, v) in values.iter_mut().enumerate() {
        let x = g.u64();
        *v = (mask & 1 << i != 0).then_some(x);
    }
    NetstatSample {
        netns,
        pid,
        ts_ns,
        values,
    }
}

/// The event size of a format version.
fn event_size(version: u16) -> usize {
    if version == 1 {
        EVENT_V1_SIZE
    } else {
        EVENT_SIZE
    }
}

/// Converts an event between this host's layout and the file's little-endian one (the same
/// swap both ways; nothing to do on little-endian hosts).
fn event_le(ev: &Event) -> Event {
    let mut e = *ev;
    e.ts_ns = e.ts_ns.to_le();
    e.skaddr = e.skaddr.to_le();
    e.ctx_pid = e.ctx_pid.to_le();
    e.ctx_tid = e.ctx_tid.to_le();
    e.owner_pid = e.owner_pid.to_le();
    e.owner_tid = e.owner_tid.to_le();
    e.sport = e.sport.to_le();
    e.dport = e.dport.to_le();
    e.netns = e.netns.to_le();
    e.cgroup_id = e.cgroup_id.to_le();
    e
}

fn u64_at(b: &[u8], i: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&b[i * 8..i * 8 + 8]);
    u64::from_le_bytes(word)
}

/// Version 2: the validity mask (bit i: `Counter::ALL[i]` known), then every value in
/// `Counter::ALL` order, 0 where unknown.
fn counters_to_bytes(c: &KernelCounters) -> [u8; COUNTERS_LEN] {
    let mut out = [0u8; COUNTERS_LEN];
    let (values, valid) = c.to_raw();
    out[..8].copy_from_slice(&u64::from(valid).to_le_bytes());
    for (chunk, v) in out[8..].chunks_exact_mut(8).zip(values) {
        chunk.copy_from_slice(&v.to_le_bytes());
    }
    out
}

/// Version 2 or later: the counters a version did not have (beyond `b`'s end) are unknown.
fn counters_from_bytes(b: &[u8]) -> KernelCounters {
    let mut values = [0u64; tcpstate_common::COUNTERS];
    let stored = (b.len().saturating_sub(8) / 8).min(values.len());
    for (i, v) in values.iter_mut().enumerate().take(stored) {
        *v = u64_at(&b[8..], i);
    }
    // Bits beyond the stored counters are ignored; the mask is never wider than 32 bits.
    let valid = u64_at(b, 0) as u32 & ((1u32 << stored) - 1);
    KernelCounters::from_raw(values, valid)
}

/// Version 1's six counters, all known; the counters it did not have are unknown.
fn counters_from_v1_bytes(b: &[u8; COUNTERS_V1_LEN]) -> KernelCounters {
    const V1_ORDER: [Counter; 6] = [
        Counter::Seen,
        Counter::Filtered,
        Counter::Submitted,
        Counter::RingbufFull,
        Counter::Deferred,
        Counter::RecursionMisses,
    ];
    let mut out = KernelCounters::unknown();
    for (i, c) in V1_ORDER.into_iter().enumerate() {
        out.set(c, Some(u64_at(b, i)));
    }
    out
}
