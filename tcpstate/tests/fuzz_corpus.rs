//! Runs the fuzz corpora (`fuzz/corpus/<target>/`) through the fuzz targets' checks on stable
//! Rust, so every `cargo test` exercises them. Seeds named `ok-*` must parse, `bad-*` must be
//! refused; any other file (inputs the fuzzer found) must merely be handled without a panic.
//!
//! The seeds are generated: `cargo test -p tcpstate --test fuzz_corpus -- --ignored
//! write_seeds` rewrites them from the code below (after a format change, for instance).

use std::{
    fs,
    path::{Path, PathBuf},
};

use tcpstate::{
    event::Event,
    input::{Counter, Input, KernelCounters},
    record::{Header, RecordWriter},
};

#[path = "../../fuzz/src/checks.rs"]
mod checks;

fn corpus_dir(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../fuzz/corpus")
        .join(target)
}

/// Every file of a corpus, by name.
fn corpus(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = corpus_dir(target);
    let mut files: Vec<_> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap())
        .filter(|entry| entry.file_type().unwrap().is_file())
        .map(|entry| entry.file_name().to_string_lossy().into_owned())
        // cargo-fuzz's temporary files.
        .filter(|name| !name.starts_with('.'))
        .map(|name| {
            let data = fs::read(dir.join(&name)).unwrap();
            (name, data)
        })
        .collect();
    files.sort();
    files
}

/// Runs `check` on every file; returns how many `ok-` and `bad-` seeds there were.
fn run(target: &str, check: impl Fn(&[u8]) -> bool) -> (usize, usize) {
    let (mut ok, mut bad) = (0, 0);
    for (name, data) in corpus(target) {
        // Names the file should the check panic.
        eprintln!("{target}/{name}");
        let parsed = check(&data);
        if name.starts_with("ok-") {
            assert!(parsed, "{target}/{name} was refused");
            ok += 1;
        } else if name.starts_with("bad-") {
            assert!(!parsed, "{target}/{name} was accepted");
            bad += 1;
        }
    }
    (ok, bad)
}

#[test]
fn tpformat_corpus() {
    let (ok, bad) = run("tpformat", checks::tpformat);
    assert!(ok >= 2 && bad >= 2, "{ok} ok and {bad} bad seeds");
}

#[test]
fn record_corpus() {
    let (ok, bad) = run("record", |data| match checks::record(data) {
        Ok(_) => true,
        Err(e) => {
            // Every refusal is one line naming the offset.
            let msg = e.to_string();
            assert!(
                msg.contains(&format!("at byte {}", e.offset)) && !msg.contains('\n'),
                "{msg}"
            );
            false
        }
    });
    assert!(ok >= 5 && bad >= 7, "{ok} ok and {bad} bad seeds");
}

// ---- seed generation ----

fn event(ts_ns: u64, skaddr: u64, old: u8, new: u8, sport: u16, dport: u16, pid: u32) -> Input {
    let mut e = Event::zeroed();
    e.ts_ns = ts_ns;
    e.skaddr = skaddr;
    e.oldstate = old;
    e.newstate = new;
    e.family = 2;
    e.sport = sport;
    e.dport = dport;
    e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
    e.ctx_pid = pid;
    e.ctx_tid = pid;
    e.ctx_comm[..4].copy_from_slice(b"curl");
    e.owner_pid = pid;
    e.owner_tid = pid;
    e.owner_comm[..4].copy_from_slice(b"curl");
    e.owner_source = 1;
    Input::Event(e)
}

