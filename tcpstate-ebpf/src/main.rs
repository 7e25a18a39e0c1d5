//! tcpstate's kernel side: one tracepoint program on `sock:inet_sock_set_state`.
//!
//! It copies the tracepoint record once, attributes the socket to its owning process, applies
//! the user's filters and streams what passes through a ring buffer. Everything that is
//! configurable is a load-time global in `.rodata`: the verifier sees those as constants and
//! prunes the code of filters that are off, and of logging when it is off.
#![cfg_attr(target_arch = "bpf", no_std)]
#![cfg_attr(target_arch = "bpf", no_main)]
// On the host this crate is only compiled for `cargo clippy`; the program is never run there.
#![cfg_attr(not(target_arch = "bpf"), allow(dead_code, unused_imports))]
// Map keys and values are passed by reference on purpose: by value, each call copies them onto
// the 512-byte BPF stack, which this program would then exceed.
#![allow(clippy::needless_borrows_for_generic_args)]

use aya_ebpf::{
    bindings::{
        BPF_ANY, BPF_F_NO_COMMON_LRU, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP,
    },
    helpers::{
        bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_ktime_get_ns, bpf_probe_read_kernel_buf,
    },
    macros::{map, tracepoint},
    maps::{lpm_trie::Key, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
    programs::TracePointContext,
    EbpfContext,
};
use aya_log_ebpf::debug;
use tcpstate_common::{
    counter, event_flags, filter_flags, owner_source, port_bits, state, Event, Filter, Layout,
    ListenKey, ListenOwner, Owner, Settings, TupleKey, ADDRS_MAX, AF_INET, AF_INET6, IPPROTO_TCP,
    LISTENERS_MAX, MAX_RECORD_LEN, MODERN_LAYOUT, OWNERS_MAX, PENDING_MAX, PIDS_MAX,
    PREEXISTING_MAX, TASK_COMM_LEN,
};

#[no_mangle]
static LAYOUT: Layout = Layout {
    skaddr: 0,
    oldstate: 0,
    newstate: 0,
    sport: 0,
    dport: 0,
    family: 0,
    protocol: 0,
    protocol_size: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
    record_len: 0,
    _pad: 0,
};

#[no_mangle]
static FILTER: Filter = Filter {
    flags: 0,
    _pad: 0,
    comm: [0; TASK_COMM_LEN],
};

#[no_mangle]
static SETTINGS: Settings = Settings {
    wakeup_bytes: 0,
    direct_read: 0,
    _pad: 0,
};

/// Size set by user space at load (`--buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Socket address -> owning process, for the life of the socket.
#[map]
static OWNERS: LruHashMap<u64, Owner> =
    LruHashMap::with_max_entries(OWNERS_MAX, BPF_F_NO_COMMON_LRU);

/// Listening address -> owner of the listener, to attribute accepted sockets.
#[map]
static LISTENERS: HashMap<ListenKey, ListenOwner> = HashMap::with_max_entries(LISTENERS_MAX, 0);

/// Connections that existed before tracing started, filled from /proc by user space.
#[map]
static PREEXISTING: HashMap<TupleKey, Owner> = HashMap::with_max_entries(PREEXISTING_MAX, 0);

/// connect() events held back until the local port is known (port filters only).
#[map]
static PENDING: LruHashMap<u64, Event> = LruHashMap::with_max_entries(PENDING_MAX, 0);

/// Owner pids (or thread ids) to keep.
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PIDS_MAX, 0);

/// Port -> `port_bits`: which port filters list it.
#[map]
static PORTS: HashMap<u16, u8> = HashMap::with_max_entries(65536, 0);

/// Remote CIDRs to keep; IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d).
#[map]
static ADDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(ADDRS_MAX, 0);

#[tracepoint]
pub fn tcpstate(ctx: TracePointContext) -> u32 {
    handle(&ctx);
    0
}

