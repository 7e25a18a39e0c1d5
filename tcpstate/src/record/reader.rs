//! Reads a recording back.

use std::io::{self, BufReader, ErrorKind, Read};

use super::{
    counters_from_bytes, counters_from_v1_bytes, event_le, facts_from_bytes, facts_to_bytes, kinds,
    listener_from_bytes, netstat_from_bytes, payload_len, reset_from_bytes, retransmit_from_bytes,
    Header, RecordError, RecordErrorKind as K, CLOCK, COUNTERS_V1_LEN, CRC_LEN, FACTS_LEN,
    FIXED_HEADER_LEN, FORMAT_VERSION, MAGIC, MAX_HEADER_BODY, MAX_REASONS, MAX_RECORD_LEN,
    OLDEST_FORMAT_VERSION, RECORD_HEAD_LEN,
};
use crate::{event, input::Input};

const BUFFER_CAPACITY: usize = 128 * 1024;

/// Reads [`Input`]s from a recording: every valid record, then at most one error, then nothing.
pub struct RecordReader<R: Read> {
    inner: BufReader<R>,
    /// Byte offset of the next record.
    offset: u64,
    /// The file's format version.
    version: u16,
    done: bool,
}

impl<R: Read> RecordReader<R> {
    /// Reads and checks the header.
    pub fn open(r: R) -> Result<(Self, Header), RecordError> {
        let mut inner = BufReader::with_capacity(BUFFER_CAPACITY, r);
        let (header, header_len, version) = read_header(&mut inner)?;
        let reader = RecordReader {
            inner,
            offset: header_len,
            version,
            done: false,
        };
        Ok((reader, header))
    }

    /// Byte offset of the next record; after an error, where the damage starts, so the file's
    /// first `offset()` bytes are a valid recording.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The file's format version.
    pub fn format_version(&self) -> u16 {
        self.version
    }

    fn next_record(&mut self) -> Result<Option<Input>, RecordError> {
        let at = self.offset;
        let mut buf = [0u8; MAX_RECORD_LEN];
        let got = read_full(&mut self.inner, &mut buf[..RECORD_HEAD_LEN])
            .map_err(|e| RecordError::new(at, K::Io(e)))?;
        if got == 0 {
            return Ok(None);
        }
        if got < RECORD_HEAD_LEN {
            return Err(RecordError::new(
                at,
                K::TruncatedRecord {
                    have: got,
                    need: None,
                },
            ));
        }
        let kind = u16::from_le_bytes([buf[0], buf[1]]);
        let len = u16::from_le_bytes([buf[2], buf[3]]);
        let expected = payload_len(kind, self.version)
            .ok_or_else(|| RecordError::new(at, K::UnknownKind(kind)))?;
        if usize::from(len) != expected {
            return Err(RecordError::new(
                at,
                K::BadLength {
                    kind,
                    len,
                    // Payloads are at most MAX_PAYLOAD_LEN bytes, which fits a u16.
                    expected: expected as u16,
                },
            ));
        }
        let total = RECORD_HEAD_LEN + expected + CRC_LEN;
        let got = read_full(&mut self.inner, &mut buf[RECORD_HEAD_LEN..total])
            .map_err(|e| RecordError::new(at, K::Io(e)))?;
        if got < total - RECORD_HEAD_LEN {
            return Err(RecordError::new(
                at,
                K::TruncatedRecord {
                    have: RECORD_HEAD_LEN + got,
                    need: Some(total),
                },
            ));
        }
        let end = RECORD_HEAD_LEN + expected;
        check_crc(at, &buf[..end], &buf[end..total])?;
        let payload = &buf[RECORD_HEAD_LEN..end];
        let input = match kind {
            // The length was checked against the kind above, so decoding cannot fail.
            kinds::EVENT => match event::decode_version(payload, self.version) {
                Ok(ev) => Input::Event(event_le(&ev)),
                Err(_) => return Err(RecordError::new(at, K::UnknownKind(kind))),
            },
            kinds::TICK => Input::Tick {
                now_ns: u64::from_le_bytes(array(payload)),
            },
            kinds::FACTS => {
                let f = facts_from_bytes(payload);
                // Absent values and padding are zero: anything else is damage the checksum
                // missed or a writer this reader does not know.
                let mut again = [0u8; FACTS_LEN];
                facts_to_bytes(&f, &mut again);
                if again[..] != *payload {
                    return Err(RecordError::new(at, K::BadPayload { kind }));
                }
                Input::Facts(f)
            }
            kinds::RETRANSMIT => Input::Retransmit(retransmit_from_bytes(payload)),
            kinds::RESET => Input::Reset(reset_from_bytes(payload)),
            kinds::LISTENER => Input::Listener(listener_from_bytes(payload)),
            kinds::NETSTAT => Input::Netstat(netstat_from_bytes(payload)),
            kinds::CGROUP => {
                let id = u64::from_le_bytes(array(&payload[..8]));
                let n = usize::from(u16::from_le_bytes(array(&payload[8..10])));
                let bad = || RecordError::new(at, K::BadPayload { kind });
                let (path, padding) = payload[10..].split_at_checked(n).ok_or_else(bad)?;
                // Id 0 is "unknown", never named; the padding is zero as written.
                if id == 0 || padding.iter().any(|&b| b != 0) {
                    return Err(bad());
                }
                let path = std::str::from_utf8(path).map_err(|_| bad())?;
                Input::Cgroup {
                    id,
                    path: path.to_string(),
                }
            }
            _ if self.version == 1 => {
                Input::Counters(counters_from_v1_bytes(&array::<COUNTERS_V1_LEN>(payload)))
            }
            _ => Input::Counters(counters_from_bytes(payload)),
        };
        self.offset += total as u64;
        Ok(Some(input))
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<Input, RecordError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let item = self.next_record().transpose();
        if !matches!(item, Some(Ok(_))) {
            self.done = true;
        }
        item
    }
}

