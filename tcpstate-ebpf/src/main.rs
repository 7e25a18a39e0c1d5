//! tcpstate's kernel side: the state-change program on `sock:inet_sock_set_state`, in two forms
//! (the classic tracepoint, and the BTF-enabled one with a herald and a rescue program around
//! it), and the joined `tcp:*` and `skb:kfree_skb` programs.
//!
//! The state-change program reads the socket's fields, drops what the socket filters (family, ports, addresses)
//! reject before doing anything costly, attributes the socket to its owning process, applies the
//! owner filters, and writes what passes straight into a ring buffer slot. Everything that is
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
    bindings::{BPF_ANY, BPF_NOEXIST, BPF_RB_AVAIL_DATA, BPF_RB_FORCE_WAKEUP, BPF_RB_NO_WAKEUP},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_ktime_get_ns,
        bpf_probe_read_kernel, bpf_probe_read_kernel_buf, generated,
    },
    macros::{btf_tracepoint, map, tracepoint},
    maps::{lpm_trie::Key, Array, HashMap, LpmTrie, PerCpuArray, RingBuf},
    programs::{BtfTracePointContext, TracePointContext},
    EbpfContext,
};
use aya_log_ebpf::debug;
use tcpstate_common::{
    comm_words, counter, event_flags, filter_flags, listener_kind, listener_known, owner_flags,
    owner_source, port_bits, port_slot, reset_direction, retransmit_kind, retransmit_known, state,
    DropLayout, Event, EventWithQueue, FactField, FactFields, FactGroup, FactGroups, Filter,
    JoinLayout, Layout, ListenKey, ListenOffsets, ListenOwner, ListenerRecord, NetnsOffsets, Owner,
    OwnerlessEvent, ResetRecord, RetransmitRecord, Settings, SkbOffsets, SockLayout, TupleKey,
    WithFacts, ADDRS_MAX, AF_INET, AF_INET6, EVENT_SIZE, FACTS_RAW_LEN, FACT_GROUP_TIERS,
    IPPROTO_TCP, LISTENERS_MAX, MAX_FACT_FIELDS, MAX_FACT_GROUPS, MAX_RECORD_LEN,
    MODERN_DROP_LAYOUT, MODERN_LAYOUT, OWNERS_MAX, PENDING_MAX, PIDS_MAX, PORT_SLOTS,
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
    cgroup_id: 0,
    cgroup_level: 0,
    netns: 0,
};

/// Where a socket's network namespace inode is (from BTF; `ok` 0: unknown, never read).
#[no_mangle]
static NETNS_OFFSETS: NetnsOffsets = NetnsOffsets {
    skc_net: 0,
    ns_inum: 0,
    ok: 0,
};

/// Where the BTF tracepoint finds the record's fields in the socket (from BTF; unused, and all
/// 0, when the classic tracepoint is attached).
#[no_mangle]
static SOCK_LAYOUT: SockLayout = SockLayout {
    family: 0,
    dport: 0,
    daddr: 0,
    v6_daddr: 0,
    v6_rcv_saddr: 0,
    inet_saddr: 0,
    inet_sport: 0,
    task_comm: 0,
};

#[no_mangle]
static SETTINGS: Settings = Settings {
    wakeup_bytes: 0,
    direct_read: 0,
    user_attribution: 0,
};

/// The socket byte ranges copied into a `FactsRecord` (from BTF; all `len` 0: no facts).
#[no_mangle]
static FACT_GROUPS: FactGroups = FactGroups {
    groups: [FactGroup {
        src_off: 0,
        dst_off: 0,
        len: 0,
        _pad: 0,
    }; MAX_FACT_GROUPS],
};

/// The groups' fields one by one, for the BTF tracepoint's typed loads (all `size` 0: none).
#[no_mangle]
static FACT_FIELDS: FactFields = FactFields {
    fields: [FactField {
        src_off: 0,
        dst_off: 0,
        size: 0,
        group: 0,
        _pad: 0,
    }; MAX_FACT_FIELDS],
};

/// Bit i: group i is copied at the end of a handshake too (every group is at a close).
#[no_mangle]
static FACTS_HANDSHAKE_GROUPS: u32 = 0;

#[no_mangle]
static SKB_OFFSETS: SkbOffsets = SkbOffsets {
    cb_tcp_flags: 0,
    cb_gso_segs: 0,
    head: 0,
    transport_header: 0,
    tcp_flags_ok: 0,
    gso_segs_ok: 0,
    seg_flags_ok: 0,
    _pad: [0; 5],
};

const NO_JOIN_LAYOUT: JoinLayout = JoinLayout {
    skbaddr: 0,
    skaddr: 0,
    state: 0,
    err: 0,
    reason: 0,
    sport: 0,
    dport: 0,
    family: 0,
    saddr: 0,
    daddr: 0,
    saddr_v6: 0,
    daddr_v6: 0,
    sockaddr: 0,
    record_len: 0,
    _pad: [0; 2],
};

/// Layouts of the joined tracepoints, from their format files (a program whose tracepoint the
/// kernel lacks is never loaded).
#[no_mangle]
static RETRANSMIT_SKB_LAYOUT: JoinLayout = NO_JOIN_LAYOUT;
#[no_mangle]
static RETRANSMIT_SYNACK_LAYOUT: JoinLayout = NO_JOIN_LAYOUT;
#[no_mangle]
static SEND_RESET_LAYOUT: JoinLayout = NO_JOIN_LAYOUT;
#[no_mangle]
static RECEIVE_RESET_LAYOUT: JoinLayout = NO_JOIN_LAYOUT;

/// Listener health: where the accept queue lives in `struct sock` (from BTF).
#[no_mangle]
static LISTEN_OFFSETS: ListenOffsets = ListenOffsets {
    ack_backlog: 0,
    max_ack_backlog: 0,
    ok: 0,
    _pad: [0; 3],
};

/// Layout of `skb:kfree_skb` (the program is attached only when it has `rx_sk`).
#[no_mangle]
static DROP_LAYOUT: DropLayout = DropLayout {
    rx_sk: 0,
    reason: 0,
    protocol: 0,
    record_len: 0,
};

/// Size set by user space at load (`--buffer-size`).
#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(1 << 22, 0);

#[map]
static COUNTERS: PerCpuArray<u64> =
    PerCpuArray::with_max_entries(counter::COUNT * counter::BANKS, 0);

/// Per CPU: 1 from the herald program's announcement of a state change until the main
/// BTF-tracepoint program claims it. A state change that happens inside the main program's run
/// (a softirq on the same CPU) is skipped by the kernel's per-program recursion guard, so its
/// announcement stays unclaimed, and the rescue program, attached after the main one, handles
/// it. The herald runs before the main program's guard is taken and the rescue after it is
/// released, so no instant of the main program's run is uncovered (its statistics' clock
/// reads and the interrupts they let in included).
#[map]
static UNCLAIMED: PerCpuArray<u32> = PerCpuArray::with_max_entries(1, 0);

/// Socket address -> owning process, for the life of the socket. A plain (preallocated) hash:
/// cheaper per update than an LRU map; entries are removed when their socket closes, and when
/// it is full a new socket's owner stays unknown (counted), never wrong.
#[map]
static OWNERS: HashMap<u64, Owner> = HashMap::with_max_entries(OWNERS_MAX, 0);

/// Listening address -> owner of the listener, to attribute accepted sockets.
#[map]
static LISTENERS: HashMap<ListenKey, ListenOwner> = HashMap::with_max_entries(LISTENERS_MAX, 0);

/// Connections that existed before tracing started, filled from /proc by user space.
#[map]
static PREEXISTING: HashMap<TupleKey, Owner> = HashMap::with_max_entries(PREEXISTING_MAX, 0);

/// connect() events held back until the local port is known (port filters only). A plain
/// preallocated hash, not an LRU: an LRU would evict a held event without the program knowing,
/// while a full plain table is a failed insert, counted (`HOLD_FAILED`). Every entry leaves at
/// its socket's next transition out of SYN_SENT (released or dropped), so the table holds only
/// connects in progress.
#[map]
static PENDING: HashMap<u64, Event> = HashMap::with_max_entries(PENDING_MAX, 0);

/// Listener socket address -> its local end, for the listeners this trace shows (those that
/// passed the filters at listen()). `skb:kfree_skb` fires for every freed packet of the host;
/// one lookup here is all a packet of any other socket costs. Entries leave at the listener's
/// close; when full, a new listener's drops are not seen (its queue readings still are).
#[map]
static LISTEN_SOCKS: HashMap<u64, ListenKey> = HashMap::with_max_entries(LISTENERS_MAX, 0);

/// Owner pids (or thread ids) to keep.
#[map]
static PIDS: HashMap<u32, u8> = HashMap::with_max_entries(PIDS_MAX, 0);

/// Port -> `port_bits`: which port filters list it, four bits a port in `PORT_SLOTS` words
/// (`port_slot`). An array, so that a lookup is a bounds check and a load (the verifier inlines
/// it), where a hash was a hash computation and a bucket walk twice per event.
#[map]
static PORTS: Array<u32> = Array::with_max_entries(PORT_SLOTS, 0);

