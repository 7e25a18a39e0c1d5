//! One socket lifetime, kept compactly, and the rules that classify it.
//!
//! A [`Conn`] never stores whole events: only the addresses, the owner, a few timestamps, the
//! time spent in each phase and a short ladder of the states it went through. That keeps a
//! tracked connection at a few hundred bytes (see `engine::tests::memory_per_connection`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use tcpstate_common::{owner_source, state, Event, AF_INET, TASK_COMM_LEN};

use super::span::Span;
use super::why::{self, known, Basis, RetxKind, Timeout, Why};
use crate::facts::{Facts, ResetRecord, RetransmitRecord};

/// How many transitions the ladder keeps. A normal lifetime has five or six; when more arrive,
/// the last rung is overwritten so the ladder always ends with the newest transition, and
/// [`Conn::ladder_overflow`] is set.
pub const LADDER: usize = 16;

/// `Conn::rung_states` bit: the state was reached through transitions that were never seen.
const GAP: u8 = 0x80;
/// `Conn::rung_states` bit: not a state but a [`Mark`] (a retransmit or reset in place).
const MARK: u8 = 0x40;
/// At most this many marks are kept on a ladder, so a retransmit storm cannot push the states
/// out of it (the counts stay exact; the timeline says when marks were left out).
const MAX_MARKS: usize = 6;

/// Something that happened to a connection between its transitions, shown in its ladder.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mark {
    SynRetransmitted = 1,
    SynAckRetransmitted = 2,
    DataRetransmitted = 3,
    FinRetransmitted = 4,
    RetransmitFailed = 5,
    RstSent = 6,
    RstReceived = 7,
}

impl Mark {
    fn of_code(c: u8) -> Option<Mark> {
        Some(match c {
            1 => Mark::SynRetransmitted,
            2 => Mark::SynAckRetransmitted,
            3 => Mark::DataRetransmitted,
            4 => Mark::FinRetransmitted,
            5 => Mark::RetransmitFailed,
            6 => Mark::RstSent,
            7 => Mark::RstReceived,
            _ => return None,
        })
    }

    fn of_retx(k: RetxKind) -> Mark {
        match k {
            RetxKind::Syn => Mark::SynRetransmitted,
            RetxKind::SynAck => Mark::SynAckRetransmitted,
            RetxKind::Data => Mark::DataRetransmitted,
            RetxKind::Fin => Mark::FinRetransmitted,
            RetxKind::Failed => Mark::RetransmitFailed,
        }
    }

    /// What the timeline prints.
    pub fn text(self) -> &'static str {
        match self {
            Mark::SynRetransmitted => "SYN retransmitted",
            Mark::SynAckRetransmitted => "SYN-ACK retransmitted",
            Mark::DataRetransmitted => "data retransmitted",
            Mark::FinRetransmitted => "FIN retransmitted",
            Mark::RetransmitFailed => "retransmission failed",
            Mark::RstSent => "RST sent",
            Mark::RstReceived => "RST received",
        }
    }
}

/// A ladder entry: a state reached, or a mark.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    State(Rung),
    Mark { mark: Mark, offset_ns: u64 },
}

mod flag {
    pub const PARTIAL: u8 = 1;
    pub const INCOMPLETE: u8 = 2;
    pub const TIME_WAIT: u8 = 4;
    pub const LADDER_OVERFLOW: u8 = 8;
    /// Retransmits or resets happened that the ladder has no room to show.
    pub const MARKS_DROPPED: u8 = 16;
}

/// What a socket was for, from the transition that started its lifetime.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Role {
    /// First seen mid-life (it existed before tracing started, or its first transitions were
    /// lost): nothing says which side opened it.
    Unknown = 0,
    /// Active open: CLOSE -> SYN_SENT (`connect()`).
    Client = 1,
    /// Accepted: a child socket born LISTEN -> SYN_RECV.
    Server = 2,
    /// CLOSE -> LISTEN (`listen()`).
    Listener = 3,
}

impl Role {
    pub const ALL: [Role; 4] = [Role::Client, Role::Server, Role::Listener, Role::Unknown];

    /// Stable name, used by every output.
    pub fn name(self) -> &'static str {
        match self {
            Role::Unknown => "unknown",
            Role::Client => "client",
            Role::Server => "server",
            Role::Listener => "listener",
        }
    }

    fn of_start(old: u8, new: u8) -> Role {
        match (old, new) {
            (state::CLOSE, state::SYN_SENT) => Role::Client,
            (state::LISTEN, state::SYN_RECV) => Role::Server,
            (state::CLOSE, state::LISTEN) => Role::Listener,
            _ => Role::Unknown,
        }
    }
}

