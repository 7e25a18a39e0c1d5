//! Checks emitted JSON against the published schemas (`docs/schema/*.json`) with a small
//! hand-written validator: every required field present with its documented type, no
//! undocumented field, enums and constants respected. It fails on any schema keyword it does not
//! implement, so the schemas cannot grow constraints this test silently skips.

use serde_json::Value;

use super::rendering_tests::{conversation, odd_ones, render, why_inputs};
use crate::event::tests::ev;
use crate::input::{Counter, Input, KernelCounters};
use crate::pipeline::{Format, Mode, OutputConfig};
use tcpstate_common::state::*;

const CONNECTION: &str = include_str!("../../../docs/schema/connection.v2.json");
const REFUSED: &str = include_str!("../../../docs/schema/refused.v1.json");
const TRANSITION: &str = include_str!("../../../docs/schema/transition.v2.json");
const SUMMARY: &str = include_str!("../../../docs/schema/summary.v2.json");
const STUCK: &str = include_str!("../../../docs/schema/stuck.v1.json");

/// The one documented field an object may lack: the summary's `stuck`, present only when a
/// socket is stuck (so that summaries without any stay as they were).
const OPTIONAL: [&str; 1] = ["stuck"];

const KNOWN: [&str; 15] = [
    "$schema",
    "title",
    "description",
    "type",
    "const",
    "enum",
    "minimum",
    "maximum",
    "pattern",
    "required",
    "properties",
    "additionalProperties",
    "items",
    "maxItems",
    "$id",
];

fn type_matches(t: &str, v: &Value) -> bool {
    match t {
        "null" => v.is_null(),
        "boolean" => v.is_boolean(),
        "integer" => v.is_i64() || v.is_u64(),
        "number" => v.is_number(),
        "string" => v.is_string(),
        "array" => v.is_array(),
        "object" => v.is_object(),
        _ => false,
    }
}

/// The patterns the schemas use: a lowercase hex number with `0x`, a pod UID, a container id.
fn pattern_matches(pattern: &str, s: &str) -> Result<bool, String> {
    let hex = |t: &str| {
        t.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    match pattern {
        "^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$" => {
            let groups: Vec<&str> = s.split('-').collect();
            Ok(groups.len() == 5
                && groups
                    .iter()
                    .zip([8, 4, 4, 4, 12])
                    .all(|(g, n)| g.len() == n && hex(g)))
        }
        "^[0-9a-f]{12,}$" => Ok(s.len() >= 12 && hex(s)),
        "^0x[0-9a-f]+$" => Ok(s.len() > 2
            && s.starts_with("0x")
            && s[2..]
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))),
        p => Err(format!("pattern {p:?} not implemented by the checker")),
    }
}

fn check(schema: &Value, v: &Value, at: &str) -> Result<(), String> {
    let Some(s) = schema.as_object() else {
        return Err(format!("{at}: schema is not an object"));
    };
    if let Some(k) = s.keys().find(|k| !KNOWN.contains(&k.as_str())) {
        return Err(format!(
            "{at}: schema keyword {k:?} not implemented by the checker"
        ));
    }
    if let Some(c) = s.get("const") {
        if v != c {
            return Err(format!("{at}: {v} is not {c}"));
        }
    }
    if let Some(t) = s.get("type") {
        let types: Vec<&str> = match t {
            Value::String(one) => vec![one.as_str()],
            Value::Array(many) => many.iter().filter_map(Value::as_str).collect(),
            _ => return Err(format!("{at}: bad type {t}")),
        };
        if !types.iter().any(|t| type_matches(t, v)) {
            return Err(format!("{at}: {v} is not of type {t}"));
        }
    }
    if let Some(Value::Array(allowed)) = s.get("enum") {
        if !allowed.contains(v) {
            return Err(format!("{at}: {v} is not one of {allowed:?}"));
        }
    }
    if let (Some(min), Some(x)) = (s.get("minimum").and_then(Value::as_f64), v.as_f64()) {
        if x < min {
            return Err(format!("{at}: {x} < minimum {min}"));
        }
    }
    if let (Some(max), Some(x)) = (s.get("maximum").and_then(Value::as_f64), v.as_f64()) {
        if x > max {
            return Err(format!("{at}: {x} > maximum {max}"));
        }
    }
    if let (Some(p), Some(text)) = (s.get("pattern").and_then(Value::as_str), v.as_str()) {
        if !pattern_matches(p, text)? {
            return Err(format!("{at}: {text:?} does not match {p}"));
        }
    }
    if let Some(obj) = v.as_object() {
        let props = s.get("properties").and_then(Value::as_object);
        if let Some(Value::Array(required)) = s.get("required") {
            for r in required.iter().filter_map(Value::as_str) {
                if !obj.contains_key(r) {
                    return Err(format!("{at}: missing required field {r:?}"));
                }
            }
        }
        for (k, field) in obj {
            match props.and_then(|p| p.get(k)) {
                Some(sub) => check(sub, field, &format!("{at}.{k}"))?,
                None if s.get("additionalProperties") == Some(&Value::Bool(false)) => {
                    return Err(format!("{at}: undocumented field {k:?}"));
                }
                None => {}
            }
        }
    }
    if let Some(items) = v.as_array() {
        if let Some(max) = s.get("maxItems").and_then(Value::as_u64) {
            if items.len() as u64 > max {
                return Err(format!("{at}: {} items > maxItems {max}", items.len()));
            }
        }
        if let Some(item_schema) = s.get("items") {
            for (i, item) in items.iter().enumerate() {
                check(item_schema, item, &format!("{at}[{i}]"))?;
            }
        }
    }
    Ok(())
}

