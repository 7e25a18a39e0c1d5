//! The summary printed at the end (and every interval): what happened, how fast, what was lost.

use std::fmt::{self, Write};

use super::Ms;
use crate::event::state_name;
use crate::input::{Counter, KernelCounters};
use crate::stats::Stats;
use crate::timeline::stuck::{self, StuckGroup};
use crate::timeline::{errno_name, Outcome, RetxKind, Role};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SummaryKind {
    /// Connections that finished during one interval.
    Interval,
    /// Every connection since tracing started.
    Final,
}

/// Counters of the user-space pipeline.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PipelineCounts {
    /// Events processed.
    pub events: u64,
    /// Events that arrived after the reorder window had passed them.
    pub late: u64,
    /// Events released early because the reorder buffer was full.
    pub forced: u64,
    /// Lifetimes ended because a new one started at their socket address.
    pub superseded: u64,
    /// CLOSE -> CLOSE events.
    pub ignored: u64,
    /// Connections shown together with their other end on this host (once per pair).
    pub paired: u64,
    /// Facts, retransmits and resets that matched no tracked connection.
    pub unjoined: u64,
}

/// Everything a summary shows.
#[derive(Debug, Clone, Copy)]
pub struct Summary<'a> {
    pub kind: SummaryKind,
    /// The period covered, event clock.
    pub start_ns: u64,
    pub end_ns: u64,
    pub stats: &'a Stats,
    /// Lifetimes open at `end_ns` (for the final summary: those reported as `open`).
    pub still_open: u64,
    /// Evictions since tracing started.
    pub evictions: u64,
    /// The kernel's latest counters, cumulative since tracing started.
    pub counters: Option<KernelCounters>,
    pub pipeline: PipelineCounts,
    /// Sockets reported stuck that are still in that state at `end_ns`.
    pub stuck_now: u64,
    /// Those sockets by state and owner, the largest groups first (bounded).
    pub stuck: &'a [StuckGroup],
}

/// The human-readable summary block.
pub fn text(s: &Summary<'_>, out: &mut impl Write) -> fmt::Result {
    let st = s.stats;
    let what = match s.kind {
        SummaryKind::Interval => "interval",
        SummaryKind::Final => "summary",
    };
    // `Ms` of microseconds prints seconds with three decimals.
    let seconds = Ms(s.end_ns.saturating_sub(s.start_ns) / 1_000);
    writeln!(
        out,
        "--- {what}: {} connections in {seconds} s ---",
        st.connections
    )?;
    write!(out, "roles:")?;
    list(Role::ALL.iter().map(|&r| (r.name(), st.role(r))), out)?;
    write!(out, "outcomes:")?;
    list(Outcome::ALL.iter().map(|&o| (o.name(), st.outcome(o))), out)?;
    let h = &st.connect;
    match (
        h.percentile(50.0),
        h.percentile(90.0),
        h.percentile(99.0),
        h.max(),
    ) {
        (Some(p50), Some(p90), Some(p99), Some(max)) => {
            writeln!(
                out,
                "connect latency (n={}): p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
                h.count(),
                Ms(p50),
                Ms(p90),
                Ms(p99),
                Ms(max)
            )?;
            st.connect_us.render("usecs", out)?;
        }
        _ => writeln!(out, "connect latency: no completed client handshakes")?,
    }
    synack_rtt_text(s, out)?;
    let h = &st.close_wait;
    match (h.percentile(50.0), h.percentile(99.0), h.max()) {
        (Some(p50), Some(p99), Some(max)) => writeln!(
            out,
            "close_wait (n={}): p50 {} ms, p99 {} ms, max {} ms",
            h.count(),
            Ms(p50),
            Ms(p99),
            Ms(max)
        )?,
        _ => writeln!(out, "close_wait: none completed")?,
    }
    writeln!(
        out,
        "tracking: {} still open, {} evicted, {} first seen mid-life, {} with missing transitions",
        s.still_open, s.evictions, st.partial, st.incomplete
    )?;
    stuck_text(s, out)?;
    let p = &s.pipeline;
    writeln!(
        out,
        "events: {} processed, {} late for the reorder window, {} released early, {} sockets reused while open, {} paired",
        p.events, p.late, p.forced, p.superseded, p.paired
    )?;
    why_text(s, out)?;
    match &s.counters {
        Some(k) => kernel_text(k, out)?,
        None => writeln!(out, "kernel: no counters received")?,
    }
    Ok(())
}

/// `stuck now: N (CLOSE_WAIT 3 pid 1234 server oldest 45.0 s; ...)`, when any are.
fn stuck_text(s: &Summary<'_>, out: &mut impl Write) -> fmt::Result {
    if s.stuck_now == 0 {
        return Ok(());
    }
    write!(out, "stuck now: {} (", s.stuck_now)?;
    for (i, g) in s.stuck.iter().enumerate() {
        let sep = if i > 0 { "; " } else { "" };
        let (sec, t) = stuck::tenths(s.end_ns.saturating_sub(g.oldest_since_ns));
        write!(out, "{sep}{} {} ", state_name(g.state), g.count)?;
        if g.pid == 0 {
            out.write_str("owner unknown")?;
        } else {
            write!(out, "pid {} {}", g.pid, super::comm_or_dash(&g.comm))?;
        }
        write!(out, " oldest {sec}.{t} s")?;
    }
    let listed: u64 = s.stuck.iter().map(|g| g.count).sum();
    if listed < s.stuck_now {
        write!(out, "; {} more", s.stuck_now - listed)?;
    }
    writeln!(out, ")")
}

