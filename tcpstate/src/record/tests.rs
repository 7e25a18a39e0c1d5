use std::io::{self, Write};

use tcpstate_common::{state, AF_INET6};

use super::*;
use crate::{event::tests::ev, input::Input};

fn header() -> Header {
    Header {
        tool_version: "0.1.0".into(),
        kernel_release: "6.18.0-test".into(),
        start_mono_ns: 123_456_789,
        realtime_minus_mono_ns: 1_763_700_000_000_000_000,
        command: "tcpstate trace --record x.tsr".into(),
        reset_reasons: vec!["not_specified".into(), "no_socket".into(), String::new()],
        drop_reasons: vec![String::new(), "tcp_listen_overflow".into()],
    }
}

/// One of each kind, with every event field set to something distinctive.
fn inputs() -> Vec<Input> {
    let mut v6 = ev(
        2_000,
        0xffff_8880_1234_5678,
        state::LISTEN,
        state::SYN_RECV,
        443,
        50_000,
    );
    v6.family = AF_INET6;
    v6.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
    v6.daddr = [0xfe, 0x80, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14];
    v6.ctx_pid = 7;
    v6.ctx_tid = 8;
    v6.ctx_comm[..7].copy_from_slice(b"swapper");
    v6.flags = 1;
    v6.owner_source = 3;
    v6._pad = [1, 2, 3];
    v6.netns = 4026532000;
    v6.cgroup_id = 0x1_0000_0042;
    vec![
        Input::Event(ev(
            1_000,
            0xffff_8880_0000_0001,
            state::CLOSE,
            state::SYN_SENT,
            0,
            80,
        )),
        Input::Tick { now_ns: 1_500 },
        Input::Event(v6),
        Input::Counters(
            KernelCounters::zero()
                .with(Counter::Seen, 1)
                .with(Counter::Filtered, 2)
                .with(Counter::Submitted, 3)
                .with(Counter::RingbufFull, 4)
                .with(Counter::Deferred, 5)
                .with(Counter::RecursionMisses, u64::MAX),
        ),
        Input::Facts(crate::facts::Facts {
            ts_ns: 3_000,
            skaddr: 0xffff_8880_0000_0001,
            oldstate: state::ESTABLISHED,
            newstate: state::CLOSE,
            sk_err: Some(104),
            sk_err_soft: Some(-1),
            srtt_us: Some(40_168),
            min_rtt_us: None,
            total_retrans: Some(4),
            retransmits: Some(0),
            probes_out: Some(255),
            packets_out: None,
            wmem_queued: Some(0),
            bytes_acked: Some(u64::MAX),
            bytes_received: Some(7001),
            bytes_retrans: None,
            segs_in: Some(1),
            segs_out: Some(u32::MAX),
        }),
        Input::Retransmit(crate::facts::RetransmitRecord {
            ts_ns: 3_100,
            skaddr: 0xffff_8880_0000_0001,
            kind: 1,
            state: state::FIN_WAIT1,
            tcp_flags: 0x11,
            known: 7,
            segs: 2,
            family: 10,
            sport: 443,
            dport: 50_000,
            err: -105,
            saddr: [1; 16],
            daddr: [2; 16],
        }),
        Input::Reset(crate::facts::ResetRecord {
            ts_ns: 3_200,
            skaddr: 0,
            direction: 1,
            state: 0,
            seg_flags: 0x02,
            seg_flags_known: 1,
            reason: u32::MAX,
            family: 2,
            sport: 9,
            dport: 40_000,
            _pad: 0,
            ctx_pid: 77,
            _pad2: 0,
            saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            daddr: [10, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        }),
        Input::Listener(crate::listeners::ListenerRecord {
            ts_ns: 3_300,
            skaddr: 0xffff_8880_0000_0002,
            kind: 1,
            known: 1,
            family: 10,
            port: 8080,
            _pad: 0,
            depth: 3,
            limit: 4096,
            reason: 40,
            _pad2: 0,
            addr: [3; 16],
        }),
        Input::Netstat(crate::listeners::NetstatSample {
            netns: 4_026_531_840,
            pid: 1,
            ts_ns: 3_400,
            values: [Some(7), None, Some(0), Some(u64::MAX), None],
        }),
        Input::Cgroup {
            id: 0x1_0000_0042,
            path: "/kubepods.slice/kubepods-pod0b6c3a4e_6f8d_4c1a_9e2b_7d5f1a2b3c4d.slice".into(),
        },
        Input::Tick { now_ns: u64::MAX },
    ]
}

/// A recording of `inputs` and the offset where each record starts, plus the end.
fn record(header: &Header, inputs: &[Input]) -> (Vec<u8>, Vec<usize>) {
    let mut w = RecordWriter::new(Vec::new(), header).unwrap();
    let mut bounds = vec![encode_header_len(header)];
    for i in inputs {
        w.write(i).unwrap();
        w.flush().unwrap();
        bounds.push(bounds.last().unwrap() + record_len(i));
    }
    let bytes = w.finish().unwrap();
    assert_eq!(bytes.len(), *bounds.last().unwrap());
    (bytes, bounds)
}

fn encode_header_len(h: &Header) -> usize {
    writer::encode_header(h).len()
}

fn record_len(i: &Input) -> usize {
    8 + match i {
        Input::Event(_) => 120,
        Input::Tick { .. } => 8,
        Input::Counters(_) => 144,
        Input::Facts(_) => 84,
        Input::Retransmit(_) => 64,
        Input::Reset(_) => 72,
        Input::Listener(_) => 56,
        Input::Netstat(_) => 64,
        Input::Cgroup { .. } => 1034,
    }
}

/// Reads a recording: the header (or the error opening it), the records, the error after them.
fn read(bytes: &[u8]) -> Result<(Header, Vec<Input>, Option<RecordError>), RecordError> {
    let (reader, header) = RecordReader::open(bytes)?;
    let mut got = Vec::new();
    let mut err = None;
    for item in reader {
        match item {
            Ok(i) => got.push(i),
            Err(e) => {
                assert!(err.is_none(), "a second error: {e}");
                err = Some(e);
            }
        }
    }
    Ok((header, got, err))
}

#[test]
fn every_kind_roundtrips() {
    let (bytes, _) = record(&header(), &inputs());
    let (h, got, err) = read(&bytes).unwrap();
    assert_eq!(h, header());
    assert_eq!(got, inputs());
    assert!(err.is_none());
}

#[test]
fn header_fields_roundtrip() {
    for h in [
        Header {
            tool_version: String::new(),
            kernel_release: String::new(),
            start_mono_ns: 0,
            realtime_minus_mono_ns: i64::MIN,
            command: String::new(),
            reset_reasons: Vec::new(),
            drop_reasons: Vec::new(),
        },
        Header {
            tool_version: "9.9.9-rc1".into(),
            kernel_release: "5.4.0-150-generic".into(),
            start_mono_ns: u64::MAX,
            realtime_minus_mono_ns: -1,
            command: "tcpstate trace --comm 'nginx ü' -p 80".into(),
            reset_reasons: vec!["tcp_abort_on_close".into(); 3],
            drop_reasons: vec!["socket_backlog".into(); 2],
        },
        Header::new("6.1.0".into(), 5, 6, "cmd".into()),
    ] {
        let (bytes, _) = record(&h, &[]);
        let (got, inputs, err) = read(&bytes).unwrap();
        assert_eq!(got, h);
        assert!(inputs.is_empty() && err.is_none());
    }
    assert_eq!(
        Header::new(String::new(), 0, 0, String::new()).tool_version,
        env!("CARGO_PKG_VERSION")
    );
}

#[test]
fn overlong_strings_are_clipped_at_a_character_boundary() {
    let mut h = header();
    // 'é' is two bytes: 40_000 of them straddle the u16 limit at an odd byte.
    h.command = "é".repeat(40_000);
    let (bytes, _) = record(&h, &inputs()[..1]);
    let (got, inputs, err) = read(&bytes).unwrap();
    assert_eq!(got.command.len(), 65_534);
    assert!(h.command.starts_with(&got.command));
    assert_eq!(inputs.len(), 1);
    assert!(err.is_none());
}

/// The layout spelled out in docs/record-format.md, byte by byte, independently of the writer:
/// the header of `version`, a tick, a counters record with `counters_payload`, an event.
fn documented_bytes(version: u8, counters_payload: &[u8]) -> Vec<u8> {
    let mut want: Vec<u8> = vec![0x89, b'T', b'S', b'R', b'\r', b'\n', 0x1a, b'\n'];
    want.extend([version, 0]); // format version
    let event_len: u8 = if version >= 2 { 120 } else { 112 };
    want.extend([event_len, 0]); // event size
                                 // Version 2 adds the reset and the drop reason names.
    let reasons_len = if version >= 2 {
        2 + 2 + (2 + 9) + 2 + (2 + 19)
    } else {
        0
    };
    let body_len = 8 + 8 + (2 + 3) + (2 + 4) + (2 + 15) + (2 + 1) + reasons_len;
    want.extend([body_len as u8, 0, 0, 0]);
    want.extend([8, 7, 6, 5, 4, 3, 2, 1]);
    want.extend([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff]);
    want.extend(b"\x03\x001.2");
    want.extend(b"\x04\x006.18");
    want.extend(b"\x0f\x00CLOCK_MONOTONIC");
    want.extend(b"\x01\x00x");
    if version >= 2 {
        want.extend([2, 0]); // two reset reason names
        want.extend(b"\x00\x00");
        want.extend(b"\x09\x00no_socket");
        want.extend([1, 0]); // one drop reason name
        want.extend(b"\x13\x00tcp_listen_overflow");
    }
    let crc = crc32fast::hash(&want);
    want.extend(crc.to_le_bytes());
    let tick_at = want.len();
    want.extend([2, 0, 8, 0]); // kind 2 (tick), 8 bytes
    want.extend(0x1122_3344_5566_7788u64.to_le_bytes());
    let crc = crc32fast::hash(&want[tick_at..]);
    want.extend(crc.to_le_bytes());
    let counters_at = want.len();
    want.extend([3, 0, counters_payload.len() as u8, 0]);
    want.extend(counters_payload);
    let crc = crc32fast::hash(&want[counters_at..]);
    want.extend(crc.to_le_bytes());
    let event_at = want.len();
    want.extend([1, 0, event_len, 0]);
    let mut payload = Vec::new();
    payload.extend(0x0a0bu64.to_le_bytes()); // ts_ns
    payload.extend(0x0c0du64.to_le_bytes()); // skaddr
    payload.extend([0; 8]); // ctx_pid, ctx_tid
    payload.extend(42u32.to_le_bytes()); // owner_pid
    payload.extend(42u32.to_le_bytes()); // owner_tid
    payload.extend([state::ESTABLISHED, state::FIN_WAIT1, 2, 0]); // states, family, flags
    payload.extend([0x34, 0x12, 80, 0]); // sport, dport
    payload.extend([127, 0, 0, 1]);
    payload.extend([0; 12]);
    payload.extend([127, 0, 0, 1]);
    payload.extend([0; 12]);
    payload.extend([0; 16]); // ctx_comm
    payload.extend(b"curl");
    payload.extend([0; 12]);
    payload.extend([0; 8]); // owner_source, padding (version 2: and netns)
    if version >= 2 {
        payload.extend([0; 8]); // cgroup_id
    }
    assert_eq!(payload.len(), usize::from(event_len));
    want.extend(payload);
    let crc = crc32fast::hash(&want[event_at..]);
    want.extend(crc.to_le_bytes());
    want
}

/// The header `documented_bytes` spells out; version 1 has no reset reason names.
fn documented_header(version: u8) -> Header {
    Header {
        tool_version: "1.2".into(),
        kernel_release: "6.18".into(),
        start_mono_ns: 0x0102_0304_0506_0708,
        realtime_minus_mono_ns: -2,
        command: "x".into(),
        reset_reasons: if version >= 2 {
            vec![String::new(), "no_socket".into()]
        } else {
            Vec::new()
        },
        drop_reasons: if version >= 2 {
            vec!["tcp_listen_overflow".into()]
        } else {
            Vec::new()
        },
    }
}

fn documented_event() -> Event {
    ev(
        0x0a0b,
        0x0c0d,
        state::ESTABLISHED,
        state::FIN_WAIT1,
        0x1234,
        80,
    )
}

#[test]
fn bytes_match_the_documented_layout() {
    // Known: seen 1, filtered 2, hold_failed 0, recursion_misses 6; the rest unknown.
    let counters = KernelCounters::unknown()
        .with(Counter::Seen, 1)
        .with(Counter::Filtered, 2)
        .with(Counter::HoldFailed, 0)
        .with(Counter::RecursionMisses, 6);
    let mut payload = Vec::new();
    payload.extend(0b11_0011u64.to_le_bytes()); // validity mask, bit i: Counter::ALL[i]
    for v in [1u64, 2, 0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0] {
        payload.extend(v.to_le_bytes());
    }
    assert_eq!(payload.len(), 144);
    let want = documented_bytes(3, &payload);
    let (got, _) = record(
        &documented_header(3),
        &[
            Input::Tick {
                now_ns: 0x1122_3344_5566_7788,
            },
            Input::Counters(counters),
            Input::Event(documented_event()),
        ],
    );
    assert_eq!(got, want);
}

/// Version 2 recordings still replay: their sixteen counters as stored, `rescued` (which they
/// did not have) unknown; a version-3 length there is damage.
#[test]
fn version_2_counters_are_read() {
    let mut payload = Vec::new();
    payload.extend(0b10_0001u64.to_le_bytes());
    for v in 1..=16u64 {
        payload.extend(v.to_le_bytes());
    }
    let (_, inputs, err) = read(&documented_bytes(2, &payload)).unwrap();
    assert!(err.is_none());
    let want = KernelCounters::unknown()
        .with(Counter::Seen, 1)
        .with(Counter::RecursionMisses, 6);
    assert_eq!(inputs[1], Input::Counters(want));
    payload.extend(0u64.to_le_bytes());
    let (_, _, err) = read(&documented_bytes(2, &payload)).unwrap();
    assert!(matches!(
        err.map(|e| e.kind),
        Some(RecordErrorKind::BadLength {
            kind: 3,
            len: 144,
            expected: 136
        })
    ));
}

/// Version 1 recordings still replay: their six counters are known, the others unknown.
#[test]
fn version_1_recordings_are_read() {
    let mut payload = Vec::new();
    for v in 1..=6u64 {
        payload.extend(v.to_le_bytes());
    }
    let bytes = documented_bytes(1, &payload);
    let (header, inputs, err) = read(&bytes).unwrap();
    assert!(err.is_none());
    assert_eq!(header, documented_header(1));
    let counters = KernelCounters::unknown()
        .with(Counter::Seen, 1)
        .with(Counter::Filtered, 2)
        .with(Counter::Submitted, 3)
        .with(Counter::RingbufFull, 4)
        .with(Counter::Deferred, 5)
        .with(Counter::RecursionMisses, 6);
    assert_eq!(
        inputs,
        [
            Input::Tick {
                now_ns: 0x1122_3344_5566_7788
            },
            Input::Counters(counters),
            Input::Event(documented_event()),
        ]
    );
    // A version-2 length in a version-1 file is damage, not a guess.
    let wrong = documented_bytes(1, &[0; 136]);
    let (_, _, err) = read(&wrong).unwrap();
    assert!(matches!(
        err.map(|e| e.kind),
        Some(RecordErrorKind::BadLength {
            kind: 3,
            len: 136,
            expected: 48
        })
    ));
}

#[test]
fn a_cut_yields_the_records_before_it_then_a_truncation_error() {
    let (bytes, bounds) = record(&header(), &inputs());
    let header_len = bounds[0];
    for cut in 0..=bytes.len() {
        let data = &bytes[..cut];
        if cut < header_len {
            let err = read(data)
                .err()
                .unwrap_or_else(|| panic!("cut {cut}: header accepted"));
            assert_eq!(err.offset, 0, "cut {cut}");
            assert!(
                matches!(err.kind, RecordErrorKind::TruncatedHeader { have, .. } if have == cut),
                "cut {cut}: {err}"
            );
            assert!(err.is_truncation());
            continue;
        }
        let (_, got, err) = read(data).unwrap();
        // Records that end at or before the cut.
        let whole = bounds[1..].iter().filter(|&&end| end <= cut).count();
        assert_eq!(got, inputs()[..whole], "cut {cut}");
        if bounds.contains(&cut) {
            assert!(err.is_none(), "cut {cut} at a record boundary: {err:?}");
        } else {
            let err = err.unwrap_or_else(|| panic!("cut {cut} inside a record accepted"));
            assert_eq!(err.offset, bounds[whole] as u64, "cut {cut}");
            assert!(
                matches!(err.kind, RecordErrorKind::TruncatedRecord { have, .. } if have == cut - bounds[whole]),
                "cut {cut}: {err}"
            );
            assert!(err
                .to_string()
                .starts_with(&format!("truncated recording at byte {}: ", bounds[whole])));
        }
    }
}

/// Every single-bit error, anywhere, is caught: in the header by refusing the file, in a record
/// by yielding exactly the records before it and then an error at its first byte.
#[test]
fn flipped_bits_are_detected_where_they_are() {
    let (bytes, bounds) = record(&header(), &inputs());
    for pos in 0..bytes.len() {
        for bit in 0..8 {
            let mut data = bytes.clone();
            data[pos] ^= 1 << bit;
            check_damage(&data, &bounds, pos);
        }
        for value in [0u8, 0xff] {
            if bytes[pos] != value {
                let mut data = bytes.clone();
                data[pos] = value;
                check_damage(&data, &bounds, pos);
            }
        }
    }
}

fn check_damage(data: &[u8], bounds: &[usize], pos: usize) {
    let Ok((_, got, err)) = read(data) else {
        assert!(
            pos < bounds[0],
            "byte {pos}: damage in a record refused the header"
        );
        return;
    };
    assert!(pos >= bounds[0], "byte {pos}: damaged header accepted");
    let damaged = bounds.iter().rposition(|&b| b <= pos).unwrap();
    assert_eq!(got, inputs()[..damaged], "byte {pos}");
    let err = err.unwrap_or_else(|| panic!("byte {pos}: damage not detected"));
    assert_eq!(err.offset, bounds[damaged] as u64, "byte {pos}: {err}");
    assert!(err
        .to_string()
        .starts_with(&format!("corrupt recording at byte {}: ", bounds[damaged])));
}

#[test]
fn a_damaged_record_names_its_offset() {
    let (mut bytes, bounds) = record(&header(), &inputs());
    // The payload of the third record.
    bytes[bounds[2] + 10] ^= 0x40;
    let (_, got, err) = read(&bytes).unwrap();
    assert_eq!(got.len(), 2);
    let err = err.unwrap();
    assert!(matches!(err.kind, RecordErrorKind::BadChecksum { .. }));
    assert!(!err.is_truncation());
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "corrupt recording at byte {}: bad checksum (stored 0x",
            bounds[2]
        )),
        "{msg}"
    );
}

