//! Aggregates over finished connections: counts by outcome and role, latency percentiles and
//! bcc-style histograms, in bounded memory.

use std::fmt::{self, Write};

use std::collections::BTreeMap;

use crate::facts::ResetRecord;
use crate::timeline::{Conn, Outcome, Phase, RetxKind, Role};

/// Sub-buckets per power of two, as a bit count: 2^7 = 128, so a bucket is at most 1/128 of
/// its lower bound wide and the midpoint is within 0.4 % of any value in it.
const SUB_BITS: u32 = 7;
const SUB: u64 = 1 << SUB_BITS;
/// Buckets needed to cover all of u64.
const BUCKETS: usize = ((64 - SUB_BITS) as usize) * SUB as usize + SUB as usize;

/// A log-linear histogram of u64 values: exact below 256, within 0.4 % above; exact count, min
/// and max. About 58 KiB once the first value is recorded, nothing before.
#[derive(Debug, Clone, Default)]
pub struct Histogram {
    counts: Vec<u64>,
    count: u64,
    min: u64,
    max: u64,
}

fn bucket_of(v: u64) -> usize {
    if v < SUB {
        return v as usize;
    }
    let e = 63 - v.leading_zeros();
    let sub = (v >> (e - SUB_BITS)) - SUB;
    (e - SUB_BITS + 1) as usize * SUB as usize + sub as usize
}

/// Lowest value and width of a bucket.
fn bucket_range(i: usize) -> (u64, u64) {
    let block = (i / SUB as usize) as u32;
    if block <= 1 {
        return (i as u64, 1);
    }
    let sub = (i % SUB as usize) as u64;
    let shift = block - 1;
    ((SUB + sub) << shift, 1 << shift)
}

impl Histogram {
    pub fn record(&mut self, v: u64) {
        if self.counts.is_empty() {
            self.counts = vec![0; BUCKETS];
            self.min = v;
        }
        self.counts[bucket_of(v)] += 1;
        self.count += 1;
        self.min = self.min.min(v);
        self.max = self.max.max(v);
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// Exact.
    pub fn max(&self) -> Option<u64> {
        (self.count > 0).then_some(self.max)
    }

    /// Exact.
    pub fn min(&self) -> Option<u64> {
        (self.count > 0).then_some(self.min)
    }

    /// The value at percentile `p` (0..=100, nearest rank): within 0.4 % of the exact answer,
    /// exact for the smallest and largest sample.
    pub fn percentile(&self, p: f64) -> Option<u64> {
        if self.count == 0 {
            return None;
        }
        let rank = ((p.clamp(0.0, 100.0) / 100.0 * self.count as f64).ceil() as u64).max(1);
        // The extremes are known exactly.
        if rank >= self.count {
            return Some(self.max);
        }
        if rank == 1 {
            return Some(self.min);
        }
        let mut seen = 0;
        for (i, &n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let (lo, width) = bucket_range(i);
                return Some((lo + width / 2).clamp(self.min, self.max));
            }
        }
        Some(self.max)
    }

    pub fn clear(&mut self) {
        self.counts.iter_mut().for_each(|c| *c = 0);
        self.count = 0;
        self.min = 0;
        self.max = 0;
    }
}

/// A power-of-two histogram with bcc's bucketing: bucket `i` (1..=64) counts values in
/// `[2^(i-1), 2^i - 1]`, and 0 shares bucket 1 with 1, as `bpf_log2l()` + 1 does.
#[derive(Debug, Clone)]
pub struct Log2Histogram {
    counts: [u64; 65],
}

impl Default for Log2Histogram {
    fn default() -> Self {
        Log2Histogram { counts: [0; 65] }
    }
}

impl Log2Histogram {
    pub fn record(&mut self, v: u64) {
        let i = (64 - v.leading_zeros()).max(1) as usize;
        self.counts[i] += 1;
    }

    pub fn is_empty(&self) -> bool {
        self.counts.iter().all(|&c| c == 0)
    }

    pub fn clear(&mut self) {
        self.counts = [0; 65];
    }

