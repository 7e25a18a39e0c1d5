//! No state change is lost to the kernel's recursion guard: those that happen inside the
//! program's own run are rescued. In a file of its own: its storm of connections would flood
//! the other kernel tests' probes if they ran beside it (cargo runs test files one at a time).
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;

use std::{
    io::{ErrorKind, Read},
    net::{Ipv4Addr, TcpListener, TcpStream},
    sync::atomic::{AtomicBool, Ordering},
    sync::Arc,
    thread,
    time::{Duration, Instant},
};

use probe_util::{count, port_probe, root};
use tcpstate::{
    input::{Counter, Input},
    kernel::probe::Probe,
};

/// State changes that happen inside the program's own run on the same CPU (a softirq that
/// interrupts it) are skipped by the kernel's per-program guard: the herald and the rescue
/// program around the main one must make up for every one of them, with none lost and none
/// handled twice. Client threads connect and wait for the server's close while a server thread
/// accepts and closes, so one end's packets are processed in softirq while the other end's
/// state changes run the program (the shape of the benchmark's epoll storm). Bounded: at most
/// 6 s of traffic, stopped once 20 changes were rescued (about 3 s here).
#[test]
fn state_changes_nested_in_the_program_are_rescued_not_lost() {
    if !root() {
        return;
    }
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("listen");
    listener.set_nonblocking(true).expect("nonblocking");
    let addr = listener.local_addr().expect("addr");
    let mut probe = port_probe(addr.port());
    assert_eq!(probe.attachment, "BTF tracepoint, with rescue");
    let stop = Arc::new(AtomicBool::new(false));
    let server = {
        let stop = Arc::clone(&stop);
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                match listener.accept() {
                    // The server closes first: TIME_WAIT stays on its side, and the clients'
                    // ports are free again at once.
                    Ok((s, _)) => drop(s),
                    Err(e) if e.kind() == ErrorKind::WouldBlock => thread::yield_now(),
                    Err(e) => panic!("accept: {e}"),
                }
            }
        })
    };
    let clients: Vec<_> = (0..4)
        .map(|_| {
            let stop = Arc::clone(&stop);
            thread::spawn(move || {
                let mut made = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut c) = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    else {
                        continue;
                    };
                    let _ = c.set_read_timeout(Some(Duration::from_secs(2)));
                    let _ = c.read(&mut [0u8; 1]);
                    made += 1;
                }
                made
            })
        })
        .collect();
    let rescued = |p: &Probe| {
        p.counters()
            .ok()
            .and_then(|c| c.get(Counter::Rescued))
            .unwrap_or(0)
    };
    let mut decoder = probe.decoder();
    let mut ring = probe.take_events().expect("ring buffer");
    let mut delivered = 0u64;
    let mut drain = || {
        let mut events = 0u64;
        while let Some(item) = ring.next() {
            for input in decoder.decode(&item).expect("decode") {
                events += u64::from(matches!(input, Input::Event(_)));
            }
        }
        events
    };
    let submitted = |p: &Probe| {
        p.counters()
            .ok()
            .and_then(|c| c.get(Counter::Submitted))
            .unwrap_or(0)
    };
    let started = Instant::now();
    while started.elapsed() < Duration::from_secs(6) && rescued(&probe) < 20 {
        delivered += drain();
        thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let made: u64 = clients.into_iter().map(|c| c.join().expect("client")).sum();
    server.join().expect("server");
    // The last connections' final segments may still be on their way (a segment dropped under
    // this load is retransmitted after 200 ms or more): read until everything submitted is
    // here, for at most 5 s.
    let settling = Instant::now();
    loop {
        delivered += drain();
        if submitted(&probe) == delivered || settling.elapsed() > Duration::from_secs(5) {
            break;
        }
        thread::sleep(Duration::from_millis(50));
    }
    probe.detach();
    delivered += drain();
    let c = probe.counters().expect("every counter readable");
    eprintln!("{:?}", c.iter().collect::<Vec<_>>());
    assert_eq!(c.unaccounted(), Some(0), "{c:?}");
    eprintln!("{made} connections, {delivered} events delivered");
    assert!(
        made > 1000,
        "too little traffic to test anything: {made} connections"
    );
    assert!(
        count(&c, Counter::Rescued) > 0,
        "the traffic made no state change inside the program's run, so nothing was tested: {c:?}"
    );
    assert_eq!(
        count(&c, Counter::RecursionMisses),
        0,
        "every skipped run of the main program was rescued: {c:?}"
    );
    // With nothing lost and nothing doubled, every event of every connection is there.
    assert_eq!(count(&c, Counter::Submitted), delivered, "{c:?}");
}
