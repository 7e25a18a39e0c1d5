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
PID     COMM             LADDR           LPORT RADDR           RPORT ROLE     OUTCOME       HS_MS   RTT_MS RETX    LIFE_MS CLOSER CLOSE_MS NOTE
42      curl             127.0.0.1       40000 192.0.2.9       5432  client   refused           -        -    -      0.150 -             -
42      curl             127.0.0.1       41000 127.0.0.1       8080  client   time_wait     0.030        -    -      6.020 local     2.020
7       srv              127.0.0.1       8080  127.0.0.1       41000 server   closed        0.001        -    -      6.000 remote    1.990 peer of line above
42      curl             ::1             50000 2001:db8::1     443   client   reset         0.900        -    -      7.000 -             -
42      curl             127.0.0.1       40100 192.0.2.9       80    client   time_wait     0.300        -    -      2.000 local         - missing transitions
7       srv              127.0.0.1       8080  127.0.0.1       0     listener open              -        -    -     12.000 -             -
-       -                127.0.0.1       22    127.0.0.1       51000 ?        open              -        -    -      9.000 remote    9.000 first seen ESTABLISHED
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
        r#"{"schema":"tcpstate.connection.v2","id":0,"peer_id":null,"skaddr":"0xa1","family":"ipv4","#,
        r#""laddr":"127.0.0.1","lport":40000,"raddr":"192.0.2.9","rport":5432,"role":"client","#,
        r#""outcome":"refused","closer":null,"time_wait":false,"syn_retransmitted":false,"partial":false,"incomplete":false,"#,
        r#""first_state":"CLOSE","last_state":"CLOSE","pid":42,"comm":"curl","owner_source":"syscall","#,
        r#""ctx_pid":42,"ctx_comm":"curl","#,
        r#""cgroup":null,"cgroup_id":null,"netns":null,"pod_uid":null,"container_id":null,"#,
        r#""start_ns":100000000000,"end_ns":100000150000,"#,
        r#""start_unix_ns":1700000100000000000,"end_unix_ns":1700000100000150000,"#,
        r#""life_ns":150000,"life_ms":0.15,"handshake_ns":null,"handshake_ms":null,"#,
        r#""established_ns":null,"established_ms":null,"fin_wait1_ns":null,"fin_wait1_ms":null,"#,
        r#""fin_wait2_ns":null,"fin_wait2_ms":null,"closing_ns":null,"closing_ms":null,"#,
        r#""close_wait_ns":null,"close_wait_ms":null,"last_ack_ns":null,"last_ack_ms":null,"#,
        r#""close_ns":null,"close_ms":null,"transitions":["#,
        r#"{"state":"SYN_SENT","offset_ns":0,"offset_ms":0.0,"gap":false},"#,
        r#"{"state":"CLOSE","offset_ns":150000,"offset_ms":0.15,"gap":false}],"#,
        r#""transitions_overflow":false,"synack_rtt_ns":null,"srtt_ns":null,"min_rtt_ns":null,"#,
        r#""retransmits":null,"reset":null,"errno":null,"bytes_acked":null,"bytes_received":null,"#,
        r#""bytes_retrans":null,"segs_in":null,"segs_out":null,"timeout":null,"#,
        r#""outcome_basis":"timing"}"#,
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
        rest.contains("server   closed        0.001        -    -   2999.000 remote 2994.990\n"),
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
PID     COMM             LADDR           LPORT RADDR           RPORT ROLE     OUTCOME       HS_MS   RTT_MS RETX    LIFE_MS CLOSER CLOSE_MS NOTE
7       srv              127.0.0.1       8080  127.0.0.1       0     listener open              -        -    -      1.030 -             -
42      curl             127.0.0.1       41000 127.0.0.1       8080  client   open          0.030        -    -      0.030 -             -
7       srv              127.0.0.1       8080  127.0.0.1       41000 server   open          0.001        -    -      0.010 -             - peer of line above
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
        "42      curl             {:<39} 50000 {:<39} 443   client   reset         0.900        -    -      7.000 -             -",
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
        .filter(|l| l.contains("tcpstate.transition.v2"))
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

