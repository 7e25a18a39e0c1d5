//! The packet relay between two TUN devices: every packet is held for a fixed delay, then
//! written to the other side. One real-time thread per direction, sleeping in ppoll until the
//! next packet is due or a new one arrives.

use std::{
    collections::{HashMap, VecDeque},
    io,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc, Mutex, MutexGuard,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

/// Longest sleep between checks of the stop flag.
const MAX_WAIT_NS: u64 = 20_000_000;
/// Packets held at once per direction; more are dropped, like a router's full queue.
const QUEUE_CAP: usize = 8192;
/// Packets read per wake-up before due packets get a chance to go out.
const READ_BATCH: usize = 64;
/// Bigger than any packet a TUN device without offloads hands over (MTU <= 64 KiB).
const SCRATCH: usize = 65_536;
const JOIN_LIMIT: Duration = Duration::from_secs(2);
const RT_PRIORITY: libc::c_int = 10;
/// TCP segments kept in the relay's log (ground truth for tests); later ones are only counted.
const LOG_CAP: usize = 16_384;

/// CLOCK_MONOTONIC in nanoseconds: the clock of the kernel's bpf_ktime_get_ns.
pub fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer; CLOCK_MONOTONIC cannot fail.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// State shared by the relay threads and the owner.
#[derive(Default)]
struct Shared {
    stop: AtomicBool,
    blackhole_ab: AtomicBool,
    blackhole_ba: AtomicBool,
    syns_left_ab: AtomicU32,
    syns_dropped: AtomicU32,
    relayed: AtomicU64,
    dropped: AtomicU64,
    realtime_threads: AtomicU32,
    late_max_ns: AtomicU64,
    late_sum_ns: AtomicU64,
    /// What the relay saw of TCP, and the chosen drops. Held only for a few microseconds per
    /// packet, by one relay thread or by the owner reading it.
    ledger: Mutex<Ledger>,
}

pub struct Relay {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Direction {
    src: Arc<OwnedFd>,
    dst: Arc<OwnedFd>,
    delay_ns: u64,
    /// Only the A->B direction applies the legacy SYN dropping (`drop_syns`).
    a_to_b: bool,
}

impl Relay {
    /// Starts relaying between two TUN fds (non-blocking, IFF_TUN | IFF_NO_PI).
    pub fn start(
        tun_a: OwnedFd,
        tun_b: OwnedFd,
        delay: Duration,
        drop_syns: u32,
        blackhole: bool,
        rules: &[DropRule],
    ) -> io::Result<Relay> {
        let shared = Arc::new(Shared::default());
        shared.syns_left_ab.store(drop_syns, Ordering::Relaxed);
        shared.blackhole_ab.store(blackhole, Ordering::Relaxed);
        lock(&shared.ledger).rules = rules.to_vec();
        let a = Arc::new(tun_a);
        let b = Arc::new(tun_b);
        let delay_ns = u64::try_from(delay.as_nanos()).unwrap_or(u64::MAX);
        let mut relay = Relay {
            shared,
            threads: Vec::with_capacity(2),
        };
        for (name, dir) in [
            (
                "relay-a2b",
                Direction {
                    src: a.clone(),
                    dst: b.clone(),
                    delay_ns,
                    a_to_b: true,
                },
            ),
            (
                "relay-b2a",
                Direction {
                    src: b.clone(),
                    dst: a.clone(),
                    delay_ns,
                    a_to_b: false,
                },
            ),
        ] {
            let shared = relay.shared.clone();
            // On error `relay` drops here and stops the thread already started.
            let handle = thread::Builder::new()
                .name(name.into())
                .spawn(move || run(dir, &shared))?;
            relay.threads.push(handle);
        }
        Ok(relay)
    }

    pub fn packets_relayed(&self) -> u64 {
        self.shared.relayed.load(Ordering::Relaxed)
    }

    /// Packets not delivered: dropped SYNs, blackholed, or beyond the queue capacity.
    pub fn packets_dropped(&self) -> u64 {
        self.shared.dropped.load(Ordering::Relaxed)
    }

    pub fn syns_dropped(&self) -> u32 {
        self.shared.syns_dropped.load(Ordering::Relaxed)
    }

    pub fn set_blackhole(&self, on: bool) {
        self.shared.blackhole_ab.store(on, Ordering::Relaxed);
    }

    /// Starts or stops dropping everything going `dir`.
    pub fn set_blackhole_dir(&self, dir: Dir, on: bool) {
        match dir {
            Dir::AToB => self.shared.blackhole_ab.store(on, Ordering::Relaxed),
            Dir::BToA => self.shared.blackhole_ba.store(on, Ordering::Relaxed),
        }
    }

    /// Adds a drop rule while the relay runs (its `nth` counts from the relay's start).
    pub fn add_rule(&self, rule: DropRule) {
        lock(&self.shared.ledger).rules.push(rule);
    }

    /// TCP segments seen going `dir` so far, and those dropped.
    pub fn counts(&self, dir: Dir) -> Counts {
        lock(&self.shared.ledger).counts[dir.index()]
    }

    /// The TCP segments seen so far, both directions, in the order the relay read them, and
    /// how many more the full log left out.
    pub fn log(&self) -> (Vec<Seen>, u64) {
        let l = lock(&self.shared.ledger);
        (l.log.clone(), l.log_overflow)
    }

    /// How late the relay wrote packets past their due time: (mean, max). The delay a packet
    /// sees is the configured one plus this (plus the few microseconds before it was read).
    pub fn lateness(&self) -> (Duration, Duration) {
        let n = self.packets_relayed().max(1);
        let sum = self.shared.late_sum_ns.load(Ordering::Relaxed);
        let max = self.shared.late_max_ns.load(Ordering::Relaxed);
        (Duration::from_nanos(sum / n), Duration::from_nanos(max))
    }

    /// How many relay threads got SCHED_FIFO (0..=2; they started, so this settles quickly).
    pub fn realtime_threads(&self) -> u32 {
        self.shared.realtime_threads.load(Ordering::Relaxed)
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        let deadline = Instant::now() + JOIN_LIMIT;
        for handle in self.threads.drain(..) {
            while !handle.is_finished() && Instant::now() < deadline {
                thread::sleep(Duration::from_millis(1));
            }
            if handle.is_finished() {
                let _ = handle.join();
            }
            // Otherwise the thread is left detached; it holds its own fd references.
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Real-time priority keeps wake-ups within tens of microseconds even on a busy machine;
/// without it (not permitted), a minimal timer slack is the next best thing.
fn make_realtime(shared: &Shared) {
    let param = libc::sched_param {
        sched_priority: RT_PRIORITY,
    };
    // SAFETY: plain calls on the current thread with a valid param.
    unsafe {
        if libc::pthread_setschedparam(libc::pthread_self(), libc::SCHED_FIFO, &param) == 0 {
            shared.realtime_threads.fetch_add(1, Ordering::Relaxed);
        }
        libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong);
    }
}

/// The two directions of the link: A is the client side in the tests, B the server side.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dir {
    AToB,
    BToA,
}

impl Dir {
    fn index(self) -> usize {
        match self {
            Dir::AToB => 0,
            Dir::BToA => 1,
        }
    }
}

/// A kind of TCP segment a drop rule counts. A segment can be of several kinds at once (data
/// with FIN is both `Data` and `Fin`); a retransmitted segment counts again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// SYN without ACK: a connection attempt.
    Syn,
    SynAck,
    /// Any segment with FIN set.
    Fin,
    /// Any segment with payload.
    Data,
    Rst,
}

/// Drop the `nth` (1-based) segment of `kind` going `dir`, counting from the relay's start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DropRule {
    pub dir: Dir,
    pub kind: Kind,
    pub nth: u32,
}

impl DropRule {
    pub fn first(dir: Dir, kind: Kind) -> DropRule {
        DropRule { dir, kind, nth: 1 }
    }
}

pub const FIN: u8 = 0x01;
pub const SYN: u8 = 0x02;
pub const RST: u8 = 0x04;
pub const PSH: u8 = 0x08;
pub const ACK: u8 = 0x10;

/// The TCP header fields of one IPv4 or IPv6 packet that the tests reason about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcpMeta {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: u16,
    pub dport: u16,
    pub seq: u32,
    pub ack: u32,
    pub flags: u8,
    /// Application bytes the segment carries (IP length minus IP and TCP headers).
    pub payload_len: u32,
}

