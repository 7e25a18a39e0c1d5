//! One line per finished connection, in the spirit of bcc's tcplife, with the phases added.
//!
//! Columns: `[TIME] PID COMM LADDR LPORT RADDR RPORT ROLE OUTCOME HS_MS RTT_MS RETX LIFE_MS
//! CLOSER CLOSE_MS [NOTE]`. TIME is when the connection ended. PID/COMM are the socket's owner
//! (`-` when unknown). HS_MS is the handshake (for an accepted socket the SYN-ACK round trip the
//! kernel measured, when known: its SYN_RECV itself lasts microseconds), RTT_MS the smoothed
//! RTT at close, RETX the retransmitted segments, LIFE_MS first to last event, CLOSE_MS the teardown phase
//! that matters (CLOSE_WAIT when the peer closed first, FIN_WAIT1 + FIN_WAIT2 or CLOSING when
//! this side did). NOTE says first what matters most (the reset and its direction, the errno,
//! the kind of timeout, handshake and FIN retransmits), then when the line is the peer of the line above (both ends of one
//! connection on this host), when the socket was first seen mid-life, and when transitions
//! were missing. `-` marks an unknown value.
//!
//! A socket stuck in a state (`--stuck`) gets a line of its own while it is still open, when it
//! crosses the threshold: OUTCOME `stuck`, TIME the crossing, LIFE_MS its life so far, CLOSE_MS
//! `-`, NOTE `stuck in CLOSE_WAIT 30.0 s` (its time in that state: for a socket first seen
//! mid-life, since it was first seen). Its connection line still follows when it ends.

use std::fmt::{self, Write};

use tcpstate_common::{reset_direction, AF_INET};

use super::time::TimeFormatter;
use super::{comm_or_dash, left, right, role_column, Small};
use crate::cgroup::Names;
use crate::event::state_name;
use crate::facts::ResetRecord;
use crate::timeline::{errno_name, stuck, Conn, RetxKind, Timeout};

/// Address column width: dotted IPv4, or any IPv6 with `-w`.
pub(crate) fn addr_width(wide: bool) -> usize {
    if wide {
        39
    } else {
        15
    }
}

pub fn header(
    time: &TimeFormatter,
    wide: bool,
    containers: bool,
    out: &mut impl Write,
) -> fmt::Result {
    let a = addr_width(wide);
    let extra = if containers {
        container_header()
    } else {
        String::new()
    };
    writeln!(
        out,
        "{}{:<7} {:<16} {:<a$} {:<5} {:<a$} {:<5} {:<8} {:<10} {:>8} {:>8} {:>4} {:>10} {:<6} {:>8}{extra} NOTE",
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
        "RTT_MS",
        "RETX",
        "LIFE_MS",
        "CLOSER",
        "CLOSE_MS",
    )
}

/// Width the CGROUP column is padded to (longer paths push NOTE right).
const CGROUP_WIDTH: usize = 40;

/// The `--containers` column heads, each after a space.
pub(crate) fn container_header() -> String {
    format!(
        " {:<10} {:<36} {:<12} {:<CGROUP_WIDTH$}",
        "NETNS", "POD_UID", "CONTAINER", "CGROUP"
    )
}

/// The `--containers` columns: NETNS, POD_UID, CONTAINER (12 digits, as `docker ps` shows
/// it), CGROUP; `-` where unknown.
pub(crate) fn container_columns(
    cgroup_id: u64,
    netns: u32,
    cgroups: &Names,
    out: &mut impl Write,
) -> fmt::Result {
    let info = cgroups.get(cgroup_id);
    let mut field = Small::new();
    if netns != 0 {
        field.push_u64(u64::from(netns));
    } else {
        field.push_str("-");
    }
    out.write_char(' ')?;
    left(out, field.as_str(), 11)?;
    let kube = info.map(|i| &i.kube);
    left(
        out,
        kube.and_then(|k| k.pod_uid.as_deref()).unwrap_or("-"),
        37,
    )?;
    let id = kube.and_then(|k| k.container_id.as_deref()).unwrap_or("-");
    left(out, id.get(..12).unwrap_or(id), 13)?;
    left(
        out,
        info.map(|i| i.path.as_str()).unwrap_or("-"),
        CGROUP_WIDTH,
    )
}

