//! What `tcpstate top` shows, computed without a terminal: per-port and per-process tables of
//! the last interval (rates and percentiles) and since the start, the open sockets by state, the
//! sockets lingering in an opening or closing state, and the tracer's losses.
//!
//! Pure and bounded: at most [`MAX_KEYS`] ports and processes are tracked, the rest are
//! summed into an `other` row, and latencies go into fixed log-scale histograms.

use std::collections::HashMap;

use tcpstate_common::{reset_direction, state};

use crate::cgroup::Names;
use crate::event::state_name;
use crate::facts::ResetRecord;
use crate::input::{Counter, KernelCounters};
use crate::timeline::{errno_name, Conn, Engine, Outcome, Role};

/// Ports and processes tracked each; beyond that they are counted as `other`.
pub(crate) const MAX_KEYS: usize = 512;
/// Lingering sockets kept for display (oldest first).
pub(crate) const MAX_LINGERING: usize = 64;

/// Histogram resolution: this many buckets per doubling (about 9 % wide).
const SUB: u32 = 8;
/// 1 us doubling 32 times: up to about 71 minutes.
const OCTAVES: u32 = 32;
const BUCKETS: usize = (SUB * OCTAVES) as usize + 1;

/// A log-scale histogram of durations in nanoseconds, from 1 us.
#[derive(Clone)]
pub(crate) struct Hist {
    counts: [u32; BUCKETS],
    n: u64,
    max_ns: u64,
}

impl Default for Hist {
    fn default() -> Self {
        Hist::EMPTY
    }
}

impl Hist {
    pub(crate) const EMPTY: Hist = Hist {
        counts: [0; BUCKETS],
        n: 0,
        max_ns: 0,
    };

    fn bucket(ns: u64) -> usize {
        let us = ns as f64 / 1000.0;
        if us <= 1.0 {
            return 0;
        }
        let i = (us.log2() * f64::from(SUB)).ceil() as usize;
        i.min(BUCKETS - 1)
    }

    /// The upper bound of bucket `i` in nanoseconds.
    fn upper_ns(i: usize) -> u64 {
        (1000.0 * 2f64.powf(i as f64 / f64::from(SUB))).round() as u64
    }

    pub(crate) fn add(&mut self, ns: u64) {
        let b = Self::bucket(ns);
        if let Some(c) = self.counts.get_mut(b) {
            *c = c.saturating_add(1);
        }
        self.n += 1;
        self.max_ns = self.max_ns.max(ns);
    }

    #[cfg(test)]
    pub(crate) fn count(&self) -> u64 {
        self.n
    }

    /// The `q` quantile (0..=1): the upper bound of the bucket it falls in, never above the
    /// largest value seen. None when empty.
    pub(crate) fn quantile_ns(&self, q: f64) -> Option<u64> {
        if self.n == 0 {
            return None;
        }
        let rank = ((q * self.n as f64).ceil() as u64).clamp(1, self.n);
        let mut seen = 0u64;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += u64::from(c);
            if seen >= rank {
                return Some(Self::upper_ns(i).min(self.max_ns));
            }
        }
        Some(self.max_ns)
    }

    fn merge(&mut self, o: &Hist) {
        for (a, b) in self.counts.iter_mut().zip(o.counts.iter()) {
            *a = a.saturating_add(*b);
        }
        self.n += o.n;
        self.max_ns = self.max_ns.max(o.max_ns);
    }

    /// Counts in decade bins for the histogram panel: (label, count).
    pub(crate) fn decades(&self) -> Vec<(&'static str, u64)> {
        const EDGES: [(u64, &str); 8] = [
            (100_000, "<100us"),
            (1_000_000, "<1ms"),
            (10_000_000, "<10ms"),
            (100_000_000, "<100ms"),
            (1_000_000_000, "<1s"),
            (3_000_000_000, "<3s"),
            (10_000_000_000, "<10s"),
            (u64::MAX, ">=10s"),
        ];
        let mut out: Vec<(&'static str, u64)> = EDGES.iter().map(|&(_, l)| (l, 0)).collect();
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            // A bucket is put where its upper bound falls: at most 9 % off at an edge.
            let up = Self::upper_ns(i);
            let slot = EDGES
                .iter()
                .position(|&(e, _)| up <= e)
                .unwrap_or(EDGES.len() - 1);
            if let Some(o) = out.get_mut(slot) {
                o.1 += u64::from(c);
            }
        }
        out
    }
}