/// Remote CIDRs to keep; IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d).
#[map]
static ADDRS: LpmTrie<[u8; 16], u8> = LpmTrie::with_max_entries(ADDRS_MAX, 0);

#[tracepoint]
pub fn tcpstate(ctx: TracePointContext) -> u32 {
    let found = if konst(&SETTINGS.direct_read) == 1 {
        read_direct(&ctx)
    } else {
        read_copied(&ctx)
    };
    if let Some(s) = found {
        handle(&ctx, s, MAIN);
    }
    0
}

/// Runs first for every state change, and announces it (`UNCLAIMED`).
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpstate_herald(_ctx: BtfTracePointContext) -> u32 {
    if let Some(f) = UNCLAIMED.get_ptr_mut(0) {
        // SAFETY: this CPU's slot; a program nested in another on this CPU runs to its end
        // before the other resumes, so each store and read here is of one whole run.
        unsafe { *f = 1 };
    }
    0
}

/// The same on the BTF-enabled tracepoint (`tp_btf`): the kernel calls it with the socket
/// pointer and the two states, without building a trace record, and guards it per program.
/// It claims the herald's announcement first thing: this state change is handled.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpstate_btf(ctx: BtfTracePointContext) -> u32 {
    if let Some(f) = UNCLAIMED.get_ptr_mut(0) {
        // SAFETY: as in the herald.
        unsafe { *f = 0 };
    }
    if let Some(s) = read_sock(&ctx) {
        handle(&ctx, s, MAIN);
    }
    0
}

/// Runs after `tcpstate_btf` for every state change and does nothing, unless the herald's
/// announcement of it is still unclaimed: then the kernel skipped `tcpstate_btf` for it (it
/// happened inside a run of `tcpstate_btf` on this CPU; counted in its recursion misses), and
/// this program handles it.
#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn tcpstate_rescue(ctx: BtfTracePointContext) -> u32 {
    let Some(f) = UNCLAIMED.get_ptr_mut(0) else {
        return 0;
    };
    // SAFETY: as in the herald.
    if unsafe { *f } == 0 {
        return 0;
    }
    // SAFETY: as above.
    unsafe { *f = 0 };
    count(RESCUE, counter::RESCUED);
    if let Some(s) = read_sock(&ctx) {
        handle(&ctx, s, RESCUE);
    }
    0
}

/// Loads a field of a BTF-typed kernel struct (the TCP socket the BTF tracepoint hands over,
/// the current task), at an offset from BTF.
#[inline(always)]
fn sk_field<T: Copy>(tp: *const u8, off: u16) -> T {
    // SAFETY: `tp` is a BTF-typed pointer (the verifier checks each access against the struct
    // and makes the load fault-safe); `off` is a load-time constant user space took from BTF
    // for a field that holds this size there.
    unsafe { core::ptr::read(tp.add(off as usize) as *const T) }
}

/// The fields the classic tracepoint's record holds, from the socket itself: the same ones the
/// kernel copies into that record (`inet_sport`, `inet_saddr`, `skc_*`), by typed loads.
#[inline(always)]
fn read_sock(ctx: &BtfTracePointContext) -> Option<Sock> {
    let sk: *mut core::ffi::c_void = ctx.arg(0);
    let oldstate: i32 = ctx.arg(1);
    let newstate: i32 = ctx.arg(2);
    // The socket as a `tcp_sock`, or null when it is not a full TCP socket: this is the
    // classic record's `protocol == IPPROTO_TCP` (MPTCP's own sockets also change state here),
    // and it types the pointer so that the `inet_sock` fields past `struct sock` load directly.
    // SAFETY: a helper that checks its argument.
    let tp = unsafe { generated::bpf_skc_to_tcp_sock(sk) } as *const u8;
    if tp.is_null() {
        return None;
    }
    let l = &SOCK_LAYOUT;
    let family = sk_field::<u16>(tp, konst(&l.family)) as u8;
    let (saddr, daddr) = if family == AF_INET {
        (
            [u64::from(sk_field::<u32>(tp, konst(&l.inet_saddr))), 0],
            [u64::from(sk_field::<u32>(tp, konst(&l.daddr))), 0],
        )
    } else {
        let (s6, d6) = (konst(&l.v6_rcv_saddr), konst(&l.v6_daddr));
        (
            [sk_field(tp, s6), sk_field(tp, s6 + 8)],
            [sk_field(tp, d6), sk_field(tp, d6 + 8)],
        )
    };
    Some(Sock {
        skaddr: tp as u64,
        oldstate: oldstate as u8,
        newstate: newstate as u8,
        family,
        sport: u16::from_be(sk_field::<u16>(tp, konst(&l.inet_sport))),
        dport: u16::from_be(sk_field::<u16>(tp, konst(&l.dport))),
        saddr,
        daddr,
        netns: Some(typed_netns(tp)),
    })
}

/// Reads a load-time constant without letting the compiler fold the placeholder value in.
#[inline(always)]
fn konst<T: Copy>(v: &T) -> T {
    // SAFETY: `v` is a valid static.
    unsafe { core::ptr::read_volatile(v) }
}

/// Which program's slots of `COUNTERS` a run counts in. Each program writes only its own bank,
/// so a program that interrupts another on the same CPU (the rescue program inside the main
/// one, a joined program inside a BTF-tracepoint run) never races it on a read-modify-write
/// of the same slot; user space sums the banks.
#[derive(Clone, Copy)]
struct Bank(u32);

const MAIN: Bank = Bank(counter::BANK_MAIN);
const RESCUE: Bank = Bank(counter::BANK_RESCUE);
const JOINED: Bank = Bank(counter::BANK_JOINED);

/// Adds one to a per-CPU counter of a bank; returns the new value (0 if the slot is missing).
#[inline(always)]
fn count(bank: Bank, index: u32) -> u64 {
    match COUNTERS.get_ptr_mut(bank.0 + index) {
        // SAFETY: a per-CPU slot; only this CPU writes it while the program runs.
        Some(p) => unsafe {
            *p = (*p).wrapping_add(1);
            *p
        },
        None => 0,
    }
}

/// The socket fields of one record. Addresses are two native words each, network byte order
/// in memory, IPv4 in the first 4 bytes: moved as words, never byte by byte.
#[derive(Clone, Copy)]
struct Sock {
    skaddr: u64,
    oldstate: u8,
    newstate: u8,
    family: u8,
    sport: u16,
    dport: u16,
    saddr: [u64; 2],
    daddr: [u64; 2],
    /// The socket's network namespace inode when already read (the BTF tracepoint reads it
    /// with two typed loads for every event); `None`: read it with the helper where needed.
    netns: Option<u32>,
}

#[inline(always)]
fn bytes16(words: [u64; 2]) -> [u8; 16] {
    // SAFETY: two u64 are 16 bytes with no invalid values.
    unsafe { core::mem::transmute::<[u64; 2], [u8; 16]>(words) }
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
    fn u32_at(&self, off: u16) -> u32 {
        let o = off as usize;
        match self.buf.get(o..o + 4) {
            Some(b) => u32::from_ne_bytes([b[0], b[1], b[2], b[3]]),
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
}

/// Loads a field of the record at a compile-time offset, straight from the context.
#[inline(always)]
fn ctx_field<T: Copy>(ctx: &TracePointContext, off: u16) -> T {
    // SAFETY: only called with MODERN_LAYOUT offsets after user space checked that the format
    // file describes exactly that layout; the verifier checks every context access again.
    unsafe { core::ptr::read((ctx.as_ptr() as *const u8).add(off as usize) as *const T) }
}

/// The socket fields of a TCP record, by direct loads; None for another protocol.
#[inline(always)]
fn read_direct(ctx: &TracePointContext) -> Option<Sock> {
    const M: Layout = MODERN_LAYOUT;
    if ctx_field::<u16>(ctx, M.protocol) != IPPROTO_TCP {
        return None;
    }
    let family = ctx_field::<u16>(ctx, M.family) as u8;
    let (saddr, daddr) = if family == AF_INET {
        (
            [u64::from(ctx_field::<u32>(ctx, M.saddr)), 0],
            [u64::from(ctx_field::<u32>(ctx, M.daddr)), 0],
        )
    } else {
        // Aligned 8-byte loads: the verifier only allows aligned context reads.
        (
            [ctx_field(ctx, M.saddr_v6), ctx_field(ctx, M.saddr_v6 + 8)],
            [ctx_field(ctx, M.daddr_v6), ctx_field(ctx, M.daddr_v6 + 8)],
        )
    };
    Some(Sock {
        skaddr: ctx_field(ctx, M.skaddr),
        oldstate: ctx_field::<u32>(ctx, M.oldstate) as u8,
        newstate: ctx_field::<u32>(ctx, M.newstate) as u8,
        family,
        sport: ctx_field(ctx, M.sport),
        dport: ctx_field(ctx, M.dport),
        saddr,
        daddr,
        netns: None,
    })
}

/// The same from one copy of the record at the offsets the format file gave (other layouts).
#[inline(always)]
fn read_copied(ctx: &TracePointContext) -> Option<Sock> {
    let mut rec = Record {
        buf: [0; MAX_RECORD_LEN],
    };
    let len = konst(&LAYOUT.record_len) as usize;
    let dst = rec.buf.get_mut(..len)?;
    // SAFETY: the tracepoint record is readable kernel memory of at least `record_len` bytes
    // (user space checked it against the format file).
    unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, dst) }.ok()?;
    let protocol = if konst(&LAYOUT.protocol_size) == 1 {
        rec.u8_at(konst(&LAYOUT.protocol)) as u16
    } else {
        rec.u16_at(konst(&LAYOUT.protocol))
    };
    if protocol != IPPROTO_TCP {
        return None;
    }
    let family = rec.u16_at(konst(&LAYOUT.family)) as u8;
    let (saddr, daddr) = if family == AF_INET {
        (
            [u64::from(rec.u32_at(konst(&LAYOUT.saddr))), 0],
            [u64::from(rec.u32_at(konst(&LAYOUT.daddr))), 0],
        )
    } else {
        let (so, d) = (konst(&LAYOUT.saddr_v6), konst(&LAYOUT.daddr_v6));
        (
            [rec.u64_at(so), rec.u64_at(so + 8)],
            [rec.u64_at(d), rec.u64_at(d + 8)],
        )
    };
    Some(Sock {
        skaddr: rec.u64_at(konst(&LAYOUT.skaddr)),
        // The tracepoint stores states as int; the values fit in a byte.
        oldstate: rec.u8_at(konst(&LAYOUT.oldstate)),
        newstate: rec.u8_at(konst(&LAYOUT.newstate)),
        family,
        sport: rec.u16_at(konst(&LAYOUT.sport)),
        dport: rec.u16_at(konst(&LAYOUT.dport)),
        saddr,
        daddr,
        netns: None,
    })
}