/// Reads a load-time constant without letting the compiler fold the placeholder value in.
#[inline(always)]
fn konst<T: Copy>(v: &T) -> T {
    // SAFETY: `v` is a valid static.
    unsafe { core::ptr::read_volatile(v) }
}

#[inline(always)]
fn count(index: u32) {
    if let Some(p) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: a per-CPU slot; only this CPU writes it while the program runs.
        unsafe { *p = (*p).wrapping_add(1) };
    }
}

struct Record {
    buf: [u8; MAX_RECORD_LEN],
}

impl Record {
    #[inline(always)]
    fn u8_at(&self, off: u16) -> u8 {
        self.buf.get(off as usize).copied().unwrap_or(0)
    }

    #[inline(always)]
    fn u16_at(&self, off: u16) -> u16 {
        let o = off as usize;
        match self.buf.get(o..o + 2) {
            Some(b) => u16::from_ne_bytes([b[0], b[1]]),
            None => 0,
        }
    }

    #[inline(always)]
    fn u64_at(&self, off: u16) -> u64 {
        let o = off as usize;
        match self.buf.get(o..o + 8) {
            Some(b) => u64::from_ne_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]),
            None => 0,
        }
    }

    #[inline(always)]
    fn copy_to(&self, off: u16, dst: &mut [u8]) {
        let o = off as usize;
        if let Some(src) = self.buf.get(o..o + dst.len()) {
            dst.copy_from_slice(src);
        }
    }
}

/// Loads a field of the record at a compile-time offset, straight from the context.
#[inline(always)]
fn ctx_field<T: Copy>(ctx: &TracePointContext, off: u16) -> T {
    // SAFETY: only called with MODERN_LAYOUT offsets after user space checked that the format
    // file describes exactly that layout; the verifier checks every context access again.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(off as usize) as *const T) }
}

/// Fills the socket fields of `ev` from the record; returns its protocol.
#[inline(always)]
fn read_direct(ctx: &TracePointContext, ev: &mut Event) -> u16 {
    const M: Layout = MODERN_LAYOUT;
    let protocol: u16 = ctx_field(ctx, M.protocol);
    if protocol != IPPROTO_TCP {
        return protocol;
    }
    ev.skaddr = ctx_field(ctx, M.skaddr);
    ev.oldstate = ctx_field::<u32>(ctx, M.oldstate) as u8;
    ev.newstate = ctx_field::<u32>(ctx, M.newstate) as u8;
    ev.family = ctx_field::<u16>(ctx, M.family) as u8;
    ev.sport = ctx_field(ctx, M.sport);
    ev.dport = ctx_field(ctx, M.dport);
    if ev.family == AF_INET {
        ev.saddr[..4].copy_from_slice(&ctx_field::<[u8; 4]>(ctx, M.saddr));
        ev.daddr[..4].copy_from_slice(&ctx_field::<[u8; 4]>(ctx, M.daddr));
    } else {
        // Two aligned 8-byte loads each: the verifier only allows aligned context reads.
        let s0: u64 = ctx_field(ctx, M.saddr_v6);
        let s1: u64 = ctx_field(ctx, M.saddr_v6 + 8);
        let d0: u64 = ctx_field(ctx, M.daddr_v6);
        let d1: u64 = ctx_field(ctx, M.daddr_v6 + 8);
        ev.saddr[..8].copy_from_slice(&s0.to_ne_bytes());
        ev.saddr[8..].copy_from_slice(&s1.to_ne_bytes());
        ev.daddr[..8].copy_from_slice(&d0.to_ne_bytes());
        ev.daddr[8..].copy_from_slice(&d1.to_ne_bytes());
    }
    protocol
}