#[test]
fn unknown_kinds_and_zero_runs_are_damage() {
    let (mut bytes, bounds) = record(&header(), &inputs()[..1]);
    let mut rec = vec![10, 0, 8, 0, 1, 2, 3, 4, 5, 6, 7, 8];
    let crc = crc32fast::hash(&rec);
    rec.extend(crc.to_le_bytes());
    bytes.extend(&rec);
    let (_, got, err) = read(&bytes).unwrap();
    assert_eq!(got.len(), 1);
    let err = err.unwrap();
    assert!(matches!(err.kind, RecordErrorKind::UnknownKind(10)));
    assert_eq!(err.offset, bounds[1] as u64);

    let (mut bytes, _) = record(&header(), &inputs()[..1]);
    bytes.extend([0u8; 4096]);
    let err = read(&bytes).unwrap().2.unwrap();
    assert!(matches!(err.kind, RecordErrorKind::UnknownKind(0)));
    assert_eq!(
        err.to_string(),
        format!(
            "corrupt recording at byte {}: unknown record kind 0",
            bounds[1]
        )
    );
}

#[test]
fn a_known_kind_with_the_wrong_length_is_damage() {
    let (mut bytes, bounds) = record(&header(), &inputs()[..2]);
    // Make the tick claim the length of a counters record.
    bytes[bounds[1] + 2] = 48;
    let err = read(&bytes).unwrap().2.unwrap();
    assert!(matches!(
        err.kind,
        RecordErrorKind::BadLength {
            kind: 2,
            len: 48,
            expected: 8
        }
    ));
    assert_eq!(err.offset, bounds[1] as u64);
}

