//! Follows every socket from its first to its last transition.

use tcpstate_common::{state, Event, TASK_COMM_LEN};

use super::conn::{tuple_hash, Conn, Outcome, Role};
use super::index::Index;
use super::stuck::{Deadlines, PosMap, StuckGroup, Thresholds, NOT_QUEUED, SUMMARY_GROUPS};
use crate::event::{ends_lifetime, starts_lifetime};
use crate::facts::{Facts, ResetRecord, RetransmitRecord};
use tcpstate_common::retransmit_kind;

/// SYN-ACK retransmits held for accepted sockets that do not exist yet.
const SYNACK_SLOTS: usize = 32;
/// A held SYN-ACK count older than this joins nothing: the kernel gives up a request after
/// about a minute (5 SYN-ACK retries).
const SYNACK_HOLD_NS: u64 = 120_000_000_000;

#[derive(Debug, Clone, Copy, Default)]
struct SynAckSlot {
    hash: u64,
    ts_ns: u64,
    count: u16,
}

/// `tcp_retransmit_synack` names the listener; the accepted socket is created only at the
/// final ACK, after the retransmits. They are held here per 4-tuple (bounded: the oldest entry
/// makes room) until the child's first transition takes them.
#[derive(Debug, Default)]
struct SynAcks {
    slots: [SynAckSlot; SYNACK_SLOTS],
    live: usize,
    dropped: u64,
}

impl SynAcks {
    fn add(&mut self, hash: u64, ts_ns: u64) {
        if let Some(s) = self
            .slots
            .iter_mut()
            .find(|s| s.count > 0 && s.hash == hash)
        {
            s.count = s.count.saturating_add(1);
            s.ts_ns = ts_ns;
            return;
        }
        let (i, _) = self
            .slots
            .iter()
            .enumerate()
            .min_by_key(|(_, s)| if s.count == 0 { 0 } else { s.ts_ns.max(1) })
            .unwrap_or((0, &self.slots[0]));
        if self.slots[i].count == 0 {
            self.live += 1;
        } else {
            self.dropped += 1;
        }
        self.slots[i] = SynAckSlot {
            hash,
            ts_ns,
            count: 1,
        };
    }

    fn take(&mut self, hash: u64, now_ns: u64) -> u16 {
        if self.live == 0 {
            return 0;
        }
        let Some(s) = self
            .slots
            .iter_mut()
            .find(|s| s.count > 0 && s.hash == hash)
        else {
            return 0;
        };
        let n = if now_ns.saturating_sub(s.ts_ns) <= SYNACK_HOLD_NS {
            s.count
        } else {
            0
        };
        s.count = 0;
        self.live -= 1;
        n
    }
}

/// Default bound on tracked sockets.
pub const DEFAULT_MAX_TRACKED: usize = 65536;

const NIL: u32 = u32::MAX;

/// A slab entry: a connection plus its links in the creation-order list (or, when free, the
/// next free slot in `next`).
#[derive(Debug)]
struct Slot {
    conn: Conn,
    prev: u32,
    next: u32,
    /// Index of this slot's stuck deadline in `Engine::deadlines`, or NOT_QUEUED.
    heap_pos: u32,
    /// The state this socket was reported stuck in and is still in (0: not stuck).
    stuck: u8,
}

/// The slots as the deadline heap's position map.
struct SlotPos<'a>(&'a mut [Slot]);

impl PosMap for SlotPos<'_> {
    fn get(&self, slot: u32) -> u32 {
        self.0[slot as usize].heap_pos
    }
    fn put(&mut self, slot: u32, pos: u32) {
        self.0[slot as usize].heap_pos = pos;
    }
}

/// What the engine learnt from one event, for per-transition output.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// When the socket entered the state this event leaves; `None` for the first event of a
    /// lifetime, a socket first seen mid-life, or after missed transitions.
    pub since_ns: Option<u64>,
    /// The best known owner of the socket after this event (0: unknown).
    pub owner_pid: u32,
    pub owner_comm: [u8; TASK_COMM_LEN],
    /// How that owner was learnt (`owner_source` value).
    pub owner_source: u8,
    /// The socket's owner's cgroup v2 id and its network namespace inode (0: unknown).
    pub cgroup_id: u64,
    pub netns: u32,
}