impl TcpMeta {
    pub fn is(&self, kind: Kind) -> bool {
        let f = self.flags;
        match kind {
            Kind::Syn => f & SYN != 0 && f & ACK == 0,
            Kind::SynAck => f & SYN != 0 && f & ACK != 0,
            Kind::Fin => f & FIN != 0,
            Kind::Data => self.payload_len > 0,
            Kind::Rst => f & RST != 0,
        }
    }

    /// Sequence space the segment occupies: its payload, plus one each for SYN and FIN.
    pub fn seq_len(&self) -> u32 {
        self.payload_len + u32::from(self.flags & SYN != 0) + u32::from(self.flags & FIN != 0)
    }

    fn flow(&self) -> (IpAddr, u16, IpAddr, u16) {
        (self.src, self.sport, self.dst, self.dport)
    }
}

/// Parses a TCP segment out of an IPv4 or IPv6 packet as a TUN device hands it over. None for
/// anything else, a truncated packet, an IPv4 fragment other than the first, or an IPv6
/// packet with extension headers (the kernel puts none on these tests' TCP segments).
pub fn classify(pkt: &[u8]) -> Option<TcpMeta> {
    const TCP: u8 = 6;
    let (src, dst, proto, ip_hdr, ip_total) = match pkt.first()? >> 4 {
        4 => {
            let ihl = usize::from(pkt[0] & 0x0f) * 4;
            let total = usize::from(u16::from_be_bytes([*pkt.get(2)?, *pkt.get(3)?]));
            // Fragment offset other than 0: no TCP header here.
            if u16::from_be_bytes([*pkt.get(6)?, *pkt.get(7)?]) & 0x1fff != 0 || ihl < 20 {
                return None;
            }
            let src: [u8; 4] = pkt.get(12..16)?.try_into().ok()?;
            let dst: [u8; 4] = pkt.get(16..20)?.try_into().ok()?;
            (
                IpAddr::V4(Ipv4Addr::from(src)),
                IpAddr::V4(Ipv4Addr::from(dst)),
                *pkt.get(9)?,
                ihl,
                total,
            )
        }
        6 => {
            let payload = usize::from(u16::from_be_bytes([*pkt.get(4)?, *pkt.get(5)?]));
            let src: [u8; 16] = pkt.get(8..24)?.try_into().ok()?;
            let dst: [u8; 16] = pkt.get(24..40)?.try_into().ok()?;
            (
                IpAddr::V6(Ipv6Addr::from(src)),
                IpAddr::V6(Ipv6Addr::from(dst)),
                *pkt.get(6)?,
                40,
                40 + payload,
            )
        }
        _ => return None,
    };
    if proto != TCP || ip_total > pkt.len() {
        return None;
    }
    let tcp = pkt.get(ip_hdr..ip_total)?;
    let data_off = usize::from(*tcp.get(12)? >> 4) * 4;
    if data_off < 20 || data_off > tcp.len() {
        return None;
    }
    let be32 = |i: usize| u32::from_be_bytes([tcp[i], tcp[i + 1], tcp[i + 2], tcp[i + 3]]);
    Some(TcpMeta {
        src,
        dst,
        sport: u16::from_be_bytes([tcp[0], tcp[1]]),
        dport: u16::from_be_bytes([tcp[2], tcp[3]]),
        seq: be32(4),
        ack: be32(8),
        flags: tcp[13],
        payload_len: u32::try_from(tcp.len() - data_off).ok()?,
    })
}