/// The same from one copy of the record at the offsets the format file gave (other layouts).
#[inline(always)]
fn read_copied(ctx: &TracePointContext, ev: &mut Event) -> u16 {
    let mut rec = Record {
        buf: [0; MAX_RECORD_LEN],
    };
    let len = konst(&LAYOUT.record_len) as usize;
    let Some(dst) = rec.buf.get_mut(..len) else {
        return 0;
    };
    // SAFETY: the tracepoint record is readable kernel memory of at least `record_len` bytes
    // (user space checked it against the format file).
    if unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, dst) }.is_err() {
        return 0;
    }
    let protocol = if konst(&LAYOUT.protocol_size) == 1 {
        rec.u8_at(konst(&LAYOUT.protocol)) as u16
    } else {
        rec.u16_at(konst(&LAYOUT.protocol))
    };
    if protocol != IPPROTO_TCP {
        return protocol;
    }
    ev.skaddr = rec.u64_at(konst(&LAYOUT.skaddr));
    // The tracepoint stores states as int; the values fit in a byte.
    ev.oldstate = rec.u8_at(konst(&LAYOUT.oldstate));
    ev.newstate = rec.u8_at(konst(&LAYOUT.newstate));
    ev.family = rec.u16_at(konst(&LAYOUT.family)) as u8;
    ev.sport = rec.u16_at(konst(&LAYOUT.sport));
    ev.dport = rec.u16_at(konst(&LAYOUT.dport));
    if ev.family == AF_INET {
        rec.copy_to(konst(&LAYOUT.saddr), &mut ev.saddr[..4]);
        rec.copy_to(konst(&LAYOUT.daddr), &mut ev.daddr[..4]);
    } else {
        rec.copy_to(konst(&LAYOUT.saddr_v6), &mut ev.saddr);
        rec.copy_to(konst(&LAYOUT.daddr_v6), &mut ev.daddr);
    }
    protocol
}

#[inline(always)]
fn handle(ctx: &TracePointContext) {
    let mut ev = Event::zeroed();
    let protocol = if konst(&SETTINGS.direct_read) == 1 {
        read_direct(ctx, &mut ev)
    } else {
        read_copied(ctx, &mut ev)
    };
    if protocol != IPPROTO_TCP {
        return;
    }
    count(counter::SEEN);
    ev.ts_ns = unsafe { bpf_ktime_get_ns() };
    let pid_tgid = bpf_get_current_pid_tgid();
    ev.ctx_pid = (pid_tgid >> 32) as u32;
    ev.ctx_tid = pid_tgid as u32;
    ev.ctx_comm = bpf_get_current_comm().unwrap_or([0; TASK_COMM_LEN]);

    attribute(ctx, &mut ev);

    let flags = konst(&FILTER.flags);
    if flags != 0 {
        match filter(&ev, flags) {
            Verdict::Pass => {}
            Verdict::Reject => {
                // A held connect() event of a socket that turned out not to match is dropped
                // with it, and counted as filtered like it.
                if flags & (filter_flags::LPORT | filter_flags::PORT) != 0
                    && ev.sport != 0
                    && PENDING.remove(&ev.skaddr).is_ok()
                {
                    count(counter::FILTERED);
                }
                count(counter::FILTERED);
                return;
            }
            Verdict::Defer => {
                ev.flags |= event_flags::DEFERRED;
                if PENDING.insert(&ev.skaddr, &ev, BPF_ANY as u64).is_ok() {
                    count(counter::DEFERRED);
                } else {
                    count(counter::FILTERED);
                }
                return;
            }
        }
        if flags & (filter_flags::LPORT | filter_flags::PORT) != 0 {
            // SAFETY: the value is copied out before the entry is removed.
            if let Some(held) = unsafe { PENDING.get(&ev.skaddr) } {
                let held = *held;
                let _ = PENDING.remove(&ev.skaddr);
                submit(ctx, &held);
            }
        }
    }
    submit(ctx, &ev);
}

#[inline(always)]
fn submit(ctx: &TracePointContext, ev: &Event) {
    let wake = if EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= konst(&SETTINGS.wakeup_bytes) {
        BPF_RB_FORCE_WAKEUP
    } else {
        BPF_RB_NO_WAKEUP
    };
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(*ev);
            entry.submit(wake as u64);
            count(counter::SUBMITTED);
        }
        None => {
            count(counter::RINGBUF_FULL);
            debug!(ctx, "ring buffer full, event lost");
        }
    }
}

