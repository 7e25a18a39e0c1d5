//! Stuck sockets through the whole pipeline, on synthetic events and ticks: when a line is
//! written, how often, for which sockets, and that a recording replays it byte for byte.

use serde_json::Value;
use tcpstate_common::state::*;

use crate::event::tests::{ev, CHILD, CLIENT, MS, SEC};
use crate::input::Input;
use crate::pipeline::{ClockBase, Format, Mode, OutputConfig, Pipeline};
use crate::record::{Header, RecordReader, RecordWriter};
use crate::timeline::stuck::{parse_spec, Thresholds};

const T: u64 = 50 * SEC;
const TICK: u64 = 20 * MS;

fn thresholds(specs: &[&str]) -> Thresholds {
    let specs: Vec<_> = specs.iter().map(|s| parse_spec(s).unwrap()).collect();
    Thresholds::from_specs(&specs)
}

fn cfg(stuck: Thresholds, format: Format) -> OutputConfig {
    OutputConfig {
        format,
        clock: ClockBase {
            start_mono_ns: T,
            realtime_minus_mono_ns: 1_700_000_000 * SEC as i64,
        },
        summary_at_end: false,
        stuck,
        ..OutputConfig::default()
    }
}

/// Feeds `events` and then ticks every 20 ms up to `until`, as a live trace does while events
/// arrive; returns the output after each input, so a test can tell when a line was written.
fn run(cfg: OutputConfig, inputs: &[Input], until: u64) -> Vec<(u64, String)> {
    let mut p = Pipeline::new(cfg);
    let mut all = Vec::new();
    let mut out = Vec::new();
    let mut feed = |p: &mut Pipeline, i: &Input, now: u64, all: &mut Vec<(u64, String)>| {
        out.clear();
        p.push(i, &mut out).unwrap();
        for l in String::from_utf8_lossy(&out).lines() {
            all.push((now, l.to_string()));
        }
    };
    let mut now = T;
    let mut rest = inputs.iter().peekable();
    while now <= until {
        while let Some(i) = rest.next_if(|i| ts(i) <= now) {
            feed(&mut p, i, now, &mut all);
        }
        feed(&mut p, &Input::Tick { now_ns: now }, now, &mut all);
        now += TICK;
    }
    for i in rest {
        feed(&mut p, i, until, &mut all);
    }
    out.clear();
    p.finish(&mut out).unwrap();
    for l in String::from_utf8_lossy(&out).lines() {
        all.push((u64::MAX, l.to_string()));
    }
    all
}

fn ts(i: &Input) -> u64 {
    match i {
        Input::Event(e) => e.ts_ns,
        Input::Tick { now_ns } => *now_ns,
        _ => 0,
    }
}

fn stuck_objects(lines: &[(u64, String)]) -> Vec<(u64, Value)> {
    lines
        .iter()
        .filter_map(|(at, l)| {
            let v: Value = serde_json::from_str(l).ok()?;
            (v["schema"] == "tcpstate.stuck.v1").then_some((*at, v))
        })
        .collect()
}

/// A server's accepted socket gets the client's FIN at T + 1 s and never closes.
fn leak() -> Vec<Input> {
    [
        ev(T + 10 * MS, CHILD, LISTEN, SYN_RECV, 8080, 41000),
        ev(T + 11 * MS, CHILD, SYN_RECV, ESTABLISHED, 8080, 41000),
        ev(T + SEC, CHILD, ESTABLISHED, CLOSE_WAIT, 8080, 41000),
    ]
    .iter()
    .map(|&e| Input::Event(e))
    .collect()
}

#[test]
fn reported_once_at_the_crossing() {
    let lines = run(
        cfg(thresholds(&["CLOSE_WAIT=2000"]), Format::Json),
        &leak(),
        T + 10 * SEC,
    );
    let stuck = stuck_objects(&lines);
    assert_eq!(stuck.len(), 1, "{lines:#?}");
    let (written, v) = &stuck[0];
    let crossing = T + 3 * SEC;
    assert_eq!(v["ts_ns"], crossing);
    assert_eq!(v["since_ns"], T + SEC);
    assert_eq!(v["age_ns"], 2 * SEC);
    assert_eq!(v["state"], "CLOSE_WAIT");
    assert_eq!(v["pid"], 42);
    assert_eq!(v["comm"], "curl");
    assert_eq!(v["lport"], 8080);
    assert_eq!(v["rport"], 41000);
    assert_eq!(v["partial"], false);
    assert_eq!(v["role"], "server");
    // Written by the first tick past the crossing plus the reorder window.
    assert!(
        *written > crossing && *written <= crossing + TICK + 10 * MS,
        "written at {written}"
    );
}

