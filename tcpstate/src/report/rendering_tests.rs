//! Rendering tests: small inputs through the whole pipeline, exact expected output.

use tcpstate_common::{owner_source, state::*, Event};

use crate::event::tests::{ev, CHILD, CLIENT, LISTENER, MS, SEC, US};
use crate::input::{Counter, Input, KernelCounters};
use crate::pipeline::{ClockBase, Format, Mode, OutputConfig, Pipeline, TimeColumn};

const T: u64 = 100 * SEC;

fn server(mut e: Event) -> Event {
    e.owner_pid = 7;
    e.owner_comm = [0; 16];
    e.owner_comm[..3].copy_from_slice(b"srv");
    e.owner_source = owner_source::SYSCALL;
    e
}

fn client(mut e: Event) -> Event {
    e.owner_source = owner_source::SYSCALL;
    e.ctx_pid = 42;
    e.ctx_comm[..4].copy_from_slice(b"curl");
    e
}

/// A loopback connect/accept/close where the client closes first.
pub(crate) fn conversation() -> Vec<Event> {
    vec![
        server(ev(T, LISTENER, CLOSE, LISTEN, 8080, 0)),
        client(ev(T + MS, CLIENT, CLOSE, SYN_SENT, 0, 8080)),
        server(ev(T + MS + 20 * US, CHILD, LISTEN, SYN_RECV, 8080, 41000)),
        server(ev(
            T + MS + 21 * US,
            CHILD,
            SYN_RECV,
            ESTABLISHED,
            8080,
            41000,
        )),
        client(ev(
            T + MS + 30 * US,
            CLIENT,
            SYN_SENT,
            ESTABLISHED,
            41000,
            8080,
        )),
        client(ev(T + 5 * MS, CLIENT, ESTABLISHED, FIN_WAIT1, 41000, 8080)),
        server(ev(
            T + 5 * MS + 10 * US,
            CHILD,
            ESTABLISHED,
            CLOSE_WAIT,
            8080,
            41000,
        )),
        client(ev(
            T + 5 * MS + 15 * US,
            CLIENT,
            FIN_WAIT1,
            FIN_WAIT2,
            41000,
            8080,
        )),
        server(ev(T + 7 * MS, CHILD, CLOSE_WAIT, LAST_ACK, 8080, 41000)),
        client(ev(
            T + 7 * MS + 20 * US,
            CLIENT,
            FIN_WAIT2,
            CLOSE,
            41000,
            8080,
        )),
        server(ev(
            T + 7 * MS + 20 * US,
            CHILD,
            LAST_ACK,
            CLOSE,
            8080,
            41000,
        )),
    ]
}

fn config(mode: Mode, format: Format) -> OutputConfig {
    OutputConfig {
        mode,
        format,
        clock: ClockBase {
            start_mono_ns: T - SEC,
            realtime_minus_mono_ns: 1_700_000_000 * SEC as i64,
        },
        summary_at_end: false,
        ..OutputConfig::default()
    }
}

pub(crate) fn render(cfg: OutputConfig, inputs: &[Input]) -> String {
    let mut p = Pipeline::new(cfg);
    let mut out = Vec::new();
    for i in inputs {
        p.push(i, &mut out).unwrap();
    }
    p.finish(&mut out).unwrap();
    String::from_utf8(out).unwrap()
}

fn events(evs: &[Event]) -> Vec<Input> {
    evs.iter().map(|&e| Input::Event(e)).collect()
}