/// How a lifetime ended. Decided only from transitions actually seen: when the deciding facts
/// are missing the outcome says so (`Incomplete`, `Partial`) rather than guess. Whether
/// transitions were missing or the socket predates tracing is also kept as separate flags
/// ([`Conn::incomplete`], [`Conn::partial`]), because the end itself is often still certain.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// LAST_ACK -> CLOSE (the passive closer's FIN was acknowledged), or LISTEN -> CLOSE (a
    /// listener closed). A RST received in LAST_ACK looks the same and is counted here.
    Closed = 0,
    /// FIN_WAIT2 -> CLOSE or CLOSING -> CLOSE: the socket entered TIME_WAIT and a timewait
    /// socket holds the 4-tuple for 60 s. Never reported as a plain close. (The FIN_WAIT2
    /// timeout of an orphaned socket also hands over to a timewait socket, so it lands here.)
    TimeWait = 1,
    /// ESTABLISHED, CLOSE_WAIT or FIN_WAIT1 -> CLOSE: the socket left without the normal FIN
    /// exchange, so a RST was sent or received (or the application aborted it).
    Reset = 2,
    /// SYN_SENT -> CLOSE less than 1 s after SYN_SENT was entered: before the first SYN
    /// retransmission timeout, so the peer answered with a RST (an application that gives up a
    /// non-blocking connect that quickly looks the same).
    Refused = 3,
    /// SYN_SENT -> CLOSE 1 s or more after SYN_SENT: the SYN was retransmitted and the connect
    /// failed or timed out. Where socket facts are known: a connect that failed with another
    /// error than ECONNREFUSED, and any connection the kernel ended with ETIMEDOUT (keepalive,
    /// retransmission or zero-window-probe timeout; see `timeout`) instead of a reset.
    TimedOut = 4,
    /// SYN_RECV -> CLOSE: an accepted socket died before its handshake completed.
    HandshakeAborted = 5,
    /// Still open when tracing stopped; durations run up to the end of tracing.
    Open = 6,
    /// Dropped from the table to make room (`max_tracked`, oldest first); durations run up to
    /// the moment of eviction. If the socket lives on, its later transitions start a new,
    /// partial timeline.
    Evicted = 7,
    /// The end cannot be classified because transitions are missing: a newer lifetime started at
    /// the same socket address before this one was seen closing, or the transition into CLOSE
    /// came from a state whose meaning depends on what was missed.
    Incomplete = 8,
    /// Started before tracing and the end cannot be classified without its start (a SYN_SENT ->
    /// CLOSE whose SYN_SENT was never seen: refused and timed out look alike).
    Partial = 9,
}

impl Outcome {
    pub const COUNT: usize = 10;
    pub const ALL: [Outcome; Outcome::COUNT] = [
        Outcome::Closed,
        Outcome::TimeWait,
        Outcome::Reset,
        Outcome::Refused,
        Outcome::TimedOut,
        Outcome::HandshakeAborted,
        Outcome::Open,
        Outcome::Evicted,
        Outcome::Incomplete,
        Outcome::Partial,
    ];

    /// Stable name, used by every output.
    pub fn name(self) -> &'static str {
        match self {
            Outcome::Closed => "closed",
            Outcome::TimeWait => "time_wait",
            Outcome::Reset => "reset",
            Outcome::Refused => "refused",
            Outcome::TimedOut => "timed_out",
            Outcome::HandshakeAborted => "hs_aborted",
            Outcome::Open => "open",
            Outcome::Evicted => "evicted",
            Outcome::Incomplete => "incomplete",
            Outcome::Partial => "partial",
        }
    }
}

/// SYN_SENT -> CLOSE faster than this is a refusal: the first SYN retransmission timeout
/// (`TCP_TIMEOUT_INIT`) is 1 s, and a RST arrives within one round trip.
pub const REFUSED_BEFORE_NS: u64 = 1_000_000_000;

/// Which side sent the first FIN.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Closer {
    /// No teardown state was seen (still established, reset, never established).
    Unknown = 0,
    /// This socket closed first: ESTABLISHED -> FIN_WAIT1 (or it was seen in FIN_WAIT1/2).
    Local = 1,
    /// The peer closed first: ESTABLISHED -> CLOSE_WAIT (or it was seen in CLOSE_WAIT/LAST_ACK).
    Remote = 2,
    /// Both FINs crossed: FIN_WAIT1 -> CLOSING.
    Simultaneous = 3,
}

impl Closer {
    /// Stable name for JSON; `None` when unknown.
    pub fn name(self) -> Option<&'static str> {
        match self {
            Closer::Unknown => None,
            Closer::Local => Some("local"),
            Closer::Remote => Some("remote"),
            Closer::Simultaneous => Some("simultaneous"),
        }
    }

    /// At most six characters, for table columns.
    pub fn short(self) -> &'static str {
        match self {
            Closer::Unknown => "-",
            Closer::Local => "local",
            Closer::Remote => "remote",
            Closer::Simultaneous => "simul",
        }
    }
}

/// The phases whose durations are kept.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// SYN_SENT -> ESTABLISHED for a client (connect latency), SYN_RECV -> ESTABLISHED for an
    /// accepted socket. Only set when the handshake completed and its start was seen.
    Handshake = 0,
    /// Time in ESTABLISHED: the data phase.
    Established = 1,
    FinWait1 = 2,
    FinWait2 = 3,
    Closing = 4,
    /// From the peer's FIN until the application called close(): how long the application
    /// took to notice.
    CloseWait = 5,
    LastAck = 6,
}

