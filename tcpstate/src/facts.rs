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

/// Names of the kernel's reset reasons (`enum sk_rst_reason`, from BTF) by value, lower case
/// without the `SK_RST_REASON_` prefix (`"tcp_abort_on_close"`). Empty on kernels without it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ResetReasons {
    pub names: Vec<Option<String>>,
}

impl ResetReasons {
    /// The name of `ResetRecord::reason`; None when unknown (`u32::MAX`) or not in the enum.
    pub fn name(&self, reason: u32) -> Option<&str> {
        let i = usize::try_from(reason).ok()?;
        self.names.get(i)?.as_deref()
    }
}