/// The first N bytes of a slice whose length the caller checked.
fn array<const N: usize>(b: &[u8]) -> [u8; N] {
    let mut out = [0u8; N];
    out.copy_from_slice(&b[..N]);
    out
}

/// Reads until `buf` is full or the input ends; returns the bytes read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match r.read(&mut buf[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(got)
}

fn check_crc(at: u64, data: &[u8], stored: &[u8]) -> Result<(), RecordError> {
    let stored = u32::from_le_bytes(array(stored));
    let computed = crc32fast::hash(data);
    if stored != computed {
        return Err(RecordError::new(at, K::BadChecksum { stored, computed }));
    }
    Ok(())
}

/// Reads the header; returns it, its length in bytes and the format version.
fn read_header(r: &mut impl Read) -> Result<(Header, u64, u16), RecordError> {
    let io_err = |e| RecordError::new(0, K::Io(e));
    let mut fixed = [0u8; FIXED_HEADER_LEN];
    let got = read_full(r, &mut fixed).map_err(io_err)?;
    let magic_got = got.min(MAGIC.len());
    if fixed[..magic_got] != MAGIC[..magic_got] {
        return Err(RecordError::new(0, K::BadMagic));
    }
    // Magic and version are where they are in every version; the rest may change with it.
    let version = u16::from_le_bytes([fixed[8], fixed[9]]);
    if got >= 10 && !(OLDEST_FORMAT_VERSION..=FORMAT_VERSION).contains(&version) {
        return Err(RecordError::new(8, K::UnsupportedVersion(version)));
    }
    if got < FIXED_HEADER_LEN {
        return Err(RecordError::new(
            0,
            K::TruncatedHeader {
                have: got,
                need: FIXED_HEADER_LEN,
            },
        ));
    }
    let event_size = u16::from_le_bytes([fixed[10], fixed[11]]);
    if usize::from(event_size) != super::event_size(version) {
        return Err(RecordError::new(10, K::EventSize(event_size)));
    }
    let body_len = u32::from_le_bytes(array(&fixed[12..16]));
    if body_len > MAX_HEADER_BODY {
        return Err(RecordError::new(12, K::HeaderTooLong(body_len)));
    }
    // Bounded by MAX_HEADER_BODY above.
    let body_len = body_len as usize;
    let mut rest = vec![0u8; body_len + CRC_LEN];
    let got = read_full(r, &mut rest).map_err(io_err)?;
    if got < rest.len() {
        return Err(RecordError::new(
            0,
            K::TruncatedHeader {
                have: FIXED_HEADER_LEN + got,
                need: FIXED_HEADER_LEN + rest.len(),
            },
        ));
    }
    let (body, stored) = rest.split_at(body_len);
    let computed = {
        let mut c = crc32fast::Hasher::new();
        c.update(&fixed);
        c.update(body);
        c.finalize()
    };
    let stored = u32::from_le_bytes(array(stored));
    if stored != computed {
        return Err(RecordError::new(0, K::BadChecksum { stored, computed }));
    }
    let header = parse_body(body, version)?;
    Ok((header, (FIXED_HEADER_LEN + rest.len()) as u64, version))
}