/// Copies an owner out of a map value as five words (Owner is 8-byte aligned): a plain struct
/// copy becomes a call to a memmove subprogram.
#[inline(always)]
fn copy_owner(src: &Owner) -> Owner {
    let p = src as *const Owner as *const u64;
    // SAFETY: Owner is 40 bytes, 8-byte aligned, plain data.
    unsafe {
        let words = [
            core::ptr::read(p),
            core::ptr::read(p.add(1)),
            core::ptr::read(p.add(2)),
            core::ptr::read(p.add(3)),
            core::ptr::read(p.add(4)),
        ];
        core::mem::transmute::<[u64; 5], Owner>(words)
    }
}

/// The inode of the socket's own network namespace (`skc_net->ns.inum`), 0 when unknown. On
/// the classic tracepoint two helper reads, so called only where a socket's life starts, at its
/// owner's system calls, and for sockets whose owner entry is not there to carry it (see
/// `attribute`); the BTF tracepoint has it already.
#[inline(always)]
fn sock_netns(s: &Sock) -> u32 {
    if let Some(n) = s.netns {
        return n;
    }
    if konst(&NETNS_OFFSETS.ok) == 0 {
        return 0;
    }
    let Some(net) = kread::<u64>(s.skaddr, konst(&NETNS_OFFSETS.skc_net)) else {
        return 0;
    };
    if net == 0 {
        return 0;
    }
    kread::<u32>(net, konst(&NETNS_OFFSETS.ns_inum)).unwrap_or(0)
}

/// `skc_net->ns.inum` by two typed loads from the BTF tracepoint's socket (0 when unknown).
#[inline(always)]
fn typed_netns(tp: *const u8) -> u32 {
    if konst(&NETNS_OFFSETS.ok) == 0 {
        return 0;
    }
    let net: *const u8 = sk_field(tp, konst(&NETNS_OFFSETS.skc_net));
    if net.is_null() {
        return 0;
    }
    sk_field::<u32>(net, konst(&NETNS_OFFSETS.ns_inum))
}

/// The current task's name by the helper, written without zeroing the buffer first (the
/// helper pads it itself; zeroing would be a memset call).
#[inline(always)]
fn helper_comm() -> [u64; 2] {
    let mut words = core::mem::MaybeUninit::<[u64; 2]>::uninit();
    // SAFETY: a 16-byte buffer; on failure the helper zeroes it.
    unsafe {
        generated::bpf_get_current_comm(words.as_mut_ptr() as *mut _, TASK_COMM_LEN as u32);
        words.assume_init()
    }
}

/// The same by two typed loads of the current task's `comm` (where BTF types the task): no
/// helper call, and exactly the bytes the helper would copy (`comm_words`).
#[inline(always)]
fn typed_comm() -> [u64; 2] {
    // SAFETY: a helper without arguments; it returns the trusted, non-null current task.
    let task = unsafe { generated::bpf_get_current_task_btf() } as *const u8;
    let off = konst(&SOCK_LAYOUT.task_comm);
    comm_words(sk_field(task, off), sk_field(task, off + 8))
}

/// The filters that look at the socket only, checked before anything costly.
const SOCKET_FILTERS: u32 = filter_flags::IPV4_ONLY
    | filter_flags::IPV6_ONLY
    | filter_flags::ADDR
    | filter_flags::RPORT
    | filter_flags::LPORT
    | filter_flags::PORT;
/// The filters on the owner, checked once it is known.
const OWNER_FILTERS: u32 = filter_flags::OWNER;
const PORT_FILTERS: u32 = filter_flags::LPORT | filter_flags::PORT;

#[inline(always)]
fn handle<C: Attached>(ctx: &C, s: Sock, b: Bank) {
    count(b, counter::SEEN);

    let flags = konst(&FILTER.flags);
    let mut defer = false;
    if flags & SOCKET_FILTERS != 0 {
        match filter_socket(&s, flags) {
            Verdict::Pass => {}
            Verdict::Defer => defer = true,
            Verdict::Reject => {
                // Listeners are tracked even when filtered out: the sockets they accept may
                // match (their remote end is a client, the listener's is 0).
                if s.newstate == state::LISTEN || s.oldstate == state::LISTEN {
                    attribute(ctx, &s, bpf_get_current_pid_tgid(), b);
                }
                reject(&s, flags, b);
                return;
            }
        }
    }

    let pid_tgid = bpf_get_current_pid_tgid();
    if defer {
        // A connect() whose local port is not chosen yet. Its owner travels with the held
        // event and enters the owner table only if the socket turns out to match: most held
        // connects are dropped, and then cost no table insert and delete.
        let owner = current_owner::<C>(pid_tgid, &s);
        if flags & OWNER_FILTERS != 0 && !owner_passes(&owner, flags) {
            reject(&s, flags, b);
            return;
        }
        hold(&s, unsafe { bpf_ktime_get_ns() }, pid_tgid, &owner, b);
        return;
    }
    // Before attribution, so that this event finds the owner the held one carried.
    if flags & PORT_FILTERS != 0 && holds_connect(&s) {
        release_held(ctx, &s, b);
    }
    let who = attribute(ctx, &s, pid_tgid, b);

    if flags & OWNER_FILTERS != 0 && !who.passes(flags) {
        reject(&s, flags, b);
        return;
    }
    let ts = unsafe { bpf_ktime_get_ns() };
    let queue = read_queue(&s, who.listener, b);
    emit(ctx, &s, ts, pid_tgid, &who, queue, b);
    listener_health(&s);
}

/// Whether this socket may have a connect() event held: only the transition that follows it,
/// out of SYN_SENT, can find one (so other events skip the map). Also with port 0: a connect()
/// that failed to get a port leaves SYN_SENT without one, and its held event must go too.
#[inline(always)]
fn holds_connect(s: &Sock) -> bool {
    s.oldstate == state::SYN_SENT
}

/// Counts a rejected event, and drops the socket's held connect() event with it.
#[inline(always)]
fn reject(s: &Sock, flags: u32, b: Bank) {
    // The held event of a socket that turned out not to match is dropped with it, and counted
    // as filtered like it (and as dropped, which takes it out of the held ones).
    if flags & PORT_FILTERS != 0 && holds_connect(s) && PENDING.remove(&s.skaddr).is_ok() {
        count(b, counter::HELD_DROPPED);
        count(b, counter::FILTERED);
    }
    count(b, counter::FILTERED);
}

struct Attribution {
    /// None: unknown, or left to user space (`source` says which); the event's owner fields
    /// are then 0. An `Option` rather than a zeroed owner: zeroing one is a byte-loop memset
    /// subprogram call in BPF code, and most events have no owner in the kernel.
    owner: Option<Owner>,
    /// The socket's network namespace inode (0 when unknown), with or without an owner.
    netns: u32,
    source: u8,
    /// The owner is the current task (the event is the owner's own system call): its name is
    /// the context's name too.
    ctx_comm_known: bool,
    /// A child socket's listener (LISTEN -> SYN_RECV), for its queue reading.
    listener: Option<Listener>,
}

impl Attribution {
    #[inline(always)]
    fn known(owner: Owner, source: u8) -> Attribution {
        Attribution {
            netns: owner.netns,
            owner: Some(owner),
            source,
            ctx_comm_known: false,
            listener: None,
        }
    }

    #[inline(always)]
    fn unknown(s: &Sock, source: u8) -> Attribution {
        Attribution {
            owner: None,
            netns: sock_netns(s),
            source,
            ctx_comm_known: false,
            listener: None,
        }
    }