#[test]
fn other_files_are_refused_clearly() {
    let err = read(b"GET / HTTP/1.1\r\nHost: example\r\n\r\n").unwrap_err();
    assert!(matches!(err.kind, RecordErrorKind::BadMagic));
    assert_eq!(
        err.to_string(),
        "not a tcpstate recording (bad magic at byte 0)"
    );
    // Too short to hold the magic, and not its start either.
    assert!(matches!(
        read(b"\x89TSx").unwrap_err().kind,
        RecordErrorKind::BadMagic
    ));

    let err = read(b"").unwrap_err();
    assert!(matches!(
        err.kind,
        RecordErrorKind::TruncatedHeader { have: 0, need: 16 }
    ));
    assert_eq!(
        err.to_string(),
        "truncated recording at byte 0: the file ends 0 bytes into a header of 16"
    );
}

#[test]
fn other_versions_are_refused_clearly() {
    let (bytes, _) = record(&header(), &inputs());
    let mut v4 = bytes.clone();
    v4[8] = 4;
    let err = read(&v4).unwrap_err();
    assert!(matches!(err.kind, RecordErrorKind::UnsupportedVersion(4)));
    assert_eq!(err.offset, 8);
    let msg = err.to_string();
    assert!(
        msg.starts_with("unsupported recording at byte 8: format version 4, tcpstate ")
            && msg.ends_with(" reads versions 1 to 3"),
        "{msg}"
    );
    // A later version may change everything after the version field, even the header's length.
    assert!(matches!(
        read(&v4[..10]).unwrap_err().kind,
        RecordErrorKind::UnsupportedVersion(4)
    ));
    let mut v0 = bytes.clone();
    v0[8] = 0;
    assert!(matches!(
        read(&v0).unwrap_err().kind,
        RecordErrorKind::UnsupportedVersion(0)
    ));

    let mut wider = bytes;
    wider[10] = 128;
    let err = read(&wider).unwrap_err();
    assert!(matches!(err.kind, RecordErrorKind::EventSize(128)));
    assert_eq!(err.offset, 10);
}

