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

/// An IPv4 client accepted by a dual-stack listener (`[::]:PORT`, IPV6_V6ONLY off): the server
/// end is an AF_INET6 socket with v4-mapped addresses, and it is one IPv4 connection. Both
/// namespaces are on this host, so each tracer sees both ends. An IPv6 client of the same
/// listener is the contrast. The listener, bound to `::`, accepts either family: `-4` and `-6`
/// both keep it.
#[test]
fn dual_stack_server_and_ipv4_client_are_one_connection() {
    if !root() {
        return;
    }
    let link = DelayedLink::new(LinkConfig::with_delay(DELAY)).expect("link");
    let port = test_port(1) + 8000;
    // The same two connections seen by four tracers at once, one per filter.
    let cases: [(&str, &[&str]); 4] = [
        ("unfiltered", &[]),
        ("-4", &["-4"]),
        ("-6", &["-6"]),
        ("--addr", &["--addr", "198.18.0.0/24"]),
    ];
    let traces: Vec<(&str, Trace)> = cases
        .iter()
        .map(|&(name, filters)| (name, Trace::start_filtered(port, filters, &[])))
        .collect();
    let listen = format!("[::]:{port}");
    let (srv, _) = PeerProcess::server([
        "--listen",
        &listen,
        "--dual-stack",
        "--netns",
        link.ns_b(),
        "--accept",
        "2",
    ])
    .expect("server");
    for server in [
        format!("{}:{port}", link.addr_b_v4()),
        format!("[{}]:{port}", link.addr_b_v6()),
    ] {
        run_client(["--connect", &server, "--netns", link.ns_a()], LIMIT)
            .expect("client")
            .assert_success();
    }
    srv.finish(LIMIT).expect("server").assert_success();

    let (a4, b4) = (link.addr_a_v4().to_string(), link.addr_b_v4().to_string());
    let (a6, b6) = (link.addr_a_v6().to_string(), link.addr_b_v6().to_string());
    // (client family, client laddr, client raddr, server laddr, server raddr): the families
    // the kernel reports, the addresses as the sockets hold them.
    let v4 = (
        "ipv4",
        &a4,
        &b4,
        format!("::ffff:{b4}"),
        format!("::ffff:{a4}"),
    );
    let v6 = ("ipv6", &a6, &b6, b6.clone(), a6.clone());
    for (name, trace) in traces {
        let conns = trace.stop();
        let (want, listener): (Vec<_>, bool) = match name {
            "unfiltered" => (vec![&v4, &v6], true),
            "-4" => (vec![&v4], true),
            "-6" => (vec![&v6], true),
            // A listener has no remote address to match.
            _ => (vec![&v4], false),
        };
        let (clients, servers) = (of_role(&conns, "client"), of_role(&conns, "server"));
        assert_eq!(clients.len(), want.len(), "{name}: {conns:#?}");
        assert_eq!(servers.len(), want.len(), "{name}: {conns:#?}");
        for (family, c_l, c_r, s_l, s_r) in want {
            let c = clients
                .iter()
                .find(|c| c["laddr"] == c_l.as_str() && c["raddr"] == c_r.as_str())
                .unwrap_or_else(|| panic!("{name}: no {family} client in {conns:#?}"));
            let s = servers
                .iter()
                .find(|s| s["laddr"] == s_l.as_str() && s["raddr"] == s_r.as_str())
                .unwrap_or_else(|| panic!("{name}: no server for the {family} client"));
            assert_eq!(c["family"], *family, "{name}");
            assert_eq!(s["family"], "ipv6", "{name}");
            // Paired: shown together, each naming the other.
            assert_eq!(c["peer_id"], s["id"], "{name}: {family}: {conns:#?}");
            assert_eq!(s["peer_id"], c["id"], "{name}: {family}: {conns:#?}");
        }
        let listeners = of_role(&conns, "listener");
        assert_eq!(listeners.len(), usize::from(listener), "{name}: {conns:#?}");
        if let Some(l) = listeners.first() {
            assert_eq!((&l["family"], &l["laddr"]), (&"ipv6".into(), &"::".into()));
        }
    }
}