    /// Whether the owner filters keep the event. Of an unknown owner only the socket's
    /// namespace is known: it fails every other owner filter (a `--comm` is never empty).
    #[inline(always)]
    fn passes(&self, flags: u32) -> bool {
        match &self.owner {
            Some(owner) => owner_passes(owner, flags),
            None => {
                flags & (filter_flags::PID | filter_flags::COMM | filter_flags::CGROUP) == 0
                    && (flags & filter_flags::NETNS == 0 || self.netns == konst(&FILTER.netns))
            }
        }
    }
}

/// The current task as the socket's owner, its cgroup included (the one place the kernel can
/// tell it: later events run in whatever task the CPU ran).
#[inline(always)]
fn current_owner<C: Attached>(pid_tgid: u64, s: &Sock) -> Owner {
    let mut flags = 0;
    if konst(&FILTER.flags) & filter_flags::CGROUP != 0 {
        // The owner's ancestor at the filter cgroup's level is that cgroup: it is in it or
        // below, including groups created after tracing started.
        // SAFETY: a helper without pointer arguments.
        let at_level = unsafe {
            generated::bpf_get_current_ancestor_cgroup_id(konst(&FILTER.cgroup_level) as i32)
        };
        if at_level == konst(&FILTER.cgroup_id) {
            flags |= owner_flags::IN_CGROUP;
        }
    }
    Owner {
        pid: (pid_tgid >> 32) as u32,
        tid: pid_tgid as u32,
        comm: bytes16(C::comm()),
        // SAFETY: a helper without arguments.
        cgroup_id: unsafe { bpf_get_current_cgroup_id() },
        netns: sock_netns(s),
        flags,
    }
}

/// Whether to wake user space for this submission. It drains on a short timer anyway; a
/// wake-up only matters when a burst fills the buffer faster, so the fill level is checked on
/// every 64th submission of a CPU (a query per event costs as much as a third of the submit).
#[inline(always)]
fn wake_flag(submitted: u64) -> u64 {
    if submitted & 63 == 0
        && EVENTS.query(BPF_RB_AVAIL_DATA as u64) >= konst(&SETTINGS.wakeup_bytes)
    {
        BPF_RB_FORCE_WAKEUP as u64
    } else {
        BPF_RB_NO_WAKEUP as u64
    }
}

/// Writes the event straight into a ring buffer slot: no copy of it on the stack. A transition
/// that needs socket facts gets them in the same slot, an accepted socket's first one its
/// listener's queue reading (one reservation, not two).
#[inline(always)]
fn emit<C: Attached>(
    ctx: &C,
    s: &Sock,
    ts: u64,
    pid_tgid: u64,
    who: &Attribution,
    queue: Option<QueueReading>,
    b: Bank,
) {
    if let Some(q) = queue {
        let Some(mut entry) = EVENTS.reserve::<EventWithQueue>(0) else {
            count(b, counter::RINGBUF_FULL);
            count(b, counter::JOINED_RINGBUF_FULL);
            debug!(ctx, "ring buffer full, event and queue reading lost");
            return;
        };
        let r = entry.as_mut_ptr();
        // SAFETY: a reserved, 8-byte aligned slot of size_of::<EventWithQueue>() bytes; every
        // field is written before it is submitted.
        unsafe {
            Event::write::<C>(core::ptr::addr_of_mut!((*r).event), s, ts, pid_tgid, who);
            write_queue(core::ptr::addr_of_mut!((*r).queue), s, ts, &q);
        }
        count(b, counter::JOINED_SUBMITTED);
        let wake = wake_flag(count(b, counter::SUBMITTED));
        entry.submit(wake);
        return;
    }
    // An event whose owner the kernel does not know goes without the owner's empty fields.
    match (needs_facts(s.oldstate, s.newstate), who.owner.is_some()) {
        (true, true) => emit_with_facts::<C, Event>(ctx, s, ts, pid_tgid, who, b),
        (true, false) => emit_with_facts::<C, OwnerlessEvent>(ctx, s, ts, pid_tgid, who, b),
        (false, true) => emit_event::<C, Event>(ctx, s, ts, pid_tgid, who, b),
        (false, false) => emit_event::<C, OwnerlessEvent>(ctx, s, ts, pid_tgid, who, b),
    }
}

#[inline(always)]
fn emit_event<C: Attached, E: EventSlot>(
    ctx: &C,
    s: &Sock,
    ts: u64,
    pid_tgid: u64,
    who: &Attribution,
    b: Bank,
) {
    let Some(mut entry) = EVENTS.reserve::<E>(0) else {
        count(b, counter::RINGBUF_FULL);
        debug!(ctx, "ring buffer full, event lost");
        return;
    };
    // SAFETY: a reserved, 8-byte aligned slot of size_of::<E>() bytes.
    unsafe { E::write::<C>(entry.as_mut_ptr(), s, ts, pid_tgid, who) };
    let wake = wake_flag(count(b, counter::SUBMITTED));
    entry.submit(wake);
}

#[inline(always)]
fn emit_with_facts<C: Attached, E: EventSlot>(
    ctx: &C,
    s: &Sock,
    ts: u64,
    pid_tgid: u64,
    who: &Attribution,
    b: Bank,
) {
    let Some(mut entry) = EVENTS.reserve::<WithFacts<E>>(0) else {
        count(b, counter::RINGBUF_FULL);
        debug!(ctx, "ring buffer full, event lost");
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: a reserved, 8-byte aligned slot of size_of::<WithFacts<E>>() bytes; every field
    // is written before it is submitted.
    unsafe {
        E::write::<C>(core::ptr::addr_of_mut!((*r).event), s, ts, pid_tgid, who);
        (*r)._pad = 0;
        let raw = core::ptr::addr_of_mut!((*r).raw) as *mut u8;
        (*r).valid_groups = if C::TYPED_SOCK {
            load_facts(raw, s)
        } else {
            copy_facts(raw, s)
        };
    }
    count(b, counter::FACTS_SUBMITTED);
    let wake = wake_flag(count(b, counter::SUBMITTED));
    entry.submit(wake);
}

/// Fills the fields both event records (`Event`, `OwnerlessEvent`) have under the same names:
/// the time, the socket, the context's task, and `owner_source` with its 3 padding bytes and
/// `netns` as one little-endian word (aligned in both, offsets asserted in tcpstate-common): a
/// 3-byte fill would be a memset call. Must be used in an `unsafe` block, `e` a reserved slot.
macro_rules! write_common_fields {
    ($e:expr, $s:expr, $ts:expr, $pid_tgid:expr, $who:expr) => {{
        let (e, s, pid_tgid, who) = ($e, $s, $pid_tgid, $who);
        (*e).ts_ns = $ts;
        (*e).skaddr = s.skaddr;
        (*e).ctx_pid = (pid_tgid >> 32) as u32;
        (*e).ctx_tid = pid_tgid as u32;
        (*e).oldstate = s.oldstate;
        (*e).newstate = s.newstate;
        (*e).family = s.family;
        (*e).flags = 0;
        (*e).sport = s.sport;
        (*e).dport = s.dport;
        (*e).saddr = bytes16(s.saddr);
        (*e).daddr = bytes16(s.daddr);
        core::ptr::write(
            core::ptr::addr_of_mut!((*e).owner_source) as *mut u64,
            u64::from(who.source) | u64::from(who.netns) << 32,
        );
    }};
}

/// A ring buffer record that is an event, with its owner's fields or without them.
trait EventSlot: 'static {
    /// Fills every field.
    ///
    /// # Safety
    /// `e` points to a reserved slot of at least size_of::<Self>() bytes, 8-byte aligned.
    unsafe fn write<C: Attached>(e: *mut Self, s: &Sock, ts: u64, pid_tgid: u64, who: &Attribution);
}

impl EventSlot for OwnerlessEvent {
    #[inline(always)]
    unsafe fn write<C: Attached>(
        e: *mut Self,
        s: &Sock,
        ts: u64,
        pid_tgid: u64,
        who: &Attribution,
    ) {
        write_common_fields!(e, s, ts, pid_tgid, who);
        (core::ptr::addr_of_mut!((*e).ctx_comm) as *mut [u64; 2]).write(C::comm());
    }
}

impl EventSlot for Event {
    #[inline(always)]
    unsafe fn write<C: Attached>(
        e: *mut Self,
        s: &Sock,
        ts: u64,
        pid_tgid: u64,
        who: &Attribution,
    ) {
        write_common_fields!(e, s, ts, pid_tgid, who);
        let ctx_comm = core::ptr::addr_of_mut!((*e).ctx_comm) as *mut [u64; 2];
        match &who.owner {
            Some(owner) => {
                (*e).owner_pid = owner.pid;
                (*e).owner_tid = owner.tid;
                (*e).owner_comm = owner.comm;
                (*e).cgroup_id = owner.cgroup_id;
                if who.ctx_comm_known {
                    (*e).ctx_comm = owner.comm;
                } else {
                    ctx_comm.write(C::comm());
                }
            }
            None => {
                // Volatile: plain zero stores next to each other become a memset call.
                let owner_comm = core::ptr::addr_of_mut!((*e).owner_comm) as *mut u64;
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).owner_pid) as *mut u64, 0);
                core::ptr::write_volatile(owner_comm, 0);
                core::ptr::write_volatile(owner_comm.add(1), 0);
                core::ptr::write_volatile(core::ptr::addr_of_mut!((*e).cgroup_id), 0);
                ctx_comm.write(C::comm());
            }
        }
    }
}

