//! Issue 10 ("why, not only when") end to end: `tcpstate trace -o json --record` over the
//! delayed link (two network namespaces, 2 x 20 ms), each scenario steered by the relay (a
//! chosen SYN, SYN-ACK, data segment or FIN dropped, the path going dark) and by tcppeer
//! (keepalive, TCP_USER_TIMEOUT, SYN retries, RST on close). Needs root.
//!
//! Each test first checks its scenario's ground truth (the relay's counts and log, tcppeer's
//! own report), then the issue-10 fields tcpstate printed, in the `expect_tcpstate_*` helpers.
//! Those are the integration targets: they fail until the kernel side (`why-kernel`) and the
//! user-space side (`why-user`) are merged. `TCPSTATE_WHY_GROUND_TRUTH_ONLY=1` stops each test
//! after its ground truth (with a line saying so), to check the test network alone; CI
//! (`CI=true`) ignores it, and there a test that cannot run (not root) fails instead of skipping.
//! Every test also checks, in `Trace::stop_objects`, that replaying the recording prints the
//! live output byte for byte: with the new fields once merged.
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;
mod support;

use std::{
    net::SocketAddr,
    time::{Duration, Instant},
};

use probe_util::trace::Trace;
use serde_json::Value;
use support::{
    field_u64, mono_ns, run_client, Counts, DelayedLink, Dir, DropRule, Kind, LinkConfig,
    PeerOutput, PeerProcess,
};

const DELAY: Duration = Duration::from_millis(20);
const RTT_MS: f64 = 40.0;
const LIMIT: Duration = Duration::from_secs(25);

fn ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true" || v == "1")
}

/// Root, or a skip line; in CI a test that cannot run fails.
fn can_run(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    assert!(
        !ci(),
        "{test}: needs root; CI=true, so this fails instead of skipping"
    );
    println!("{test}: skipped: needs root (run `cargo xtask test` as root)");
    false
}

/// Whether to go on to tcpstate's issue-10 fields after the ground truth (see the module doc).
/// Whether tcpstate itself reported lost events (the kernel skipped one of its programs because
/// another BPF program ran on that CPU, or a full ring buffer): then exact per-connection counts
/// cannot be expected, and tcpstate said so, which is the contract. On a quiet machine (CI) this
/// does not happen; under a heavy load of other BPF tracing it can.
fn events_were_lost(test: &str, objs: &[Value]) -> bool {
    let lost: u64 = objs
        .iter()
        .filter(|v| v["schema"] == "tcpstate.summary.v2")
        .filter_map(|v| v["kernel"]["lost"].as_u64())
        .max()
        .unwrap_or(0);
    if lost > 0 {
        println!("{test}: tcpstate reported {lost} lost events; its exact counts are not checked");
    }
    lost > 0
}

fn check_tcpstate_fields(test: &str) -> bool {
    let only = std::env::var("TCPSTATE_WHY_GROUND_TRUTH_ONLY").is_ok_and(|v| v == "1");
    if only && !ci() {
        println!("{test}: ground truth checked; tcpstate's issue-10 fields NOT checked");
        return false;
    }
    true
}

/// Ports of this process's tests (the tracer filters on them), apart from the other test
/// binaries' ranges.
fn test_port(salt: u16) -> u16 {
    46000 + (std::process::id() as u16 % 1000) * 16 + salt
}

fn link(cfg: LinkConfig) -> DelayedLink {
    DelayedLink::new(cfg).unwrap_or_else(|e| panic!("cannot build the delayed link: {e}"))
}

fn link_with(drops: Vec<DropRule>) -> DelayedLink {
    link(LinkConfig {
        drops,
        ..LinkConfig::with_delay(DELAY)
    })
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// The connection objects (any schema version) among what the tracer printed.
fn connections(objs: &[Value]) -> Vec<&Value> {
    objs.iter()
        .filter(|v| {
            v["schema"]
                .as_str()
                .is_some_and(|s| s.starts_with("tcpstate.connection."))
        })
        .collect()
}

/// The connection of `role` whose local port is `lport`.
fn conn<'a>(objs: &'a [Value], role: &str, lport: u16) -> &'a Value {
    let found: Vec<&Value> = connections(objs)
        .into_iter()
        .filter(|c| c["role"] == role && c["lport"] == lport)
        .collect();
    assert_eq!(found.len(), 1, "one {role} on port {lport} in {objs:#?}");
    found[0]
}

