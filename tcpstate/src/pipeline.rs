//! The pure pipeline: the stream of [`Input`]s in, text or JSON Lines out.
//!
//! Input -> reorder window -> timeline engine -> statistics, pairing of both ends -> report.
//! Output is a deterministic function of the inputs alone: times come from event timestamps,
//! ticks and the [`ClockBase`], never from reading a clock, which is what lets a replay of a
//! recording reproduce a live trace byte for byte.

use std::collections::HashSet;
use std::io::{self, Write};

use crate::facts::ResetRecord;
use crate::input::{Input, KernelCounters};
use crate::listeners::Health;
use crate::report::pairing::{self, Emit, Pairing};
use crate::report::render::{self, Renderer};
use crate::report::summary::{PipelineCounts, Summary, SummaryKind};
use crate::stats::Stats;
use crate::timeline::stuck::{StuckGroup, Thresholds};
use crate::timeline::{self, Conn, Engine, Item, Linger, Phase, Reorder};

pub use crate::report::time::{ClockBase, TimeColumn};

/// Names of the kernel's reset reasons (`enum sk_rst_reason`, lower case, indexed by value;
/// empty where unnamed): read from BTF by a live trace, from the header by a replay. A handle
/// to a table that lives as long as the process, so the configuration stays `Copy`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ResetReasons(&'static [String]);

impl ResetReasons {
    /// Keeps `names` for the rest of the process (one table per trace or replay).
    pub fn leak(names: Vec<String>) -> ResetReasons {
        if names.is_empty() {
            return ResetReasons::default();
        }
        ResetReasons(Vec::leak(names))
    }

    pub fn name(&self, code: u16) -> Option<&'static str> {
        let table: &'static [String] = self.0;
        table
            .get(usize::from(code))
            .map(String::as_str)
            .filter(|s| !s.is_empty())
    }

    pub fn names(&self) -> &'static [String] {
        self.0
    }
}

/// What is printed per record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Mode {
    /// One record per finished connection.
    #[default]
    Connections,
    /// One record per state change.
    Transitions,
    /// Each finished connection as a ladder of its transitions (JSON: as `Connections`, whose
    /// objects carry the ladder).
    Timeline,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Format {
    #[default]
    Table,
    /// JSON Lines.
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputConfig {
    pub mode: Mode,
    pub format: Format,
    pub time: TimeColumn,
    /// Wide address columns (IPv6).
    pub wide: bool,
    /// The table's container columns (`--containers`).
    pub containers: bool,
    /// Print only connections whose HS_MS (`Conn::hs_shown_ns`: an accepted socket's SYN-ACK
    /// round trip when known, the handshake otherwise) is at least this long (connections and
    /// timeline modes; the summary still counts every connection).
    pub min_handshake_ns: Option<u64>,
    /// Print only connections that stayed in CLOSE_WAIT at least this long.
    pub min_close_wait_ns: Option<u64>,
    /// Also print a summary every this much event time (covering that interval).
    pub interval_ns: Option<u64>,
    pub max_tracked: usize,
    pub reorder_window_ns: u64,
    pub clock: ClockBase,
    pub summary_at_end: bool,
    /// Print at most this many records (`--count`); both ends of a pair are never split.
    /// Statistics still count everything.
    pub max_records: Option<u64>,
    pub reset_reasons: ResetReasons,
    /// Names of the kernel's packet drop reasons (`enum skb_drop_reason`), the same way.
    pub drop_reasons: ResetReasons,
    /// Stuck-socket thresholds (`--stuck`); on by default.
    pub stuck: Thresholds,
}

impl OutputConfig {
    fn renderer(&self) -> render::Kind {
        use render::Kind;
        match (self.mode, self.format) {
            (Mode::Connections, Format::Table) => Kind::ConnectionTable,
            (Mode::Transitions, Format::Table) => Kind::TransitionTable,
            (Mode::Timeline, Format::Table) => Kind::Ladder,
            (Mode::Transitions, Format::Json) => Kind::TransitionJson,
            (_, Format::Json) => Kind::ConnectionJson,
        }
    }
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            mode: Mode::Connections,
            format: Format::Table,
            time: TimeColumn::None,
            wide: false,
            containers: false,
            min_handshake_ns: None,
            min_close_wait_ns: None,
            interval_ns: None,
            max_tracked: timeline::DEFAULT_MAX_TRACKED,
            reorder_window_ns: timeline::DEFAULT_WINDOW_NS,
            clock: ClockBase::default(),
            summary_at_end: true,
            max_records: None,
            reset_reasons: ResetReasons::default(),
            drop_reasons: ResetReasons::default(),
            stuck: Thresholds::default(),
        }
    }
}

