//! Issue 10 at the kernel boundary: the socket facts read at handshake ends and closes, and the
//! joined retransmit/reset tracepoints, with the real program on loopback. Needs root; each
//! test says so and passes trivially without it.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;

use std::{
    io::{Read, Write},
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream},
    os::fd::AsRawFd,
    time::Duration,
};

use probe_util::{attach_generic, collect_inputs, free_port, port_probe, roles, root};
use tcpstate::{
    event::Event,
    facts::{Facts, ResetRecord},
    filter::FilterSpec,
    input::Input,
    kernel::probe::Probe,
};
use tcpstate_common::{counter, names, reset_direction, state::*, tcp_flags};

const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const LIMIT: Duration = Duration::from_secs(3);

fn events(inputs: &[Input]) -> Vec<Event> {
    inputs
        .iter()
        .filter_map(|i| match i {
            Input::Event(e) => Some(*e),
            _ => None,
        })
        .collect()
}

fn facts_of(inputs: &[Input], skaddr: u64, old: u8, new: u8) -> Facts {
    let found: Vec<Facts> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::Facts(f) if f.skaddr == skaddr && f.oldstate == old && f.newstate == new => {
                Some(*f)
            }
            _ => None,
        })
        .collect();
    assert_eq!(
        found.len(),
        1,
        "facts {old}->{new} of {skaddr:x}: {inputs:#?}"
    );
    // Each facts record follows the event of the same transition, with its timestamp.
    let ev = events(inputs)
        .into_iter()
        .find(|e| e.skaddr == skaddr && e.oldstate == old && e.newstate == new)
        .expect("the transition's event");
    assert_eq!(ev.ts_ns, found[0].ts_ns);
    found[0]
}

fn resets(inputs: &[Input]) -> Vec<ResetRecord> {
    inputs
        .iter()
        .filter_map(|i| match i {
            Input::Reset(r) => Some(*r),
            _ => None,
        })
        .collect()
}

fn assert_all_joined(probe: &Probe) {
    let attached = probe.joined_programs();
    for (prog, ..) in names::JOINED {
        assert!(
            attached.contains(&prog),
            "{prog} not attached; notices: {:?}",
            probe.notices
        );
    }
    // Listener drops: this kernel's skb:kfree_skb has rx_sk (Linux 6.12+).
    assert!(
        attached.contains(&names::KFREE_SKB) && probe.drops_traced,
        "kfree_skb not attached; notices: {:?}",
        probe.notices
    );
    assert!(probe.notices.is_empty(), "notices: {:?}", probe.notices);
}

#[test]
fn every_program_passes_the_verifier_in_both_record_readers() {
    if !root() {
        return;
    }
    let p = port_probe(free_port(LOOPBACK));
    assert_all_joined(&p);
    drop(p);
    let p = attach_generic(FilterSpec {
        ports: vec![free_port(LOOPBACK)],
        ..Default::default()
    });
    assert_all_joined(&p);
    // Unfiltered and with an owner filter: other code paths for the verifier.
    let p = probe_util::attach(FilterSpec::default());
    assert_all_joined(&p);
    let p = probe_util::attach(FilterSpec {
        pids: vec![std::process::id()],
        ..Default::default()
    });
    assert_all_joined(&p);
}