/// One loopback connection as Linux 6.18 reports it: the client, the accepted child, the listener.
fn loopback_connection() -> Vec<Input> {
    let (client, child, listener) = (
        0xffff_8880_0a00_0000,
        0xffff_8880_0b00_0000,
        0xffff_8880_0c00_0000,
    );
    let ms = 1_000_000;
    let base = 5_000 * ms;
    vec![
        event(base, listener, 7, 10, 8080, 0, 200),
        Input::Tick {
            now_ns: base + 100 * ms,
        },
        event(base + 200 * ms, client, 7, 2, 0, 8080, 100),
        event(base + 200 * ms + 40_000, client, 2, 1, 40_000, 8080, 100),
        event(base + 200 * ms + 45_000, child, 10, 3, 8080, 40_000, 0),
        event(base + 200 * ms + 46_000, child, 3, 1, 8080, 40_000, 0),
        event(base + 210 * ms, client, 1, 4, 40_000, 8080, 100),
        event(base + 210 * ms + 20_000, child, 1, 8, 8080, 40_000, 0),
        event(base + 210 * ms + 30_000, client, 4, 5, 40_000, 8080, 100),
        event(base + 211 * ms, child, 8, 9, 8080, 40_000, 200),
        event(base + 211 * ms + 30_000, child, 9, 7, 8080, 40_000, 0),
        event(base + 211 * ms + 31_000, client, 5, 7, 40_000, 8080, 0),
        Input::Counters(
            KernelCounters::zero()
                .with(Counter::Seen, 11)
                .with(Counter::Filtered, 0)
                .with(Counter::Submitted, 11)
                .with(Counter::RingbufFull, 0)
                .with(Counter::Deferred, 1)
                .with(Counter::RecursionMisses, 0),
        ),
        event(base + 300 * ms, listener, 10, 7, 8080, 0, 200),
        Input::Tick {
            now_ns: base + 1_000 * ms,
        },
    ]
}

fn recording(inputs: &[Input]) -> Vec<u8> {
    let header = Header {
        tool_version: "0.1.0".into(),
        kernel_release: "6.18.0-fuzz-seed".into(),
        start_mono_ns: 5_000_000_000,
        realtime_minus_mono_ns: 1_763_700_000_000_000_000,
        command: "tcpstate trace --record seed.tsr".into(),
        reset_reasons: vec![String::new(), "no_socket".into()],
    };
    let mut w = RecordWriter::new(Vec::new(), &header).unwrap();
    for i in inputs {
        w.write(i).unwrap();
    }
    w.finish().unwrap()
}

