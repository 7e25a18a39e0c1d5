//! Self-tests of the delayed link between two network namespaces and of the tcppeer program:
//! the RTT the link adds, lost SYNs, a blackhole, the close modes, and cleanup.

mod skip;
mod support;

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    time::{Duration, Instant},
};

use support::{
    field_u64, link, mono_ns, netns, relay, run_client, run_in_netns, DelayedLink, LinkConfig,
    PeerProcess,
};

const D: Duration = Duration::from_millis(20);
const LIMIT: Duration = Duration::from_secs(30);
/// Upper-bound slack for timings that include a user process waking up (on this shared,
/// loaded 2-core machine that is occasionally several ms). Lower bounds stay strict: nothing
/// can beat the link's delay.
const SCHED_SLACK: Duration = Duration::from_millis(15);
const SLACK_MS: f64 = 15.0;

fn link(cfg: LinkConfig) -> DelayedLink {
    match DelayedLink::new(cfg) {
        Ok(l) => l,
        Err(e) => panic!("cannot build the delayed link: {e}"),
    }
}

fn ms(ns: u64) -> f64 {
    ns as f64 / 1e6
}

/// One connect as the client saw it: the blocking connect() call and the kernel's RTT sample.
struct Connect {
    call_ms: f64,
    kernel_rtt_ms: f64,
}

/// `count` sequential connects from A to B's `server_ip`.
fn connects(link: &DelayedLink, server_ip: IpAddr, count: u32) -> Vec<Connect> {
    let listen = SocketAddr::new(server_ip, 0).to_string();
    let (server, port) = PeerProcess::server([
        "--netns",
        link.ns_b(),
        "--listen",
        &listen,
        "--accept",
        &count.to_string(),
    ])
    .expect("server starts");
    let target = SocketAddr::new(server_ip, port).to_string();
    let out = run_client(
        [
            "--netns",
            link.ns_a(),
            "--connect",
            &target,
            "--count",
            &count.to_string(),
        ],
        LIMIT,
    )
    .expect("client runs");
    out.assert_success();
    server.finish(LIMIT).expect("server ends").assert_success();
    let conns = out.conns();
    assert_eq!(conns.len(), count as usize, "{:?}", out.lines);
    conns
        .iter()
        .map(|c| {
            assert_eq!(c["result"], "ok", "{c}");
            assert_eq!(c["error"], serde_json::Value::Null, "{c}");
            Connect {
                call_ms: ms(field_u64(c, "connect_end_ns") - field_u64(c, "connect_start_ns")),
                kernel_rtt_ms: field_u64(c, "kernel_rtt_us") as f64 / 1e3,
            }
        })
        .collect()
}

/// Prints min/median/max and returns the sorted values.
fn spread(label: &str, values: impl Iterator<Item = f64>) -> Vec<f64> {
    let mut sorted: Vec<f64> = values.collect();
    sorted.sort_by(f64::total_cmp);
    println!(
        "{label}: n={} min={:.3} ms median={:.3} ms max={:.3} ms",
        sorted.len(),
        sorted[0],
        sorted[sorted.len() / 2],
        sorted[sorted.len() - 1]
    );
    sorted
}

