//! Types shared by tcpstate's kernel program and its user-space side.
//!
//! Everything here is `#[repr(C)]` and plain data: the kernel writes these bytes into maps and the
//! ring buffer, user space reads them back. A layout change here is a change of the ABI between
//! the two halves, and of the record file format (see `docs/record-format.md`), so the sizes are
//! pinned by compile-time assertions below.
#![no_std]

/// Length of a task's `comm`, including the terminating NUL.
pub const TASK_COMM_LEN: usize = 16;

/// TCP socket states as the kernel numbers them (`include/net/tcp_states.h`).
pub mod state {
    pub const ESTABLISHED: u8 = 1;
    pub const SYN_SENT: u8 = 2;
    pub const SYN_RECV: u8 = 3;
    pub const FIN_WAIT1: u8 = 4;
    pub const FIN_WAIT2: u8 = 5;
    pub const TIME_WAIT: u8 = 6;
    pub const CLOSE: u8 = 7;
    pub const CLOSE_WAIT: u8 = 8;
    pub const LAST_ACK: u8 = 9;
    pub const LISTEN: u8 = 10;
    pub const CLOSING: u8 = 11;
    pub const NEW_SYN_RECV: u8 = 12;
}

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u16 = 6;

/// How the owner recorded in an [`Event`] was learnt.
pub mod owner_source {
    /// Nobody known: the socket was not seen doing anything only its owner can do.
    pub const UNKNOWN: u8 = 0;
    /// This event itself is a system call of the owner (connect, listen, close, shutdown).
    pub const SYSCALL: u8 = 1;
    /// Remembered from an earlier system call on this socket.
    pub const REMEMBERED: u8 = 2;
    /// An accepted socket, attributed to the process that owns its listener.
    pub const LISTENER: u8 = 3;
    /// A socket that existed before tracing started, attributed from /proc at start-up.
    pub const PROC_SCAN: u8 = 4;
    /// Not attributed in the kernel: user space looks the owner up (`Settings::user_attribution`)
    /// and replaces this with one of the values above before anything else sees the event.
    pub const DEFERRED: u8 = 5;
}

/// `Event::flags` bits.
pub mod event_flags {
    /// The event was held back in the kernel until the socket's local port was known (a port
    /// filter and a `connect()` whose port is chosen after the state change), then delivered.
    pub const DEFERRED: u8 = 1;
}

/// One state change of one TCP socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// `bpf_ktime_get_ns()`: CLOCK_MONOTONIC in nanoseconds.
    pub ts_ns: u64,
    /// Kernel address of the socket: the identity of one socket, reused after it is freed.
    pub skaddr: u64,
    /// The task that was running when the state changed (often not the socket's owner).
    pub ctx_pid: u32,
    pub ctx_tid: u32,
    /// The process that owns the socket, 0 when unknown.
    pub owner_pid: u32,
    pub owner_tid: u32,
    pub oldstate: u8,
    pub newstate: u8,
    /// `AF_INET` or `AF_INET6`.
    pub family: u8,
    /// `event_flags` bits.
    pub flags: u8,
    /// Local and remote port, host byte order.
    pub sport: u16,
    pub dport: u16,
    /// Local and remote address in network byte order; IPv4 uses the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub ctx_comm: [u8; TASK_COMM_LEN],
    pub owner_comm: [u8; TASK_COMM_LEN],
    /// `owner_source` value.
    pub owner_source: u8,
    pub _pad: [u8; 3],
    /// Inode of the socket's own network namespace (`skc_net->ns.inum`), 0 when unknown.
    pub netns: u32,
    /// The owner's cgroup v2 id (`bpf_get_current_cgroup_id()` at its system call, or the
    /// inode of its cgroup directory from the /proc scan), 0 when unknown.
    pub cgroup_id: u64,
}

pub const EVENT_SIZE: usize = 120;
/// The event of recording format 1 (no `netns`, no `cgroup_id`).
pub const EVENT_V1_SIZE: usize = 112;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);
const _: () = assert!(core::mem::size_of::<Owner>() == 40);
const _: () = assert!(core::mem::size_of::<ListenOwner>() == 48);

impl Event {
    pub const fn zeroed() -> Self {
        Event {
            ts_ns: 0,
            skaddr: 0,
            ctx_pid: 0,
            ctx_tid: 0,
            owner_pid: 0,
            owner_tid: 0,
            oldstate: 0,
            newstate: 0,
            family: 0,
            flags: 0,
            sport: 0,
            dport: 0,
            saddr: [0; 16],
            daddr: [0; 16],
            ctx_comm: [0; TASK_COMM_LEN],
            owner_comm: [0; TASK_COMM_LEN],
            owner_source: 0,
            _pad: [0; 3],
            netns: 0,
            cgroup_id: 0,
        }
    }
}

