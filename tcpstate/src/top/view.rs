//! Drawing `tcpstate top` from a [`Snapshot`]: nothing here computes a figure, it only sorts,
//! filters and lays out what the aggregator produced.

use ratatui::layout::{Constraint, Layout, Rect};
use ratatui::style::{Modifier, Style};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, Paragraph, Row, Table};
use ratatui::Frame;

use super::agg::{rate, PortCounts, ProcCounts, ProcKey, Snapshot};

/// Below this the screen says so instead of drawing.
pub(crate) const MIN_WIDTH: u16 = 100;
pub(crate) const MIN_HEIGHT: u16 = 30;

/// What `s` cycles through; every table sorts by its own column of that meaning.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Sort {
    /// Rate in the last interval (accepted/s, connects/s).
    Rate,
    /// Count since the start.
    Total,
    /// Failures: refused and resets per port, failed connects per process.
    Failures,
    /// p99 latency (SYN-ACK RTT per port, connect latency per process).
    Latency,
    /// Port number or command name.
    Name,
}

impl Sort {
    pub(crate) fn next(self) -> Sort {
        match self {
            Sort::Rate => Sort::Total,
            Sort::Total => Sort::Failures,
            Sort::Failures => Sort::Latency,
            Sort::Latency => Sort::Name,
            Sort::Name => Sort::Rate,
        }
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            Sort::Rate => "rate",
            Sort::Total => "total",
            Sort::Failures => "failures",
            Sort::Latency => "p99",
            Sort::Name => "name",
        }
    }
}

/// The view's own state, changed by keys.
#[derive(Clone, Debug)]
pub(crate) struct ViewState {
    pub sort: Sort,
    pub filter: String,
    /// Typing a filter after `/`.
    pub editing: bool,
    pub paused: bool,
    pub help: bool,
    /// "live", "replay 10x", "replay finished".
    pub source: String,
}

impl Default for ViewState {
    fn default() -> Self {
        ViewState {
            sort: Sort::Rate,
            filter: String::new(),
            editing: false,
            paused: false,
            help: false,
            source: "live".into(),
        }
    }
}

impl ViewState {
    fn matches(&self, fields: &[&str]) -> bool {
        self.filter.is_empty() || fields.iter().any(|f| f.contains(self.filter.as_str()))
    }
}

fn ms(ns: Option<u64>) -> String {
    ns.map_or_else(|| "-".into(), |ns| format!("{:.3}", ns as f64 / 1e6))
}

fn per_s(n: u64, secs: f64) -> String {
    format!("{:.1}", rate(n, secs))
}

fn age(ns: u64) -> String {
    let s = ns / 1_000_000_000;
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, s % 3600 / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{:.1}s", ns as f64 / 1e9)
    }
}

fn port_name(p: Option<u16>) -> String {
    p.map_or_else(|| "other".into(), |p| p.to_string())
}

fn proc_name(k: &Option<ProcKey>) -> (String, String) {
    match k {
        Some(k) => (
            k.comm.clone(),
            k.container.clone().unwrap_or_else(|| "-".into()),
        ),
        None => ("other".into(), "-".into()),
    }
}

const EMPTY_PORT: PortCounts = PortCounts {
    accepted: 0,
    refused: 0,
    resets: 0,
    synack: super::agg::Hist::EMPTY,
};

fn header(cells: &[&'static str]) -> Row<'static> {
    Row::new(cells.to_vec()).style(Style::new().add_modifier(Modifier::BOLD | Modifier::REVERSED))
}

pub(crate) fn draw(f: &mut Frame, s: &Snapshot, v: &ViewState) {
    let area = f.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        let msg = format!(
            "terminal too small: {}x{}, tcpstate top needs at least {MIN_WIDTH}x{MIN_HEIGHT} (q quits)",
            area.width, area.height
        );
        f.render_widget(Paragraph::new(msg), area);
        return;
    }
    let [top, states, linger, ports, procs, bottom, footer] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(1),
        Constraint::Length(8),
        Constraint::Fill(1),
        Constraint::Fill(1),
        Constraint::Length(10),
        Constraint::Length(1),
    ])
    .areas(area);
    draw_status(f, top, s, v);
    draw_states(f, states, s);
    draw_lingering(f, linger, s, v);
    draw_ports(f, ports, s, v);
    draw_procs(f, procs, s, v);
    let [hist, losses] =
        Layout::horizontal([Constraint::Percentage(50), Constraint::Percentage(50)]).areas(bottom);
    draw_hist(f, hist, s);
    draw_losses(f, losses, s);
    let keys = if v.editing {
        format!("filter: {}_   (Enter keeps it, Esc clears it)", v.filter)
    } else {
        "q quit  s sort  / filter  p pause  ? help".into()
    };
    f.render_widget(Paragraph::new(keys), footer);
    if v.help {
        draw_help(f, area);
    }
}