    /// `(low, high, count)` of each bucket from the first up to the last non-empty one, with
    /// the bounds `render` prints.
    pub fn buckets(&self) -> impl Iterator<Item = (u64, u64, u64)> + '_ {
        let last = self.counts.iter().rposition(|&c| c > 0).unwrap_or(0);
        (1..=last).map(|i| {
            let high = u64::MAX >> (64 - i);
            let low = if i == 1 { 0 } else { 1u64 << (i - 1) };
            (low, high, self.counts[i])
        })
    }

    /// Prints like bcc's `print_log2_hist()` (Python flavour): a header with `unit`, then one
    /// line per bucket up to the last non-empty one, with up to 40 stars scaled to the fullest.
    pub fn render(&self, unit: &str, out: &mut impl Write) -> fmt::Result {
        let Some(last) = self.counts.iter().rposition(|&c| c > 0) else {
            return Ok(());
        };
        let most = self.counts.iter().copied().max().unwrap_or(1).max(1);
        let narrow = last <= 32;
        let stars_max: u64 = if narrow { 40 } else { 20 };
        if narrow {
            writeln!(out, "     {unit:<19} : count     distribution")?;
        } else {
            writeln!(out, "               {unit:<29} : count     distribution")?;
        }
        for (low, high, n) in self.buckets() {
            let stars = (u128::from(stars_max) * u128::from(n) / u128::from(most)) as usize;
            let bar = format!("{:<width$}", "*".repeat(stars), width = stars_max as usize);
            if narrow {
                writeln!(out, "{low:>10} -> {high:<10} : {n:<8} |{bar}|")?;
            } else {
                writeln!(out, "{low:>20} -> {high:<20} : {n:<8} |{bar}|")?;
            }
        }
        Ok(())
    }
}

/// Counts and distributions over the connections recorded (all of them: output thresholds do
/// not apply here).
#[derive(Debug, Clone, Default)]
pub struct Stats {
    pub connections: u64,
    pub by_outcome: [u64; Outcome::COUNT],
    /// Indexed by `Role as usize`.
    pub by_role: [u64; 4],
    /// Lifetimes that ended in TIME_WAIT (also counted under their outcome).
    pub time_wait: u64,
    pub partial: u64,
    pub incomplete: u64,
    /// Client handshakes (connect latency), ns.
    pub connect: Histogram,
    /// Client handshakes, µs, for the bcc-style histogram.
    pub connect_us: Log2Histogram,
    /// Completed CLOSE_WAIT phases (peer's FIN to the application's close), ns.
    pub close_wait: Histogram,
    /// What the socket facts, retransmits and resets said (issue 10).
    pub why: WhyStats,
}

/// Counts over the "why" of connections: kept apart from the rest so each part stays simple.
#[derive(Debug, Clone, Default)]
pub struct WhyStats {
    /// Accepted sockets' SYN-ACK round trips, ns.
    pub synack_rtt: Histogram,
    /// The same, µs, for the bcc-style histogram.
    pub synack_rtt_us: Log2Histogram,
    /// Retransmitted segments by kind (indexed by `RetxKind`).
    pub retransmits: [u64; 5],
    /// Connections with a reset sent / received.
    pub resets_sent: u64,
    pub resets_received: u64,
    /// Connections that ended with an error, by errno value.
    pub errors: BTreeMap<u8, u64>,
    /// Connection attempts this host refused (RST to a SYN, no socket), by local port. At most
    /// 65,536 entries.
    pub refused_by_port: BTreeMap<u16, u64>,
    pub refused: u64,
}

impl WhyStats {
    fn record(&mut self, c: &Conn) {
        if c.role() == Role::Server {
            if let Some(rtt) = c.synack_rtt_ns() {
                self.synack_rtt.record(rtt);
                self.synack_rtt_us.record(rtt / 1_000);
            }
        }
        if let Some(r) = c.retransmits() {
            for k in RetxKind::ALL {
                self.retransmits[k as usize] += u64::from(r[k as usize]);
            }
        }
        match c.reset_info() {
            Some((tcpstate_common::reset_direction::SENT, _)) => self.resets_sent += 1,
            Some(_) => self.resets_received += 1,
            None => {}
        }
        if let Some(e) = c.errno().filter(|&e| e != 0) {
            *self.errors.entry(e).or_default() += 1;
        }
    }

    fn clear(&mut self) {
        *self = WhyStats::default();
    }
}

