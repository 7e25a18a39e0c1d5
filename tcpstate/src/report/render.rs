//! The seam between the pipeline and the output modes: one [`Renderer`] per mode and format,
//! picked once, so a new mode is one new type here and nothing in the pipeline.
//!
//! Renderers write into a byte buffer the pipeline owns and hands to its writer afterwards:
//! rendering stays monomorphic and allocation-free on the hot path, whatever the writer is.

use std::fmt;
use std::io;

use super::summary::{self, Summary};
use super::time::{ClockBase, TimeColumn, TimeFormatter};
use super::{json, ladder, table, transitions, Utf8};
use crate::cgroup::Names;
use crate::event::Event;
use crate::facts::ResetRecord;
use crate::input::KernelCounters;
use crate::pipeline::ResetReasons;
use crate::timeline::{Conn, Engine, Step};

/// What the pipeline prints, record by record.
pub(crate) trait Renderer {
    /// Before the first record (a table's column header).
    fn start(&mut self, _out: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }
    /// One state change; called only by modes that print transitions.
    fn transition(&mut self, ev: &Event, step: &Step, out: &mut Vec<u8>) -> io::Result<()>;
    /// A finished connection shown alone.
    fn single(&mut self, c: &Conn, out: &mut Vec<u8>) -> io::Result<()>;
    /// Both ends of one connection on this host, `a` first.
    fn pair(&mut self, a: &Conn, b: &Conn, out: &mut Vec<u8>) -> io::Result<()>;
    fn summary(&mut self, s: &Summary<'_>, out: &mut Vec<u8>) -> io::Result<()>;
    /// An inbound connection attempt this host refused (no socket: not a connection).
    fn refused(&mut self, r: &ResetRecord, out: &mut Vec<u8>) -> io::Result<()>;
    /// An open socket crossed its stuck threshold at `at_ns` (`Conn::state` is the state it is
    /// stuck in, `Conn::state_ts` when it entered it). Called once per socket and state.
    fn stuck(&mut self, _c: &Conn, _at_ns: u64, _out: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }
    /// A snapshot of the kernel's counters arrived (once a second live); the engine's table is
    /// at hand for sinks that report open connections (the exporter). Printing modes show
    /// counters only in summaries.
    fn counters(&mut self, _counters: &KernelCounters, _engine: &Engine) {}
    /// Listener health, when the counters were sampled (the exporter's metrics).
    fn health(&mut self, _health: &crate::listeners::Health, _drop_reasons: &ResetReasons) {}
    /// What a cgroup id means (an `Input::Cgroup`), for renderers that show cgroups.
    fn cgroup(&mut self, _id: u64, _path: &str) {}
}

/// Which renderer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    ConnectionTable,
    TransitionTable,
    Ladder,
    /// Connection objects (also for `--timeline`: the objects carry the ladder).
    ConnectionJson,
    TransitionJson,
}

pub(crate) fn new(
    kind: Kind,
    time: TimeColumn,
    clock: ClockBase,
    wide: bool,
    containers: bool,
    reasons: ResetReasons,
) -> Box<dyn Renderer> {
    let text = |wide| Text {
        time: TimeFormatter::new(time, clock),
        wide,
        containers,
        cgroups: Names::default(),
    };
    match kind {
        Kind::ConnectionTable => Box::new(ConnectionTable(text(wide))),
        Kind::TransitionTable => Box::new(TransitionTable(text(wide))),
        Kind::Ladder => Box::new(Ladder(text(wide))),
        Kind::ConnectionJson | Kind::TransitionJson => Box::new(Json {
            clock,
            reasons,
            cgroups: Names::default(),
        }),
    }
}

fn fmt_error(_: fmt::Error) -> io::Error {
    io::Error::other("formatting output failed")
}

/// What the text renderers share.
struct Text {
    time: TimeFormatter,
    wide: bool,
    /// `--containers`: the container columns.
    containers: bool,
    cgroups: Names,
}

impl Text {
    /// The summary block, after an empty line that sets it off from a table.
    fn summary(&self, s: &Summary<'_>, blank_line: bool, out: &mut Vec<u8>) -> io::Result<()> {
        if blank_line {
            out.push(b'\n');
        }
        summary::text(s, &mut Utf8(out)).map_err(fmt_error)
    }
}

struct ConnectionTable(Text);

impl Renderer for ConnectionTable {
    fn start(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        table::header(&self.0.time, self.0.wide, self.0.containers, &mut Utf8(out))
            .map_err(fmt_error)
    }

    fn cgroup(&mut self, id: u64, path: &str) {
        self.0.cgroups.insert(id, path);
    }

    fn transition(&mut self, _: &Event, _: &Step, _: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }

    fn single(&mut self, c: &Conn, out: &mut Vec<u8>) -> io::Result<()> {
        let t = &mut self.0;
        let cg = t.containers.then_some(&t.cgroups);
        table::line(c, false, &mut t.time, t.wide, cg, out).map_err(fmt_error)
    }

    fn pair(&mut self, a: &Conn, b: &Conn, out: &mut Vec<u8>) -> io::Result<()> {
        let t = &mut self.0;
        let cg = t.containers.then_some(&t.cgroups);
        table::line(a, false, &mut t.time, t.wide, cg, out).map_err(fmt_error)?;
        table::line(b, true, &mut t.time, t.wide, cg, out).map_err(fmt_error)
    }