/// Transitions that only a system call of the socket's owner makes: connect(), listen(),
/// close()/shutdown() of an open or half-closed socket, close() of a listener. Every other
/// transition is driven by packets or timers and runs in whatever task the CPU happened to run.
#[inline(always)]
fn is_owner_syscall(old: u8, new: u8) -> bool {
    matches!(
        (old, new),
        (state::CLOSE, state::SYN_SENT)
            | (state::CLOSE, state::LISTEN)
            | (state::ESTABLISHED, state::FIN_WAIT1)
            | (state::SYN_RECV, state::FIN_WAIT1)
            | (state::CLOSE_WAIT, state::LAST_ACK)
            | (state::LISTEN, state::CLOSE)
    )
}

#[inline(always)]
fn listen_key(ev: &Event) -> ListenKey {
    ListenKey {
        family: ev.family as u16,
        port: ev.sport,
        addr: ev.saddr,
    }
}

#[inline(always)]
fn attribute(ctx: &TracePointContext, ev: &mut Event) {
    let (old, new) = (ev.oldstate, ev.newstate);
    if is_owner_syscall(old, new) {
        let owner = Owner {
            pid: ev.ctx_pid,
            tid: ev.ctx_tid,
            comm: ev.ctx_comm,
        };
        set_owner(ev, &owner, owner_source::SYSCALL);
        if new == state::LISTEN {
            note_listener(ev, &owner);
        } else if old == state::LISTEN {
            forget_listener(ev);
        }
    } else if old == state::LISTEN && new == state::SYN_RECV {
        // A child socket born from a listener in softirq: its owner is the listener's.
        let mut key = listen_key(ev);
        // SAFETY: the value is copied out at once.
        let mut found = unsafe { LISTENERS.get(&key) }.map(|l| l.owner);
        if found.is_none() {
            key.addr = [0; 16];
            found = unsafe { LISTENERS.get(&key) }.map(|l| l.owner);
        }
        if let Some(owner) = found {
            if owner.pid != 0 {
                set_owner(ev, &owner, owner_source::LISTENER);
            }
        }
    } else if let Some(owner) = unsafe { OWNERS.get(&ev.skaddr) } {
        ev.owner_pid = owner.pid;
        ev.owner_tid = owner.tid;
        ev.owner_comm = owner.comm;
        ev.owner_source = owner_source::REMEMBERED;
    } else {
        let key = TupleKey {
            family: ev.family as u16,
            sport: ev.sport,
            dport: ev.dport,
            _pad: 0,
            saddr: ev.saddr,
            daddr: ev.daddr,
        };
        if let Some(owner) = unsafe { PREEXISTING.get(&key) } {
            let owner = *owner;
            set_owner(ev, &owner, owner_source::PROC_SCAN);
        }
    }
    if new == state::CLOSE {
        // The socket's life is over; its address may be reused by an unrelated socket.
        let _ = OWNERS.remove(&ev.skaddr);
    }
    if ev.owner_pid == 0 {
        debug!(ctx, "owner unknown for {:x}", ev.skaddr);
    }
}

#[inline(always)]
fn set_owner(ev: &mut Event, owner: &Owner, source: u8) {
    ev.owner_pid = owner.pid;
    ev.owner_tid = owner.tid;
    ev.owner_comm = owner.comm;
    ev.owner_source = source;
    if ev.newstate == state::CLOSE {
        return;
    }
    // Overwrite a known socket's entry in place: an LRU map's update allocates a new element
    // every time, the dearest operation on this path.
    if let Some(slot) = OWNERS.get_ptr_mut(&ev.skaddr) {
        // SAFETY: a live value of this map; a socket's state changes under its lock, so one
        // socket's entry has one writer at a time.
        unsafe { *slot = *owner };
    } else if OWNERS.insert(&ev.skaddr, owner, BPF_ANY as u64).is_err() {
        count(counter::OWNER_UPDATE_FAILED);
    }
}