/// Turns events, in timestamp order, into finished [`Conn`]s.
///
/// Sockets are keyed by their kernel address, and a lifetime runs from a transition out of
/// CLOSE (or a child's LISTEN -> SYN_RECV) to the next transition into CLOSE; an address is
/// reused by later sockets. A lifetime-starting event for an address whose lifetime is still
/// open ends the old one as [`Outcome::Incomplete`] and starts a new one. An event for an
/// unknown address that does not start a lifetime starts a partial one (first seen mid-life).
///
/// At most `max_tracked` lifetimes are open at once. A new one beyond that evicts the oldest
/// (by creation, O(1)): the evicted lifetime is finished with [`Outcome::Evicted`], its phases
/// cut at the evicting event, so it is both reported and counted.
///
/// CLOSE -> CLOSE events carry no lifetime and are ignored (counted in [`Engine::ignored`]).
#[derive(Debug)]
pub struct Engine {
    slots: Vec<Slot>,
    free: u32,
    /// Oldest and newest open lifetime.
    head: u32,
    tail: u32,
    len: usize,
    max_tracked: usize,
    by_addr: Index,
    /// Open lifetimes whose two ports are known, by (family, local end, remote end): finds a
    /// connection's other end when both are on this host.
    by_tuple: Index,
    next_id: u32,
    now_ns: u64,
    events: u64,
    evictions: u64,
    superseded: u64,
    ignored: u64,
    synacks: SynAcks,
    stuck: Thresholds,
    /// When each open socket in a watched state crosses its threshold: one entry per slot.
    deadlines: Deadlines,
    /// Sockets reported stuck that are still in that state.
    stuck_now: usize,
}

impl Engine {
    /// `max_tracked` is clamped to at least 1.
    pub fn new(max_tracked: usize) -> Engine {
        Engine {
            slots: Vec::new(),
            free: NIL,
            head: NIL,
            tail: NIL,
            len: 0,
            max_tracked: max_tracked.clamp(1, NIL as usize - 1),
            by_addr: Index::new(),
            by_tuple: Index::new(),
            next_id: 0,
            now_ns: 0,
            events: 0,
            evictions: 0,
            superseded: 0,
            ignored: 0,
            synacks: SynAcks::default(),
            stuck: Thresholds::default(),
            deadlines: Deadlines::default(),
            stuck_now: 0,
        }
    }

    /// Which states are watched for stuck sockets, and for how long (before the first event).
    pub fn set_stuck(&mut self, t: Thresholds) {
        self.stuck = t;
    }

    /// The next socket that crossed its stuck threshold before `now_ns`, as (slot, crossing
    /// time); it is reported once (until it enters another watched state). Pop until None.
    pub fn pop_stuck(&mut self, now_ns: u64) -> Option<(u32, u64)> {
        let (deadline, s) = self.deadlines.peek().filter(|&(d, _)| d < now_ns)?;
        self.deadlines.remove(s, &mut SlotPos(&mut self.slots));
        let slot = &mut self.slots[s as usize];
        slot.stuck = slot.conn.state();
        self.stuck_now += 1;
        Some((s, deadline))
    }

    /// The open lifetime in `slot` (from [`Engine::pop_stuck`]).
    pub fn conn(&self, slot: u32) -> &Conn {
        &self.slots[slot as usize].conn
    }

    /// Sockets reported stuck that are still in that state.
    pub fn stuck_now(&self) -> usize {
        self.stuck_now
    }

    /// Stuck deadlines queued (at most one per open socket).
    pub fn stuck_queued(&self) -> usize {
        self.deadlines.len()
    }