/// The link itself must be exact: the kernel's handshake RTT of every connect, and the relay's
/// lateness, within tolerance. The connect() call as a process sees it adds the time the
/// client waits to be scheduled after the SYN-ACK, which on a loaded machine can now and then
/// be tens of milliseconds; for it, the median and most connects must be within tolerance
/// and none may be faster than the link.
fn assert_connect_rtt(server_ip: IpAddr, label: &str) {
    let link = link(LinkConfig::with_delay(D));
    let rtt = ms(link.rtt().as_nanos() as u64);
    let conns = connects(&link, server_ip, 20);
    let kernel = spread(
        &format!("{label}: kernel RTT"),
        conns.iter().map(|c| c.kernel_rtt_ms),
    );
    let calls = spread(
        &format!("{label}: connect() call"),
        conns.iter().map(|c| c.call_ms),
    );
    let (late_mean, late_max) = link.lateness();
    println!(
        "{label}: relay {} packets, SCHED_FIFO threads: {}, lateness mean {late_mean:?} max {late_max:?}",
        link.packets_relayed(),
        link.realtime_threads()
    );
    // The relay runs at real-time priority, but on a loaded 2-core machine one packet now and
    // then still waits a few milliseconds: the mean says whether the link holds its delay, a
    // rare hiccup may show in one sample (never below the link's RTT).
    assert!(
        late_mean < Duration::from_millis(1) && late_max < Duration::from_millis(20),
        "relay late by {late_mean:?} on average, {late_max:?} at most"
    );
    let within = |v: f64| (v - rtt).abs() <= 3.0;
    let good = kernel.iter().filter(|&&v| within(v)).count();
    assert!(
        kernel[0] >= rtt - 0.5
            && (kernel[kernel.len() / 2] - rtt).abs() <= 1.0
            && good * 10 >= kernel.len() * 9,
        "{label}: kernel RTTs {kernel:?}, expected {rtt} +- 3 ms (median +- 1 ms, 90 % of them)"
    );
    let good = calls.iter().filter(|&&v| within(v)).count();
    assert!(
        calls[0] >= rtt - 1.0 && within(calls[calls.len() / 2]) && good * 4 >= calls.len() * 3,
        "{label}: connect() calls {calls:?} ms, expected {rtt} +- 3 ms"
    );
}

#[test]
fn names_fit_and_carry_the_pid() {
    let (a, b) = netns::unique_pair();
    assert!(a.len() <= 15 && b.len() <= 15, "{a} {b}");
    assert_ne!(a, b);
    assert_eq!(netns::owner_pid(&a), Some(std::process::id()));
    assert_eq!(netns::owner_pid(&b), Some(std::process::id()));
    assert_eq!(netns::owner_pid("tcpstzzzzz-zzzb"), Some(60_466_175));
    assert_eq!(netns::owner_pid("docker0"), None);
    let (c, _) = netns::unique_pair();
    assert_ne!(a, c);
}

#[test]
fn bare_syn_detection() {
    // IPv4, IHL 5, protocol TCP, TCP flags at 20 + 13.
    let mut v4 = [0u8; 40];
    v4[0] = 0x45;
    v4[9] = 6;
    v4[33] = 0x02;
    assert!(relay::is_bare_syn(&v4));
    v4[33] = 0x12; // SYN-ACK
    assert!(!relay::is_bare_syn(&v4));
    v4[33] = 0x02;
    v4[9] = 17; // UDP
    assert!(!relay::is_bare_syn(&v4));
    // IPv6, next header TCP, TCP flags at 40 + 13.
    let mut v6 = [0u8; 60];
    v6[0] = 0x60;
    v6[6] = 6;
    v6[53] = 0x02;
    assert!(relay::is_bare_syn(&v6));
    v6[53] = 0x10;
    assert!(!relay::is_bare_syn(&v6));
    assert!(!relay::is_bare_syn(&v6[..50]));
    assert!(!relay::is_bare_syn(&[]));
}

/// An IPv4 or IPv6 TCP segment built by hand (checksums left 0: the relay does not check them).
fn tcp_packet(v6: bool, flags: u8, seq: u32, payload: usize, tcp_opts: usize) -> Vec<u8> {
    let tcp_len = 20 + tcp_opts + payload;
    let mut ip = if v6 {
        let mut h = vec![0u8; 40];
        h[0] = 0x60;
        h[4..6].copy_from_slice(&(tcp_len as u16).to_be_bytes());
        h[6] = 6;
        h[7] = 64;
        h[8..24].copy_from_slice(&link::ADDR_A_V6.octets());
        h[24..40].copy_from_slice(&link::ADDR_B_V6.octets());
        h
    } else {
        let mut h = vec![0u8; 20];
        h[0] = 0x45;
        h[2..4].copy_from_slice(&((20 + tcp_len) as u16).to_be_bytes());
        h[6] = 0x40; // DF, fragment offset 0
        h[8] = 64;
        h[9] = 6;
        h[12..16].copy_from_slice(&link::ADDR_A_V4.octets());
        h[16..20].copy_from_slice(&link::ADDR_B_V4.octets());
        h
    };
    let mut tcp = vec![0u8; tcp_len];
    tcp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    tcp[2..4].copy_from_slice(&80u16.to_be_bytes());
    tcp[4..8].copy_from_slice(&seq.to_be_bytes());
    tcp[8..12].copy_from_slice(&7u32.to_be_bytes());
    tcp[12] = (((20 + tcp_opts) / 4) as u8) << 4;
    tcp[13] = flags;
    ip.extend_from_slice(&tcp);
    ip
}