/// Connections with socket facts, retransmits and resets, shaped like the real kernel's
/// records (values from tcp-socket-facts.md), starting at `t0`; plus a refused inbound SYN.
pub(crate) fn why_inputs(t0: u64) -> Vec<Input> {
    use crate::facts::tests::{facts, refused, reset, retransmit, synack};
    use tcpstate_common::{reset_direction, tcp_flags};
    const LSN: u64 = 0xe000;
    const SRV: u64 = 0xe0;
    let mut v = Vec::new();
    let at = |e: Event, f: Option<crate::facts::Facts>, v: &mut Vec<Input>| {
        v.push(Input::Event(e));
        if let Some(f) = f {
            v.push(Input::Facts(f));
        }
    };
    // An accepted socket whose first SYN-ACK was lost: 15 B in, 33 B out, peer closed first.
    v.push(Input::Retransmit(synack(t0 + SEC, LSN, 9090, 42000)));
    let s = |e: Event| server(e);
    at(
        s(ev(t0 + SEC + 40 * MS, SRV, LISTEN, SYN_RECV, 9090, 42000)),
        None,
        &mut v,
    );
    let mut f = facts(t0 + SEC + 40 * MS + 5 * US, SRV, SYN_RECV, ESTABLISHED);
    f.srtt_us = Some(40_000);
    f.total_retrans = Some(1);
    at(
        s(ev(f.ts_ns, SRV, SYN_RECV, ESTABLISHED, 9090, 42000)),
        Some(f),
        &mut v,
    );
    at(
        s(ev(t0 + 2 * SEC, SRV, ESTABLISHED, CLOSE_WAIT, 9090, 42000)),
        None,
        &mut v,
    );
    at(
        s(ev(
            t0 + 2 * SEC + MS,
            SRV,
            CLOSE_WAIT,
            LAST_ACK,
            9090,
            42000,
        )),
        None,
        &mut v,
    );
    let mut f = facts(t0 + 2 * SEC + 41 * MS, SRV, LAST_ACK, CLOSE);
    f.bytes_acked = Some(34);
    f.bytes_received = Some(16);
    f.srtt_us = Some(40_100);
    f.min_rtt_us = Some(39_900);
    f.total_retrans = Some(1);
    f.segs_in = Some(6);
    f.segs_out = Some(5);
    at(
        s(ev(f.ts_ns, SRV, LAST_ACK, CLOSE, 9090, 42000)),
        Some(f),
        &mut v,
    );

    // A refused connect: the RST arrives, then SYN_SENT -> CLOSE with ECONNREFUSED.
    let c = |e: Event| client(e);
    at(c(ev(t0, 0xe1, CLOSE, SYN_SENT, 0, 9)), None, &mut v);
    v.push(Input::Reset(reset(
        t0 + 40 * MS,
        0xe1,
        reset_direction::RECEIVED,
    )));
    let mut f = facts(t0 + 40 * MS + US, 0xe1, SYN_SENT, CLOSE);
    f.sk_err = Some(111);
    at(
        c(ev(f.ts_ns, 0xe1, SYN_SENT, CLOSE, 43210, 9)),
        Some(f),
        &mut v,
    );

    // First SYN lost, then an idle connection dies of keepalive (it had retransmitted data).
    at(
        c(ev(t0 + 3 * SEC, 0xe2, CLOSE, SYN_SENT, 0, 80)),
        None,
        &mut v,
    );
    v.push(Input::Retransmit(retransmit(
        t0 + 4 * SEC,
        0xe2,
        SYN_SENT,
        tcp_flags::SYN,
    )));
    let mut f = facts(t0 + 4 * SEC + 40 * MS, 0xe2, SYN_SENT, ESTABLISHED);
    f.total_retrans = Some(1);
    at(
        c(ev(f.ts_ns, 0xe2, SYN_SENT, ESTABLISHED, 43211, 80)),
        Some(f),
        &mut v,
    );
    v.push(Input::Retransmit(retransmit(
        t0 + 5 * SEC,
        0xe2,
        ESTABLISHED,
        tcp_flags::ACK | tcp_flags::PSH,
    )));
    let mut f = facts(t0 + 20 * SEC, 0xe2, ESTABLISHED, CLOSE);
    f.sk_err = Some(110);
    f.probes_out = Some(3);
    f.total_retrans = Some(2);
    f.bytes_acked = Some(101);
    f.bytes_received = Some(0);
    f.srtt_us = Some(41_000);
    at(
        c(ev(f.ts_ns, 0xe2, ESTABLISHED, CLOSE, 43211, 80)),
        Some(f),
        &mut v,
    );

    // An abortive close (SO_LINGER 0): CLOSE first, then the RST it sends (reason 14).
    at(
        c(ev(t0 + 6 * SEC, 0xe3, CLOSE, SYN_SENT, 0, 81)),
        None,
        &mut v,
    );
    at(
        c(ev(
            t0 + 6 * SEC + MS,
            0xe3,
            SYN_SENT,
            ESTABLISHED,
            43212,
            81,
        )),
        Some(facts(t0 + 6 * SEC + MS, 0xe3, SYN_SENT, ESTABLISHED)),
        &mut v,
    );
    let mut f = facts(t0 + 7 * SEC, 0xe3, ESTABLISHED, CLOSE);
    f.bytes_acked = Some(1);
    f.srtt_us = Some(50);
    at(
        c(ev(f.ts_ns, 0xe3, ESTABLISHED, CLOSE, 43212, 81)),
        Some(f),
        &mut v,
    );
    let mut r = reset(t0 + 7 * SEC + 3 * US, 0xe3, reset_direction::SENT);
    r.reason = 14;
    v.push(Input::Reset(r));

    // A SYN to a port nobody listens on.
    v.push(Input::Reset(refused(t0 + 8 * SEC, 9999, 43000)));
    // Time order, as the reorder window would hand them over (stable: facts stay behind).
    v.sort_by_key(|i| match i {
        Input::Event(e) => e.ts_ns,
        Input::Facts(f) => f.ts_ns,
        Input::Retransmit(r) => r.ts_ns,
        Input::Reset(r) => r.ts_ns,
        Input::Tick { now_ns } => *now_ns,
        Input::Counters(_) | Input::Cgroup { .. } | Input::Listener(_) | Input::Netstat(_) => 0,
    });
    v
}

