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
use super::{
    comm_or_dash, decimal, ip_bytes, left, left_bytes, millis, right, right_bytes, role_column,
    Small, Utf8,
};
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
    out: &mut Vec<u8>,
) -> fmt::Result {
    // Hand-padded byte columns, like `header`'s: `Formatter` padding is slow on this path.
    time.write(c.last_ts(), &mut Utf8(out))?;
    owner_and_ends(c, wide, out);
    left_bytes(out, role_column(c.role()).as_bytes(), 9);
    left_bytes(out, c.outcome().name().as_bytes(), 10);
    numbers(c, Some(c.life_ns()), c.close_ns(), out);
    let out = &mut Utf8(out);
    if let Some(names) = containers {
        container_columns(c.cgroup_id(), c.netns(), names, out)?;
    }
    let mut sep = " ";
    why_notes(c, &mut sep, out)?;
    if peer_above {
        note(out, &mut sep, "peer of line above")?;
    }
    if c.syn_retransmitted() && c.retransmits().is_none() {
        note(out, &mut sep, "SYN retransmitted")?;
    }
    if c.partial() {
        note(out, &mut sep, "first seen ")?;
        out.write_str(state_name(c.first_state()))?;
    }
    if c.incomplete() {
        note(out, &mut sep, "missing transitions")?;
    }
    out.write_char('\n')
}

/// Appends one NOTE item after its separator.
fn note(out: &mut impl Write, sep: &mut &'static str, text: &str) -> fmt::Result {
    out.write_str(sep)?;
    *sep = "; ";
    out.write_str(text)
}

/// An open socket that just crossed its stuck threshold at `at_ns`.
pub fn stuck(
    c: &Conn,
    at_ns: u64,
    time: &mut TimeFormatter,
    wide: bool,
    containers: Option<&Names>,
    out: &mut Vec<u8>,
) -> fmt::Result {
    time.write(at_ns, &mut Utf8(out))?;
    owner_and_ends(c, wide, out);
    left_bytes(out, role_column(c.role()).as_bytes(), 9);
    left_bytes(out, b"stuck", 10);
    let life = at_ns.saturating_sub(c.first_ts());
    numbers(c, Some(life), None, out);
    let out = &mut Utf8(out);
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
fn owner_and_ends(c: &Conn, wide: bool, out: &mut Vec<u8>) {
    let a = addr_width(wide);
    let mut digits = [0; 24];
    match c.owner() {
        Some((pid, comm)) => {
            left_bytes(out, decimal(u64::from(pid), &mut digits), 8);
            comm_column(comm, out);
        }
        None => {
            left_bytes(out, b"-", 8);
            left_bytes(out, b"-", 17);
        }
    }
    let mut addr = Small::new();
    for (ip, port) in [(c.laddr(), c.lport()), (c.raddr(), c.rport())] {
        left_bytes(out, ip_bytes(ip, &mut addr), a + 1);
        left_bytes(out, decimal(u64::from(port), &mut digits), 6);
    }
}

/// COMM, `-` when empty. Task names are nearly always ASCII: those are copied as they are,
/// without a UTF-8 check; anything else goes the general way.
fn comm_column(raw: &[u8], out: &mut Vec<u8>) {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    match &raw[..end] {
        [] => left_bytes(out, b"-", 17),
        name if name.is_ascii() => left_bytes(out, name, 17),
        _ => {
            let name = comm_or_dash(raw);
            out.extend_from_slice(name.as_bytes());
            let width = name.chars().count();
            out.resize(out.len() + 17usize.saturating_sub(width), b' ');
        }
    }
}

/// HS_MS RTT_MS RETX LIFE_MS CLOSER CLOSE_MS.
fn numbers(c: &Conn, life_ns: Option<u64>, close_ns: Option<u64>, out: &mut Vec<u8>) {
    let mut buf = [0; 24];
    let mut ms = |v: Option<u64>, width: usize, out: &mut Vec<u8>| match v {
        Some(ns) => right_bytes(out, millis(ns, &mut buf), width),
        None => right_bytes(out, b"-", width),
    };
    ms(c.hs_shown_ns(), 9, out);
    ms(c.srtt_ns(), 9, out);
    let mut digits = [0; 24];
    match c.retx_total() {
        Some(n) => right_bytes(out, decimal(u64::from(n), &mut digits), 5),
        None => right_bytes(out, b"-", 5),
    }
    ms(life_ns, 11, out);
    out.push(b' ');
    left_bytes(out, c.closer().short().as_bytes(), 6);
    ms(close_ns, 9, out);
}

/// What matters most about how a connection went, first in NOTE.
fn why_notes(c: &Conn, sep: &mut &'static str, out: &mut impl Write) -> fmt::Result {
    if let Some((dir, _)) = c.reset_info() {
        let what = if dir == reset_direction::SENT {
            "RST sent"
        } else {
            "RST received"
        };
        note(out, sep, what)?;
    }
    match c.timeout() {
        Timeout::None => {
            if let Some(name) = c.errno().and_then(errno_name) {
                note(out, sep, name)?;
            }
        }
        t => {
            let what = match t {
                Timeout::Connect => "connect timeout",
                Timeout::Retransmission => "retransmission timeout",
                Timeout::Keepalive => "keepalive timeout",
                _ => "zero window probe timeout",
            };
            note(out, sep, what)?;
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
                1 => note(out, sep, one)?,
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