#[test]
fn tcp_classification() {
    use relay::{classify, Kind, ACK, FIN, PSH, RST, SYN};
    for v6 in [false, true] {
        let syn = classify(&tcp_packet(v6, SYN, 100, 0, 20)).expect("SYN parses");
        assert!(syn.is(Kind::Syn) && !syn.is(Kind::SynAck) && !syn.is(Kind::Data));
        assert_eq!(
            (syn.sport, syn.dport, syn.seq, syn.ack),
            (40000, 80, 100, 7)
        );
        assert_eq!((syn.payload_len, syn.seq_len()), (0, 1));
        let want_src: IpAddr = if v6 {
            link::ADDR_A_V6.into()
        } else {
            link::ADDR_A_V4.into()
        };
        assert_eq!(syn.src, want_src);
        let synack = classify(&tcp_packet(v6, SYN | ACK, 5, 0, 20)).expect("SYN-ACK");
        assert!(synack.is(Kind::SynAck) && !synack.is(Kind::Syn));
        // Payload length is what follows the TCP options (data offset), not the options.
        let data = classify(&tcp_packet(v6, ACK | PSH, 101, 1448, 12)).expect("data");
        assert!(data.is(Kind::Data) && !data.is(Kind::Fin));
        assert_eq!((data.payload_len, data.seq_len()), (1448, 1448));
        let fin_data = classify(&tcp_packet(v6, ACK | FIN, 1549, 10, 12)).expect("FIN");
        assert!(fin_data.is(Kind::Fin) && fin_data.is(Kind::Data));
        assert_eq!(fin_data.seq_len(), 11);
        let rst = classify(&tcp_packet(v6, RST | ACK, 0, 0, 0)).expect("RST");
        assert!(rst.is(Kind::Rst) && !rst.is(Kind::Data));
        let ack = classify(&tcp_packet(v6, ACK, 1, 0, 12)).expect("ACK");
        assert!(!ack.is(Kind::Data) && !ack.is(Kind::Fin) && ack.seq_len() == 0);
        // Truncated: the IP length promises more than there is.
        let mut cut = tcp_packet(v6, ACK, 1, 100, 0);
        cut.truncate(cut.len() - 1);
        assert_eq!(classify(&cut), None);
        // A TCP data offset beyond the segment.
        let mut bad = tcp_packet(v6, ACK, 1, 0, 0);
        let off = if v6 { 40 + 12 } else { 20 + 12 };
        bad[off] = 0xf0;
        assert_eq!(classify(&bad), None);
    }
    // Trailing bytes past the IP length (TUN never adds them, but padding may) are not payload.
    let mut padded = tcp_packet(false, ACK, 1, 0, 0);
    padded.extend_from_slice(&[0; 6]);
    assert_eq!(classify(&padded).map(|m| m.payload_len), Some(0));
    // Not TCP: UDP; a non-first IPv4 fragment; garbage.
    let mut udp = tcp_packet(false, SYN, 1, 0, 0);
    udp[9] = 17;
    assert_eq!(classify(&udp), None);
    let mut frag = tcp_packet(false, SYN, 1, 0, 0);
    frag[7] = 0x10;
    assert_eq!(classify(&frag), None);
    assert_eq!(classify(&[]), None);
    assert_eq!(classify(&[0x45, 0, 0]), None);
}