fn why_config(mode: Mode, format: Format) -> OutputConfig {
    let mut names = vec![String::new(); 15];
    names[1] = "no_socket".into();
    names[14] = "tcp_abort_on_close".into();
    OutputConfig {
        reset_reasons: crate::pipeline::ResetReasons::leak(names),
        summary_at_end: true,
        ..config(mode, format)
    }
}

#[test]
fn why_table() {
    let out = render(why_config(Mode::Connections, Format::Table), &why_inputs(T));
    println!("{out}");
    let line = |port: &str| {
        out.lines()
            .find(|l| l.contains(port))
            .unwrap_or_default()
            .to_string()
    };
    let srv = line("42000");
    assert!(
        srv.contains("server   closed       40.000   40.100    1"),
        "{srv}"
    );
    assert!(srv.contains("SYN-ACK retransmitted"), "{srv}");
    let refused = line("43210");
    assert!(refused.contains("refused"), "{refused}");
    assert!(refused.contains(" RST received; ECONNREFUSED"), "{refused}");
    let ka = line("43211");
    assert!(ka.contains("timed_out"), "{ka}");
    assert!(ka.contains(" keepalive timeout; SYN retransmitted"), "{ka}");
    assert!(line("43212").contains(" RST sent"));
    let r = line("9999");
    assert!(r.contains("refused_in"), "{r}");
    assert!(
        out.contains("SYN-ACK RTT, accepted (n=1): p50 40.000 ms"),
        "{out}"
    );
    assert!(
        out.contains("retransmits: syn 1, synack 1, data 1"),
        "{out}"
    );
    assert!(out.contains("resets: 1 sent, 1 received"), "{out}");
    assert!(out.contains("errors: ETIMEDOUT 1, ECONNREFUSED 1"), "{out}");
    assert!(
        out.contains("refused inbound: 1 (by local port: 9999 1)"),
        "{out}"
    );
}

#[test]
fn why_json() {
    let out = render(why_config(Mode::Connections, Format::Json), &why_inputs(T));
    let objs: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let by_port = |p: u64| {
        objs.iter()
            .find(|o| o["lport"] == p && o["schema"] == "tcpstate.connection.v2")
            .cloned()
            .unwrap_or_default()
    };
    let srv = by_port(9090);
    assert_eq!(srv["synack_rtt_ns"], 40_000_000);
    assert_eq!(srv["srtt_ns"], 40_100_000);
    assert_eq!(srv["min_rtt_ns"], 39_900_000);
    assert_eq!(srv["retransmits"]["synack"], 1);
    // 33 B out + its FIN, 15 B in + the peer's FIN.
    assert_eq!(srv["bytes_acked"], 33);
    assert_eq!(srv["bytes_received"], 15);
    assert_eq!(srv["segs_in"], 6);
    assert_eq!(srv["outcome_basis"], serde_json::Value::Null);
    let refused = by_port(43210);
    assert_eq!(refused["outcome"], "refused");
    assert_eq!(refused["errno"], "ECONNREFUSED");
    assert_eq!(refused["outcome_basis"], "errno");
    assert_eq!(refused["reset"]["direction"], "received");
    assert_eq!(refused["reset"]["reason"], serde_json::Value::Null);
    let ka = by_port(43211);
    assert_eq!(ka["errno"], "ETIMEDOUT");
    assert_eq!(ka["timeout"], "keepalive");
    assert_eq!(ka["outcome"], "timed_out");
    assert_eq!(ka["outcome_basis"], "errno");
    assert_eq!(ka["retransmits"]["syn"], 1);
    assert_eq!(ka["retransmits"]["data"], 1);
    assert_eq!(ka["syn_retransmitted"], true);
    // 100 B out + the SYN; no FIN was acknowledged.
    assert_eq!(ka["bytes_acked"], 100);
    let abort = by_port(43212);
    assert_eq!(abort["reset"]["direction"], "sent");
    assert_eq!(abort["reset"]["reason"], "tcp_abort_on_close");
    assert_eq!(abort["bytes_acked"], 0);
    let r = objs
        .iter()
        .find(|o| o["schema"] == "tcpstate.refused.v1")
        .cloned()
        .unwrap_or_default();
    assert_eq!(r["lport"], 9999);
    assert_eq!(r["rport"], 43000);
    assert_eq!(r["laddr"], "127.0.0.1");
    assert_eq!(r["family"], "ipv4");
}

