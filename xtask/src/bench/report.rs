//! Figures per configuration from the rounds, as a table and as one JSON line.

use serde_json::{json, Value};

use super::{
    measure,
    rounds::{Measurements, TracedRound, UntracedRound},
    storm::{StormResult, EVENTS_PER_CONNECTION},
    tracer::Config,
};

/// The figures of one configuration over all its rounds.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub config: Config,
    pub rounds: usize,
    /// Traced conn/s over the mean of the two untraced rounds around it: median, min, max.
    pub ratio: Spread,
    pub conn_per_s: f64,
    /// Extra whole-machine CPU per event: median over rounds.
    pub extra_cpu_ns_per_event: f64,
    /// Extra CPU of the storm and tracer processes per event: median over rounds. Unlike the
    /// whole-machine figure, other work on the host does not enter it.
    pub extra_own_cpu_ns_per_event: f64,
    /// The tracer process's CPU per event, over all rounds.
    pub tracer_cpu_ns_per_event: f64,
    /// The kernel program's run time per run, over all rounds (`None`: not measured).
    pub prog_ns_per_event: Option<f64>,
    /// Connections completed while traced, all rounds.
    pub connections: u64,
    /// Events the storm caused while traced.
    pub expected: u64,
    pub delivered: u64,
    pub buffer_full: u64,
    pub recursion_misses: Option<u64>,
    pub filtered: u64,
    /// Program runs the tracer counted (background TCP traffic of the host included).
    pub seen: Option<u64>,
    pub deferred: u64,
    /// Events recovered by a rescue program, all rounds.
    pub rescued: u64,
    /// expected − delivered − lost − filtered: events nobody accounts for (negative when other
    /// TCP traffic of the host was traced too); `None` for tracers that do not report every
    /// event (the empty program, tcplife).
    pub unaccounted: Option<i64>,
    pub output_bytes_per_event: f64,
    /// Each round in the order run: what was lost and rescued.
    pub per_round: Vec<RoundLosses>,
}

/// What one traced round lost and rescued.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundLosses {
    pub ratio: f64,
    pub drops: u64,
    pub recursion_misses: Option<u64>,
    pub rescued: u64,
}

#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
}

impl Spread {
    fn of(values: &[f64]) -> Spread {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => f64::NAN,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        Spread {
            median,
            min: v.first().copied().unwrap_or(f64::NAN),
            max: v.last().copied().unwrap_or(f64::NAN),
        }
    }
}

/// Whole-machine CPU ns per connection of a round.
fn cpu_ns_per_connection(busy_ticks: u64, storm: &StormResult) -> f64 {
    if storm.connections == 0 {
        return f64::NAN;
    }
    measure::ticks_to_ns(busy_ticks) / storm.connections as f64
}

/// The untraced rounds just before and after a traced round.
fn bracket<'a>(m: &'a Measurements, t: &TracedRound) -> impl Iterator<Item = &'a UntracedRound> {
    m.untraced.iter().skip(t.after_untraced).take(2)
}

