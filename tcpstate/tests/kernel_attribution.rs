//! Owner attribution and in-kernel filters on loopback, with client and server in separate
//! processes: every event must name the socket's owner (or nobody), never the task that
//! happened to run, and every filter must be complete and exclusive.
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;
mod support;

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    time::Duration,
};

use probe_util::{
    attach, attach_attributed, attach_with, by_socket, collect, free_port, port_probe, roles, root,
    states,
};
use support::{field_u64, run_client, PeerProcess};
use tcpstate::{
    event::{self, Event},
    filter::{Cidr, FilterSpec},
    input::Counter,
    kernel::{probe::Attribution, procscan},
};
use tcpstate_common::{event_flags, owner_source, state::*};

const LIMIT: Duration = Duration::from_secs(15);

fn server(args: &[&str]) -> (PeerProcess, u16) {
    PeerProcess::server(args).expect("start tcppeer server")
}

fn client(addr: &str) -> (u32, u16) {
    let out = run_client(["--connect", addr], LIMIT).expect("run tcppeer client");
    out.assert_success();
    let conns = out.conns();
    assert_eq!(conns.len(), 1, "{out:?}");
    (
        field_u64(conns[0], "pid") as u32,
        field_u64(conns[0], "local_port") as u16,
    )
}

fn assert_owner(evs: &[Event], pid: u32, what: &str) {
    for e in evs {
        assert_eq!(
            e.owner_pid,
            pid,
            "{what}: {} -> {} owned by {} (ctx {}), want {pid}",
            event::state_name(e.oldstate),
            event::state_name(e.newstate),
            e.owner_pid,
            e.ctx_pid
        );
        assert_eq!(event::comm(&e.owner_comm), "tcppeer", "{what}: owner comm");
    }
}

#[test]
fn every_event_names_the_owner_not_the_running_task() {
    if !root() {
        return;
    }
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut probe = port_probe(port);
    let (srv, _) = server(&["--listen", &format!("127.0.0.1:{port}"), "--accept", "1"]);
    let server_pid = srv.pid();
    let (client_pid, _) = client(&format!("127.0.0.1:{port}"));
    srv.finish(LIMIT).expect("server").assert_success();

    let events = collect(&mut probe, 12);
    assert_eq!(events.len(), 12, "{events:#?}");
    let r = roles(&events);
    assert_owner(&r["client"][0], client_pid, "client");
    assert_owner(&r["accepted"][0], server_pid, "accepted socket");
    assert_owner(&r["listener"][0], server_pid, "listener");
    // The point of all this: on loopback the running task is often the peer.
    let wrong_ctx = events.iter().filter(|e| e.ctx_pid != e.owner_pid).count();
    assert!(
        wrong_ctx > 0,
        "expected some events to run in the peer's context"
    );
    let accepted_first = r["accepted"][0][0];
    assert_eq!(accepted_first.owner_source, owner_source::LISTENER);
}

#[test]
fn listener_that_existed_before_tracing_gets_its_connections() {
    if !root() {
        return;
    }
    let (srv, port) = server(&["--listen", "127.0.0.1:0", "--accept", "1"]);
    let server_pid = srv.pid();
    // Attach the way `tcpstate trace` does: with what /proc says exists.
    let mut probe = attach_with(
        FilterSpec {
            ports: vec![port],
            ..Default::default()
        },
        &procscan::scan(&procscan::CgroupScan::default()),
    );
    let (client_pid, _) = client(&format!("127.0.0.1:{port}"));
    srv.finish(LIMIT).expect("server").assert_success();

    let events = collect(&mut probe, 11);
    let r = roles(&events);
    assert_owner(&r["client"][0], client_pid, "client");
    assert_owner(
        &r["accepted"][0],
        server_pid,
        "accepted by a pre-existing listener",
    );
    let listener = &r["listener"][0];
    assert_eq!(states(listener), [(LISTEN, CLOSE)]);
    assert_owner(listener, server_pid, "pre-existing listener");
}

#[test]
fn pid_filter_keeps_exactly_the_servers_sockets() {
    if !root() {
        return;
    }
    let (srv, port) = server(&["--listen", "127.0.0.1:0", "--accept", "1"]);
    let server_pid = srv.pid();
    let mut probe = attach_with(
        FilterSpec {
            pids: vec![server_pid],
            ..Default::default()
        },
        &procscan::scan(&procscan::CgroupScan::default()),
    );
    // Other traffic beside it, in this process.
    let other = TcpListener::bind("127.0.0.1:0").expect("listen");
    let other_addr = other.local_addr().expect("addr");
    for _ in 0..3 {
        let c = TcpStream::connect(other_addr).expect("connect");
        let (s, _) = other.accept().expect("accept");
        drop((c, s));
    }
    drop(other);
    client(&format!("127.0.0.1:{port}"));
    srv.finish(LIMIT).expect("server").assert_success();

    let events = collect(&mut probe, 6);
    let r = roles(&events);
    assert!(!r.contains_key("client"), "the client is another process");
    assert_eq!(r["accepted"].len(), 1);
    assert_eq!(
        states(&r["accepted"][0]).len(),
        5,
        "all of the accepted socket"
    );
    assert_eq!(states(&r["listener"][0]), [(LISTEN, CLOSE)]);
    assert!(events.iter().all(|e| e.owner_pid == server_pid));
    let c = probe.counters().expect("counters");
    // 3 connections of 10 transitions, their listener's 2, and the tcppeer client's 5.
    assert!(
        probe_util::count(&c, Counter::Filtered) >= 3 * 10 + 2 + 5,
        "other traffic dropped in the kernel: {c:?}"
    );
}