impl Phase {
    pub const COUNT: usize = 7;
    pub const TEARDOWN: [Phase; 5] = [
        Phase::FinWait1,
        Phase::FinWait2,
        Phase::Closing,
        Phase::CloseWait,
        Phase::LastAck,
    ];

    fn of_state(s: u8) -> Option<Phase> {
        match s {
            state::ESTABLISHED => Some(Phase::Established),
            state::FIN_WAIT1 => Some(Phase::FinWait1),
            state::FIN_WAIT2 => Some(Phase::FinWait2),
            state::CLOSING => Some(Phase::Closing),
            state::CLOSE_WAIT => Some(Phase::CloseWait),
            state::LAST_ACK => Some(Phase::LastAck),
            _ => None,
        }
    }

    /// snake_case name, the stem of JSON field names.
    pub fn name(self) -> &'static str {
        match self {
            Phase::Handshake => "handshake",
            Phase::Established => "established",
            Phase::FinWait1 => "fin_wait1",
            Phase::FinWait2 => "fin_wait2",
            Phase::Closing => "closing",
            Phase::CloseWait => "close_wait",
            Phase::LastAck => "last_ack",
        }
    }
}

/// One rung of the ladder: a state and when it was entered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Rung {
    pub state: u8,
    /// Nanoseconds since the lifetime's first event (see [`Span`] for the precision).
    pub offset_ns: u64,
    /// The state was reached through transitions that were never seen: its rung marks when it
    /// was first known, not when it was entered.
    pub gap: bool,
}

/// One lifetime of one socket.
#[derive(Clone, Copy, Debug)]
pub struct Conn {
    skaddr: u64,
    first_ts: u64,
    last_ts: u64,
    /// When the current state was entered.
    state_ts: u64,
    id: u32,
    owner_pid: u32,
    ctx_pid: u32,
    /// The owner's cgroup v2 id (0: unknown), taken with the owner.
    cgroup_id: u64,
    /// The socket's network namespace inode (0: unknown).
    netns: u32,
    spans: [Span; Phase::COUNT],
    rung_offsets: [Span; LADDER],
    rung_states: [u8; LADDER],
    laddr: [u8; 16],
    raddr: [u8; 16],
    owner_comm: [u8; TASK_COMM_LEN],
    ctx_comm: [u8; TASK_COMM_LEN],
    lport: u16,
    rport: u16,
    family: u8,
    state: u8,
    first_state: u8,
    role: Role,
    closer: Closer,
    outcome: Outcome,
    owner_source: u8,
    /// Bit per `Phase` whose span holds a value.
    phases_seen: u8,
    rungs: u8,
    flags: u8,
    /// The state the lifetime left for CLOSE (0 before that).
    close_from: u8,
    why: Why,
}

/// Ranks owner sources: an event's owner replaces the kept one when it ranks at least as high,
/// so a later system call of the owner wins over an owner inherited from the listener, and an
/// unknown owner never replaces a known one.
fn owner_rank(source: u8) -> u8 {
    match source {
        owner_source::SYSCALL => 3,
        owner_source::REMEMBERED | owner_source::PROC_SCAN => 2,
        owner_source::LISTENER => 1,
        _ => 0,
    }
}

impl Conn {
    /// A new lifetime from its first event. `partial`: the event does not start a lifetime, so
    /// the socket was first seen mid-life.
    pub(crate) fn start(ev: &Event, id: u32, partial: bool) -> Conn {
        let mut c = Conn {
            skaddr: ev.skaddr,
            first_ts: ev.ts_ns,
            last_ts: ev.ts_ns,
            state_ts: ev.ts_ns,
            id,
            owner_pid: 0,
            ctx_pid: ev.ctx_pid,
            cgroup_id: 0,
            netns: 0,
            spans: [Span::ZERO; Phase::COUNT],
            rung_offsets: [Span::ZERO; LADDER],
            rung_states: [0; LADDER],
            laddr: [0; 16],
            raddr: [0; 16],
            owner_comm: [0; TASK_COMM_LEN],
            ctx_comm: ev.ctx_comm,
            lport: 0,
            rport: 0,
            family: ev.family,
            state: ev.newstate,
            first_state: ev.oldstate,
            role: if partial {
                Role::Unknown
            } else {
                Role::of_start(ev.oldstate, ev.newstate)
            },
            closer: Closer::Unknown,
            outcome: Outcome::Open,
            owner_source: owner_source::UNKNOWN,
            phases_seen: 0,
            rungs: 0,
            flags: if partial { flag::PARTIAL } else { 0 },
            close_from: 0,
            why: Why::EMPTY,
        };
        c.take_tuple(ev);
        c.take_owner(ev);
        c.note_closer(ev.oldstate);
        c.note_closer(ev.newstate);
        c.push_rung(ev.newstate, ev.ts_ns);
        c
    }