fn draw_status(f: &mut Frame, area: Rect, s: &Snapshot, v: &ViewState) {
    let lost = s
        .losses
        .lost
        .map_or_else(|| "unknown".into(), |n| n.to_string());
    let mut spans = vec![
        Span::styled("tcpstate top", Style::new().add_modifier(Modifier::BOLD)),
        Span::raw(format!(
            "  {}  interval {:.1}s  open {}  events {}  lost {}  sort: {}",
            v.source,
            s.interval_s,
            s.open_total,
            s.losses.events,
            lost,
            v.sort.name()
        )),
    ];
    if !v.filter.is_empty() {
        spans.push(Span::raw(format!("  filter: {}", v.filter)));
    }
    if v.paused {
        spans.push(Span::styled(
            "  PAUSED",
            Style::new().add_modifier(Modifier::REVERSED),
        ));
    }
    f.render_widget(Paragraph::new(Line::from(spans)), area);
}

fn draw_states(f: &mut Frame, area: Rect, s: &Snapshot) {
    let mut text = String::from("open sockets by state:");
    if s.open_by_state.is_empty() {
        text.push_str(" none");
    }
    for (state, n) in &s.open_by_state {
        text.push_str(&format!("  {state} {n}"));
    }
    f.render_widget(Paragraph::new(text), area);
}

fn draw_lingering(f: &mut Frame, area: Rect, s: &Snapshot, v: &ViewState) {
    let rows: Vec<Row> = s
        .lingering
        .iter()
        .filter(|l| {
            let port = l.local.rsplit(':').next().unwrap_or("");
            v.matches(&[port, &l.comm, l.container.as_deref().unwrap_or("")])
        })
        .map(|l| {
            Row::new(vec![
                l.state.to_string(),
                age(l.age_ns),
                l.pid.map_or_else(|| "-".into(), |p| p.to_string()),
                l.comm.clone(),
                l.container.clone().unwrap_or_else(|| "-".into()),
                l.local.clone(),
                l.remote.clone(),
                if l.stuck {
                    "stuck".into()
                } else {
                    String::new()
                },
            ])
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Length(11),
            Constraint::Length(8),
            Constraint::Length(8),
            Constraint::Length(16),
            Constraint::Length(14),
            Constraint::Length(24),
            Constraint::Length(24),
            Constraint::Length(6),
        ],
    )
    .header(header(&[
        "STATE",
        "AGE",
        "PID",
        "COMM",
        "CONTAINER",
        "LOCAL",
        "REMOTE",
        "STUCK",
    ]))
    .block(Block::bordered().title(" waiting in an opening or closing state, oldest first "));
    f.render_widget(t, area);
}

fn draw_ports(f: &mut Frame, area: Rect, s: &Snapshot, v: &ViewState) {
    let secs = s.interval_s;
    let mut keys: Vec<Option<u16>> = s
        .total
        .ports
        .keys()
        .chain(s.last.ports.keys())
        .copied()
        // A listener whose children are never accepted has no finished connection to show,
        // but its queue is the point.
        .chain(s.queues.keys().map(|&p| Some(p)))
        .filter(|p| v.matches(&[&port_name(*p)]))
        .collect();
    keys.sort();
    keys.dedup();
    let last = |p: &Option<u16>| s.last.ports.get(p).unwrap_or(&EMPTY_PORT);
    let total = |p: &Option<u16>| s.total.ports.get(p).unwrap_or(&EMPTY_PORT);
    match v.sort {
        Sort::Rate => keys.sort_by_key(|p| std::cmp::Reverse(last(p).accepted)),
        Sort::Total => keys.sort_by_key(|p| std::cmp::Reverse(total(p).accepted)),
        Sort::Failures => {
            keys.sort_by_key(|p| std::cmp::Reverse(total(p).refused + total(p).resets))
        }
        Sort::Latency => keys.sort_by_key(|p| std::cmp::Reverse(last(p).synack.quantile_ns(0.99))),
        Sort::Name => {}
    }
    let rows: Vec<Row> = keys
        .iter()
        .map(|p| {
            let (l, t) = (last(p), total(p));
            Row::new(vec![
                port_name(*p),
                per_s(l.accepted, secs),
                per_s(l.refused, secs),
                per_s(l.resets, secs),
                ms(l.synack.quantile_ns(0.5)),
                ms(l.synack.quantile_ns(0.99)),
                p.and_then(|p| s.queues.get(&p))
                    .map_or_else(|| "-".into(), |(d, l)| format!("{d}/{l}")),
                t.accepted.to_string(),
                t.refused.to_string(),
                t.resets.to_string(),
            ])
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Length(6),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(13),
            Constraint::Length(13),
            Constraint::Length(8),
            Constraint::Length(10),
            Constraint::Length(10),
            Constraint::Length(10),
        ],
    )
    .header(header(&[
        "PORT",
        "ACCEPT/s",
        "REFUSED/s",
        "RESETS/s",
        "SYNACK_p50ms",
        "SYNACK_p99ms",
        "ACCEPTQ",
        "ACCEPTED",
        "REFUSED",
        "RESETS",
    ]))
    .block(Block::bordered().title(" local ports (last interval; totals since start) "));
    f.render_widget(t, area);
}