#[inline(always)]
fn note_listener(ev: &Event, owner: &Owner) {
    let key = listen_key(ev);
    let mut value = ListenOwner {
        skaddr: ev.skaddr,
        owner: *owner,
    };
    // SAFETY: the value is read at once.
    if let Some(prev) = unsafe { LISTENERS.get(&key) } {
        if prev.skaddr != ev.skaddr && prev.owner.pid != owner.pid {
            // Two processes share this port (SO_REUSEPORT): which one accepts is unknowable here.
            value.owner.pid = 0;
            value.owner.tid = 0;
        }
    }
    let _ = LISTENERS.insert(&key, &value, BPF_ANY as u64);
}

#[inline(always)]
fn forget_listener(ev: &Event) {
    let key = listen_key(ev);
    // SAFETY: the value is read at once.
    // A listener found by the start-up scan has no known address; its owner closing it is enough.
    let mine = unsafe { LISTENERS.get(&key) }
        .is_some_and(|l| l.skaddr == ev.skaddr || (l.skaddr == 0 && l.owner.pid == ev.ctx_pid));
    if mine {
        let _ = LISTENERS.remove(&key);
    }
}

enum Verdict {
    Pass,
    Reject,
    /// Decidable only once the local port is known.
    Defer,
}

#[inline(always)]
fn port_has(port: u16, bit: u8) -> bool {
    // SAFETY: the value is read at once.
    unsafe { PORTS.get(&port) }.is_some_and(|v| *v & bit != 0)
}

#[inline(always)]
fn filter(ev: &Event, flags: u32) -> Verdict {
    if flags & filter_flags::IPV4_ONLY != 0 && ev.family != AF_INET {
        return Verdict::Reject;
    }
    if flags & filter_flags::IPV6_ONLY != 0 && ev.family != AF_INET6 {
        return Verdict::Reject;
    }
    if flags & filter_flags::PID != 0 {
        let known = ev.owner_pid != 0
            && (unsafe { PIDS.get(&ev.owner_pid) }.is_some()
                || unsafe { PIDS.get(&ev.owner_tid) }.is_some());
        if !known {
            return Verdict::Reject;
        }
    }
    if flags & filter_flags::COMM != 0 && ev.owner_comm != konst(&FILTER.comm) {
        return Verdict::Reject;
    }
    if flags & filter_flags::ADDR != 0 {
        let mut data = [0u8; 16];
        let prefix = if ev.family == AF_INET {
            data[10] = 0xff;
            data[11] = 0xff;
            data[12..16].copy_from_slice(&ev.daddr[..4]);
            128
        } else {
            data = ev.daddr;
            128
        };
        if ADDRS.get(Key::new(prefix, data)).is_none() {
            return Verdict::Reject;
        }
    }
    if flags & filter_flags::RPORT != 0 && !port_has(ev.dport, port_bits::REMOTE) {
        return Verdict::Reject;
    }
    // A connect() changes state before it picks its local port: that first event has port 0.
    let port_unknown =
        ev.sport == 0 && ev.oldstate == state::CLOSE && ev.newstate == state::SYN_SENT;
    if flags & filter_flags::PORT != 0
        && !port_has(ev.dport, port_bits::EITHER)
        && !port_has(ev.sport, port_bits::EITHER)
    {
        return if port_unknown {
            Verdict::Defer
        } else {
            Verdict::Reject
        };
    }
    if flags & filter_flags::LPORT != 0 && !port_has(ev.sport, port_bits::LOCAL) {
        return if port_unknown {
            Verdict::Defer
        } else {
            Verdict::Reject
        };
    }
    Verdict::Pass
}

#[cfg(target_arch = "bpf")]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // SAFETY: a panic is unreachable in a verified program; the verifier rejects reachable ones.
    unsafe { core::hint::unreachable_unchecked() }
}

#[cfg(target_arch = "bpf")]
#[link_section = "license"]
#[no_mangle]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

#[cfg(not(target_arch = "bpf"))]
fn main() {}