/// Every documented field, required: what the docs list is what every object carries.
fn all_fields_required(schema: &Value) -> bool {
    let props: Vec<&String> = schema["properties"]
        .as_object()
        .map(|p| p.keys().collect())
        .unwrap_or_default();
    let required: Vec<&str> = schema["required"]
        .as_array()
        .map(|r| r.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    !props.is_empty()
        && props
            .iter()
            .all(|p| required.contains(&p.as_str()) || OPTIONAL.contains(&p.as_str()))
}

fn inputs() -> Vec<Input> {
    let mut evs = conversation();
    evs.extend(odd_ones());
    // The server is in a pod's container; every socket in one namespace.
    for e in &mut evs {
        e.netns = 4026532000;
        if e.owner_pid == 7 {
            e.cgroup_id = 77;
        }
    }
    let mut inputs = vec![Input::Cgroup {
        id: 77,
        path: "/kubepods/besteffort/pod0b6c3a4e-6f8d-4c1a-9e2b-7d5f1a2b3c4d/4f2d7a9c1b3e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8".into(),
    }];
    inputs.extend(evs.iter().map(|&e| Input::Event(e)));
    // Handshake aborted, an owner-less partial end, an overflowing ladder.
    let t = evs[evs.len() - 1].ts_ns;
    inputs.push(Input::Event(ev(t + 1, 0xd0, LISTEN, SYN_RECV, 80, 6000)));
    inputs.push(Input::Event(ev(t + 2, 0xd0, SYN_RECV, CLOSE, 80, 6000)));
    let mut lone = ev(t + 3, 0xd1, SYN_SENT, CLOSE, 6001, 80);
    lone.owner_pid = 0;
    inputs.push(Input::Event(lone));
    inputs.push(Input::Event(ev(t + 4, 0xd2, FIN_WAIT1, CLOSING, 6002, 80)));
    for i in 0..20 {
        inputs.push(Input::Event(ev(
            t + 5 + i,
            0xd2,
            CLOSING,
            CLOSING,
            6002,
            80,
        )));
    }
    inputs.extend(why_inputs(t + 1_000_000));
    inputs.push(Input::Counters(
        KernelCounters::zero()
            .with(Counter::Seen, 40)
            .with(Counter::Filtered, 2)
            .with(Counter::Submitted, 37)
            .with(Counter::RingbufFull, 1)
            .with(Counter::Deferred, 1)
            .with(Counter::RecursionMisses, 0),
    ));
    inputs
}

fn validate(mode: Mode, counters: bool) -> usize {
    validate_kinds(mode, counters).len()
}

/// The schema names of the lines written, in order, each checked against its schema.
fn validate_kinds(mode: Mode, counters: bool) -> Vec<String> {
    let schemas: Vec<(String, Value)> = [CONNECTION, TRANSITION, SUMMARY, REFUSED, STUCK]
        .iter()
        .map(|text| {
            let v: Value = serde_json::from_str(text).expect("schema file is JSON");
            assert!(all_fields_required(&v));
            let name = v["properties"]["schema"]["const"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (name, v)
        })
        .collect();
    let mut cfg = OutputConfig {
        mode,
        format: Format::Json,
        interval_ns: Some(3_000_000),
        ..OutputConfig::default()
    };
    cfg.clock.realtime_minus_mono_ns = 1_700_000_000_000_000_000;
    let mut ins = inputs();
    if !counters {
        ins.retain(|i| !matches!(i, Input::Counters(_)));
    }
    let out = render(cfg, &ins);
    let mut n = Vec::new();
    for line in out.lines() {
        let v: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}"));
        let name = v["schema"].as_str().unwrap_or("");
        let Some((_, schema)) = schemas.iter().find(|(s, _)| *s == name) else {
            panic!("unknown schema {name:?}: {line}");
        };
        if let Err(e) = check(schema, &v, name) {
            panic!("{e}\n{line}");
        }
        if v["stuck"].is_object() {
            n.push(format!("{name}+stuck"));
        } else {
            n.push(name.to_string());
        }
    }
    n
}

/// The inputs leave a socket in CLOSING long enough to be stuck: its object and the summaries
/// listing it are checked like the rest.
#[test]
fn stuck_objects_and_summaries_match_their_schemas() {
    for mode in [Mode::Connections, Mode::Transitions, Mode::Timeline] {
        let kinds = validate_kinds(mode, true);
        assert!(kinds.iter().any(|k| k == "tcpstate.stuck.v1"), "{kinds:?}");
        assert!(
            kinds.iter().any(|k| k == "tcpstate.summary.v2+stuck"),
            "{kinds:?}"
        );
    }
}

#[test]
fn connections_and_summaries_match_their_schemas() {
    assert!(validate(Mode::Connections, true) > 10);
    assert!(validate(Mode::Timeline, false) > 10);
}

#[test]
fn transitions_match_their_schema() {
    assert!(validate(Mode::Transitions, true) > 30);
}

#[test]
fn the_checker_catches_mistakes() {
    let schema: Value = serde_json::from_str(CONNECTION).unwrap_or(Value::Null);
    let out = render(
        OutputConfig {
            format: Format::Json,
            summary_at_end: false,
            ..OutputConfig::default()
        },
        &conversation()
            .iter()
            .map(|&e| Input::Event(e))
            .collect::<Vec<_>>(),
    );
    let good: Value = serde_json::from_str(out.lines().next().unwrap_or("")).unwrap_or(Value::Null);
    assert_eq!(check(&schema, &good, "c"), Ok(()));
    for (field, bad) in [
        ("lport", Value::from("80")),
        ("outcome", Value::from("fine")),
        ("pid", Value::from(1.5)),
        ("closer", Value::from(3)),
        ("skaddr", Value::from("ffff")),
        ("schema", Value::from("tcpstate.connection.v1")),
        ("timeout", Value::from("idle")),
        ("retransmits", Value::from(1)),
    ] {
        let mut v = good.clone();
        v[field] = bad;
        assert!(check(&schema, &v, "c").is_err(), "{field}");
    }
    let mut missing = good.clone();
    missing.as_object_mut().map(|o| o.remove("life_ns"));
    assert!(check(&schema, &missing, "c").is_err());
    let mut extra = good;
    extra["surprise"] = Value::from(1);
    assert!(check(&schema, &extra, "c").is_err());
}

/// The schema's `kernel` object is the one list of counters, plus the two derived from it.
#[test]
fn the_summary_schema_lists_every_counter() {
    let schema: Value = serde_json::from_str(SUMMARY).unwrap_or(Value::Null);
    let kernel = &schema["properties"]["kernel"];
    // `required` is ordered (and all fields are required); the properties object is not.
    let documented: Vec<&str> = kernel["required"]
        .as_array()
        .map(|a| a.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    let mut want: Vec<&str> = Counter::ALL.iter().map(|c| c.name()).collect();
    want.extend(["lost", "held"]);
    assert_eq!(documented, want);
    assert_eq!(
        kernel["properties"].as_object().map(|o| o.len()),
        Some(want.len())
    );
}

/// A counter that could not be read is `null` in the summary, and that is valid.
#[test]
fn unknown_counters_are_null_and_valid() {
    let schema: Value = serde_json::from_str(SUMMARY).unwrap_or(Value::Null);
    let counters = KernelCounters::unknown()
        .with(Counter::Seen, 5)
        .with(Counter::RingbufFull, 1);
    let out = render(
        OutputConfig {
            format: Format::Json,
            summary_at_end: true,
            ..OutputConfig::default()
        },
        &[Input::Counters(counters)],
    );
    let line = out.lines().last().unwrap_or("");
    let v: Value = serde_json::from_str(line).unwrap_or(Value::Null);
    assert_eq!(check(&schema, &v, "s"), Ok(()), "{line}");
    assert_eq!(v["kernel"]["seen"], 5);
    assert_eq!(v["kernel"]["ringbuf_full"], 1);
    assert!(v["kernel"]["recursion_misses"].is_null());
    // One loss counter unknown: the total is unknown too, not a partial sum.
    assert!(v["kernel"]["lost"].is_null());
    assert!(v["kernel"]["held"].is_null());
}