/// One connection. `peer_above`: this is the other end of the connection on the line above.
/// `containers`: the `--containers` columns, with the cgroup names known so far.
pub fn line(
    c: &Conn,
    peer_above: bool,
    time: &mut TimeFormatter,
    wide: bool,
    containers: Option<&Names>,
    out: &mut impl Write,
) -> fmt::Result {
    // Hand-padded columns, like `header`'s: `Formatter` padding is slow on this path.
    time.write(c.last_ts(), out)?;
    let mut field = Small::new();
    owner_and_ends(c, wide, &mut field, out)?;
    left(out, role_column(c.role()), 9)?;
    left(out, c.outcome().name(), 10)?;
    numbers(c, Some(c.life_ns()), c.close_ns(), &mut field, out)?;
    if let Some(names) = containers {
        container_columns(c.cgroup_id(), c.netns(), names, out)?;
    }
    let mut sep = " ";
    why_notes(c, &mut sep, out)?;
    if peer_above {
        write!(out, "{sep}peer of line above")?;
        sep = "; ";
    }
    if c.syn_retransmitted() && c.retransmits().is_none() {
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

/// An open socket that just crossed its stuck threshold at `at_ns`.
pub fn stuck(
    c: &Conn,
    at_ns: u64,
    time: &mut TimeFormatter,
    wide: bool,
    containers: Option<&Names>,
    out: &mut impl Write,
) -> fmt::Result {
    time.write(at_ns, out)?;
    let mut field = Small::new();
    owner_and_ends(c, wide, &mut field, out)?;
    left(out, role_column(c.role()), 9)?;
    left(out, "stuck", 10)?;
    let life = at_ns.saturating_sub(c.first_ts());
    numbers(c, Some(life), None, &mut field, out)?;
    if let Some(names) = containers {
        container_columns(c.cgroup_id(), c.netns(), names, out)?;
    }
    let (s, t) = stuck::tenths(at_ns.saturating_sub(c.state_ts()));
    write!(out, " stuck in {} {s}.{t} s", state_name(c.state()))?;
    if c.partial() {
        write!(out, "; first seen {}", state_name(c.first_state()))?;
    }
    out.write_char('\n')
}

/// PID COMM LADDR LPORT RADDR RPORT.
fn owner_and_ends(c: &Conn, wide: bool, field: &mut Small, out: &mut impl Write) -> fmt::Result {
    let a = addr_width(wide);
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
    Ok(())
}

/// HS_MS RTT_MS RETX LIFE_MS CLOSER CLOSE_MS.
fn numbers(
    c: &Conn,
    life_ns: Option<u64>,
    close_ns: Option<u64>,
    field: &mut Small,
    out: &mut impl Write,
) -> fmt::Result {
    let mut ms = |v: Option<u64>, width: usize, out: &mut _| {
        field.clear();
        match v {
            Some(ns) => field.push_ms(ns),
            None => field.push_str("-"),
        }
        right(out, field.as_str(), width)
    };
    ms(c.hs_shown_ns(), 9, out)?;
    ms(c.srtt_ns(), 9, out)?;
    field.clear();
    match c.retx_total() {
        Some(n) => field.push_u64(u64::from(n)),
        None => field.push_str("-"),
    }
    right(out, field.as_str(), 5)?;
    let mut ms = |v: Option<u64>, width: usize, out: &mut _| {
        field.clear();
        match v {
            Some(ns) => field.push_ms(ns),
            None => field.push_str("-"),
        }
        right(out, field.as_str(), width)
    };
    ms(life_ns, 11, out)?;
    out.write_char(' ')?;
    left(out, c.closer().short(), 6)?;
    ms(close_ns, 9, out)
}

/// What matters most about how a connection went, first in NOTE.
fn why_notes(c: &Conn, sep: &mut &'static str, out: &mut impl Write) -> fmt::Result {
    if let Some((dir, _)) = c.reset_info() {
        let what = if dir == reset_direction::SENT {
            "RST sent"
        } else {
            "RST received"
        };
        write!(out, "{sep}{what}")?;
        *sep = "; ";
    }
    match c.timeout() {
        Timeout::None => {
            if let Some(name) = c.errno().and_then(errno_name) {
                write!(out, "{sep}{name}")?;
                *sep = "; ";
            }
        }
        t => {
            let what = match t {
                Timeout::Connect => "connect timeout",
                Timeout::Retransmission => "retransmission timeout",
                Timeout::Keepalive => "keepalive timeout",
                _ => "zero window probe timeout",
            };
            write!(out, "{sep}{what}")?;
            *sep = "; ";
        }
    }
    if let Some(r) = c.retransmits() {
        for (kind, one, many) in [
            (RetxKind::Syn, "SYN retransmitted", "SYN retransmits"),
            (
                RetxKind::SynAck,
                "SYN-ACK retransmitted",
                "SYN-ACK retransmits",
            ),
            (RetxKind::Fin, "FIN retransmitted", "FIN retransmits"),
            (
                RetxKind::Failed,
                "retransmission failed",
                "failed retransmissions",
            ),
        ] {
            match r[kind as usize] {
                0 => {}
                1 => {
                    write!(out, "{sep}{one}")?;
                    *sep = "; ";
                }
                n => {
                    write!(out, "{sep}{n} {many}")?;
                    *sep = "; ";
                }
            }
        }
    }
    Ok(())
}

/// An inbound connection attempt this host refused: one line with OUTCOME `refused_in`, the
/// local end being the port nobody listened on.
pub fn refused(
    r: &ResetRecord,
    time: &mut TimeFormatter,
    wide: bool,
    out: &mut impl Write,
) -> fmt::Result {
    let a = addr_width(wide);
    time.write(r.ts_ns, out)?;
    left(out, "-", 8)?;
    left(out, "-", 17)?;
    let mut field = Small::new();
    for (raw, port) in [(&r.saddr, r.sport), (&r.daddr, r.dport)] {
        field.clear();
        if r.family == 0 {
            field.push_str("-");
        } else if r.family == u16::from(AF_INET) {
            field.push_ip([raw[0], raw[1], raw[2], raw[3]].into());
        } else {
            field.push_ip((*raw).into());
        }
        left(out, field.as_str(), a + 1)?;
        field.clear();
        if r.family == 0 {
            field.push_str("-");
        } else {
            field.push_u64(u64::from(port));
        }
        left(out, field.as_str(), 6)?;
    }
    left(out, "server", 9)?;
    left(out, "refused_in", 10)?;
    for w in [9, 9, 5, 11] {
        right(out, "-", w)?;
    }
    out.write_char(' ')?;
    left(out, "-", 6)?;
    right(out, "-", 9)?;
    out.write_str(" RST sent to a SYN: nobody listening\n")
}
