//! One line per finished connection, in the spirit of bcc's tcplife, with the phases added.
//!
//! Columns: `[TIME] PID COMM LADDR LPORT RADDR RPORT ROLE OUTCOME HS_MS LIFE_MS CLOSER CLOSE_MS
//! [NOTE]`. TIME is when the connection ended. PID/COMM are the socket's owner (`-` when
//! unknown). HS_MS is the handshake, LIFE_MS first to last event, CLOSE_MS the teardown phase
//! that matters (CLOSE_WAIT when the peer closed first, FIN_WAIT1 + FIN_WAIT2 or CLOSING when
//! this side did). NOTE says when the line is the peer of the line above (both ends of one
//! connection on this host), when the socket was first seen mid-life, and when transitions
//! were missing. `-` marks an unknown value.

use std::fmt::{self, Write};

use super::time::TimeFormatter;
use super::{comm_or_dash, left, right, role_column, Small};
use crate::event::state_name;
use crate::timeline::Conn;

/// Address column width: dotted IPv4, or any IPv6 with `-w`.
pub(crate) fn addr_width(wide: bool) -> usize {
    if wide {
        39
    } else {
        15
    }
}

pub fn header(time: &TimeFormatter, wide: bool, out: &mut impl Write) -> fmt::Result {
    let a = addr_width(wide);
    writeln!(
        out,
        "{}{:<7} {:<16} {:<a$} {:<5} {:<a$} {:<5} {:<8} {:<10} {:>8} {:>10} {:<6} {:>8} NOTE",
        time.header(),
        "PID",
        "COMM",
        "LADDR",
        "LPORT",
        "RADDR",
        "RPORT",
        "ROLE",
        "OUTCOME",
        "HS_MS",
        "LIFE_MS",
        "CLOSER",
        "CLOSE_MS",
    )
}

/// One connection. `peer_above`: this is the other end of the connection on the line above.
pub fn line(
    c: &Conn,
    peer_above: bool,
    time: &mut TimeFormatter,
    wide: bool,
    out: &mut impl Write,
) -> fmt::Result {
    // Hand-padded columns, like `header`'s: `Formatter` padding is slow on this path.
    let a = addr_width(wide);
    time.write(c.last_ts(), out)?;
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
    for (ip, port) in [(c.laddr(), c.lport()), (c.raddr(), c.rport())] {
        field.clear();
        field.push_ip(ip);
        left(out, field.as_str(), a + 1)?;
        field.clear();
        field.push_u64(u64::from(port));
        left(out, field.as_str(), 6)?;
    }
    left(out, role_column(c.role()), 9)?;
    left(out, c.outcome().name(), 10)?;
    let mut ms = |v: Option<u64>, width: usize, out: &mut _| {
        field.clear();
        match v {
            Some(ns) => field.push_ms(ns),
            None => field.push_str("-"),
        }
        right(out, field.as_str(), width)
    };
    ms(c.handshake_ns(), 9, out)?;
    ms(Some(c.life_ns()), 11, out)?;
    out.write_char(' ')?;
    left(out, c.closer().short(), 6)?;
    ms(c.close_ns(), 9, out)?;
    let mut sep = " ";
    if peer_above {
        write!(out, "{sep}peer of line above")?;
        sep = "; ";
    }
    if c.syn_retransmitted() {
        write!(out, "{sep}SYN retransmitted")?;
        sep = "; ";
    }
    if c.partial() {
        write!(out, "{sep}first seen {}", state_name(c.first_state()))?;
        sep = "; ";
    }
    if c.incomplete() {
        write!(out, "{sep}missing transitions")?;
    }
    out.write_char('\n')
}