/// An [`Event`] whose owner the kernel does not know (left to user space, or unknown): the same
/// fields without the owner's (`owner_pid`, `owner_tid`, `owner_comm`, `cgroup_id`, all 0 in
/// the event it stands for). Most state changes are these: 88 bytes in the ring buffer instead
/// of 120. User space turns it back into the [`Event`] before anything else sees it.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct OwnerlessEvent {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub ctx_pid: u32,
    pub ctx_tid: u32,
    pub oldstate: u8,
    pub newstate: u8,
    pub family: u8,
    pub flags: u8,
    pub sport: u16,
    pub dport: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
    pub ctx_comm: [u8; TASK_COMM_LEN],
    pub owner_source: u8,
    pub _pad: [u8; 3],
    pub netns: u32,
}

pub const OWNERLESS_EVENT_SIZE: usize = 88;
const _: () = assert!(core::mem::size_of::<OwnerlessEvent>() == OWNERLESS_EVENT_SIZE);
// The word-wise writes of the kernel program: owner_source with its padding and netns as one
// aligned word, the name as two.
const _: () = assert!(
    core::mem::offset_of!(OwnerlessEvent, owner_source) == 80
        && core::mem::offset_of!(OwnerlessEvent, ctx_comm) == 64
        && core::mem::offset_of!(Event, owner_source) == 104
        && core::mem::offset_of!(Event, ctx_comm) == 72
);

impl OwnerlessEvent {
    /// The event it stands for.
    pub const fn event(&self) -> Event {
        Event {
            ts_ns: self.ts_ns,
            skaddr: self.skaddr,
            ctx_pid: self.ctx_pid,
            ctx_tid: self.ctx_tid,
            owner_pid: 0,
            owner_tid: 0,
            oldstate: self.oldstate,
            newstate: self.newstate,
            family: self.family,
            flags: self.flags,
            sport: self.sport,
            dport: self.dport,
            saddr: self.saddr,
            daddr: self.daddr,
            ctx_comm: self.ctx_comm,
            owner_comm: [0; TASK_COMM_LEN],
            owner_source: self.owner_source,
            _pad: [0; 3],
            netns: self.netns,
            cgroup_id: 0,
        }
    }
}

/// Ring buffer records are told apart by their size: every kind has its own
/// ([`RECORD_SIZES`], asserted distinct), so no record pays for a kind tag.
pub const FACTS_RAW_LEN: usize = 232;
pub const FACTS_RECORD_SIZE: usize = 256;
pub const RETRANSMIT_RECORD_SIZE: usize = 64;
pub const RESET_RECORD_SIZE: usize = 72;
const _: () = assert!(core::mem::size_of::<FactsRecord>() == FACTS_RECORD_SIZE);
const _: () = assert!(core::mem::size_of::<RetransmitRecord>() == RETRANSMIT_RECORD_SIZE);
const _: () = assert!(core::mem::size_of::<ResetRecord>() == RESET_RECORD_SIZE);

/// Socket facts read at a transition that needs them (an accepted socket's SYN_RECV ->
/// ESTABLISHED, a client's SYN_SENT -> ESTABLISHED, every -> CLOSE but a listener's), with the
/// same `ts_ns` and `skaddr` as that transition's [`Event`]. The kernel writes both in one
/// [`EventWithFacts`]; user space (and a recording) has them as two records, facts second.
///
/// The program copies byte ranges of the socket (one bounded copy per group of nearby fields,
/// [`FactGroups`]) into `raw` without knowing what they mean; user space, which resolved the
/// field offsets from the kernel's BTF, decodes them. A group whose copy failed leaves its
/// bytes zero and clears its bit in `valid_groups`. At the end of a handshake only the groups
/// the handshake needs are copied (`names::FACTS_HANDSHAKE_GROUPS`: those of the smoothed RTT
/// and the retransmit count); the other bits are clear there and their facts unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FactsRecord {
    pub ts_ns: u64,
    pub skaddr: u64,
    pub oldstate: u8,
    pub newstate: u8,
    pub _pad: [u8; 2],
    /// Bit i set: group i was copied.
    pub valid_groups: u32,
    pub raw: [u8; FACTS_RAW_LEN],
}

/// An event (`E`: [`Event`] or [`OwnerlessEvent`]) at a transition that needs socket facts,
/// with them, in one ring buffer record (one reservation instead of two). User space splits it
/// into the event and its [`FactsRecord`] (same `ts_ns`, `skaddr` and states).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WithFacts<E> {
    pub event: E,
    /// As [`FactsRecord::valid_groups`].
    pub valid_groups: u32,
    pub _pad: u32,
    pub raw: [u8; FACTS_RAW_LEN],
}

pub type EventWithFacts = WithFacts<Event>;
pub type OwnerlessEventWithFacts = WithFacts<OwnerlessEvent>;