impl Stats {
    pub fn record(&mut self, c: &Conn) {
        self.connections += 1;
        self.by_outcome[c.outcome() as usize] += 1;
        self.by_role[c.role() as usize] += 1;
        self.time_wait += u64::from(c.time_wait());
        self.partial += u64::from(c.partial());
        self.incomplete += u64::from(c.incomplete());
        if c.role() == Role::Client {
            if let Some(hs) = c.handshake_ns() {
                self.connect.record(hs);
                self.connect_us.record(hs / 1_000);
            }
        }
        // A CLOSE_WAIT cut short by the end of tracing is only a lower bound: not a sample.
        if !matches!(c.outcome(), Outcome::Open | Outcome::Evicted) {
            if let Some(cw) = c.phase_ns(Phase::CloseWait) {
                self.close_wait.record(cw);
            }
        }
        self.why.record(c);
    }

    /// An inbound connection attempt this host refused.
    pub fn refused(&mut self, r: &ResetRecord) {
        self.why.refused += 1;
        *self.why.refused_by_port.entry(r.sport).or_default() += 1;
    }

    pub fn outcome(&self, o: Outcome) -> u64 {
        self.by_outcome[o as usize]
    }

    pub fn role(&self, r: Role) -> u64 {
        self.by_role[r as usize]
    }

    pub fn clear(&mut self) {
        self.connections = 0;
        self.by_outcome = [0; Outcome::COUNT];
        self.by_role = [0; 4];
        self.time_wait = 0;
        self.partial = 0;
        self.incomplete = 0;
        self.connect.clear();
        self.connect_us.clear();
        self.close_wait.clear();
        self.why.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_tile_the_range() {
        let mut expect_lo = 0u64;
        for i in 0..BUCKETS {
            let (lo, width) = bucket_range(i);
            assert_eq!(lo, expect_lo, "bucket {i}");
            assert_eq!(bucket_of(lo), i);
            assert_eq!(bucket_of(lo + (width - 1)), i);
            if i + 1 < BUCKETS {
                expect_lo = lo + width;
            } else {
                assert_eq!(lo.checked_add(width - 1), Some(u64::MAX));
            }
        }
    }

    #[test]
    fn percentiles_within_one_percent() {
        let mut h = Histogram::default();
        let mut exact = Vec::new();
        let mut rng = 88172645463325252u64;
        for _ in 0..50_000 {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            // Log-uniform over 1 µs .. 10 s, like real latencies.
            let v = (1e3 * 10f64.powf((rng % 10_000) as f64 / 1_000.0)) as u64;
            h.record(v);
            exact.push(v);
        }
        exact.sort_unstable();
        for p in [1.0, 50.0, 90.0, 99.0, 99.9, 100.0] {
            let rank = ((p / 100.0 * exact.len() as f64).ceil() as usize).max(1);
            let want = exact[rank - 1] as f64;
            let got = h.percentile(p).map(|v| v as f64).unwrap_or(f64::NAN);
            assert!((got - want).abs() / want <= 0.01, "p{p}: {got} vs {want}");
        }
        assert_eq!(h.max(), exact.last().copied());
        assert_eq!(h.min(), exact.first().copied());
        assert_eq!(h.percentile(100.0), h.max());
        h.clear();
        assert_eq!(h.percentile(50.0), None);
    }

    #[test]
    fn small_values_are_exact() {
        let mut h = Histogram::default();
        for v in [3, 3, 7, 200] {
            h.record(v);
        }
        assert_eq!(h.percentile(50.0), Some(3));
        assert_eq!(h.percentile(75.0), Some(7));
        assert_eq!(h.percentile(99.0), Some(200));
    }

    #[test]
    fn log2_histogram_prints_like_bcc() {
        let mut h = Log2Histogram::default();
        for v in [0, 1, 5, 6, 7, 40, 40, 40, 40] {
            h.record(v);
        }
        let mut s = String::new();
        h.render("usecs", &mut s).unwrap();
        let expected = "     usecs               : count     distribution
         0 -> 1          : 2        |********************                    |
         2 -> 3          : 0        |                                        |
         4 -> 7          : 3        |******************************          |
         8 -> 15         : 0        |                                        |
        16 -> 31         : 0        |                                        |
        32 -> 63         : 4        |****************************************|
";
        assert_eq!(s, expected);
        let mut empty = String::new();
        Log2Histogram::default()
            .render("usecs", &mut empty)
            .unwrap();
        assert_eq!(empty, "");
    }
}