/// A counter's value, or `unknown` when it could not be read (or the recording predates it).
struct Value(Option<u64>);

impl fmt::Display for Value {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(v) => write!(f, "{v}"),
            None => f.write_str("unknown"),
        }
    }
}

/// `N name`, or `name unknown`.
struct Count(&'static str, Option<u64>);

impl fmt::Display for Count {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.1 {
            Some(v) => write!(f, "{v} {}", self.0),
            None => write!(f, "{} unknown", self.0),
        }
    }
}

/// Every kernel counter by name: the event counts and losses, then the held events and tables.
fn kernel_text(k: &KernelCounters, out: &mut impl Write) -> fmt::Result {
    let v = |c: Counter| Value(k.get(c));
    let first = [Counter::Seen, Counter::Filtered, Counter::Submitted];
    write!(out, "kernel:")?;
    for c in first {
        write!(out, " {},", Count(c.name(), k.get(c)))?;
    }
    write!(out, " {} (", Count("lost", k.lost()))?;
    let losses = Counter::ALL.iter().filter(|c| c.is_loss());
    for (i, &c) in losses.enumerate() {
        let sep = if i == 0 { "" } else { ", " };
        write!(out, "{sep}{} {}", c.name(), v(c))?;
    }
    writeln!(out, ")")?;
    // The rest of the list, so that every counter is named; `held` after what it derives from.
    write!(out, "kernel tables:")?;
    let rest = Counter::ALL
        .into_iter()
        .filter(|c| !c.is_loss() && !first.contains(c));
    for (i, c) in rest.enumerate() {
        let sep = if i == 0 { " " } else { ", " };
        write!(out, "{sep}{} {}", c.name(), v(c))?;
        if c == Counter::HeldDropped {
            write!(out, ", held {}", Value(k.held()))?;
        }
    }
    writeln!(out)?;
    if let Some(lost) = k.lost().filter(|&n| n > 0) {
        writeln!(
            out,
            "WARNING: {lost} events were lost in the kernel: some timelines are incomplete"
        )?;
    }
    let mut unknown = k.unknown_counters().peekable();
    if unknown.peek().is_some() {
        write!(
            out,
            "WARNING: kernel counters unknown (unreadable, or not in this recording):"
        )?;
        for (i, c) in unknown.enumerate() {
            let sep = if i == 0 { " " } else { ", " };
            write!(out, "{sep}{}", c.name())?;
        }
        writeln!(out)?;
    }
    if let Some(n) = k.get(Counter::OwnerUpdateFailed).filter(|&n| n > 0) {
        writeln!(
            out,
            "WARNING: the kernel's owner table was full {n} times: those sockets show no owner"
        )?;
    }
    Ok(())
}

/// ` name n, name n` of the non-zero counts, or ` none`, and a newline.
fn list<'n>(items: impl Iterator<Item = (&'n str, u64)>, out: &mut impl Write) -> fmt::Result {
    let mut any = false;
    for (name, n) in items.filter(|&(_, n)| n > 0) {
        let sep = if any { "," } else { "" };
        write!(out, "{sep} {name} {n}")?;
        any = true;
    }
    if !any {
        write!(out, " none")?;
    }
    out.write_char('\n')
}

/// Accepted sockets' SYN-ACK round trips, beside the connect latency: the server-side
/// handshake figure.
fn synack_rtt_text(s: &Summary<'_>, out: &mut impl Write) -> fmt::Result {
    let w = &s.stats.why;
    let h = &w.synack_rtt;
    if let (Some(p50), Some(p90), Some(p99), Some(max)) = (
        h.percentile(50.0),
        h.percentile(90.0),
        h.percentile(99.0),
        h.max(),
    ) {
        writeln!(
            out,
            "SYN-ACK RTT, accepted (n={}): p50 {} ms, p90 {} ms, p99 {} ms, max {} ms",
            h.count(),
            Ms(p50),
            Ms(p90),
            Ms(p99),
            Ms(max)
        )?;
        w.synack_rtt_us.render("usecs", out)?;
    }
    Ok(())
}

/// The summary's part from retransmits, resets, errors and refused attempts (issue 10), in
/// lines of its own.
fn why_text(s: &Summary<'_>, out: &mut impl Write) -> fmt::Result {
    let w = &s.stats.why;
    if w.retransmits.iter().any(|&n| n > 0) {
        write!(out, "retransmits:")?;
        list(
            RetxKind::ALL
                .iter()
                .map(|&k| (k.name(), w.retransmits[k as usize])),
            out,
        )?;
    }
    if w.resets_sent + w.resets_received > 0 {
        writeln!(
            out,
            "resets: {} sent, {} received",
            w.resets_sent, w.resets_received
        )?;
    }
    if !w.errors.is_empty() {
        write!(out, "errors:")?;
        for (i, (&e, &n)) in w.errors.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            match errno_name(e) {
                Some(name) => write!(out, "{sep} {name} {n}")?,
                None => write!(out, "{sep} errno {e} {n}")?,
            }
        }
        out.write_char('\n')?;
    }
    if w.refused > 0 {
        write!(out, "refused inbound: {} (by local port:", w.refused)?;
        for (i, (&port, &n)) in w.refused_by_port.iter().enumerate() {
            let sep = if i > 0 { "," } else { "" };
            write!(out, "{sep} {port} {n}")?;
        }
        writeln!(out, ")")?;
    }
    if s.pipeline.unjoined > 0 {
        writeln!(
            out,
            "joins: {} facts, retransmits or resets matched no tracked connection",
            s.pipeline.unjoined
        )?;
    }
    Ok(())
}