/// Whether an IP packet is a TCP SYN without ACK (a connection attempt, not a SYN-ACK).
pub fn is_bare_syn(pkt: &[u8]) -> bool {
    const TCP: u8 = 6;
    let (proto, tcp_off) = match pkt.first().map(|b| b >> 4) {
        Some(4) => (pkt.get(9).copied(), usize::from(pkt[0] & 0x0f) * 4),
        // Extension headers are not followed: the kernel does not put any on a plain SYN.
        Some(6) => (pkt.get(6).copied(), 40),
        _ => return false,
    };
    if proto != Some(TCP) {
        return false;
    }
    match pkt.get(tcp_off + 13) {
        Some(flags) => flags & 0x02 != 0 && flags & 0x10 == 0,
        None => false,
    }
}

/// Why the relay did not deliver a segment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropCause {
    /// A `DropRule` (or the legacy "first N SYNs") chose it.
    Rule,
    Blackhole,
}

/// One TCP segment as the relay saw it (the log's entry).
#[derive(Debug, Clone, Copy)]
pub struct Seen {
    /// CLOCK_MONOTONIC when the relay read it from the sending side's TUN device.
    pub at_ns: u64,
    pub dir: Dir,
    pub tcp: TcpMeta,
    /// Its sequence space was seen before on this flow: the sender resent it.
    pub retransmit: bool,
    pub dropped: Option<DropCause>,
}

