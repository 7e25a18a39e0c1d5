//! A duration packed into 32 bits, so a tracked connection stays small.

/// A non-negative duration in 32 bits: the top two bits pick the unit, the low 30 bits count it.
///
/// Exact to the nanosecond below 2^30 ns (about 1.07 s), which covers every handshake and most
/// teardown phases; to the microsecond below 2^30 µs (about 17.9 minutes); to the millisecond
/// below about 12.4 days; to the second beyond, saturating at 2^30 s. The relative error is
/// therefore below 10^-6 everywhere: far below what any output prints.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Span(u32);

const VALUE_BITS: u32 = 30;
const VALUE_MAX: u64 = (1 << VALUE_BITS) - 1;
/// Nanoseconds per unit, indexed by the top two bits.
const UNIT_NS: [u64; 4] = [1, 1_000, 1_000_000, 1_000_000_000];

impl Span {
    pub const ZERO: Span = Span(0);

    pub fn from_ns(ns: u64) -> Span {
        for (unit, &per) in UNIT_NS.iter().enumerate() {
            let count = ns / per;
            if count <= VALUE_MAX {
                return Span(((unit as u32) << VALUE_BITS) | count as u32);
            }
        }
        Span((3 << VALUE_BITS) | VALUE_MAX as u32)
    }

    pub fn ns(self) -> u64 {
        let unit = (self.0 >> VALUE_BITS) as usize;
        u64::from(self.0 & VALUE_MAX as u32) * UNIT_NS[unit]
    }

    /// Sum of two spans, rounded down to the coarser unit of the result.
    pub fn add_ns(self, ns: u64) -> Span {
        Span::from_ns(self.ns().saturating_add(ns))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_below_a_second() {
        for ns in [0, 1, 999, 31_245, (1 << 30) - 1] {
            assert_eq!(Span::from_ns(ns).ns(), ns);
        }
    }

    #[test]
    fn coarser_units_keep_relative_error_tiny() {
        for ns in [
            1 << 30,
            1_234_567_891,
            3_600_000_000_123,
            86_400_000_000_000 * 30,
            1_000_000_000_000_000_000,
        ] {
            let back = Span::from_ns(ns).ns();
            assert!(back <= ns, "{ns} -> {back}");
            assert!((ns - back) as f64 / ns as f64 <= 1e-6, "{ns} -> {back}");
        }
    }

    #[test]
    fn saturates() {
        let max = Span::from_ns(u64::MAX).ns();
        assert_eq!(max, VALUE_MAX * 1_000_000_000);
        assert_eq!(Span::from_ns(max).add_ns(u64::MAX).ns(), max);
    }

    #[test]
    fn adds() {
        assert_eq!(Span::from_ns(10).add_ns(5).ns(), 15);
        assert_eq!(Span::from_ns(1 << 29).add_ns(1 << 29).ns(), 1_073_741_000);
    }
}