/// The client sends 3000 bytes, the server 7000; the client closes first.
#[test]
fn facts_at_close_show_the_bytes_each_side_moved() {
    if !root() {
        return;
    }
    let port = free_port(LOOPBACK);
    let mut probe = port_probe(port);
    let listener = TcpListener::bind(SocketAddr::new(LOOPBACK, port)).expect("listen");
    let mut client = TcpStream::connect(SocketAddr::new(LOOPBACK, port)).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    client.write_all(&[1u8; 3000]).expect("client write");
    let mut buf = vec![0u8; 7000];
    server.read_exact(&mut buf[..3000]).expect("server read");
    server.write_all(&[2u8; 7000]).expect("server write");
    client.read_exact(&mut buf).expect("client read");
    drop(client);
    assert_eq!(server.read(&mut buf).expect("read EOF"), 0);
    drop(server);
    drop(listener);

    let inputs = collect_inputs(&mut probe, 12, LIMIT);
    let roles = roles(&events(&inputs));
    let client = roles["client"][0][0].skaddr;
    let accepted = roles["accepted"][0][0].skaddr;

    let c = facts_of(&inputs, client, FIN_WAIT2, CLOSE);
    // The client's SYN and FIN count as acknowledged, the server's FIN as received.
    assert_eq!(
        (c.bytes_acked, c.bytes_received),
        (Some(3002), Some(7001)),
        "{c:#?}"
    );
    assert_eq!(
        (c.sk_err, c.total_retrans, c.bytes_retrans),
        (Some(0), Some(0), Some(0))
    );
    assert!(c.srtt_us.is_some_and(|v| v > 0), "{c:#?}");
    assert!(c.min_rtt_us.is_some_and(|v| v > 0), "{c:#?}");
    assert!(c.segs_in.is_some_and(|v| v >= 3) && c.segs_out.is_some_and(|v| v >= 3));
    let s = facts_of(&inputs, accepted, LAST_ACK, CLOSE);
    // An accepted socket's SYN-ACK is not counted.
    assert_eq!(
        (s.bytes_acked, s.bytes_received),
        (Some(7001), Some(3001)),
        "{s:#?}"
    );
    assert_eq!(s.sk_err, Some(0));

    // The ends of both handshakes: no retransmits, and the accepted socket already measured
    // its SYN-ACK round trip.
    let ch = facts_of(&inputs, client, SYN_SENT, ESTABLISHED);
    assert_eq!(ch.total_retrans, Some(0));
    let sh = facts_of(&inputs, accepted, SYN_RECV, ESTABLISHED);
    assert_eq!(sh.total_retrans, Some(0));
    assert!(sh.srtt_us.is_some_and(|v| v > 0), "{sh:#?}");
    // Only what a handshake needs is read there (sk_err lies in a group of its own here).
    assert_eq!(sh.sk_err, None, "{sh:#?}");
    // Nothing else gets facts: two per socket, none for the listener.
    let n = inputs
        .iter()
        .filter(|i| matches!(i, Input::Facts(_)))
        .count();
    assert_eq!(n, 4, "{inputs:#?}");
    assert_eq!(probe.counter(counter::FACTS_SUBMITTED).expect("counter"), 4);
    assert_eq!(
        probe.counter(counter::FACTS_RINGBUF_FULL).expect("counter"),
        0
    );
}

/// A connect to a port nobody listens on: this host refuses it (a socket-less RST answering
/// the SYN) and the client receives that RST and fails with ECONNREFUSED.
#[test]
fn refused_connect_has_errno_and_both_resets() {
    if !root() {
        return;
    }
    let port = free_port(LOOPBACK);
    let mut probe = port_probe(port);
    let err = TcpStream::connect(SocketAddr::new(LOOPBACK, port)).expect_err("refused");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));

    let inputs = collect_inputs(&mut probe, 2, LIMIT);
    let roles = roles(&events(&inputs));
    let client = roles["client"][0][0].skaddr;
    let f = facts_of(&inputs, client, SYN_SENT, CLOSE);
    assert_eq!(f.sk_err, Some(libc::ECONNREFUSED), "{f:#?}");
    assert_eq!(f.total_retrans, Some(0));

    let rs = resets(&inputs);
    let received: Vec<_> = rs
        .iter()
        .filter(|r| r.direction == reset_direction::RECEIVED)
        .collect();
    assert_eq!(received.len(), 1, "{rs:#?}");
    assert_eq!(received[0].skaddr, client);
    assert_eq!(received[0].dport, port);
    let sent: Vec<_> = rs
        .iter()
        .filter(|r| r.direction == reset_direction::SENT)
        .collect();
    assert_eq!(sent.len(), 1, "{rs:#?}");
    let r = sent[0];
    assert_eq!((r.skaddr, r.state), (0, 0), "{r:#?}");
    assert_eq!(r.seg_flags_known, 1, "{r:#?}");
    assert_ne!(r.seg_flags & tcp_flags::SYN, 0, "{r:#?}");
    assert_eq!(r.seg_flags & tcp_flags::ACK, 0, "{r:#?}");
    // This host's end (saddr/sport) is the refusing port; the peer is the client.
    assert_eq!(r.family, u16::from(tcpstate_common::AF_INET));
    assert_eq!(r.sport, port, "{r:#?}");
    assert_eq!(r.dport, received[0].sport, "{r:#?}");
    assert_eq!(&r.saddr[..4], &[127, 0, 0, 1]);
    assert_eq!(
        reason_name(&probe.reset_reasons, r.reason),
        Some("no_socket"),
        "{r:#?}"
    );
}

