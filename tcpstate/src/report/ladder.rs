//! `--timeline`: each finished connection as a small ladder of its transitions.
//!
//! A block per connection: a title (role and ends; the time column, if any, is when its first
//! event happened), a line with the owner, outcome and every known phase duration, notes, then
//! one rung per transition with its offset from the first event. A gap rung (`~>`) marks a
//! state reached through transitions that were never seen. When both ends of a connection are
//! on this host the two ladders are drawn side by side on one time axis. A blank line ends each
//! block.
//!
//! A socket stuck in a state (`--stuck`) gets one line (and a blank one) when it crosses the
//! threshold, while it is still open: `stuck in CLOSE_WAIT 30.0 s: PID COMM LOCAL <-> REMOTE`.

use std::fmt::{self, Write};

use super::time::TimeFormatter;
use super::{comm_or_dash, right, spaces, Endpoint, Ms, Small};
use crate::event::state_name;
use crate::facts::ResetRecord;
use crate::timeline::{errno_name, stuck, Conn, Entry, Mark, Outcome, Phase, RetxKind, LADDER};

/// Width of the left ladder when two are side by side.
const LEFT: usize = 36;

/// `+1.234 ms`, right-aligned so the decimal points line up.
struct Offset(u64);

impl Offset {
    fn write(&self, out: &mut impl Write) -> fmt::Result {
        let mut s = Small::new();
        s.push_str("+");
        s.push_ms(self.0);
        right(out, s.as_str(), 12)?;
        out.write_str(" ms")
    }
}

fn owner(c: &Conn, out: &mut impl Write) -> fmt::Result {
    match c.owner() {
        Some((pid, comm)) => write!(out, "pid {pid} ({})", comm_or_dash(comm)),
        None => write!(out, "pid - (owner unknown)"),
    }
}

/// Owner, outcome, phases, closer and life on one line.
fn describe(c: &Conn, out: &mut impl Write) -> fmt::Result {
    owner(c, out)?;
    write!(out, "  {}", c.outcome().name())?;
    for p in [Phase::Handshake, Phase::Established]
        .into_iter()
        .chain(Phase::TEARDOWN)
    {
        if let Some(ns) = c.phase_ns(p) {
            write!(out, "  {} {} ms", p.name(), Ms(ns))?;
        }
    }
    if let Some(name) = c.closer().name() {
        write!(out, "  closer {name}")?;
    }
    write!(out, "  life {} ms", Ms(c.life_ns()))?;
    if matches!(c.outcome(), Outcome::Open | Outcome::Evicted) {
        write!(out, " so far")?;
    }
    if let Some(ns) = c.synack_rtt_ns() {
        write!(out, "  synack_rtt {} ms", Ms(ns))?;
    }
    if let Some(ns) = c.srtt_ns() {
        write!(out, "  srtt {} ms", Ms(ns))?;
    }
    if let Some(name) = c.errno().and_then(errno_name) {
        write!(out, "  {name}")?;
    }
    if let Some(t) = c.timeout().name() {
        write!(out, " ({t} timeout)")?;
    }
    if let (Some(a), Some(r)) = (c.bytes_acked(), c.bytes_received()) {
        write!(out, "  bytes out {a} in {r}")?;
    }
    Ok(())
}

fn notes(c: &Conn, prefix: &str, out: &mut impl Write) -> fmt::Result {
    if c.syn_retransmitted() && c.retransmits().is_none() {
        writeln!(
            out,
            "  {prefix}note: SYN_SENT outlasted the 1 s SYN timeout: a SYN or SYN-ACK was lost"
        )?;
    }
    let synacks = c.retransmits().map_or(0, |r| r[RetxKind::SynAck as usize]);
    if synacks > 0 {
        // They happened before the accepted socket existed: no place on its ladder.
        writeln!(
            out,
            "  {prefix}note: SYN-ACK retransmitted {synacks}x before this socket was created"
        )?;
    }
    if c.partial() {
        writeln!(
            out,
            "  {prefix}note: started before tracing; first seen in {}",
            state_name(c.first_state())
        )?;
    }
    if c.incomplete() {
        writeln!(
            out,
            "  {prefix}note: transitions are missing (~> marks where)"
        )?;
    }
    if c.marks_dropped() {
        writeln!(
            out,
            "  {prefix}note: more retransmits or resets than shown (counts: see the table or JSON)"
        )?;
    }
    if c.ladder_overflow() {
        writeln!(
            out,
            "  {prefix}note: more than {LADDER} transitions; the middle ones are not shown"
        )?;
    }
    Ok(())
}

/// One line of a ladder.
#[derive(Clone, Copy)]
enum Row {
    Transition {
        from: u8,
        to: u8,
        gap: bool,
        time_wait: bool,
    },
    StillOpen(u8),
    Evicted(u8),
    Mark(Mark),
}

impl Row {
    fn write(&self, out: &mut impl Write) -> fmt::Result {
        match *self {
            Row::Transition {
                from,
                to,
                gap,
                time_wait,
            } => {
                let arrow = if gap { "~>" } else { "->" };
                write!(out, "{} {arrow} {}", state_name(from), state_name(to))?;
                if time_wait {
                    out.write_str(" = TIME_WAIT 60 s")?;
                }
                Ok(())
            }
            Row::StillOpen(s) => write!(out, "(still {} at end of trace)", state_name(s)),
            Row::Evicted(s) => write!(out, "(evicted in {})", state_name(s)),
            Row::Mark(m) => out.write_str(m.text()),
        }
    }
}

