//! Issue 13, listener health, end to end: over the delayed link (two network namespaces,
//! 2 x 20 ms), a server in B listens with backlog 2 and never accepts, a second one in B
//! accepts normally; a burst of clients in A connects to the first more times than its queue
//! holds, and a few to the second. The summary of `tcpstate trace -o json` must show the
//! overflow (queue depth at its limit, drops with the kernel's overflow reason, B's
//! ListenOverflows rising) on the first listener and not on the second. Needs root.
//!
//! The delay matters: on plain loopback each handshake completes inside its connect(), so the
//! queue fills before the next SYN arrives, and the kernel refuses SYNs at a full queue by
//! consuming them (no `kfree_skb`). Over the delayed link the whole burst of SYNs is answered
//! before the first ACK arrives; the ACKs beyond the queue are the drops with
//! `tcp_listen_overflow`.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;
mod support;

use std::{
    io,
    net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use probe_util::trace::Trace;
use serde_json::Value;
use support::{run_in_netns, DelayedLink, LinkConfig};

const DELAY: Duration = Duration::from_millis(20);
const LIMIT: Duration = Duration::from_secs(20);
/// Clients of the listener that never accepts, in waves of WAVE a round trip and more apart:
/// more than its queue (backlog 2, so 3 children) holds. Waves, not one burst: backlog 2 also
/// caps the SYN queue at 2, so a burst would be answered with SYN cookies, whose ACKs the
/// kernel drops as `no_socket` when the accept queue is full; in waves, the second one's SYNs
/// find the queue not yet full, and its second ACK finds it full: `tcp_listen_overflow`.
const WAVE: usize = 2;
const WAVES: usize = 4;
const WAVE_GAP: Duration = Duration::from_millis(150);
const BURST: usize = WAVE * WAVES;

fn test_port(salt: u16) -> u16 {
    47000 + (std::process::id() as u16 % 500) * 4 + salt
}

/// A process in namespace `ns`, so the tracer's netstat sampler (which reads each namespace
/// through one of its processes) finds it; killed on drop.
struct Holder(Child);

impl Holder {
    fn start(ns: &str) -> Holder {
        let child = Command::new("ip")
            .args(["netns", "exec", ns, "sleep", "60"])
            .stdin(Stdio::null())
            .spawn()
            .expect("start the namespace holder");
        let pid = child.id();
        let own = std::fs::read_link("/proc/self/ns/net").expect("own namespace");
        let deadline = Instant::now() + LIMIT;
        // `ip netns exec` enters the namespace, then execs sleep.
        while std::fs::read_link(format!("/proc/{pid}/ns/net"))
            .ok()
            .as_ref()
            == Some(&own)
            || std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map_or(true, |c| c.trim() != "sleep")
        {
            assert!(Instant::now() < deadline, "holder did not enter {ns}");
            std::thread::sleep(Duration::from_millis(10));
        }
        Holder(child)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A listening socket with an explicit backlog (std's TcpListener always asks for 128).
fn listen(addr: SocketAddrV4, backlog: i32) -> io::Result<TcpListener> {
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let one: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        if libc::bind(
            fd,
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        ) != 0
            || libc::listen(fd, backlog) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok(TcpListener::from(owned))
    }
}

/// A non-blocking connect whose SYN is retried once at most (bounded in time).
fn connect_nonblocking(addr: SocketAddrV4) -> io::Result<OwnedFd> {
    // SAFETY: plain socket calls on a descriptor this function owns.
    unsafe {
        let fd = libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            0,
        );
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let owned = OwnedFd::from_raw_fd(fd);
        let syncnt: libc::c_int = 1;
        libc::setsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_SYNCNT,
            &syncnt as *const _ as *const libc::c_void,
            std::mem::size_of::<libc::c_int>() as u32,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as libc::sa_family_t,
            sin_port: addr.port().to_be(),
            sin_addr: libc::in_addr {
                s_addr: u32::from_ne_bytes(addr.ip().octets()),
            },
            sin_zero: [0; 8],
        };
        let rc = libc::connect(
            owned.as_raw_fd(),
            &sa as *const _ as *const libc::sockaddr,
            std::mem::size_of::<libc::sockaddr_in>() as u32,
        );
        if rc != 0 && io::Error::last_os_error().raw_os_error() != Some(libc::EINPROGRESS) {
            return Err(io::Error::last_os_error());
        }
        Ok(owned)
    }
}

fn netns_inode(path: &str) -> u64 {
    let link = std::fs::read_link(path).expect("namespace link");
    let text = link.to_string_lossy();
    text.trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .expect("namespace inode")
}

fn listener(summary: &Value, port: u16) -> &Value {
    summary["listeners"]
        .as_array()
        .and_then(|a| a.iter().find(|l| l["port"] == port))
        .unwrap_or_else(|| panic!("no listener on port {port} in {summary:#}"))
}

fn n(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key:?} in {v}"))
}