/// The same over IPv6: the socket address storage of tcp_send_reset holds a sockaddr_in6.
#[test]
fn refused_ipv6_connect_has_its_addresses() {
    if !root() {
        return;
    }
    let ip = IpAddr::V6(std::net::Ipv6Addr::LOCALHOST);
    let port = free_port(ip);
    let mut probe = port_probe(port);
    let err = TcpStream::connect(SocketAddr::new(ip, port)).expect_err("refused");
    assert_eq!(err.raw_os_error(), Some(libc::ECONNREFUSED));
    let inputs = collect_inputs(&mut probe, 2, LIMIT);
    let rs = resets(&inputs);
    let sent: Vec<_> = rs
        .iter()
        .filter(|r| r.direction == reset_direction::SENT)
        .collect();
    assert_eq!(sent.len(), 1, "{rs:#?}");
    let r = sent[0];
    assert_eq!(r.family, u16::from(tcpstate_common::AF_INET6), "{r:#?}");
    assert_eq!(r.sport, port, "{r:#?}");
    let one: [u8; 16] = std::net::Ipv6Addr::LOCALHOST.octets();
    assert_eq!((r.saddr, r.daddr), (one, one), "{r:#?}");
    assert_ne!(r.seg_flags & tcp_flags::SYN, 0, "{r:#?}");
    let received = rs
        .iter()
        .find(|r| r.direction == reset_direction::RECEIVED)
        .expect("received reset");
    assert_eq!((received.family, received.dport), (r.family, port));
    assert_eq!(received.sport, r.dport);
}

/// SO_LINGER with a zero timeout: close() aborts with a RST, which the peer receives.
#[test]
fn linger_zero_close_sends_a_reset_the_peer_receives() {
    if !root() {
        return;
    }
    let port = free_port(LOOPBACK);
    linger_zero(port, port_probe(port));
}

/// The same under an owner filter: the RST is sent after the socket's owner entry is gone
/// (-> CLOSE comes first), from the owner's own close().
#[test]
fn linger_zero_reset_passes_an_owner_filter() {
    if !root() {
        return;
    }
    let port = free_port(LOOPBACK);
    let probe = probe_util::attach(FilterSpec {
        pids: vec![std::process::id()],
        ports: vec![port],
        ..Default::default()
    });
    linger_zero(port, probe);
}

