//! The packet relay between two TUN devices: every packet is held for a fixed delay, then
//! written to the other side. One real-time thread per direction, sleeping in ppoll until the
//! next packet is due or a new one arrives.

use std::{
    collections::VecDeque,
    io,
    os::fd::{AsRawFd, OwnedFd},
    sync::{
        atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering},
        Arc,
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
    syns_left_ab: AtomicU32,
    syns_dropped: AtomicU32,
    relayed: AtomicU64,
    dropped: AtomicU64,
    realtime_threads: AtomicU32,
    late_max_ns: AtomicU64,
    late_sum_ns: AtomicU64,
}

pub struct Relay {
    shared: Arc<Shared>,
    threads: Vec<JoinHandle<()>>,
}

struct Direction {
    src: Arc<OwnedFd>,
    dst: Arc<OwnedFd>,
    delay_ns: u64,
    /// Only the A->B direction applies the SYN dropping and the blackhole.
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
    ) -> io::Result<Relay> {
        let shared = Arc::new(Shared::default());
        shared.syns_left_ab.store(drop_syns, Ordering::Relaxed);
        shared.blackhole_ab.store(blackhole, Ordering::Relaxed);
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

fn should_drop(dir: &Direction, shared: &Shared, pkt: &[u8]) -> bool {
    if !dir.a_to_b {
        return false;
    }
    if shared.blackhole_ab.load(Ordering::Relaxed) {
        return true;
    }
    if is_bare_syn(pkt)
        && shared
            .syns_left_ab
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
    {
        shared.syns_dropped.fetch_add(1, Ordering::Relaxed);
        return true;
    }
    false
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
            if should_drop(&dir, shared, pkt) || queue.len() >= QUEUE_CAP {
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
