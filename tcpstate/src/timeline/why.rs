//! The "why" of a connection: what the kernel's socket facts, retransmits and resets said about
//! it, kept compactly inside its [`super::Conn`] (about 64 bytes).
//!
//! Everything is optional: a bit of [`Why::known`] says whether a value was reported. Nothing
//! here is guessed; values the running kernel (or an old recording) lacks stay unknown.

use tcpstate_common::{reset_direction, retransmit_kind, retransmit_known, state, tcp_flags};

use crate::facts::{Facts, ResetRecord, RetransmitRecord};

/// `Why::known` bits.
pub(crate) mod known {
    /// Facts were read at the transition into CLOSE (bytes, segments, RTT, errno).
    pub const CLOSE: u16 = 1;
    pub const SRTT: u16 = 2;
    pub const MIN_RTT: u16 = 4;
    pub const SYNACK_RTT: u16 = 8;
    pub const ERRNO: u16 = 16;
    pub const BYTES_ACKED: u16 = 32;
    pub const BYTES_RECEIVED: u16 = 64;
    pub const BYTES_RETRANS: u16 = 128;
    pub const SEGS_IN: u16 = 256;
    pub const SEGS_OUT: u16 = 512;
    /// The handshake's SYN (client) or SYN-ACK (accepted socket) retransmits come from the
    /// socket's own `total_retrans` at the end of the handshake: they win over counted events.
    pub const HS_RETX: u16 = 1024;
    /// Retransmit events were joined (the count is known, possibly 0 from events alone).
    pub const RETX_EVENTS: u16 = 2048;
    /// A facts record of any transition was joined.
    pub const ANY_FACTS: u16 = 4096;
    /// The socket's `total_retrans` at CLOSE.
    pub const TOTAL_RETRANS: u16 = 8192;
}

/// Index into `Why::retx`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetxKind {
    Syn = 0,
    SynAck = 1,
    Data = 2,
    Fin = 3,
    /// Retransmissions the kernel attempted but failed to send (`err` != 0).
    Failed = 4,
}

impl RetxKind {
    pub const ALL: [RetxKind; 5] = [
        RetxKind::Syn,
        RetxKind::SynAck,
        RetxKind::Data,
        RetxKind::Fin,
        RetxKind::Failed,
    ];

    pub fn name(self) -> &'static str {
        match self {
            RetxKind::Syn => "syn",
            RetxKind::SynAck => "synack",
            RetxKind::Data => "data",
            RetxKind::Fin => "fin",
            RetxKind::Failed => "failed",
        }
    }
}

/// Why an ETIMEDOUT happened.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Timeout {
    None = 0,
    /// The SYN was never answered.
    Connect = 1,
    /// Data (or a FIN) stayed unacknowledged through the retransmission timeouts.
    Retransmission = 2,
    /// Keepalive probes of an idle connection went unanswered.
    Keepalive = 3,
    /// The peer's window stayed closed and its probes went unanswered.
    ZeroWindowProbe = 4,
}

impl Timeout {
    pub fn name(self) -> Option<&'static str> {
        match self {
            Timeout::None => None,
            Timeout::Connect => Some("connect"),
            Timeout::Retransmission => Some("retransmission"),
            Timeout::Keepalive => Some("keepalive"),
            Timeout::ZeroWindowProbe => Some("zero_window_probe"),
        }
    }
}

/// Which facts decided a refused / timed-out outcome.
#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Basis {
    /// Decided by the state path alone (closed, reset, TIME_WAIT, ...): no rule was needed.
    None = 0,
    /// The socket's error (ECONNREFUSED vs ETIMEDOUT).
    Errno = 1,
    /// The SYN retransmit count.
    Retransmits = 2,
    /// The 1 s rule: the fallback when the facts are absent.
    Timing = 3,
}

impl Basis {
    pub fn name(self) -> Option<&'static str> {
        match self {
            Basis::None => None,
            Basis::Errno => Some("errno"),
            Basis::Retransmits => Some("retransmits"),
            Basis::Timing => Some("timing"),
        }
    }
}

/// Reset direction as kept: 0 none.
pub(crate) const RESET_NONE: u8 = 0;
/// `reset_reason` when the kernel did not report one.
pub(crate) const REASON_UNKNOWN: u16 = u16::MAX;