pub const OWNERLESS_EVENT_WITH_FACTS_SIZE: usize = 328;
const _: () =
    assert!(core::mem::size_of::<OwnerlessEventWithFacts>() == OWNERLESS_EVENT_WITH_FACTS_SIZE);
const _: () = assert!(
    core::mem::offset_of!(OwnerlessEventWithFacts, valid_groups) == OWNERLESS_EVENT_SIZE
        && core::mem::offset_of!(OwnerlessEventWithFacts, raw) == OWNERLESS_EVENT_SIZE + 8
);

/// Every size a ring buffer record can have, which tells its kind.
pub const RECORD_SIZES: [usize; 9] = [
    EVENT_SIZE,
    OWNERLESS_EVENT_SIZE,
    EVENT_WITH_FACTS_SIZE,
    OWNERLESS_EVENT_WITH_FACTS_SIZE,
    EVENT_WITH_QUEUE_SIZE,
    FACTS_RECORD_SIZE,
    RETRANSMIT_RECORD_SIZE,
    RESET_RECORD_SIZE,
    LISTENER_RECORD_SIZE,
];
const _: () = {
    let mut i = 0;
    while i < RECORD_SIZES.len() {
        let mut j = i + 1;
        while j < RECORD_SIZES.len() {
            assert!(RECORD_SIZES[i] != RECORD_SIZES[j]);
            j += 1;
        }
        i += 1;
    }
};

pub const EVENT_WITH_FACTS_SIZE: usize = 360;
const _: () = assert!(core::mem::size_of::<EventWithFacts>() == EVENT_WITH_FACTS_SIZE);
const _: () = assert!(
    core::mem::offset_of!(EventWithFacts, valid_groups) == EVENT_SIZE
        && core::mem::offset_of!(EventWithFacts, raw) == EVENT_SIZE + 8
);

/// Most groups of socket fields copied per [`FactsRecord`].
pub const MAX_FACT_GROUPS: usize = 8;

/// One copy: `len` bytes from the socket at `src_off` into `FactsRecord::raw` at `dst_off`.
/// `len` 0: unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FactGroup {
    pub src_off: u16,
    pub dst_off: u16,
    pub len: u16,
    pub _pad: u16,
}

/// The copies the program makes for a [`FactsRecord`], a load-time global computed from BTF.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FactGroups {
    pub groups: [FactGroup; MAX_FACT_GROUPS],
}

/// One socket field the BTF-tracepoint program loads itself into `raw`, at the place its
/// group's copy would put it: there the socket pointer is typed, and a load of a field is one
/// instruction where a group's copy is a helper call. `size` 0: unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FactField {
    pub src_off: u16,
    pub dst_off: u16,
    /// 1, 2, 4 or 8.
    pub size: u8,
    /// The group it belongs to: its bit in `valid_groups` and `FACTS_HANDSHAKE_GROUPS`.
    pub group: u8,
    pub _pad: u16,
}

/// Most fields in [`FactFields`].
pub const MAX_FACT_FIELDS: usize = 16;

/// The fields of every group, for the BTF tracepoint (a load-time global from BTF).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FactFields {
    pub fields: [FactField; MAX_FACT_FIELDS],
}

/// `RetransmitRecord::kind` values.
pub mod retransmit_kind {
    /// `tcp:tcp_retransmit_skb`: a segment of this socket was sent again.
    pub const SKB: u8 = 1;
    /// `tcp:tcp_retransmit_synack`: a listener resent a SYN-ACK; `skaddr` is the listener,
    /// join it to the accepted socket by 4-tuple.
    pub const SYNACK: u8 = 2;
}

/// TCP header flag bits (`tcp_skb_cb::tcp_flags`, the 14th byte of a TCP header).
pub mod tcp_flags {
    pub const FIN: u8 = 0x01;
    pub const SYN: u8 = 0x02;
    pub const RST: u8 = 0x04;
    pub const PSH: u8 = 0x08;
    pub const ACK: u8 = 0x10;
}

/// `RetransmitRecord::known` bits: which optional fields the running kernel provided.
pub mod retransmit_known {
    pub const TCP_FLAGS: u8 = 1;
    pub const SEGS: u8 = 2;
    /// The tracepoint has `err` (Linux 6.17+).
    pub const ERR: u8 = 4;
}

/// A retransmission (`tcp:tcp_retransmit_skb` or `tcp:tcp_retransmit_synack`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetransmitRecord {
    pub ts_ns: u64,
    pub skaddr: u64,
    /// `retransmit_kind` value.
    pub kind: u8,
    /// The socket's TCP state (SKB only; 0 otherwise).
    pub state: u8,
    /// The retransmitted segment's TCP flags (`tcp_flags` bits).
    pub tcp_flags: u8,
    /// `retransmit_known` bits.
    pub known: u8,
    /// Segments the retransmitted skb carries (what the kernel adds to `total_retrans`).
    pub segs: u16,
    pub family: u16,
    /// Host byte order, as in `Event`.
    pub sport: u16,
    pub dport: u16,
    /// The tracepoint's `err`: nonzero means the retransmission failed and was not sent.
    pub err: i32,
    /// Network byte order; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// `ResetRecord::direction` values.