#[test]
fn not_for_sockets_that_leave_in_time_or_close() {
    let mut inputs = leak();
    // CLOSE_WAIT for 1.9 s, then LAST_ACK for 100 ms, then closed.
    inputs.push(Input::Event(ev(
        T + 2900 * MS,
        CHILD,
        CLOSE_WAIT,
        LAST_ACK,
        8080,
        41000,
    )));
    inputs.push(Input::Event(ev(
        T + 3 * SEC,
        CHILD,
        LAST_ACK,
        CLOSE,
        8080,
        41000,
    )));
    let lines = run(
        cfg(thresholds(&["2000"]), Format::Json),
        &inputs,
        T + 20 * SEC,
    );
    assert!(stuck_objects(&lines).is_empty(), "{lines:#?}");
}

#[test]
fn per_state_thresholds_and_off() {
    // A client stuck in SYN_SENT from T + 10 ms, and the leaking server socket.
    let mut inputs = vec![Input::Event(ev(T + 10 * MS, CLIENT, CLOSE, SYN_SENT, 0, 9))];
    inputs.extend(leak());
    let at = |specs: &[&str]| -> Vec<(String, u64)> {
        stuck_objects(&run(
            cfg(thresholds(specs), Format::Json),
            &inputs,
            T + 40 * SEC,
        ))
        .into_iter()
        .map(|(_, v)| {
            (
                v["state"].as_str().unwrap_or("").to_string(),
                v["ts_ns"].as_u64().unwrap_or(0) - T,
            )
        })
        .collect()
    };
    // Defaults: SYN_SENT after 5 s, CLOSE_WAIT after 30 s; in the order they crossed.
    assert_eq!(
        at(&[]),
        [
            ("SYN_SENT".to_string(), 5010 * MS),
            ("CLOSE_WAIT".to_string(), 31 * SEC)
        ]
    );
    assert_eq!(
        at(&["1000", "SYN_SENT=3000"]),
        [
            ("CLOSE_WAIT".to_string(), 2 * SEC),
            ("SYN_SENT".to_string(), 3010 * MS)
        ]
    );
    assert_eq!(
        at(&["SYN_SENT=off"]),
        [("CLOSE_WAIT".to_string(), 31 * SEC)]
    );
    assert!(at(&["off"]).is_empty());
}

#[test]
fn a_partial_socket_counts_from_when_it_was_first_seen() {
    // First seen in CLOSE_WAIT (the ESTABLISHED -> CLOSE_WAIT of a socket from before tracing),
    // then a later CLOSE_WAIT -> CLOSE_WAIT would not restart it: it stays reported once.
    let inputs = [
        Input::Event(ev(T + SEC, CHILD, ESTABLISHED, CLOSE_WAIT, 8080, 41000)),
        Input::Event(ev(T + 4 * SEC, CHILD, CLOSE_WAIT, CLOSE_WAIT, 8080, 41000)),
    ];
    let lines = run(
        cfg(thresholds(&["CLOSE_WAIT=1500"]), Format::Json),
        &inputs,
        T + 5 * SEC,
    );
    let stuck = stuck_objects(&lines);
    assert_eq!(stuck.len(), 1, "{lines:#?}");
    assert_eq!(stuck[0].1["partial"], true);
    assert_eq!(stuck[0].1["age_ns"], 1500 * MS);
    assert_eq!(stuck[0].1["role"], "unknown");
}

#[test]
fn a_later_watched_state_is_reported_again_once() {
    let mut inputs = leak();
    inputs.push(Input::Event(ev(
        T + 5 * SEC,
        CHILD,
        CLOSE_WAIT,
        LAST_ACK,
        8080,
        41000,
    )));
    let lines = run(
        cfg(thresholds(&["1000"]), Format::Json),
        &inputs,
        T + 20 * SEC,
    );
    let states: Vec<_> = stuck_objects(&lines)
        .into_iter()
        .map(|(_, v)| (v["state"].clone(), v["ts_ns"].clone()))
        .collect();
    assert_eq!(
        states,
        [
            (Value::from("CLOSE_WAIT"), Value::from(T + 2 * SEC)),
            (Value::from("LAST_ACK"), Value::from(T + 6 * SEC))
        ]
    );
}