#[test]
fn why_timeline_shows_retransmits_and_resets_in_place() {
    let out = render(why_config(Mode::Timeline, Format::Table), &why_inputs(T));
    println!("{out}");
    assert!(out.contains("+1000.000 ms  SYN retransmitted"), "{out}");
    assert!(
        out.contains("+5000.000 ms  RST sent") || out.contains("RST sent"),
        "{out}"
    );
    assert!(out.contains("+40.000 ms  RST received"), "{out}");
    assert!(out.contains("data retransmitted"), "{out}");
    assert!(
        out.contains("refused inbound 127.0.0.1:9999 <- 127.0.0.2:43000"),
        "{out}"
    );
}

/// JSON objects of `inputs` through the pipeline (reasons named as in `why_config`).
fn why_objects(mode: Mode, inputs: &[Input]) -> Vec<serde_json::Value> {
    render(why_config(mode, Format::Json), inputs)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn conn_at(objs: &[serde_json::Value], skaddr: &str) -> serde_json::Value {
    objs.iter()
        .find(|o| o["skaddr"] == skaddr)
        .cloned()
        .unwrap_or_default()
}

/// A client 0x1c: connect, established, data, FIN_WAIT1, (retransmits given), FIN_WAIT2, close.
fn client_life(t0: u64, extra: Vec<Input>, close_facts: Option<crate::facts::Facts>) -> Vec<Input> {
    let mut v = vec![
        Input::Event(client(ev(t0, 0x1c, CLOSE, SYN_SENT, 0, 80))),
        Input::Event(client(ev(t0 + MS, 0x1c, SYN_SENT, ESTABLISHED, 41000, 80))),
        Input::Event(client(ev(
            t0 + 10 * MS,
            0x1c,
            ESTABLISHED,
            FIN_WAIT1,
            41000,
            80,
        ))),
    ];
    v.extend(extra);
    v.push(Input::Event(client(ev(
        t0 + 900 * MS,
        0x1c,
        FIN_WAIT1,
        FIN_WAIT2,
        41000,
        80,
    ))));
    v.push(Input::Event(client(ev(
        t0 + 950 * MS,
        0x1c,
        FIN_WAIT2,
        CLOSE,
        41000,
        80,
    ))));
    if let Some(f) = close_facts {
        v.push(Input::Facts(f));
    }
    v
}

#[test]
fn retransmits_split_by_the_segment_flags() {
    use crate::facts::tests::{facts, retransmit};
    use tcpstate_common::tcp_flags::{ACK, FIN, PSH};
    let t0 = T;
    let mut fin = retransmit(t0 + 300 * MS, 0x1c, FIN_WAIT1, FIN | ACK);
    fin.segs = 0; // reported as 0: one segment
    let mut data = retransmit(t0 + 200 * MS, 0x1c, FIN_WAIT1, ACK | PSH);
    data.segs = 3;
    let mut failed = retransmit(t0 + 400 * MS, 0x1c, FIN_WAIT1, FIN | ACK);
    failed.err = -105;
    let mut f = facts(t0 + 950 * MS, 0x1c, FIN_WAIT2, CLOSE);
    f.bytes_acked = Some(3002);
    f.bytes_received = Some(7001);
    f.total_retrans = Some(4);
    let inputs = client_life(
        t0,
        vec![
            Input::Retransmit(data),
            Input::Retransmit(fin),
            Input::Retransmit(failed),
        ],
        Some(f),
    );
    let c = conn_at(&why_objects(Mode::Connections, &inputs), "0x1c");
    assert_eq!(c["retransmits"]["data"], 3, "{c}");
    assert_eq!(c["retransmits"]["fin"], 1, "{c}");
    assert_eq!(c["retransmits"]["failed"], 1, "{c}");
    assert_eq!(c["retransmits"]["syn"], 0, "{c}");
    // 3000 B out: SYN and the acknowledged FIN removed; 7000 B in: the peer's FIN removed.
    assert_eq!(c["bytes_acked"], 3000, "{c}");
    assert_eq!(c["bytes_received"], 7000, "{c}");
    assert_eq!(c["outcome"], "time_wait");
    let table = render(why_config(Mode::Connections, Format::Table), &inputs);
    assert!(
        table.contains(" FIN retransmitted; retransmission failed"),
        "{table}"
    );
    let ladder = render(why_config(Mode::Timeline, Format::Table), &inputs);
    assert!(
        ladder.contains("+200.000 ms  data retransmitted"),
        "{ladder}"
    );
    assert!(
        ladder.contains("+300.000 ms  FIN retransmitted"),
        "{ladder}"
    );
}

#[test]
fn synack_retransmits_join_the_accepted_socket_by_4_tuple() {
    use crate::facts::tests::{facts, synack};
    let accepted = |f: Option<crate::facts::Facts>| {
        let mut v = vec![
            Input::Retransmit(synack(T, LISTENER, 8080, 41000)),
            Input::Retransmit(synack(T + SEC, LISTENER, 8080, 41000)),
            // Another 4-tuple: not this socket's.
            Input::Retransmit(synack(T + SEC, LISTENER, 8080, 41001)),
            Input::Event(server(ev(
                T + 3 * SEC,
                CHILD,
                LISTEN,
                SYN_RECV,
                8080,
                41000,
            ))),
            Input::Event(server(ev(
                T + 3 * SEC + 10 * US,
                CHILD,
                SYN_RECV,
                ESTABLISHED,
                8080,
                41000,
            ))),
        ];
        v.extend(f.map(Input::Facts));
        v
    };
    let objs = why_objects(Mode::Connections, &accepted(None));
    let c = conn_at(&objs, &format!("{CHILD:#x}"));
    assert_eq!(c["retransmits"]["synack"], 2, "{c}");
    assert_eq!(c["synack_rtt_ns"], serde_json::Value::Null);
    // The socket's own (inherited) count wins over the counted events.
    let mut f = facts(T + 3 * SEC + 10 * US, CHILD, SYN_RECV, ESTABLISHED);
    f.total_retrans = Some(1);
    f.srtt_us = Some(40_168);
    let objs = why_objects(Mode::Connections, &accepted(Some(f)));
    let c = conn_at(&objs, &format!("{CHILD:#x}"));
    assert_eq!(c["retransmits"]["synack"], 1, "{c}");
    assert_eq!(c["synack_rtt_ns"], 40_168_000);
    // HS_MS shows the SYN-ACK round trip, and --min-handshake-ms compares it.
    let mut cfg = why_config(Mode::Connections, Format::Table);
    cfg.min_handshake_ns = Some(40 * MS);
    let table = render(cfg, &accepted(Some(f)));
    assert!(table.contains("server   open         40.168"), "{table}");
    cfg.min_handshake_ns = Some(41 * MS);
    assert!(!render(cfg, &accepted(Some(f))).contains("server   open"));
}

#[test]
fn outcome_rules_say_which_facts_decided() {
    use crate::facts::tests::{facts, retransmit};
    use tcpstate_common::tcp_flags::SYN;
    let connect = |close_after: u64, extra: Vec<Input>, f: Option<crate::facts::Facts>| {
        let mut v = vec![Input::Event(client(ev(T, 0x2c, CLOSE, SYN_SENT, 0, 80)))];
        v.extend(extra);
        v.push(Input::Event(client(ev(
            T + close_after,
            0x2c,
            SYN_SENT,
            CLOSE,
            41002,
            80,
        ))));
        v.extend(f.map(Input::Facts));
        let objs = why_objects(Mode::Connections, &v);
        conn_at(&objs, "0x2c")
    };
    // No facts: the 1 s rule.
    let c = connect(30 * MS, vec![], None);
    assert_eq!(
        (&c["outcome"], &c["outcome_basis"]),
        (&"refused".into(), &"timing".into())
    );
    // A retransmitted SYN, seen as an event only: timed out within 1 s.
    let c = connect(
        900 * MS,
        vec![Input::Retransmit(retransmit(
            T + 200 * MS,
            0x2c,
            SYN_SENT,
            SYN,
        ))],
        None,
    );
    assert_eq!(
        (&c["outcome"], &c["outcome_basis"]),
        (&"timed_out".into(), &"retransmits".into())
    );
    // ECONNREFUSED after 3 s (the first SYN was lost): refused, by errno, not timed out.
    let mut f = facts(T + 3 * SEC, 0x2c, SYN_SENT, CLOSE);
    f.sk_err = Some(111);
    f.total_retrans = Some(1);
    let c = connect(3 * SEC, vec![], Some(f));
    assert_eq!(
        (&c["outcome"], &c["outcome_basis"]),
        (&"refused".into(), &"errno".into())
    );
    assert_eq!(c["retransmits"]["syn"], 1);
    assert_eq!(c["syn_retransmitted"], true);
    // ETIMEDOUT: a connect timeout.
    let mut f = facts(T + 3 * SEC, 0x2c, SYN_SENT, CLOSE);
    f.sk_err = Some(110);
    f.total_retrans = Some(6);
    let c = connect(3 * SEC, vec![], Some(f));
    assert_eq!(
        (&c["outcome"], &c["timeout"]),
        (&"timed_out".into(), &"connect".into())
    );
    assert_eq!(c["errno"], "ETIMEDOUT");
    // A soft error (ICMP unreachable) when the hard one is 0.
    let mut f = facts(T + 3 * SEC, 0x2c, SYN_SENT, CLOSE);
    f.sk_err_soft = Some(113);
    f.total_retrans = Some(2);
    let c = connect(3 * SEC, vec![], Some(f));
    assert_eq!(c["errno"], "EHOSTUNREACH");
    assert_eq!(
        (&c["outcome"], &c["outcome_basis"]),
        (&"timed_out".into(), &"retransmits".into())
    );
}

#[test]
fn timeouts_of_established_connections_are_told_apart() {
    use crate::facts::tests::facts;
    let died = |tweak: &dyn Fn(&mut crate::facts::Facts)| {
        let mut f = facts(T + 9 * SEC, 0x3c, ESTABLISHED, CLOSE);
        f.sk_err = Some(110);
        tweak(&mut f);
        let v = vec![
            Input::Event(client(ev(T, 0x3c, CLOSE, SYN_SENT, 0, 80))),
            Input::Event(client(ev(T + MS, 0x3c, SYN_SENT, ESTABLISHED, 41003, 80))),
            Input::Event(client(ev(T + 9 * SEC, 0x3c, ESTABLISHED, CLOSE, 41003, 80))),
            Input::Facts(f),
        ];
        conn_at(&why_objects(Mode::Connections, &v), "0x3c")
    };
    let c = died(&|f| f.probes_out = Some(9));
    assert_eq!(
        (&c["timeout"], &c["outcome"]),
        (&"keepalive".into(), &"timed_out".into())
    );
    // Keepalive also after retransmissions earlier in its life.
    let c = died(&|f| {
        f.probes_out = Some(9);
        f.total_retrans = Some(3);
    });
    assert_eq!(c["timeout"], "keepalive");
    let c = died(&|f| {
        f.packets_out = Some(2);
        f.retransmits = Some(6);
        f.total_retrans = Some(6);
    });
    assert_eq!(c["timeout"], "retransmission");
    let c = died(&|f| {
        f.probes_out = Some(4);
        f.wmem_queued = Some(4096);
    });
    assert_eq!(c["timeout"], "zero_window_probe");
    // A connection the peer reset: ECONNRESET, outcome reset.
    let c = died(&|f| f.sk_err = Some(104));
    assert_eq!(
        (&c["errno"], &c["outcome"], &c["timeout"]),
        (
            &"ECONNRESET".into(),
            &"reset".into(),
            &serde_json::Value::Null
        )
    );
}

#[test]
fn refused_inbound_attempts_in_every_mode_but_the_transition_table() {
    use crate::facts::tests::{refused, reset};
    let mut stray_ack = reset(T + 2 * MS, 0, tcpstate_common::reset_direction::SENT);
    stray_ack.seg_flags = tcpstate_common::tcp_flags::ACK;
    stray_ack.seg_flags_known = 1;
    let inputs = vec![
        Input::Reset(refused(T, 22, 50000)),
        Input::Reset(refused(T + MS, 22, 50001)),
        Input::Reset(stray_ack),
    ];
    let objs = why_objects(Mode::Transitions, &inputs);
    let refused_objs: Vec<_> = objs
        .iter()
        .filter(|o| o["schema"] == "tcpstate.refused.v1")
        .collect();
    assert_eq!(
        refused_objs.len(),
        2,
        "a stray ACK's RST is no refused attempt"
    );
    let summary = objs.last().cloned().unwrap_or_default();
    assert_eq!(summary["why"]["refused_inbound"], 2);
    assert_eq!(summary["why"]["refused_by_port"][0]["port"], 22);
    assert_eq!(summary["why"]["refused_by_port"][0]["count"], 2);
    assert_eq!(summary["why"]["unjoined"], 1);
    let table = render(why_config(Mode::Transitions, Format::Table), &inputs);
    assert!(!table.contains("refused_in"), "{table}");
    assert!(
        table.contains("refused inbound: 2 (by local port: 22 2)"),
        "{table}"
    );
}

#[test]
fn a_reset_received_in_last_ack_leaves_the_fin_unacknowledged() {
    use crate::facts::tests::{facts, reset};
    let mut f = facts(T + 5 * MS, CHILD, LAST_ACK, CLOSE);
    f.bytes_acked = Some(100);
    f.bytes_received = Some(51);
    let v = vec![
        Input::Event(server(ev(T, CHILD, LISTEN, SYN_RECV, 8080, 41000))),
        Input::Event(server(ev(
            T + 10,
            CHILD,
            SYN_RECV,
            ESTABLISHED,
            8080,
            41000,
        ))),
        Input::Event(server(ev(
            T + MS,
            CHILD,
            ESTABLISHED,
            CLOSE_WAIT,
            8080,
            41000,
        ))),
        Input::Event(server(ev(
            T + 2 * MS,
            CHILD,
            CLOSE_WAIT,
            LAST_ACK,
            8080,
            41000,
        ))),
        Input::Reset(reset(
            T + 5 * MS - 1,
            CHILD,
            tcpstate_common::reset_direction::RECEIVED,
        )),
        Input::Event(server(ev(T + 5 * MS, CHILD, LAST_ACK, CLOSE, 8080, 41000))),
        Input::Facts(f),
    ];
    let c = conn_at(&why_objects(Mode::Connections, &v), &format!("{CHILD:#x}"));
    assert_eq!(c["bytes_acked"], 100, "{c}");
    assert_eq!(c["bytes_received"], 50, "{c}");
    assert_eq!(c["reset"]["direction"], "received");
}

/// Every new field through record and replay: the replayed output equals the live one byte for
/// byte, in every mode.
#[test]
fn why_inputs_replay_byte_for_byte() {
    use crate::record::{Header, RecordReader, RecordWriter};
    let inputs = why_inputs(T);
    let mut names = vec![String::new(); 15];
    names[1] = "no_socket".into();
    names[14] = "tcp_abort_on_close".into();
    let mut header = Header::new("6.18".into(), T, 1_700_000_000_000_000_000, "test".into());
    header.reset_reasons = names;
    let mut w = RecordWriter::new(Vec::new(), &header).unwrap();
    for i in &inputs {
        w.write(i).unwrap();
    }
    let bytes = w.finish().unwrap();
    let (reader, h) = RecordReader::open(&bytes[..]).unwrap();
    let replayed: Vec<Input> = reader.map(|r| r.unwrap()).collect();
    assert_eq!(replayed, inputs);
    for (mode, format) in [
        (Mode::Connections, Format::Table),
        (Mode::Connections, Format::Json),
        (Mode::Timeline, Format::Table),
        (Mode::Transitions, Format::Json),
    ] {
        let live = render(why_config(mode, format), &inputs);
        let cfg = OutputConfig {
            reset_reasons: crate::pipeline::ResetReasons::leak(h.reset_reasons.clone()),
            ..why_config(mode, format)
        };
        assert_eq!(render(cfg, &replayed), live, "{mode:?} {format:?}");
    }
}

#[test]
fn a_retransmit_storm_keeps_the_states_on_the_ladder() {
    use crate::facts::tests::retransmit;
    let storm: Vec<Input> = (0..40)
        .map(|i| {
            Input::Retransmit(retransmit(
                T + 20 * MS + i * MS,
                0x1c,
                FIN_WAIT1,
                tcpstate_common::tcp_flags::ACK,
            ))
        })
        .collect();
    let inputs = client_life(T, storm, None);
    let c = conn_at(&why_objects(Mode::Connections, &inputs), "0x1c");
    assert_eq!(c["retransmits"]["data"], 40);
    assert_eq!(c["transitions"].as_array().map(Vec::len), Some(5), "{c}");
    assert_eq!(c["transitions_overflow"], false);
    let ladder = render(why_config(Mode::Timeline, Format::Table), &inputs);
    assert_eq!(ladder.matches("data retransmitted").count(), 6, "{ladder}");
    assert!(
        ladder.contains("more retransmits or resets than shown"),
        "{ladder}"
    );
    assert!(ladder.contains("FIN_WAIT2 -> CLOSE"), "{ladder}");
}

/// The conversation with the server in a pod's container and both ends in a namespace.
fn in_a_pod() -> Vec<Input> {
    const POD: &str = "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod0b6c3a4e_6f8d_4c1a_9e2b_7d5f1a2b3c4d.slice/cri-containerd-4f2d7a9c1b3e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8.scope";
    let mut v = vec![Input::Cgroup {
        id: 77,
        path: POD.into(),
    }];
    for mut e in conversation() {
        e.netns = 4026532000;
        if e.owner_pid == 7 {
            e.cgroup_id = 77;
        }
        v.push(Input::Event(e));
    }
    v
}

#[test]
fn container_columns_in_both_tables_and_fields_in_json() {
    let mut cfg = config(Mode::Connections, Format::Table);
    cfg.containers = true;
    let out = render(cfg, &in_a_pod());
    let mut lines = out.lines();
    let header = lines.next().unwrap();
    assert!(
        header.contains(
            "CLOSE_MS NETNS      POD_UID                              CONTAINER    CGROUP "
        ),
        "{header}"
    );
    let server = out.lines().find(|l| l.contains(" server ")).unwrap();
    assert!(
        server.contains(
            " 4026532000 0b6c3a4e-6f8d-4c1a-9e2b-7d5f1a2b3c4d 4f2d7a9c1b3e /kubepods.slice/"
        ),
        "{server}"
    );
    let client = out.lines().find(|l| l.contains(" client ")).unwrap();
    assert!(
        client.contains(" 4026532000 -                                    -            -"),
        "{client}"
    );
    // Without --containers the table is as before.
    let plain = render(config(Mode::Connections, Format::Table), &in_a_pod());
    assert!(
        !plain.contains("POD_UID") && !plain.contains("4026532000"),
        "{plain}"
    );

    let mut cfg = config(Mode::Transitions, Format::Table);
    cfg.containers = true;
    let out = render(cfg, &in_a_pod());
    assert!(
        out.lines()
            .next()
            .unwrap()
            .ends_with("CGROUP                                  "),
        "{out}"
    );
    let listen = out.lines().find(|l| l.contains("-> LISTEN")).unwrap();
    assert!(
        listen.contains("0b6c3a4e-6f8d-4c1a-9e2b-7d5f1a2b3c4d 4f2d7a9c1b3e"),
        "{listen}"
    );

    let out = render(config(Mode::Connections, Format::Json), &in_a_pod());
    let server: serde_json::Value = out
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap())
        .find(|v| v["role"] == "server")
        .unwrap();
    assert_eq!(server["pod_uid"], "0b6c3a4e-6f8d-4c1a-9e2b-7d5f1a2b3c4d");
    assert_eq!(
        server["container_id"],
        "4f2d7a9c1b3e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8"
    );
    assert_eq!(server["cgroup_id"], 77);
    assert_eq!(server["netns"], 4026532000u32);
    assert!(server["cgroup"]
        .as_str()
        .unwrap()
        .starts_with("/kubepods.slice/"));
}

/// A task name that is not ASCII (valid UTF-8 or not) is padded by characters, like an ASCII
/// one of the same length.
#[test]
fn non_ascii_task_names_keep_the_table_aligned() {
    let table = |name: &[u8]| {
        let evs: Vec<Event> = conversation()
            .into_iter()
            .map(|mut e| {
                if e.owner_pid == 7 {
                    e.owner_comm = [0; 16];
                    e.owner_comm[..name.len()].copy_from_slice(name);
                }
                e
            })
            .collect();
        render(config(Mode::Connections, Format::Table), &events(&evs))
    };
    let ascii = table(b"hxllo");
    assert!(ascii.contains("hxllo "));
    for (raw, shown) in [
        ("h\u{e9}llo".as_bytes(), "h\u{e9}llo"),
        (&b"h\xffllo"[..], "h\u{fffd}llo"),
    ] {
        assert_eq!(table(raw).replace(shown, "hxllo"), ascii);
    }
}