fn linger_zero(port: u16, mut probe: Probe) {
    let listener = TcpListener::bind(SocketAddr::new(LOOPBACK, port)).expect("listen");
    let client = TcpStream::connect(SocketAddr::new(LOOPBACK, port)).expect("connect");
    let (mut server, _) = listener.accept().expect("accept");
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: a valid socket and a linger struct of the size given.
    let rc = unsafe {
        libc::setsockopt(
            client.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    drop(client);
    let mut buf = [0u8; 16];
    let r = server.read(&mut buf);
    assert_eq!(
        r.as_ref().map_err(|e| e.raw_os_error()),
        Err(Some(libc::ECONNRESET)),
        "{r:?}"
    );
    drop(server);
    drop(listener);

    let inputs = collect_inputs(&mut probe, 8, LIMIT);
    let roles = roles(&events(&inputs));
    let client = roles["client"][0][0].skaddr;
    let accepted = roles["accepted"][0][0].skaddr;
    let rs = resets(&inputs);
    let sent: Vec<_> = rs
        .iter()
        .filter(|r| r.direction == reset_direction::SENT)
        .collect();
    assert_eq!(sent.len(), 1, "{rs:#?}");
    assert_eq!(sent[0].skaddr, client, "{rs:#?}");
    assert_eq!(
        (sent[0].sport, sent[0].dport),
        (roles["client"][0][1].sport, port)
    );
    let reason = reason_name(&probe.reset_reasons, sent[0].reason);
    assert!(reason.is_some(), "{:?}", sent[0]);
    eprintln!("linger 0 reset reason: {reason:?}");
    let received: Vec<_> = rs
        .iter()
        .filter(|r| r.direction == reset_direction::RECEIVED)
        .collect();
    assert_eq!(received.len(), 1, "{rs:#?}");
    assert_eq!(received[0].skaddr, accepted);
    let s = facts_of(&inputs, accepted, ESTABLISHED, CLOSE);
    assert_eq!(s.sk_err, Some(libc::ECONNRESET), "{s:#?}");
    let c = facts_of(&inputs, client, ESTABLISHED, CLOSE);
    assert_eq!(c.sk_err, Some(0), "{c:#?}");
}

/// The joined programs apply the same filters: another port's resets do not arrive.
#[test]
fn joined_events_are_filtered_in_the_kernel() {
    if !root() {
        return;
    }
    let watched = free_port(LOOPBACK);
    let other = free_port(LOOPBACK);
    let mut probe = port_probe(watched);
    let _ = TcpStream::connect(SocketAddr::new(LOOPBACK, other)).expect_err("refused");
    let inputs = collect_inputs(&mut probe, 1, Duration::from_millis(500));
    assert!(inputs.is_empty(), "{inputs:#?}");
    let seen = probe.counter(counter::JOINED_SEEN).expect("counter");
    let filtered = probe.counter(counter::JOINED_FILTERED).expect("counter");
    assert!(
        seen >= 2 && filtered == seen,
        "seen {seen}, filtered {filtered}"
    );
    assert_eq!(
        probe.counter(counter::JOINED_SUBMITTED).expect("counter"),
        0
    );
}

/// A listener with a full accept queue drops a SYN: the client retransmits it after 1 s, and
/// the retransmit record says so with the segment's own flags.
#[test]
fn a_dropped_syn_is_a_syn_retransmit_with_its_flags() {
    if !root() {
        return;
    }
    use std::os::fd::FromRawFd;
    use tcpstate::facts::RetransmitRecord;
    use tcpstate_common::{retransmit_kind, retransmit_known};

    let port = free_port(LOOPBACK);
    let mut probe = port_probe(port);
    // SAFETY: plain socket calls on a socket this test owns; the fd is handed to TcpListener.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            (&one as *const libc::c_int).cast(),
            4,
        );
        let addr = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: port.to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from(Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::bind(
            fd,
            (&addr as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        );
        assert_eq!(rc, 0);
        // Backlog 0: one queued connection fills the accept queue.
        assert_eq!(libc::listen(fd, 0), 0);
        TcpListener::from_raw_fd(fd)
    };
    let first = TcpStream::connect(SocketAddr::new(LOOPBACK, port)).expect("first connect");
    let second = std::thread::spawn(move || {
        TcpStream::connect_timeout(&SocketAddr::new(LOOPBACK, port), Duration::from_secs(5))
    });
    std::thread::sleep(Duration::from_millis(300));
    let (a1, _) = listener.accept().expect("accept first");
    let second = second.join().expect("join").expect("second connect");
    let second_port = second.local_addr().expect("addr").port();
    let (a2, _) = listener.accept().expect("accept second");
    drop((first, second, a1, a2, listener));

    let inputs = collect_inputs(&mut probe, 22, LIMIT);
    let retx: Vec<RetransmitRecord> = inputs
        .iter()
        .filter_map(|i| match i {
            Input::Retransmit(r) => Some(*r),
            _ => None,
        })
        .collect();
    assert_eq!(retx.len(), 1, "{retx:#?}");
    let r = retx[0];
    assert_eq!(
        (r.kind, r.state),
        (retransmit_kind::SKB, SYN_SENT),
        "{r:#?}"
    );
    let all = retransmit_known::TCP_FLAGS | retransmit_known::SEGS | retransmit_known::ERR;
    assert_eq!(r.known, all, "{r:#?}");
    assert_eq!(
        (r.tcp_flags, r.segs, r.err),
        (tcp_flags::SYN, 1, 0),
        "{r:#?}"
    );
    assert_eq!((r.sport, r.dport), (second_port, port), "{r:#?}");
    assert_eq!(&r.saddr[..4], &[127, 0, 0, 1]);
    let f = facts_of(&inputs, r.skaddr, SYN_SENT, ESTABLISHED);
    assert_eq!(f.total_retrans, Some(1), "{f:#?}");
}

/// The name of a reset reason value in the probe's table (from BTF).
fn reason_name(names: &[String], reason: u32) -> Option<&str> {
    names
        .get(usize::try_from(reason).ok()?)
        .map(String::as_str)
        .filter(|n| !n.is_empty())
}
