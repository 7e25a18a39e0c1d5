//! Loads the real eBPF program, makes real loopback connections and checks exactly what the
//! kernel reports. Needs root; each test says so and passes trivially without it.
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;

use std::{
    io::Read,
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use probe_util::{
    attach, attach_as, attach_generic, by_socket, collect, free_port, port_probe, root, states,
};
use tcpstate::input::{Counter, Input};
use tcpstate::kernel::probe::Attachment;
use tcpstate::{event, filter::FilterSpec};
use tcpstate_common::state::*;

const CLIENT: &[(u8, u8)] = &[
    (CLOSE, SYN_SENT),
    (SYN_SENT, ESTABLISHED),
    (ESTABLISHED, FIN_WAIT1),
    (FIN_WAIT1, FIN_WAIT2),
    (FIN_WAIT2, CLOSE),
];
const SERVER: &[(u8, u8)] = &[
    (LISTEN, SYN_RECV),
    (SYN_RECV, ESTABLISHED),
    (ESTABLISHED, CLOSE_WAIT),
    (CLOSE_WAIT, LAST_ACK),
    (LAST_ACK, CLOSE),
];
const LISTENER: &[(u8, u8)] = &[(CLOSE, LISTEN), (LISTEN, CLOSE)];

/// One connect/accept/close on `ip`, client closing first; checks all 12 transitions.
fn one_connection(ip: IpAddr, generic_reader: bool) {
    let port = free_port(ip);
    let mut probe = if generic_reader {
        attach_generic(FilterSpec {
            ports: vec![port],
            ..Default::default()
        })
    } else {
        port_probe(port)
    };
    let listener = TcpListener::bind(SocketAddr::new(ip, port)).expect("listen");
    let client = TcpStream::connect(SocketAddr::new(ip, port)).expect("connect");
    let client_port = client.local_addr().expect("addr").port();
    let (mut server, _) = listener.accept().expect("accept");
    drop(client);
    let mut buf = [0u8; 16];
    assert_eq!(server.read(&mut buf).expect("read EOF"), 0);
    drop(server);
    drop(listener);

    let events = collect(&mut probe, 12);
    let counters = probe.counters().expect("counters");
    let sockets = by_socket(&events);
    assert_eq!(events.len(), 12, "events: {events:#?}");
    assert_eq!(
        sockets.len(),
        3,
        "three sockets: client, accepted, listener"
    );
    let me = std::process::id();
    let mut seen = Vec::new();
    for (_, evs) in sockets {
        let st = states(&evs);
        let role = if st == CLIENT {
            for (i, e) in evs.iter().enumerate() {
                // connect() changes state before it picks the local port.
                let want_sport = if i == 0 { 0 } else { client_port };
                assert_eq!((e.sport, e.dport), (want_sport, port), "client ports {e:?}");
                assert_eq!(event::remote_addr(e), ip);
            }
            "client"
        } else if st == SERVER {
            for e in &evs {
                assert_eq!(
                    (e.sport, e.dport),
                    (port, client_port),
                    "server ports {e:?}"
                );
                assert_eq!(event::local_addr(e), ip);
                assert_eq!(event::remote_addr(e), ip);
            }
            "server"
        } else if st == LISTENER {
            for e in &evs {
                assert_eq!(e.sport, port);
            }
            "listener"
        } else {
            panic!("unexpected sequence {st:?}");
        };
        for e in &evs {
            assert_eq!(
                e.family,
                if ip.is_ipv4() { 2 } else { 10 },
                "family of {role}"
            );
            assert_eq!(e.owner_pid, me, "owner of {role} event {e:?}");
            assert_eq!(e.ctx_pid, me, "single-process test: current task is us");
            assert!(e.ts_ns > 0);
        }
        seen.push(role);
    }
    seen.sort();
    assert_eq!(seen, ["client", "listener", "server"]);
    assert_eq!(
        probe_util::count(&counters, Counter::RingbufFull),
        0,
        "ring buffer drops"
    );
    assert_eq!(
        probe_util::count(&counters, Counter::RecursionMisses),
        0,
        "recursion misses"
    );
    assert!(probe_util::count(&counters, Counter::Submitted) >= 12);
}

#[test]
fn ipv4_loopback_connection_has_exact_transitions() {
    if root() {
        one_connection(IpAddr::V4(Ipv4Addr::LOCALHOST), false);
    }
}

#[test]
fn generic_record_reader_gives_the_same_transitions() {
    if root() {
        one_connection(IpAddr::V4(Ipv4Addr::LOCALHOST), true);
        one_connection(IpAddr::V6(Ipv6Addr::LOCALHOST), true);
    }
}

/// The BTF tracepoint program reads the socket itself where the classic one reads the trace
/// record: both attached at once see the same traffic (IPv4, IPv6, an IPv4 client of a
/// dual-stack listener, a refused connect) and must report exactly the same events.
#[test]
fn btf_and_classic_tracepoints_report_the_same_events() {
    if !root() {
        return;
    }
    let v4 = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
    let ports = [free_port(v4), free_port(v6), free_port(v6), free_port(v4)];
    let spec = || FilterSpec {
        ports: ports.to_vec(),
        ..Default::default()
    };
    let mut btf = attach_as(spec(), Attachment::Btf);
    let mut classic = attach_as(spec(), Attachment::Classic);
    assert_eq!(btf.attachment, "BTF tracepoint, with rescue");
    assert_eq!(classic.attachment, "classic tracepoint");
    let any6 = IpAddr::V6(Ipv6Addr::UNSPECIFIED);
    for (listen_on, connect_to, port) in
        [(v4, v4, ports[0]), (v6, v6, ports[1]), (any6, v4, ports[2])]
    {
        let listener = TcpListener::bind(SocketAddr::new(listen_on, port)).expect("listen");
        let client = TcpStream::connect(SocketAddr::new(connect_to, port)).expect("connect");
        let (mut server, _) = listener.accept().expect("accept");
        drop(client);
        let mut buf = [0u8; 16];
        assert_eq!(server.read(&mut buf).expect("read EOF"), 0);
        drop((server, listener));
    }
    let refused = TcpStream::connect(SocketAddr::new(v4, ports[3]));
    assert!(refused.is_err(), "nothing listens on {}", ports[3]);
    // 12 per connection, 2 for the refused one.
    let want = 3 * 12 + 2;
    let without_time = |mut e: tcpstate::event::Event| {
        e.ts_ns = 0;
        e
    };
    // Events, and the socket facts read at the same transitions (typed loads on the BTF
    // tracepoint, helper copies on the classic one), without their times.
    let split = |inputs: Vec<Input>| {
        let (mut evs, mut facts) = (Vec::new(), Vec::new());
        for i in inputs {
            match i {
                Input::Event(e) => evs.push(without_time(e)),
                Input::Facts(mut f) => {
                    f.ts_ns = 0;
                    facts.push(f);
                }
                _ => {}
            }
        }
        evs.sort_by_key(|e: &tcpstate::event::Event| (e.skaddr, e.oldstate, e.newstate));
        facts.sort_by_key(|f| (f.skaddr, f.oldstate, f.newstate));
        (evs, facts)
    };
    let limit = Duration::from_secs(3);
    let (a, fa) = split(probe_util::collect_inputs(&mut btf, want, limit));
    let (b, fb) = split(probe_util::collect_inputs(&mut classic, want, limit));
    assert_eq!(a.len(), want, "{a:#?}");
    assert_eq!(a, b);
    // Every close but the listeners', and every handshake's end: 3 * 2 + 3 * 2, and the
    // refused connect's close.
    assert_eq!(fa.len(), 13, "{fa:#?}");
    assert!(fa
        .iter()
        .any(|f| f.bytes_acked.is_some() && f.srtt_us.is_some()));
    assert_eq!(fa, fb);
    for p in [&btf, &classic] {
        let c = p.counters().expect("counters");
        assert_eq!(probe_util::count(&c, Counter::RecursionMisses), 0);
        assert_eq!(probe_util::count(&c, Counter::RingbufFull), 0);
    }
    let c = classic.counters().expect("counters");
    assert_eq!(
        probe_util::count(&c, Counter::Rescued),
        0,
        "no rescue program there"
    );
}

#[test]
fn ipv6_loopback_connection_has_exact_transitions() {
    if root() {
        one_connection(IpAddr::V6(Ipv6Addr::LOCALHOST), false);
    }
}

#[test]
fn unfiltered_probe_sees_our_connection_and_counts_everything() {
    if !root() {
        return;
    }
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let mut probe = attach(FilterSpec::default());
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let client = TcpStream::connect(SocketAddr::new(ip, port)).expect("connect");
    let (server, _) = listener.accept().expect("accept");
    drop(client);
    drop(server);
    drop(listener);
    // Other traffic may run beside us: wait for ours, then look only at it.
    let events = collect(&mut probe, 12);
    let ours: Vec<_> = events
        .iter()
        .filter(|e| e.sport == port || e.dport == port)
        .collect();
    assert!(ours.len() >= 12, "got {} of our events", ours.len());
    let c = probe.counters().expect("counters");
    assert_eq!(probe_util::count(&c, Counter::Filtered), 0);
    assert!(
        probe_util::count(&c, Counter::Seen) >= probe_util::count(&c, Counter::Submitted)
            && probe_util::count(&c, Counter::Submitted) >= events.len() as u64
    );
}

#[test]
fn port_filter_drops_other_traffic_in_the_kernel() {
    if !root() {
        return;
    }
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let watched = free_port(ip);
    let mut probe = attach(FilterSpec {
        lports: vec![watched],
        ..Default::default()
    });
    // Traffic on another port only.
    let other = TcpListener::bind(SocketAddr::new(ip, 0)).expect("listen");
    let port = other.local_addr().expect("addr").port();
    let c = TcpStream::connect(SocketAddr::new(ip, port)).expect("connect");
    let (s, _) = other.accept().expect("accept");
    drop((c, s, other));
    std::thread::sleep(Duration::from_millis(200));
    let events = collect(&mut probe, 1);
    assert!(
        events.iter().all(|e| e.sport == watched),
        "unexpected events: {events:?}"
    );
    let counters = probe.counters().expect("counters");
    assert!(
        probe_util::count(&counters, Counter::Filtered) >= 12,
        "kernel filtered {}",
        probe_util::count(&counters, Counter::Filtered)
    );
}

#[test]
fn dropping_the_probe_detaches_it() {
    if !root() {
        return;
    }
    let probe = attach(FilterSpec::default());
    let id = probe.program_id().expect("program id");
    let loaded = |id: u32| {
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .any(|p| p.id() == id)
    };
    assert!(loaded(id));
    drop(probe);
    // The kernel frees the program asynchronously (RCU); bounded wait.
    let deadline = Instant::now() + Duration::from_secs(3);
    while loaded(id) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(!loaded(id), "program {id} still loaded after drop");
}