pub fn summarize(m: &Measurements, config: Config) -> Option<Summary> {
    let rounds: Vec<&TracedRound> = m.traced.iter().filter(|t| t.config == config).collect();
    if rounds.is_empty() {
        return None;
    }
    let mut ratios = Vec::with_capacity(rounds.len());
    let mut extra_cpu = Vec::with_capacity(rounds.len());
    let mut extra_own = Vec::with_capacity(rounds.len());
    let mut per_round = Vec::with_capacity(rounds.len());
    for t in &rounds {
        let around: Vec<&UntracedRound> = bracket(m, t).collect();
        let n = around.len().max(1) as f64;
        let base_rate = around.iter().map(|u| u.storm.per_second()).sum::<f64>() / n;
        let base_cpu = around
            .iter()
            .map(|u| cpu_ns_per_connection(u.busy_ticks, &u.storm))
            .sum::<f64>()
            / n;
        let base_own = around
            .iter()
            .map(|u| cpu_ns_per_connection(u.storm_ticks, &u.storm))
            .sum::<f64>()
            / n;
        let ratio = t.storm.per_second() / base_rate;
        ratios.push(ratio);
        per_round.push(RoundLosses {
            ratio,
            drops: t.counts.buffer_full,
            recursion_misses: t.recursion_misses(),
            rescued: t.counts.rescued,
        });
        extra_cpu.push(
            (cpu_ns_per_connection(t.busy_ticks, &t.storm) - base_cpu)
                / EVENTS_PER_CONNECTION as f64,
        );
        extra_own.push(
            (cpu_ns_per_connection(t.storm_ticks + t.tracer_ticks, &t.storm) - base_own)
                / EVENTS_PER_CONNECTION as f64,
        );
    }
    let sum = |f: &dyn Fn(&TracedRound) -> u64| rounds.iter().map(|t| f(t)).sum::<u64>();
    let sum_opt =
        |f: &dyn Fn(&TracedRound) -> Option<u64>| rounds.iter().map(|t| f(t)).sum::<Option<u64>>();
    let connections = sum(&|t| t.storm.connections);
    let expected = sum(&|t| t.storm.events());
    let secs: f64 = rounds.iter().map(|t| t.storm.elapsed.as_secs_f64()).sum();
    let delivered = sum(&|t| t.counts.delivered);
    let buffer_full = sum(&|t| t.counts.buffer_full);
    let recursion_misses = sum_opt(&|t| t.recursion_misses());
    let filtered = sum(&|t| t.counts.filtered);
    let per_event = |total: f64| {
        if expected > 0 {
            total / expected as f64
        } else {
            f64::NAN
        }
    };
    let prog =
        sum_opt(&|t| t.prog.map(|p| p.run_time_ns)).zip(sum_opt(&|t| t.prog.map(|p| p.run_cnt)));
    let hold_failed = sum(&|t| t.counts.hold_failed);
    let accounted =
        delivered + buffer_full + hold_failed + recursion_misses.unwrap_or(0) + filtered;
    Some(Summary {
        config,
        rounds: rounds.len(),
        ratio: Spread::of(&ratios),
        conn_per_s: if secs > 0.0 {
            connections as f64 / secs
        } else {
            0.0
        },
        extra_cpu_ns_per_event: Spread::of(&extra_cpu).median,
        extra_own_cpu_ns_per_event: Spread::of(&extra_own).median,
        tracer_cpu_ns_per_event: per_event(measure::ticks_to_ns(sum(&|t| t.tracer_ticks))),
        // Every program the tracer holds (tcpstate's rescue and joined ones too), per event of
        // the storm: what the kernel side costs a state change, however many programs it runs.
        prog_ns_per_event: prog
            .filter(|&(_, runs)| runs > 0 && expected > 0)
            .map(|(ns, _)| ns as f64 / expected as f64),
        connections,
        expected,
        delivered,
        buffer_full,
        recursion_misses,
        filtered,
        seen: sum_opt(&|t| t.counts.seen),
        deferred: sum(&|t| t.counts.deferred),
        rescued: sum(&|t| t.counts.rescued),
        unaccounted: config
            .accounts_events()
            .then(|| expected as i64 - accounted as i64),
        output_bytes_per_event: per_event(sum(&|t| t.counts.output_bytes) as f64),
        per_round,
    })
}

pub fn untraced_rate(m: &Measurements) -> Spread {
    let rates: Vec<f64> = m.untraced.iter().map(|u| u.storm.per_second()).collect();
    Spread::of(&rates)
}

fn opt(v: Option<f64>, digits: usize) -> String {
    match v {
        Some(v) if v.is_finite() => format!("{v:.digits$}"),
        _ => "-".to_string(),
    }
}

fn count_or_dash(n: Option<u64>) -> String {
    n.map_or_else(|| "-".to_string(), |n| n.to_string())
}