pub mod reset_direction {
    /// `tcp:tcp_send_reset`: this host sent a RST.
    pub const SENT: u8 = 1;
    /// `tcp:tcp_receive_reset`: a RST arrived for this socket.
    pub const RECEIVED: u8 = 2;
}

/// A reset sent or received. A sent reset with `skaddr` 0 answers a segment no socket took:
/// when that segment was a SYN (`seg_flags`), it is an inbound connection this host refused.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResetRecord {
    pub ts_ns: u64,
    pub skaddr: u64,
    /// `reset_direction` value.
    pub direction: u8,
    /// The socket's TCP state, 0 without a socket.
    pub state: u8,
    /// Flags of the segment the reset answers (sent resets), when `seg_flags_known` is 1.
    pub seg_flags: u8,
    pub seg_flags_known: u8,
    /// The kernel's `enum sk_rst_reason` value (sent resets on kernels that report it), or
    /// `u32::MAX` when unknown. Its name comes from BTF.
    pub reason: u32,
    /// 0 when the event carries no addresses.
    pub family: u16,
    /// Host byte order: this host's end and the peer's.
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    /// The task running when the reset was sent or received.
    pub ctx_pid: u32,
    pub _pad2: u32,
    /// Network byte order; IPv4 in the first 4 bytes.
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

/// `ListenerRecord::kind` values.
pub mod listener_kind {
    /// A listener created a child socket (LISTEN -> SYN_RECV of the child): its accept queue
    /// as read from the listener at that moment, before the child is added to it.
    pub const QUEUE: u8 = 1;
    /// `skb:kfree_skb` freed a packet addressed to the listener, with the kernel's reason.
    pub const DROP: u8 = 2;
}

/// `ListenerRecord::known` bits.
pub mod listener_known {
    /// `depth` and `limit` were read.
    pub const QUEUE: u8 = 1;
}

pub const LISTENER_RECORD_SIZE: usize = 56;
const _: () = assert!(core::mem::size_of::<ListenerRecord>() == LISTENER_RECORD_SIZE);

/// An accepted socket's first state change (LISTEN -> SYN_RECV) with its listener's accept-queue
/// reading taken at it, in one ring buffer record (one reservation instead of two). User space
/// splits it into the event and the [`ListenerRecord`] (same `ts_ns`).
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EventWithQueue {
    pub event: Event,
    pub queue: ListenerRecord,
}

pub const EVENT_WITH_QUEUE_SIZE: usize = 176;
const _: () = assert!(core::mem::size_of::<EventWithQueue>() == EVENT_WITH_QUEUE_SIZE);
const _: () = assert!(core::mem::offset_of!(EventWithQueue, queue) == EVENT_SIZE);

/// Listener health: an accept-queue reading or a dropped packet of one listening socket.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenerRecord {
    pub ts_ns: u64,
    /// The listener's socket address.
    pub skaddr: u64,
    /// `listener_kind` value.
    pub kind: u8,
    /// `listener_known` bits.
    pub known: u8,
    /// The listener's local end, as its `ListenKey` (port in host byte order).
    pub family: u16,
    pub port: u16,
    pub _pad: u16,
    /// QUEUE: `sk_ack_backlog`, completed handshakes not yet accepted.
    pub depth: u32,
    /// QUEUE: `sk_max_ack_backlog`, the listen() backlog as the kernel capped it.
    pub limit: u32,
    /// DROP: the kernel's `enum skb_drop_reason` value (its name comes from BTF).
    pub reason: u32,
    pub _pad2: u32,
    /// Network byte order; IPv4 in the first 4 bytes; all zero for a wildcard listener.
    pub addr: [u8; 16],
}

/// Where `sk_ack_backlog` / `sk_max_ack_backlog` live in `struct sock` (from BTF); `ok` 0: the
/// kernel lacks them and no queue is read.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ListenOffsets {
    pub ack_backlog: u16,
    pub max_ack_backlog: u16,
    pub ok: u8,
    pub _pad: [u8; 3],
}

/// Where `skb:kfree_skb`'s fields live in its record (from its format file); `rx_sk` 0: the
/// event carries no receiving socket and the program is not attached.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct DropLayout {
    pub rx_sk: u16,
    pub reason: u16,
    pub protocol: u16,
    pub record_len: u16,
}

/// `skb:kfree_skb`'s layout since Linux 6.12 (`rx_sk` added). When the format file describes
/// exactly this, the program loads the fields straight from the record (constant offsets, no
/// copy): the event fires for every freed packet of the host, so its common case must be cheap.
pub const MODERN_DROP_LAYOUT: DropLayout = DropLayout {
    rx_sk: 24,
    reason: 36,
    protocol: 32,
    record_len: 40,
};