#[test]
fn a_huge_header_length_is_refused_before_reading_it() {
    let (mut bytes, _) = record(&header(), &[]);
    bytes[12..16].copy_from_slice(&u32::MAX.to_le_bytes());
    let err = read(&bytes).unwrap_err();
    assert!(matches!(err.kind, RecordErrorKind::HeaderTooLong(u32::MAX)));
    assert_eq!(err.offset, 12);
}

#[test]
fn a_header_with_a_valid_checksum_but_bad_content_is_refused() {
    let h = header();
    let mut bytes = writer::encode_header(&h);
    let clock_at = bytes
        .windows(CLOCK.len())
        .position(|w| w == CLOCK.as_bytes())
        .unwrap();
    bytes[clock_at..clock_at + CLOCK.len()].copy_from_slice(b"CLOCK_BOOTTIME\0");
    let body_end = bytes.len() - 4;
    let crc = crc32fast::hash(&bytes[..body_end]);
    bytes[body_end..].copy_from_slice(&crc.to_le_bytes());
    let err = read(&bytes).unwrap_err();
    assert!(matches!(err.kind, RecordErrorKind::BadHeader(_)));
    assert_eq!(err.offset, clock_at as u64 - 2);
    assert_eq!(
        err.to_string(),
        format!(
            "corrupt recording at byte {}: the clock is not CLOCK_MONOTONIC",
            clock_at - 2
        )
    );
}