    /// The sockets stuck now, grouped by state and owner, the largest groups first (at most
    /// SUMMARY_GROUPS) into `out`. Walks the table only when something is stuck (summaries,
    /// not ticks, call it).
    pub fn stuck_groups(&self, out: &mut Vec<StuckGroup>) {
        out.clear();
        if self.stuck_now == 0 {
            return;
        }
        let mut all: Vec<StuckGroup> = Vec::with_capacity(self.stuck_now);
        let mut at = self.head;
        while let Some(slot) = self.slots.get(at as usize) {
            at = slot.next;
            if slot.stuck == 0 {
                continue;
            }
            let (pid, comm) = slot.conn.owner().unwrap_or((0, &[]));
            let mut c = [0u8; TASK_COMM_LEN];
            let n = comm.len().min(TASK_COMM_LEN);
            c[..n].copy_from_slice(&comm[..n]);
            all.push(StuckGroup {
                state: slot.stuck,
                pid,
                comm: c,
                count: 1,
                oldest_since_ns: slot.conn.state_ts(),
            });
        }
        all.sort_unstable_by_key(|g| (g.state, g.pid, g.comm, g.oldest_since_ns));
        for g in all {
            match out.last_mut() {
                Some(l) if (l.state, l.pid, l.comm) == (g.state, g.pid, g.comm) => l.count += 1,
                _ => out.push(g),
            }
        }
        out.sort_by_key(|g| {
            (
                std::cmp::Reverse(g.count),
                g.oldest_since_ns,
                g.state,
                g.pid,
            )
        });
        out.truncate(SUMMARY_GROUPS);
    }

    /// Queues, moves or drops `s`'s stuck deadline after an event changed it.
    fn arm(&mut self, s: u32) {
        let slot = &mut self.slots[s as usize];
        let st = slot.conn.state();
        if slot.stuck != 0 {
            if slot.stuck == st {
                // Still in the state it was reported in: once is enough.
                return;
            }
            slot.stuck = 0;
            self.stuck_now -= 1;
        }
        let deadline = self
            .stuck
            .get(st)
            .map(|t| slot.conn.state_ts().saturating_add(t));
        let pos = &mut SlotPos(&mut self.slots);
        match deadline {
            Some(d) => self.deadlines.set(s, d, pos),
            None => self.deadlines.remove(s, pos),
        }
    }

    /// Feeds one event. Lifetimes that end (closed, superseded, evicted) are appended to `done`.
    pub fn push(&mut self, ev: &Event, done: &mut Vec<Conn>) -> Step {
        self.events += 1;
        self.now_ns = self.now_ns.max(ev.ts_ns);
        if ev.oldstate == state::CLOSE && ev.newstate == state::CLOSE {
            self.ignored += 1;
            return Step {
                since_ns: None,
                owner_pid: ev.owner_pid,
                owner_comm: ev.owner_comm,
                owner_source: ev.owner_source,
                cgroup_id: ev.cgroup_id,
                netns: ev.netns,
            };
        }
        let starts = starts_lifetime(ev);
        let ends = ends_lifetime(ev);
        let (slot, since) = match self.find(ev.skaddr) {
            Some(s) if !starts => {
                let since = self.update(s, ev);
                if !ends {
                    self.arm(s);
                }
                (s, since)
            }
            found => {
                if let Some(s) = found {
                    self.superseded += 1;
                    self.slots[s as usize].conn.supersede();
                    self.remove(s, done);
                }
                let mut conn = Conn::start(ev, self.next_id, !starts);
                if conn.role() == Role::Server && conn.full_tuple() {
                    let n = self.synacks.take(conn.tuple_hash(false), ev.ts_ns);
                    if n > 0 {
                        conn.synack_retransmits(n);
                    }
                }
                self.next_id = self.next_id.wrapping_add(1);
                if ends {
                    // Seen only at its very end: never enters the table.
                    let mut conn = conn;
                    conn.close(ev, None);
                    done.push(conn);
                    return step_of(&conn, None);
                }
                let s = self.insert(conn, done);
                self.arm(s);
                (s, None)
            }
        };
        let step = step_of(&self.slots[slot as usize].conn, since);
        if ends {
            self.slots[slot as usize].conn.close(ev, since);
            self.remove(slot, done);
        }
        step
    }

    /// Joins facts to the open lifetime they were read from. False: none open matches.
    pub fn facts(&mut self, f: &Facts) -> bool {
        match self.find(f.skaddr) {
            Some(s) => self.slots[s as usize].conn.apply_facts(f),
            None => false,
        }
    }