/// The transitions whose socket facts explain the connection: the end of a handshake (an
/// accepted socket's measured SYN-ACK round trip, a client's SYN retransmits) and every close
/// of a connection (a listener closing has no connection facts).
#[inline(always)]
fn needs_facts(old: u8, new: u8) -> bool {
    (new == state::CLOSE && old != state::LISTEN)
        || (new == state::ESTABLISHED && (old == state::SYN_RECV || old == state::SYN_SENT))
}

/// Which form of the tracepoint a program runs on.
trait Attached: EbpfContext {
    /// `Sock::skaddr` is the BTF-typed `tcp_sock` pointer the kernel handed over: its fields
    /// load directly.
    const TYPED_SOCK: bool;

    /// The current task's name as two words.
    fn comm() -> [u64; 2];
}

impl Attached for TracePointContext {
    const TYPED_SOCK: bool = false;

    #[inline(always)]
    fn comm() -> [u64; 2] {
        helper_comm()
    }
}

impl Attached for BtfTracePointContext {
    const TYPED_SOCK: bool = true;

    #[inline(always)]
    fn comm() -> [u64; 2] {
        typed_comm()
    }
}

/// The socket's fact fields into `raw`, each by one typed load at the place its group's copy
/// would put it (`FACT_FIELDS`); returns the groups filled (typed loads do not fail).
///
/// # Safety
/// `raw` points to `FACTS_RAW_LEN` writable bytes of a reserved slot; `s.skaddr` is the BTF
/// tracepoint's `struct tcp_sock *`.
#[inline(always)]
unsafe fn load_facts(raw: *mut u8, s: &Sock) -> u32 {
    let wanted = if s.newstate == state::CLOSE {
        u32::MAX
    } else {
        konst(&FACTS_HANDSHAKE_GROUPS)
    };
    let tp = s.skaddr as *const u8;
    let mut valid = 0u32;
    let mut i = 0;
    while i < MAX_FACT_FIELDS {
        let f = &FACT_FIELDS.fields[i];
        let group = u32::from(konst(&f.group));
        let (src, dst) = (konst(&f.src_off), konst(&f.dst_off) as usize);
        // Each size's bound on its own path, which is what the verifier checks (user space
        // placed every field inside `raw`).
        if wanted & (1 << group) != 0 {
            let filled = match konst(&f.size) {
                1 if dst < FACTS_RAW_LEN => {
                    raw.add(dst).write(sk_field::<u8>(tp, src));
                    true
                }
                2 if dst <= FACTS_RAW_LEN - 2 => {
                    (raw.add(dst) as *mut u16).write_unaligned(sk_field::<u16>(tp, src));
                    true
                }
                4 if dst <= FACTS_RAW_LEN - 4 => {
                    (raw.add(dst) as *mut u32).write_unaligned(sk_field::<u32>(tp, src));
                    true
                }
                8 if dst <= FACTS_RAW_LEN - 8 => {
                    (raw.add(dst) as *mut u64).write_unaligned(sk_field::<u64>(tp, src));
                    true
                }
                _ => false,
            };
            if filled {
                valid |= 1 << group;
            }
        }
        i += 1;
    }
    valid
}

/// Copies the socket's fact groups into `raw` (a slot's `FACTS_RAW_LEN` bytes), one bounded
/// read each; returns the groups copied.
///
/// # Safety
/// `raw` points to `FACTS_RAW_LEN` writable bytes of a reserved slot.
#[inline(always)]
unsafe fn copy_facts(raw: *mut u8, s: &Sock) -> u32 {
    // A handshake needs only its RTT and retransmit count: fewer copies there.
    let wanted = if s.newstate == state::CLOSE {
        u32::MAX
    } else {
        konst(&FACTS_HANDSHAKE_GROUPS)
    };
    let mut valid = 0u32;
    let mut i = 0;
    while i < MAX_FACT_GROUPS {
        let g = &FACT_GROUPS.groups[i];
        let len = konst(&g.len) as u32;
        let dst = konst(&g.dst_off) as usize;
        // One of the FACT_GROUP_TIERS bounds holds for len and dst, so the copy ends at most
        // at FACTS_RAW_LEN (fact_group_fits); the source is read with the fault-safe helper.
        if wanted & (1 << i) != 0 && len != 0 && fact_group_fits(len, dst) {
            let src = s.skaddr.wrapping_add(u64::from(konst(&g.src_off)));
            let rc = generated::bpf_probe_read_kernel(
                raw.add(dst) as *mut core::ffi::c_void,
                len,
                src as *const core::ffi::c_void,
            );
            if rc == 0 {
                valid |= 1 << i;
            }
        }
        i += 1;
    }
    valid
}

/// Whether a copy of `len` bytes at `dst` provably stays in `FactsRecord::raw`: each case
/// bounds both on its own path, which is what the verifier checks.
#[inline(always)]
fn fact_group_fits(len: u32, dst: usize) -> bool {
    const T: [usize; 4] = FACT_GROUP_TIERS;
    (len <= T[0] as u32 && dst <= FACTS_RAW_LEN - T[0])
        || (len <= T[1] as u32 && dst <= FACTS_RAW_LEN - T[1])
        || (len <= T[2] as u32 && dst <= FACTS_RAW_LEN - T[2])
        || (len <= T[3] as u32 && dst <= FACTS_RAW_LEN - T[3])
}

/// Keeps a connect() event whose local port is not chosen yet (port filters only).
#[inline(always)]
fn hold(s: &Sock, ts: u64, pid_tgid: u64, owner: &Owner, b: Bank) {
    let ev = Event {
        ts_ns: ts,
        skaddr: s.skaddr,
        ctx_pid: (pid_tgid >> 32) as u32,
        ctx_tid: pid_tgid as u32,
        owner_pid: owner.pid,
        owner_tid: owner.tid,
        oldstate: s.oldstate,
        newstate: s.newstate,
        family: s.family,
        flags: event_flags::DEFERRED,
        sport: s.sport,
        dport: s.dport,
        saddr: bytes16(s.saddr),
        daddr: bytes16(s.daddr),
        // connect() is the owner's own system call: the current task is the owner.
        ctx_comm: owner.comm,
        owner_comm: owner.comm,
        owner_source: owner_source::SYSCALL,
        _pad: [0; 3],
        netns: owner.netns,
        cgroup_id: owner.cgroup_id,
    };
    // NOEXIST: an entry still there for this address would be replaced without a trace; it
    // cannot be (each leaves at the socket's exit from SYN_SENT), and if it were, this event
    // is counted lost rather than the other one silently.
    if PENDING.insert(&s.skaddr, &ev, BPF_NOEXIST as u64).is_ok() {
        count(b, counter::DEFERRED);
    } else {
        count(b, counter::HOLD_FAILED);
    }
}

/// Delivers the socket's held connect() event, now that the socket passed the filters.
#[inline(always)]
fn release_held<C: EbpfContext>(ctx: &C, s: &Sock, b: Bank) {
    let skaddr = s.skaddr;
    // SAFETY: the value is copied into the ring buffer before the entry is removed.
    let Some(held) = (unsafe { PENDING.get(&skaddr) }) else {
        return;
    };
    // Counted in SUBMITTED or RINGBUF_FULL below as well; its SEEN was counted when held.
    count(b, counter::RELEASED);
    if held.owner_pid != 0 {
        let owner = Owner {
            pid: held.owner_pid,
            tid: held.owner_tid,
            comm: held.owner_comm,
            cgroup_id: held.cgroup_id,
            netns: held.netns,
            // A connect() is held only after its owner passed the owner filters (`handle`), so
            // with a cgroup filter its owner is in the cgroup.
            flags: owner_flags::IN_CGROUP,
        };
        remember_owner(s, &owner, b);
    }
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            // Word by word: a struct copy becomes a byte-by-byte memmove subprogram call.
            let (src, dst) = (
                held as *const Event as *const u64,
                entry.as_mut_ptr() as *mut u64,
            );
            let mut i = 0;
            while i < EVENT_SIZE / 8 {
                // SAFETY: both are an 8-byte aligned Event of EVENT_SIZE bytes (a map value,
                // a reserved slot), plain data.
                unsafe { dst.add(i).write(src.add(i).read()) };
                i += 1;
            }
            let wake = wake_flag(count(b, counter::SUBMITTED));
            entry.submit(wake);
        }
        None => {
            count(b, counter::RINGBUF_FULL);
            debug!(ctx, "ring buffer full, held event lost");
        }
    }
    let _ = PENDING.remove(&skaddr);
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
fn listen_key(s: &Sock) -> ListenKey {
    ListenKey {
        family: s.family as u16,
        port: s.sport,
        addr: bytes16(s.saddr),
    }
}

