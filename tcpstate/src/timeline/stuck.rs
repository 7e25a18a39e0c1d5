//! Stuck sockets: an open socket that stays in a watched state longer than that state's
//! threshold is reported once, when it crosses it.
//!
//! Deadlines live in an indexed binary min-heap with at most one entry per engine slot: a state
//! change moves or removes the socket's entry in O(log n), a tick pops only the deadlines that
//! are due, and the heap never holds more entries than the engine holds sockets (no scan of the
//! table per tick, no stale entries piling up, no allocation once the slots exist).

use tcpstate_common::state;

use crate::event::state_name;

/// The states that can be watched, in the order they are documented. SYN_RECV cannot: a
/// half-open handshake lives in a request socket, which makes no state change.
pub const WATCHED: [u8; 6] = [
    state::SYN_SENT,
    state::CLOSE_WAIT,
    state::FIN_WAIT1,
    state::FIN_WAIT2,
    state::CLOSING,
    state::LAST_ACK,
];

const MS: u64 = 1_000_000;
const SEC: u64 = 1_000 * MS;

/// Per-state thresholds; `None` means the state is not watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Thresholds([Option<u64>; 16]);

impl Default for Thresholds {
    /// What an operator would call abnormal:
    /// - SYN_SENT 5 s: the SYN went out three times (at 0, 1 and 3 s; the next retry is at 7 s),
    ///   and many clients give up connecting about then;
    /// - CLOSE_WAIT 30 s: the peer closed half a minute ago and the application still has not;
    /// - FIN_WAIT2 60 s: an orphaned socket leaves it after tcp_fin_timeout (60 s by default),
    ///   so past that only a half-closed socket (shutdown(SHUT_WR)) whose peer never closes is
    ///   still there;
    /// - FIN_WAIT1, CLOSING, LAST_ACK 10 s: a FIN not acknowledged for that long has been
    ///   retransmitted several times.
    fn default() -> Self {
        let mut t = Thresholds::off();
        t.set(state::SYN_SENT, Some(5 * SEC));
        t.set(state::CLOSE_WAIT, Some(30 * SEC));
        t.set(state::FIN_WAIT2, Some(60 * SEC));
        t.set(state::FIN_WAIT1, Some(10 * SEC));
        t.set(state::CLOSING, Some(10 * SEC));
        t.set(state::LAST_ACK, Some(10 * SEC));
        t
    }
}

impl Thresholds {
    /// Nothing watched (`--stuck off`).
    pub const fn off() -> Self {
        Thresholds([None; 16])
    }

    /// The threshold of `state`, if it is watched.
    pub fn get(&self, s: u8) -> Option<u64> {
        self.0.get(usize::from(s)).copied().flatten()
    }

    fn set(&mut self, s: u8, ns: Option<u64>) {
        if let Some(v) = self.0.get_mut(usize::from(s)) {
            *v = ns;
        }
    }

    pub fn any(&self) -> bool {
        self.0.iter().any(Option::is_some)
    }

    /// The defaults with each `--stuck` value applied in order.
    pub fn from_specs(specs: &[Spec]) -> Self {
        let mut t = Thresholds::default();
        for s in specs {
            match *s {
                Spec::Off => t = Thresholds::off(),
                Spec::All(ns) => {
                    for w in WATCHED {
                        t.set(w, Some(ns));
                    }
                }
                Spec::One(st, ns) => t.set(st, ns),
            }
        }
        t
    }
}

/// One `--stuck` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Spec {
    /// `off`: nothing watched.
    Off,
    /// `MS`: every watched state.
    All(u64),
    /// `STATE=MS` or `STATE=off`.
    One(u8, Option<u64>),
}

fn parse_ms(s: &str) -> Result<u64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v < 1e12 => Ok((v * 1e6).round() as u64),
        _ => Err(format!("{s:?} is not a positive number of milliseconds")),
    }
}

