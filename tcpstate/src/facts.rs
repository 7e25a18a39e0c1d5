//! Socket facts: what the kernel knew about a socket at the transitions that decide how its
//! connection is described (what `ss -ti` would have shown at that moment).
//!
//! The kernel program copies raw byte ranges of the socket ([`tcpstate_common::FactsRecord`]);
//! `kernel::facts` decodes them with the offsets resolved from BTF into [`Facts`], the form the
//! pure pipeline and recordings use. Every value is `None` when the running kernel lacks the
//! field or the copy failed: unknown, never a guess.

pub use tcpstate_common::{ResetRecord, RetransmitRecord};

use crate::le::{Get, Put};

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

/// Bytes of [`PackedFacts`]: also the payload of a recording's facts record.
pub const PACKED_FACTS_LEN: usize = 84;

/// [`Facts`] in 84 little-endian bytes instead of 144: how the reorder window holds them and
/// how a recording stores them (`docs/record-format.md`, kind 4).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PackedFacts(pub [u8; PACKED_FACTS_LEN]);

impl PackedFacts {
    pub fn pack(f: &Facts) -> PackedFacts {
        let mut out = [0u8; PACKED_FACTS_LEN];
        pack_into(f, &mut out);
        PackedFacts(out)
    }

    pub fn unpack(&self) -> Facts {
        unpack_from(&self.0)
    }

    pub fn ts_ns(&self) -> u64 {
        let mut w = [0u8; 8];
        w.copy_from_slice(&self.0[..8]);
        u64::from_le_bytes(w)
    }
}

/// The packed form: `ts_ns`, `skaddr`, `oldstate`, `newstate`, a `u16` mask of the values
/// present (bit i: the i-th value below), then every value, 0 where absent.
fn pack_into(f: &Facts, out: &mut [u8]) {
    let opt = |v: Option<u64>, bit: u16, mask: &mut u16| {
        if v.is_some() {
            *mask |= 1 << bit;
        }
        v.unwrap_or(0)
    };
    let mut mask = 0u16;
    let sk_err = opt(f.sk_err.map(|v| v as u32 as u64), 0, &mut mask) as u32;
    let sk_err_soft = opt(f.sk_err_soft.map(|v| v as u32 as u64), 1, &mut mask) as u32;
    let srtt = opt(f.srtt_us.map(u64::from), 2, &mut mask) as u32;
    let min_rtt = opt(f.min_rtt_us.map(u64::from), 3, &mut mask) as u32;
    let total = opt(f.total_retrans.map(u64::from), 4, &mut mask) as u32;
    let retransmits = opt(f.retransmits.map(u64::from), 5, &mut mask) as u8;
    let probes = opt(f.probes_out.map(u64::from), 6, &mut mask) as u8;
    let packets = opt(f.packets_out.map(u64::from), 7, &mut mask) as u32;
    let wmem = opt(f.wmem_queued.map(u64::from), 8, &mut mask) as u32;
    let acked = opt(f.bytes_acked, 9, &mut mask);
    let received = opt(f.bytes_received, 10, &mut mask);
    let retrans = opt(f.bytes_retrans, 11, &mut mask);
    let segs_in = opt(f.segs_in.map(u64::from), 12, &mut mask) as u32;
    let segs_out = opt(f.segs_out.map(u64::from), 13, &mut mask) as u32;
    let mut p = Put { buf: out, pos: 0 };
    p.bytes(&f.ts_ns.to_le_bytes());
    p.bytes(&f.skaddr.to_le_bytes());
    p.bytes(&[f.oldstate, f.newstate]);
    p.bytes(&mask.to_le_bytes());
    for v in [sk_err, sk_err_soft, srtt, min_rtt, total] {
        p.bytes(&v.to_le_bytes());
    }
    p.bytes(&[retransmits, probes, 0, 0]);
    for v in [packets, wmem] {
        p.bytes(&v.to_le_bytes());
    }
    for v in [acked, received, retrans] {
        p.bytes(&v.to_le_bytes());
    }
    for v in [segs_in, segs_out] {
        p.bytes(&v.to_le_bytes());
    }
}

fn unpack_from(b: &[u8]) -> Facts {
    let mut g = Get { buf: b, pos: 0 };
    let ts_ns = g.u64();
    let skaddr = g.u64();
    let oldstate = g.u8();
    let newstate = g.u8();
    let mask = g.u16();
    let has = |bit: u16| mask & (1 << bit) != 0;
    let (sk_err, sk_err_soft, srtt, min_rtt, total) = (g.i32(), g.i32(), g.u32(), g.u32(), g.u32());
    let (retransmits, probes, _, _) = (g.u8(), g.u8(), g.u8(), g.u8());
    let (packets, wmem) = (g.u32(), g.u32());
    let (acked, received, retrans) = (g.u64(), g.u64(), g.u64());
    let (segs_in, segs_out) = (g.u32(), g.u32());
    Facts {
        ts_ns,
        skaddr,
        oldstate,
        newstate,
        sk_err: has(0).then_some(sk_err),
        sk_err_soft: has(1).then_some(sk_err_soft),
        srtt_us: has(2).then_some(srtt),
        min_rtt_us: has(3).then_some(min_rtt),
        total_retrans: has(4).then_some(total),
        retransmits: has(5).then_some(retransmits),
        probes_out: has(6).then_some(probes),
        packets_out: has(7).then_some(packets),
        wmem_queued: has(8).then_some(wmem),
        bytes_acked: has(9).then_some(acked),
        bytes_received: has(10).then_some(received),
        bytes_retrans: has(11).then_some(retrans),
        segs_in: has(12).then_some(segs_in),
        segs_out: has(13).then_some(segs_out),
    }
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