#[test]
fn comm_and_rport_filters() {
    if !root() {
        return;
    }
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    // The server is this test process; the client is tcppeer.
    let listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let mut by_comm = attach(FilterSpec {
        comm: Some("tcppeer".into()),
        ports: vec![port],
        ..Default::default()
    });
    let mut by_rport = attach(FilterSpec {
        rports: vec![port],
        ..Default::default()
    });
    let t = std::thread::spawn(move || {
        let (s, _) = listener.accept().expect("accept");
        let mut buf = [0u8; 64];
        let _ = std::io::Read::read(&mut &s, &mut buf);
    });
    let (client_pid, _) = client(&format!("127.0.0.1:{port}"));
    t.join().expect("server thread");

    // Tests run in parallel and reuse ports, so other sockets may match too; what must hold is
    // that everything delivered matches and that all of our client came through.
    for (name, probe) in [("comm", &mut by_comm), ("rport", &mut by_rport)] {
        let events = collect(probe, 5);
        for e in &events {
            match name {
                "comm" => assert_eq!(event::comm(&e.owner_comm), "tcppeer", "{e:?}"),
                _ => assert_eq!(e.dport, port, "{e:?}"),
            }
        }
        let r = roles(&events);
        assert!(
            !r.contains_key("accepted"),
            "{name}: our server is filtered out"
        );
        let ours: Vec<_> = r["client"]
            .iter()
            .filter(|evs| evs[0].owner_pid == client_pid)
            .collect();
        assert_eq!(ours.len(), 1, "{name}: {r:?}");
        assert_eq!(states(ours[0]).len(), 5, "{name}: whole client");
        assert_owner(ours[0], client_pid, name);
    }
}

#[test]
fn addr_filter_keeps_only_the_remote_block() {
    if !root() {
        return;
    }
    let listener = TcpListener::bind("0.0.0.0:0").expect("listen");
    let port = listener.local_addr().expect("addr").port();
    let mut probe = attach(FilterSpec {
        addrs: vec!["127.0.0.2/32".parse::<Cidr>().expect("cidr")],
        ports: vec![port],
        ..Default::default()
    });
    for dst in ["127.0.0.1", "127.0.0.2", "127.0.0.1"] {
        let c = TcpStream::connect(format!("{dst}:{port}")).expect("connect");
        let (s, _) = listener.accept().expect("accept");
        drop((c, s));
    }
    drop(listener);
    let events = collect(&mut probe, 5);
    let r = roles(&events);
    // The accepted sockets' remote is the clients' source, 127.0.0.1 (the loopback route's
    // preferred source), and the listener's is 0.0.0.0: only the one client matches.
    assert_eq!(r.len(), 1, "{r:#?}");
    assert_eq!(r["client"].len(), 1, "{r:#?}");
    assert_eq!(states(&r["client"][0]).len(), 5);
    for e in &events {
        assert_eq!(event::remote_addr(e).to_string(), "127.0.0.2");
    }
}

/// `-L` over the ephemeral range keeps outgoing connections only; their connect() event has
/// local port 0 when it happens and must still be delivered (held back in the kernel).
#[test]
fn lport_filter_still_delivers_the_connect_event() {
    if !root() {
        return;
    }
    let range =
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("port range");
    let mut it = range
        .split_whitespace()
        .map(|p| p.parse::<u16>().expect("port"));
    let (lo, hi) = (it.next().expect("lo"), it.next().expect("hi"));
    // A server port outside the ephemeral range.
    let listener = (2000u16..lo)
        .step_by(97)
        .find_map(|p| TcpListener::bind(("127.0.0.1", p)).ok())
        .expect("a free port below the ephemeral range");
    let port = listener.local_addr().expect("addr").port();
    let mut probe = attach(FilterSpec {
        lports: (lo..=hi).collect(),
        ..Default::default()
    });
    let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    let cport = c.local_addr().expect("addr").port();
    let (s, _) = listener.accept().expect("accept");
    drop((c, s, listener));
    let events = collect(&mut probe, 5);
    let ours: Vec<Event> = events.into_iter().filter(|e| e.dport == port).collect();
    let sockets = by_socket(&ours);
    assert_eq!(sockets.len(), 1, "only the client: {sockets:#?}");
    let client = sockets.values().next().expect("client");
    assert_eq!(states(client).len(), 5, "{client:#?}");
    assert_eq!(
        (client[0].oldstate, client[0].newstate, client[0].sport),
        (CLOSE, SYN_SENT, 0)
    );
    assert_ne!(client[0].flags & event_flags::DEFERRED, 0);
    assert!(client[1..].iter().all(|e| e.sport == cport));
    // The owner travelled with the held event and reached the owner table on its release.
    let me = std::process::id();
    assert!(client.iter().all(|e| e.owner_pid == me), "{client:#?}");
    assert!(probe_util::count(&probe.counters().expect("counters"), Counter::Deferred) >= 1);
}

