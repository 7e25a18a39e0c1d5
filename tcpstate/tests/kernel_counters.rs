//! The kernel's counters account for every event exactly (the identity written down in
//! `tcpstate_common::counters`), checked on the real program after traffic stopped: with a port
//! filter, so that connect() events are held and then released or dropped, and without one.
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;

use std::{
    net::{Ipv4Addr, TcpListener, TcpStream},
    time::Duration,
};

use probe_util::{attach, collect_for, count, free_port, port_probe, root};
use tcpstate::{filter::FilterSpec, input::Counter, kernel::probe::Probe};

/// Connections to `port` (accepted and closed), plus refused ones to `closed_port`.
fn traffic(listener: &TcpListener, n: usize, closed_port: u16, refused: usize) {
    let port = listener.local_addr().expect("addr").port();
    for _ in 0..n {
        let c = TcpStream::connect((Ipv4Addr::LOCALHOST, port)).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        drop((c, s));
    }
    for _ in 0..refused {
        let r = TcpStream::connect((Ipv4Addr::LOCALHOST, closed_port));
        assert!(r.is_err(), "nothing listens on {closed_port}");
    }
}

/// Detaches, then checks the identity exactly, with the held events counted in the kernel's
/// table itself. Other processes' traffic runs at the same time: it must add up as well.
fn check_identity(probe: &mut Probe, what: &str) -> tcpstate::input::KernelCounters {
    probe.detach();
    let c = probe.counters().expect("every counter readable");
    assert!(c.all_known(), "{what}: {c:?}");
    eprintln!("{what}: {:?}", c.iter().collect::<Vec<_>>());
    let held_in_table = probe.held_events().expect("count the held events");
    assert_eq!(
        c.held(),
        Some(held_in_table),
        "{what}: held = deferred - released - held_dropped must be what the table holds: {c:?}"
    );
    assert_eq!(
        c.unaccounted(),
        Some(0),
        "{what}: seen = filtered + submitted + ringbuf_full + hold_failed + held: {c:?}"
    );
    c
}

/// The ephemeral port range: where connect() picks local ports.
fn ephemeral_ports() -> std::ops::RangeInclusive<u16> {
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("port range");
    let mut it = range
        .split_whitespace()
        .map(|p| p.parse::<u16>().expect("port"));
    it.next().expect("low")..=it.next().expect("high")
}

#[test]
fn every_event_is_accounted_for_with_held_connects() {
    if !root() {
        return;
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let other = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let closed = free_port(Ipv4Addr::LOCALHOST.into());
    // Either end on our port: another port's connects are held (their local port is unknown
    // at connect()), then dropped once it shows they do not match.
    let mut dropping = port_probe(port);
    // Local port in the ephemeral range: every connect is held, then released.
    let mut releasing = attach(FilterSpec {
        lports: ephemeral_ports().collect(),
        ..Default::default()
    });
    traffic(&listener, 20, closed, 0);
    traffic(&other, 15, closed, 5);
    drop((listener, other));
    let refused = TcpStream::connect((Ipv4Addr::LOCALHOST, port));
    assert!(refused.is_err());
    // 20 connections of 10 events, the listener's close, the refused connect's 2.
    let events = collect_for(&mut dropping, 20 * 10 + 1 + 2, Duration::from_secs(5));
    assert_eq!(events.len(), 20 * 10 + 1 + 2);
    // Ours and other processes' connects: at least every client event of ours.
    let released = collect_for(&mut releasing, usize::MAX, Duration::from_secs(1));
    assert!(
        released.len() >= (20 + 15) * 5 + 6 * 2,
        "{}",
        released.len()
    );

    let c = check_identity(&mut dropping, "port filter");
    let n = |which| count(&c, which);
    assert!(n(Counter::HeldDropped) >= 15 + 5, "{c:?}");
    assert!(n(Counter::Submitted) >= events.len() as u64, "{c:?}");
    for zero in [
        Counter::HoldFailed,
        Counter::RingbufFull,
        Counter::OwnerUpdateFailed,
    ] {
        assert_eq!(n(zero), 0, "{}: {c:?}", zero.name());
    }

    let c = check_identity(&mut releasing, "local port filter");
    let n = |which| count(&c, which);
    // Every connect of ours: 20 + 15 accepted, 5 + 1 refused.
    let connects = 20 + 15 + 5 + 1;
    assert!(n(Counter::Released) >= connects, "{c:?}");
    assert!(n(Counter::Submitted) >= released.len() as u64, "{c:?}");
    for zero in [
        Counter::HoldFailed,
        Counter::RingbufFull,
        Counter::OwnerUpdateFailed,
    ] {
        assert_eq!(n(zero), 0, "{}: {c:?}", zero.name());
    }
}

#[test]
fn every_event_is_accounted_for_without_a_filter() {
    if !root() {
        return;
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    let closed = free_port(Ipv4Addr::LOCALHOST.into());
    let mut probe = attach(FilterSpec::default());
    traffic(&listener, 10, closed, 3);
    drop(listener);
    let _ = collect_for(&mut probe, 10 * 10 + 3 * 2 + 1, Duration::from_secs(3));
    let c = check_identity(&mut probe, "no filter");
    // Nothing is held without a port filter.
    assert_eq!(count(&c, Counter::Deferred), 0, "{c:?}");
    assert_eq!(c.held(), Some(0));
    let ours = 10 * 10 + 3 * 2 + 1;
    assert!(count(&c, Counter::Seen) >= ours, "{c:?}");
}