pub struct Pipeline {
    cfg: OutputConfig,
    reorder: Reorder,
    engine: Engine,
    /// Finished lifetimes waiting for the facts and resets that follow their CLOSE.
    linger: Linger,
    /// Facts, retransmits and resets that matched no lifetime.
    unjoined: u64,
    pairing: Pairing,
    renderer: Box<dyn Renderer>,
    total: Stats,
    interval: Stats,
    counters: Option<KernelCounters>,
    /// Listener health and netstat samples (cumulative).
    health: Health,
    /// Scratch space reused for every event, so the hot path does not allocate.
    done: Vec<Conn>,
    emits: Vec<Emit>,
    /// What the renderer wrote for the record at hand.
    buf: Vec<u8>,
    started: bool,
    finished: bool,
    /// Where interval boundaries are counted from: the start of tracing, or the first time
    /// seen when the clock base does not say.
    anchor_ns: Option<u64>,
    interval_start_ns: u64,
    next_summary_ns: Option<u64>,
    records: u64,
    /// The stuck sockets for the summary at hand, by state and owner.
    stuck_groups: Vec<StuckGroup>,
    stuck_now: u64,
}

impl Pipeline {
    pub fn new(cfg: OutputConfig) -> Pipeline {
        let renderer = render::new(
            cfg.renderer(),
            cfg.time,
            cfg.clock,
            cfg.wide,
            cfg.containers,
            cfg.reset_reasons,
        );
        Pipeline::with_renderer(cfg, renderer)
    }

    /// A pipeline whose records go to `renderer` instead of the one `cfg` names (the
    /// exporter's metrics).
    pub(crate) fn with_renderer(cfg: OutputConfig, renderer: Box<dyn Renderer>) -> Pipeline {
        Pipeline {
            reorder: Reorder::new(cfg.reorder_window_ns, timeline::DEFAULT_CAPACITY),
            engine: {
                let mut e = Engine::new(cfg.max_tracked);
                e.set_stuck(cfg.stuck);
                e
            },
            linger: Linger::default(),
            unjoined: 0,
            pairing: Pairing::new(pairing::DEFAULT_WAIT_NS, pairing::DEFAULT_MAX_HELD),
            renderer,
            total: Stats::default(),
            interval: Stats::default(),
            counters: None,
            health: Health::default(),
            done: Vec::new(),
            emits: Vec::new(),
            buf: Vec::with_capacity(4096),
            started: false,
            finished: false,
            anchor_ns: (cfg.clock.start_mono_ns != 0).then_some(cfg.clock.start_mono_ns),
            interval_start_ns: 0,
            next_summary_ns: None,
            records: 0,
            stuck_groups: Vec::new(),
            stuck_now: 0,
            cfg,
        }
    }