/// The relay's bookkeeping on a made-up exchange: chosen drops by kind and rank, retransmits
/// recognised by sequence number, application bytes counted once.
#[test]
fn relay_ledger_drops_and_counts() {
    use relay::{classify, Dir, DropRule, Kind, Ledger, ACK, FIN, SYN};
    let seg = |flags, seq, payload| classify(&tcp_packet(false, flags, seq, payload, 0)).unwrap();
    let mut l = Ledger::with_rules(&[
        DropRule::first(Dir::AToB, Kind::Syn),
        DropRule {
            dir: Dir::AToB,
            kind: Kind::Data,
            nth: 2,
        },
        DropRule::first(Dir::AToB, Kind::Fin),
        DropRule::first(Dir::BToA, Kind::SynAck),
    ]);
    let a = Dir::AToB;
    let sent =
        |l: &mut Ledger, flags, seq, len| l.observe(0, a, seg(flags, seq, len), false, false);
    assert!(sent(&mut l, SYN, 1000, 0), "first SYN dropped");
    assert!(!sent(&mut l, SYN, 1000, 0), "its retransmission passes");
    // B's SYN-ACK: its own flow and direction.
    let mut synack = seg(SYN | ACK, 5000, 0);
    std::mem::swap(&mut synack.src, &mut synack.dst);
    assert!(
        l.observe(0, Dir::BToA, synack, false, false),
        "first SYN-ACK dropped"
    );
    assert!(!l.observe(0, Dir::BToA, synack, false, false));
    assert!(!sent(&mut l, ACK, 1001, 100));
    assert!(sent(&mut l, ACK, 1101, 100), "second data segment dropped");
    assert!(!sent(&mut l, ACK, 1201, 100));
    assert!(!sent(&mut l, ACK, 1101, 100), "resent: passes");
    assert!(!sent(&mut l, ACK, 1301, 0), "pure ACK");
    assert!(sent(&mut l, ACK | FIN, 1301, 0), "first FIN dropped");
    assert!(!sent(&mut l, ACK | FIN, 1301, 0));
    // A blackholed segment is counted as seen and as blackholed, not against the rules.
    assert!(l.observe(0, a, seg(ACK, 1302, 0), true, false));
    let c = l.counts(a);
    assert_eq!((c.syn, c.dropped_syn), (2, 1));
    assert_eq!((c.data, c.dropped_data, c.data_retransmits), (4, 1, 1));
    assert_eq!((c.fin, c.dropped_fin), (2, 1));
    // The resent SYN, data segment and FIN.
    assert_eq!(c.retransmits, 3);
    assert_eq!(c.new_payload_bytes, 300);
    assert_eq!((c.segments, c.blackholed), (10, 1));
    let b = l.counts(Dir::BToA);
    assert_eq!((b.synack, b.dropped_synack, b.retransmits), (2, 1, 1));
    // A new SYN on the same 4-tuple with another ISN is a new connection, not a retransmit.
    assert!(!sent(&mut l, SYN, 90_000, 0));
    assert_eq!(l.counts(a).retransmits, 3);
}

#[test]
fn connect_rtt_ipv4() {
    if support::need_root("connect_rtt_ipv4") {
        assert_connect_rtt(IpAddr::V4(link::ADDR_B_V4), "IPv4 connect, D=20ms");
    }
}

#[test]
fn connect_rtt_ipv6() {
    if support::need_root("connect_rtt_ipv6") {
        assert_connect_rtt(IpAddr::V6(link::ADDR_B_V6), "IPv6 connect, D=20ms");
    }
}

/// The same path from inside this process (no tcppeer): sockets made on threads that entered
/// the namespaces, a request/response that takes one RTT.
#[test]
fn in_process_round_trip() {
    if !support::need_root("in_process_round_trip") {
        return;
    }
    let link = link(LinkConfig::with_delay(D));
    let listener = run_in_netns(link.ns_b(), || {
        TcpListener::bind(SocketAddr::new(IpAddr::V4(link.addr_b_v4()), 0))
    })
    .expect("listener in B");
    let target = listener.local_addr().expect("listener address");
    let server = std::thread::spawn(move || -> std::io::Result<()> {
        let (mut s, _) = listener.accept()?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut byte = [0u8; 1];
        s.read_exact(&mut byte)?;
        s.write_all(&byte)
    });
    let mut client = run_in_netns(link.ns_a(), || {
        TcpStream::connect_timeout(&target, Duration::from_secs(5))
    })
    .expect("connect from A");
    client
        .set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    let start = Instant::now();
    client.write_all(b"x").expect("send");
    let mut byte = [0u8; 1];
    client.read_exact(&mut byte).expect("echo");
    let rtt = start.elapsed();
    server.join().expect("server thread").expect("server io");
    println!("in-process echo RTT: {rtt:?}");
    assert!(
        rtt >= D * 2 - Duration::from_millis(1) && rtt <= D * 2 + SCHED_SLACK,
        "echo RTT {rtt:?}"
    );
    assert!(link.packets_relayed() >= 6, "{}", link.packets_relayed());
}