/// The client's and the (accepted) server's connection of the client port `cport`.
fn pair(objs: &[Value], cport: u16, sport: u16) -> (&Value, &Value) {
    let client = conn(objs, "client", cport);
    let server = connections(objs)
        .into_iter()
        .find(|c| c["role"] == "server" && c["lport"] == sport && c["rport"] == cport)
        .unwrap_or_else(|| panic!("no server connection for client port {cport}: {objs:#?}"));
    (client, server)
}

/// The only connection line of a tcppeer run.
fn only_conn(out: &PeerOutput) -> &Value {
    let conns = out.conns();
    assert_eq!(conns.len(), 1, "{:#?} {}", out.lines, out.stderr);
    conns[0]
}

fn port_of(rec: &Value) -> u16 {
    u16::try_from(field_u64(rec, "local_port")).expect("port")
}

fn connect_ms(rec: &Value) -> f64 {
    ms(field_u64(rec, "connect_end_ns") - field_u64(rec, "connect_start_ns"))
}

/// A server in B accepting `accept` connections with `server_args`, and one client run in A
/// with `client_args`; returns both outputs. Both processes are bounded by LIMIT.
fn exchange(
    link: &DelayedLink,
    port: u16,
    accept: u32,
    server_args: &[&str],
    client_args: &[&str],
) -> (PeerOutput, PeerOutput) {
    let target = SocketAddr::new(link.addr_b_v4().into(), port);
    exchange_at(link, target, accept, server_args, client_args)
}

/// `exchange` with the server at `target` (B's IPv4 or IPv6 address).
fn exchange_at(
    link: &DelayedLink,
    target: SocketAddr,
    accept: u32,
    server_args: &[&str],
    client_args: &[&str],
) -> (PeerOutput, PeerOutput) {
    let target = target.to_string();
    let accept = accept.to_string();
    let mut args = vec![
        "--listen",
        &target,
        "--netns",
        link.ns_b(),
        "--accept",
        &accept,
    ];
    args.extend_from_slice(server_args);
    let (srv, _) = PeerProcess::server(args).expect("server starts");
    let mut args = vec!["--connect", &target, "--netns", link.ns_a()];
    args.extend_from_slice(client_args);
    let client = run_client(args, LIMIT).expect("client runs");
    let server = srv.finish(LIMIT).expect("server ends");
    (server, client)
}