/// A remote client refused, an IPv6 client reset by its peer, a socket from before tracing
/// and one with a lost transition.
pub(crate) fn odd_ones() -> Vec<Event> {
    let mut v6a = client(ev(T + 2 * MS, 0xa6, CLOSE, SYN_SENT, 0, 443));
    let mut v6b = client(ev(
        T + 2 * MS + 900 * US,
        0xa6,
        SYN_SENT,
        ESTABLISHED,
        50000,
        443,
    ));
    let mut v6c = client(ev(T + 9 * MS, 0xa6, ESTABLISHED, CLOSE, 50000, 443));
    for e in [&mut v6a, &mut v6b, &mut v6c] {
        e.family = tcpstate_common::AF_INET6;
        e.saddr = std::net::Ipv6Addr::LOCALHOST.octets();
        e.daddr = "2001:db8::1"
            .parse::<std::net::Ipv6Addr>()
            .unwrap()
            .octets();
    }
    let remote = |e: Event| {
        let mut e = client(e);
        e.daddr[..4].copy_from_slice(&[192, 0, 2, 9]);
        e
    };
    let mut old = ev(T + 3 * MS, 0xb0, ESTABLISHED, CLOSE_WAIT, 22, 51000);
    old.owner_pid = 0;
    old.owner_comm = [0; 16];
    vec![
        remote(ev(T, 0xa1, CLOSE, SYN_SENT, 0, 5432)),
        remote(ev(T + 150 * US, 0xa1, SYN_SENT, CLOSE, 40000, 5432)),
        v6a,
        v6b,
        old,
        v6c,
        remote(ev(T + 10 * MS, 0xc0, CLOSE, SYN_SENT, 0, 80)),
        remote(ev(
            T + 10 * MS + 300 * US,
            0xc0,
            SYN_SENT,
            ESTABLISHED,
            40100,
            80,
        )),
        remote(ev(T + 12 * MS, 0xc0, FIN_WAIT2, CLOSE, 40100, 80)),
    ]
}

fn all_events() -> Vec<Input> {
    let mut inputs = events(&conversation());
    inputs.extend(events(&odd_ones()));
    inputs
}

const TABLE: &str = "\
PID     COMM             LADDR           LPORT RADDR           RPORT ROLE     OUTCOME       HS_MS    LIFE_MS CLOSER CLOSE_MS NOTE
42      curl             127.0.0.1       40000 192.0.2.9       5432  client   refused           -      0.150 -             -
42      curl             127.0.0.1       41000 127.0.0.1       8080  client   time_wait     0.030      6.020 local     2.020
7       srv              127.0.0.1       8080  127.0.0.1       41000 server   closed        0.001      6.000 remote    1.990 peer of line above
42      curl             ::1             50000 2001:db8::1     443   client   reset         0.900      7.000 -             -
42      curl             127.0.0.1       40100 192.0.2.9       80    client   time_wait     0.300      2.000 local         - missing transitions
7       srv              127.0.0.1       8080  127.0.0.1       0     listener open              -     12.000 -             -
-       -                127.0.0.1       22    127.0.0.1       51000 ?        open              -      9.000 remote    9.000 first seen ESTABLISHED
";

#[test]
fn connection_table() {
    let out = render(config(Mode::Connections, Format::Table), &all_events());
    assert_eq!(out, TABLE);
}

#[test]
fn transitions_with_relative_time() {
    let mut cfg = config(Mode::Transitions, Format::Table);
    cfg.time = TimeColumn::Relative;
    let out = render(cfg, &events(&conversation()[..5]));
    let expected = "\
TIME(s)     PID     COMM             LADDR:LPORT           RADDR:RPORT           OLDSTATE    -> NEWSTATE             MS
1.000000    7       srv              127.0.0.1:8080        127.0.0.1:0           CLOSE       -> LISTEN            0.000
1.001000    42      curl             127.0.0.1:0           127.0.0.1:8080        CLOSE       -> SYN_SENT          0.000
1.001020    7       srv              127.0.0.1:8080        127.0.0.1:41000       LISTEN      -> SYN_RECV          0.000
1.001021    7       srv              127.0.0.1:8080        127.0.0.1:41000       SYN_RECV    -> ESTABLISHED       0.001
1.001030    42      curl             127.0.0.1:41000       127.0.0.1:8080        SYN_SENT    -> ESTABLISHED       0.030
";
    assert_eq!(out, expected);
}