/// A per-port row's counts over some span.
#[derive(Clone, Default)]
pub(crate) struct PortCounts {
    pub accepted: u64,
    pub refused: u64,
    pub resets: u64,
    pub synack: Hist,
}

impl PortCounts {
    fn merge(&mut self, o: &PortCounts) {
        self.accepted += o.accepted;
        self.refused += o.refused;
        self.resets += o.resets;
        self.synack.merge(&o.synack);
    }
}

/// A per-process row's counts over some span.
#[derive(Clone, Default)]
pub(crate) struct ProcCounts {
    pub connects: u64,
    /// Failed connects by errno name (or outcome when the errno is unknown), few distinct.
    pub failures: Vec<(&'static str, u64)>,
    pub connect: Hist,
    pub retransmits: u64,
}

impl ProcCounts {
    fn fail(&mut self, why: &'static str, n: u64) {
        match self.failures.iter_mut().find(|(w, _)| *w == why) {
            Some((_, c)) => *c += n,
            None => self.failures.push((why, n)),
        }
    }

    pub(crate) fn failed(&self) -> u64 {
        self.failures.iter().map(|(_, n)| n).sum()
    }

    fn merge(&mut self, o: &ProcCounts) {
        self.connects += o.connects;
        for &(w, n) in &o.failures {
            self.fail(w, n);
        }
        self.connect.merge(&o.connect);
        self.retransmits += o.retransmits;
    }
}

/// A process row: the command name, and the container when known.
#[derive(Clone, Debug, Hash, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) struct ProcKey {
    pub comm: String,
    pub container: Option<String>,
}

/// Counts in one span, keyed; `None` is the `other` row.
#[derive(Clone, Default)]
pub(crate) struct Tables {
    pub ports: HashMap<Option<u16>, PortCounts>,
    pub procs: HashMap<Option<ProcKey>, ProcCounts>,
    pub connect: Hist,
}

impl Tables {
    fn port(&mut self, p: u16) -> &mut PortCounts {
        let key = if self.ports.contains_key(&Some(p)) || self.ports.len() < MAX_KEYS {
            Some(p)
        } else {
            None
        };
        self.ports.entry(key).or_default()
    }

    fn proc(&mut self, k: ProcKey) -> &mut ProcCounts {
        let key = Some(k);
        let key = if self.procs.contains_key(&key) || self.procs.len() < MAX_KEYS {
            key
        } else {
            None
        };
        self.procs.entry(key).or_default()
    }

    fn merge(&mut self, o: &Tables) {
        for (k, v) in &o.ports {
            match k {
                Some(p) => self.port(*p).merge(v),
                None => self.ports.entry(None).or_default().merge(v),
            }
        }
        for (k, v) in &o.procs {
            match k {
                Some(p) => self.proc(p.clone()).merge(v),
                None => self.procs.entry(None).or_default().merge(v),
            }
        }
        self.connect.merge(&o.connect);
    }
}

/// A socket that has stayed in an opening or closing state.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) struct Lingering {
    pub state: &'static str,
    pub local: String,
    pub remote: String,
    pub pid: Option<u32>,
    pub comm: String,
    pub container: Option<String>,
    pub age_ns: u64,
    /// Reported stuck by the engine (past its `--stuck` threshold).
    pub stuck: bool,
}