/// Per-direction counts of TCP segments seen (delivered or not) and of those dropped.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub segments: u64,
    pub syn: u32,
    pub synack: u32,
    pub fin: u32,
    pub rst: u32,
    /// Segments with payload.
    pub data: u32,
    /// Segments (SYN, SYN-ACK, data or FIN) whose sequence space was seen before.
    pub retransmits: u32,
    /// Data segments among the retransmits.
    pub data_retransmits: u32,
    /// Payload bytes that advanced the flows' sequence: application bytes, each counted once
    /// however often it was resent (whether or not it was delivered the first time).
    pub new_payload_bytes: u64,
    pub dropped_syn: u32,
    pub dropped_synack: u32,
    pub dropped_fin: u32,
    pub dropped_rst: u32,
    pub dropped_data: u32,
    /// Segments lost to a blackhole (all kinds).
    pub blackholed: u64,
}

/// Ground truth kept by the relay threads: counts, a bounded log and the drop rules.
#[derive(Default)]
pub struct Ledger {
    counts: [Counts; 2],
    /// Next sequence number expected per flow (highest end seen).
    flows: HashMap<(IpAddr, u16, IpAddr, u16), u32>,
    log: Vec<Seen>,
    log_overflow: u64,
    rules: Vec<DropRule>,
}

impl Ledger {
    pub fn with_rules(rules: &[DropRule]) -> Ledger {
        Ledger {
            rules: rules.to_vec(),
            ..Ledger::default()
        }
    }

    pub fn counts(&self, dir: Dir) -> Counts {
        self.counts[dir.index()]
    }

    /// Counts a segment and decides whether a rule drops it. `blackholed` segments are counted
    /// too (the sender did send them), with that cause.
    pub fn observe(
        &mut self,
        at_ns: u64,
        dir: Dir,
        tcp: TcpMeta,
        blackholed: bool,
        legacy_syn: bool,
    ) -> bool {
        // Retransmission: the segment starts before the highest sequence already seen on its
        // flow. A SYN that does not resend the known one starts the flow anew (port reuse).
        let len = tcp.seq_len();
        let next = self.flows.get(&tcp.flow()).copied();
        let retransmit = match next {
            Some(_) if tcp.flags & SYN != 0 && next != Some(tcp.seq.wrapping_add(1)) => {
                self.flows.remove(&tcp.flow());
                false
            }
            Some(next) => len > 0 && (next.wrapping_sub(tcp.seq) as i32) > 0,
            None => false,
        };
        let end = tcp.seq.wrapping_add(len);
        let new_payload = match self.flows.get(&tcp.flow()).copied() {
            None => {
                self.flows.insert(tcp.flow(), end);
                u64::from(tcp.payload_len)
            }
            Some(next) => {
                let advance = end.wrapping_sub(next) as i32;
                if advance > 0 {
                    self.flows.insert(tcp.flow(), end);
                    // The part past `next`, minus the FIN's place if the segment has one.
                    let fin = u32::from(tcp.flags & FIN != 0);
                    u64::from((advance as u32).saturating_sub(fin).min(tcp.payload_len))
                } else {
                    0
                }
            }
        };
        let c = &mut self.counts[dir.index()];
        c.segments += 1;
        c.new_payload_bytes += new_payload;
        let kinds = [Kind::Syn, Kind::SynAck, Kind::Fin, Kind::Data, Kind::Rst];
        let mut rule_drop = legacy_syn && tcp.is(Kind::Syn);
        for kind in kinds.into_iter().filter(|&k| tcp.is(k)) {
            let n = match kind {
                Kind::Syn => &mut c.syn,
                Kind::SynAck => &mut c.synack,
                Kind::Fin => &mut c.fin,
                Kind::Data => &mut c.data,
                Kind::Rst => &mut c.rst,
            };
            *n += 1;
            let nth = *n;
            rule_drop |= self
                .rules
                .iter()
                .any(|r| r.dir == dir && r.kind == kind && r.nth == nth);
        }
        if retransmit {
            c.retransmits += 1;
            if tcp.payload_len > 0 {
                c.data_retransmits += 1;
            }
        }
        let dropped = if blackholed {
            c.blackholed += 1;
            Some(DropCause::Blackhole)
        } else if rule_drop {
            for kind in kinds.into_iter().filter(|&k| tcp.is(k)) {
                *match kind {
                    Kind::Syn => &mut c.dropped_syn,
                    Kind::SynAck => &mut c.dropped_synack,
                    Kind::Fin => &mut c.dropped_fin,
                    Kind::Data => &mut c.dropped_data,
                    Kind::Rst => &mut c.dropped_rst,
                } += 1;
            }
            Some(DropCause::Rule)
        } else {
            None
        };
        if self.log.len() < LOG_CAP {
            self.log.push(Seen {
                at_ns,
                dir,
                tcp,
                retransmit,
                dropped,
            });
        } else {
            self.log_overflow += 1;
        }
        dropped.is_some()
    }
}

