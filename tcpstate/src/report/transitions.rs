//! One line per state change, in the spirit of bcc's tcpstates.
//!
//! Columns: `[TIME] PID COMM LADDR:LPORT RADDR:RPORT OLDSTATE -> NEWSTATE MS`. PID/COMM are the
//! socket's best known owner after the event (`-` when unknown); MS is the time the socket
//! spent in OLDSTATE, 0.000 for the first event of a lifetime, a socket first seen mid-life, or
//! after missed transitions (the engine's bounded table of open sockets is what remembers when
//! each state was entered).
//!
//! A socket stuck in a state (`--stuck`) gets a line when it crosses the threshold, though no
//! transition happened: `STATE -> (stuck)` with MS its time in that state so far.

use std::fmt::{self, Write};

use super::time::TimeFormatter;
use super::{comm_or_dash, left, right, Small};
use crate::cgroup::Names;
use crate::event::{local_addr, remote_addr, state_name, Event};
use crate::timeline::{Conn, Step};

fn endpoint_width(wide: bool) -> usize {
    if wide {
        47
    } else {
        21
    }
}

pub fn header(
    time: &TimeFormatter,
    wide: bool,
    containers: bool,
    out: &mut impl Write,
) -> fmt::Result {
    let e = endpoint_width(wide);
    let extra = if containers {
        super::table::container_header()
    } else {
        String::new()
    };
    writeln!(
        out,
        "{}{:<7} {:<16} {:<e$} {:<e$} {:<11} -> {:<12} {:>10}{extra}",
        time.header(),
        "PID",
        "COMM",
        "LADDR:LPORT",
        "RADDR:RPORT",
        "OLDSTATE",
        "NEWSTATE",
        "MS"
    )
}

pub fn line(
    ev: &Event,
    step: &Step,
    time: &mut TimeFormatter,
    wide: bool,
    containers: Option<&Names>,
    out: &mut impl Write,
) -> fmt::Result {
    // Hand-padded columns: this runs once per event, and `Formatter` padding is slow.
    let e = endpoint_width(wide);
    time.write(ev.ts_ns, out)?;
    let mut field = Small::new();
    if step.owner_pid == 0 {
        left(out, "-", 8)?;
        left(out, "-", 17)?;
    } else {
        field.push_u64(u64::from(step.owner_pid));
        left(out, field.as_str(), 8)?;
        left(out, &comm_or_dash(&step.owner_comm), 17)?;
    }
    field.clear();
    field.push_endpoint(local_addr(ev), ev.sport);
    left(out, field.as_str(), e + 1)?;
    field.clear();
    field.push_endpoint(remote_addr(ev), ev.dport);
    left(out, field.as_str(), e + 1)?;
    left(out, state_name(ev.oldstate), 11)?;
    out.write_str(" -> ")?;
    left(out, state_name(ev.newstate), 13)?;
    field.clear();
    field.push_ms(step.since_ns.map_or(0, |s| ev.ts_ns.saturating_sub(s)));
    right(out, field.as_str(), 10)?;
    if let Some(names) = containers {
        super::table::container_columns(step.cgroup_id, step.netns, names, out)?;
    }
    out.write_char('\n')
}

/// An open socket that just crossed its stuck threshold at `at_ns`.
pub fn stuck(
    c: &Conn,
    at_ns: u64,
    time: &mut TimeFormatter,
    wide: bool,
    containers: Option<&Names>,
    out: &mut impl Write,
) -> fmt::Result {
    let e = endpoint_width(wide);
    time.write(at_ns, out)?;
    let mut field = Small::new();
    match c.owner() {
        Some((pid, comm)) => {
            field.push_u64(u64::from(pid));
            left(out, field.as_str(), 8)?;
            left(out, &comm_or_dash(comm), 17)?;
        }
        None => {
            left(out, "-", 8)?;
            left(out, "-", 17)?;
        }
    }
    field.clear();
    field.push_endpoint(c.laddr(), c.lport());
    left(out, field.as_str(), e + 1)?;
    field.clear();
    field.push_endpoint(c.raddr(), c.rport());
    left(out, field.as_str(), e + 1)?;
    left(out, state_name(c.state()), 11)?;
    out.write_str(" -> ")?;
    left(out, "(stuck)", 13)?;
    field.clear();
    field.push_ms(at_ns.saturating_sub(c.state_ts()));
    right(out, field.as_str(), 10)?;
    if let Some(names) = containers {
        super::table::container_columns(c.cgroup_id(), c.netns(), names, out)?;
    }
    out.write_char('\n')
}