    /// Applies a later transition of this lifetime. Returns when the socket entered the state it
    /// is leaving, if that is known (it is not when transitions were missed).
    pub(crate) fn apply(&mut self, ev: &Event) -> Option<u64> {
        let ts = ev.ts_ns;
        let since = if ev.oldstate == self.state {
            let spent = ts.saturating_sub(self.state_ts);
            self.account(self.state, ev.newstate, spent);
            Some(self.state_ts)
        } else {
            // Transitions are missing between the state we know and this event's old state:
            // how long either lasted is unknown, so nothing is accounted.
            self.flags |= flag::INCOMPLETE;
            self.push_rung(ev.oldstate | GAP, ts);
            None
        };
        self.note_closer(ev.oldstate);
        self.note_closer(ev.newstate);
        self.state = ev.newstate;
        self.state_ts = ts;
        self.last_ts = self.last_ts.max(ts);
        self.take_owner(ev);
        self.push_rung(ev.newstate, ts);
        since
    }

    /// Classifies a lifetime that just reached CLOSE through `ev`, which was applied with
    /// `since` as its result. The rules are those of [`Outcome`].
    pub(crate) fn close(&mut self, ev: &Event, since: Option<u64>) {
        self.close_from = ev.oldstate;
        if matches!(ev.oldstate, state::FIN_WAIT2 | state::CLOSING) {
            self.flags |= flag::TIME_WAIT;
        }
        let unknown = if self.incomplete() {
            Outcome::Incomplete
        } else {
            Outcome::Partial
        };
        self.outcome = match ev.oldstate {
            state::LAST_ACK | state::LISTEN => Outcome::Closed,
            state::FIN_WAIT2 | state::CLOSING => Outcome::TimeWait,
            state::ESTABLISHED | state::CLOSE_WAIT | state::FIN_WAIT1 => Outcome::Reset,
            state::SYN_RECV => Outcome::HandshakeAborted,
            state::SYN_SENT => match since {
                Some(t) if ev.ts_ns.saturating_sub(t) < REFUSED_BEFORE_NS => Outcome::Refused,
                Some(_) => Outcome::TimedOut,
                None => unknown,
            },
            _ => Outcome::Incomplete,
        };
        if matches!(self.outcome, Outcome::Refused | Outcome::TimedOut) {
            self.why.basis = Basis::Timing as u8;
        }
        // Retransmit events already counted may decide it before the facts arrive.
        self.classify_connect();
    }

    /// Takes the socket facts read at one of this lifetime's transitions (the one at `f.ts_ns`).
    /// Returns false when they do not belong to it.
    pub(crate) fn apply_facts(&mut self, f: &Facts) -> bool {
        if f.skaddr != self.skaddr || f.ts_ns < self.first_ts {
            return false;
        }
        match (f.oldstate, f.newstate) {
            (state::SYN_RECV, state::ESTABLISHED) if self.role == Role::Server => {
                self.why.server_established(f)
            }
            (state::SYN_SENT, state::ESTABLISHED) => self.why.client_handshake(f),
            (old, state::CLOSE) => {
                if f.ts_ns != self.last_ts || self.close_from == 0 {
                    return false;
                }
                if old == state::SYN_SENT {
                    self.why.client_handshake(f);
                }
                self.why.closed(f);
                self.closed_facts(f);
            }
            _ => self.why.known |= known::ANY_FACTS,
        }
        true
    }

    /// The outcome rules that use the facts read at CLOSE, errno, timeout and the correction of
    /// the kernel's byte counters to application bytes.
    fn closed_facts(&mut self, f: &Facts) {
        let hard = f.sk_err.map(|e| e.clamp(0, 255) as u8);
        if let Some(e) = hard {
            self.why.known |= known::ERRNO;
            self.why.errno = e;
        }
        self.classify_connect();
        let failed = matches!(
            self.outcome,
            Outcome::Refused | Outcome::TimedOut | Outcome::HandshakeAborted | Outcome::Reset
        );
        if failed && self.why.errno == 0 {
            if let Some(soft) = f.sk_err_soft.filter(|&e| e > 0) {
                self.why.errno = soft.min(255) as u8;
                self.why.known |= known::ERRNO;
            }
        }
        self.why.timeout = if self.why.errno == why::ETIMEDOUT {
            let packets = f.packets_out.unwrap_or(0);
            let rto = f.retransmits.unwrap_or(0);
            let probes = f.probes_out.unwrap_or(0);
            let queued = f.wmem_queued.unwrap_or(0);
            if self.close_from == state::SYN_SENT || self.close_from == state::SYN_RECV {
                Timeout::Connect
            } else if packets > 0 || rto > 0 {
                Timeout::Retransmission
            } else if probes > 0 && queued > 0 {
                Timeout::ZeroWindowProbe
            } else if probes > 0 {
                Timeout::Keepalive
            } else {
                Timeout::None
            }
        } else {
            Timeout::None
        } as u8;
        // The kernel counts sequence space: take out the SYN and FINs the timeline says it
        // counted. A client's SYN is in bytes_acked once the handshake completed; an accepted
        // socket's SYN-ACK never is. Unknown role: whether a SYN is in there cannot be told.
        let established = self.role != Role::Unknown && self.reached(state::ESTABLISHED);
        let own_fin_acked = self.reached(state::FIN_WAIT2)
            || self.close_from == state::CLOSING
            || (self.close_from == state::LAST_ACK
                && self.why.reset_dir != tcpstate_common::reset_direction::RECEIVED);
        let peer_fin = self.reached(state::CLOSE_WAIT)
            || self.reached(state::CLOSING)
            || self.close_from == state::FIN_WAIT2;
        if self.why.has(known::BYTES_ACKED) {
            match self.role {
                Role::Unknown => self.why.known &= !known::BYTES_ACKED,
                role => {
                    let syn = u64::from(role == Role::Client && established);
                    let fin = u64::from(own_fin_acked);
                    self.why.bytes_acked = self.why.bytes_acked.saturating_sub(syn + fin);
                }
            }
        }
        if self.why.has(known::BYTES_RECEIVED) {
            self.why.bytes_received = self.why.bytes_received.saturating_sub(u64::from(peer_fin));
        }
    }