pub(crate) const ETIMEDOUT: u8 = 110;
pub(crate) const ECONNREFUSED: u8 = 111;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Why {
    pub bytes_acked: u64,
    pub bytes_received: u64,
    pub bytes_retrans: u64,
    pub segs_in: u32,
    pub segs_out: u32,
    pub synack_rtt_us: u32,
    pub srtt_us: u32,
    pub min_rtt_us: u32,
    /// Indexed by [`RetxKind`], saturating.
    pub retx: [u16; 5],
    /// The socket's own count at CLOSE (saturating): what RETX shows, all kinds together.
    pub total_retrans: u16,
    pub reset_reason: u16,
    pub known: u16,
    /// The socket's error at CLOSE (hard, or soft where the outcome failed), 0 none.
    pub errno: u8,
    /// `reset_direction` value, [`RESET_NONE`] for none.
    pub reset_dir: u8,
    /// [`Timeout`] as u8.
    pub timeout: u8,
    /// [`Basis`] as u8.
    pub basis: u8,
}

impl Why {
    pub const EMPTY: Why = Why {
        bytes_acked: 0,
        bytes_received: 0,
        bytes_retrans: 0,
        segs_in: 0,
        segs_out: 0,
        synack_rtt_us: 0,
        srtt_us: 0,
        min_rtt_us: 0,
        retx: [0; 5],
        total_retrans: 0,
        reset_reason: REASON_UNKNOWN,
        known: 0,
        errno: 0,
        reset_dir: RESET_NONE,
        timeout: 0,
        basis: 0,
    };

    pub fn has(&self, bit: u16) -> bool {
        self.known & bit != 0
    }

    fn add_retx(&mut self, kind: RetxKind, n: u16) {
        let r = &mut self.retx[kind as usize];
        *r = r.saturating_add(n);
    }

    /// Counts one `tcp_retransmit_skb` (or a SYN-ACK joined by 4-tuple). Returns the kind
    /// counted, for the ladder.
    pub fn retransmit(&mut self, r: &RetransmitRecord) -> RetxKind {
        self.known |= known::RETX_EVENTS;
        let segs = if r.known & retransmit_known::SEGS != 0 {
            r.segs.max(1)
        } else {
            1
        };
        let kind = retx_kind(r);
        self.add_retx(kind, segs);
        kind
    }

    /// Sets the handshake retransmits from the socket's own count (it wins over events).
    pub fn handshake_retx(&mut self, kind: RetxKind, total_retrans: u32) {
        self.retx[kind as usize] = total_retrans.min(u32::from(u16::MAX)) as u16;
        self.known |= known::HS_RETX;
    }

    /// Keeps the first reset: later ones (a RST answering a RST) say less.
    pub fn reset(&mut self, r: &ResetRecord) -> bool {
        if self.reset_dir != RESET_NONE {
            return false;
        }
        self.reset_dir = r.direction;
        self.reset_reason = if r.reason == u32::MAX {
            REASON_UNKNOWN
        } else {
            r.reason.min(u32::from(u16::MAX - 1)) as u16
        };
        true
    }

    /// Takes the facts read at SYN_RECV -> ESTABLISHED of an accepted socket.
    pub fn server_established(&mut self, f: &Facts) {
        self.known |= known::ANY_FACTS;
        if let Some(rtt) = f.srtt_us.filter(|&v| v != 0) {
            self.synack_rtt_us = rtt;
            self.known |= known::SYNACK_RTT;
        }
        if let Some(n) = f.total_retrans {
            self.handshake_retx(RetxKind::SynAck, n);
        }
    }

    /// Takes the facts read at SYN_SENT -> ESTABLISHED (or -> CLOSE) of a client.
    pub fn client_handshake(&mut self, f: &Facts) {
        self.known |= known::ANY_FACTS;
        if let Some(n) = f.total_retrans {
            self.handshake_retx(RetxKind::Syn, n);
        }
    }

