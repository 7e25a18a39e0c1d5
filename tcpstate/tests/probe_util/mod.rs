//! Helpers for tests that load the real eBPF program: attach with a filter, collect what the
//! kernel delivers (bounded in time), group it by socket.
#![allow(dead_code)]

pub mod trace;

use std::{
    collections::BTreeMap,
    net::{IpAddr, SocketAddr, TcpListener},
    time::{Duration, Instant},
};

use tcpstate::{
    event::{self, Event},
    filter::FilterSpec,
    input::{Counter, Input, KernelCounters},
    kernel::{
        probe::{Attachment, Attribution, Probe, ProbeOptions},
        procscan::Preexisting,
    },
};
use tcpstate_common::state::{CLOSE, LISTEN, SYN_RECV, SYN_SENT};

/// Whether the test runs as root; when not it is skipped, which fails in CI (`CI=true`).
pub fn root() -> bool {
    let test = std::thread::current()
        .name()
        .unwrap_or("kernel test")
        .to_string();
    crate::skip::need_root(&test)
}

/// A counter that must be known.
pub fn count(c: &KernelCounters, which: Counter) -> u64 {
    c.get(which)
        .unwrap_or_else(|| panic!("kernel counter {} unknown: {c:?}", which.name()))
}

/// A port nothing listens on right now (bound then released).
pub fn free_port(ip: IpAddr) -> u16 {
    let l = TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind a free port");
    l.local_addr().expect("local addr").port()
}

pub fn attach_with(spec: FilterSpec, preexisting: &Preexisting) -> Probe {
    let opts = ProbeOptions {
        filter: spec.to_kernel().expect("filter"),
        ..ProbeOptions::default()
    };
    Probe::attach(&opts, preexisting).expect("attach the probe")
}

/// Attached with the generic record reader (a copy at the format file's offsets), the path
/// kernels with another layout of the tracepoint take.
pub fn attach_generic(spec: FilterSpec) -> Probe {
    let opts = ProbeOptions {
        filter: spec.to_kernel().expect("filter"),
        allow_direct_read: false,
        attachment: Attachment::Classic,
        ..ProbeOptions::default()
    };
    Probe::attach(&opts, &Preexisting::default()).expect("attach the probe")
}

/// Attached to the given form of the tracepoint.
pub fn attach_as(spec: FilterSpec, attachment: Attachment) -> Probe {
    let opts = ProbeOptions {
        filter: spec.to_kernel().expect("filter"),
        attachment,
        ..ProbeOptions::default()
    };
    Probe::attach(&opts, &Preexisting::default()).expect("attach the probe")
}

/// Attached with owners attributed where `attribution` says.
pub fn attach_attributed(
    spec: FilterSpec,
    attribution: Attribution,
    preexisting: &Preexisting,
) -> Probe {
    let opts = ProbeOptions {
        filter: spec.to_kernel().expect("filter"),
        attribution,
        ..ProbeOptions::default()
    };
    Probe::attach(&opts, preexisting).expect("attach the probe")
}

pub fn attach(spec: FilterSpec) -> Probe {
    attach_with(spec, &Preexisting::default())
}

/// Attached with only this port (either end) kept: the test's own traffic.
pub fn port_probe(port: u16) -> Probe {
    attach(FilterSpec {
        ports: vec![port],
        ..Default::default()
    })
}

/// Reads events until `want` arrived (then a short grace for extras) or `limit` passed.
/// Facts, retransmit and reset records are left out (see [`collect_inputs`]).
pub fn collect_for(probe: &mut Probe, want: usize, limit: Duration) -> Vec<Event> {
    collect_inputs(probe, want, limit)
        .into_iter()
        .filter_map(|i| match i {
            Input::Event(e) => Some(e),
            _ => None,
        })
        .collect()
}

/// Every record the kernel delivers, decoded, until `want` events arrived (then a short
/// grace) or `limit` passed.
pub fn collect_inputs(probe: &mut Probe, want: usize, limit: Duration) -> Vec<Input> {
    let mut decoder = probe.decoder();
    let mut ring = probe.take_events().expect("ring buffer");
    let mut out = Vec::new();
    let deadline = Instant::now() + limit;
    let mut drain = |out: &mut Vec<Input>| {
        while let Some(item) = ring.next() {
            out.extend(decoder.decode(&item).expect("decode"));
        }
    };
    let events = |out: &Vec<Input>| out.iter().filter(|i| matches!(i, Input::Event(_))).count();
    while Instant::now() < deadline {
        drain(&mut out);
        if events(&out) >= want {
            // Anything extra would be a bug too: give it a moment to show up.
            std::thread::sleep(Duration::from_millis(100));
            drain(&mut out);
            break;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    out
}

pub fn collect(probe: &mut Probe, want: usize) -> Vec<Event> {
    collect_for(probe, want, Duration::from_secs(3))
}

/// Events grouped per socket lifetime, keyed by (socket address, first timestamp): the kernel
/// reuses a freed socket's address for the next one.
pub fn by_socket(events: &[Event]) -> BTreeMap<(u64, u64), Vec<Event>> {
    let mut per_addr: BTreeMap<u64, Vec<Event>> = BTreeMap::new();
    for e in events {
        per_addr.entry(e.skaddr).or_default().push(*e);
    }
    let mut out = BTreeMap::new();
    for (addr, mut evs) in per_addr {
        evs.sort_by_key(|e| e.ts_ns);
        let mut life: Vec<Event> = Vec::new();
        for e in evs {
            if event::starts_lifetime(&e) && !life.is_empty() {
                out.insert((addr, life[0].ts_ns), std::mem::take(&mut life));
            }
            life.push(e);
        }
        if let Some(first) = life.first() {
            out.insert((addr, first.ts_ns), life);
        }
    }
    out
}

/// Socket lifetimes sorted into client / accepted / listener by their first transition.
pub fn roles(events: &[Event]) -> BTreeMap<&'static str, Vec<Vec<Event>>> {
    let mut out: BTreeMap<&'static str, Vec<Vec<Event>>> = BTreeMap::new();
    for (_, evs) in by_socket(events) {
        let role = match (evs[0].oldstate, evs[0].newstate) {
            (CLOSE, SYN_SENT) => "client",
            (LISTEN, SYN_RECV) => "accepted",
            (CLOSE, LISTEN) | (LISTEN, CLOSE) => "listener",
            other => panic!("unexpected first transition {other:?}: {:?}", states(&evs)),
        };
        out.entry(role).or_default().push(evs);
    }
    out
}

pub fn states(v: &[Event]) -> Vec<(u8, u8)> {
    v.iter().map(|e| (e.oldstate, e.newstate)).collect()
}