    /// Refused vs timed out for a connect that ended in SYN_SENT, by the best facts known:
    /// the socket's error, then the SYN retransmit count; the 1 s rule stays otherwise.
    fn classify_connect(&mut self) {
        if self.close_from != state::SYN_SENT {
            // A connection the kernel gave up (ETIMEDOUT) left without a FIN exchange like a
            // reset. It may have sent a RST as it gave up (a keepalive timeout does, reason
            // `tcp_keepalive_timeout`): that reset is reported, but the timeout is why it ended.
            // A received RST would have set ECONNRESET instead.
            if self.outcome == Outcome::Reset
                && self.why.has(known::ERRNO)
                && self.why.errno == why::ETIMEDOUT
                && self.why.reset_dir != tcpstate_common::reset_direction::RECEIVED
            {
                self.outcome = Outcome::TimedOut;
                self.why.basis = Basis::Errno as u8;
            }
            return;
        }
        let w = &self.why;
        let syn = w.retx[RetxKind::Syn as usize];
        let (outcome, basis) = if w.has(known::ERRNO) && w.errno == why::ECONNREFUSED {
            (Outcome::Refused, Basis::Errno)
        } else if w.has(known::ERRNO) && w.errno != 0 {
            (Outcome::TimedOut, Basis::Errno)
        } else if w.has(known::HS_RETX) {
            if syn > 0 {
                (Outcome::TimedOut, Basis::Retransmits)
            } else {
                (Outcome::Refused, Basis::Retransmits)
            }
        } else if w.has(known::RETX_EVENTS) && syn > 0 {
            (Outcome::TimedOut, Basis::Retransmits)
        } else {
            return;
        };
        self.outcome = outcome;
        self.why.basis = basis as u8;
    }

    /// Counts a retransmission of this socket (or, for an accepted socket, a SYN-ACK joined by
    /// 4-tuple) and marks it in the ladder.
    pub(crate) fn retransmit(&mut self, r: &RetransmitRecord) {
        let kind = self.why.retransmit(r);
        // A SYN-ACK resent before this socket existed has no place on its ladder.
        if r.ts_ns >= self.first_ts {
            self.push_mark(Mark::of_retx(kind), r.ts_ns);
        }
        if self.close_from == state::SYN_SENT {
            self.classify_connect();
        }
    }

    /// SYN-ACK retransmits counted for this accepted socket's 4-tuple before it existed.
    pub(crate) fn synack_retransmits(&mut self, n: u16) {
        self.why.known |= known::RETX_EVENTS;
        let r = &mut self.why.retx[RetxKind::SynAck as usize];
        *r = r.saturating_add(n);
    }

    /// A reset sent or received on this socket.
    pub(crate) fn reset(&mut self, r: &ResetRecord) {
        if self.why.reset(r) {
            let mark = if r.direction == tcpstate_common::reset_direction::SENT {
                Mark::RstSent
            } else {
                Mark::RstReceived
            };
            self.push_mark(mark, r.ts_ns);
        }
    }

    fn push_mark(&mut self, mark: Mark, ts: u64) {
        let i = usize::from(self.rungs);
        let marks = self.rung_states[..i]
            .iter()
            .filter(|&&r| r & MARK != 0)
            .count();
        if marks >= MAX_MARKS || i >= LADDER - 1 {
            self.flags |= flag::MARKS_DROPPED;
            return;
        }
        self.rungs += 1;
        self.rung_states[i] = MARK | mark as u8;
        self.rung_offsets[i] = Span::from_ns(ts.saturating_sub(self.first_ts));
    }

    /// Whether the lifetime was in state `s` at some point that the timeline saw.
    fn reached(&self, s: u8) -> bool {
        self.first_state == s
            || self.state == s
            || self.rung_states[..usize::from(self.rungs)]
                .iter()
                .any(|&r| r & MARK == 0 && r & !GAP == s)
    }

    /// Ends a lifetime that is still going at `now_ns` (tracing stopped, or evicted): the
    /// current state's time runs up to `now_ns`.
    pub(crate) fn cut(&mut self, now_ns: u64, outcome: Outcome) {
        let now = now_ns.max(self.last_ts);
        if let Some(p) = Phase::of_state(self.state) {
            self.add(p, now - self.state_ts.min(now));
        }
        self.last_ts = now;
        self.outcome = outcome;
    }

