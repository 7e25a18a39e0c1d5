//! Untraced and traced rounds of the storm, and what is measured in each.
//!
//! The rounds run as U0, T(c1), T(c2), ..., U1, T(...), ..., U(n): every traced round lies between
//! two untraced rounds and is compared with their mean, so slow drifts of the host (TIME_WAIT
//! sockets piling up, other load) cancel out. The order of the configurations rotates from one
//! round to the next so none of them always runs right after an untraced round.

use std::{
    fs,
    path::Path,
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};

use super::{
    check_interrupted,
    measure::{self, ProgStats},
    storm::{Storm, StormResult},
    tracer::{Config, Tools, Tracer, TracerCounts},
};

/// Longest wait for a tracer to finish the backlog of events after a storm.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
const DRAIN_POLL: Duration = Duration::from_millis(100);

#[derive(Debug, Clone, Copy)]
pub struct UntracedRound {
    pub storm: StormResult,
    /// Busy CPU ticks of the whole machine during the storm.
    pub busy_ticks: u64,
    /// CPU ticks of this process (the storm, and the kernel's work in its system calls).
    pub storm_ticks: u64,
}

#[derive(Debug, Clone, Copy)]
pub struct TracedRound {
    pub config: Config,
    /// Index of the untraced round before this one.
    pub after_untraced: usize,
    pub storm: StormResult,
    /// Busy CPU ticks of the whole machine from the storm's start until the tracer caught up.
    pub busy_ticks: u64,
    /// CPU ticks of this process over the same span (the kernel program runs in its context).
    pub storm_ticks: u64,
    /// CPU ticks of the tracer process over the same span.
    pub tracer_ticks: u64,
    /// The tracer's program over the same span (`None` when it could not be read).
    pub prog: Option<ProgStats>,
    pub counts: TracerCounts,
}

impl TracedRound {
    /// Runs the kernel skipped: the tracer's own count when it keeps one, else what the kernel
    /// says about its program (`None`: neither is known).
    pub fn recursion_misses(&self) -> Option<u64> {
        self.counts
            .recursion_misses
            .or(self.prog.map(|p| p.recursion_misses))
    }
}

pub struct Measurements {
    pub untraced: Vec<UntracedRound>,
    pub traced: Vec<TracedRound>,
}

pub struct Plan<'a> {
    pub rounds: usize,
    pub seconds: Duration,
    pub configs: &'a [Config],
    pub tools: &'a Tools,
    /// Where tracers write their output (one file per round, removed after it).
    pub scratch: &'a Path,
}

pub fn run(storm: &Storm, plan: &Plan<'_>) -> Result<Measurements> {
    // Brings caches, slabs and the TIME_WAIT population near their steady state first.
    storm.run_for(plan.seconds.min(Duration::from_secs(1)))?;
    let mut m = Measurements {
        untraced: Vec::with_capacity(plan.rounds + 1),
        traced: Vec::with_capacity(plan.rounds * plan.configs.len()),
    };
    for round in 0..=plan.rounds {
        check_interrupted()?;
        let u = untraced_round(storm, plan.seconds)?;
        eprintln!(
            "bench: untraced {round}/{}: {:.0} conn/s",
            plan.rounds,
            u.storm.per_second()
        );
        m.untraced.push(u);
        if round == plan.rounds {
            break;
        }
        let n = plan.configs.len();
        for i in 0..n {
            let config = plan.configs[(i + round) % n];
            check_interrupted()?;
            let t = traced_round(storm, plan, config, round)?;
            let baseline = u.storm.per_second();
            eprintln!(
                "bench: round {}/{} {}: {:.0} conn/s ({:.2} of the untraced round before); \
                 drops {}, recursion misses {}, rescued {}",
                round + 1,
                plan.rounds,
                config.label(),
                t.storm.per_second(),
                if baseline > 0.0 {
                    t.storm.per_second() / baseline
                } else {
                    0.0
                },
                t.counts.buffer_full,
                t.recursion_misses()
                    .map_or_else(|| "-".to_string(), |n| n.to_string()),
                t.counts.rescued
            );
            m.traced.push(t);
        }
    }
    Ok(m)
}

fn untraced_round(storm: &Storm, seconds: Duration) -> Result<UntracedRound> {
    let me = std::process::id();
    let busy0 = measure::machine_busy_ticks()?;
    let own0 = measure::process_cpu_ticks(me)?;
    let result = storm.run_for(seconds)?;
    let own1 = measure::process_cpu_ticks(me)?;
    let busy1 = measure::machine_busy_ticks()?;
    Ok(UntracedRound {
        storm: result,
        busy_ticks: busy1.saturating_sub(busy0),
        storm_ticks: own1.saturating_sub(own0),
    })
}

fn traced_round(
    storm: &Storm,
    plan: &Plan<'_>,
    config: Config,
    round: usize,
) -> Result<TracedRound> {
    let output = plan.scratch.join(format!("{}-{round}.out", config.key()));
    let counters = plan
        .scratch
        .join(format!("{}-{round}.counters.json", config.key()));
    let tracer = Tracer::start(config, plan.tools, &output, &counters)?;
    let pid = tracer.pid();
    // Lets the tracer finish its start-up work before anything is counted.
    thread::sleep(Duration::from_millis(200));
    let me = std::process::id();
    let busy0 = measure::machine_busy_ticks()?;
    let own0 = measure::process_cpu_ticks(me)?;
    let tracer0 = measure::process_cpu_ticks(pid)?;
    let prog0 = measure::tracepoint_prog_stats(pid).ok();
    let result = storm.run_for(plan.seconds)?;
    check_interrupted()?;
    let tracer1 = wait_drained(pid, tracer0)?;
    let own1 = measure::process_cpu_ticks(me)?;
    let busy1 = measure::machine_busy_ticks()?;
    let prog = match (prog0, measure::tracepoint_prog_stats(pid).ok()) {
        (Some(a), Some(b)) => Some(b.since(&a)),
        _ => None,
    };
    let counts = tracer.stop()?;
    fs::remove_file(&output).with_context(|| format!("removing {}", output.display()))?;
    Ok(TracedRound {
        config,
        after_untraced: round,
        storm: result,
        busy_ticks: busy1.saturating_sub(busy0),
        storm_ticks: own1.saturating_sub(own0),
        tracer_ticks: tracer1.saturating_sub(tracer0),
        prog,
        counts,
    })
}

/// Waits until the tracer stops using CPU (it has read and written out the backlog of events
/// the storm left in its buffer) and returns its CPU ticks then.
fn wait_drained(pid: u32, mut last: u64) -> Result<u64> {
    let start = Instant::now();
    loop {
        thread::sleep(DRAIN_POLL);
        let now = measure::process_cpu_ticks(pid)?;
        if now == last || start.elapsed() > DRAIN_TIMEOUT || super::interrupted() {
            return Ok(now);
        }
        last = now;
    }
}