/// Bounds of one [`FactGroup`] copy the program accepts: a group of at most `L` bytes (one of
/// these) starts at most at `FACTS_RAW_LEN - L` in `raw`. The verifier can then prove every copy
/// stays inside the record from the two bounds of each case alone (it tracks no relation
/// between them), and user space can still pack `raw` tightly, the largest group first.
pub const FACT_GROUP_TIERS: [usize; 4] = [8, 16, 64, 160];
pub const MAX_FACT_GROUP_LEN: usize = 160;

/// Where the fields of a joined tracepoint (`tcp:tcp_retransmit_skb`, ...) live in its raw
/// record, from its `format` file. An offset of 0 means the event lacks the field (offset 0 is
/// always `common_type`, never a field the program reads).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct JoinLayout {
    pub skbaddr: u16,
    pub skaddr: u16,
    /// `int state`.
    pub state: u16,
    /// `int err` (tcp_retransmit_skb, Linux 6.17+).
    pub err: u16,
    /// `enum sk_rst_reason reason` (tcp_send_reset, Linux 6.10+).
    pub reason: u16,
    /// Host byte order `__u16` ports and family (absent with `sockaddr`).
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    /// `__u8 saddr[4]` / `daddr[4]`, or with `sockaddr` the `__u8 saddr[28]` / `daddr[28]`
    /// socket address storage (`sockaddr_in` / `sockaddr_in6`: family, network byte order
    /// port, address).
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// 1: `saddr`/`daddr` are socket address storage.
    pub sockaddr: u16,
    /// Bytes of the record the program copies: the end of the last field it reads.
    pub record_len: u16,
    pub _pad: [u16; 2],
}

/// Offsets in `struct sk_buff` (from BTF) the joined programs read; 0 in `*_ok` means the
/// kernel lacks the field and the program leaves the value unknown.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SkbOffsets {
    /// `sk_buff.cb` + `tcp_skb_cb.tcp_flags`.
    pub cb_tcp_flags: u16,
    /// `sk_buff.cb` + `tcp_skb_cb.tcp_gso_segs` (u16).
    pub cb_gso_segs: u16,
    /// `sk_buff.head` (pointer).
    pub head: u16,
    /// `sk_buff.transport_header` (u16, offset of the TCP header from `head`).
    pub transport_header: u16,
    pub tcp_flags_ok: u8,
    pub gso_segs_ok: u8,
    /// `head` and `transport_header` both known: the incoming segment's flags are readable.
    pub seg_flags_ok: u8,
    pub _pad: [u8; 5],
}

/// Where each field of `sock:inet_sock_set_state` lives in the raw tracepoint record, read from
/// the tracepoint's `format` file at start-up (the layout changed in Linux 5.6).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Layout {
    pub skaddr: u16,
    pub oldstate: u16,
    pub newstate: u16,
    pub sport: u16,
    pub dport: u16,
    pub family: u16,
    pub protocol: u16,
    /// 1 before Linux 5.6, 2 since.
    pub protocol_size: u16,
    pub saddr: u16,
    pub daddr: u16,
    pub saddr_v6: u16,
    pub daddr_v6: u16,
    /// Bytes of the record the program copies: the end of the last field it reads.
    pub record_len: u16,
    pub _pad: u16,
}

/// The layout of `sock:inet_sock_set_state` since Linux 5.6. When the format file read at start
/// describes exactly this, user space sets [`Settings::direct_read`] and the program loads each
/// field straight from the record at these offsets (the verifier needs them as constants in the
/// instructions); any other layout is read through one copy of the record at the parsed offsets.
pub const MODERN_LAYOUT: Layout = Layout {
    skaddr: 8,
    oldstate: 16,
    newstate: 20,
    sport: 24,
    dport: 26,
    family: 28,
    protocol: 30,
    protocol_size: 2,
    saddr: 32,
    daddr: 36,
    saddr_v6: 40,
    daddr_v6: 56,
    record_len: 72,
    _pad: 0,
};

/// The kernel program copies at most this many bytes of the record.
pub const MAX_RECORD_LEN: usize = 128;

/// `Filter::flags` bits: which filters are active.
pub mod filter_flags {
    pub const PID: u32 = 1 << 0;
    pub const COMM: u32 = 1 << 1;
    pub const LPORT: u32 = 1 << 2;
    pub const RPORT: u32 = 1 << 3;
    /// Either end's port.
    pub const PORT: u32 = 1 << 4;
    /// Remote address in one of the CIDRs of the `ADDRS` trie.
    pub const ADDR: u32 = 1 << 5;
    pub const IPV4_ONLY: u32 = 1 << 6;
    pub const IPV6_ONLY: u32 = 1 << 7;
    /// The owner is in `Filter::cgroup_id` or below it (`owner_flags::IN_CGROUP`).
    pub const CGROUP: u32 = 1 << 8;
    /// The socket's network namespace is `Filter::netns`.
    pub const NETNS: u32 = 1 << 9;
    /// The filters on the owner: they need the owner in the kernel.
    pub const OWNER: u32 = PID | COMM | CGROUP | NETNS;
}