    /// Ends a lifetime whose address was taken over by a new lifetime before it was seen
    /// closing.
    pub(crate) fn supersede(&mut self) {
        self.flags |= flag::INCOMPLETE;
        self.outcome = Outcome::Incomplete;
    }

    fn account(&mut self, old: u8, new: u8, spent: u64) {
        match old {
            state::SYN_SENT | state::SYN_RECV if new == state::ESTABLISHED => {
                self.add(Phase::Handshake, spent)
            }
            _ => {
                if let Some(p) = Phase::of_state(old) {
                    self.add(p, spent)
                }
            }
        }
    }

    fn add(&mut self, p: Phase, ns: u64) {
        let i = p as usize;
        self.spans[i] = self.spans[i].add_ns(ns);
        self.phases_seen |= 1 << i;
    }

    fn note_closer(&mut self, s: u8) {
        match s {
            state::FIN_WAIT1 | state::FIN_WAIT2 | state::TIME_WAIT
                if self.closer == Closer::Unknown =>
            {
                self.closer = Closer::Local
            }
            state::CLOSE_WAIT | state::LAST_ACK if self.closer == Closer::Unknown => {
                self.closer = Closer::Remote
            }
            state::CLOSING => self.closer = Closer::Simultaneous,
            _ => {}
        }
    }

    fn push_rung(&mut self, s: u8, ts: u64) {
        let offset = Span::from_ns(ts.saturating_sub(self.first_ts));
        let i = usize::from(self.rungs);
        let i = if i < LADDER {
            self.rungs += 1;
            i
        } else {
            self.flags |= flag::LADDER_OVERFLOW;
            LADDER - 1
        };
        self.rung_states[i] = s;
        self.rung_offsets[i] = offset;
    }

    fn take_owner(&mut self, ev: &Event) {
        // A socket's namespace never changes; any event that knows it says it.
        if ev.netns != 0 {
            self.netns = ev.netns;
        }
        if ev.owner_pid == 0 {
            return;
        }
        if self.owner_pid == 0 || owner_rank(ev.owner_source) >= owner_rank(self.owner_source) {
            self.owner_pid = ev.owner_pid;
            self.owner_comm = ev.owner_comm;
            self.owner_source = ev.owner_source;
            if ev.cgroup_id != 0 || self.cgroup_id == 0 {
                self.cgroup_id = ev.cgroup_id;
            }
        }
    }

    /// Whether `ev` carries a 4-tuple that should replace the kept one: the first event of a
    /// connect() has no local port yet, later ones do.
    pub(crate) fn tuple_changes(&self, ev: &Event) -> bool {
        (ev.sport != 0 || self.lport == 0)
            && (ev.sport != self.lport
                || ev.dport != self.rport
                || ev.saddr != self.laddr
                || ev.daddr != self.raddr)
    }

    pub(crate) fn take_tuple(&mut self, ev: &Event) {
        if ev.sport != 0 || self.lport == 0 {
            self.laddr = ev.saddr;
            self.raddr = ev.daddr;
            self.lport = ev.sport;
            self.rport = ev.dport;
        }
    }

    /// Whether both ports are known, which is what makes the connection findable by its peer.
    pub(crate) fn full_tuple(&self) -> bool {
        self.lport != 0 && self.rport != 0
    }

    /// Hash of (local end, remote end) with addresses normalised (see [`normalised`]);
    /// `reversed` swaps the ends, giving the hash the peer socket on this host would have.
    pub(crate) fn tuple_hash(&self, reversed: bool) -> u64 {
        if reversed {
            tuple_hash(
                self.family,
                &self.raddr,
                self.rport,
                &self.laddr,
                self.lport,
            )
        } else {
            tuple_hash(
                self.family,
                &self.laddr,
                self.lport,
                &self.raddr,
                self.rport,
            )
        }
    }

    /// Whether `other` is this connection's other end on the same host. The families may
    /// differ: an IPv4 client accepted by a dual-stack listener is an AF_INET6 socket whose
    /// addresses are the client's, v4-mapped.
    pub fn is_peer(&self, other: &Conn) -> bool {
        self.full_tuple()
            && self.lport == other.rport
            && self.rport == other.lport
            && normalised(self.family, &self.laddr) == normalised(other.family, &other.raddr)
            && normalised(self.family, &self.raddr) == normalised(other.family, &other.laddr)
    }

