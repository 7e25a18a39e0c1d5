//! The optional time column, computed from event timestamps only (never from a clock read at
//! print time), so a replay prints the same times as the live trace.

use std::fmt::{self, Write};

/// Which time column leads each line.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TimeColumn {
    #[default]
    None,
    /// `-T`: wall-clock `HH:MM:SS.mmm`, local time.
    Wall,
    /// `-t`: seconds since tracing started.
    Relative,
}

/// Ties event timestamps (CLOCK_MONOTONIC) to the start of tracing and to wall-clock time: taken
/// from the live clocks at start, or from a recording's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockBase {
    pub start_mono_ns: u64,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC, ns.
    pub realtime_minus_mono_ns: i64,
}

impl From<crate::clock::Start> for ClockBase {
    fn from(s: crate::clock::Start) -> Self {
        ClockBase {
            start_mono_ns: s.start_mono_ns,
            realtime_minus_mono_ns: s.realtime_minus_mono_ns,
        }
    }
}

impl ClockBase {
    /// Nanoseconds since the Unix epoch of a monotonic timestamp.
    pub fn unix_ns(&self, mono_ns: u64) -> i64 {
        (i128::from(mono_ns) + i128::from(self.realtime_minus_mono_ns))
            .clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64
    }

    /// Nanoseconds since tracing started (negative for events stamped before).
    pub fn since_start_ns(&self, mono_ns: u64) -> i128 {
        i128::from(mono_ns) - i128::from(self.start_mono_ns)
    }
}

/// Renders the time column, remembering the last wall-clock second it converted (one
/// `localtime_r` per second of output, not per line).
#[derive(Debug)]
pub struct TimeFormatter {
    column: TimeColumn,
    clock: ClockBase,
    cached_sec: Option<i64>,
    cached_hms: [u8; 8],
}

impl TimeFormatter {
    pub fn new(column: TimeColumn, clock: ClockBase) -> TimeFormatter {
        TimeFormatter {
            column,
            clock,
            cached_sec: None,
            cached_hms: *b"00:00:00",
        }
    }

    /// The column header including its trailing space, or nothing.
    pub fn header(&self) -> &'static str {
        match self.column {
            TimeColumn::None => "",
            TimeColumn::Wall => "TIME         ",
            TimeColumn::Relative => "TIME(s)     ",
        }
    }

    /// Writes the column for `mono_ns` including its trailing space, or nothing.
    pub fn write(&mut self, mono_ns: u64, out: &mut impl Write) -> fmt::Result {
        match self.column {
            TimeColumn::None => Ok(()),
            TimeColumn::Wall => {
                let unix = self.clock.unix_ns(mono_ns);
                let (sec, ns) = (
                    unix.div_euclid(1_000_000_000),
                    unix.rem_euclid(1_000_000_000),
                );
                if self.cached_sec != Some(sec) {
                    self.cached_hms = local_hms(sec);
                    self.cached_sec = Some(sec);
                }
                let hms = std::str::from_utf8(&self.cached_hms).unwrap_or("??:??:??");
                write!(out, "{hms}.{:03} ", ns / 1_000_000)
            }
            TimeColumn::Relative => {
                let d = self.clock.since_start_ns(mono_ns);
                let sign = if d < 0 { "-" } else { "" };
                let us = d.unsigned_abs() / 1_000;
                let mut text = super::Small::new();
                write!(text, "{sign}{}.{:06}", us / 1_000_000, us % 1_000_000)?;
                write!(out, "{:<11} ", text.as_str())
            }
        }
    }
}

/// `HH:MM:SS` of a Unix second in local time.
fn local_hms(sec: i64) -> [u8; 8] {
    let t = sec as libc::time_t;
    // SAFETY: tm is plain data that localtime_r fills; both pointers are valid for the call.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let ok = !unsafe { libc::localtime_r(&t, &mut tm) }.is_null();
    let mut out = *b"??:??:??";
    if ok {
        for (i, v) in [tm.tm_hour, tm.tm_min, tm.tm_sec].into_iter().enumerate() {
            let v = v.clamp(0, 99) as u8;
            out[i * 3] = b'0' + v / 10;
            out[i * 3 + 1] = b'0' + v % 10;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_seconds() {
        let clock = ClockBase {
            start_mono_ns: 1_000_000_000,
            realtime_minus_mono_ns: 0,
        };
        let mut f = TimeFormatter::new(TimeColumn::Relative, clock);
        let mut s = String::new();
        f.write(3_500_123_999, &mut s).unwrap();
        f.write(999_000_000, &mut s).unwrap();
        assert_eq!(s, "2.500123    -0.001000   ");
        assert_eq!(f.header().len(), 12);
    }

    #[test]
    fn wall_clock() {
        // 2024-01-01 00:00:07.123 UTC, whatever the local zone's hour and minute.
        let clock = ClockBase {
            start_mono_ns: 0,
            realtime_minus_mono_ns: 1_704_067_200_000_000_000,
        };
        let mut f = TimeFormatter::new(TimeColumn::Wall, clock);
        let mut s = String::new();
        f.write(7_123_456_789, &mut s).unwrap();
        assert_eq!(s.len(), 13, "{s:?}");
        assert_eq!(f.header().len(), 13);
        let b = s.as_bytes();
        assert_eq!((b[2], b[5], b[8], b[12]), (b':', b':', b'.', b' '));
        assert!(s.ends_with(":07.123 "), "{s:?}");
        let mut t = String::new();
        TimeFormatter::new(TimeColumn::None, clock)
            .write(7, &mut t)
            .unwrap();
        assert_eq!(t, "");
    }
}