/// Parses `off`, `MS` or `STATE=MS` / `STATE=off` (state names as printed, any case).
pub fn parse_spec(s: &str) -> Result<Spec, String> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("off") {
        return Ok(Spec::Off);
    }
    let Some((name, v)) = t.split_once('=') else {
        return parse_ms(t).map(Spec::All);
    };
    let name = name.trim().replace('-', "_");
    let st = WATCHED
        .into_iter()
        .find(|&w| state_name(w).eq_ignore_ascii_case(&name))
        .ok_or_else(|| {
            let names: Vec<&str> = WATCHED.iter().map(|&w| state_name(w)).collect();
            format!(
                "{name:?} is not a watched state (one of {})",
                names.join(", ")
            )
        })?;
    if v.trim().eq_ignore_ascii_case("off") {
        return Ok(Spec::One(st, None));
    }
    parse_ms(v).map(|ns| Spec::One(st, Some(ns)))
}

pub(crate) const NOT_QUEUED: u32 = u32::MAX;

/// An indexed min-heap of (deadline, slot). Each slot's position is kept by the caller (in
/// `pos`), so a slot's entry can be moved or removed without searching.
#[derive(Debug, Default)]
pub(crate) struct Deadlines {
    heap: Vec<(u64, u32)>,
}

impl Deadlines {
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Bytes held for entries.
    pub fn bytes(&self) -> usize {
        self.heap.capacity() * std::mem::size_of::<(u64, u32)>()
    }

    pub fn reserve(&mut self, n: usize) {
        self.heap
            .reserve_exact(n.saturating_sub(self.heap.capacity()));
    }

    pub fn peek(&self) -> Option<(u64, u32)> {
        self.heap.first().copied()
    }

    /// Puts `slot` at `deadline`, wherever it was. `pos[slot]` is its heap index or NOT_QUEUED.
    pub fn set(&mut self, slot: u32, deadline: u64, pos: &mut impl PosMap) {
        match pos.get(slot) {
            NOT_QUEUED => {
                let i = self.heap.len();
                self.heap.push((deadline, slot));
                pos.put(slot, i as u32);
                self.up(i, pos);
            }
            i => {
                let i = i as usize;
                let old = self.heap[i].0;
                self.heap[i].0 = deadline;
                if deadline < old {
                    self.up(i, pos);
                } else {
                    self.down(i, pos);
                }
            }
        }
    }

    /// Takes `slot` out, if it is queued.
    pub fn remove(&mut self, slot: u32, pos: &mut impl PosMap) {
        let i = pos.get(slot);
        if i == NOT_QUEUED {
            return;
        }
        let i = i as usize;
        pos.put(slot, NOT_QUEUED);
        let last = self.heap.len() - 1;
        if i != last {
            self.heap.swap(i, last);
            self.heap.pop();
            let moved = self.heap[i].1;
            pos.put(moved, i as u32);
            // The moved entry may belong above or below.
            self.up(i, pos);
            if pos.get(moved) == i as u32 {
                self.down(i, pos);
            }
        } else {
            self.heap.pop();
        }
    }

    fn up(&mut self, mut i: usize, pos: &mut impl PosMap) {
        while i > 0 {
            let p = (i - 1) / 2;
            if self.heap[p] <= self.heap[i] {
                break;
            }
            self.swap(i, p, pos);
            i = p;
        }
    }

    fn down(&mut self, mut i: usize, pos: &mut impl PosMap) {
        let n = self.heap.len();
        loop {
            let (l, r) = (2 * i + 1, 2 * i + 2);
            let mut m = i;
            if l < n && self.heap[l] < self.heap[m] {
                m = l;
            }
            if r < n && self.heap[r] < self.heap[m] {
                m = r;
            }
            if m == i {
                break;
            }
            self.swap(i, m, pos);
            i = m;
        }
    }

    fn swap(&mut self, a: usize, b: usize, pos: &mut impl PosMap) {
        self.heap.swap(a, b);
        pos.put(self.heap[a].1, a as u32);
        pos.put(self.heap[b].1, b as u32);
    }
}