/// A cursor over the header body that names the offset of what it cannot read.
struct Body<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Body<'a> {
    fn offset(&self) -> u64 {
        (FIXED_HEADER_LEN + self.pos) as u64
    }

    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], RecordError> {
        let bytes = self.bytes;
        let end = self.pos.checked_add(n).filter(|&end| end <= bytes.len());
        let Some(end) = end else {
            return Err(RecordError::new(self.offset(), K::BadHeader(what)));
        };
        let out = &bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn u64(&mut self) -> Result<u64, RecordError> {
        Ok(u64::from_le_bytes(array(
            self.take(8, "header ends inside a timestamp")?,
        )))
    }

    fn string(&mut self) -> Result<String, RecordError> {
        let len = u16::from_le_bytes(array(self.take(2, "header ends inside a string length")?));
        let at = self.offset();
        let bytes = self.take(usize::from(len), "header string runs past the header")?;
        String::from_utf8(bytes.to_vec())
            .map_err(|_| RecordError::new(at, K::BadHeader("header string is not UTF-8")))
    }
}

fn parse_body(bytes: &[u8], version: u16) -> Result<Header, RecordError> {
    let mut b = Body { bytes, pos: 0 };
    let start_mono_ns = b.u64()?;
    let realtime_minus_mono_ns = b.u64()? as i64;
    let tool_version = b.string()?;
    let kernel_release = b.string()?;
    let clock_at = b.offset();
    let clock = b.string()?;
    if clock != CLOCK {
        return Err(RecordError::new(
            clock_at,
            K::BadHeader("the clock is not CLOCK_MONOTONIC"),
        ));
    }
    let command = b.string()?;
    let mut reset_reasons = Vec::new();
    let mut drop_reasons = Vec::new();
    if version >= 2 {
        reset_reasons = reason_names(&mut b)?;
        // Drop reasons came later in version 2's life, and are written only when there are
        // some: a header may end before them, but an empty list is no writer's.
        if b.pos != bytes.len() {
            let at = b.offset();
            drop_reasons = reason_names(&mut b)?;
            if drop_reasons.is_empty() {
                return Err(RecordError::new(
                    at,
                    K::BadHeader("an empty list of drop reason names"),
                ));
            }
        }
    }
    if b.pos != bytes.len() {
        return Err(RecordError::new(
            b.offset(),
            K::BadHeader("unexpected bytes at the end of the header"),
        ));
    }
    Ok(Header {
        tool_version,
        kernel_release,
        start_mono_ns,
        realtime_minus_mono_ns,
        command,
        reset_reasons,
        drop_reasons,
    })
}

/// A count and that many names of at most 255 bytes.
fn reason_names(b: &mut Body<'_>) -> Result<Vec<String>, RecordError> {
    let count_at = b.offset();
    let n = u16::from_le_bytes(array(b.take(2, "header ends inside the reason count")?));
    if usize::from(n) > MAX_REASONS {
        return Err(RecordError::new(
            count_at,
            K::BadHeader("too many reason names"),
        ));
    }
    let mut names = Vec::with_capacity(usize::from(n));
    for _ in 0..n {
        let at = b.offset();
        let name = b.string()?;
        // The writer clips names to 255 bytes: a longer one is no writer's.
        if name.len() > 255 {
            return Err(RecordError::new(
                at,
                K::BadHeader("reason name longer than 255 bytes"),
            ));
        }
        names.push(name);
    }
    Ok(names)
}
