//! Shows both ends of a connection together when both are on this host.
//!
//! When a connection finishes while its other end (same 4-tuple, reversed) is still open in
//! the engine, it is held until that end finishes too, then both are emitted together, the
//! client first. Holding is bounded: a held connection is emitted alone once `wait_ns` of event
//! time has passed since it finished, or when more than `max_held` are waiting (oldest first),
//! or at the end. A connection whose other end is not being traced is never held.

use std::{
    collections::{HashMap, VecDeque},
    hash::{BuildHasherDefault, Hasher},
};

use crate::timeline::{Conn, Role};

/// How long a finished connection waits for its other end: long enough for an application
/// that closes promptly, short enough that live output does not lag visibly.
pub const DEFAULT_WAIT_NS: u64 = 1_000_000_000;
pub const DEFAULT_MAX_HELD: usize = 1024;

/// What to print: a connection alone, or both ends of one.
#[derive(Debug, Clone, Copy)]
pub struct Emit {
    /// The client when the roles say so.
    pub first: Conn,
    pub second: Option<Conn>,
}

impl Emit {
    fn single(c: Conn) -> Emit {
        Emit {
            first: c,
            second: None,
        }
    }
}

#[derive(Debug)]
struct Held {
    conn: Conn,
    deadline_ns: u64,
}

/// The keys of `Pairing::awaited` are already well-mixed tuple hashes: hashing them again
/// (SipHash) costs more than the lookup.
#[derive(Debug, Default)]
struct PreHashed(u64);

impl Hasher for PreHashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        // Only u64 keys are hashed here; fold anything else in rather than panic.
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = v;
    }
}

#[derive(Debug)]
pub struct Pairing {
    held: VecDeque<Held>,
    /// How many held connections wait for an end with this tuple hash: lets a finishing
    /// connection skip the scan when nobody waits for it.
    awaited: HashMap<u64, u32, BuildHasherDefault<PreHashed>>,
    /// No held deadline is earlier than this (it may be stale-low after a removal).
    next_deadline_ns: u64,
    wait_ns: u64,
    max_held: usize,
    paired: u64,
}

impl Pairing {
    pub fn new(wait_ns: u64, max_held: usize) -> Pairing {
        Pairing {
            held: VecDeque::new(),
            awaited: HashMap::default(),
            next_deadline_ns: u64::MAX,
            wait_ns,
            max_held: max_held.max(1),
            paired: 0,
        }
    }

    /// A finished connection. `peer_open`: its other end is still open in the engine. Taken by
    /// reference and copied once, where it is kept: a summary is a few hundred bytes.
    pub fn offer(&mut self, conn: &Conn, peer_open: bool, out: &mut Vec<Emit>) {
        if let Some(peer) = self.take_peer_of(conn) {
            self.paired += 1;
            out.push(ordered(peer, conn));
            return;
        }
        if !peer_open {
            out.push(Emit::single(*conn));
            return;
        }
        if self.held.len() >= self.max_held {
            if let Some(oldest) = self.pop_front() {
                out.push(Emit::single(oldest));
            }
        }
        *self.awaited.entry(conn.tuple_hash(true)).or_insert(0) += 1;
        let deadline_ns = conn.last_ts().saturating_add(self.wait_ns);
        self.next_deadline_ns = self.next_deadline_ns.min(deadline_ns);
        self.held.push_back(Held {
            conn: *conn,
            deadline_ns,
        });
    }

    /// Emits, alone, every held connection whose wait is over at `now_ns`.
    pub fn expire(&mut self, now_ns: u64, out: &mut Vec<Emit>) {
        if now_ns < self.next_deadline_ns {
            return;
        }
        // Deadlines follow finishing order closely but not exactly (a held connection's last
        // event may be older than a later one's), so scan rather than stop at the first.
        let mut next = u64::MAX;
        let mut i = 0;
        while i < self.held.len() {
            let deadline = self.held[i].deadline_ns;
            if deadline <= now_ns {
                if let Some(h) = self.remove_at(i) {
                    out.push(Emit::single(h.conn));
                }
            } else {
                next = next.min(deadline);
                i += 1;
            }
        }
        self.next_deadline_ns = next;
    }

    /// Emits everything still held, oldest first.
    pub fn flush(&mut self, out: &mut Vec<Emit>) {
        while let Some(c) = self.pop_front() {
            out.push(Emit::single(c));
        }
    }

    /// Pairs of connections shown together.
    pub fn paired(&self) -> u64 {
        self.paired
    }

    fn take_peer_of(&mut self, conn: &Conn) -> Option<Conn> {
        if !self.awaited.contains_key(&conn.tuple_hash(false)) {
            return None;
        }
        let i = self.held.iter().position(|h| h.conn.is_peer(conn))?;
        self.remove_at(i).map(|h| h.conn)
    }

    fn pop_front(&mut self) -> Option<Conn> {
        self.remove_at(0).map(|h| h.conn)
    }

    fn remove_at(&mut self, i: usize) -> Option<Held> {
        let h = self.held.remove(i)?;
        let key = h.conn.tuple_hash(true);
        if let Some(n) = self.awaited.get_mut(&key) {
            *n -= 1;
            if *n == 0 {
                self.awaited.remove(&key);
            }
        }
        Some(h)
    }
}

/// Client first; otherwise server last; otherwise in the order they started.
fn ordered(a: Conn, b: &Conn) -> Emit {
    let a_first = match (a.role(), b.role()) {
        (Role::Client, _) => true,
        (_, Role::Client) => false,
        (Role::Server, _) => false,
        (_, Role::Server) => true,
        _ => a.first_ts() <= b.first_ts(),
    };
    if a_first {
        Emit {
            first: a,
            second: Some(*b),
        }
    } else {
        Emit {
            first: *b,
            second: Some(a),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::timeline::{tests::dual_stack_client_closes_first, Engine};

    #[test]
    fn both_ends_of_a_dual_stack_connection_are_shown_together() {
        let mut engine = Engine::new(16);
        let mut pairing = Pairing::new(DEFAULT_WAIT_NS, DEFAULT_MAX_HELD);
        let (mut done, mut out) = (Vec::new(), Vec::new());
        for e in &dual_stack_client_closes_first() {
            engine.push(e, &mut done);
            for c in done.drain(..) {
                let peer_open = engine.has_open_peer(&c);
                pairing.offer(&c, peer_open, &mut out);
            }
        }
        pairing.flush(&mut out);
        assert_eq!(pairing.paired(), 1);
        let pair = out
            .iter()
            .find(|e| e.second.is_some())
            .unwrap_or_else(|| panic!("no pair in {out:#?}"));
        assert_eq!(pair.first.role(), Role::Client);
        assert_eq!(pair.first.family(), tcpstate_common::AF_INET);
        assert_eq!(
            pair.second.map(|c| c.family()),
            Some(tcpstate_common::AF_INET6)
        );
    }
}
