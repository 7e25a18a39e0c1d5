//! The clocks events are stamped with.

fn clock_ns(id: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; these clock ids always exist on Linux.
    unsafe { libc::clock_gettime(id, &mut ts) };
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

/// CLOCK_MONOTONIC in ns: the clock of `bpf_ktime_get_ns()` and so of every event.
#[cfg(feature = "kernel")]
pub fn monotonic_ns() -> u64 {
    clock_ns(libc::CLOCK_MONOTONIC) as u64
}

/// Where tracing starts on the monotonic clock, and how to turn it into wall-clock time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Start {
    pub start_mono_ns: u64,
    /// CLOCK_REALTIME - CLOCK_MONOTONIC at start, in ns.
    pub realtime_minus_mono_ns: i64,
}

impl Start {
    pub fn now() -> Start {
        let mono = clock_ns(libc::CLOCK_MONOTONIC);
        let real = clock_ns(libc::CLOCK_REALTIME);
        Start {
            start_mono_ns: mono as u64,
            realtime_minus_mono_ns: (real - mono) as i64,
        }
    }
}
