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
    pub _pad: [u8; 7],
}

pub const EVENT_SIZE: usize = 112;
const _: () = assert!(core::mem::size_of::<Event>() == EVENT_SIZE);
const _: () = assert!(core::mem::size_of::<Owner>() == 24);
const _: () = assert!(core::mem::size_of::<ListenOwner>() == 32);

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
            _pad: [0; 7],
        }
    }
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
}

/// `PORTS` map value bits: which port filters a port belongs to.
pub mod port_bits {
    pub const LOCAL: u8 = 1;
    pub const REMOTE: u8 = 2;
    pub const EITHER: u8 = 4;
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
    pub _pad: u32,
}

/// The process that owns a socket. 8-byte aligned so the kernel program copies it as three
/// words (a less aligned copy becomes a call to a memmove subprogram in BPF code).
#[repr(C, align(8))]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Owner {
    pub pid: u32,
    pub tid: u32,
    pub comm: [u8; TASK_COMM_LEN],
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
}