#[test]
fn timeline_ladders() {
    let mut evs = conversation();
    evs.push(odd_ones()[4]); // first seen in ESTABLISHED -> CLOSE_WAIT
    evs.extend(&odd_ones()[6..]); // a lost transition
    let out = render(config(Mode::Timeline, Format::Table), &events(&evs));
    let expected = "\
client 127.0.0.1:41000 <-> server 127.0.0.1:8080 (both ends on this host)
  client 127.0.0.1:41000: pid 42 (curl)  time_wait  handshake 0.030 ms  established 3.970 ms  fin_wait1 0.015 ms  fin_wait2 2.005 ms  closer local  life 6.020 ms
  server 127.0.0.1:8080: pid 7 (srv)  closed  handshake 0.001 ms  established 3.989 ms  close_wait 1.990 ms  last_ack 0.020 ms  closer remote  life 6.000 ms
                   client 127.0.0.1:41000               server 127.0.0.1:8080
        +0.000 ms  CLOSE -> SYN_SENT
        +0.020 ms                                       LISTEN -> SYN_RECV
        +0.021 ms                                       SYN_RECV -> ESTABLISHED
        +0.030 ms  SYN_SENT -> ESTABLISHED
        +4.000 ms  ESTABLISHED -> FIN_WAIT1
        +4.010 ms                                       ESTABLISHED -> CLOSE_WAIT
        +4.015 ms  FIN_WAIT1 -> FIN_WAIT2
        +6.000 ms                                       CLOSE_WAIT -> LAST_ACK
        +6.020 ms  FIN_WAIT2 -> CLOSE = TIME_WAIT 60 s
        +6.020 ms                                       LAST_ACK -> CLOSE

client 127.0.0.1:40100 -> 192.0.2.9:80
  pid 42 (curl)  time_wait  handshake 0.300 ms  closer local  life 2.000 ms
  note: transitions are missing (~> marks where)
        +0.000 ms  CLOSE -> SYN_SENT
        +0.300 ms  SYN_SENT -> ESTABLISHED
        +2.000 ms  ESTABLISHED ~> FIN_WAIT2
        +2.000 ms  FIN_WAIT2 -> CLOSE = TIME_WAIT 60 s

listener 127.0.0.1:8080
  pid 7 (srv)  open  life 12.000 ms so far
        +0.000 ms  CLOSE -> LISTEN
       +12.000 ms  (still LISTEN at end of trace)

unknown 127.0.0.1:22 -> 127.0.0.1:51000
  pid - (owner unknown)  open  close_wait 9.000 ms  closer remote  life 9.000 ms so far
  note: started before tracing; first seen in ESTABLISHED
        +0.000 ms  ESTABLISHED -> CLOSE_WAIT
        +9.000 ms  (still CLOSE_WAIT at end of trace)

";
    assert_eq!(out, expected);
}

#[test]
fn json_connection_line() {
    let out = render(
        config(Mode::Connections, Format::Json),
        &events(&odd_ones()[..2]),
    );
    let expected = concat!(
        r#"{"schema":"tcpstate.connection.v1","id":0,"peer_id":null,"skaddr":"0xa1","family":"ipv4","#,
        r#""laddr":"127.0.0.1","lport":40000,"raddr":"192.0.2.9","rport":5432,"role":"client","#,
        r#""outcome":"refused","closer":null,"time_wait":false,"syn_retransmitted":false,"partial":false,"incomplete":false,"#,
        r#""first_state":"CLOSE","last_state":"CLOSE","pid":42,"comm":"curl","owner_source":"syscall","#,
        r#""ctx_pid":42,"ctx_comm":"curl","start_ns":100000000000,"end_ns":100000150000,"#,
        r#""start_unix_ns":1700000100000000000,"end_unix_ns":1700000100000150000,"#,
        r#""life_ns":150000,"life_ms":0.15,"handshake_ns":null,"handshake_ms":null,"#,
        r#""established_ns":null,"established_ms":null,"fin_wait1_ns":null,"fin_wait1_ms":null,"#,
        r#""fin_wait2_ns":null,"fin_wait2_ms":null,"closing_ns":null,"closing_ms":null,"#,
        r#""close_wait_ns":null,"close_wait_ms":null,"last_ack_ns":null,"last_ack_ms":null,"#,
        r#""close_ns":null,"close_ms":null,"transitions":["#,
        r#"{"state":"SYN_SENT","offset_ns":0,"offset_ms":0.0,"gap":false},"#,
        r#"{"state":"CLOSE","offset_ns":150000,"offset_ms":0.15,"gap":false}],"#,
        r#""transitions_overflow":false}"#,
        "\n"
    );
    assert_eq!(out, expected);
}