/// A filter that rejects the listener itself (its remote end is 0.0.0.0) must not lose the
/// owner of the sockets it accepts, which match.
#[test]
fn accepted_sockets_keep_their_owner_when_the_listener_is_filtered_out() {
    if !root() {
        return;
    }
    let port = free_port(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut probe = attach(FilterSpec {
        addrs: vec!["127.0.0.1/32".parse::<Cidr>().expect("cidr")],
        ports: vec![port],
        ..Default::default()
    });
    // The listener is created while tracing, so only its LISTEN transition names its owner.
    let (srv, _) = server(&["--listen", &format!("127.0.0.1:{port}"), "--accept", "1"]);
    let server_pid = srv.pid();
    let (client_pid, _) = client(&format!("127.0.0.1:{port}"));
    srv.finish(LIMIT).expect("server").assert_success();
    let events = collect(&mut probe, 10);
    let r = roles(&events);
    assert!(
        !r.contains_key("listener"),
        "the listener's remote is 0.0.0.0"
    );
    assert_owner(&r["accepted"][0], server_pid, "accepted socket");
    assert_owner(&r["client"][0], client_pid, "client");
}

/// The owner table kept in user space (the default without owner filters) and the kernel's
/// (forced) see the same traffic at once and must name the same owner, the same way, for every
/// event: a client and a server in two processes, and a connection that existed before
/// tracing started (attributed from /proc), closed while traced.
#[test]
fn user_space_and_kernel_attribution_name_the_same_owners() {
    if !root() {
        return;
    }
    let ip = IpAddr::V4(Ipv4Addr::LOCALHOST);
    let old_listener = TcpListener::bind(SocketAddr::new(ip, 0)).expect("listen");
    let old_port = old_listener.local_addr().expect("addr").port();
    let old_client = TcpStream::connect(SocketAddr::new(ip, old_port)).expect("connect");
    let (old_server, _) = old_listener.accept().expect("accept");
    let port = free_port(ip);
    let spec = || FilterSpec {
        ports: vec![port, old_port],
        ..Default::default()
    };
    let scan = procscan::scan(&procscan::CgroupScan::default());
    let mut user = attach_attributed(spec(), Attribution::Auto, &scan);
    let mut kernel = attach_attributed(spec(), Attribution::Kernel, &scan);
    assert!(user.owners_in_user_space());
    assert!(!kernel.owners_in_user_space());

    let (srv, _) = server(&["--listen", &format!("127.0.0.1:{port}"), "--accept", "1"]);
    let server_pid = srv.pid();
    let (client_pid, _) = client(&format!("127.0.0.1:{port}"));
    srv.finish(LIMIT).expect("server").assert_success();
    drop(old_client);
    let mut buf = [0u8; 1];
    assert_eq!(
        std::io::Read::read(&mut &old_server, &mut buf).expect("EOF"),
        0
    );
    drop((old_server, old_listener));

    // 12 for the traced connection; the old one: client FIN_WAIT1, FIN_WAIT2, CLOSE, server
    // CLOSE_WAIT, LAST_ACK, CLOSE; its listener's CLOSE.
    let want = 12 + 7;
    let without_time = |mut e: Event| {
        e.ts_ns = 0;
        e
    };
    let key = |e: &Event| (e.skaddr, e.oldstate, e.newstate);
    let got = collect(&mut user, want);
    let mut a: Vec<_> = got.iter().copied().map(without_time).collect();
    let mut b: Vec<_> = collect(&mut kernel, want)
        .into_iter()
        .map(without_time)
        .collect();
    assert_eq!(a.len(), want, "{a:#?}");
    a.sort_by_key(key);
    b.sort_by_key(key);
    assert_eq!(a, b);

    let traced: Vec<_> = got
        .iter()
        .copied()
        .filter(|e| e.sport == port || e.dport == port)
        .collect();
    let r = roles(&traced);
    assert_owner(&r["client"][0], client_pid, "client");
    assert_owner(&r["accepted"][0], server_pid, "accepted socket");
    let me = std::process::id();
    let old: Vec<_> = a
        .iter()
        .filter(|e| e.sport == old_port || e.dport == old_port)
        .collect();
    assert_eq!(old.len(), 7, "{old:#?}");
    assert!(old.iter().all(|e| e.owner_pid == me), "{old:#?}");
    assert!(
        old.iter()
            .any(|e| e.owner_source == owner_source::PROC_SCAN),
        "the old connection's first packet-driven event is attributed from /proc: {old:#?}"
    );
    for p in [&user, &kernel] {
        let c = p.counters().expect("counters");
        assert_eq!(probe_util::count(&c, Counter::OwnerUpdateFailed), 0);
        assert_eq!(probe_util::count(&c, Counter::RingbufFull), 0);
    }
}