#[test]
fn table_line_and_interval_summary() {
    let mut c = cfg(thresholds(&["CLOSE_WAIT=2000"]), Format::Table);
    c.interval_ns = Some(5 * SEC);
    c.mode = Mode::Connections;
    let lines = run(c, &leak(), T + 11 * SEC);
    let text: Vec<&str> = lines.iter().map(|(_, l)| l.as_str()).collect();
    let stuck: Vec<&&str> = text
        .iter()
        .filter(|l| l.contains("stuck in CLOSE_WAIT"))
        .collect();
    assert_eq!(stuck.len(), 1, "{text:#?}");
    assert!(stuck[0].contains(" stuck "), "{}", stuck[0]);
    assert!(
        stuck[0].ends_with("stuck in CLOSE_WAIT 2.0 s"),
        "{}",
        stuck[0]
    );
    assert!(stuck[0].starts_with("42 "), "{}", stuck[0]);
    // The interval ending at T + 5 s lists it (stuck for 4 s then), the one at T + 10 s too.
    let now: Vec<&&str> = text
        .iter()
        .filter(|l| l.starts_with("stuck now:"))
        .collect();
    assert_eq!(
        now,
        [
            &"stuck now: 1 (CLOSE_WAIT 1 pid 42 curl oldest 4.0 s)",
            &"stuck now: 1 (CLOSE_WAIT 1 pid 42 curl oldest 9.0 s)"
        ]
    );
}

#[test]
fn the_json_summary_lists_the_top_groups() {
    // 12 owners with one stuck socket each and one owner with three: 10 groups listed.
    let mut inputs = Vec::new();
    for i in 0..15u64 {
        let mut e = ev(
            T + SEC + i * MS,
            CHILD + i * 4096,
            ESTABLISHED,
            CLOSE_WAIT,
            8080,
            40000 + i as u16,
        );
        e.owner_pid = if i < 3 { 7 } else { 100 + i as u32 };
        inputs.push(Input::Event(e));
    }
    let mut c = cfg(thresholds(&["CLOSE_WAIT=1000"]), Format::Json);
    c.interval_ns = Some(5 * SEC);
    let lines = run(c, &inputs, T + 6 * SEC);
    let summary: Value = lines
        .iter()
        .filter_map(|(_, l)| serde_json::from_str::<Value>(l).ok())
        .find(|v| v["schema"] == "tcpstate.summary.v2")
        .expect("an interval summary");
    let s = &summary["stuck"];
    assert_eq!(s["total"], 15, "{summary}");
    let groups = s["groups"].as_array().expect("groups");
    assert_eq!(groups.len(), 10);
    assert_eq!(groups[0]["pid"], 7);
    assert_eq!(groups[0]["count"], 3);
    assert_eq!(groups[0]["oldest_age_ns"], 4 * SEC);
    assert_eq!(groups[1]["pid"], 103);
}

/// What a live trace prints for its inputs, a replay of its recording prints byte for byte.
#[test]
fn a_recording_replays_the_same_stuck_lines() {
    let mut inputs = Vec::new();
    let mut t = T;
    let mut leaking = leak().into_iter().peekable();
    while t <= T + 5 * SEC {
        while let Some(i) = leaking.next_if(|i| ts(i) <= t) {
            inputs.push(i);
        }
        inputs.push(Input::Tick { now_ns: t });
        t += TICK;
    }
    let header = Header::new("test".into(), T, 1_700_000_000 * SEC as i64, "t".into());
    let mut w = RecordWriter::new(Vec::new(), &header).unwrap();
    for i in &inputs {
        w.write(i).unwrap();
    }
    let bytes = w.finish().unwrap();
    let (reader, _) = RecordReader::open(&bytes[..]).unwrap();
    let replayed: Vec<Input> = reader.map(|r| r.unwrap()).collect();
    for format in [Format::Table, Format::Json] {
        let c = cfg(thresholds(&["CLOSE_WAIT=1000"]), format);
        let print = |ins: &[Input]| {
            let mut p = Pipeline::new(c);
            let mut out = Vec::new();
            for i in ins {
                p.push(i, &mut out).unwrap();
            }
            p.finish(&mut out).unwrap();
            out
        };
        let live = print(&inputs);
        assert!(String::from_utf8_lossy(&live).contains("CLOSE_WAIT"));
        assert_eq!(live, print(&replayed));
    }
}