#[test]
fn json_pairs_point_at_each_other() {
    let out = render(
        config(Mode::Connections, Format::Json),
        &events(&conversation()),
    );
    let objs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(objs.len(), 3);
    assert_eq!(
        (objs[0]["role"].as_str(), objs[1]["role"].as_str()),
        (Some("client"), Some("server"))
    );
    assert_eq!(objs[0]["peer_id"], objs[1]["id"]);
    assert_eq!(objs[1]["peer_id"], objs[0]["id"]);
    assert!(objs[2]["peer_id"].is_null());
}

#[test]
fn thresholds_filter_lines_not_statistics() {
    let mut cfg = config(Mode::Connections, Format::Table);
    cfg.min_handshake_ns = Some(500 * US);
    let mut p = Pipeline::new(cfg);
    let mut out = Vec::new();
    for i in &all_events() {
        p.push(i, &mut out).unwrap();
    }
    p.finish(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(lines[1].contains("2001:db8::1") && lines[1].contains(" 0.900 "));
    assert_eq!(p.stats().connections, 7);
    assert_eq!(p.records(), 1);

    // CLOSE_WAIT threshold: the server end (1.99 ms) passes and brings its client along; the
    // socket still in CLOSE_WAIT at the end (9 ms so far) passes too.
    let mut cfg = config(Mode::Connections, Format::Table);
    cfg.min_close_wait_ns = Some(MS);
    let out = render(cfg, &all_events());
    let body: Vec<&str> = out.lines().skip(1).collect();
    let table: Vec<&str> = TABLE.lines().collect();
    assert_eq!(body, vec![table[2], table[3], table[7]]);
}

/// Feeds inputs one at a time, returning what each push printed.
fn outputs_per_input(cfg: OutputConfig, inputs: &[Input]) -> (Vec<String>, String) {
    let mut p = Pipeline::new(cfg);
    let mut each = Vec::new();
    for i in inputs {
        let mut out = Vec::new();
        p.push(i, &mut out).unwrap();
        each.push(String::from_utf8(out).unwrap());
    }
    let mut out = Vec::new();
    p.finish(&mut out).unwrap();
    (each, String::from_utf8(out).unwrap())
}

#[test]
fn ticks_release_held_events() {
    let e = conversation()[0];
    let inputs = [
        Input::Event(e),
        Input::Tick {
            now_ns: e.ts_ns + 10 * MS,
        },
        Input::Tick {
            now_ns: e.ts_ns + 10 * MS + 1,
        },
    ];
    let (each, rest) = outputs_per_input(config(Mode::Transitions, Format::Table), &inputs);
    assert_eq!(
        each[0].lines().count(),
        1,
        "only the header: the event is held"
    );
    assert_eq!(each[1], "", "not yet older than the window");
    assert!(each[2].contains("CLOSE       -> LISTEN"), "{each:?}");
    assert_eq!(rest, "");
}

#[test]
fn a_peer_is_awaited_only_for_a_bounded_time() {
    // The server end sits in CLOSE_WAIT for 3 s after the client is gone.
    let mut evs = conversation();
    evs.truncate(10);
    evs[8].ts_ns = T + 3 * SEC; // CLOSE_WAIT -> LAST_ACK
    evs.push(server(ev(
        T + 3 * SEC + 20 * US,
        CHILD,
        LAST_ACK,
        CLOSE,
        8080,
        41000,
    )));
    let client_done = evs[9].ts_ns;
    let mut inputs = events(&evs[..8]);
    inputs.push(Input::Event(evs[9]));
    inputs.push(Input::Tick {
        now_ns: client_done + SEC,
    });
    inputs.push(Input::Tick {
        now_ns: client_done + SEC + 10 * MS + 1,
    });
    inputs.extend(events(&evs[8..9]));
    inputs.extend(events(&evs[10..]));
    let (each, rest) = outputs_per_input(config(Mode::Connections, Format::Table), &inputs);
    let n = each.len();
    assert_eq!(each[n - 4], "", "still waiting for the server end");
    assert_eq!(
        each[n - 3],
        TABLE
            .lines()
            .nth(2)
            .map(|l| format!("{l}\n"))
            .unwrap_or_default()
    );
    let all = format!("{}{rest}", each.concat());
    assert!(!all.contains("peer of line above"), "{all}");
    assert!(
        rest.contains("server   closed        0.001   2999.000 remote 2994.990\n"),
        "{rest}"
    );
}

#[test]
fn arrival_order_within_the_window_does_not_matter() {
    let ordered = all_events();
    let mut shuffled = ordered.clone();
    for pair in shuffled.chunks_mut(2) {
        pair.reverse();
    }
    for mode in [Mode::Connections, Mode::Transitions, Mode::Timeline] {
        let cfg = OutputConfig {
            summary_at_end: true,
            ..config(mode, Format::Table)
        };
        assert_eq!(render(cfg, &shuffled), render(cfg, &ordered), "{mode:?}");
    }
}

#[test]
fn interval_summaries_follow_event_time() {
    let mut cfg = config(Mode::Connections, Format::Json);
    cfg.interval_ns = Some(5 * MS);
    cfg.clock.start_mono_ns = T;
    cfg.summary_at_end = true;
    let mut inputs = all_events();
    inputs.push(Input::Counters(
        KernelCounters::zero()
            .with(Counter::Seen, 30)
            .with(Counter::Submitted, 28)
            .with(Counter::RingbufFull, 1)
            .with(Counter::RecursionMisses, 1),
    ));
    inputs.push(Input::Tick {
        now_ns: T + 40 * MS,
    });
    let out = render(cfg, &inputs);
    let summaries: Vec<serde_json::Value> = out
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter(|v| v["schema"] == "tcpstate.summary.v2")
        .collect();
    let shape: Vec<(String, u64, u64, u64)> = summaries
        .iter()
        .map(|s| {
            (
                s["kind"].as_str().unwrap_or("").to_string(),
                (s["start_ns"].as_u64().unwrap_or(0) - T) / MS,
                (s["end_ns"].as_u64().unwrap_or(0) - T) / MS,
                s["connections"].as_u64().unwrap_or(99),
            )
        })
        .collect();
    // [0,5): refused. [5,10): pair + v6 reset. [10,15): the remote TIME_WAIT client, printed
    // when the 40 ms tick moves the window to 30 ms; the quiet intervals up to there are
    // skipped. At the end (40 ms) [30,35) is due; the final summary covers everything.
    let expected = [
        ("interval", 0, 5, 1),
        ("interval", 5, 10, 3),
        ("interval", 10, 15, 1),
        ("interval", 30, 35, 0),
        ("final", 0, 40, 7),
    ];
    let expected: Vec<(String, u64, u64, u64)> = expected
        .iter()
        .map(|&(k, a, b, n)| (k.to_string(), a, b, n))
        .collect();
    assert_eq!(shape, expected);
    let last = &summaries[summaries.len() - 1];
    assert_eq!(last["kernel"]["lost"], 2);
    assert_eq!(last["kernel"]["recursion_misses"], 1);
    assert_eq!(last["still_open"], 2);
    assert_eq!(last["outcomes"]["time_wait"], 2);
}

#[test]
fn evicted_connections_are_reported() {
    let mut cfg = config(Mode::Connections, Format::Table);
    cfg.max_tracked = 1;
    let out = render(cfg, &events(&conversation()[..3]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 4, "{out}");
    assert!(lines[1].contains("listener evicted"), "{out}");
    assert!(lines[2].contains("client   evicted"), "{out}");
    assert!(lines[3].contains("server   open"), "{out}");
}

#[test]
fn empty_input_prints_header_and_summary() {
    let cfg = OutputConfig {
        summary_at_end: true,
        ..config(Mode::Connections, Format::Table)
    };
    let out = render(cfg, &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(lines[0].starts_with("PID "));
    assert_eq!(lines[1], "");
    assert_eq!(lines[2], "--- summary: 0 connections in 0.000 s ---");
    assert!(out.contains("kernel: no counters received"));
}

#[test]
fn ends_still_open_at_the_end_are_shown_together() {
    let out = render(
        config(Mode::Connections, Format::Table),
        &events(&conversation()[..5]),
    );
    let expected = "\
PID     COMM             LADDR           LPORT RADDR           RPORT ROLE     OUTCOME       HS_MS    LIFE_MS CLOSER CLOSE_MS NOTE
7       srv              127.0.0.1       8080  127.0.0.1       0     listener open              -      1.030 -             -
42      curl             127.0.0.1       41000 127.0.0.1       8080  client   open          0.030      0.030 -             -
7       srv              127.0.0.1       8080  127.0.0.1       41000 server   open          0.001      0.010 -             - peer of line above
";
    assert_eq!(out, expected);
}

#[test]
fn wide_columns_fit_ipv6() {
    let mut cfg = config(Mode::Connections, Format::Table);
    cfg.wide = true;
    let out = render(cfg, &events(&odd_ones()[2..6]));
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 3, "{out}");
    let expected_v6 = format!(
        "42      curl             {:<39} 50000 {:<39} 443   client   reset         0.900      7.000 -             -",
        "::1", "2001:db8::1"
    );
    assert_eq!(lines[1], expected_v6);
    // Every line's columns start at the same offsets as the header's.
    let col = |l: &str| {
        l.find("client")
            .or_else(|| l.find('?'))
            .or_else(|| l.find("ROLE"))
    };
    assert_eq!(col(lines[0]), col(lines[1]));
    assert_eq!(col(lines[0]), col(lines[2]));
}

#[test]
fn max_records_limits_what_is_printed_not_what_is_counted() {
    let inputs = events(&odd_ones());
    let all = render(config(Mode::Transitions, Format::Json), &inputs);
    let total = all.lines().count();
    assert!(total > 3);
    let cfg = OutputConfig {
        max_records: Some(3),
        summary_at_end: true,
        ..config(Mode::Transitions, Format::Json)
    };
    let limited = render(cfg, &inputs);
    let records = limited
        .lines()
        .filter(|l| l.contains("tcpstate.transition.v1"))
        .count();
    assert_eq!(records, 3);
    let summary = limited
        .lines()
        .find(|l| l.contains("tcpstate.summary.v2"))
        .expect("the summary still comes");
    // Every event still went through the engine and the statistics.
    let v: serde_json::Value = serde_json::from_str(summary).expect("summary JSON");
    let unlimited: serde_json::Value = serde_json::from_str(
        render(
            OutputConfig {
                summary_at_end: true,
                ..config(Mode::Transitions, Format::Json)
            },
            &inputs,
        )
        .lines()
        .last()
        .expect("summary"),
    )
    .expect("summary JSON");
    assert_eq!(v["connections"], unlimited["connections"]);
    assert_eq!(v["pipeline"]["events"], total as u64);
}

/// The text summary names every kernel counter; one that could not be read says so.
#[test]
fn text_summary_names_every_counter() {
    let cfg = OutputConfig {
        summary_at_end: true,
        ..config(Mode::Connections, Format::Table)
    };
    let known = KernelCounters::zero()
        .with(Counter::Seen, 12)
        .with(Counter::HoldFailed, 2)
        .with(Counter::OwnerUpdateFailed, 1);
    let out = render(cfg, &[Input::Counters(known)]);
    for c in Counter::ALL {
        assert!(out.contains(c.name()), "{}: {out}", c.name());
    }
    assert!(
        out.contains("kernel: 12 seen, 0 filtered, 0 submitted, 2 lost"),
        "{out}"
    );
    assert!(out.contains("2 events were lost"), "{out}");
    assert!(out.contains("owner table was full 1 times"), "{out}");
    assert!(!out.contains("unknown"), "{out}");

    let mut partial = known;
    partial.set(Counter::RecursionMisses, None);
    let out = render(cfg, &[Input::Counters(partial)]);
    assert!(out.contains("lost unknown"), "{out}");
    assert!(out.contains("recursion_misses unknown"), "{out}");
    assert!(
        out.contains("WARNING: kernel counters unknown (unreadable, or not in this recording): recursion_misses"),
        "{out}"
    );
}