    pub fn skaddr(&self) -> u64 {
        self.skaddr
    }
    /// Sequence number of this lifetime in the order lifetimes were first seen (wraps at 2^32).
    pub fn id(&self) -> u32 {
        self.id
    }
    pub fn role(&self) -> Role {
        self.role
    }
    pub fn outcome(&self) -> Outcome {
        self.outcome
    }
    pub fn closer(&self) -> Closer {
        self.closer
    }
    /// The current (after the end: last) state.
    pub fn state(&self) -> u8 {
        self.state
    }
    /// The first known state: CLOSE or LISTEN for a lifetime seen from its start, whatever the
    /// socket was in when first seen otherwise.
    pub fn first_state(&self) -> u8 {
        self.first_state
    }
    pub fn family(&self) -> u8 {
        self.family
    }
    pub fn is_ipv4(&self) -> bool {
        self.family == AF_INET
    }
    pub fn laddr(&self) -> IpAddr {
        ip(self.family, &self.laddr)
    }
    pub fn raddr(&self) -> IpAddr {
        ip(self.family, &self.raddr)
    }
    pub fn lport(&self) -> u16 {
        self.lport
    }
    pub fn rport(&self) -> u16 {
        self.rport
    }
    /// The owning process's pid and comm, when known.
    pub fn owner(&self) -> Option<(u32, &[u8])> {
        (self.owner_pid != 0).then_some((self.owner_pid, &self.owner_comm[..]))
    }
    pub fn owner_source(&self) -> u8 {
        self.owner_source
    }
    /// The owner's cgroup v2 id, 0 when unknown.
    pub fn cgroup_id(&self) -> u64 {
        self.cgroup_id
    }
    /// The socket's network namespace inode, 0 when unknown.
    pub fn netns(&self) -> u32 {
        self.netns
    }
    /// The task that ran when the first event happened (pid 0: the kernel, e.g. softirq).
    pub fn ctx(&self) -> (u32, &[u8]) {
        (self.ctx_pid, &self.ctx_comm[..])
    }
    pub fn first_ts(&self) -> u64 {
        self.first_ts
    }
    /// The last event, or for open and evicted lifetimes the moment they were cut.
    pub fn last_ts(&self) -> u64 {
        self.last_ts
    }
    /// When the current state was entered.
    pub fn state_ts(&self) -> u64 {
        self.state_ts
    }
    /// First to last event (see [`Conn::last_ts`]).
    pub fn life_ns(&self) -> u64 {
        self.last_ts - self.first_ts.min(self.last_ts)
    }
    /// Time spent in a phase, if it was seen.
    pub fn phase_ns(&self, p: Phase) -> Option<u64> {
        let i = p as usize;
        (self.phases_seen & (1 << i) != 0).then(|| self.spans[i].ns())
    }
    pub fn handshake_ns(&self) -> Option<u64> {
        self.phase_ns(Phase::Handshake)
    }
    /// The teardown phase that matters: CLOSE_WAIT when the peer closed first (the
    /// application's delay), FIN_WAIT1 + FIN_WAIT2 (+ CLOSING) when this side closed first.
    pub fn close_ns(&self) -> Option<u64> {
        let sum = |ps: &[Phase]| {
            ps.iter()
                .filter_map(|&p| self.phase_ns(p))
                .reduce(|a, b| a + b)
        };
        match self.closer {
            Closer::Remote => self.phase_ns(Phase::CloseWait),
            Closer::Local | Closer::Simultaneous => {
                sum(&[Phase::FinWait1, Phase::FinWait2, Phase::Closing])
            }
            Closer::Unknown => None,
        }
    }
    /// Started before tracing (or its start was lost): first seen mid-life.
    pub fn partial(&self) -> bool {
        self.flags & flag::PARTIAL != 0
    }
    /// Transitions were missing: an event's old state was not the state last seen.
    pub fn incomplete(&self) -> bool {
        self.flags & flag::INCOMPLETE != 0
    }
    /// A connect() whose SYN_SENT lasted at least the first SYN retransmission timeout (1 s,
    /// `TCP_TIMEOUT_INIT`): its SYN, or the SYN-ACK, was lost and the SYN sent again. (A path
    /// whose round trip alone exceeds 1 s would look the same; such paths are rare.)
    pub fn syn_retransmitted(&self) -> bool {
        if self.why.has(known::HS_RETX) || self.why.retx[RetxKind::Syn as usize] > 0 {
            return self.role == Role::Client && self.why.retx[RetxKind::Syn as usize] > 0;
        }
        self.role == Role::Client
            && (self.outcome == Outcome::TimedOut
                || self.handshake_ns().is_some_and(|h| h >= REFUSED_BEFORE_NS))
    }
    /// The lifetime ended by entering TIME_WAIT (FIN_WAIT2 or CLOSING -> CLOSE).
    pub fn time_wait(&self) -> bool {
        self.flags & flag::TIME_WAIT != 0
    }
    /// Retransmits or resets happened that the ladder does not show (their counts are exact).
    pub fn marks_dropped(&self) -> bool {
        self.flags & flag::MARKS_DROPPED != 0
    }
    /// More transitions happened than the ladder keeps; the middle ones were dropped.
    pub fn ladder_overflow(&self) -> bool {
        self.flags & flag::LADDER_OVERFLOW != 0
    }
    /// The states entered, in order, with offsets from the first event.
    pub fn ladder(&self) -> impl Iterator<Item = Rung> + '_ {
        self.entries().filter_map(|e| match e {
            Entry::State(r) => Some(r),
            Entry::Mark { .. } => None,
        })
    }
    /// The ladder with retransmits and resets in place.
    pub fn entries(&self) -> impl Iterator<Item = Entry> + '_ {
        (0..usize::from(self.rungs)).filter_map(|i| {
            let code = self.rung_states[i];
            let offset_ns = self.rung_offsets[i].ns();
            if code & MARK != 0 {
                Mark::of_code(code & !MARK).map(|mark| Entry::Mark { mark, offset_ns })
            } else {
                Some(Entry::State(Rung {
                    state: code & !GAP,
                    offset_ns,
                    gap: code & GAP != 0,
                }))
            }
        })
    }
    /// What the table's HS_MS shows: an accepted socket's SYN-ACK round trip when the kernel
    /// measured it (its SYN_RECV lasts microseconds and says nothing), the handshake otherwise.
    pub fn hs_shown_ns(&self) -> Option<u64> {
        match self.synack_rtt_ns() {
            Some(ns) if self.role == Role::Server => Some(ns),
            _ => self.handshake_ns(),
        }
    }
    pub fn synack_rtt_ns(&self) -> Option<u64> {
        self.why
            .has(known::SYNACK_RTT)
            .then(|| u64::from(self.why.synack_rtt_us) * 1_000)
    }
    pub fn srtt_ns(&self) -> Option<u64> {
        self.why
            .has(known::SRTT)
            .then(|| u64::from(self.why.srtt_us) * 1_000)
    }
    pub fn min_rtt_ns(&self) -> Option<u64> {
        self.why
            .has(known::MIN_RTT)
            .then(|| u64::from(self.why.min_rtt_us) * 1_000)
    }
    /// Retransmits by kind when any source of them was joined.
    pub fn retransmits(&self) -> Option<[u16; 5]> {
        self.why
            .has(known::HS_RETX | known::RETX_EVENTS | known::CLOSE)
            .then_some(self.why.retx)
    }
    /// Retransmitted segments (RETX): the socket's `total_retrans` at close where known (the
    /// truth even where the retransmit tracepoint is missing), else the kinds counted.
    pub fn retx_total(&self) -> Option<u32> {
        self.retransmits().map(|_| self.why.retx_total())
    }
    /// `(direction, reason code)` of the first reset of this lifetime.
    pub fn reset_info(&self) -> Option<(u8, Option<u16>)> {
        (self.why.reset_dir != why::RESET_NONE).then(|| {
            let r = self.why.reset_reason;
            (self.why.reset_dir, (r != why::REASON_UNKNOWN).then_some(r))
        })
    }
    /// The socket's error at CLOSE: `Some(0)` for none, `None` when not known.
    pub fn errno(&self) -> Option<u8> {
        self.why.has(known::ERRNO).then_some(self.why.errno)
    }
    pub fn timeout(&self) -> Timeout {
        match self.why.timeout {
            1 => Timeout::Connect,
            2 => Timeout::Retransmission,
            3 => Timeout::Keepalive,
            4 => Timeout::ZeroWindowProbe,
            _ => Timeout::None,
        }
    }
    pub fn outcome_basis(&self) -> Basis {
        match self.why.basis {
            1 => Basis::Errno,
            2 => Basis::Retransmits,
            3 => Basis::Timing,
            _ => Basis::None,
        }
    }
    fn opt64(&self, bit: u16, v: u64) -> Option<u64> {
        self.why.has(bit).then_some(v)
    }
    /// Application bytes this side sent and the peer acknowledged.
    pub fn bytes_acked(&self) -> Option<u64> {
        self.opt64(known::BYTES_ACKED, self.why.bytes_acked)
    }
    /// Application bytes received in order.
    pub fn bytes_received(&self) -> Option<u64> {
        self.opt64(known::BYTES_RECEIVED, self.why.bytes_received)
    }
    pub fn bytes_retrans(&self) -> Option<u64> {
        self.opt64(known::BYTES_RETRANS, self.why.bytes_retrans)
    }
    pub fn segs_in(&self) -> Option<u32> {
        self.why.has(known::SEGS_IN).then_some(self.why.segs_in)
    }
    pub fn segs_out(&self) -> Option<u32> {
        self.why.has(known::SEGS_OUT).then_some(self.why.segs_out)
    }
}

