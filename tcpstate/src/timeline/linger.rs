//! Finished lifetimes held a moment before they are reported, so that what the kernel reports
//! right after the transition into CLOSE still joins them: the facts read at that transition
//! (same timestamp) and the RST a socket sends as it is closed (`tcp_disconnect()` and an
//! abortive close send it after the state change).

use std::collections::VecDeque;

use super::Conn;
use crate::facts::{Facts, ResetRecord, RetransmitRecord};

/// How long a finished lifetime waits for late joins, in event time. The RST of an abortive
/// close follows its CLOSE within microseconds, in the same system call.
pub const LINGER_NS: u64 = 2_000_000;
/// At most this many wait; beyond it the oldest is released at once (and joins nothing more).
pub const LINGER_CAPACITY: usize = 4096;

/// A finished lifetime and whether its other end was open when it finished (what pairing
/// needs to know then, not later).
#[derive(Debug, Clone, Copy)]
pub struct Held {
    pub conn: Conn,
    pub peer_open: bool,
    /// When it finished (event time).
    pub at_ns: u64,
}

#[derive(Debug, Default)]
pub struct Linger {
    held: VecDeque<Held>,
}

impl Linger {
    /// Holds a finished lifetime (copied in: it is a few hundred bytes); when full, returns the
    /// oldest, released at once.
    pub fn push(&mut self, conn: &Conn, peer_open: bool, at_ns: u64) -> Option<Held> {
        let out = if self.held.len() >= LINGER_CAPACITY {
            self.held.pop_front()
        } else {
            None
        };
        self.held.push_back(Held {
            conn: *conn,
            peer_open,
            at_ns,
        });
        out
    }

    /// The oldest held lifetime if it finished before `now_ns - LINGER_NS` (any with `None`:
    /// end of input, or an interval boundary).
    pub fn pop_due(&mut self, now_ns: Option<u64>) -> Option<Held> {
        let h = self.held.front()?;
        match now_ns {
            Some(now) if h.at_ns.saturating_add(LINGER_NS) >= now => None,
            _ => self.held.pop_front(),
        }
    }

    /// The newest held lifetime of `skaddr`: a later lifetime at a reused address is newer.
    fn find(&mut self, skaddr: u64) -> Option<&mut Conn> {
        self.held
            .iter_mut()
            .rev()
            .map(|h| &mut h.conn)
            .find(|c| c.skaddr() == skaddr)
    }

    pub fn facts(&mut self, f: &Facts) -> bool {
        self.find(f.skaddr).is_some_and(|c| c.apply_facts(f))
    }

    pub fn retransmit(&mut self, r: &RetransmitRecord) -> bool {
        match self.find(r.skaddr) {
            Some(c) => {
                c.retransmit(r);
                true
            }
            None => false,
        }
    }

    pub fn reset(&mut self, r: &ResetRecord) -> bool {
        if r.skaddr == 0 {
            return false;
        }
        match self.find(r.skaddr) {
            Some(c) => {
                c.reset(r);
                true
            }
            None => false,
        }
    }
}