/// The listener a child socket was born from, looked up once for its owner and its queue.
#[derive(Clone, Copy)]
struct Listener {
    /// Its socket; 0 for one known only from the start-up scan.
    skaddr: u64,
    /// It listens on the wildcard address (the child's local address is not its key).
    wildcard: bool,
}

/// The listener table's entry for a child socket (exact address, then wildcard), and its
/// owner: None when unknown or ambiguous (pid 0: SO_REUSEPORT listeners of several
/// processes).
#[inline(always)]
fn find_listener(s: &Sock) -> Option<(Listener, Option<Owner>)> {
    let mut key = listen_key(s);
    let mut wildcard = false;
    // SAFETY: the value is copied out at once.
    let mut found = unsafe { LISTENERS.get(&key) };
    if found.is_none() {
        let addr = core::ptr::addr_of_mut!(key.addr) as *mut u16;
        let mut i = 0;
        while i < 8 {
            // SAFETY: 8 halves of the 16-byte address (ListenKey is 2-byte aligned). Volatile:
            // plain zero stores become a memset call.
            unsafe { core::ptr::write_volatile(addr.add(i), 0) };
            i += 1;
        }
        wildcard = true;
        // SAFETY: as above.
        found = unsafe { LISTENERS.get(&key) };
    }
    let l = found?;
    let owner = copy_owner(&l.owner);
    Some((
        Listener {
            skaddr: l.skaddr,
            wildcard,
        },
        (owner.pid != 0).then_some(owner),
    ))
}

/// The socket's owner, and the owner tables kept up to date. With the table in user space
/// (`Settings::user_attribution`) only what the event itself tells: the owner's own system
/// call, or a child born from a known listener; everything else is left `DEFERRED` to user
/// space, which sees every event of a socket in the order the socket changed state (each
/// change reserves its ring buffer slot under the socket's lock). The listener table is kept
/// either way: queue readings need the listener's socket.
#[inline(always)]
fn attribute<C: Attached>(ctx: &C, s: &Sock, pid_tgid: u64, b: Bank) -> Attribution {
    let table = konst(&SETTINGS.user_attribution) == 0;
    let (old, new) = (s.oldstate, s.newstate);
    let who = if is_owner_syscall(old, new) {
        let owner = current_owner::<C>(pid_tgid, s);
        if table {
            remember_owner(s, &owner, b);
        }
        if new == state::LISTEN {
            note_listener(s, &owner);
        } else if old == state::LISTEN {
            forget_listener(s, owner.pid);
        }
        // The event is the owner's own system call: its name is the context's too.
        Attribution {
            ctx_comm_known: true,
            ..Attribution::known(owner, owner_source::SYSCALL)
        }
    } else if old == state::LISTEN && new == state::SYN_RECV {
        // A child socket born from a listener in softirq: its owner is the listener's.
        let found = find_listener(s);
        let mut who = match found.and_then(|(_, owner)| owner) {
            Some(mut owner) => {
                // The child's own namespace: listeners of one port in two namespaces share a
                // LISTENERS key.
                owner.netns = sock_netns(s);
                if table {
                    remember_owner(s, &owner, b);
                }
                Attribution::known(owner, owner_source::LISTENER)
            }
            None => {
                // A new socket at this address: whatever an earlier one left there is not its
                // owner.
                if table {
                    let _ = OWNERS.remove(&s.skaddr);
                }
                Attribution::unknown(s, owner_source::UNKNOWN)
            }
        };
        who.listener = found.map(|(l, _)| l);
        who
    } else if !table {
        Attribution::unknown(s, owner_source::DEFERRED)
    } else if let Some(owner) = unsafe { OWNERS.get(&s.skaddr) } {
        Attribution::known(copy_owner(owner), owner_source::REMEMBERED)
    } else {
        let key = TupleKey {
            family: s.family as u16,
            sport: s.sport,
            dport: s.dport,
            _pad: 0,
            saddr: bytes16(s.saddr),
            daddr: bytes16(s.daddr),
        };
        match unsafe { PREEXISTING.get(&key) } {
            Some(owner) => {
                let mut owner = copy_owner(owner);
                // Once per socket older than tracing: its entry in OWNERS then carries it.
                owner.netns = sock_netns(s);
                remember_owner(s, &owner, b);
                Attribution::known(owner, owner_source::PROC_SCAN)
            }
            // Nobody to carry the namespace: it is read for each such event (sockets older
            // than tracing that the scan missed, and full owner tables).
            None => Attribution::unknown(s, owner_source::UNKNOWN),
        }
    };
    if table && new == state::CLOSE {
        // The socket's life is over; its address may be reused by an unrelated socket.
        let _ = OWNERS.remove(&s.skaddr);
    }
    if who.owner.is_none() && who.source != owner_source::DEFERRED {
        debug!(ctx, "owner unknown for {:x}", s.skaddr);
    }
    who
}

#[inline(always)]
fn remember_owner(s: &Sock, owner: &Owner, b: Bank) {
    if s.newstate == state::CLOSE {
        return;
    }
    // Overwrite a known socket's entry in place rather than through a map update.
    if let Some(slot) = OWNERS.get_ptr_mut(&s.skaddr) {
        // SAFETY: a live value of this map; a socket's state changes under its lock, so one
        // socket's entry has one writer at a time.
        unsafe { *slot = *owner };
    } else if OWNERS.insert(&s.skaddr, owner, BPF_ANY as u64).is_err() {
        count(b, counter::OWNER_UPDATE_FAILED);
    }
}

#[inline(always)]
fn note_listener(s: &Sock, owner: &Owner) {
    let key = listen_key(s);
    let mut value = ListenOwner {
        skaddr: s.skaddr,
        owner: *owner,
    };
    // SAFETY: the value is read at once.
    if let Some(prev) = unsafe { LISTENERS.get(&key) } {
        if prev.skaddr != s.skaddr && prev.owner.pid != owner.pid {
            // Two processes share this port (SO_REUSEPORT): which one accepts is unknowable here.
            value.owner.pid = 0;
            value.owner.tid = 0;
        }
    }
    let _ = LISTENERS.insert(&key, &value, BPF_ANY as u64);
}

#[inline(always)]
fn forget_listener(s: &Sock, closer_pid: u32) {
    let key = listen_key(s);
    // A listener found by the start-up scan has no known address; its owner closing it is enough.
    // SAFETY: the value is read at once.
    let mine = unsafe { LISTENERS.get(&key) }
        .is_some_and(|l| l.skaddr == s.skaddr || (l.skaddr == 0 && l.owner.pid == closer_pid));
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
    let (slot, shift) = port_slot(port);
    PORTS
        .get(slot)
        .is_some_and(|v| (*v >> shift) & u32::from(bit) != 0)
}

#[inline(always)]
fn owner_passes(owner: &Owner, flags: u32) -> bool {
    if flags & filter_flags::PID != 0 {
        let known = owner.pid != 0
            && (unsafe { PIDS.get(&owner.pid) }.is_some()
                || unsafe { PIDS.get(&owner.tid) }.is_some());
        if !known {
            return false;
        }
    }
    if flags & filter_flags::CGROUP != 0 && owner.flags & owner_flags::IN_CGROUP == 0 {
        return false;
    }
    if flags & filter_flags::NETNS != 0 && owner.netns != konst(&FILTER.netns) {
        return false;
    }
    !(flags & filter_flags::COMM != 0 && owner.comm != konst(&FILTER.comm))
}

/// The low half of an IPv4-mapped address's second word (`::ffff:a.b.c.d`: bytes 8..12 are
/// 00 00 ff ff) as it sits in memory: 0xffff0000 on this little-endian target.
const V4_MAPPED_WORD1_LOW: u32 = u32::from_ne_bytes([0, 0, 0xff, 0xff]);

/// Which families a socket's traffic is, for `-4` / `-6`.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Carries {
    V4,
    V6,
    /// A dual-stack listener (`::`, no remote): it accepts either.
    Both,
}

/// An AF_INET6 socket carries IPv4 when its remote address is v4-mapped (an IPv4 client
/// accepted by a dual-stack listener, or a connect() to `::ffff:a.b.c.d`). A socket without a
/// remote address (a listener) is judged by its local one: bound to `::` it may accept both
/// families (whether IPV6_V6ONLY is set is not in the record), so `-4` and `-6` both keep it.
/// Word-wise compares on the two address words only: no byte loops for the verifier.
#[inline(always)]
fn carries(s: &Sock) -> Carries {
    if s.family != AF_INET6 {
        // AF_INET, the only other family of a TCP socket.
        return Carries::V4;
    }
    let unspecified = |a: &[u64; 2]| a[0] == 0 && a[1] == 0;
    let a = if unspecified(&s.daddr) {
        &s.saddr
    } else {
        &s.daddr
    };
    if a[0] == 0 && a[1] as u32 == V4_MAPPED_WORD1_LOW {
        Carries::V4
    } else if unspecified(a) {
        Carries::Both
    } else {
        Carries::V6
    }
}