    /// Joins a retransmission: to the open lifetime of its socket, or (a SYN-ACK, whose socket
    /// is the listener) held by 4-tuple for the accepted socket to come. False: not joined.
    pub fn retransmit(&mut self, r: &RetransmitRecord) -> bool {
        self.now_ns = self.now_ns.max(r.ts_ns);
        if r.kind == retransmit_kind::SYNACK {
            // Family as the record carries it (u16 on the wire, AF_* values fit a u8).
            let h = tuple_hash(r.family as u8, &r.saddr, r.sport, &r.daddr, r.dport);
            self.synacks.add(h, r.ts_ns);
            return true;
        }
        match self.find(r.skaddr) {
            Some(s) => {
                self.slots[s as usize].conn.retransmit(r);
                true
            }
            None => false,
        }
    }

    /// Joins a reset to the open lifetime of its socket. False: none open matches.
    pub fn reset(&mut self, r: &ResetRecord) -> bool {
        self.now_ns = self.now_ns.max(r.ts_ns);
        if r.skaddr == 0 {
            return false;
        }
        match self.find(r.skaddr) {
            Some(s) => {
                self.slots[s as usize].conn.reset(r);
                true
            }
            None => false,
        }
    }

    /// SYN-ACK counts that had to make room for newer ones before their socket appeared.
    pub fn synacks_dropped(&self) -> u64 {
        self.synacks.dropped
    }

    /// Ends every open lifetime as [`Outcome::Open`] at `now_ns` (or the last event, if later),
    /// oldest first, and empties the engine.
    pub fn finish(&mut self, now_ns: u64, done: &mut Vec<Conn>) {
        let now = now_ns.max(self.now_ns);
        while self.head != NIL {
            let head = self.head;
            self.slots[head as usize].conn.cut(now, Outcome::Open);
            self.remove(head, done);
        }
    }

    /// Whether `conn`'s other end (same host) is an open lifetime.
    pub fn has_open_peer(&self, conn: &Conn) -> bool {
        if !conn.full_tuple() {
            return false;
        }
        let slots = &self.slots;
        self.by_tuple
            .find(conn.tuple_hash(true), |s| {
                conn.is_peer(&slots[s as usize].conn)
            })
            .is_some()
    }