/// Where each slot's heap position is stored (the engine keeps it in the slot itself).
pub(crate) trait PosMap {
    fn get(&self, slot: u32) -> u32;
    fn put(&mut self, slot: u32, pos: u32);
}

/// Sockets stuck in one state with one owner, for the summary.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StuckGroup {
    pub state: u8,
    /// 0: unknown owner.
    pub pid: u32,
    pub comm: [u8; tcpstate_common::TASK_COMM_LEN],
    pub count: u64,
    /// When the oldest of them entered the state (first seen, for a partial socket).
    pub oldest_since_ns: u64,
}

/// Most groups a summary lists (the largest first).
pub const SUMMARY_GROUPS: usize = 10;

/// Formats `ns` as seconds with one decimal (`12.0`), rounding half up.
pub fn tenths(ns: u64) -> (u64, u64) {
    let t = ns.saturating_add(50_000_000) / 100_000_000;
    (t / 10, t % 10)
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Pos(Vec<u32>);
    impl PosMap for Pos {
        fn get(&self, s: u32) -> u32 {
            self.0[s as usize]
        }
        fn put(&mut self, s: u32, p: u32) {
            self.0[s as usize] = p;
        }
    }

    #[test]
    fn heap_orders_moves_and_removes() {
        let mut pos = Pos(vec![NOT_QUEUED; 64]);
        let mut h = Deadlines::default();
        // A deterministic shuffle of deadlines.
        for s in 0..64u32 {
            h.set(s, u64::from((s * 37) % 64) * 10, &mut pos);
        }
        for s in (0..64u32).step_by(3) {
            h.remove(s, &mut pos);
        }
        // Moves, earlier and later, of slots still queued.
        for s in (1..64u32).step_by(5).filter(|s| s % 3 != 0) {
            h.set(s, if s % 2 == 0 { 5 } else { 1_000 }, &mut pos);
        }
        let mut last = 0;
        let mut n = 0;
        while let Some((d, s)) = h.peek() {
            assert!(d >= last);
            assert_ne!(s % 3, 0, "removed slot {s} popped");
            last = d;
            h.remove(s, &mut pos);
            n += 1;
        }
        assert_eq!(n, 64 - 22);
        assert!(pos.0.iter().all(|&p| p == NOT_QUEUED));
    }

    #[test]
    fn specs() {
        assert_eq!(parse_spec("off"), Ok(Spec::Off));
        assert_eq!(parse_spec("1500"), Ok(Spec::All(1_500 * MS)));
        assert_eq!(
            parse_spec("close_wait=1000"),
            Ok(Spec::One(state::CLOSE_WAIT, Some(SEC)))
        );
        assert_eq!(
            parse_spec("FIN-WAIT2=off"),
            Ok(Spec::One(state::FIN_WAIT2, None))
        );
        for bad in [
            "",
            "0",
            "-1",
            "x",
            "ESTABLISHED=10",
            "SYN_RECV=10",
            "CLOSE_WAIT=",
            "nan",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
        let t = Thresholds::from_specs(&[Spec::All(SEC), Spec::One(state::LAST_ACK, None)]);
        assert_eq!(t.get(state::SYN_SENT), Some(SEC));
        assert_eq!(t.get(state::LAST_ACK), None);
        assert_eq!(t.get(state::ESTABLISHED), None);
        let t = Thresholds::from_specs(&[Spec::Off, Spec::One(state::CLOSE_WAIT, Some(SEC))]);
        assert!(WATCHED
            .iter()
            .all(|&w| t.get(w) == (w == state::CLOSE_WAIT).then_some(SEC)));
        assert!(!Thresholds::from_specs(&[Spec::Off]).any());
        assert_eq!(Thresholds::default().get(state::CLOSE_WAIT), Some(30 * SEC));
    }

    #[test]
    fn tenths_round() {
        assert_eq!(tenths(12_000_000_000), (12, 0));
        assert_eq!(tenths(12_049_999_999), (12, 0));
        assert_eq!(tenths(12_050_000_000), (12, 1));
        assert_eq!(tenths(999_999_999), (1, 0));
    }
}
