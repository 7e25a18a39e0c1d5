//! Writes a recording.

use std::io::{self, BufWriter, Write};

use tcpstate_common::EVENT_SIZE;

use super::{
    counters_to_bytes, event_le, facts_to_bytes, kinds, reset_to_bytes, retransmit_to_bytes,
    Header, CGROUP_LEN, CLOCK, CRC_LEN, FACTS_LEN, FIXED_HEADER_LEN, FORMAT_VERSION, MAGIC,
    MAX_REASONS, MAX_RECORD_LEN, RECORD_HEAD_LEN, RESET_LEN, RETRANSMIT_LEN,
};
use crate::{cgroup::MAX_PATH_LEN, event, input::Input};

/// Large enough that a busy trace (400k events/s, about 48 MB/s) makes a few hundred write(2)
/// calls a second rather than hundreds of thousands.
const BUFFER_CAPACITY: usize = 128 * 1024;

/// Writes [`Input`]s to a recording.
///
/// Each record reaches the file whole or not at all, except when the file system fails in the
/// middle of a write (disk full): the file then ends inside a record, which readers report as a
/// truncation after yielding every record before it. Records still buffered when writing fails
/// are lost; call [`RecordWriter::flush`] to bound how many.
pub struct RecordWriter<W: Write> {
    out: BufWriter<W>,
}

impl<W: Write> RecordWriter<W> {
    /// Writes the header and flushes it, so even a trace killed before its first event leaves a
    /// readable recording.
    pub fn new(w: W, header: &Header) -> io::Result<Self> {
        let mut out = BufWriter::with_capacity(BUFFER_CAPACITY, w);
        out.write_all(&encode_header(header))?;
        out.flush()?;
        Ok(RecordWriter { out })
    }

    pub fn write(&mut self, input: &Input) -> io::Result<()> {
        let mut buf = [0u8; MAX_RECORD_LEN];
        let len = encode_record(input, &mut buf);
        self.out.write_all(&buf[..len])
    }

    /// Hands everything buffered to the underlying writer.
    pub fn flush(&mut self) -> io::Result<()> {
        self.out.flush()
    }

    /// Flushes and returns the underlying writer (to `sync_all` a file, or to inspect a `Vec`).
    pub fn finish(self) -> io::Result<W> {
        self.out.into_inner().map_err(|e| e.into_error())
    }
}

/// Encodes one record into `buf` and returns its length.
fn encode_record(input: &Input, buf: &mut [u8; MAX_RECORD_LEN]) -> usize {
    let payload = &mut buf[RECORD_HEAD_LEN..];
    let (kind, len) = match input {
        Input::Event(ev) => {
            payload[..EVENT_SIZE].copy_from_slice(event::encode(&event_le(ev)));
            (kinds::EVENT, EVENT_SIZE)
        }
        Input::Tick { now_ns } => {
            payload[..8].copy_from_slice(&now_ns.to_le_bytes());
            (kinds::TICK, 8)
        }
        Input::Counters(c) => {
            let bytes = counters_to_bytes(c);
            payload[..bytes.len()].copy_from_slice(&bytes);
            (kinds::COUNTERS, bytes.len())
        }
        Input::Facts(f) => {
            facts_to_bytes(f, &mut payload[..FACTS_LEN]);
            (kinds::FACTS, FACTS_LEN)
        }
        Input::Retransmit(r) => {
            retransmit_to_bytes(r, &mut payload[..RETRANSMIT_LEN]);
            (kinds::RETRANSMIT, RETRANSMIT_LEN)
        }
        Input::Reset(r) => {
            reset_to_bytes(r, &mut payload[..RESET_LEN]);
            (kinds::RESET, RESET_LEN)
        }
        Input::Cgroup { id, path } => {
            // Paths longer than a record holds are never announced (`cgroup::Announcer`); one
            // that got here anyway is cut at a character boundary.
            let mut end = path.len().min(MAX_PATH_LEN);
            while !path.is_char_boundary(end) {
                end -= 1;
            }
            payload[..CGROUP_LEN].fill(0);
            payload[..8].copy_from_slice(&id.to_le_bytes());
            // At most MAX_PATH_LEN, which fits a u16.
            payload[8..10].copy_from_slice(&(end as u16).to_le_bytes());
            payload[10..10 + end].copy_from_slice(&path.as_bytes()[..end]);
            (kinds::CGROUP, CGROUP_LEN)
        }
    };
    buf[0..2].copy_from_slice(&kind.to_le_bytes());
    // Every payload is at most MAX_PAYLOAD_LEN bytes, which fits a u16.
    buf[2..4].copy_from_slice(&(len as u16).to_le_bytes());
    let end = RECORD_HEAD_LEN + len;
    let crc = crc32fast::hash(&buf[..end]);
    buf[end..end + CRC_LEN].copy_from_slice(&crc.to_le_bytes());
    end + CRC_LEN
}

/// The longest prefix of `s` that fits a u16 length, cut at a character boundary.
fn clip(s: &str) -> &str {
    let mut end = s.len().min(u16::MAX as usize);
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    &s[..end]
}

fn push_str(out: &mut Vec<u8>, s: &str) {
    push_clipped(out, clip(s));
}

fn push_clipped(out: &mut Vec<u8>, s: &str) {
    // clip() bounds the length.
    out.extend_from_slice(&(s.len() as u16).to_le_bytes());
    out.extend_from_slice(s.as_bytes());
}

pub(super) fn encode_header(h: &Header) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(EVENT_SIZE as u16).to_le_bytes());
    out.extend_from_slice(&[0; 4]); // body length, filled in below
    out.extend_from_slice(&h.start_mono_ns.to_le_bytes());
    out.extend_from_slice(&h.realtime_minus_mono_ns.to_le_bytes());
    push_str(&mut out, &h.tool_version);
    push_str(&mut out, &h.kernel_release);
    push_str(&mut out, CLOCK);
    push_str(&mut out, &h.command);
    // Reset reason names: at most MAX_REASONS, each at most 255 bytes (enum names are short).
    let reasons = &h.reset_reasons[..h.reset_reasons.len().min(MAX_REASONS)];
    out.extend_from_slice(&(reasons.len() as u16).to_le_bytes());
    for name in reasons {
        let mut end = name.len().min(255);
        while !name.is_char_boundary(end) {
            end -= 1;
        }
        push_clipped(&mut out, &name[..end]);
    }
    // At most MAX_HEADER_BODY bytes: the strings are clipped.
    let body_len = (out.len() - FIXED_HEADER_LEN) as u32;
    out[12..16].copy_from_slice(&body_len.to_le_bytes());
    let crc = crc32fast::hash(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    out
}