#[test]
fn lost_syn_is_retransmitted_after_one_second() {
    if !support::need_root("lost_syn_is_retransmitted_after_one_second") {
        return;
    }
    let link = link(LinkConfig {
        drop_syns: 1,
        ..LinkConfig::with_delay(D)
    });
    let conns = connects(&link, IpAddr::V4(link::ADDR_B_V4), 2);
    let (first, second) = (&conns[0], &conns[1]);
    println!(
        "connect with one lost SYN: {:.3} ms (kernel RTT {:.3} ms); next connect: {:.3} ms \
         (kernel RTT {:.3} ms)",
        first.call_ms, first.kernel_rtt_ms, second.call_ms, second.kernel_rtt_ms
    );
    assert_eq!(link.syns_dropped(), 1);
    // The SYN timer (1 s) runs on the timer wheel: at HZ=250 it can fire up to ~32 ms late.
    assert!(
        first.call_ms >= 1000.0 + 40.0 - 3.0 && first.call_ms <= 1000.0 + 40.0 + 80.0,
        "connect took {:.3} ms",
        first.call_ms
    );
    // Only the first SYN was dropped: the next handshake takes one RTT.
    assert!(
        (second.kernel_rtt_ms - 40.0).abs() <= 3.0 && second.call_ms < 500.0,
        "second connect {:.3} ms, kernel RTT {:.3} ms",
        second.call_ms,
        second.kernel_rtt_ms
    );
}

#[test]
fn blackhole_connect_times_out() {
    if !support::need_root("blackhole_connect_times_out") {
        return;
    }
    let link = link(LinkConfig {
        blackhole: true,
        ..LinkConfig::with_delay(D)
    });
    let target = SocketAddr::new(IpAddr::V4(link.addr_b_v4()), 9).to_string();
    let started = Instant::now();
    let out = run_client(
        [
            "--netns",
            link.ns_a(),
            "--connect",
            &target,
            "--timeout-s",
            "1",
        ],
        LIMIT,
    )
    .expect("client runs");
    let elapsed = started.elapsed();
    out.assert_success();
    let conns = out.conns();
    assert_eq!(conns.len(), 1, "{:?}", out.lines);
    assert_eq!(conns[0]["result"], "timeout", "{}", conns[0]);
    let took = ms(field_u64(conns[0], "connect_end_ns") - field_u64(conns[0], "connect_start_ns"));
    println!("blackholed connect gave up after {took:.3} ms");
    assert!((990.0..1100.0).contains(&took), "connect took {took:.3} ms");
    assert!(elapsed < Duration::from_secs(5), "client ran {elapsed:?}");
    // The first SYN and its retransmission at ~1 s, at least the first of which was dropped.
    assert!(link.packets_dropped() >= 1);
    assert_eq!(link.syns_dropped(), 0);
}

#[test]
fn refused_connect_is_reported() {
    if !support::need_root("refused_connect_is_reported") {
        return;
    }
    let link = link(LinkConfig::with_delay(D));
    // Nothing listens on B's port 9: the RST comes back after one RTT.
    let target = SocketAddr::new(IpAddr::V6(link.addr_b_v6()), 9).to_string();
    let out =
        run_client(["--netns", link.ns_a(), "--connect", &target], LIMIT).expect("client runs");
    out.assert_success();
    let conns = out.conns();
    assert_eq!(conns[0]["result"], "refused", "{}", conns[0]);
    let took = ms(field_u64(conns[0], "connect_end_ns") - field_u64(conns[0], "connect_start_ns"));
    println!("refused after {took:.3} ms");
    assert!(
        (39.0..40.0 + SLACK_MS).contains(&took),
        "refused after {took:.3} ms"
    );
}