/// Records of the kinds added in format version 2, shaped like Linux 6.18's.
fn why_records() -> Vec<Input> {
    let facts = tcpstate::facts::Facts {
        ts_ns: 5_211_030_000,
        skaddr: 0xffff_8880_0b00_0000,
        oldstate: 9,
        newstate: 7,
        sk_err: Some(0),
        sk_err_soft: Some(0),
        srtt_us: Some(40_168),
        min_rtt_us: Some(40_001),
        total_retrans: Some(1),
        retransmits: Some(0),
        probes_out: Some(0),
        packets_out: Some(0),
        wmem_queued: None,
        bytes_acked: Some(34),
        bytes_received: Some(16),
        bytes_retrans: Some(0),
        segs_in: Some(6),
        segs_out: Some(5),
    };
    let retransmit = tcpstate::facts::RetransmitRecord {
        ts_ns: 5_210_000_000,
        skaddr: 0xffff_8880_0a00_0000,
        kind: 1,
        state: 4,
        tcp_flags: 0x11,
        known: 7,
        segs: 1,
        family: 2,
        sport: 40_000,
        dport: 8080,
        err: 0,
        saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    let reset = tcpstate::facts::ResetRecord {
        ts_ns: 5_212_000_000,
        skaddr: 0,
        direction: 1,
        state: 0,
        seg_flags: 0x02,
        seg_flags_known: 1,
        reason: 1,
        family: 2,
        sport: 9,
        dport: 40_001,
        _pad: 0,
        ctx_pid: 0,
        _pad2: 0,
        saddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
        daddr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
    };
    vec![
        Input::Retransmit(retransmit),
        Input::Facts(facts),
        Input::Reset(reset),
    ]
}

fn record_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let full = recording(&loopback_connection());
    let empty = recording(&[]);
    let one = recording(&loopback_connection()[..1]);
    // Damage inside the fourth record; the header is `empty.len()` bytes, event records 128.
    let fourth = empty.len() + 128 + 16 + 128 + 10;
    let mut flipped = full.clone();
    flipped[fourth] ^= 0x10;
    let mut version = one.clone();
    version[8] = 99;
    let mut zeroed_tail = one.clone();
    zeroed_tail.extend([0u8; 64]);
    let why = recording(&why_records());
    // The facts record (after the 72-byte retransmit record): a value marked absent (wmem_queued,
    // bit 8) that is not zero, with a valid checksum.
    let mut absent_but_set = why.clone();
    let facts_at = empty.len() + 72;
    absent_but_set[facts_at + 4 + 48] = 1;
    let end = facts_at + 4 + 84;
    let crc = crc32fast::hash(&absent_but_set[facts_at..end]);
    absent_but_set[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    // A cgroup record (kind 7: id, path length, path, zero padding to 1034 bytes), then the
    // same with a nonzero padding byte and a valid checksum.
    let cgroup = recording(&[Input::Cgroup {
        id: 4242,
        path: "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod0b6c3a4e_6f8d_4c1a_9e2b_7d5f1a2b3c4d.slice/crio-4f2d7a9c1b3e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8.scope".into(),
    }]);
    let mut cgroup_bad_padding = cgroup.clone();
    let at = empty.len();
    cgroup_bad_padding[at + 4 + 1000] = 1;
    let end = at + 4 + 1034;
    let crc = crc32fast::hash(&cgroup_bad_padding[at..end]);
    cgroup_bad_padding[end..end + 4].copy_from_slice(&crc.to_le_bytes());
    vec![
        ("ok-header-only.tsr", empty.clone()),
        ("ok-one-event.tsr", one.clone()),
        ("ok-loopback-connection.tsr", full.clone()),
        ("bad-cut-inside-a-record.tsr", full[..fourth].to_vec()),
        (
            "bad-cut-inside-the-header.tsr",
            empty[..empty.len() - 3].to_vec(),
        ),
        ("bad-flipped-bit.tsr", flipped),
        ("bad-future-version.tsr", version),
        ("bad-zeroed-tail.tsr", zeroed_tail),
        ("bad-not-a-recording.tsr", b"tcpstate\n".to_vec()),
        ("ok-why-records.tsr", why),
        ("bad-facts-absent-value-set.tsr", absent_but_set),
        ("ok-cgroup-record.tsr", cgroup.clone()),
        ("bad-cgroup-padding-set.tsr", cgroup_bad_padding),
    ]
}

fn tpformat_seeds() -> Vec<(&'static str, Vec<u8>)> {
    let modern = include_str!("../testdata/format-6.18.txt");
    let old = include_str!("../testdata/format-5.4.txt");
    vec![
        ("ok-format-6.18.txt", modern.into()),
        ("ok-format-5.4.txt", old.into()),
        ("ok-crlf.txt", modern.replace('\n', "\r\n").into()),
        (
            "ok-fields-only.txt",
            modern
                .lines()
                .filter(|l| l.contains("field:"))
                .collect::<Vec<_>>()
                .join("\n")
                .into(),
        ),
        (
            "bad-missing-field.txt",
            modern.replace("daddr_v6[16]", "other[16]").into(),
        ),
        (
            "bad-wrong-size.txt",
            modern
                .replace("offset:24;\tsize:2;", "offset:24;\tsize:4;")
                .into(),
        ),
        (
            "bad-beyond-copied-bytes.txt",
            modern.replace("offset:56;", "offset:120;").into(),
        ),
        (
            "bad-malformed-line.txt",
            modern.replace("offset:26;", "offset:2x;").into(),
        ),
        ("bad-empty.txt", Vec::new()),
    ]
}

#[test]
#[ignore = "rewrites fuzz/corpus seeds; run by hand"]
fn write_seeds() {
    for (target, seeds) in [("record", record_seeds()), ("tpformat", tpformat_seeds())] {
        let dir = corpus_dir(target);
        fs::create_dir_all(&dir).unwrap();
        for (name, data) in seeds {
            fs::write(dir.join(name), data).unwrap();
        }
    }
}