/// `Owner::flags` bits.
pub mod owner_flags {
    /// With `filter_flags::CGROUP`: the owner was in the filter's cgroup or a descendant of it
    /// at its system call (or, from the /proc scan, by its cgroup path).
    pub const IN_CGROUP: u32 = 1;
}

/// `PORTS` map value bits: which port filters a port belongs to.
pub mod port_bits {
    pub const LOCAL: u8 = 1;
    pub const REMOTE: u8 = 2;
    pub const EITHER: u8 = 4;
}

/// Slots of the kernel's port table: four bits (`port_bits`) a port, eight ports a `u32` slot.
pub const PORT_SLOTS: u32 = 65536 / 8;

// Every `port_bits` value fits in a port's four bits.
const _: () = assert!(port_bits::LOCAL < 16 && port_bits::REMOTE < 16 && port_bits::EITHER < 16);

/// The slot of `port` in the port table and the shift of its four bits in it.
pub const fn port_slot(port: u16) -> (u32, u32) {
    ((port >> 3) as u32, ((port & 7) as u32) * 4)
}

/// The in-kernel filter, a load-time global so the verifier prunes what is not used.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Filter {
    /// `filter_flags` bits.
    pub flags: u32,
    pub _pad: u32,
    /// With `filter_flags::COMM`: the owner's comm must equal this (NUL padded).
    pub comm: [u8; TASK_COMM_LEN],
    /// With `filter_flags::CGROUP`: the cgroup v2 id to keep, with its descendants, and its
    /// level (the root is 0): the owner's ancestor at that level must be it.
    pub cgroup_id: u64,
    pub cgroup_level: u32,
    /// With `filter_flags::NETNS`: the network namespace inode to keep.
    pub netns: u32,
}

/// Where a socket's network namespace inode is: `sock.__sk_common.skc_net` (a pointer to
/// `struct net`), then `net.ns.inum` (from BTF). `ok` 0: unknown on this kernel.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NetnsOffsets {
    pub skc_net: u16,
    pub ns_inum: u16,
    pub ok: u32,
}

/// Where the BTF tracepoint program finds, in the TCP socket it is handed, the fields the
/// classic tracepoint copies into its record (from BTF, offsets from the start of the socket):
/// `inet_saddr` and `inet_sport` are in `struct inet_sock`, the others in `struct sock`; and
/// where the current task's name is in its `struct task_struct`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockLayout {
    pub family: u16,
    pub dport: u16,
    pub daddr: u16,
    pub v6_daddr: u16,
    pub v6_rcv_saddr: u16,
    pub inet_saddr: u16,
    pub inet_sport: u16,
    /// `comm` in `struct task_struct`: the BTF tracepoint program reads the current task's
    /// name by two typed loads instead of a helper call (see [`comm_words`]).
    pub task_comm: u16,
}

/// What `bpf_get_current_comm` makes of a task's `comm` (`strscpy_pad` into 16 bytes), from
/// its two little-endian words as loaded: the bytes up to the first NUL, zeros from there on,
/// the last byte always NUL. Branch-light word arithmetic: no byte loop for the verifier.
pub const fn comm_words(w0: u64, w1: u64) -> [u64; 2] {
    // Bit 8k+7 of `(w - 0x01..) & !w & 0x80..` is set for every zero byte k below which no
    // byte is zero (higher bits may be set wrongly, the lowest one never is).
    const fn before_first_zero(w: u64) -> Option<u64> {
        let z = w.wrapping_sub(0x0101_0101_0101_0101) & !w & 0x8080_8080_8080_8080;
        if z == 0 {
            None
        } else {
            Some(((z & z.wrapping_neg()) >> 7).wrapping_sub(1))
        }
    }
    let w1 = w1 & 0x00ff_ffff_ffff_ffff;
    match before_first_zero(w0) {
        Some(keep) => [w0 & keep, 0],
        None => match before_first_zero(w1) {
            Some(keep) => [w0, w1 & keep],
            None => [w0, w1],
        },
    }
}

/// Settings of the kernel program other than the filter.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Settings {
    /// Wake user space only once this many bytes wait in the ring buffer; user space also drains
    /// on a short timer, so events never wait longer than that.
    pub wakeup_bytes: u64,
    /// 1 when the format file matched [`MODERN_LAYOUT`].
    pub direct_read: u32,
    /// 1: user space attributes sockets to owners (no owner filter is active). The program
    /// then fills the owner only where the event itself says who it is (the owner's system
    /// call, a child of a known listener) and leaves the rest `owner_source::DEFERRED`, without
    /// any work on the owner tables.
    pub user_attribution: u32,
}