#[inline(always)]
fn filter_socket(s: &Sock, flags: u32) -> Verdict {
    if flags & (filter_flags::IPV4_ONLY | filter_flags::IPV6_ONLY) != 0 {
        let wanted = if flags & filter_flags::IPV4_ONLY != 0 {
            Carries::V4
        } else {
            Carries::V6
        };
        let c = carries(s);
        if c != wanted && c != Carries::Both {
            return Verdict::Reject;
        }
    }
    if flags & filter_flags::ADDR != 0 {
        // An AF_INET6 socket's v4-mapped address is already in the trie's form, so an IPv4
        // block matches it too.
        let mut data = bytes16(s.daddr);
        if s.family == AF_INET {
            // The trie holds IPv4 as IPv4-mapped IPv6 (::ffff:a.b.c.d).
            let v4 = [data[0], data[1], data[2], data[3]];
            data = [0; 16];
            data[10] = 0xff;
            data[11] = 0xff;
            data[12..16].copy_from_slice(&v4);
        }
        if ADDRS.get(Key::new(128, data)).is_none() {
            return Verdict::Reject;
        }
    }
    if flags & filter_flags::RPORT != 0 && !port_has(s.dport, port_bits::REMOTE) {
        return Verdict::Reject;
    }
    // A connect() changes state before it picks its local port: that first event has port 0.
    let port_unknown = s.sport == 0 && s.oldstate == state::CLOSE && s.newstate == state::SYN_SENT;
    if flags & filter_flags::PORT != 0
        && !port_has(s.dport, port_bits::EITHER)
        && !port_has(s.sport, port_bits::EITHER)
    {
        return if port_unknown {
            Verdict::Defer
        } else {
            Verdict::Reject
        };
    }
    if flags & filter_flags::LPORT != 0 && !port_has(s.sport, port_bits::LOCAL) {
        return if port_unknown {
            Verdict::Defer
        } else {
            Verdict::Reject
        };
    }
    Verdict::Pass
}

// ---- Joined tracepoints: retransmits and resets, joined to connections in user space ----

#[tracepoint]
pub fn retransmit_skb(ctx: TracePointContext) -> u32 {
    handle_retransmit(&ctx, &RETRANSMIT_SKB_LAYOUT, retransmit_kind::SKB);
    0
}

#[tracepoint]
pub fn retransmit_synack(ctx: TracePointContext) -> u32 {
    handle_retransmit(&ctx, &RETRANSMIT_SYNACK_LAYOUT, retransmit_kind::SYNACK);
    0
}

#[tracepoint]
pub fn send_reset(ctx: TracePointContext) -> u32 {
    handle_reset(&ctx, &SEND_RESET_LAYOUT, reset_direction::SENT);
    0
}

#[tracepoint]
pub fn receive_reset(ctx: TracePointContext) -> u32 {
    handle_reset(&ctx, &RECEIVE_RESET_LAYOUT, reset_direction::RECEIVED);
    0
}

/// What a joined tracepoint's record says, in the filters' terms.
struct Joined {
    sock: Sock,
    skbaddr: u64,
    /// The record carries the socket's addresses (a socket-less reset on some kernels does not).
    has_addrs: bool,
    err: i32,
    reason: u32,
}

/// One copy of the record, then the fields at the offsets of its format file.
#[inline(always)]
fn read_joined(ctx: &TracePointContext, l: &'static JoinLayout) -> Option<Joined> {
    let mut rec = Record {
        buf: [0; MAX_RECORD_LEN],
    };
    let len = konst(&l.record_len) as usize;
    let dst = rec.buf.get_mut(..len)?;
    // SAFETY: the record is readable kernel memory of at least `record_len` bytes (user space
    // checked it against the format file).
    unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, dst) }.ok()?;
    let opt_u64 = |off: u16| if off == 0 { 0 } else { rec.u64_at(off) };
    let st = konst(&l.state);
    let tcp_state = if st == 0 { 0 } else { rec.u8_at(st) };
    let (family, sport, dport, saddr, daddr);
    if konst(&l.sockaddr) == 1 {
        // sockaddr_in / sockaddr_in6: family, port (network order), then the address (at 4
        // for IPv4, after the flow label at 8 for IPv6).
        let (so, d) = (konst(&l.saddr), konst(&l.daddr));
        family = rec.u16_at(so) as u8;
        sport = u16::from_be(rec.u16_at(so + 2));
        dport = u16::from_be(rec.u16_at(d + 2));
        if family == AF_INET {
            saddr = [u64::from(rec.u32_at(so + 4)), 0];
            daddr = [u64::from(rec.u32_at(d + 4)), 0];
        } else {
            saddr = [rec.u64_at(so + 8), rec.u64_at(so + 16)];
            daddr = [rec.u64_at(d + 8), rec.u64_at(d + 16)];
        }
    } else {
        family = rec.u16_at(konst(&l.family)) as u8;
        sport = rec.u16_at(konst(&l.sport));
        dport = rec.u16_at(konst(&l.dport));
        if family == AF_INET {
            saddr = [u64::from(rec.u32_at(konst(&l.saddr))), 0];
            daddr = [u64::from(rec.u32_at(konst(&l.daddr))), 0];
        } else {
            let (so, d) = (konst(&l.saddr_v6), konst(&l.daddr_v6));
            saddr = [rec.u64_at(so), rec.u64_at(so + 8)];
            daddr = [rec.u64_at(d), rec.u64_at(d + 8)];
        }
    }
    let err_off = konst(&l.err);
    let reason_off = konst(&l.reason);
    Some(Joined {
        sock: Sock {
            skaddr: opt_u64(konst(&l.skaddr)),
            oldstate: tcp_state,
            newstate: tcp_state,
            family,
            sport,
            dport,
            saddr,
            daddr,
            netns: None,
        },
        skbaddr: opt_u64(konst(&l.skbaddr)),
        has_addrs: family == AF_INET || family == AF_INET6,
        err: if err_off == 0 {
            0
        } else {
            rec.u32_at(err_off) as i32
        },
        reason: if reason_off == 0 {
            u32::MAX
        } else {
            rec.u32_at(reason_off)
        },
    })
}

/// The same filters as for state changes: the socket's own first, then its owner (by socket
/// address; an event without a socket has no owner, so an owner filter drops it). A reset
/// sent by a socket already in CLOSE (close() with SO_LINGER 0 or unread data, which set the
/// state before they send) finds no owner entry any more (-> CLOSE removed it): it is sent
/// from the owner's own system call, so the current task is its owner.
#[inline(always)]
fn joined_passes(j: &Joined, sent_reset: bool) -> bool {
    let flags = konst(&FILTER.flags);
    if flags & SOCKET_FILTERS != 0 {
        if !j.has_addrs {
            return false;
        }
        // State equals both old and new here, so this is never a deferred connect().
        if !matches!(filter_socket(&j.sock, flags), Verdict::Pass) {
            return false;
        }
    }
    if flags & OWNER_FILTERS != 0 {
        if j.sock.skaddr == 0 {
            return false;
        }
        // SAFETY: the value is copied out at once.
        let owner = match unsafe { OWNERS.get(&j.sock.skaddr) } {
            Some(o) => copy_owner(o),
            None if sent_reset && j.sock.newstate == state::CLOSE => {
                current_owner::<TracePointContext>(bpf_get_current_pid_tgid(), &j.sock)
            }
            None => return false,
        };
        if !owner_passes(&owner, flags) {
            return false;
        }
    }
    true
}

/// Reads a value of kernel memory at `base + off`; None when it faults.
#[inline(always)]
fn kread<T: Copy>(base: u64, off: u16) -> Option<T> {
    // SAFETY: the fault-safe helper.
    unsafe { bpf_probe_read_kernel(base.wrapping_add(u64::from(off)) as *const T) }.ok()
}