/// The rows of a ladder with their offsets from the connection's first event.
fn rows(c: &Conn) -> impl Iterator<Item = (u64, Row)> + '_ {
    let total = c.ladder().count();
    let mut prev = c.first_state();
    let mut i = 0;
    let rungs = c.entries().map(move |e| match e {
        Entry::State(r) => {
            i += 1;
            let row = Row::Transition {
                from: prev,
                to: r.state,
                gap: r.gap,
                time_wait: i == total && c.time_wait(),
            };
            prev = r.state;
            (r.offset_ns, row)
        }
        Entry::Mark { mark, offset_ns } => (offset_ns, Row::Mark(mark)),
    });
    let last = c.state();
    let end = match c.outcome() {
        Outcome::Open => Some((c.life_ns(), Row::StillOpen(last))),
        Outcome::Evicted => Some((c.life_ns(), Row::Evicted(last))),
        _ => None,
    };
    rungs.chain(end)
}

/// `rows` with offsets from `start` instead of the connection's first event.
fn shifted(c: &Conn, start: u64) -> impl Iterator<Item = (u64, Row)> + '_ {
    let base = c.first_ts().saturating_sub(start);
    rows(c).map(move |(off, row)| (base.saturating_add(off), row))
}

fn write_row(offset: u64, indent: usize, row: &Row, out: &mut impl Write) -> fmt::Result {
    out.write_str("  ")?;
    Offset(offset).write(out)?;
    spaces(out, 2 + indent)?;
    row.write(out)?;
    out.write_char('\n')
}

/// One connection's ladder.
pub fn single(c: &Conn, time: &mut TimeFormatter, out: &mut impl Write) -> fmt::Result {
    time.write(c.first_ts(), out)?;
    write!(
        out,
        "{} {}",
        c.role().name(),
        Endpoint(c.laddr(), c.lport())
    )?;
    if c.rport() != 0 {
        write!(out, " -> {}", Endpoint(c.raddr(), c.rport()))?;
    }
    out.write_char('\n')?;
    out.write_str("  ")?;
    describe(c, out)?;
    out.write_char('\n')?;
    notes(c, "", out)?;
    for (offset, row) in rows(c) {
        write_row(offset, 0, &row, out)?;
    }
    out.write_char('\n')
}

/// Both ends of one connection, `a` on the left (the client when roles are known).
pub fn pair(a: &Conn, b: &Conn, time: &mut TimeFormatter, out: &mut impl Write) -> fmt::Result {
    let start = a.first_ts().min(b.first_ts());
    time.write(start, out)?;
    writeln!(
        out,
        "{} {} <-> {} {} (both ends on this host)",
        a.role().name(),
        Endpoint(a.laddr(), a.lport()),
        b.role().name(),
        Endpoint(b.laddr(), b.lport())
    )?;
    let mut labels = [String::new(), String::new()];
    for (c, label) in [a, b].into_iter().zip(labels.iter_mut()) {
        write!(
            label,
            "{} {}",
            c.role().name(),
            Endpoint(c.laddr(), c.lport())
        )?;
        write!(out, "  {label}: ")?;
        describe(c, out)?;
        out.write_char('\n')?;
        notes(c, &format!("{label}: "), out)?;
    }
    writeln!(out, "{:19}{:<LEFT$} {}", "", labels[0], labels[1])?;
    let mut left = shifted(a, start).peekable();
    let mut right = shifted(b, start).peekable();
    loop {
        // Merge on one time axis; the left side first on ties.
        let take_left = match (left.peek(), right.peek()) {
            (Some(l), Some(r)) => l.0 <= r.0,
            (Some(_), None) => true,
            (None, Some(_)) => false,
            (None, None) => break,
        };
        let (row, indent) = if take_left {
            (left.next(), 0)
        } else {
            (right.next(), LEFT + 1)
        };
        if let Some((off, row)) = row {
            write_row(off, indent, &row, out)?;
        }
    }
    out.write_char('\n')
}

/// An inbound connection attempt this host refused, as a one-line block.
pub fn refused(r: &ResetRecord, time: &mut TimeFormatter, out: &mut impl Write) -> fmt::Result {
    time.write(r.ts_ns, out)?;
    if r.family == 0 {
        return writeln!(out, "refused inbound (addresses not reported)\n");
    }
    let ip = |raw: &[u8; 16]| -> std::net::IpAddr {
        if r.family == u16::from(tcpstate_common::AF_INET) {
            [raw[0], raw[1], raw[2], raw[3]].into()
        } else {
            (*raw).into()
        }
    };
    writeln!(
        out,
        "refused inbound {} <- {}: RST sent to a SYN, nobody listening\n",
        Endpoint(ip(&r.saddr), r.sport),
        Endpoint(ip(&r.daddr), r.dport)
    )
}

/// An open socket that just crossed its stuck threshold at `at_ns`.
pub fn stuck(c: &Conn, at_ns: u64, time: &mut TimeFormatter, out: &mut impl Write) -> fmt::Result {
    time.write(at_ns, out)?;
    let (s, t) = stuck::tenths(at_ns.saturating_sub(c.state_ts()));
    write!(out, "stuck in {} {s}.{t} s: ", state_name(c.state()))?;
    match c.owner() {
        Some((pid, comm)) => write!(out, "{pid} {}", comm_or_dash(comm))?,
        None => out.write_str("- -")?,
    }
    write!(
        out,
        " {} <-> {}",
        Endpoint(c.laddr(), c.lport()),
        Endpoint(c.raddr(), c.rport())
    )?;
    if c.partial() {
        write!(out, " (first seen {})", state_name(c.first_state()))?;
    }
    out.write_str("\n\n")
}
