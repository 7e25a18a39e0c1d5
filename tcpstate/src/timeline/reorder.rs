//! Puts events (and the facts, retransmits and resets joined to them) back in timestamp order.
//!
//! Events of different CPUs reach user space slightly out of order (microseconds). The stage
//! holds each event until the event clock (the newest event time or tick seen) has moved a
//! window past it, then releases events in timestamp order, ties in arrival order. It is driven
//! only by the timestamps it is given, never by a clock of its own, so a replay releases the same
//! events at the same points as the live trace did.

use std::collections::VecDeque;

use crate::event::Event;
use crate::facts::{Facts, PackedFacts, ResetRecord, RetransmitRecord};

/// Anything with a timestamp that the engine takes, held by value (no allocation per item).
/// Facts are held packed (84 bytes instead of 144), so an item is no larger than an event plus
/// its tag: the window moves these around on every insertion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Item {
    Event(Event),
    Facts(PackedFacts),
    Retransmit(RetransmitRecord),
    Reset(ResetRecord),
}

impl Item {
    pub fn ts_ns(&self) -> u64 {
        match self {
            Item::Event(e) => e.ts_ns,
            Item::Facts(f) => f.ts_ns(),
            Item::Retransmit(r) => r.ts_ns,
            Item::Reset(r) => r.ts_ns,
        }
    }
}

impl From<Facts> for Item {
    fn from(f: Facts) -> Item {
        Item::Facts(PackedFacts::pack(&f))
    }
}

impl From<Event> for Item {
    fn from(e: Event) -> Item {
        Item::Event(e)
    }
}

/// Default reorder window: far above cross-CPU skew, far below what a reader notices.
pub const DEFAULT_WINDOW_NS: u64 = 10_000_000;
/// Default bound on held events. At the default window it only binds above ~1.6 M events/s;
/// then the oldest are released early.
pub const DEFAULT_CAPACITY: usize = 16384;

#[derive(Debug)]
pub struct Reorder {
    /// Sorted by timestamp; equal timestamps in arrival order.
    held: VecDeque<Item>,
    window_ns: u64,
    capacity: usize,
    /// The newest event time or tick seen.
    clock_ns: u64,
    /// The timestamp of the last released event.
    released_ns: u64,
    late: u64,
    forced: u64,
}

impl Reorder {
    /// `capacity` is clamped to at least 1.
    pub fn new(window_ns: u64, capacity: usize) -> Reorder {
        Reorder {
            held: VecDeque::new(),
            window_ns,
            capacity: capacity.max(1),
            clock_ns: 0,
            released_ns: 0,
            late: 0,
            forced: 0,
        }
    }

    /// Ties keep arrival order, so facts stay right behind the event they belong to.
    pub fn push(&mut self, item: impl Into<Item>) {
        let ev = item.into();
        let ts = ev.ts_ns();
        self.clock_ns = self.clock_ns.max(ts);
        if ts < self.released_ns {
            self.late += 1;
        }
        match self.held.back() {
            Some(last) if last.ts_ns() > ts => {
                let at = self.held.partition_point(|e| e.ts_ns() <= ts);
                self.held.insert(at, ev);
            }
            _ => self.held.push_back(ev),
        }
    }

    /// Moves the event clock to `now_ns` (a tick: nothing older is still to come).
    pub fn advance(&mut self, now_ns: u64) {
        self.clock_ns = self.clock_ns.max(now_ns);
    }

    /// Everything strictly older than this has been or may now be released.
    pub fn watermark(&self) -> u64 {
        self.clock_ns.saturating_sub(self.window_ns)
    }

    /// The next event that is due: older than the watermark, or the oldest held when over
    /// capacity.
    pub fn pop_ready(&mut self) -> Option<Item> {
        let due = match self.held.front() {
            Some(e) => e.ts_ns() < self.watermark() || self.held.len() > self.capacity,
            None => false,
        };
        if !due {
            return None;
        }
        if self.held.len() > self.capacity {
            self.forced += 1;
        }
        self.release()
    }