/// Accepts `room` bytes, then fails like a full disk; short writes included, as write(2) does.
struct FullDisk {
    data: Vec<u8>,
    room: usize,
}

impl Write for FullDisk {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = buf.len().min(self.room - self.data.len());
        if n == 0 && !buf.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::ENOSPC));
        }
        self.data.extend_from_slice(&buf[..n]);
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_full_disk_is_an_error_and_leaves_a_readable_prefix() {
    let all: Vec<Input> = inputs().into_iter().cycle().take(5_000).collect();
    for room in [0, 10, 100, 300_001, 300_120] {
        let sink = FullDisk {
            data: Vec::new(),
            room,
        };
        let mut w = match RecordWriter::new(sink, &header()) {
            Ok(w) => w,
            Err(e) => {
                assert_eq!(e.raw_os_error(), Some(libc::ENOSPC), "room {room}");
                continue;
            }
        };
        let mut result = Ok(());
        for i in &all {
            result = w.write(i);
            if result.is_err() {
                break;
            }
        }
        let result = result.and_then(|()| w.finish().map(|_| ()));
        let err = result.expect_err("room ran out");
        assert_eq!(err.raw_os_error(), Some(libc::ENOSPC));
    }
    // What reached the "disk" is whole records and at most one partial one at the end.
    let mut sink = FullDisk {
        data: Vec::new(),
        room: 300_001,
    };
    {
        let mut w = RecordWriter::new(&mut sink, &header()).unwrap();
        let mut n = 0;
        while w.write(&all[n % all.len()]).is_ok() {
            n += 1;
        }
    }
    assert_eq!(sink.data.len(), 300_001);
    let (_, got, err) = read(&sink.data).unwrap();
    assert!(got.len() > 1000);
    assert_eq!(got, all[..got.len()]);
    let err = err.unwrap();
    assert!(err.is_truncation(), "{err}");
}