/// Both ends shut down their write side at the same instant: the FINs cross on the link, so
/// each end sees the other's EOF one delay after its own shutdown, not after a round trip.
#[test]
fn simultaneous_close() {
    if !support::need_root("simultaneous_close") {
        return;
    }
    let link = link(LinkConfig::with_delay(D));
    let at = (mono_ns() + 1_000_000_000).to_string();
    let (server, port) = PeerProcess::server([
        "--netns",
        link.ns_b(),
        "--listen",
        &SocketAddr::new(IpAddr::V4(link.addr_b_v4()), 0).to_string(),
        "--shutdown-at-mono-ns",
        &at,
    ])
    .expect("server starts");
    let target = SocketAddr::new(IpAddr::V4(link.addr_b_v4()), port).to_string();
    let client = run_client(
        [
            "--netns",
            link.ns_a(),
            "--connect",
            &target,
            "--shutdown-at-mono-ns",
            &at,
        ],
        LIMIT,
    )
    .expect("client runs");
    let server = server.finish(LIMIT).expect("server ends");
    client.assert_success();
    server.assert_success();
    let at: u64 = at.parse().expect("number");
    let record = |side: &str, out: &support::PeerOutput| {
        let conns = out.conns();
        assert_eq!(conns.len(), 1, "{side}: {:?}", out.lines);
        let c = conns[0].clone();
        assert_eq!(c["error"], serde_json::Value::Null, "{side}: {c}");
        (field_u64(&c, "shutdown_ns"), field_u64(&c, "eof_ns"))
    };
    let (client_shut, client_eof) = record("client", &client);
    let (server_shut, server_eof) = record("server", &server);
    let after_t = |t: u64| ms(t.saturating_sub(at));
    println!(
        "simultaneous close: client shutdown T+{:.3} ms, EOF T+{:.3} ms; server shutdown \
         T+{:.3} ms, EOF T+{:.3} ms",
        after_t(client_shut),
        after_t(client_eof),
        after_t(server_shut),
        after_t(server_eof)
    );
    // The FINs cross when each end sends its own before the other's arrives, one delay after
    // it was sent: both shutdowns must be much closer together than D.
    let apart = ms(client_shut.abs_diff(server_shut));
    assert!(apart < 10.0, "shutdowns {apart:.3} ms apart");
    for (side, eof, peer_shut) in [
        ("client", client_eof, server_shut),
        ("server", server_eof, client_shut),
    ] {
        let fin = ms(eof.saturating_sub(peer_shut));
        assert!(
            (19.5..20.0 + SLACK_MS).contains(&fin),
            "{side} saw the peer's FIN {fin:.3} ms after the peer's shutdown"
        );
    }
}

/// The server's close modes: a CLOSE_WAIT of a given length, a half-close with data still
/// flowing the other way, and an abortive close.
#[test]
fn peer_close_modes() {
    if !support::need_root("peer_close_modes") {
        return;
    }
    let link = link(LinkConfig::with_delay(D));
    let listen = SocketAddr::new(IpAddr::V4(link.addr_b_v4()), 0).to_string();
    let run = |server_args: &[&str], client_args: &[&str]| {
        let mut args = vec!["--netns", link.ns_b(), "--listen", &listen];
        args.extend_from_slice(server_args);
        let (server, port) = PeerProcess::server(&args).expect("server starts");
        let target = SocketAddr::new(IpAddr::V4(link.addr_b_v4()), port).to_string();
        let mut args = vec!["--netns", link.ns_a(), "--connect", &target];
        args.extend_from_slice(client_args);
        let client = run_client(&args, LIMIT).expect("client runs");
        let server = server.finish(LIMIT).expect("server ends");
        client.assert_success();
        server.assert_success();
        let c = client.conns()[0].clone();
        let s = server.conns()[0].clone();
        (c, s)
    };

    let (_, s) = run(&["--close-wait-ms", "150"], &["--send", "1000"]);
    assert_eq!(s["bytes_received"], 1000, "{s}");
    let close_wait = ms(field_u64(&s, "close_ns") - field_u64(&s, "eof_ns"));
    assert!(
        (150.0..150.0 + SLACK_MS).contains(&close_wait),
        "CLOSE_WAIT {close_wait:.3} ms"
    );

    let (c, s) = run(
        &["--shutdown-write-then-read"],
        &["--wait-eof", "--send", "5000"],
    );
    assert_eq!(s["bytes_received"], 5000, "{s}");
    assert_eq!(s["error"], serde_json::Value::Null, "{s}");
    assert_eq!(c["bytes_sent"], 5000, "{c}");
    // The client saw the server's FIN one delay after the server's shutdown.
    let fin = ms(field_u64(&c, "eof_ns") - field_u64(&s, "shutdown_ns"));
    assert!(
        (19.5..20.0 + SLACK_MS).contains(&fin),
        "FIN took {fin:.3} ms"
    );

    let (c, _) = run(&["--close-first", "--linger0"], &["--wait-eof"]);
    let err = c["error"].as_str().unwrap_or_default();
    assert!(err.contains("reset"), "client should see the RST: {c}");
}