/// The table of one storm; `storm` describes it.
pub fn print_table(storm: &str, untraced: Spread, seconds: f64, summaries: &[Summary]) {
    println!();
    println!("{storm}");
    println!(
        "untraced: {:.0} conn/s median ({:.0}-{:.0}), {seconds} s rounds, \
         {EVENTS_PER_CONNECTION} events per connection",
        untraced.median, untraced.min, untraced.max
    );
    println!();
    let row = |cells: [&str; 13]| {
        println!(
            "{:<42} {:>5} {:>9} {:>6} {:>8} {:>8} {:>7} {:>7} {:>9} {:>6} {:>6} {:>7} {:>8}",
            cells[0],
            cells[1],
            cells[2],
            cells[3],
            cells[4],
            cells[5],
            cells[6],
            cells[7],
            cells[8],
            cells[9],
            cells[10],
            cells[11],
            cells[12]
        )
    };
    row([
        "",
        "",
        "",
        "",
        "extra CPU ns/ev",
        "",
        "tracer",
        "kernel",
        "",
        "",
        "recur",
        "",
        "unac-",
    ]);
    row([
        "configuration",
        "ratio",
        "range",
        "conn/s",
        "machine",
        "own",
        "ns/ev",
        "ns/ev",
        "delivered",
        "drops",
        "miss",
        "rescued",
        "counted",
    ]);
    for s in summaries {
        row([
            s.config.label(),
            &format!("{:.2}", s.ratio.median),
            &format!("{:.2}-{:.2}", s.ratio.min, s.ratio.max),
            &format!("{:.0}", s.conn_per_s),
            &opt(Some(s.extra_cpu_ns_per_event), 0),
            &opt(Some(s.extra_own_cpu_ns_per_event), 0),
            &opt(Some(s.tracer_cpu_ns_per_event), 0),
            &opt(s.prog_ns_per_event, 0),
            &count_or_dash(s.config.accounts_events().then_some(s.delivered)),
            &s.buffer_full.to_string(),
            &count_or_dash(s.recursion_misses),
            &s.rescued.to_string(),
            &s.unaccounted.map_or("-".to_string(), |n| n.to_string()),
        ]);
    }
    println!();
    println!("per round, in the order run: drops/recursion misses/rescued");
    for s in summaries {
        let rounds: Vec<String> = s
            .per_round
            .iter()
            .map(|r| {
                format!(
                    "{}/{}/{}",
                    r.drops,
                    count_or_dash(r.recursion_misses),
                    r.rescued
                )
            })
            .collect();
        println!("{:<42} {}", s.config.label(), rounds.join("  "));
    }
    println!();
    println!(
        "ratio: traced conn/s / mean of the untraced rounds around it (median, range). extra CPU \
         per event over untraced: machine = all CPUs (/proc/stat), own = storm + tracer \
         processes. See docs/benchmark.md."
    );
    println!();
}