fn u(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

fn retransmits(c: &Value, kind: &str) -> u64 {
    c["retransmits"][kind]
        .as_u64()
        .unwrap_or_else(|| panic!("no retransmits.{kind} in {c}"))
}

fn print_counts(label: &str, c: &Counts) {
    println!("relay {label}: {c:?}");
}

// ---------------------------------------------------------------------------------------------
// Integration targets: tcpstate's issue-10 fields. These fail until why-kernel and why-user
// are merged.

fn expect_tcpstate_synack_rtt(server: &Value, measured_ns: u64) {
    let got = u(server, "synack_rtt_ns");
    let diff = got.abs_diff(measured_ns);
    assert!(
        diff <= 500_000,
        "synack_rtt_ns {got} vs the link's {measured_ns} (diff {diff} ns): {server}"
    );
}

fn expect_tcpstate_synack_retransmits(client: &Value, server: &Value, synacks: u32, syns: u32) {
    assert_eq!(
        retransmits(server, "synack"),
        u64::from(synacks) - 1,
        "{server}"
    );
    assert_eq!(retransmits(client, "syn"), u64::from(syns) - 1, "{client}");
    // About 1 s longer than the link's round trip, as tcpstate shows it too.
    let hs = client["handshake_ms"].as_f64().expect("handshake_ms");
    assert!(
        (1000.0 + RTT_MS - 3.0..1000.0 + RTT_MS + 150.0).contains(&hs),
        "{client}"
    );
}

fn expect_tcpstate_syn_retransmits(client: &Value, n: u64) {
    assert_eq!(retransmits(client, "syn"), n, "{client}");
}

fn expect_tcpstate_data_retransmits(
    client: &Value,
    relay_resent: u32,
    relay_bare_fins_resent: u64,
) {
    let data = retransmits(client, "data");
    println!("tcpstate retransmits.data {data}, relay saw {relay_resent} resent");
    assert!(data >= 1, "{client}");
    assert_eq!(
        retransmits(client, "fin"),
        relay_bare_fins_resent,
        "{client}"
    );
}

fn expect_tcpstate_fin_retransmits(client: &Value) {
    assert_eq!(retransmits(client, "fin"), 1, "{client}");
    assert_eq!(retransmits(client, "data"), 0, "{client}");
}

fn expect_tcpstate_reset_directions(closer: &Value, other: &Value) {
    assert_eq!(closer["reset"]["direction"], "sent", "{closer}");
    assert_eq!(other["reset"]["direction"], "received", "{other}");
    assert_eq!(other["errno"], "ECONNRESET", "{other}");
    println!(
        "reset reasons: sent {} / received {}",
        closer["reset"]["reason"], other["reset"]["reason"]
    );
}

fn expect_tcpstate_errno(c: &Value, errno: &str, timeout: Option<&str>) {
    assert_eq!(c["errno"], errno, "{c}");
    match timeout {
        Some(t) => assert_eq!(c["timeout"], t, "{c}"),
        None => assert!(c["timeout"].is_null(), "{c}"),
    }
    assert_eq!(c["outcome_basis"], "errno", "{c}");
}

fn expect_tcpstate_refused_inbound(objs: &[Value], link: &DelayedLink, port: u16, cport: u16) {
    let refused: Vec<&Value> = objs
        .iter()
        .filter(|v| v["schema"] == "tcpstate.refused.v1")
        .collect();
    assert_eq!(refused.len(), 1, "one refused attempt in {objs:#?}");
    let r = refused[0];
    assert_eq!(r["family"], "ipv4", "{r}");
    assert_eq!(r["laddr"], link.addr_b_v4().to_string(), "{r}");
    assert_eq!(r["lport"], port, "{r}");
    assert_eq!(r["raddr"], link.addr_a_v4().to_string(), "{r}");
    assert_eq!(r["rport"], cport, "{r}");
    assert!(
        r["ts_ns"].as_u64().is_some() && r["unix_ns"].as_i64().is_some(),
        "{r}"
    );
}

fn expect_tcpstate_bytes(c: &Value, acked: u64, received: u64) {
    assert_eq!(u(c, "bytes_acked"), acked, "{c}");
    assert_eq!(u(c, "bytes_received"), received, "{c}");
}

/// Every issue-10 field is present (null or of its type) in a connection object.
fn expect_tcpstate_new_fields_present(c: &Value) {
    assert_ne!(
        c["schema"], "tcpstate.connection.v1",
        "a new schema version: {c}"
    );
    let obj = c.as_object().expect("object");
    let numbers = [
        "synack_rtt_ns",
        "srtt_ns",
        "min_rtt_ns",
        "bytes_acked",
        "bytes_received",
        "bytes_retrans",
        "segs_in",
        "segs_out",
    ];
    for key in numbers {
        let v = obj.get(key).unwrap_or_else(|| panic!("no {key} in {c}"));
        assert!(v.is_null() || v.is_u64(), "{key}: {v}");
    }
    for key in ["errno", "timeout", "outcome_basis"] {
        let v = obj.get(key).unwrap_or_else(|| panic!("no {key} in {c}"));
        assert!(v.is_null() || v.is_string(), "{key}: {v}");
    }
    let r = obj.get("retransmits").expect("retransmits");
    for kind in ["syn", "synack", "data", "fin", "failed"] {
        assert!(
            r[kind].is_u64() || r[kind].is_null(),
            "retransmits.{kind}: {r}"
        );
    }
    let reset = obj.get("reset").expect("reset");
    assert!(
        reset.is_null() || (reset["direction"].is_string() && reset.get("reason").is_some()),
        "reset: {reset}"
    );
}

// ---------------------------------------------------------------------------------------------

/// The server's SYN-ACK -> ACK round trip, from the relay's log: the SYN-ACK left B when the
/// relay read it (a wake-up after the server sent it); the client's ACK reached B one delay,
/// plus the relay's lateness in writing it, after the relay read it. What is left out (the
/// relay's wake-up, the server's own processing) is a few tens of microseconds.
fn server_handshake_rtt_ns(link: &DelayedLink, cport: u16) -> u64 {
    let (log, _) = link.log();
    let synack = log
        .iter()
        .find(|s| s.dir == Dir::BToA && s.tcp.is(Kind::SynAck) && s.tcp.dport == cport)
        .expect("SYN-ACK in the relay's log");
    let ack = log
        .iter()
        .find(|s| {
            s.dir == Dir::AToB
                && s.tcp.sport == cport
                && s.tcp.flags & support::relay::SYN == 0
                && s.at_ns >= synack.at_ns
        })
        .expect("the handshake's ACK in the relay's log");
    let (late_mean, _) = link.lateness();
    ack.at_ns - synack.at_ns + DELAY.as_nanos() as u64 + late_mean.as_nanos() as u64
}

#[test]
fn why_synack_rtt_on_the_server_matches_the_link() {
    const NAME: &str = "why_synack_rtt_on_the_server_matches_the_link";
    if !can_run(NAME) {
        return;
    }
    let link = link_with(Vec::new());
    let port = test_port(0);
    let trace = Trace::start(port, &[]);
    let (server, client) = exchange(
        &link,
        port,
        5,
        &["--realtime"],
        &["--count", "5", "--realtime"],
    );
    server.assert_success();
    client.assert_success();
    let objs = trace.stop_objects();

    // Ground truth: the relay's view of each handshake agrees with the server kernel's own
    // first RTT sample (tcppeer reads TCP_INFO right after accept).
    let mut measured = Vec::new();
    for rec in client.conns() {
        let cport = port_of(rec);
        let m = server_handshake_rtt_ns(&link, cport);
        let srv = server
            .conns()
            .into_iter()
            .find(|s| field_u64(s, "remote_port") == u64::from(cport))
            .expect("server record");
        let kernel_ns = field_u64(srv, "kernel_rtt_us") * 1000;
        println!(
            "port {cport}: relay-measured server RTT {:.3} ms, kernel {:.3} ms",
            ms(m),
            ms(kernel_ns)
        );
        assert!(m >= 2 * DELAY.as_nanos() as u64, "{m}");
        assert!(
            m.abs_diff(kernel_ns) <= 500_000,
            "relay {m} vs kernel {kernel_ns}"
        );
        measured.push((cport, m));
    }
    assert_eq!(measured.len(), 5);
    let (late_mean, late_max) = link.lateness();
    println!("relay lateness: mean {late_mean:?}, max {late_max:?}");
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    for (cport, m) in measured {
        let (_, s) = pair(&objs, cport, port);
        expect_tcpstate_synack_rtt(s, m);
    }
}

#[test]
fn why_first_synack_dropped() {
    first_synack_dropped("why_first_synack_dropped", false);
}

#[test]
fn why_first_synack_dropped_ipv6() {
    first_synack_dropped("why_first_synack_dropped_ipv6", true);
}

fn first_synack_dropped(name: &str, v6: bool) {
    if !can_run(name) {
        return;
    }
    let link = link_with(vec![DropRule::first(Dir::BToA, Kind::SynAck)]);
    let port = test_port(if v6 { 15 } else { 1 });
    let trace = Trace::start(port, &[]);
    let ip = if v6 {
        link.addr_b_v6().into()
    } else {
        link.addr_b_v4().into()
    };
    let (server, client) = exchange_at(&link, SocketAddr::new(ip, port), 1, &[], &[]);
    server.assert_success();
    client.assert_success();
    let objs = trace.stop_objects();

    let (a, b) = (link.counts(Dir::AToB), link.counts(Dir::BToA));
    print_counts("A->B", &a);
    print_counts("B->A", &b);
    let rec = only_conn(&client);
    assert_eq!(rec["result"], "ok");
    let took = connect_ms(rec);
    println!("connect with the first SYN-ACK lost: {took:.3} ms");
    // One SYN-ACK lost, resent (by the server's timer or on the client's resent SYN).
    assert_eq!(b.dropped_synack, 1);
    assert!(b.synack >= 2, "{b:?}");
    assert_eq!(
        b.retransmits,
        b.synack - 1,
        "every SYN-ACK after the first resends it"
    );
    assert_eq!(a.dropped_syn, 0);
    assert!((1000.0 + RTT_MS - 3.0..1000.0 + RTT_MS + 150.0).contains(&took));
    if !check_tcpstate_fields(name) {
        return;
    }
    let (c, s) = pair(&objs, port_of(rec), port);
    expect_tcpstate_synack_retransmits(c, s, b.synack, a.syn);
}

#[test]
fn why_first_syn_dropped() {
    const NAME: &str = "why_first_syn_dropped";
    if !can_run(NAME) {
        return;
    }
    let link = link_with(vec![DropRule::first(Dir::AToB, Kind::Syn)]);
    let port = test_port(2);
    let trace = Trace::start(port, &[]);
    let (server, client) = exchange(&link, port, 1, &[], &[]);
    server.assert_success();
    client.assert_success();
    let objs = trace.stop_objects();

    let a = link.counts(Dir::AToB);
    print_counts("A->B", &a);
    let rec = only_conn(&client);
    assert_eq!(rec["result"], "ok");
    assert_eq!((a.syn, a.dropped_syn, a.retransmits), (2, 1, 1));
    assert_eq!(link.counts(Dir::BToA).synack, 1);
    assert!(connect_ms(rec) >= 1000.0 + RTT_MS - 3.0);
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    expect_tcpstate_syn_retransmits(conn(&objs, "client", port_of(rec)), 1);
}

#[test]
fn why_one_data_segment_dropped() {
    const NAME: &str = "why_one_data_segment_dropped";
    if !can_run(NAME) {
        return;
    }
    const N: u64 = 30_000;
    let link = link_with(vec![DropRule {
        dir: Dir::AToB,
        kind: Kind::Data,
        nth: 3,
    }]);
    let port = test_port(3);
    let trace = Trace::start(port, &[]);
    let (server, client) = exchange(&link, port, 1, &[], &["--send", &N.to_string()]);
    server.assert_success();
    client.assert_success();
    let objs = trace.stop_objects();

    let a = link.counts(Dir::AToB);
    print_counts("A->B", &a);
    let rec = only_conn(&client);
    assert_eq!(field_u64(rec, "bytes_sent"), N);
    assert_eq!(field_u64(only_conn(&server), "bytes_received"), N);
    assert_eq!(a.dropped_data, 1);
    assert!(a.data_retransmits >= 1, "{a:?}");
    assert_eq!(a.new_payload_bytes, N);
    assert_eq!(a.dropped_fin, 0);
    // The FIN may ride on the last data segment; resent, that is data. A FIN resent alone
    // (none expected: the loss is repaired long before the end) is a FIN retransmit.
    let (log, _) = link.log();
    let bare_fins_resent = log
        .iter()
        .filter(|s| s.dir == Dir::AToB && s.retransmit && s.tcp.is(Kind::Fin))
        .filter(|s| s.tcp.payload_len == 0)
        .count() as u64;
    println!(
        "FIN segments A->B: {}, resent alone: {bare_fins_resent}",
        a.fin
    );
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    expect_tcpstate_data_retransmits(
        conn(&objs, "client", port_of(rec)),
        a.data_retransmits,
        bare_fins_resent,
    );
}

#[test]
fn why_first_fin_dropped() {
    const NAME: &str = "why_first_fin_dropped";
    if !can_run(NAME) {
        return;
    }
    let link = link_with(vec![DropRule::first(Dir::AToB, Kind::Fin)]);
    let port = test_port(4);
    let trace = Trace::start(port, &[]);
    // No data: the client's FIN travels alone (data resent with a FIN would be data).
    let (server, client) = exchange(&link, port, 1, &[], &[]);
    server.assert_success();
    client.assert_success();
    let objs = trace.stop_objects();

    let a = link.counts(Dir::AToB);
    print_counts("A->B", &a);
    let rec = only_conn(&client);
    let srv = only_conn(&server);
    assert!(srv["error"].is_null() && srv["eof_ns"].is_u64(), "{srv}");
    assert_eq!((a.fin, a.dropped_fin, a.retransmits), (2, 1, 1));
    assert_eq!(a.data, 0);
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    expect_tcpstate_fin_retransmits(conn(&objs, "client", port_of(rec)));
}

#[test]
fn why_linger0_close_reset_directions() {
    const NAME: &str = "why_linger0_close_reset_directions";
    if !can_run(NAME) {
        return;
    }
    let link = link_with(Vec::new());
    let port = test_port(5);
    let trace = Trace::start(port, &[]);
    // The client waits so that the server has accepted before the RST arrives.
    let (server, client) = exchange(
        &link,
        port,
        1,
        &[],
        &["--send", "100", "--linger0", "--close-after-ms", "200"],
    );
    server.assert_success();
    client.assert_success();
    let objs = trace.stop_objects();

    let (a, b) = (link.counts(Dir::AToB), link.counts(Dir::BToA));
    print_counts("A->B", &a);
    let rec = only_conn(&client);
    let srv = only_conn(&server);
    assert_eq!((a.rst, a.fin), (1, 0), "the close sent one RST and no FIN");
    assert_eq!((b.rst, b.fin), (0, 0));
    assert_eq!(srv["io_errno_name"], "ECONNRESET", "{srv}");
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    let (c, s) = pair(&objs, port_of(rec), port);
    expect_tcpstate_reset_directions(c, s);
}

#[test]
fn why_refused_connect_has_its_errno() {
    const NAME: &str = "why_refused_connect_has_its_errno";
    if !can_run(NAME) {
        return;
    }
    let link = link_with(Vec::new());
    let port = test_port(6);
    let trace = Trace::start(port, &[]);
    let target = format!("{}:{port}", link.addr_b_v4());
    let client = run_client(["--connect", &target, "--netns", link.ns_a()], LIMIT).expect("client");
    client.assert_success();
    let objs = trace.stop_objects();

    let rec = only_conn(&client);
    assert_eq!(rec["result"], "refused");
    assert_eq!(rec["errno_name"], "ECONNREFUSED");
    assert_eq!(link.counts(Dir::BToA).rst, 1);
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    expect_tcpstate_errno(conn(&objs, "client", port_of(rec)), "ECONNREFUSED", None);
}

#[test]
fn why_refused_inbound_attempt_is_reported() {
    const NAME: &str = "why_refused_inbound_attempt_is_reported";
    if !can_run(NAME) {
        return;
    }
    let link = link_with(Vec::new());
    let port = test_port(7);
    let trace = Trace::start(port, &[]);
    let target = format!("{}:{port}", link.addr_b_v4());
    let client = run_client(["--connect", &target, "--netns", link.ns_a()], LIMIT).expect("client");
    client.assert_success();
    let objs = trace.stop_objects();

    let rec = only_conn(&client);
    assert_eq!(rec["result"], "refused");
    // B's kernel answered the SYN with a RST (the refusal to report), nothing else.
    let b = link.counts(Dir::BToA);
    assert_eq!((b.rst, b.segments), (1, 1), "{b:?}");
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    expect_tcpstate_refused_inbound(&objs, &link, port, port_of(rec));
}

#[test]
fn why_timed_out_connect_has_its_errno() {
    const NAME: &str = "why_timed_out_connect_has_its_errno";
    if !can_run(NAME) {
        return;
    }
    let link = link(LinkConfig {
        blackhole: true,
        ..LinkConfig::with_delay(DELAY)
    });
    let port = test_port(8);
    let trace = Trace::start(port, &[]);
    let target = format!("{}:{port}", link.addr_b_v4());
    // One SYN retransmit: the kernel gives up ~3 s after the first SYN (1 s + 2 s).
    let client = run_client(
        [
            "--connect",
            &target,
            "--netns",
            link.ns_a(),
            "--syn-retries",
            "1",
            "--timeout-s",
            "10",
        ],
        LIMIT,
    )
    .expect("client");
    client.assert_success();
    let objs = trace.stop_objects();

    let a = link.counts(Dir::AToB);
    print_counts("A->B", &a);
    let rec = only_conn(&client);
    let took = connect_ms(rec);
    println!("connect gave up after {took:.3} ms");
    assert_eq!(rec["result"], "timeout");
    assert_eq!(
        rec["errno_name"], "ETIMEDOUT",
        "the kernel's, not SO_SNDTIMEO's"
    );
    // SYN_SENT's first retransmits are 1 s apart on this kernel (tcp_syn_linear_timeouts,
    // 6.7+), so the 3 s that one retry allows hold two: count what the relay saw.
    assert!(a.syn >= 2, "{a:?}");
    assert_eq!((a.blackholed, a.retransmits), (u64::from(a.syn), a.syn - 1));
    assert!((2900.0..3400.0).contains(&took), "{took}");
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    let c = conn(&objs, "client", port_of(rec));
    expect_tcpstate_errno(c, "ETIMEDOUT", Some("connect"));
    expect_tcpstate_syn_retransmits(c, u64::from(a.syn - 1));
}

/// How an established connection dies when its path goes dark.
#[derive(Clone, Copy, PartialEq)]
enum Death {
    /// Idle, keepalive 1 s / 1 s / 2 probes.
    Keepalive,
    /// Writing 100 B every 100 ms, TCP_USER_TIMEOUT 1.5 s.
    Retransmission,
}

const KEEPCNT: usize = 2;

/// A connection that is established (and, with `earlier_retransmit`, has recovered from a lost
/// data segment), then loses its path both ways. Returns after the ground truth checks, with
/// what tcpstate printed and the client's local port.
fn dark_path(name: &str, port: u16, death: Death, earlier_retransmit: bool) -> (Vec<Value>, u16) {
    let drops = if earlier_retransmit {
        vec![DropRule::first(Dir::AToB, Kind::Data)]
    } else {
        Vec::new()
    };
    let link = link_with(drops);
    let trace = Trace::start(port, &[]);
    let target = format!("{}:{port}", link.addr_b_v4());
    // The server closes with RST when the test ends it, so nothing lingers on the dark path.
    let (srv, _) = PeerProcess::server([
        "--listen",
        &target,
        "--netns",
        link.ns_b(),
        "--linger0",
        "--timeout-s",
        "20",
    ])
    .expect("server");
    let mut args = vec![
        "--connect",
        &target,
        "--netns",
        link.ns_a(),
        "--timeout-s",
        "15",
        "--send",
        "1000",
    ];
    match death {
        Death::Keepalive => args.extend_from_slice(&["--hold-idle", "--keepalive", "1,1,2"]),
        Death::Retransmission => {
            args.extend_from_slice(&["--trickle-ms", "100", "--user-timeout-ms", "1500"])
        }
    }
    let mut client = PeerProcess::spawn("client", args).expect("client");
    let connected = client
        .wait_event("connected", Duration::from_secs(5))
        .expect("connected");
    let cport = port_of(&connected);
    if earlier_retransmit {
        let deadline = Instant::now() + Duration::from_secs(5);
        while link.counts(Dir::AToB).data_retransmits == 0 {
            assert!(
                Instant::now() < deadline,
                "no retransmission of the lost segment"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    // Let the data (or its retransmission) be acknowledged: many round trips.
    std::thread::sleep(Duration::from_millis(300));
    let before = link.counts(Dir::AToB);
    let dark_at = mono_ns();
    link.set_dark(true);
    let out = client.finish(LIMIT).expect("client ends");
    drop(srv);
    let objs = trace.stop_objects();

    out.assert_success();
    let rec = only_conn(&out);
    let died_ms = ms(field_u64(rec, "close_ns") - dark_at);
    let after = link.counts(Dir::AToB);
    print_counts("A->B before dark", &before);
    print_counts("A->B at the end", &after);
    println!("{name}: client gave up {died_ms:.0} ms after the path went dark: {rec}");
    assert_eq!(rec["io_errno_name"], "ETIMEDOUT", "{rec}");
    if earlier_retransmit {
        assert_eq!(before.dropped_data, 1);
        assert!(before.data_retransmits >= 1, "{before:?}");
    } else {
        assert_eq!(before.retransmits, 0, "{before:?}");
    }
    let (log, _) = link.log();
    let dark: Vec<_> = log
        .iter()
        .filter(|s| s.dir == Dir::AToB && s.tcp.sport == cport && s.at_ns >= dark_at)
        .collect();
    match death {
        Death::Keepalive => {
            // Exactly KEEPCNT probes, no data: an idle connection's keepalive death. The
            // kernel then sends a RST (tcp_keepalive_timer's active reset) before giving up:
            // a keepalive death is also a "reset sent" to whoever looks at resets only.
            let (rsts, probes): (Vec<&&support::Seen>, Vec<_>) =
                dark.iter().partition(|s| s.tcp.is(Kind::Rst));
            assert_eq!(probes.len(), KEEPCNT, "{dark:#?}");
            assert_eq!(rsts.len(), 1, "{dark:#?}");
            assert!(dark.iter().all(|s| s.tcp.payload_len == 0 && !s.retransmit));
            assert_eq!(after.data_retransmits, before.data_retransmits);
            // 1 s idle (from the last segment received, before the dark) + 2 x 1 s.
            assert!((2000.0..5000.0).contains(&died_ms), "{died_ms}");
        }
        Death::Retransmission => {
            assert!(
                after.data_retransmits > before.data_retransmits,
                "{after:?}"
            );
            assert!(dark.iter().any(|s| s.retransmit && s.tcp.payload_len > 0));
            assert!((1400.0..5000.0).contains(&died_ms), "{died_ms}");
        }
    }
    (objs, cport)
}

fn expect_tcpstate_dark_path_death(c: &Value, death: Death, earlier_retransmit: bool) {
    let timeout = match death {
        Death::Keepalive => "keepalive",
        Death::Retransmission => "retransmission",
    };
    expect_tcpstate_errno(c, "ETIMEDOUT", Some(timeout));
    if earlier_retransmit {
        assert!(retransmits(c, "data") >= 1, "{c}");
    } else if death == Death::Keepalive {
        assert_eq!(retransmits(c, "data"), 0, "{c}");
    }
}

fn dark_path_test(name: &str, salt: u16, death: Death, earlier_retransmit: bool) {
    if !can_run(name) {
        return;
    }
    let (objs, cport) = dark_path(name, test_port(salt), death, earlier_retransmit);
    if !check_tcpstate_fields(name) {
        return;
    }
    expect_tcpstate_dark_path_death(conn(&objs, "client", cport), death, earlier_retransmit);
}

#[test]
fn why_dark_path_keepalive_timeout() {
    dark_path_test(
        "why_dark_path_keepalive_timeout",
        9,
        Death::Keepalive,
        false,
    );
}

#[test]
fn why_dark_path_retransmission_timeout() {
    dark_path_test(
        "why_dark_path_retransmission_timeout",
        10,
        Death::Retransmission,
        false,
    );
}

/// The seeds' "network interruption" case: a connection that retransmitted earlier in its life
/// (and recovered) still dies of keepalive, not of retransmissions.
#[test]
fn why_dark_path_keepalive_timeout_after_an_earlier_retransmit() {
    dark_path_test(
        "why_dark_path_keepalive_timeout_after_an_earlier_retransmit",
        11,
        Death::Keepalive,
        true,
    );
}

#[test]
fn why_dark_path_retransmission_timeout_after_an_earlier_retransmit() {
    dark_path_test(
        "why_dark_path_retransmission_timeout_after_an_earlier_retransmit",
        12,
        Death::Retransmission,
        true,
    );
}

/// Application bytes each way, exactly, also with a lost segment resent on the way.
#[test]
fn why_bytes_each_way_are_exact() {
    const NAME: &str = "why_bytes_each_way_are_exact";
    if !can_run(NAME) {
        return;
    }
    const N: u64 = 12_345;
    const M: u64 = 54_321;
    let link = link_with(vec![DropRule {
        dir: Dir::BToA,
        kind: Kind::Data,
        nth: 2,
    }]);
    let port = test_port(13);
    let trace = Trace::start(port, &[]);
    // The server writes M and shuts down; the client reads to EOF, writes N, closes.
    let (server, client) = exchange(
        &link,
        port,
        1,
        &["--send", &M.to_string(), "--shutdown-write-then-read"],
        &["--wait-eof", "--send", &N.to_string()],
    );
    server.assert_success();
    client.assert_success();
    let objs = trace.stop_objects();

    let (a, b) = (link.counts(Dir::AToB), link.counts(Dir::BToA));
    print_counts("A->B", &a);
    print_counts("B->A", &b);
    let rec = only_conn(&client);
    let srv = only_conn(&server);
    assert!(
        rec["error"].is_null() && srv["error"].is_null(),
        "{rec} {srv}"
    );
    assert_eq!(
        (
            field_u64(rec, "bytes_sent"),
            field_u64(rec, "bytes_received")
        ),
        (N, M)
    );
    assert_eq!(
        (
            field_u64(srv, "bytes_sent"),
            field_u64(srv, "bytes_received")
        ),
        (M, N)
    );
    assert_eq!((a.new_payload_bytes, b.new_payload_bytes), (N, M));
    assert_eq!(b.dropped_data, 1);
    assert!(b.data_retransmits >= 1);
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    let (c, s) = pair(&objs, port_of(rec), port);
    expect_tcpstate_bytes(c, N, M);
    expect_tcpstate_bytes(s, M, N);
    assert!(u(s, "bytes_retrans") > 0, "{s}");
    assert_eq!(u(c, "bytes_retrans"), 0, "{c}");
}

/// Every new field goes through `--record` and `replay` byte for byte (`stop_objects`
/// compares the replay with the live output), on connections that carry most of them: a lost
/// SYN, a lost data segment, bytes both ways, a refused attempt.
#[test]
fn why_fields_survive_record_and_replay() {
    const NAME: &str = "why_fields_survive_record_and_replay";
    if !can_run(NAME) {
        return;
    }
    let link = link_with(vec![
        DropRule::first(Dir::AToB, Kind::Syn),
        DropRule {
            dir: Dir::BToA,
            kind: Kind::Data,
            nth: 1,
        },
    ]);
    let port = test_port(14);
    let trace = Trace::start(port, &[]);
    let (server, client) = exchange(
        &link,
        port,
        1,
        &["--send", "5000", "--shutdown-write-then-read"],
        &["--wait-eof", "--send", "3000"],
    );
    server.assert_success();
    client.assert_success();
    // A refused attempt on another port of the filter... the same port once the server is gone.
    let target = format!("{}:{port}", link.addr_b_v4());
    let refused =
        run_client(["--connect", &target, "--netns", link.ns_a()], LIMIT).expect("client");
    assert_eq!(only_conn(&refused)["result"], "refused");
    let objs = trace.stop_objects();

    let a = link.counts(Dir::AToB);
    let b = link.counts(Dir::BToA);
    assert_eq!((a.dropped_syn, b.dropped_data), (1, 1));
    let conns = connections(&objs);
    assert!(
        conns.len() >= 3,
        "client, server, refused client: {objs:#?}"
    );
    if !check_tcpstate_fields(NAME) || events_were_lost(NAME, &objs) {
        return;
    }
    for c in &conns {
        expect_tcpstate_new_fields_present(c);
    }
    assert!(
        objs.iter().any(|v| v["schema"] == "tcpstate.refused.v1"),
        "the refused attempt recorded and replayed: {objs:#?}"
    );
}