    fn summary(&mut self, s: &Summary<'_>, out: &mut Vec<u8>) -> io::Result<()> {
        self.0.summary(s, true, out)
    }

    fn refused(&mut self, r: &ResetRecord, out: &mut Vec<u8>) -> io::Result<()> {
        let t = &mut self.0;
        table::refused(r, &mut t.time, t.wide, &mut Utf8(out)).map_err(fmt_error)
    }

    fn stuck(&mut self, c: &Conn, at_ns: u64, out: &mut Vec<u8>) -> io::Result<()> {
        let t = &mut self.0;
        let cg = t.containers.then_some(&t.cgroups);
        table::stuck(c, at_ns, &mut t.time, t.wide, cg, out).map_err(fmt_error)
    }
}

struct TransitionTable(Text);

impl Renderer for TransitionTable {
    fn start(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        transitions::header(&self.0.time, self.0.wide, self.0.containers, &mut Utf8(out))
            .map_err(fmt_error)
    }

    fn cgroup(&mut self, id: u64, path: &str) {
        self.0.cgroups.insert(id, path);
    }

    fn transition(&mut self, ev: &Event, step: &Step, out: &mut Vec<u8>) -> io::Result<()> {
        let t = &mut self.0;
        let cg = t.containers.then_some(&t.cgroups);
        transitions::line(ev, step, &mut t.time, t.wide, cg, &mut Utf8(out)).map_err(fmt_error)
    }

    fn single(&mut self, _: &Conn, _: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }

    fn pair(&mut self, _: &Conn, _: &Conn, _: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }

    fn summary(&mut self, s: &Summary<'_>, out: &mut Vec<u8>) -> io::Result<()> {
        self.0.summary(s, true, out)
    }

    fn refused(&mut self, _: &ResetRecord, _: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }

    fn stuck(&mut self, c: &Conn, at_ns: u64, out: &mut Vec<u8>) -> io::Result<()> {
        let t = &mut self.0;
        let cg = t.containers.then_some(&t.cgroups);
        transitions::stuck(c, at_ns, &mut t.time, t.wide, cg, &mut Utf8(out)).map_err(fmt_error)
    }
}

struct Ladder(Text);

impl Renderer for Ladder {
    fn transition(&mut self, _: &Event, _: &Step, _: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }

    fn single(&mut self, c: &Conn, out: &mut Vec<u8>) -> io::Result<()> {
        ladder::single(c, &mut self.0.time, &mut Utf8(out)).map_err(fmt_error)
    }

    fn pair(&mut self, a: &Conn, b: &Conn, out: &mut Vec<u8>) -> io::Result<()> {
        ladder::pair(a, b, &mut self.0.time, &mut Utf8(out)).map_err(fmt_error)
    }

    fn summary(&mut self, s: &Summary<'_>, out: &mut Vec<u8>) -> io::Result<()> {
        // Each ladder already ends with an empty line.
        self.0.summary(s, false, out)
    }

    fn refused(&mut self, r: &ResetRecord, out: &mut Vec<u8>) -> io::Result<()> {
        ladder::refused(r, &mut self.0.time, &mut Utf8(out)).map_err(fmt_error)
    }

    fn stuck(&mut self, c: &Conn, at_ns: u64, out: &mut Vec<u8>) -> io::Result<()> {
        ladder::stuck(c, at_ns, &mut self.0.time, &mut Utf8(out)).map_err(fmt_error)
    }
}

/// JSON Lines: one object per record.
struct Json {
    clock: ClockBase,
    reasons: ResetReasons,
    cgroups: Names,
}

impl Renderer for Json {
    fn cgroup(&mut self, id: u64, path: &str) {
        self.cgroups.insert(id, path);
    }

    fn transition(&mut self, ev: &Event, step: &Step, out: &mut Vec<u8>) -> io::Result<()> {
        json::transition(ev, step, &self.clock, &self.cgroups, out);
        Ok(())
    }

    fn single(&mut self, c: &Conn, out: &mut Vec<u8>) -> io::Result<()> {
        json::connection(c, None, &self.clock, &self.reasons, &self.cgroups, out);
        Ok(())
    }

    fn pair(&mut self, a: &Conn, b: &Conn, out: &mut Vec<u8>) -> io::Result<()> {
        json::connection(a, Some(b), &self.clock, &self.reasons, &self.cgroups, out);
        json::connection(b, Some(a), &self.clock, &self.reasons, &self.cgroups, out);
        Ok(())
    }

    fn summary(&mut self, s: &Summary<'_>, out: &mut Vec<u8>) -> io::Result<()> {
        json::summary(s, out)
    }

    fn refused(&mut self, r: &ResetRecord, out: &mut Vec<u8>) -> io::Result<()> {
        json::refused(r, &self.clock, out);
        Ok(())
    }

    fn stuck(&mut self, c: &Conn, at_ns: u64, out: &mut Vec<u8>) -> io::Result<()> {
        json::stuck(c, at_ns, &self.clock, &self.cgroups, out);
        Ok(())
    }
}

/// Hands what a renderer wrote to the writer and empties the buffer for the next record.
pub(crate) fn flush(buf: &mut Vec<u8>, out: &mut impl io::Write) -> io::Result<()> {
    if buf.is_empty() {
        return Ok(());
    }
    let r = out.write_all(buf);
    buf.clear();
    r
}