/// The figures of one storm; `main` puts one per storm shape in its JSON line.
pub fn to_json(
    shape: &str,
    untraced: Spread,
    workers: usize,
    seconds: f64,
    summaries: &[Summary],
) -> Value {
    let configs: Vec<Value> = summaries
        .iter()
        .map(|s| {
            json!({
                "config": s.config.key(),
                "command": s.config.label(),
                "rounds": s.rounds,
                "ratio_median": s.ratio.median,
                "ratio_min": s.ratio.min,
                "ratio_max": s.ratio.max,
                "conn_per_s": s.conn_per_s,
                "extra_cpu_ns_per_event": s.extra_cpu_ns_per_event,
                "extra_storm_tracer_cpu_ns_per_event": s.extra_own_cpu_ns_per_event,
                "tracer_cpu_ns_per_event": s.tracer_cpu_ns_per_event,
                "kernel_prog_ns_per_event": s.prog_ns_per_event,
                "connections": s.connections,
                "expected_events": s.expected,
                "delivered": s.delivered,
                "ringbuf_full": s.buffer_full,
                "recursion_misses": s.recursion_misses,
                "filtered": s.filtered,
                "seen": s.seen,
                "deferred": s.deferred,
                "rescued": s.rescued,
                "unaccounted": s.unaccounted,
                "output_bytes_per_event": s.output_bytes_per_event,
                "per_round": s.per_round.iter().map(|r| json!({
                    "ratio": r.ratio,
                    "ringbuf_full": r.drops,
                    "recursion_misses": r.recursion_misses,
                    "rescued": r.rescued,
                })).collect::<Vec<_>>(),
            })
        })
        .collect();
    json!({
        "storm": shape,
        "workers": workers,
        "seconds_per_round": seconds,
        "events_per_connection": EVENTS_PER_CONNECTION,
        "untraced_conn_per_s_median": untraced.median,
        "untraced_conn_per_s_min": untraced.min,
        "untraced_conn_per_s_max": untraced.max,
        "configs": configs,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tracer::TracerCounts;
    use std::time::Duration;

    fn storm(connections: u64) -> StormResult {
        StormResult {
            connections,
            connect_failures: 0,
            elapsed: Duration::from_secs(1),
        }
    }

    #[test]
    fn spread_median() {
        let s = Spread::of(&[3.0, 1.0, 2.0]);
        assert_eq!((s.median, s.min, s.max), (2.0, 1.0, 3.0));
        assert_eq!(Spread::of(&[1.0, 2.0, 4.0, 3.0]).median, 2.5);
    }

    #[test]
    fn ratio_uses_bracketing_untraced_rounds() {
        let hz = measure::ticks_per_second();
        let untraced = vec![
            UntracedRound {
                storm: storm(1000),
                busy_ticks: hz,
                storm_ticks: hz / 2,
            },
            UntracedRound {
                storm: storm(3000),
                busy_ticks: hz,
                storm_ticks: hz / 2,
            },
        ];
        let traced = vec![TracedRound {
            config: Config::Connections,
            after_untraced: 0,
            storm: storm(1000),
            busy_ticks: hz,
            storm_ticks: hz / 2,
            tracer_ticks: hz / 10,
            prog: None,
            counts: TracerCounts {
                delivered: 9_990,
                buffer_full: 5,
                recursion_misses: Some(1),
                filtered: 0,
                seen: Some(10_000),
                deferred: 0,
                hold_failed: 0,
                output_bytes: 1_000_000,
                rescued: 0,
            },
        }];
        let m = Measurements { untraced, traced };
        let s = summarize(&m, Config::Connections).expect("one round");
        assert_eq!(s.ratio.median, 0.5);
        // Baseline CPU per connection: mean of 1 ms and 1/3 ms; traced: 1 ms per connection.
        let expected_extra = (1e6 - (1e6 + 1e6 / 3.0) / 2.0) / 10.0;
        assert!((s.extra_cpu_ns_per_event - expected_extra).abs() < 1e-6);
        // Own CPU: 0.6 ms per connection traced against a mean of 0.5 ms and 1/6 ms.
        let expected_own = (0.6e6 - (0.5e6 + 0.5e6 / 3.0) / 2.0) / 10.0;
        assert!((s.extra_own_cpu_ns_per_event - expected_own).abs() < 1e-6);
        assert!((s.tracer_cpu_ns_per_event - 1e8 / 10_000.0).abs() < 1e-6);
        assert_eq!(s.unaccounted, Some(10_000 - 9_990 - 5 - 1));
        assert_eq!(s.per_round.len(), 1);
        assert_eq!(
            (s.per_round[0].drops, s.per_round[0].recursion_misses),
            (5, Some(1))
        );
        assert_eq!(s.prog_ns_per_event, None);
        assert!(summarize(&m, Config::Json).is_none());
    }
}