/// The tracer's own losses and counters, as last read.
#[derive(Clone, Debug, Default)]
pub(crate) struct Losses {
    /// Every loss counter by name; None when unreadable.
    pub by_reason: Vec<(&'static str, Option<u64>)>,
    pub lost: Option<u64>,
    /// Lost since the previous reading.
    pub lost_delta: u64,
    pub events: u64,
    pub evictions: u64,
}

/// One refreshed picture; what the view draws.
#[derive(Clone, Default)]
pub(crate) struct Snapshot {
    /// Seconds the last interval covered (0 before the first).
    pub interval_s: f64,
    pub last: Tables,
    pub total: Tables,
    pub open_by_state: Vec<(&'static str, u64)>,
    pub open_total: u64,
    pub lingering: Vec<Lingering>,
    pub losses: Losses,
    /// Listening port -> (accept-queue depth at the latest accepted child, the queue's limit):
    /// the fullest listener on that port; at most `MAX_KEYS` ports.
    pub queues: HashMap<u16, (u32, u32)>,
}

/// States where a socket waits on something and can get stuck.
const LINGER_STATES: [u8; 7] = [
    state::SYN_SENT,
    state::SYN_RECV,
    state::CLOSE_WAIT,
    state::FIN_WAIT1,
    state::FIN_WAIT2,
    state::CLOSING,
    state::LAST_ACK,
];

/// Feeds on finished connections, refusals and engine snapshots; `rotate` closes an interval.
#[derive(Default)]
pub(crate) struct Aggregator {
    cur: Tables,
    snap: Snapshot,
    last_lost: Option<u64>,
    /// Sockets the engine reported stuck (socket address, state entered at), bounded.
    stuck: Vec<(u64, u64)>,
    /// What the stream said each cgroup id is (bounded by `Names`).
    cgroups: Names,
}

fn comm_str(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

fn endpoint(ip: std::net::IpAddr, port: u16) -> String {
    match ip {
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
    }
}

impl Aggregator {
    pub(crate) fn snapshot(&self) -> &Snapshot {
        &self.snap
    }

    /// The container a connection's owner runs in, when its cgroup path says: the first 12
    /// hex digits of the container id (as `trace --containers` shows it), else the pod.
    fn container_of(&self, c: &Conn) -> Option<String> {
        let kube = &self.cgroups.get(c.cgroup_id())?.kube;
        if let Some(id) = &kube.container_id {
            return Some(id.get(..12).unwrap_or(id).to_string());
        }
        kube.pod_uid
            .as_ref()
            .map(|p| format!("pod {}", p.get(..8).unwrap_or(p)))
    }

    /// An `Input::Cgroup`: what a cgroup id is.
    pub(crate) fn cgroup(&mut self, id: u64, path: &str) {
        self.cgroups.insert(id, path);
    }

    fn proc_key(&self, c: &Conn) -> ProcKey {
        let (_, comm) = c.owner().unwrap_or_else(|| c.ctx());
        ProcKey {
            comm: comm_str(comm),
            container: self.container_of(c),
        }
    }

    /// A finished connection.
    pub(crate) fn conn(&mut self, c: &Conn) {
        let retx = u64::from(c.retx_total().unwrap_or(0));
        let reset = c.reset_info().is_some();
        match c.role() {
            Role::Server => {
                let handshake = c.handshake_ns().is_some();
                let p = self.cur.port(c.lport());
                if handshake {
                    p.accepted += 1;
                }
                if reset {
                    p.resets += 1;
                }
                if let Some(ns) = c.synack_rtt_ns() {
                    p.synack.add(ns);
                }
            }
            Role::Client => {
                let key = self.proc_key(c);
                let hs = c.handshake_ns();
                let fail = match c.outcome() {
                    Outcome::Refused | Outcome::TimedOut if hs.is_none() => Some(
                        c.errno()
                            .filter(|&e| e != 0)
                            .and_then(errno_name)
                            .unwrap_or(c.outcome().name()),
                    ),
                    _ => None,
                };
                let p = self.cur.proc(key);
                p.connects += 1;
                if let Some(ns) = hs {
                    p.connect.add(ns);
                    self.cur.connect.add(ns);
                }
                if let Some(why) = fail {
                    self.cur.proc(self.proc_key(c)).fail(why, 1);
                }
            }
            Role::Listener | Role::Unknown => {
                // A reset on a socket seen mid-life still happened on its local port.
                if reset && c.role() == Role::Unknown {
                    self.cur.port(c.lport()).resets += 1;
                }
            }
        }
        if retx > 0 {
            let key = self.proc_key(c);
            self.cur.proc(key).retransmits += retx;
        }
    }

    /// An inbound SYN this host answered with a reset (nothing listening).
    pub(crate) fn refused(&mut self, r: &ResetRecord) {
        if r.direction == reset_direction::SENT {
            self.cur.port(r.sport).refused += 1;
        }
    }

    /// The engine reported `c` stuck in its state.
    pub(crate) fn stuck(&mut self, c: &Conn) {
        let key = (c.skaddr(), c.state_ts());
        if !self.stuck.contains(&key) {
            if self.stuck.len() >= MAX_LINGERING * 4 {
                self.stuck.remove(0);
            }
            self.stuck.push(key);
        }
    }

    /// Reads the open sockets at `now_ns` (the event clock: live, CLOCK_MONOTONIC; in a
    /// replay, the recording's time); called once a second or so.
    /// The listeners' accept queues, from the pipeline's listener health (once a second).
    pub(crate) fn health(&mut self, h: &crate::listeners::Health) {
        let queues = &mut self.snap.queues;
        queues.clear();
        for (k, s) in h.listeners() {
            let (Some(depth), Some(limit)) = (s.last_depth, s.limit) else {
                continue;
            };
            if !queues.contains_key(&k.port) && queues.len() >= MAX_KEYS {
                continue;
            }
            let e = queues.entry(k.port).or_insert((depth, limit));
            // Two listeners on one port (two addresses): the fuller one is what matters.
            if u64::from(depth) * u64::from(e.1.max(1)) > u64::from(e.0) * u64::from(limit.max(1)) {
                *e = (depth, limit);
            }
        }
    }

    pub(crate) fn sample(&mut self, engine: &Engine, now_ns: u64) {
        let now = now_ns.max(engine.now_ns());
        let mut by_state = [0u64; 16];
        let mut lingering = Vec::new();
        for c in engine.open() {
            if let Some(n) = by_state.get_mut(usize::from(c.state())) {
                *n += 1;
            }
            if LINGER_STATES.contains(&c.state()) {
                lingering.push(c);
            }
        }
        lingering.sort_by_key(|c| (c.state_ts(), c.id()));
        lingering.truncate(MAX_LINGERING);
        // Only stuck marks of sockets still open are kept.
        self.stuck
            .retain(|k| lingering.iter().any(|c| (c.skaddr(), c.state_ts()) == *k));
        self.snap.lingering = lingering
            .iter()
            .map(|c| {
                let (pid, comm) = c.owner().map_or_else(
                    || (None, comm_str(c.ctx().1)),
                    |(p, n)| (Some(p), comm_str(n)),
                );
                Lingering {
                    state: state_name(c.state()),
                    local: endpoint(c.laddr(), c.lport()),
                    remote: endpoint(c.raddr(), c.rport()),
                    pid,
                    comm,
                    container: self.container_of(c),
                    age_ns: now.saturating_sub(c.state_ts()),
                    stuck: self.stuck.contains(&(c.skaddr(), c.state_ts())),
                }
            })
            .collect();
        self.snap.open_by_state = by_state
            .iter()
            .enumerate()
            .filter(|(_, &n)| n > 0)
            .map(|(s, &n)| (state_name(s as u8), n))
            .collect();
        self.snap.open_total = by_state.iter().sum();
        self.snap.losses.events = engine.events();
        self.snap.losses.evictions = engine.evictions();
    }

    /// The kernel's counters were read.
    pub(crate) fn counters(&mut self, k: &KernelCounters) {
        {
            self.snap.losses.by_reason = Counter::ALL
                .into_iter()
                .filter(|c| c.is_loss())
                .map(|c| (c.name(), k.get(c)))
                .collect();
            let lost = k.lost();
            self.snap.losses.lost_delta = match (lost, self.last_lost) {
                (Some(now), Some(before)) => now.saturating_sub(before),
                _ => 0,
            };
            self.snap.losses.lost = lost;
            if lost.is_some() {
                self.last_lost = lost;
            }
        }
    }

    /// Closes the interval of `secs` seconds: its counts become the "last interval" shown and
    /// are added to the totals.
    pub(crate) fn rotate(&mut self, secs: f64) {
        let cur = std::mem::take(&mut self.cur);
        self.snap.total.merge(&cur);
        self.snap.last = cur;
        self.snap.interval_s = secs;
    }
}

/// A per-second rate; 0 when the interval is empty.
pub(crate) fn rate(n: u64, secs: f64) -> f64 {
    if secs > 0.0 {
        n as f64 / secs
    } else {
        0.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::ev;
    use crate::input::Input;
    use crate::pipeline::{OutputConfig, Pipeline};
    use crate::report::render::Renderer;
    use crate::report::summary::Summary;
    use crate::timeline::stuck::{parse_spec, Thresholds};
    use crate::timeline::Step;
    use std::cell::RefCell;
    use std::rc::Rc;

    #[test]
    fn hist_quantiles_are_within_a_bucket() {
        let mut h = Hist::default();
        for us in 1..=100u64 {
            h.add(us * 1000);
        }
        let p50 = h.quantile_ns(0.5).unwrap();
        let p99 = h.quantile_ns(0.99).unwrap();
        assert!((50_000..=55_000).contains(&p50), "{p50}");
        assert!((99_000..=100_000).contains(&p99), "{p99}");
        assert_eq!(h.quantile_ns(1.0), Some(100_000));
        assert_eq!(Hist::default().quantile_ns(0.5), None);
        // Binned by bucket: a value within 9 % of an edge may land on its other side.
        let d = h.decades();
        assert_eq!(d[0].0, "<100us");
        assert!(d[0].1 >= 90 && d[0].1 + d[1].1 == 100, "{d:?}");
    }

    #[test]
    fn keys_are_capped_with_an_other_row() {
        let mut t = Tables::default();
        for p in 0..(MAX_KEYS as u16 + 10) {
            t.port(p).accepted += 1;
        }
        assert_eq!(t.ports.len(), MAX_KEYS + 1);
        assert_eq!(t.ports[&None].accepted, 10);
        for i in 0..(MAX_KEYS + 3) {
            t.proc(ProcKey {
                comm: format!("p{i}"),
                container: None,
            })
            .connects += 1;
        }
        assert_eq!(t.procs.len(), MAX_KEYS + 1);
        assert_eq!(t.procs[&None].connects, 3);
    }

    /// Feeds the aggregator from a real pipeline, as `top` does.
    struct Sink(Rc<RefCell<Aggregator>>);
    impl Renderer for Sink {
        fn transition(&mut self, _: &Event, _: &Step, _: &mut Vec<u8>) -> std::io::Result<()> {
            Ok(())
        }
        fn single(&mut self, c: &Conn, _: &mut Vec<u8>) -> std::io::Result<()> {
            self.0.borrow_mut().conn(c);
            Ok(())
        }
        fn pair(&mut self, a: &Conn, b: &Conn, _: &mut Vec<u8>) -> std::io::Result<()> {
            self.0.borrow_mut().conn(a);
            self.0.borrow_mut().conn(b);
            Ok(())
        }
        fn summary(&mut self, _: &Summary<'_>, _: &mut Vec<u8>) -> std::io::Result<()> {
            Ok(())
        }
        fn refused(&mut self, r: &ResetRecord, _: &mut Vec<u8>) -> std::io::Result<()> {
            self.0.borrow_mut().refused(r);
            Ok(())
        }
        fn stuck(&mut self, c: &Conn, _: u64, _: &mut Vec<u8>) -> std::io::Result<()> {
            self.0.borrow_mut().stuck(c);
            Ok(())
        }
    }
    use crate::event::Event;

    #[test]
    fn connections_land_in_their_rows_and_rates_follow_the_interval() {
        use tcpstate_common::state::*;
        let agg = Rc::new(RefCell::new(Aggregator::default()));
        let mut p = Pipeline::with_renderer(
            OutputConfig {
                summary_at_end: false,
                reorder_window_ns: 0,
                stuck: Thresholds::from_specs(&[parse_spec("CLOSE_WAIT=1000").unwrap()]),
                ..OutputConfig::default()
            },
            Box::new(Sink(agg.clone())),
        );
        let mut sink = Vec::new();
        // A client that connects in 2 ms and closes, and one refused.
        let ms = 1_000_000;
        let inputs = [
            ev(1, 0xa, CLOSE, SYN_SENT, 40000, 80),
            ev(1 + 2 * ms, 0xa, SYN_SENT, ESTABLISHED, 40000, 80),
            ev(3 * ms, 0xa, ESTABLISHED, FIN_WAIT1, 40000, 80),
            ev(4 * ms, 0xa, FIN_WAIT1, FIN_WAIT2, 40000, 80),
            ev(5 * ms, 0xa, FIN_WAIT2, CLOSE, 40000, 80),
            ev(6 * ms, 0xb, CLOSE, SYN_SENT, 40000, 80),
            ev(7 * ms, 0xb, SYN_SENT, CLOSE, 40000, 80),
            // Still open, leaking in CLOSE_WAIT.
            ev(8 * ms, 0xc, CLOSE, SYN_SENT, 40000, 80),
            ev(9 * ms, 0xc, SYN_SENT, ESTABLISHED, 40000, 80),
            ev(10 * ms, 0xc, ESTABLISHED, CLOSE_WAIT, 40000, 80),
        ];
        for e in inputs {
            p.push(&Input::Event(e), &mut sink).unwrap();
        }
        p.push(&Input::Tick { now_ns: 3_000 * ms }, &mut sink)
            .unwrap();
        let mut a = agg.borrow_mut();
        a.sample(p.engine(), 3_000 * ms);
        a.rotate(2.0);
        let s = a.snapshot();
        assert_eq!(s.last.procs.len(), 1, "one process row");
        let row = s.last.procs.values().next().unwrap();
        assert_eq!(row.connects, 2);
        assert_eq!(row.failed(), 1);
        assert_eq!(row.connect.count(), 1);
        assert_eq!(rate(row.connects, s.interval_s), 1.0);
        assert!(row.connect.quantile_ns(0.5).unwrap() <= 2 * ms);
        assert_eq!(s.open_total, 1);
        assert_eq!(s.open_by_state, vec![("CLOSE_WAIT", 1)]);
        assert_eq!(s.lingering.len(), 1);
        assert_eq!(s.lingering[0].state, "CLOSE_WAIT");
        assert!(s.lingering[0].age_ns >= 2_000 * ms);
        assert!(s.lingering[0].stuck, "past the 1 s CLOSE_WAIT threshold");
        // The next interval is empty; the totals keep the counts.
        a.rotate(1.0);
        let s = a.snapshot();
        assert!(s.last.procs.is_empty());
        assert_eq!(s.total.procs.values().next().unwrap().connects, 2);
    }

    #[test]
    fn accept_queues_by_port_take_the_fullest_listener() {
        use crate::listeners::{tests::queue, Health};
        let mut h = Health::default();
        h.listener(&queue(8080, 1, 128));
        h.listener(&queue(9090, 2, 2));
        let mut a = Aggregator::default();
        a.health(&h);
        assert_eq!(a.snapshot().queues.get(&8080), Some(&(1, 128)));
        assert_eq!(a.snapshot().queues.get(&9090), Some(&(2, 2)));
        assert_eq!(a.snapshot().queues.len(), 2);
    }
}