    /// The oldest held event regardless of the window (end of input).
    pub fn pop_any(&mut self) -> Option<Item> {
        self.release()
    }

    fn release(&mut self) -> Option<Item> {
        let ev = self.held.pop_front()?;
        self.released_ns = self.released_ns.max(ev.ts_ns());
        Some(ev)
    }

    /// The newest event time or tick seen.
    pub fn clock_ns(&self) -> u64 {
        self.clock_ns
    }

    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.held.len()
    }
    /// Events that arrived after a newer event had already been released: the window was too
    /// short for them, and they reached the engine out of order.
    pub fn late(&self) -> u64 {
        self.late
    }
    /// Events released before their window passed because too many were held.
    pub fn forced(&self) -> u64 {
        self.forced
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::ev;

    fn at(ts: u64, tag: u64) -> Event {
        ev(ts, tag, 1, 1, 1, 1)
    }

    fn skaddr(i: &Item) -> u64 {
        match i {
            Item::Event(e) => e.skaddr,
            Item::Facts(f) => f.unpack().skaddr,
            Item::Retransmit(r) => r.skaddr,
            Item::Reset(r) => r.skaddr,
        }
    }

    fn drain(r: &mut Reorder) -> Vec<(u64, u64)> {
        std::iter::from_fn(|| r.pop_ready())
            .map(|e| (e.ts_ns(), skaddr(&e)))
            .collect()
    }

    #[test]
    fn facts_stay_behind_their_event_and_other_kinds_are_ordered() {
        let mut r = Reorder::new(10, 100);
        let f = Facts {
            ts_ns: 100,
            skaddr: 1,
            ..Facts::default()
        };
        let rst = crate::facts::tests::reset(90, 7, 1);
        r.push(at(100, 1));
        r.push(f);
        r.push(Item::Reset(rst));
        r.advance(200);
        let got: Vec<Item> = std::iter::from_fn(|| r.pop_ready()).collect();
        assert_eq!(got.len(), 3);
        assert!(matches!(got[0], Item::Reset(_)));
        assert!(matches!(got[1], Item::Event(_)));
        assert!(matches!(got[2], Item::Facts(_)));
    }

    #[test]
    fn releases_in_order_once_the_window_passes() {
        let mut r = Reorder::new(10, 100);
        r.push(at(100, 1));
        r.push(at(95, 2));
        r.push(at(100, 3));
        r.push(at(97, 4));
        assert_eq!(drain(&mut r), vec![]);
        r.push(at(108, 5));
        // Watermark 98: only 95 and 97 are strictly older.
        assert_eq!(drain(&mut r), vec![(95, 2), (97, 4)]);
        r.advance(111);
        // Ties keep arrival order.
        assert_eq!(drain(&mut r), vec![(100, 1), (100, 3)]);
        assert_eq!(r.held(), 1);
        assert_eq!(r.pop_any().map(|e| skaddr(&e)), Some(5));
        assert_eq!(r.pop_any(), None);
        assert_eq!(r.late(), 0);
    }

    #[test]
    fn counts_late_events() {
        let mut r = Reorder::new(10, 100);
        r.push(at(100, 1));
        r.advance(200);
        assert_eq!(drain(&mut r), vec![(100, 1)]);
        r.push(at(50, 2));
        assert_eq!(drain(&mut r), vec![(50, 2)]);
        assert_eq!(r.late(), 1);
    }

    #[test]
    fn bounded() {
        let mut r = Reorder::new(1_000, 3);
        for ts in [5, 4, 3, 2] {
            r.push(at(ts, ts));
        }
        assert_eq!(drain(&mut r), vec![(2, 2)]);
        assert_eq!(r.forced(), 1);
        assert_eq!(r.held(), 3);
    }
}
