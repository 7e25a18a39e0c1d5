//! `tcpstate trace` end to end over a link with a known delay (two network namespaces, RTT
//! 40 ms): connect latency against the client's own timing, a lost SYN, a timed-out connect, a
//! simultaneous close and a CLOSE_WAIT leak, each with the owning process. Needs root.
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;
mod support;

use std::time::Duration;

use probe_util::{root, trace::Trace};
use serde_json::Value;
use support::{field_u64, mono_ns, run_client, DelayedLink, LinkConfig, PeerProcess};

const DELAY: Duration = Duration::from_millis(20);
const RTT_MS: f64 = 40.0;
const LIMIT: Duration = Duration::from_secs(20);

fn test_port(salt: u16) -> u16 {
    30000 + (std::process::id() as u16 % 2000) * 4 + salt
}

fn of_role<'a>(conns: &'a [Value], role: &str) -> Vec<&'a Value> {
    conns.iter().filter(|c| c["role"] == role).collect()
}

fn ms(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

#[test]
fn connect_latency_and_owners_match_ground_truth() {
    if !root() {
        return;
    }
    let link = DelayedLink::new(LinkConfig::with_delay(DELAY)).expect("link");
    let port = test_port(0);
    let trace = Trace::start(port, &[]);
    let server = format!("{}:{port}", link.addr_b_v4());
    let (srv, _) = PeerProcess::server([
        "--listen",
        &server,
        "--netns",
        link.ns_b(),
        "--accept",
        "10",
    ])
    .expect("server");
    let spid = srv.pid();
    let out = run_client(
        [
            "--connect",
            &server,
            "--netns",
            link.ns_a(),
            "--count",
            "10",
            "--realtime",
        ],
        LIMIT,
    )
    .expect("client");
    out.assert_success();
    srv.finish(LIMIT).expect("server").assert_success();
    let conns = trace.stop();

    let clients = of_role(&conns, "client");
    assert_eq!(clients.len(), 10, "{conns:#?}");
    let cpid = field_u64(&out.lines[0], "pid");
    let mut diffs = Vec::new();
    for rec in out.conns() {
        let lport = field_u64(rec, "local_port");
        let c = clients
            .iter()
            .find(|c| c["lport"] == lport)
            .unwrap_or_else(|| panic!("no connection for port {lport}"));
        assert_eq!(c["pid"], cpid);
        assert_eq!(c["comm"], "tcppeer");
        assert_eq!(c["outcome"], "time_wait");
        let traced = c["handshake_ns"].as_u64().expect("handshake_ns");
        let measured = field_u64(rec, "connect_end_ns") - field_u64(rec, "connect_start_ns");
        assert!(traced <= measured, "traced {traced} > measured {measured}");
        assert!(
            traced as f64 >= RTT_MS * 1e6,
            "handshake {traced} ns under one RTT"
        );
        diffs.push(measured - traced);
    }
    diffs.sort_unstable();
    assert!(diffs[0] < 500_000, "closest of ten: {diffs:?}");
    for s in of_role(&conns, "server") {
        assert_eq!(s["pid"], spid);
        assert_eq!(s["closer"], "remote");
    }
}

#[test]
fn lost_syn_is_reported_with_its_retransmission() {
    if !root() {
        return;
    }
    let cfg = LinkConfig {
        drop_syns: 1,
        ..LinkConfig::with_delay(DELAY)
    };
    let link = DelayedLink::new(cfg).expect("link");
    let port = test_port(1);
    let trace = Trace::start(port, &[]);
    let server = format!("{}:{port}", link.addr_b_v4());
    let (srv, _) =
        PeerProcess::server(["--listen", &server, "--netns", link.ns_b()]).expect("server");
    let out = run_client(["--connect", &server, "--netns", link.ns_a()], LIMIT).expect("client");
    out.assert_success();
    srv.finish(LIMIT).expect("server").assert_success();
    assert_eq!(link.syns_dropped(), 1);
    let conns = trace.stop();
    let c = of_role(&conns, "client")[0];
    let hs = ms(c, "handshake_ms");
    assert!((1000.0 + RTT_MS..3000.0).contains(&hs), "handshake {hs} ms");
    assert_eq!(c["syn_retransmitted"], true);
    assert_eq!(c["outcome"], "time_wait");
}

#[test]
fn connect_to_a_silent_host_times_out() {
    if !root() {
        return;
    }
    let cfg = LinkConfig {
        blackhole: true,
        ..LinkConfig::with_delay(DELAY)
    };
    let link = DelayedLink::new(cfg).expect("link");
    let port = test_port(2);
    let trace = Trace::start(port, &[]);
    let server = format!("{}:{port}", link.addr_b_v4());
    let out = run_client(
        [
            "--connect",
            &server,
            "--netns",
            link.ns_a(),
            "--timeout-s",
            "2",
        ],
        LIMIT,
    )
    .expect("client");
    assert_eq!(out.conns()[0]["result"], "timeout");
    let conns = trace.stop();
    let c = of_role(&conns, "client")[0];
    assert_eq!(c["outcome"], "timed_out");
    assert_eq!(c["syn_retransmitted"], true);
    assert!(ms(c, "life_ms") >= 1900.0, "{c}");
}

#[test]
fn simultaneous_close_is_recognised() {
    if !root() {
        return;
    }
    let link = DelayedLink::new(LinkConfig::with_delay(DELAY)).expect("link");
    let port = test_port(3);
    let trace = Trace::start(port, &[]);
    let server = format!("{}:{port}", link.addr_b_v4());
    let at = (mono_ns() + 1_000_000_000).to_string();
    let (srv, _) = PeerProcess::server([
        "--listen",
        &server,
        "--netns",
        link.ns_b(),
        "--shutdown-at-mono-ns",
        &at,
    ])
    .expect("server");
    run_client(
        [
            "--connect",
            &server,
            "--netns",
            link.ns_a(),
            "--shutdown-at-mono-ns",
            &at,
        ],
        LIMIT,
    )
    .expect("client")
    .assert_success();
    srv.finish(LIMIT).expect("server").assert_success();
    let conns = trace.stop();
    for role in ["client", "server"] {
        let c = of_role(&conns, role)[0];
        assert_eq!(c["closer"], "simultaneous", "{role}: {c}");
        assert_eq!(c["time_wait"], true, "both ends enter TIME_WAIT");
        assert!(
            c["closing_ns"].as_u64().is_some(),
            "{role}: CLOSING measured"
        );
    }
}

#[test]
fn close_wait_leak_over_the_link() {
    if !root() {
        return;
    }
    let link = DelayedLink::new(LinkConfig::with_delay(DELAY)).expect("link");
    let port = test_port(0) + 8000;
    let trace = Trace::start(port, &["--min-close-wait-ms", "300"]);
    let server = format!("{}:{port}", link.addr_b_v4());
    let (srv, _) = PeerProcess::server([
        "--listen",
        &server,
        "--netns",
        link.ns_b(),
        "--close-wait-ms",
        "500",
    ])
    .expect("server");
    let spid = srv.pid();
    run_client(["--connect", &server, "--netns", link.ns_a()], LIMIT)
        .expect("client")
        .assert_success();
    srv.finish(LIMIT).expect("server").assert_success();
    let conns = trace.stop();
    // The threshold keeps only the leaking side (and its paired peer, shown beside it).
    let s = of_role(&conns, "server")[0];
    assert_eq!(s["pid"], spid);
    let cw = ms(s, "close_wait_ms");
    assert!((cw - 500.0).abs() <= 50.0, "CLOSE_WAIT {cw} ms");
    assert!(
        of_role(&conns, "listener").is_empty(),
        "under the threshold"
    );
}