fn should_drop(dir: &Direction, shared: &Shared, pkt: &[u8], at_ns: u64) -> bool {
    let (d, blackhole) = if dir.a_to_b {
        (Dir::AToB, &shared.blackhole_ab)
    } else {
        (Dir::BToA, &shared.blackhole_ba)
    };
    let blackholed = blackhole.load(Ordering::Relaxed);
    let Some(tcp) = classify(pkt) else {
        return blackholed;
    };
    // The legacy "drop the first N SYNs going A->B" setting, decided (and spent) only for a
    // SYN that is not blackholed anyway.
    let legacy_syn = !blackholed
        && dir.a_to_b
        && tcp.is(Kind::Syn)
        && shared
            .syns_left_ab
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok();
    if legacy_syn {
        shared.syns_dropped.fetch_add(1, Ordering::Relaxed);
    }
    lock(&shared.ledger).observe(at_ns, d, tcp, blackholed, legacy_syn)
}

/// The ledger, also when a thread panicked while holding it (its counts are still the best
/// ground truth there is).
fn lock(m: &Mutex<Ledger>) -> MutexGuard<'_, Ledger> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn ppoll_in(fd: &OwnedFd, timeout_ns: u64) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ts = libc::timespec {
        tv_sec: (timeout_ns / 1_000_000_000) as libc::time_t,
        tv_nsec: (timeout_ns % 1_000_000_000) as libc::c_long,
    };
    // SAFETY: one valid pollfd, valid timespec, no signal mask change.
    let n = unsafe { libc::ppoll(&mut pfd, 1, &ts, std::ptr::null()) };
    n > 0 && pfd.revents & libc::POLLIN != 0
}

fn run(dir: Direction, shared: &Shared) {
    make_realtime(shared);
    let mut queue: VecDeque<(u64, Vec<u8>)> = VecDeque::with_capacity(256);
    // Buffers of delivered packets, reused so steady traffic does not allocate.
    let mut spare: Vec<Vec<u8>> = Vec::new();
    let mut scratch = vec![0u8; SCRATCH];
    while !shared.stop.load(Ordering::Relaxed) {
        let now = mono_ns();
        while queue.front().is_some_and(|(due, _)| *due <= now) {
            let Some((due, pkt)) = queue.pop_front() else {
                break;
            };
            let late = mono_ns().saturating_sub(due);
            // SAFETY: valid fd and buffer. A TUN write never blocks; a failure (device going
            // away at teardown) just loses the packet.
            let n = unsafe { libc::write(dir.dst.as_raw_fd(), pkt.as_ptr().cast(), pkt.len()) };
            if n == pkt.len() as isize {
                shared.relayed.fetch_add(1, Ordering::Relaxed);
                shared.late_sum_ns.fetch_add(late, Ordering::Relaxed);
                shared.late_max_ns.fetch_max(late, Ordering::Relaxed);
            } else {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
            }
            if spare.len() < QUEUE_CAP {
                spare.push(pkt);
            }
        }
        let now = mono_ns();
        let wait = queue
            .front()
            .map_or(MAX_WAIT_NS, |(due, _)| due.saturating_sub(now))
            .min(MAX_WAIT_NS);
        if !ppoll_in(&dir.src, wait) {
            continue;
        }
        // The packet entered the TUN queue a wake-up latency before this; with real-time
        // priority that is a few microseconds.
        let arrived = mono_ns();
        for _ in 0..READ_BATCH {
            // SAFETY: valid fd and buffer of SCRATCH bytes; the fd is non-blocking.
            let n = unsafe {
                libc::read(
                    dir.src.as_raw_fd(),
                    scratch.as_mut_ptr().cast(),
                    scratch.len(),
                )
            };
            let Ok(len) = usize::try_from(n) else {
                break;
            };
            if len == 0 {
                break;
            }
            let pkt = &scratch[..len];
            if should_drop(&dir, shared, pkt, arrived) || queue.len() >= QUEUE_CAP {
                shared.dropped.fetch_add(1, Ordering::Relaxed);
                continue;
            }
            let mut buf = spare.pop().unwrap_or_default();
            buf.clear();
            buf.extend_from_slice(pkt);
            queue.push_back((arrived.saturating_add(dir.delay_ns), buf));
        }
    }
}