    /// Feeds one input; writes whatever became final. The first call writes the header.
    pub fn push(&mut self, input: &Input, out: &mut impl Write) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.start(out)?;
        match input {
            Input::Event(ev) => {
                self.health.learn(ev);
                self.anchor_ns.get_or_insert(ev.ts_ns);
                self.reorder.push(*ev);
            }
            Input::Facts(f) => self.reorder.push(*f),
            Input::Retransmit(r) => {
                self.health.retransmit(r);
                self.reorder.push(Item::Retransmit(*r));
            }
            Input::Listener(r) => {
                self.health.listener(r);
                return Ok(());
            }
            Input::Netstat(n) => {
                self.health.netstat(n);
                return Ok(());
            }
            Input::Reset(r) => {
                self.anchor_ns.get_or_insert(r.ts_ns);
                self.reorder.push(Item::Reset(*r));
            }
            Input::Tick { now_ns } => {
                self.anchor_ns.get_or_insert(*now_ns);
                self.reorder.advance(*now_ns);
            }
            Input::Counters(c) => {
                self.counters = Some(*c);
                self.renderer.counters(c, &self.engine);
                self.renderer.health(&self.health, &self.cfg.drop_reasons);
                return Ok(());
            }
            Input::Cgroup { id, path } => {
                // Names are kept for the whole trace: they come before the events that need
                // them, which may be rendered much later.
                self.renderer.cgroup(*id, path);
                return Ok(());
            }
        }
        while let Some(item) = self.reorder.pop_ready() {
            self.process(&item, out)?;
        }
        self.advance(self.reorder.watermark(), out)
    }

    /// Ends the stream: releases held events, reports open connections as `open` and anything
    /// waiting for its other end, then the final summary. Later calls do nothing.
    pub fn finish(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.finished {
            return Ok(());
        }
        self.start(out)?;
        while let Some(item) = self.reorder.pop_any() {
            self.process(&item, out)?;
        }
        let end = self.reorder.clock_ns().max(self.engine.now_ns());
        self.advance(end, out)?;
        // What is stuck at the end, before the table is emptied.
        self.take_stuck_groups();
        self.release_lingering(None, out)?;
        let mut done = std::mem::take(&mut self.done);
        self.engine.finish(end, &mut done);
        // Both ends of a connection can still be open: pair them within this last batch.
        let open_tuples: HashSet<u64> = done.iter().map(|c| c.tuple_hash(false)).collect();
        for c in &done {
            self.record(c);
            if self.cfg.mode != Mode::Transitions {
                let peer_open = open_tuples.contains(&c.tuple_hash(true));
                self.pairing.offer(c, peer_open, &mut self.emits);
            }
        }
        done.clear();
        self.done = done;
        self.pairing.flush(&mut self.emits);
        self.print_emits(out)?;
        if self.cfg.summary_at_end {
            let start = self.anchor_ns.unwrap_or(end);
            self.print_summary(SummaryKind::Final, start, end, out)?;
        }
        self.finished = true;
        Ok(())
    }

    /// Connection or transition records written so far (for `--count`).
    pub fn records(&self) -> u64 {
        self.records
    }

    /// Whether `max_records` records were printed.
    pub fn limit_reached(&self) -> bool {
        self.cfg.max_records.is_some_and(|m| self.records >= m)
    }

    /// Statistics over every connection finished so far.
    pub fn stats(&self) -> &Stats {
        &self.total
    }

    pub fn engine(&self) -> &Engine {
        &self.engine
    }

    pub fn config(&self) -> &OutputConfig {
        &self.cfg
    }

    pub fn set_drop_reasons(&mut self, reasons: ResetReasons) {
        self.cfg.drop_reasons = reasons;
    }

    /// Listener health so far.
    pub fn health(&self) -> &Health {
        &self.health
    }

    fn start(&mut self, out: &mut impl Write) -> io::Result<()> {
        if self.started {
            return Ok(());
        }
        self.started = true;
        self.renderer.start(&mut self.buf)?;
        render::flush(&mut self.buf, out)
    }

    fn process(&mut self, item: &Item, out: &mut impl Write) -> io::Result<()> {
        let ev = match item {
            Item::Event(ev) => ev,
            Item::Facts(packed) => {
                let f = &packed.unpack();
                let joined = self.engine.facts(f) || self.linger.facts(f);
                self.unjoined += u64::from(!joined);
                return Ok(());
            }
            Item::Retransmit(r) => {
                self.advance(r.ts_ns, out)?;
                let joined = self.engine.retransmit(r) || self.linger.retransmit(r);
                self.unjoined += u64::from(!joined);
                return Ok(());
            }
            Item::Reset(r) => {
                self.advance(r.ts_ns, out)?;
                if timeline::is_refused_inbound(r) {
                    return self.refused(r, out);
                }
                let joined = self.engine.reset(r) || self.linger.reset(r);
                self.unjoined += u64::from(!joined);
                return Ok(());
            }
        };
        self.advance(ev.ts_ns, out)?;
        let mut done = std::mem::take(&mut self.done);
        let step = self.engine.push(ev, &mut done);
        if self.cfg.mode == Mode::Transitions && !self.limit_reached() {
            self.records += 1;
            self.renderer.transition(ev, &step, &mut self.buf)?;
            render::flush(&mut self.buf, out)?;
        }
        for c in &done {
            let peer_open = self.cfg.mode != Mode::Transitions && self.engine.has_open_peer(c);
            if let Some(h) = self.linger.push(c, peer_open, ev.ts_ns) {
                self.offer(&h);
            }
        }
        done.clear();
        self.done = done;
        self.print_emits(out)
    }

    /// A connection attempt this host refused (a RST without a socket answering a SYN).
    fn refused(&mut self, r: &ResetRecord, out: &mut impl Write) -> io::Result<()> {
        self.total.refused(r);
        if self.cfg.interval_ns.is_some() {
            self.interval.refused(r);
        }
        if self.limit_reached() {
            return Ok(());
        }
        self.renderer.refused(r, &mut self.buf)?;
        // The transition table has no line for it (no socket changed state).
        self.records += u64::from(!self.buf.is_empty());
        render::flush(&mut self.buf, out)
    }

    /// Releases lingering lifetimes finished before `now_ns` (all with `None`) to the
    /// statistics and to pairing.
    fn release_lingering(&mut self, now_ns: Option<u64>, out: &mut impl Write) -> io::Result<()> {
        let mut any = false;
        while let Some(h) = self.linger.pop_due(now_ns) {
            self.offer(&h);
            any = true;
        }
        if any {
            self.print_emits(out)?;
        }
        Ok(())
    }

    /// A finished lifetime goes to the statistics and to pairing.
    fn offer(&mut self, h: &timeline::linger::Held) {
        self.record(&h.conn);
        if self.cfg.mode != Mode::Transitions {
            self.pairing.offer(&h.conn, h.peer_open, &mut self.emits);
        }
    }

    /// The event clock reached `now_ns`: connections waiting too long for their other end are
    /// printed alone, and interval summaries fall due.
    fn advance(&mut self, now_ns: u64, out: &mut impl Write) -> io::Result<()> {
        self.release_lingering(Some(now_ns), out)?;
        self.pairing.expire(now_ns, &mut self.emits);
        self.print_emits(out)?;
        let Some(iv) = self.cfg.interval_ns.filter(|&iv| iv > 0) else {
            return self.report_stuck(now_ns, out);
        };
        let next = match self.next_summary_ns {
            Some(n) => n,
            None => {
                let anchor = self.anchor_ns.unwrap_or(now_ns);
                self.interval_start_ns = anchor;
                let n = anchor.saturating_add(iv);
                self.next_summary_ns = Some(n);
                n
            }
        };
        if now_ns < next {
            return self.report_stuck(now_ns, out);
        }
        // Sockets stuck before the boundary are reported before the summary that lists them.
        self.report_stuck(next, out)?;
        // What finished in this interval is counted in it, late joins or not.
        self.release_lingering(None, out)?;
        self.take_stuck_groups();
        self.print_summary(SummaryKind::Interval, self.interval_start_ns, next, out)?;
        self.interval.clear();
        // Quiet intervals in between had nothing to report: skip to the one holding `now_ns`.
        let skipped = (now_ns - next) / iv;
        self.interval_start_ns = next.saturating_add(skipped.saturating_mul(iv));
        self.next_summary_ns = Some(self.interval_start_ns.saturating_add(iv));
        self.report_stuck(now_ns, out)
    }

    /// Reports the sockets that crossed their stuck threshold before `now_ns`, once each, in
    /// the order they crossed it. Only due deadlines are visited.
    fn report_stuck(&mut self, now_ns: u64, out: &mut impl Write) -> io::Result<()> {
        while let Some((slot, at_ns)) = self.engine.pop_stuck(now_ns) {
            if self.limit_reached() {
                continue;
            }
            self.renderer
                .stuck(self.engine.conn(slot), at_ns, &mut self.buf)?;
            render::flush(&mut self.buf, out)?;
        }
        Ok(())
    }

    fn take_stuck_groups(&mut self) {
        self.engine.stuck_groups(&mut self.stuck_groups);
        self.stuck_now = self.engine.stuck_now() as u64;
    }

    fn record(&mut self, c: &Conn) {
        self.total.record(c);
        if self.cfg.interval_ns.is_some() {
            self.interval.record(c);
        }
    }

    fn passes(&self, c: &Conn) -> bool {
        // The durations are worked out only when a threshold asks for them.
        let at_least = |min: Option<u64>, v: fn(&Conn) -> Option<u64>| match min {
            Some(m) => v(c).is_some_and(|v| v >= m),
            None => true,
        };
        at_least(self.cfg.min_handshake_ns, Conn::hs_shown_ns)
            && at_least(self.cfg.min_close_wait_ns, |c| c.phase_ns(Phase::CloseWait))
    }

    /// Prints what pairing released; a pair is shown when either end passes the thresholds,
    /// because each end is the context of the other.
    fn print_emits(&mut self, out: &mut impl Write) -> io::Result<()> {
        let mut emits = std::mem::take(&mut self.emits);
        let mut result = Ok(());
        // By reference: an emit holds two connection summaries, too big to move for nothing.
        for e in &emits {
            if self.limit_reached() {
                break;
            }
            let r = match &e.second {
                None if self.passes(&e.first) => self.print_single(&e.first, out),
                Some(b) if self.passes(&e.first) || self.passes(b) => {
                    self.print_pair(&e.first, b, out)
                }
                _ => Ok(()),
            };
            if r.is_err() {
                result = r;
                break;
            }
        }
        emits.clear();
        self.emits = emits;
        result
    }

    fn print_single(&mut self, c: &Conn, out: &mut impl Write) -> io::Result<()> {
        self.records += 1;
        self.renderer.single(c, &mut self.buf)?;
        render::flush(&mut self.buf, out)
    }

    fn print_pair(&mut self, a: &Conn, b: &Conn, out: &mut impl Write) -> io::Result<()> {
        self.records += 2;
        self.renderer.pair(a, b, &mut self.buf)?;
        render::flush(&mut self.buf, out)
    }

    fn print_summary(
        &mut self,
        kind: SummaryKind,
        start_ns: u64,
        end_ns: u64,
        out: &mut impl Write,
    ) -> io::Result<()> {
        let (stats, still_open) = match kind {
            SummaryKind::Interval => (&self.interval, self.engine.open_count() as u64),
            SummaryKind::Final => (&self.total, self.total.outcome(timeline::Outcome::Open)),
        };
        let s = Summary {
            kind,
            start_ns,
            end_ns,
            stats,
            still_open,
            evictions: self.engine.evictions(),
            counters: self.counters,
            pipeline: PipelineCounts {
                events: self.engine.events(),
                late: self.reorder.late(),
                forced: self.reorder.forced(),
                superseded: self.engine.superseded(),
                ignored: self.engine.ignored(),
                paired: self.pairing.paired(),
                unjoined: self.unjoined,
            },
            health: &self.health,
            drop_reasons: self.cfg.drop_reasons,
            stuck_now: self.stuck_now,
            stuck: &self.stuck_groups,
        };
        self.renderer.summary(&s, &mut self.buf)?;
        render::flush(&mut self.buf, out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::tests::ev;
    use tcpstate_common::state::*;

    /// `n` loopback conversations (client + accepted socket, ten transitions), overlapping in
    /// time and reusing socket addresses like a busy host.
    pub(crate) fn synthetic(n: u64) -> Vec<Input> {
        let mut out = Vec::with_capacity(n as usize * 10);
        for i in 0..n {
            let t = 1_000_000_000 + i * 2_000;
            let client = 0xffff_8880_0000_0000 + (i % 4096) * 4096;
            let child = client + 2048;
            let port = 10_000 + (i % 50_000) as u16;
            let seq = [
                ev(t, client, CLOSE, SYN_SENT, 0, 8080),
                ev(t + 20_000, child, LISTEN, SYN_RECV, 8080, port),
                ev(t + 21_000, child, SYN_RECV, ESTABLISHED, 8080, port),
                ev(t + 30_000, client, SYN_SENT, ESTABLISHED, port, 8080),
                ev(t + 500_000, client, ESTABLISHED, FIN_WAIT1, port, 8080),
                ev(t + 510_000, child, ESTABLISHED, CLOSE_WAIT, 8080, port),
                ev(t + 515_000, client, FIN_WAIT1, FIN_WAIT2, port, 8080),
                ev(t + 700_000, child, CLOSE_WAIT, LAST_ACK, 8080, port),
                ev(t + 720_000, client, FIN_WAIT2, CLOSE, port, 8080),
                ev(t + 720_500, child, LAST_ACK, CLOSE, 8080, port),
            ];
            out.extend(seq.iter().map(|&e| Input::Event(e)));
        }
        // Arrival order: roughly by time, as from one ring buffer.
        out.sort_by_key(|i| match i {
            Input::Event(e) => e.ts_ns,
            _ => 0,
        });
        out
    }

    /// `synthetic(n)` with the socket facts a kernel with BTF sends: after each handshake and
    /// each transition into CLOSE, as the live program does.
    pub(crate) fn synthetic_with_facts(n: u64) -> Vec<Input> {
        let mut out = Vec::with_capacity(n as usize * 14);
        for i in synthetic(n) {
            let ev = match &i {
                Input::Event(e) => Some(*e),
                _ => None,
            };
            out.push(i);
            if let Some(e) = ev {
                let wanted = e.newstate == CLOSE
                    || (e.newstate == ESTABLISHED && matches!(e.oldstate, SYN_SENT | SYN_RECV));
                if wanted {
                    let mut f =
                        crate::facts::tests::facts(e.ts_ns, e.skaddr, e.oldstate, e.newstate);
                    f.srtt_us = Some(40);
                    f.bytes_acked = Some(3002);
                    f.bytes_received = Some(7001);
                    out.push(Input::Facts(f));
                }
            }
        }
        out
    }

    /// CPU time of this thread: the machine may be shared, wall time is not a fair measure.
    fn thread_cpu_ns() -> u64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: ts is a valid timespec for the call to fill.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
    }

    /// Transitions per second through the whole pipeline into `io::sink()`. Run with
    /// `cargo test --release -p tcpstate --lib throughput -- --ignored --nocapture`.
    #[test]
    #[ignore]
    fn throughput() {
        let plain = synthetic(200_000);
        let with_facts = synthetic_with_facts(200_000);
        for (mode, format, facts) in [
            (Mode::Connections, Format::Table, false),
            (Mode::Connections, Format::Json, false),
            (Mode::Transitions, Format::Table, false),
            (Mode::Transitions, Format::Json, false),
            (Mode::Timeline, Format::Table, false),
            (Mode::Connections, Format::Table, true),
            (Mode::Connections, Format::Json, true),
        ] {
            let inputs = if facts { &with_facts } else { &plain };
            let mut p = Pipeline::new(OutputConfig {
                mode,
                format,
                ..OutputConfig::default()
            });
            let mut out = io::sink();
            let started = std::time::Instant::now();
            let cpu_started = thread_cpu_ns();
            for i in inputs {
                p.push(i, &mut out).unwrap();
            }
            p.finish(&mut out).unwrap();
            let secs = started.elapsed().as_secs_f64();
            let cpu = (thread_cpu_ns() - cpu_started) as f64 / 1e9;
            println!(
                "{mode:?}/{format:?}{}: {} inputs, {secs:.3} s wall, {cpu:.3} s cpu = {:.2} M/s per core ({} records, {} paired)",
                if facts { " with facts" } else { "" },
                inputs.len(),
                inputs.len() as f64 / cpu / 1e6,
                p.records(),
                p.pairing.paired()
            );
            assert_eq!(p.stats().connections, 400_000);
            if facts {
                assert_eq!(p.unjoined, 0);
            }
        }
    }
}