#[inline(always)]
fn handle_retransmit(ctx: &TracePointContext, l: &'static JoinLayout, kind: u8) {
    let Some(j) = read_joined(ctx, l) else {
        return;
    };
    count(JOINED, counter::JOINED_SEEN);
    if !joined_passes(&j, false) {
        count(JOINED, counter::JOINED_FILTERED);
        return;
    }
    let mut known = 0u8;
    let mut tcp_flags = 0u8;
    let mut segs = 0u16;
    if kind == retransmit_kind::SKB && j.skbaddr != 0 {
        if konst(&SKB_OFFSETS.tcp_flags_ok) == 1 {
            if let Some(f) = kread::<u8>(j.skbaddr, konst(&SKB_OFFSETS.cb_tcp_flags)) {
                tcp_flags = f;
                known |= retransmit_known::TCP_FLAGS;
            }
        }
        if konst(&SKB_OFFSETS.gso_segs_ok) == 1 {
            if let Some(n) = kread::<u16>(j.skbaddr, konst(&SKB_OFFSETS.cb_gso_segs)) {
                segs = n;
                known |= retransmit_known::SEGS;
            }
        }
    }
    if konst(&l.err) != 0 {
        known |= retransmit_known::ERR;
    }
    let Some(mut entry) = EVENTS.reserve::<RetransmitRecord>(0) else {
        count(JOINED, counter::JOINED_RINGBUF_FULL);
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: a reserved slot of size_of::<RetransmitRecord>(); every field is written.
    unsafe {
        (*r).ts_ns = bpf_ktime_get_ns();
        (*r).skaddr = j.sock.skaddr;
        (*r).kind = kind;
        (*r).state = j.sock.newstate;
        (*r).tcp_flags = tcp_flags;
        (*r).known = known;
        (*r).segs = segs;
        (*r).family = u16::from(j.sock.family);
        (*r).sport = j.sock.sport;
        (*r).dport = j.sock.dport;
        (*r).err = j.err;
        (*r).saddr = bytes16(j.sock.saddr);
        (*r).daddr = bytes16(j.sock.daddr);
    }
    let wake = wake_flag(count(JOINED, counter::JOINED_SUBMITTED));
    entry.submit(wake);
}

/// The TCP flags of the segment a reset answers: its header is at `head + transport_header`.
#[inline(always)]
fn segment_flags(skbaddr: u64) -> Option<u8> {
    if skbaddr == 0 || konst(&SKB_OFFSETS.seg_flags_ok) != 1 {
        return None;
    }
    let head = kread::<u64>(skbaddr, konst(&SKB_OFFSETS.head))?;
    let th = kread::<u16>(skbaddr, konst(&SKB_OFFSETS.transport_header))?;
    // `~0` marks a transport header that was never set.
    if head == 0 || th == u16::MAX {
        return None;
    }
    // The 14th byte of the TCP header holds the flags.
    kread::<u8>(head.wrapping_add(u64::from(th)), 13)
}

#[inline(always)]
fn handle_reset(ctx: &TracePointContext, l: &'static JoinLayout, direction: u8) {
    let Some(j) = read_joined(ctx, l) else {
        return;
    };
    count(JOINED, counter::JOINED_SEEN);
    if !joined_passes(&j, direction == reset_direction::SENT) {
        count(JOINED, counter::JOINED_FILTERED);
        return;
    }
    let seg = if direction == reset_direction::SENT {
        segment_flags(j.skbaddr)
    } else {
        None
    };
    let Some(mut entry) = EVENTS.reserve::<ResetRecord>(0) else {
        count(JOINED, counter::JOINED_RINGBUF_FULL);
        return;
    };
    let r = entry.as_mut_ptr();
    let pid_tgid = bpf_get_current_pid_tgid();
    // SAFETY: a reserved slot of size_of::<ResetRecord>(); every field is written.
    unsafe {
        (*r).ts_ns = bpf_ktime_get_ns();
        (*r).skaddr = j.sock.skaddr;
        (*r).direction = direction;
        (*r).state = j.sock.newstate;
        (*r).seg_flags = seg.unwrap_or(0);
        (*r).seg_flags_known = u8::from(seg.is_some());
        (*r).reason = j.reason;
        (*r).family = if j.has_addrs {
            u16::from(j.sock.family)
        } else {
            0
        };
        (*r).sport = j.sock.sport;
        (*r).dport = j.sock.dport;
        (*r)._pad = 0;
        (*r).ctx_pid = (pid_tgid >> 32) as u32;
        (*r)._pad2 = 0;
        (*r).saddr = bytes16(j.sock.saddr);
        (*r).daddr = bytes16(j.sock.daddr);
    }
    let wake = wake_flag(count(JOINED, counter::JOINED_SUBMITTED));
    entry.submit(wake);
}

// ---- Listener health: accept queue at each child, drops for traced listeners ----

/// At a listener's own transitions, keeps the set of traced listeners up to date; at a child's
/// birth (LISTEN -> SYN_RECV), reads its listener's accept queue. Runs only for events that
/// passed the filters, after they were emitted, and stays out of the attribution code.
#[inline(always)]
fn listener_health(s: &Sock) {
    if s.newstate == state::LISTEN {
        let _ = LISTEN_SOCKS.insert(&s.skaddr, &listen_key(s), BPF_ANY as u64);
    } else if s.oldstate == state::LISTEN && s.newstate == state::CLOSE {
        let _ = LISTEN_SOCKS.remove(&s.skaddr);
    }
}

/// An accept-queue reading of a child socket's listener, sent with the child's first event.
#[derive(Clone, Copy)]
struct QueueReading {
    listener: Listener,
    depth: Option<u32>,
    limit: Option<u32>,
}

/// The queue of the listener an accepted socket was born from (LISTEN -> SYN_RECV): two
/// bounded reads of its socket. None for other events, and for a listener found only by the
/// start-up scan (no known address).
#[inline(always)]
fn read_queue(s: &Sock, listener: Option<Listener>, b: Bank) -> Option<QueueReading> {
    if s.oldstate != state::LISTEN || s.newstate != state::SYN_RECV {
        return None;
    }
    let l = listener?;
    if konst(&LISTEN_OFFSETS.ok) != 1 || l.skaddr == 0 {
        return None;
    }
    count(b, counter::JOINED_SEEN);
    Some(QueueReading {
        listener: l,
        depth: kread::<u32>(l.skaddr, konst(&LISTEN_OFFSETS.ack_backlog)),
        limit: kread::<u32>(l.skaddr, konst(&LISTEN_OFFSETS.max_ack_backlog)),
    })
}

/// Fills every field of a queue reading's record.
///
/// # Safety
/// `r` points to a reserved slot's `ListenerRecord`, 8-byte aligned.
#[inline(always)]
unsafe fn write_queue(r: *mut ListenerRecord, s: &Sock, ts: u64, q: &QueueReading) {
    (*r).ts_ns = ts;
    (*r).skaddr = q.listener.skaddr;
    (*r).kind = listener_kind::QUEUE;
    (*r).known = if q.depth.is_some() && q.limit.is_some() {
        listener_known::QUEUE
    } else {
        0
    };
    (*r).family = s.family as u16;
    (*r).port = s.sport;
    (*r)._pad = 0;
    (*r).depth = q.depth.unwrap_or(0);
    (*r).limit = q.limit.unwrap_or(0);
    (*r).reason = 0;
    (*r)._pad2 = 0;
    // The listener's key: its own address, or the wildcard's zeros.
    (*r).addr = bytes16(if q.listener.wildcard { [0, 0] } else { s.saddr });
}

#[tracepoint]
pub fn kfree_skb(ctx: TracePointContext) -> u32 {
    handle_drop(&ctx);
    0
}

/// A freed packet: kept only when its receiving socket is a traced listener. The common case
/// (no socket, or another one) costs two loads from the record and at most one lookup.
#[inline(always)]
fn handle_drop(ctx: &TracePointContext) {
    // `direct_read` off (tests of the generic path) forces the copy here too.
    let modern = konst(&SETTINGS.direct_read) == 1
        && konst(&DROP_LAYOUT.rx_sk) == MODERN_DROP_LAYOUT.rx_sk
        && konst(&DROP_LAYOUT.reason) == MODERN_DROP_LAYOUT.reason
        && konst(&DROP_LAYOUT.protocol) == MODERN_DROP_LAYOUT.protocol;
    let (sk, proto, reason) = if modern {
        const M: DropLayout = MODERN_DROP_LAYOUT;
        (
            ctx_field::<u64>(ctx, M.rx_sk),
            ctx_field::<u16>(ctx, M.protocol),
            ctx_field::<u32>(ctx, M.reason),
        )
    } else {
        let mut rec = Record {
            buf: [0; MAX_RECORD_LEN],
        };
        let len = konst(&DROP_LAYOUT.record_len) as usize;
        let Some(dst) = rec.buf.get_mut(..len) else {
            return;
        };
        // SAFETY: the record is readable kernel memory of at least `record_len` bytes (user
        // space checked it against the format file).
        if unsafe { bpf_probe_read_kernel_buf(ctx.as_ptr() as *const u8, dst) }.is_err() {
            return;
        }
        let p = konst(&DROP_LAYOUT.protocol);
        (
            rec.u64_at(konst(&DROP_LAYOUT.rx_sk)),
            if p == 0 { 0 } else { rec.u16_at(p) },
            rec.u32_at(konst(&DROP_LAYOUT.reason)),
        )
    };
    if sk == 0 {
        return;
    }
    // ETH_P_IP / ETH_P_IPV6 in the `protocol` field (host order; 0 when the event lacks it):
    // packets of other protocols (ARP, ...) never have a TCP listener as their socket.
    if proto != 0 && proto != 0x0800 && proto != 0x86dd {
        return;
    }
    // SAFETY: the value is copied out at once.
    let Some(key) = (unsafe { LISTEN_SOCKS.get(&sk) }).copied() else {
        return;
    };
    count(JOINED, counter::JOINED_SEEN);
    let Some(mut entry) = EVENTS.reserve::<ListenerRecord>(0) else {
        count(JOINED, counter::JOINED_RINGBUF_FULL);
        return;
    };
    let r = entry.as_mut_ptr();
    // SAFETY: a reserved slot of size_of::<ListenerRecord>(); every field is written.
    unsafe {
        (*r).ts_ns = bpf_ktime_get_ns();
        (*r).skaddr = sk;
        (*r).kind = listener_kind::DROP;
        (*r).known = 0;
        (*r).family = key.family;
        (*r).port = key.port;
        (*r)._pad = 0;
        (*r).depth = 0;
        (*r).limit = 0;
        (*r).reason = reason;
        (*r)._pad2 = 0;
        (*r).addr = key.addr;
    }
    let wake = wake_flag(count(JOINED, counter::JOINED_SUBMITTED));
    entry.submit(wake);
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
