//! `--soak MINUTES`: a long storm under the default tracer and the exporter (attached side by
//! side, the exporter scraped every second), watching both tracers' memory.
//!
//! A tracer that keeps per-connection state must not grow under a steady load once its tables
//! and buffers have reached their working size. The verdict compares the largest sample of the
//! second half of the run with the first sample after warm-up.

use std::{
    path::Path,
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use serde_json::json;

use super::{
    measure,
    storm::Storm,
    tracer::{Config, Tools, Tracer},
};

const SAMPLE_EVERY: Duration = Duration::from_secs(10);
/// How often the wait for the next sample looks for an interrupt.
const POLL: Duration = Duration::from_millis(100);
/// Growth allowed between the first post-warm-up sample and the second half's maximum.
const FLAT_TOLERANCE: f64 = 0.05;

#[derive(Debug, Clone, Copy, PartialEq)]
struct Sample {
    at: Duration,
    rss_kib: u64,
    /// The exporter's, when it runs.
    exporter_rss_kib: Option<u64>,
    conn_per_s: f64,
}

pub fn run(storm: &Storm, tools: &Tools, scratch: &Path, duration: Duration) -> Result<()> {
    // The output would be gigabytes; /dev/null keeps the formatting work without the disk.
    let tracer = Tracer::start(
        Config::Connections,
        tools,
        Path::new("/dev/null"),
        &scratch.join("soak.counters.json"),
    )?;
    let pid = tracer.pid();
    let exporter = match tools.unavailable(Config::Exporter) {
        None => Some(Tracer::start(
            Config::Exporter,
            tools,
            Path::new("/dev/null"),
            &scratch.join("soak.exporter.counters.json"),
        )?),
        Some(why) => {
            eprintln!("bench: soak without the exporter: {why}");
            None
        }
    };
    let exporter_pid = exporter.as_ref().map(Tracer::pid);
    eprintln!(
        "bench: soak for {:.0} s under `{}`{}, sampling VmRSS every {} s",
        duration.as_secs_f64(),
        Config::Connections.label(),
        if exporter.is_some() {
            format!(" and `{}`", Config::Exporter.label())
        } else {
            String::new()
        },
        SAMPLE_EVERY.as_secs()
    );
    let stop = AtomicBool::new(false);
    let progress = AtomicU64::new(0);
    let samples = thread::scope(|scope| -> Result<Vec<Sample>> {
        let storming = scope.spawn(|| storm.run(None, &stop, &progress));
        let sampled = sample(pid, exporter_pid, duration, &progress);
        stop.store(true, Ordering::Relaxed);
        let stormed = storming
            .join()
            .map_err(|_| anyhow::anyhow!("the storm panicked"))?;
        stormed.context("storm")?;
        sampled
    })?;
    let counts = tracer.stop()?;
    let exporter_counts = exporter.map(Tracer::stop).transpose()?;

    let verdict = flatness(&samples, warm_up(duration));
    let exporter_samples: Vec<Sample> = samples
        .iter()
        .filter_map(|s| {
            Some(Sample {
                rss_kib: s.exporter_rss_kib?,
                ..*s
            })
        })
        .collect();
    let exporter_verdict = flatness(&exporter_samples, warm_up(duration));
    println!();
    println!(
        "{:>8} {:>12} {:>14} {:>10}",
        "time s", "VmRSS KiB", "exporter KiB", "conn/s"
    );
    for s in &samples {
        println!(
            "{:>8.0} {:>12} {:>14} {:>10.0}",
            s.at.as_secs_f64(),
            s.rss_kib,
            s.exporter_rss_kib
                .map_or("-".to_string(), |k| k.to_string()),
            s.conn_per_s
        );
    }
    let say = |who: &str, verdict: &Option<Verdict>| {
        match verdict {
        Some(v) => println!(
            "{who}: after {:.0} s of warm-up: first {} KiB, max of the second half {} KiB ({:+.1}%): {}",
            warm_up(duration).as_secs_f64(),
            v.first,
            v.second_half_max,
            v.growth * 100.0,
            if v.flat { "flat" } else { "GROWING" }
        ),
        None => println!("{who}: too few samples after warm-up to judge; soak longer"),
    }
    };
    println!();
    say("trace", &verdict);
    if exporter_counts.is_some() {
        say("exporter", &exporter_verdict);
    }
    println!(
        "events delivered {}, ring buffer full {}, recursion misses {}",
        counts.delivered,
        counts.buffer_full,
        counts.recursion_misses.unwrap_or(0)
    );
    let line = json!({
        "bench": "soak",
        "seconds": duration.as_secs_f64(),
        "samples": samples.iter().map(|s| json!({
            "t": s.at.as_secs_f64(), "vmrss_kib": s.rss_kib, "conn_per_s": s.conn_per_s,
            "exporter_vmrss_kib": s.exporter_rss_kib,
        })).collect::<Vec<_>>(),
        "flat": verdict.as_ref().map(|v| v.flat),
        "growth": verdict.as_ref().map(|v| v.growth),
        "exporter_flat": exporter_verdict.as_ref().map(|v| v.flat),
        "exporter_growth": exporter_verdict.as_ref().map(|v| v.growth),
        "exporter_delivered": exporter_counts.map(|c| c.delivered),
        "exporter_ringbuf_full": exporter_counts.map(|c| c.buffer_full),
        "delivered": counts.delivered,
        "ringbuf_full": counts.buffer_full,
        "recursion_misses": counts.recursion_misses,
    });
    println!("{line}");
    Ok(())
}

fn sample(
    pid: u32,
    exporter_pid: Option<u32>,
    duration: Duration,
    progress: &AtomicU64,
) -> Result<Vec<Sample>> {
    let start = Instant::now();
    let exporter_rss = || {
        exporter_pid
            .map(|p| measure::vm_rss_kib(&p.to_string()))
            .transpose()
    };
    // The tracers' memory as the storm starts.
    let mut samples = vec![Sample {
        at: Duration::ZERO,
        rss_kib: measure::vm_rss_kib(&pid.to_string())?,
        exporter_rss_kib: exporter_rss()?,
        conn_per_s: 0.0,
    }];
    let mut last_count = 0;
    let mut last_at = Duration::ZERO;
    while start.elapsed() < duration {
        let next = SAMPLE_EVERY * samples.len() as u32;
        let wake = start + next.min(duration);
        while Instant::now() < wake {
            super::check_interrupted()?;
            thread::sleep(wake.saturating_duration_since(Instant::now()).min(POLL));
        }
        let at = start.elapsed();
        let count = progress.load(Ordering::Relaxed);
        let rss_kib = measure::vm_rss_kib(&pid.to_string())?;
        let exporter_rss_kib = exporter_rss()?;
        let s = Sample {
            at,
            rss_kib,
            exporter_rss_kib,
            conn_per_s: (count - last_count) as f64 / (at - last_at).as_secs_f64().max(1e-9),
        };
        eprintln!(
            "bench: {:>5.0} s  VmRSS {:>8} KiB  exporter {:>8} KiB  {:>6.0} conn/s",
            at.as_secs_f64(),
            rss_kib,
            exporter_rss_kib.unwrap_or(0),
            s.conn_per_s
        );
        samples.push(s);
        last_count = count;
        last_at = at;
    }
    Ok(samples)
}

/// A minute, or a third of a shorter soak: long enough for TIME_WAIT (60 s) and the tracer's
/// tables to reach their steady state.
fn warm_up(duration: Duration) -> Duration {
    Duration::from_secs(60).min(duration / 3)
}

#[derive(Debug, Clone, Copy, PartialEq)]
struct Verdict {
    first: u64,
    second_half_max: u64,
    growth: f64,
    flat: bool,
}

fn flatness(samples: &[Sample], warm_up: Duration) -> Option<Verdict> {
    let after: Vec<&Sample> = samples.iter().filter(|s| s.at >= warm_up).collect();
    if after.len() < 2 {
        return None;
    }
    let first = after[0].rss_kib;
    let second_half_max = after[after.len() / 2..].iter().map(|s| s.rss_kib).max()?;
    let growth = (second_half_max as f64 - first as f64) / first.max(1) as f64;
    Some(Verdict {
        first,
        second_half_max,
        growth,
        flat: growth <= FLAT_TOLERANCE,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn samples(rss: &[u64]) -> Vec<Sample> {
        rss.iter()
            .enumerate()
            .map(|(i, &rss_kib)| Sample {
                at: Duration::from_secs(10 * (i as u64 + 1)),
                rss_kib,
                exporter_rss_kib: None,
                conn_per_s: 1.0,
            })
            .collect()
    }

    #[test]
    fn flat_after_warm_up() {
        // Growth during warm-up (the first 20 s) does not count.
        let v = flatness(
            &samples(&[100, 900, 1000, 1010, 1030, 1040]),
            Duration::from_secs(20),
        )
        .expect("enough samples");
        assert_eq!((v.first, v.second_half_max), (900, 1040));
        assert!(!v.flat);
        let v = flatness(
            &samples(&[100, 1000, 1000, 1010, 1030, 1040]),
            Duration::from_secs(20),
        )
        .expect("enough samples");
        assert!(v.flat);
        assert_eq!(flatness(&samples(&[100]), Duration::ZERO), None);
    }
}