    /// Takes the facts read at the transition into CLOSE (raw kernel values; the byte
    /// corrections need the timeline and are made by the connection).
    pub fn closed(&mut self, f: &Facts) {
        self.known |= known::ANY_FACTS | known::CLOSE;
        if let Some(v) = f.srtt_us.filter(|&v| v != 0) {
            self.srtt_us = v;
            self.known |= known::SRTT;
        }
        if let Some(v) = f.min_rtt_us.filter(|&v| v != 0 && v != u32::MAX) {
            self.min_rtt_us = v;
            self.known |= known::MIN_RTT;
        }
        let set64 = |v: Option<u64>, slot: &mut u64, bit: u16, known: &mut u16| {
            if let Some(v) = v {
                *slot = v;
                *known |= bit;
            }
        };
        set64(
            f.bytes_acked,
            &mut self.bytes_acked,
            known::BYTES_ACKED,
            &mut self.known,
        );
        set64(
            f.bytes_received,
            &mut self.bytes_received,
            known::BYTES_RECEIVED,
            &mut self.known,
        );
        set64(
            f.bytes_retrans,
            &mut self.bytes_retrans,
            known::BYTES_RETRANS,
            &mut self.known,
        );
        if let Some(v) = f.total_retrans {
            self.total_retrans = v.min(u32::from(u16::MAX)) as u16;
            self.known |= known::TOTAL_RETRANS;
        }
        if let Some(v) = f.segs_in {
            self.segs_in = v;
            self.known |= known::SEGS_IN;
        }
        if let Some(v) = f.segs_out {
            self.segs_out = v;
            self.known |= known::SEGS_OUT;
        }
    }

    /// Retransmitted segments: the socket's own count at close where known, else the sum of
    /// the kinds counted (failed ones are not sent, so not in either).
    pub fn retx_total(&self) -> u32 {
        if self.has(known::TOTAL_RETRANS) {
            return u32::from(self.total_retrans);
        }
        self.retx[..4].iter().map(|&n| u32::from(n)).sum()
    }
}

/// SYN: the SYN flag in SYN_SENT; FIN: the FIN flag (data resent in FIN_WAIT1 has none);
/// data otherwise. Without the segment's flags, only the state tells a SYN.
fn retx_kind(r: &RetransmitRecord) -> RetxKind {
    if r.known & retransmit_known::ERR != 0 && r.err != 0 {
        return RetxKind::Failed;
    }
    if r.kind == retransmit_kind::SYNACK {
        return RetxKind::SynAck;
    }
    let flags_known = r.known & retransmit_known::TCP_FLAGS != 0;
    if flags_known {
        if r.tcp_flags & tcp_flags::SYN != 0 {
            if r.state == state::SYN_SENT || r.tcp_flags & tcp_flags::ACK == 0 {
                return RetxKind::Syn;
            }
            return RetxKind::SynAck;
        }
        if r.tcp_flags & tcp_flags::FIN != 0 {
            return RetxKind::Fin;
        }
        return RetxKind::Data;
    }
    if r.state == state::SYN_SENT {
        RetxKind::Syn
    } else {
        RetxKind::Data
    }
}

/// Whether a reset is a refused inbound attempt: sent without a socket, answering a SYN.
pub(crate) fn is_refused_inbound(r: &ResetRecord) -> bool {
    r.skaddr == 0
        && r.direction == reset_direction::SENT
        && r.seg_flags_known != 0
        && r.seg_flags & tcp_flags::SYN != 0
        && r.seg_flags & tcp_flags::ACK == 0
}

/// The symbolic name of an errno value (Linux numbering), `None` for 0 or one not in the table.
pub fn errno_name(e: u8) -> Option<&'static str> {
    Some(match e {
        1 => "EPERM",
        4 => "EINTR",
        5 => "EIO",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        22 => "EINVAL",
        32 => "EPIPE",
        71 => "EPROTO",
        90 => "EMSGSIZE",
        92 => "ENOPROTOOPT",
        95 => "EOPNOTSUPP",
        97 => "EAFNOSUPPORT",
        98 => "EADDRINUSE",
        99 => "EADDRNOTAVAIL",
        100 => "ENETDOWN",
        101 => "ENETUNREACH",
        102 => "ENETRESET",
        103 => "ECONNABORTED",
        104 => "ECONNRESET",
        105 => "ENOBUFS",
        106 => "EISCONN",
        107 => "ENOTCONN",
        108 => "ESHUTDOWN",
        110 => "ETIMEDOUT",
        111 => "ECONNREFUSED",
        112 => "EHOSTDOWN",
        113 => "EHOSTUNREACH",
        114 => "EALREADY",
        115 => "EINPROGRESS",
        125 => "ECANCELED",
        126 => "ENOKEY",
        127 => "EKEYEXPIRED",
        128 => "EKEYREVOKED",
        129 => "EKEYREJECTED",
        _ => return None,
    })
}