    /// Open lifetimes, oldest first.
    pub fn open(&self) -> impl Iterator<Item = &Conn> + '_ {
        let mut at = self.head;
        std::iter::from_fn(move || {
            let slot = self.slots.get(at as usize)?;
            at = slot.next;
            Some(&slot.conn)
        })
    }

    pub fn open_count(&self) -> usize {
        self.len
    }
    pub fn max_tracked(&self) -> usize {
        self.max_tracked
    }
    /// Events fed so far.
    pub fn events(&self) -> u64 {
        self.events
    }
    pub fn evictions(&self) -> u64 {
        self.evictions
    }
    /// Lifetimes ended because a new one started at their address.
    pub fn superseded(&self) -> u64 {
        self.superseded
    }
    /// CLOSE -> CLOSE events.
    pub fn ignored(&self) -> u64 {
        self.ignored
    }
    /// The latest event time seen.
    pub fn now_ns(&self) -> u64 {
        self.now_ns
    }

    fn find(&self, skaddr: u64) -> Option<u32> {
        let slots = &self.slots;
        self.by_addr
            .find(skaddr, |s| slots[s as usize].conn.skaddr() == skaddr)
    }

    fn update(&mut self, s: u32, ev: &Event) -> Option<u64> {
        let i = s as usize;
        if self.slots[i].conn.tuple_changes(ev) {
            self.unindex_tuple(s);
            self.slots[i].conn.take_tuple(ev);
            self.index_tuple(s);
        }
        self.slots[i].conn.apply(ev)
    }

    fn insert(&mut self, conn: Conn, done: &mut Vec<Conn>) -> u32 {
        if self.len >= self.max_tracked {
            self.evictions += 1;
            let head = self.head;
            self.slots[head as usize]
                .conn
                .cut(self.now_ns, Outcome::Evicted);
            self.remove(head, done);
        }
        let slot = Slot {
            conn,
            prev: self.tail,
            next: NIL,
            heap_pos: NOT_QUEUED,
            stuck: 0,
        };
        let s = if self.free != NIL {
            let s = self.free;
            self.free = self.slots[s as usize].next;
            self.slots[s as usize] = slot;
            s
        } else {
            if self.slots.len() == self.slots.capacity() {
                // Grow by doubling but never past the bound, so a full table holds no slack.
                let want = (self.slots.len() * 2).max(16).min(self.max_tracked);
                self.slots
                    .reserve_exact(want.saturating_sub(self.slots.len()).max(1));
                // At most one deadline per slot: the heap never grows on the event path.
                self.deadlines.reserve(self.slots.capacity());
            }
            self.slots.push(slot);
            (self.slots.len() - 1) as u32
        };
        match self.tail {
            NIL => self.head = s,
            t => self.slots[t as usize].next = s,
        }
        self.tail = s;
        self.len += 1;
        let slots = &self.slots;
        self.by_addr
            .insert(conn.skaddr(), s, |x| slots[x as usize].conn.skaddr());
        self.index_tuple(s);
        s
    }

    /// Takes the lifetime in `s` out of the table and appends it to `done` (copied once: it is
    /// finished in place first, by the caller).
    fn remove(&mut self, s: u32, done: &mut Vec<Conn>) {
        let i = s as usize;
        let (prev, next) = (self.slots[i].prev, self.slots[i].next);
        match prev {
            NIL => self.head = next,
            p => self.slots[p as usize].next = next,
        }
        match next {
            NIL => self.tail = prev,
            n => self.slots[n as usize].prev = prev,
        }
        self.deadlines.remove(s, &mut SlotPos(&mut self.slots));
        if self.slots[i].stuck != 0 {
            self.slots[i].stuck = 0;
            self.stuck_now -= 1;
        }
        let skaddr = self.slots[i].conn.skaddr();
        let slots = &self.slots;
        self.by_addr
            .remove(skaddr, s, |x| slots[x as usize].conn.skaddr());
        self.unindex_tuple(s);
        done.push(self.slots[i].conn);
        self.slots[i].prev = NIL;
        self.slots[i].next = self.free;
        self.free = s;
        self.len -= 1;
    }

    fn index_tuple(&mut self, s: u32) {
        let conn = &self.slots[s as usize].conn;
        if conn.full_tuple() {
            let slots = &self.slots;
            self.by_tuple.insert(conn.tuple_hash(false), s, |x| {
                slots[x as usize].conn.tuple_hash(false)
            });
        }
    }

    fn unindex_tuple(&mut self, s: u32) {
        let conn = &self.slots[s as usize].conn;
        if conn.full_tuple() {
            let slots = &self.slots;
            self.by_tuple.remove(conn.tuple_hash(false), s, |x| {
                slots[x as usize].conn.tuple_hash(false)
            });
        }
    }

    /// Bytes the table holds per tracked connection when full: the slab entry plus both index
    /// buckets and the stuck deadline heap, counted at their real occupancy.
    pub fn bytes_per_connection(&self) -> usize {
        let per_slot = std::mem::size_of::<Slot>();
        let index_bytes = (self.by_addr.buckets() + self.by_tuple.buckets()) * 4;
        per_slot + (index_bytes + self.deadlines.bytes()) / self.len.max(1)
    }
}

fn step_of(conn: &Conn, since: Option<u64>) -> Step {
    let (owner_pid, owner_comm) = match conn.owner() {
        Some((pid, comm)) => {
            let mut c = [0u8; TASK_COMM_LEN];
            c.copy_from_slice(comm);
            (pid, c)
        }
        None => (0, [0; TASK_COMM_LEN]),
    };
    Step {
        since_ns: since,
        owner_pid,
        owner_comm,
        owner_source: conn.owner_source(),
        cgroup_id: conn.cgroup_id(),
        netns: conn.netns(),
    }
}