/// The process that owns a socket. 8-byte aligned so the kernel program copies it as five
/// words (a less aligned copy becomes a call to a memmove subprogram in BPF code).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; TASK_COMM_LEN],
    /// The owner's cgroup v2 id, 0 when unknown.
    pub cgroup_id: u64,
    /// The socket's network namespace inode (not the owner's: it travels with the owner
    /// entry because both are per socket), 0 when unknown.
    pub netns: u32,
    /// `owner_flags` bits.
    pub flags: u32,
}

/// A listening socket's local end, to attribute the sockets it accepts.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ListenKey {
    pub family: u16,
    pub port: u16,
    /// All zero for a wildcard listener.
    pub addr: [u8; 16],
}

/// A listener's owner. `pid` 0 marks a port several processes listen on (SO_REUSEPORT): its
/// accepted sockets stay unknown until their owner closes them, rather than being guessed.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ListenOwner {
    pub skaddr: u64,
    pub owner: Owner,
}

/// A connection's 4-tuple, to attribute sockets that existed before tracing started.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct TupleKey {
    pub family: u16,
    pub sport: u16,
    pub dport: u16,
    pub _pad: u16,
    pub saddr: [u8; 16],
    pub daddr: [u8; 16],
}

pub mod counters;

/// Indexes of the per-CPU `COUNTERS` array; [`counters`] writes down what they account for.
pub use counters::index as counter;
pub use counters::{Counter, KernelCounters, COUNTERS};

/// Map and program names, shared so neither side can drift.
pub mod names {
    pub const PROGRAM: &str = "tcpstate";
    /// The same on the BTF tracepoint, and the program that rescues its skipped runs.
    pub const PROGRAM_BTF: &str = "tcpstate_btf";
    pub const RESCUE: &str = "tcpstate_rescue";
    pub const HERALD: &str = "tcpstate_herald";
    /// `SockLayout`: where the BTF tracepoint program reads the socket.
    pub const SOCK_LAYOUT: &str = "SOCK_LAYOUT";
    pub const EVENTS: &str = "EVENTS";
    pub const COUNTERS: &str = "COUNTERS";
    pub const OWNERS: &str = "OWNERS";
    pub const LISTENERS: &str = "LISTENERS";
    pub const PREEXISTING: &str = "PREEXISTING";
    pub const PENDING: &str = "PENDING";
    pub const PIDS: &str = "PIDS";
    pub const PORTS: &str = "PORTS";
    pub const ADDRS: &str = "ADDRS";
    pub const LAYOUT: &str = "LAYOUT";
    pub const FILTER: &str = "FILTER";
    pub const SETTINGS: &str = "SETTINGS";
    /// `FactGroups`: the socket byte ranges copied into a `FactsRecord`.
    pub const FACT_GROUPS: &str = "FACT_GROUPS";
    /// `FactFields`: the same, field by field, for the BTF tracepoint's typed loads.
    pub const FACT_FIELDS: &str = "FACT_FIELDS";
    /// `u32`: bit i set: group i is also copied at the end of a handshake (at a close every
    /// group is); the others' bits stay clear in `valid_groups` there.
    pub const FACTS_HANDSHAKE_GROUPS: &str = "FACTS_HANDSHAKE_GROUPS";
    /// `SkbOffsets`: where the joined programs find a segment's flags and segment count.
    pub const SKB_OFFSETS: &str = "SKB_OFFSETS";
    /// `NetnsOffsets`: where a socket's network namespace inode is.
    pub const NETNS_OFFSETS: &str = "NETNS_OFFSETS";
    /// The joined programs and their `JoinLayout` globals, in [`JOINED`] order.
    pub const RETRANSMIT_SKB: &str = "retransmit_skb";
    pub const RETRANSMIT_SYNACK: &str = "retransmit_synack";
    pub const SEND_RESET: &str = "send_reset";
    pub const RECEIVE_RESET: &str = "receive_reset";
    pub const RETRANSMIT_SKB_LAYOUT: &str = "RETRANSMIT_SKB_LAYOUT";
    pub const RETRANSMIT_SYNACK_LAYOUT: &str = "RETRANSMIT_SYNACK_LAYOUT";
    pub const SEND_RESET_LAYOUT: &str = "SEND_RESET_LAYOUT";
    pub const RECEIVE_RESET_LAYOUT: &str = "RECEIVE_RESET_LAYOUT";
    /// Listener health: `ListenOffsets`, the `skb:kfree_skb` program, its `DropLayout`, and the
    /// table of traced listeners it checks.
    pub const LISTEN_OFFSETS: &str = "LISTEN_OFFSETS";
    pub const KFREE_SKB: &str = "kfree_skb";
    pub const DROP_LAYOUT: &str = "DROP_LAYOUT";
    pub const LISTEN_SOCKS: &str = "LISTEN_SOCKS";
    /// (program, layout global, tracepoint category, tracepoint name) of each joined program.
    pub const JOINED: [(&str, &str, &str, &str); 4] = [
        (
            RETRANSMIT_SKB,
            RETRANSMIT_SKB_LAYOUT,
            "tcp",
            "tcp_retransmit_skb",
        ),
        (
            RETRANSMIT_SYNACK,
            RETRANSMIT_SYNACK_LAYOUT,
            "tcp",
            "tcp_retransmit_synack",
        ),
        (SEND_RESET, SEND_RESET_LAYOUT, "tcp", "tcp_send_reset"),
        (
            RECEIVE_RESET,
            RECEIVE_RESET_LAYOUT,
            "tcp",
            "tcp_receive_reset",
        ),
    ];
}