#[test]
fn nothing_follows_an_error() {
    let (mut bytes, bounds) = record(&header(), &inputs());
    bytes[bounds[1] + 5] ^= 1;
    let (mut reader, _) = RecordReader::open(&bytes[..]).unwrap();
    assert!(reader.next().unwrap().is_ok());
    assert!(reader.next().unwrap().is_err());
    assert_eq!(reader.offset(), bounds[1] as u64);
    assert!(reader.next().is_none());
    assert!(reader.next().is_none());
}

#[test]
fn offset_advances_record_by_record() {
    let (bytes, bounds) = record(&header(), &inputs());
    let (mut reader, _) = RecordReader::open(&bytes[..]).unwrap();
    assert_eq!(reader.offset(), bounds[0] as u64);
    for end in &bounds[1..] {
        reader.next().unwrap().unwrap();
        assert_eq!(reader.offset(), *end as u64);
    }
    assert!(reader.next().is_none());
}

/// Removes the last `n` bytes of the header body (fix the CRC afterwards).
fn strip_header_tail(bytes: &mut Vec<u8>, n: usize) {
    let body_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let body_end = 16 + body_len;
    bytes.drain(body_end - n..body_end);
    bytes[12..16].copy_from_slice(&((body_len - n) as u32).to_le_bytes());
}

