//! `tcpstate replay` of a committed recording (tcpstate/testdata/scenarios.tsr: a real loopback
//! session with a client-first close, a server-first close, a reset, a refused connect, a
//! 150 ms CLOSE_WAIT and an IPv6 connection) against committed expected output. No root needed.
//!
//! After an intended change of the output, regenerate the expected files with
//! `TCPSTATE_BLESS=1 cargo test -p tcpstate --test replay_golden` and review the diff.

use std::{fs, path::PathBuf, process::Command};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");

fn testdata(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn replay(file: &PathBuf, flags: &[&str]) -> (i32, String, String) {
    let out = Command::new(BIN)
        .arg("replay")
        .arg(file)
        .args(flags)
        .output()
        .expect("run tcpstate replay");
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn golden(expected: &str, flags: &[&str]) {
    let (code, stdout, stderr) = replay(&testdata("scenarios.tsr"), flags);
    assert_eq!(code, 0, "{stderr}");
    let path = testdata(expected);
    if std::env::var_os("TCPSTATE_BLESS").is_some() {
        fs::write(&path, &stdout).expect("write expected output");
    }
    let want = fs::read_to_string(&path).expect("expected output");
    assert_eq!(
        stdout,
        want,
        "replay {flags:?} differs from {}",
        path.display()
    );
}

#[test]
fn table() {
    golden("scenarios.table.txt", &[]);
}

#[test]
fn json() {
    golden("scenarios.json", &["-o", "json"]);
}

#[test]
fn timeline() {
    golden(
        "scenarios.timeline.txt",
        &["--timeline", "-t", "--no-summary"],
    );
}

#[test]
fn transitions() {
    golden(
        "scenarios.transitions.txt",
        &["--transitions", "-w", "--no-summary"],
    );
}

#[test]
fn json_objects_have_the_documented_schema_names() {
    let (_, stdout, _) = replay(&testdata("scenarios.tsr"), &["-o", "json"]);
    let mut kinds = std::collections::BTreeMap::new();
    for line in stdout.lines() {
        let v: serde_json::Value = serde_json::from_str(line).expect("a JSON object per line");
        *kinds
            .entry(v["schema"].as_str().expect("schema").to_string())
            .or_insert(0) += 1;
    }
    assert_eq!(kinds.get("tcpstate.connection.v2"), Some(&16), "{kinds:?}");
    assert_eq!(kinds.get("tcpstate.summary.v2"), Some(&1));
}

fn damaged(bytes: &[u8], name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("tcpstate-golden-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let p = dir.join(name);
    fs::write(&p, bytes).expect("write damaged copy");
    p
}

#[test]
fn a_truncated_recording_prints_what_is_valid_then_names_the_offset() {
    let full = fs::read(testdata("scenarios.tsr")).expect("fixture");
    let cut = damaged(&full[..full.len() * 2 / 3 + 5], "cut.tsr");
    let (code, stdout, stderr) = replay(&cut, &["--transitions", "--no-summary"]);
    assert_eq!(code, 1);
    assert!(
        stdout.lines().count() > 20,
        "the valid prefix is printed:\n{stdout}"
    );
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("truncated recording at byte"), "{stderr}");
    let _ = fs::remove_file(cut);
}

#[test]
fn a_corrupt_byte_is_detected_and_named() {
    let mut bytes = fs::read(testdata("scenarios.tsr")).expect("fixture");
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    let bad = damaged(&bytes, "flipped.tsr");
    let (code, stdout, stderr) = replay(&bad, &["--transitions", "--no-summary"]);
    assert_eq!(code, 1);
    assert!(!stdout.is_empty());
    assert!(stderr.contains("corrupt recording at byte"), "{stderr}");
    let _ = fs::remove_file(bad);
}

#[test]
fn not_a_recording_is_one_clear_line() {
    let (code, _, stderr) = replay(&testdata("format-6.18.txt"), &[]);
    assert_eq!(code, 1);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("not a tcpstate recording"), "{stderr}");
}

/// The binary of the core build (`--no-default-features`) replays (the tests above) and says
/// plainly that tracing needs the default build.
#[cfg(not(feature = "kernel"))]
#[test]
fn core_build_explains_that_trace_needs_the_default_build() {
    let out = Command::new(BIN)
        .args(["trace", "--duration", "1"])
        .output()
        .expect("run tcpstate trace");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert_eq!(stderr.lines().count(), 1, "one line: {stderr}");
    assert!(
        stderr.contains("built without the eBPF program") && stderr.contains("default build"),
        "{stderr}"
    );
}

/// The committed recording is format version 1. The same inputs written as the current version,
/// with every counter known, replay to the same connections, and the summary then names every
/// counter with its value.
#[test]
fn the_same_inputs_as_the_current_version_replay_the_same() {
    use tcpstate::{
        input::{Counter, Input},
        record::{RecordReader, RecordWriter, FORMAT_VERSION},
    };
    let v1 = fs::read(testdata("scenarios.tsr")).expect("read the recording");
    let (reader, header) = RecordReader::open(&v1[..]).expect("open");
    assert_eq!(reader.format_version(), 1);
    let path = damaged(&[], "scenarios.current.tsr");
    let file = fs::File::create(&path).expect("create");
    let mut w = RecordWriter::new(file, &header).expect("header");
    for input in reader {
        let input = match input.expect("a valid record") {
            Input::Counters(mut c) => {
                for missing in c.unknown_counters().collect::<Vec<_>>() {
                    c.set(missing, Some(0));
                }
                // This trace's port filter matched every connect at once (by its remote
                // port), so each held connect was another port's, dropped: version 1 counted
                // those in `filtered` only.
                c.set(Counter::HeldDropped, c.get(Counter::Deferred));
                Input::Counters(c)
            }
            other => other,
        };
        w.write(&input).expect("write");
    }
    w.finish().expect("flush");
    let current = fs::read(&path).expect("read back");
    assert_eq!(u16::from_le_bytes([current[8], current[9]]), FORMAT_VERSION);

    let (code, table, stderr) = replay(&path, &[]);
    assert_eq!(code, 0, "{stderr}");
    let want = fs::read_to_string(testdata("scenarios.table.txt")).expect("expected output");
    let connections = |text: &str| text.split("\n\n").next().unwrap_or("").to_string();
    assert_eq!(connections(&table), connections(&want));
    assert!(table.contains(
        "kernel: 797662 seen, 797604 filtered, 58 submitted, 0 lost (ringbuf_full 0, hold_failed 0, recursion_misses 0, facts_ringbuf_full 0, joined_ringbuf_full 0)"
    ), "{table}");
    assert!(table.contains(
        "kernel tables: deferred 79761, released 0, held_dropped 79761, held 0, owner_update_failed 0, facts_submitted 0, joined_seen 0, joined_filtered 0, joined_submitted 0"
    ), "{table}");
    assert!(!table.contains("unknown"), "{table}");
    for c in Counter::ALL {
        assert!(table.contains(c.name()), "{}: {table}", c.name());
    }
    let _ = fs::remove_file(&path);
}

/// The recording's 150 ms CLOSE_WAIT, watched at 100 ms: the only change to the golden outputs
/// is the one stuck line or object, at the crossing; with `--stuck off` nothing changes.
#[test]
fn a_stuck_threshold_adds_only_the_stuck_lines() {
    let golden = |name: &str| fs::read_to_string(testdata(name)).expect("expected output");
    let (code, stdout, stderr) = replay(
        &testdata("scenarios.tsr"),
        &["-o", "json", "--stuck", "CLOSE_WAIT=100"],
    );
    assert_eq!(code, 0, "{stderr}");
    let (stuck, rest): (Vec<&str>, Vec<&str>) = stdout
        .lines()
        .partition(|l| l.contains("\"tcpstate.stuck.v1\""));
    let want = golden("scenarios.json");
    assert_eq!(rest, want.lines().collect::<Vec<_>>());
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    let v: serde_json::Value = serde_json::from_str(stuck[0]).expect("a JSON object");
    assert_eq!(v["state"], "CLOSE_WAIT");
    assert_eq!(v["age_ns"], 100_000_000);
    assert_eq!(v["partial"], false);
    assert!(v["pid"].as_u64().is_some_and(|p| p > 0), "{v}");
    // The connection object of the same lifetime says it stayed in CLOSE_WAIT longer.
    let conn = rest
        .iter()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|c| c["schema"] == "tcpstate.connection.v2" && c["id"] == v["id"])
        .expect("the stuck socket's connection object");
    assert!(
        conn["close_wait_ns"]
            .as_u64()
            .is_some_and(|n| n > 100_000_000),
        "{conn}"
    );

    let (_, table, _) = replay(&testdata("scenarios.tsr"), &["--stuck", "CLOSE_WAIT=100"]);
    let (stuck, rest): (Vec<&str>, Vec<&str>) = table
        .lines()
        .partition(|l| l.contains(" stuck in CLOSE_WAIT 0.1 s"));
    assert_eq!(stuck.len(), 1, "{table}");
    assert!(stuck[0].contains(" stuck "), "{}", stuck[0]);
    assert_eq!(
        rest,
        golden("scenarios.table.txt").lines().collect::<Vec<_>>()
    );

    let (_, off, _) = replay(&testdata("scenarios.tsr"), &["--stuck", "off"]);
    assert_eq!(off, golden("scenarios.table.txt"));
}