fn failures(p: &ProcCounts) -> String {
    let mut v = p.failures.clone();
    v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
    if v.is_empty() {
        return "-".into();
    }
    v.iter()
        .map(|(w, n)| format!("{w}:{n}"))
        .collect::<Vec<_>>()
        .join(" ")
}

fn draw_procs(f: &mut Frame, area: Rect, s: &Snapshot, v: &ViewState) {
    let secs = s.interval_s;
    let empty = ProcCounts::default();
    let mut keys: Vec<&Option<ProcKey>> = s
        .total
        .procs
        .keys()
        .chain(s.last.procs.keys())
        .filter(|k| {
            let (c, ct) = proc_name(k);
            v.matches(&[&c, &ct])
        })
        .collect();
    keys.sort();
    keys.dedup();
    let last = |k: &Option<ProcKey>| s.last.procs.get(k).unwrap_or(&empty);
    let total = |k: &Option<ProcKey>| s.total.procs.get(k).unwrap_or(&empty);
    match v.sort {
        Sort::Rate => keys.sort_by_key(|k| std::cmp::Reverse(last(k).connects)),
        Sort::Total => keys.sort_by_key(|k| std::cmp::Reverse(total(k).connects)),
        Sort::Failures => keys.sort_by_key(|k| std::cmp::Reverse(total(k).failed())),
        Sort::Latency => keys.sort_by_key(|k| std::cmp::Reverse(last(k).connect.quantile_ns(0.99))),
        Sort::Name => {}
    }
    let rows: Vec<Row> = keys
        .iter()
        .map(|k| {
            let (l, t) = (last(k), total(k));
            let (comm, container) = proc_name(k);
            Row::new(vec![
                comm,
                container,
                per_s(l.connects, secs),
                per_s(l.failed(), secs),
                ms(l.connect.quantile_ns(0.5)),
                ms(l.connect.quantile_ns(0.99)),
                per_s(l.retransmits, secs),
                t.connects.to_string(),
                t.failed().to_string(),
                failures(t),
            ])
        })
        .collect();
    let t = Table::new(
        rows,
        [
            Constraint::Length(16),
            Constraint::Length(14),
            Constraint::Length(10),
            Constraint::Length(8),
            Constraint::Length(14),
            Constraint::Length(14),
            Constraint::Length(8),
            Constraint::Length(9),
            Constraint::Length(8),
            Constraint::Fill(1),
        ],
    )
    .header(header(&[
        "COMM",
        "CONTAINER",
        "CONNECT/s",
        "FAIL/s",
        "CONNECT_p50ms",
        "CONNECT_p99ms",
        "RETX/s",
        "CONNECTS",
        "FAILED",
        "FAILURES (errno:count, since start)",
    ]))
    .block(Block::bordered().title(" processes (last interval; totals since start) "));
    f.render_widget(t, area);
}

fn draw_hist(f: &mut Frame, area: Rect, s: &Snapshot) {
    let bins = s.last.connect.decades();
    let max = bins.iter().map(|b| b.1).max().unwrap_or(0).max(1);
    let width = usize::from(area.width.saturating_sub(20)).max(1);
    let lines: Vec<Line> = bins
        .iter()
        .map(|(label, n)| {
            let bar = (*n as usize * width).div_ceil(max as usize);
            Line::raw(format!("{label:>7} {n:>6} {}", "#".repeat(bar.min(width))))
        })
        .collect();
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" connect latency, last interval ")),
        area,
    );
}

fn draw_losses(f: &mut Frame, area: Rect, s: &Snapshot) {
    let l = &s.losses;
    let show = |v: Option<u64>| v.map_or_else(|| "unknown".into(), |v| v.to_string());
    let mut lines = vec![Line::raw(format!(
        "lost {} (last interval {})   evicted {}",
        show(l.lost),
        l.lost_delta,
        l.evictions
    ))];
    for (name, v) in &l.by_reason {
        lines.push(Line::raw(format!("  {name:<28} {}", show(*v))));
    }
    f.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" tracer losses (kernel counters) ")),
        area,
    );
}

fn draw_help(f: &mut Frame, area: Rect) {
    let text = vec![
        Line::raw("s      cycle the sort column: rate, total, failures, p99, name"),
        Line::raw("/      filter by port, process or container (substring); Esc clears"),
        Line::raw("p      pause the display (tracing goes on; a replay stops)"),
        Line::raw("?      this help (any key closes it)"),
        Line::raw("q      quit (also Ctrl-C)"),
        Line::raw(""),
        Line::raw("Rates are over the last interval (about a second); totals since the start."),
        Line::raw(
            "ACCEPTQ: accept-queue depth/limit at the latest accepted connection (- unknown).",
        ),
    ];
    let w = 80.min(area.width);
    let h = 12.min(area.height);
    let r = Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    );
    f.render_widget(Clear, r);
    f.render_widget(
        Paragraph::new(text).block(Block::bordered().title(" help ")),
        r,
    );
}
