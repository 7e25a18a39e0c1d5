//! When to drain the ring buffer next, from how much the last drain found.
//!
//! The kernel submits records without waking user space until the buffer holds a quarter of its
//! size (a wake-up per event would cost more than the event), so between wake-ups user space
//! drains on a timer. A fixed timer is either too slow for a storm (the buffer fills between two
//! drains, records are lost) or too eager for an idle host (a wake-up for nothing, forever). So
//! the wait adapts: right after a drain that found a lot, the next one comes soon; at the rate
//! seen, the next drain is due when the buffer would be a sixteenth full; with nothing found,
//! the wait doubles up to [`IDLE_MAX`]. Each drain also feeds the pipeline's clock, so while
//! records arrive the wait never exceeds [`BUSY_MAX`], the old fixed period.

use std::time::Duration;

/// The shortest wait: a burst is drained about once a millisecond.
pub(crate) const MIN: Duration = Duration::from_millis(1);
/// The longest wait while records arrive (the fixed period this replaces): output, stuck
/// sockets and the reorder window are released at least this often while there is traffic.
pub(crate) const BUSY_MAX: Duration = Duration::from_millis(20);
/// The longest wait on an idle host: ten wake-ups a second. An isolated event is then shown up
/// to this late (plus the reorder window).
pub(crate) const IDLE_MAX: Duration = Duration::from_millis(100);
/// The fill a drain aims to find: this fraction of the buffer (512 KiB of the default 8 MiB),
/// far below the quarter at which the kernel wakes us, so a burst has room to grow.
const TARGET_FILL_DIVISOR: u64 = 16;

/// The drain pace of one ring buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Pace {
    target_bytes: u64,
    wait: Duration,
}

impl Pace {
    pub(crate) fn new(ring_bytes: u32) -> Pace {
        Pace {
            target_bytes: (u64::from(ring_bytes) / TARGET_FILL_DIVISOR).max(1),
            wait: BUSY_MAX,
        }
    }

    /// After a drain that read `bytes` of records, accumulated over `over` (the time since the
    /// drain before): how long to wait for the next one.
    pub(crate) fn next(&mut self, bytes: u64, over: Duration) -> Duration {
        self.wait = if bytes == 0 {
            (self.wait * 2).clamp(MIN, IDLE_MAX)
        } else if bytes >= self.target_bytes {
            MIN
        } else {
            // At the rate just seen, the target is reached after over * target / bytes.
            let ns = over.as_nanos() * u128::from(self.target_bytes) / u128::from(bytes);
            Duration::from_nanos(u64::try_from(ns).unwrap_or(u64::MAX)).clamp(MIN, BUSY_MAX)
        };
        self.wait
    }
}

/// The ring buffer bytes one record of `len` bytes occupies: its 8-byte header, rounded up to 8
/// bytes as the kernel allocates.
pub(crate) fn ring_bytes(len: usize) -> u64 {
    (len as u64 + 8).next_multiple_of(8)
}

#[cfg(test)]
mod tests {
    use super::*;

    const RING: u32 = 8 << 20;
    const MS: Duration = Duration::from_millis(1);

    #[test]
    fn starts_at_the_old_fixed_period() {
        assert_eq!(Pace::new(RING).wait, BUSY_MAX);
    }

    #[test]
    fn idle_backs_off_by_doubling_to_the_idle_maximum() {
        let mut p = Pace::new(RING);
        let waits: Vec<Duration> = (0..5).map(|_| p.next(0, p.wait)).collect();
        assert_eq!(waits, [40 * MS, 80 * MS, 100 * MS, 100 * MS, 100 * MS]);
    }

    #[test]
    fn a_burst_is_drained_again_at_once_then_backs_off_gradually() {
        let mut p = Pace::new(RING);
        // A drain that found a sixteenth of the buffer or more.
        assert_eq!(p.next(u64::from(RING / 16), 20 * MS), MIN);
        assert_eq!(p.next(u64::from(RING / 2), MS), MIN);
        // The burst is over: 2, 4, 8 ... ms, not straight to idle.
        assert_eq!(p.next(0, MS), 2 * MS);
        assert_eq!(p.next(0, 2 * MS), 4 * MS);
        assert_eq!(p.next(0, 4 * MS), 8 * MS);
    }

    #[test]
    fn steady_traffic_is_drained_when_the_target_fill_would_be_reached() {
        let mut p = Pace::new(RING);
        let target = u64::from(RING / 16);
        // A quarter of the target in 4 ms: the target takes 16 ms.
        assert_eq!(p.next(target / 4, 4 * MS), 16 * MS);
        // Half of it in 1 ms: 2 ms.
        assert_eq!(p.next(target / 2, MS), 2 * MS);
        // Much faster than that: never below the minimum.
        assert_eq!(p.next(target - 1, Duration::from_micros(10)), MIN);
        // A trickle: never above the old fixed period while records arrive.
        assert_eq!(p.next(200, 100 * MS), BUSY_MAX);
        // Found something right after a wake-up (no time passed): soon.
        assert_eq!(p.next(200, Duration::ZERO), MIN);
    }

    #[test]
    fn never_overflows_the_buffer_at_a_storm_rate() {
        // 500k records/s of 200 bytes (a 10x storm) into the default buffer: with the drain at
        // the pace's wait, the fill found never exceeds the target by much, and stays far below
        // the buffer.
        let rate_bytes_per_ns = 500_000.0 * 200.0 / 1e9;
        let mut p = Pace::new(RING);
        let mut wait = p.wait;
        for _ in 0..1000 {
            let found = (wait.as_nanos() as f64 * rate_bytes_per_ns) as u64;
            assert!(found < u64::from(RING) / 4, "{found} bytes in {wait:?}");
            wait = p.next(found, wait);
        }
        assert!(wait <= 6 * MS, "{wait:?}");
    }

    #[test]
    fn tiny_buffers_and_huge_counts_do_not_overflow() {
        let mut p = Pace::new(0);
        assert_eq!(p.next(1, IDLE_MAX), MIN);
        let mut p = Pace::new(u32::MAX);
        assert_eq!(p.next(1, Duration::MAX), BUSY_MAX);
    }

    #[test]
    fn record_sizes_in_the_ring() {
        assert_eq!(ring_bytes(0), 8);
        assert_eq!(ring_bytes(1), 16);
        assert_eq!(ring_bytes(120), 128);
        assert_eq!(ring_bytes(121), 136);
    }
}
