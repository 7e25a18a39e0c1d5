//! `tcpstate trace` end to end on real loopback connections made by `tcppeer`: each scenario's
//! connections must come out with the right role, outcome, closer and phase times, and
//! `tcpstate replay` of the recording must print the very same bytes. Needs root.
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;
mod support;

use std::time::Duration;

use probe_util::{free_port, root, trace::Trace};
use serde_json::Value;
use support::{field_u64, run_client, PeerProcess};

const LIMIT: Duration = Duration::from_secs(20);

fn find<'a>(conns: &'a [Value], role: &str) -> Vec<&'a Value> {
    conns.iter().filter(|c| c["role"] == role).collect()
}

fn one<'a>(conns: &'a [Value], role: &str) -> &'a Value {
    let found = find(conns, role);
    assert_eq!(found.len(), 1, "one {role} in {conns:#?}");
    found[0]
}

fn ms(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

fn run_scenario(server_args: &[&str], client_args: &[&str]) -> (Vec<Value>, u32, u32) {
    let port = free_port("127.0.0.1".parse().expect("ip"));
    let listen = format!("127.0.0.1:{port}");
    let trace = Trace::start(port, &[]);
    let mut sargs = vec!["--listen", listen.as_str()];
    sargs.extend_from_slice(server_args);
    let (srv, _) = PeerProcess::server(&sargs).expect("server");
    let server_pid = srv.pid();
    let mut cargs = vec!["--connect", listen.as_str()];
    cargs.extend_from_slice(client_args);
    let out = run_client(&cargs, LIMIT).expect("client");
    out.assert_success();
    let client_pid = field_u64(&out.lines[0], "pid") as u32;
    srv.finish(LIMIT).expect("server").assert_success();
    (trace.stop(), client_pid, server_pid)
}

#[test]
fn client_closes_first() {
    if !root() {
        return;
    }
    let (conns, cpid, spid) = run_scenario(&[], &[]);
    let c = one(&conns, "client");
    assert_eq!(
        (c["outcome"].as_str(), c["closer"].as_str()),
        (Some("time_wait"), Some("local"))
    );
    assert_eq!(c["time_wait"], true);
    assert_eq!(c["pid"], cpid);
    assert!(ms(c, "handshake_ms") > 0.0);
    let s = one(&conns, "server");
    assert_eq!(
        (s["outcome"].as_str(), s["closer"].as_str()),
        (Some("closed"), Some("remote"))
    );
    assert_eq!(s["pid"], spid);
    assert_eq!(s["peer_id"], c["id"], "both ends paired");
    let l = one(&conns, "listener");
    assert_eq!(l["pid"], spid);
}

#[test]
fn server_closes_first() {
    if !root() {
        return;
    }
    let (conns, _, _) = run_scenario(&["--close-first"], &["--wait-eof"]);
    let c = one(&conns, "client");
    assert_eq!(
        (c["outcome"].as_str(), c["closer"].as_str()),
        (Some("closed"), Some("remote"))
    );
    let s = one(&conns, "server");
    assert_eq!(
        (s["outcome"].as_str(), s["closer"].as_str()),
        (Some("time_wait"), Some("local"))
    );
}

#[test]
fn reset_with_linger_zero() {
    if !root() {
        return;
    }
    let (conns, _, _) = run_scenario(&["--close-first", "--linger0"], &["--wait-eof"]);
    assert_eq!(one(&conns, "server")["outcome"], "reset");
    assert_eq!(one(&conns, "client")["outcome"], "reset");
}

#[test]
fn refused_connect() {
    if !root() {
        return;
    }
    let port = free_port("127.0.0.1".parse().expect("ip"));
    let trace = Trace::start(port, &[]);
    let out = run_client(["--connect", &format!("127.0.0.1:{port}")], LIMIT).expect("client");
    assert_eq!(out.conns()[0]["result"], "refused");
    let conns = trace.stop();
    let c = one(&conns, "client");
    assert_eq!(c["outcome"], "refused");
    assert!(ms(c, "life_ms") < 1000.0);
}

#[test]
fn close_wait_of_one_second_is_measured() {
    if !root() {
        return;
    }
    let (conns, _, spid) = run_scenario(&["--close-wait-ms", "1000"], &[]);
    let s = one(&conns, "server");
    assert_eq!(s["closer"], "remote");
    assert_eq!(s["pid"], spid, "the process that leaked CLOSE_WAIT");
    let cw = ms(s, "close_wait_ms");
    assert!((cw - 1000.0).abs() <= 50.0, "CLOSE_WAIT {cw} ms");
}

#[test]
fn half_close_with_data_after_shutdown() {
    if !root() {
        return;
    }
    let (conns, _, _) = run_scenario(
        &["--shutdown-write-then-read"],
        &["--wait-eof", "--send", "5000"],
    );
    let s = one(&conns, "server");
    // The server shut its side first, then kept reading: it is the first closer, and the
    // connection still ends normally.
    assert_eq!(s["closer"], "local");
    assert_eq!(s["outcome"], "time_wait");
    let c = one(&conns, "client");
    assert_eq!(
        (c["closer"].as_str(), c["outcome"].as_str()),
        (Some("remote"), Some("closed"))
    );
    assert!(ms(c, "close_wait_ms") >= 0.0);
}

#[test]
fn ipv6_connection() {
    if !root() {
        return;
    }
    let port = free_port("::1".parse().expect("ip"));
    let listen = format!("[::1]:{port}");
    let trace = Trace::start(port, &[]);
    let (srv, _) = PeerProcess::server(["--listen", &listen]).expect("server");
    run_client(["--connect", &listen], LIMIT)
        .expect("client")
        .assert_success();
    srv.finish(LIMIT).expect("server").assert_success();
    let conns = trace.stop();
    let c = one(&conns, "client");
    assert_eq!(c["family"], "ipv6");
    assert_eq!(c["raddr"], "::1");
    assert_eq!(c["outcome"], "time_wait");
}

/// The other output forms replay identically too.
#[test]
fn table_timeline_and_transitions_replay_identically() {
    if !root() {
        return;
    }
    for extra in [
        &["-o", "table", "--timeline"][..],
        &["-o", "table", "--transitions", "-T"],
        &["-o", "table", "-w", "-t"],
        &["--timeline"],
        &["--transitions"],
    ] {
        let port = free_port("127.0.0.1".parse().expect("ip"));
        let listen = format!("127.0.0.1:{port}");
        let trace = Trace::start(port, extra);
        let (srv, _) = PeerProcess::server(["--listen", &listen, "--accept", "3"]).expect("srv");
        run_client(["--connect", &listen, "--count", "3"], LIMIT)
            .expect("client")
            .assert_success();
        srv.finish(LIMIT).expect("server").assert_success();
        // stop() compares replay with live (in JSON plus these flags).
        trace.stop();
    }
}