fn fix_header_crc(bytes: &mut [u8]) {
    let body_end = 16 + u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    let crc = crc32fast::hash(&bytes[..body_end]);
    bytes[body_end..body_end + 4].copy_from_slice(&crc.to_le_bytes());
}

/// A version-2 header without drop reason names (as written before they existed, and now
/// whenever there are none) reads; an explicit empty list is no writer's.
#[test]
fn version_2_without_drop_reasons_reads() {
    let mut h = header();
    h.drop_reasons.clear();
    let (mut bytes, _) = record(&h, &inputs());
    let (h2, got, err) = read(&bytes).unwrap();
    assert_eq!(h2, h);
    assert_eq!(got, inputs());
    assert!(err.is_none());
    // Append a zero count to the header body.
    let body_len = u32::from_le_bytes(bytes[12..16].try_into().unwrap()) as usize;
    bytes.splice(16 + body_len..16 + body_len, [0u8, 0]);
    bytes[12..16].copy_from_slice(&((body_len + 2) as u32).to_le_bytes());
    fix_header_crc(&mut bytes);
    assert!(matches!(
        read(&bytes).map(|_| ()).map_err(|e| e.kind),
        Err(RecordErrorKind::BadHeader(_))
    ));
}

/// A version-1 file (no reason names, no facts kinds) still reads; the new kinds in it are
/// damage, as they were for a version-1 reader.
#[test]
fn version_1_still_reads() {
    let mut h = header();
    h.reset_reasons.clear();
    h.drop_reasons.clear();
    let old: Vec<Input> = inputs()
        .into_iter()
        // Version 1's counters and events are other layouts (`version_1_recordings_are_read`).
        .filter(|i| matches!(i, Input::Tick { .. }))
        .collect();
    let (mut bytes, _) = record(&h, &old);
    // Rewrite the header as version 1: drop the reason count (2 zero bytes at the body's end;
    // no drop reasons, so no second count).
    strip_header_tail(&mut bytes, 2);
    bytes[8] = 1;
    bytes[10] = 112;
    fix_header_crc(&mut bytes);
    let (reader, got_h) = RecordReader::open(&bytes[..]).unwrap();
    assert_eq!(reader.format_version(), 1);
    assert_eq!(got_h, h);
    let got: Vec<Input> = reader.map(|r| r.unwrap()).collect();
    assert_eq!(got, old);

    // A facts record in a version-1 file is an unknown kind.
    let (v2, bounds) = record(&header(), &inputs());
    let facts_at = bounds[4];
    let mut v1 = bytes.clone();
    v1.extend(&v2[facts_at..bounds[5]]);
    let (_, _, err) = read(&v1).unwrap();
    assert!(matches!(
        err.map(|e| e.kind),
        Some(RecordErrorKind::UnknownKind(4))
    ));
}

/// The format's CRC is CRC-32/ISO-HDLC (zlib's, `docs/record-format.md`): pin the crate to it.
#[test]
fn crc_is_zlib_crc32() {
    assert_eq!(crc32fast::hash(b"123456789"), 0xCBF4_3926);
    assert_eq!(crc32fast::hash(b""), 0);
    let mut c = crc32fast::Hasher::new();
    c.update(b"1234");
    c.update(b"56789");
    assert_eq!(c.finalize(), 0xCBF4_3926);
}