/// Hash of (local end, remote end) with addresses normalised (see [`normalised`]).
pub(crate) fn tuple_hash(family: u8, la: &[u8; 16], lp: u16, ra: &[u8; 16], rp: u16) -> u64 {
    let (a, b) = (normalised(family, la), normalised(family, ra));
    let mut h = u64::from(lp) << 16 | u64::from(rp);
    for chunk in [&a, &b] {
        for half in chunk.chunks_exact(8) {
            let mut w = [0u8; 8];
            w.copy_from_slice(half);
            h = (h.rotate_left(5) ^ u64::from_ne_bytes(w)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    h
}

/// An address as the kernel stores it for `family`, in one form for both families: IPv4 (in
/// the first 4 bytes of an AF_INET socket's address) as IPv4-mapped IPv6 (`::ffff:a.b.c.d`),
/// the form an AF_INET6 socket carries for an IPv4 peer. IPv6 addresses stay as they are, so
/// no IPv6 address collides with an IPv4 one.
pub(crate) fn normalised(family: u8, raw: &[u8; 16]) -> [u8; 16] {
    if family == AF_INET {
        let mut m = [0u8; 16];
        m[10] = 0xff;
        m[11] = 0xff;
        m[12..].copy_from_slice(&raw[..4]);
        m
    } else {
        *raw
    }
}

fn ip(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}