/// Capacity of the per-socket tables in the kernel.
pub const OWNERS_MAX: u32 = 65536;
pub const LISTENERS_MAX: u32 = 4096;
pub const PREEXISTING_MAX: u32 = 16384;
pub const PENDING_MAX: u32 = 8192;
pub const PIDS_MAX: u32 = 1024;
pub const ADDRS_MAX: u32 = 256;

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all of these are repr(C) plain data with explicit padding fields, valid for any bytes.
    unsafe impl aya::Pod for Event {}
    unsafe impl aya::Pod for Layout {}
    unsafe impl aya::Pod for Filter {}
    unsafe impl aya::Pod for Settings {}
    unsafe impl aya::Pod for Owner {}
    unsafe impl aya::Pod for ListenKey {}
    unsafe impl aya::Pod for ListenOwner {}
    unsafe impl aya::Pod for TupleKey {}
    unsafe impl aya::Pod for FactsRecord {}
    unsafe impl aya::Pod for FactGroups {}
    unsafe impl aya::Pod for FactFields {}
    unsafe impl aya::Pod for RetransmitRecord {}
    unsafe impl aya::Pod for ResetRecord {}
    unsafe impl aya::Pod for JoinLayout {}
    unsafe impl aya::Pod for SkbOffsets {}
    unsafe impl aya::Pod for ListenerRecord {}
    unsafe impl aya::Pod for ListenOffsets {}
    unsafe impl aya::Pod for DropLayout {}
    unsafe impl aya::Pod for NetnsOffsets {}
    // SAFETY: as above.
    unsafe impl aya::Pod for SockLayout {}
}

#[cfg(test)]
mod tests {
    use super::*;

    extern crate std;
    use std::{vec, vec::Vec};

    /// `strscpy_pad(dst, src, 16)` as the helper does it, byte by byte.
    fn strscpy_pad(src: [u8; 16]) -> [u8; 16] {
        let mut out = [0u8; 16];
        for (i, &b) in src.iter().take(15).enumerate() {
            if b == 0 {
                break;
            }
            out[i] = b;
        }
        out
    }

    fn words(b: [u8; 16]) -> [u64; 2] {
        let (lo, hi) = b.split_at(8);
        [
            u64::from_le_bytes(lo.try_into().unwrap()),
            u64::from_le_bytes(hi.try_into().unwrap()),
        ]
    }

    #[test]
    fn comm_words_is_what_the_helper_copies() {
        let mut cases: Vec<[u8; 16]> = vec![
            *b"storm\0\0\0\0\0\0\0\0\0\0\0",
            *b"storm\0garbage!!X",
            *b"exactly15chars!\0",
            *b"sixteen-chars-xy",
            *b"\0leading-nul-xyz",
            *b"seven_c\0junkjunk",
            *b"eight_ch\0junkjun",
            [0x80; 16],
            [0xff; 16],
            [0; 16],
        ];
        // Every position of the first NUL, with high-bit bytes before it and junk after it
        // (a borrow across a zero byte is where the word trick could go wrong).
        for nul in 0..16 {
            let mut b = [0u8; 16];
            for (i, v) in b.iter_mut().enumerate() {
                *v = match i.cmp(&nul) {
                    core::cmp::Ordering::Less => 0x81 + i as u8,
                    core::cmp::Ordering::Equal => 0,
                    core::cmp::Ordering::Greater => (i as u8) | 1,
                };
            }
            cases.push(b);
            b[nul.saturating_sub(1)] = 1;
            cases.push(b);
        }
        for c in cases {
            let [w0, w1] = words(c);
            assert_eq!(comm_words(w0, w1), words(strscpy_pad(c)), "{c:?}");
        }
    }

    /// Neighbouring ports share a slot at distinct shifts; every port has a slot in the table.
    #[test]
    fn port_slots_pack_eight_ports_a_word() {
        assert_eq!(port_slot(8000), (1000, 0));
        assert_eq!(port_slot(8001), (1000, 4));
        assert_eq!(port_slot(8007), (1000, 28));
        assert_eq!(port_slot(u16::MAX), (PORT_SLOTS - 1, 28));
    }
}
