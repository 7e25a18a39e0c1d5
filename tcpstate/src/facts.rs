//! Socket facts: what the kernel knew about a socket at the transitions that decide how its
//! connection is described (what `ss -ti` would have shown at that moment).
//!
//! The kernel program copies raw byte ranges of the socket ([`tcpstate_common::FactsRecord`]);
//! `kernel::facts` decodes them with the offsets resolved from BTF into [`Facts`], the form the
//! pure pipeline and recordings use. Every value is `None` when the running kernel lacks the
//! field or the copy failed: unknown, never a guess.

pub use tcpstate_common::{ResetRecord, RetransmitRecord};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Facts {
    /// The transition these were read at: same `ts_ns` and `skaddr` as its event.
    pub ts_ns: u64,
    pub skaddr: u64,
    pub oldstate: u8,
    pub newstate: u8,
    /// `sk_err`: the error the socket reported to its owner (positive errno), 0 for none.
    pub sk_err: Option<i32>,
    /// `sk_err_soft`: an error noted but not (yet) reported, e.g. ICMP unreachable during
    /// connect.
    pub sk_err_soft: Option<i32>,
    /// Smoothed RTT in microseconds (`srtt_us >> 3`); 0 means no sample yet.
    pub srtt_us: Option<u32>,
    /// Minimum RTT seen, microseconds (`rtt_min`); `u32::MAX`/0 means no sample.
    pub min_rtt_us: Option<u32>,
    /// Segments retransmitted over the socket's life (`total_retrans`; an accepted socket
    /// inherits its request socket's SYN-ACK retransmits).
    pub total_retrans: Option<u32>,
    /// `icsk_retransmits`: retransmission timeouts in a row without progress.
    pub retransmits: Option<u8>,
    /// `icsk_probes_out`: keepalive or zero-window probes sent and unanswered.
    pub probes_out: Option<u8>,
    /// Segments sent and not yet acknowledged.
    pub packets_out: Option<u32>,
    /// `sk_wmem_queued`: bytes queued to send, in flight or not; with no packets out, a
    /// non-empty queue means the peer's window is closed (zero-window probing).
    pub wmem_queued: Option<u32>,
    /// Sequence space acknowledged by the peer (`bytes_acked`): data, plus SYN and FIN.
    pub bytes_acked: Option<u64>,
    /// Sequence space received in order (`bytes_received`): data, plus the peer's FIN.
    pub bytes_received: Option<u64>,
    pub bytes_retrans: Option<u64>,
    pub segs_in: Option<u32>,
    pub segs_out: Option<u32>,
}

#[cfg(test)]
pub(crate) mod tests {
    //! Records shaped like the real kernel's (values from `tcp-socket-facts.md`).
    use super::*;
    use tcpstate_common::{reset_direction, retransmit_kind, retransmit_known, AF_INET};

    /// Facts with every field known and quiet values; tests set what they check.
    pub(crate) fn facts(ts_ns: u64, skaddr: u64, oldstate: u8, newstate: u8) -> Facts {
        Facts {
            ts_ns,
            skaddr,
            oldstate,
            newstate,
            sk_err: Some(0),
            sk_err_soft: Some(0),
            srtt_us: Some(0),
            min_rtt_us: Some(u32::MAX),
            total_retrans: Some(0),
            retransmits: Some(0),
            probes_out: Some(0),
            packets_out: Some(0),
            wmem_queued: Some(0),
            bytes_acked: Some(0),
            bytes_received: Some(0),
            bytes_retrans: Some(0),
            segs_in: Some(0),
            segs_out: Some(0),
        }
    }

    /// A `tcp_retransmit_skb` of `skaddr` in `state` with the segment's `flags`, on a kernel
    /// that reports flags, segments and `err`.
    pub(crate) fn retransmit(ts_ns: u64, skaddr: u64, state: u8, flags: u8) -> RetransmitRecord {
        RetransmitRecord {
            ts_ns,
            skaddr,
            kind: retransmit_kind::SKB,
            state,
            tcp_flags: flags,
            known: retransmit_known::TCP_FLAGS | retransmit_known::SEGS | retransmit_known::ERR,
            segs: 1,
            family: u16::from(AF_INET),
            sport: 0,
            dport: 0,
            err: 0,
            saddr: [0; 16],
            daddr: [0; 16],
        }
    }

    /// A `tcp_retransmit_synack` of a listener at `listener` for the 4-tuple given.
    pub(crate) fn synack(ts_ns: u64, listener: u64, lport: u16, rport: u16) -> RetransmitRecord {
        let mut r = retransmit(ts_ns, listener, 0, 0);
        r.kind = retransmit_kind::SYNACK;
        r.known = 0;
        r.sport = lport;
        r.dport = rport;
        r.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r
    }

    /// A reset of `skaddr` (0: without a socket) sent or received; reason unknown.
    pub(crate) fn reset(ts_ns: u64, skaddr: u64, direction: u8) -> ResetRecord {
        ResetRecord {
            ts_ns,
            skaddr,
            direction,
            state: 0,
            seg_flags: 0,
            seg_flags_known: 0,
            reason: u32::MAX,
            family: u16::from(AF_INET),
            sport: 0,
            dport: 0,
            _pad: 0,
            ctx_pid: 0,
            _pad2: 0,
            saddr: [0; 16],
            daddr: [0; 16],
        }
    }

    /// The RST this host sends for a SYN to `lport`, where nobody listens (reason 1,
    /// NO_SOCKET).
    pub(crate) fn refused(ts_ns: u64, lport: u16, rport: u16) -> ResetRecord {
        let mut r = reset(ts_ns, 0, reset_direction::SENT);
        r.seg_flags = tcpstate_common::tcp_flags::SYN;
        r.seg_flags_known = 1;
        r.reason = 1;
        r.sport = lport;
        r.dport = rport;
        r.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        r.daddr[..4].copy_from_slice(&[127, 0, 0, 2]);
        r
    }
}