#[test]
fn a_full_accept_queue_shows_on_its_listener_only() {
    if !probe_util::root() {
        println!("skipped: needs root");
        return;
    }
    let link = DelayedLink::new(LinkConfig::with_delay(DELAY)).expect("the delayed link");
    let holder = Holder::start(link.ns_b());
    let ns_b = netns_inode(&format!("/proc/{}/ns/net", holder.0.id()));
    let (full_port, ok_port) = (test_port(0), test_port(1));
    let b = link.addr_b_v4();
    let ok_s = ok_port.to_string();
    let trace = Trace::start_filtered(full_port, &["--port", &ok_s], &[]);

    // Both listeners in B, created while tracing (the tracer learns a listener's socket at
    // listen()).
    let (full, ok) = run_in_netns(link.ns_b(), || {
        Ok((
            listen(SocketAddrV4::new(b, full_port), 2)?,
            listen(SocketAddrV4::new(b, ok_port), 128)?,
        ))
    })
    .expect("listeners in B");
    let stop = Arc::new(AtomicBool::new(false));
    ok.set_nonblocking(true).expect("nonblocking");
    let accepter = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + LIMIT;
            let mut accepted = Vec::new();
            while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                match ok.accept() {
                    Ok((s, _)) => accepted.push(s),
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
            accepted.len()
        })
    };

    // From A: the burst at the listener that never accepts, then a few ordinary connections.
    let (burst, fine) = run_in_netns(link.ns_a(), || {
        let mut burst = Vec::new();
        for _ in 0..WAVES {
            for _ in 0..WAVE {
                burst.push(connect_nonblocking(SocketAddrV4::new(b, full_port))?);
            }
            std::thread::sleep(WAVE_GAP);
        }
        let mut fine = Vec::new();
        for _ in 0..3 {
            let target = SocketAddr::V4(SocketAddrV4::new(b, ok_port));
            fine.push(TcpStream::connect_timeout(&target, Duration::from_secs(3))?);
        }
        Ok((burst, fine))
    })
    .expect("clients in A");
    // Long enough for the overflowing ACKs, and the listener's first SYN-ACK retransmits (1 s)
    // and the ACKs they draw, dropped again.
    std::thread::sleep(Duration::from_millis(1800));
    stop.store(true, Ordering::Relaxed);
    let accepted = accepter.join().expect("accepter");
    assert_eq!(accepted, 3, "the ordinary listener accepted its clients");
    drop(burst);
    drop(fine);
    drop(full);

    let objs = trace.stop_objects();
    let summary = objs
        .iter()
        .rev()
        .find(|v| v["schema"] == "tcpstate.summary.v2" && v["kind"] == "final")
        .expect("a final summary");
    println!("listeners: {:#}", summary["listeners"]);
    println!("netstat: {:#}", summary["netstat"]);

    let f = listener(summary, full_port);
    assert_eq!(f["queue_limit"], 2, "{f}");
    // The kernel admits a child while the queue holds at most its limit: 3 children, the last
    // one created with the queue at 2.
    assert_eq!(n(f, "accepted"), 3, "{f}");
    assert_eq!(f["queue_max"], 2, "{f}");
    assert!(n(f, "queue_full") >= 1, "{f}");
    let overflow = f["drop_reasons"]["tcp_listen_overflow"]
        .as_u64()
        .unwrap_or(0);
    assert!(
        overflow >= 1,
        "an ACK that found the queue full is dropped with the overflow reason: {f}"
    );
    assert!(
        n(f, "synack_retransmits") >= 1,
        "the listener resends SYN-ACKs: {f}"
    );

    let o = listener(summary, ok_port);
    assert_eq!(o["queue_limit"], 128, "{o}");
    assert_eq!(n(o, "accepted"), 3, "{o}");
    assert_eq!(n(o, "queue_full"), 0, "{o}");
    assert_eq!(n(o, "drops"), 0, "{o}");
    assert!(n(o, "queue_max") < 128, "{o}");

    // B's counters rose; they are per namespace, so they cannot say which listener.
    let ns = summary["netstat"]["namespaces"]
        .as_array()
        .and_then(|a| a.iter().find(|v| v["netns"] == ns_b))
        .unwrap_or_else(|| panic!("namespace {ns_b} in {:#}", summary["netstat"]));
    let overflows = n(&ns["increase"], "listen_overflows");
    assert!(
        overflows >= (BURST - 3) as u64,
        "every refused client counts: {ns}"
    );
    assert!(n(&ns["increase"], "listen_drops") >= overflows, "{ns}");
    drop(holder);
}