#[test]
fn namespaces_are_removed_on_drop_and_stale_ones_at_creation() {
    if !support::need_root("namespaces_are_removed_on_drop_and_stale_ones_at_creation") {
        return;
    }
    // A namespace named for a pid that cannot exist (pids are below pid_max), as a killed
    // test process would leave behind.
    let pid_max: u32 = std::fs::read_to_string("/proc/sys/kernel/pid_max")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(4_194_304);
    let (stale, _) = netns::unique_pair();
    let stale = stale.replacen(
        &format!("{}-", netns::base36(std::process::id())),
        // Above pid_max, so dead, and unique to this process: copies of this test running at
        // the same time do not touch each other's.
        &format!("{}-", netns::base36(pid_max + std::process::id())),
        1,
    );
    assert_eq!(netns::owner_pid(&stale), Some(pid_max + std::process::id()));
    netns::add(&stale).expect("add stale namespace");
    assert!(netns::exists(&stale));

    let link = link(LinkConfig::with_delay(D));
    assert!(!netns::exists(&stale), "stale namespace {stale} survived");
    let (a, b) = (link.ns_a().to_owned(), link.ns_b().to_owned());
    let listed = netns::list();
    assert!(listed.contains(&a) && listed.contains(&b), "{listed:?}");
    drop(link);
    let listed = netns::list();
    assert!(
        !listed.contains(&a) && !listed.contains(&b),
        "namespaces left after drop: {listed:?}"
    );
    // `ip` agrees (it reads the same /run/netns, but this is what a person would check).
    let out = std::process::Command::new("ip")
        .args(["netns", "list"])
        .output()
        .expect("ip netns list");
    let text = String::from_utf8_lossy(&out.stdout);
    let names: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert!(
        !names.contains(&a.as_str()) && !names.contains(&b.as_str()),
        "{text}"
    );
}

/// A test that fails while the link (and a peer inside it) is alive still leaves nothing.
#[test]
fn namespaces_are_removed_when_a_test_panics() {
    if !support::need_root("namespaces_are_removed_when_a_test_panics") {
        return;
    }
    let names = std::sync::Mutex::new(Vec::new());
    let result = std::panic::catch_unwind(|| {
        let link = link(LinkConfig::with_delay(D));
        let listen = SocketAddr::new(IpAddr::V4(link.addr_b_v4()), 0).to_string();
        let (_server, _) =
            PeerProcess::server(["--netns", link.ns_b(), "--listen", &listen]).expect("server");
        if let Ok(mut n) = names.lock() {
            n.extend([link.ns_a().to_owned(), link.ns_b().to_owned()]);
        }
        panic!("deliberate failure inside a test using the link");
    });
    assert!(result.is_err());
    let names = names.into_inner().unwrap_or_default();
    assert_eq!(names.len(), 2);
    let listed = netns::list();
    for name in &names {
        assert!(
            !listed.contains(name),
            "{name} left after a panic: {listed:?}"
        );
    }
}
