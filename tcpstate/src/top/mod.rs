//! `tcpstate top`: a live terminal view on the engine and filters of `trace`.
//!
//! The pipeline feeds an [`agg::Aggregator`] through [`TopRenderer`] (one more renderer, like
//! the exporter's); once a second the interval is closed and [`view::draw`] draws the snapshot.
//! Live, the trace loop runs on the main thread (as in `trace`) and the terminal on its own
//! thread; a replay runs both on one thread, paced by the recording's timestamps.
//!
//! The terminal is restored on every way out: [`Terminal`]'s drop, a panic hook, and the
//! signals, which stop the loops instead of killing the process. While the screen is ours,
//! stderr goes into a pipe, so a warning cannot scribble over the drawing; what was written is
//! shown after the terminal is restored.

pub(crate) mod agg;
pub(crate) mod view;

use std::io::{self, IsTerminal, Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use crossterm::event::{KeyCode, KeyModifiers};
use crossterm::{cursor, execute, terminal};
use ratatui::backend::CrosstermBackend;

use crate::cli::TopArgs;
use crate::event::Event;
use crate::facts::ResetRecord;
use crate::input::{Input, KernelCounters};
use crate::report::render::Renderer;
use crate::report::summary::Summary;
use crate::timeline::stuck::Thresholds;
use crate::timeline::{Conn, Engine, Step};
use agg::Aggregator;
use view::ViewState;

/// How often the view refreshes (and an interval closes).
const REFRESH: Duration = Duration::from_secs(1);
/// How long a key can wait to be seen.
const KEY_POLL: Duration = Duration::from_millis(50);

/// Set by a key (`q`) or a signal: every loop of `top` ends.
pub(crate) static STOP: AtomicBool = AtomicBool::new(false);
/// The real stderr while it is captured (-1 when not).
static SAVED_STDERR: AtomicI32 = AtomicI32::new(-1);

/// Feeds the aggregator from the pipeline.
pub(crate) struct TopRenderer {
    agg: Arc<Mutex<Aggregator>>,
    /// Live, the open sockets are read at each counters reading (once a second), at this
    /// clock's now (CLOCK_MONOTONIC); a replay reads them itself at its interval boundaries.
    clock: Option<fn() -> u64>,
}

impl TopRenderer {
    fn agg(&self) -> MutexGuard<'_, Aggregator> {
        lock(&self.agg)
    }
}

impl Renderer for TopRenderer {
    fn transition(&mut self, _: &Event, _: &Step, _: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }
    fn single(&mut self, c: &Conn, _: &mut Vec<u8>) -> io::Result<()> {
        self.agg().conn(c);
        Ok(())
    }
    fn pair(&mut self, a: &Conn, b: &Conn, _: &mut Vec<u8>) -> io::Result<()> {
        let mut g = self.agg();
        g.conn(a);
        g.conn(b);
        Ok(())
    }
    fn summary(&mut self, _: &Summary<'_>, _: &mut Vec<u8>) -> io::Result<()> {
        Ok(())
    }
    fn refused(&mut self, r: &ResetRecord, _: &mut Vec<u8>) -> io::Result<()> {
        self.agg().refused(r);
        Ok(())
    }
    fn cgroup(&mut self, id: u64, path: &str) {
        self.agg().cgroup(id, path);
    }
    fn health(&mut self, h: &crate::listeners::Health, _: &crate::pipeline::ResetReasons) {
        self.agg().health(h);
    }
    fn stuck(&mut self, c: &Conn, _at_ns: u64, _: &mut Vec<u8>) -> io::Result<()> {
        self.agg().stuck(c);
        Ok(())
    }
    fn counters(&mut self, c: &KernelCounters, engine: &Engine) {
        let mut a = self.agg();
        a.counters(c);
        if let Some(now) = self.clock {
            a.sample(engine, now());
        }
    }
}

pub fn run(args: &TopArgs) -> Result<i32> {
    if !io::stdout().is_terminal() {
        anyhow::bail!(
            "top draws on a terminal and stdout is not one (for pipes and files use `trace` or \
             `trace -o json`)"
        );
    }
    if !io::stdin().is_terminal() {
        anyhow::bail!("top reads its keys from the terminal and stdin is not one");
    }
    match &args.replay {
        Some(_) if !args.filter.spec().is_empty() => anyhow::bail!(
            "the filters apply in the kernel, so only live: a replay shows what was recorded \
             (record with them instead: `trace --record FILE --port ...`)"
        ),
        Some(path) => replay(args, path),
        None => live(args),
    }
}

/// The screen, raw mode and the captured stderr, undone on drop.
struct Terminal {
    term: ratatui::Terminal<CrosstermBackend<io::Stdout>>,
    stderr: Option<std::thread::JoinHandle<Vec<u8>>>,
}

/// Puts the terminal back; safe to call more than once, from a panic hook too.
fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), terminal::LeaveAlternateScreen, cursor::Show);
    let fd = SAVED_STDERR.swap(-1, Ordering::SeqCst);
    if fd >= 0 {
        // SAFETY: `fd` is the duplicate of stderr made in `capture_stderr`, owned here.
        unsafe {
            libc::dup2(fd, libc::STDERR_FILENO);
            libc::close(fd);
        }
    }
}

/// Points fd 2 at a pipe read by a thread (bounded), returning that thread.
fn capture_stderr() -> Option<std::thread::JoinHandle<Vec<u8>>> {
    let mut fds = [0; 2];
    // SAFETY: a valid array of two fds.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return None;
    }
    // SAFETY: both fds were just created and are owned here.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // SAFETY: dup of an open fd.
    let saved = unsafe { libc::fcntl(libc::STDERR_FILENO, libc::F_DUPFD_CLOEXEC, 3) };
    if saved < 0 {
        return None;
    }
    // SAFETY: both fds are open.
    if unsafe { libc::dup2(w.as_raw_fd(), libc::STDERR_FILENO) } < 0 {
        // SAFETY: ours.
        unsafe { libc::close(saved) };
        return None;
    }
    drop(w);
    SAVED_STDERR.store(saved, Ordering::SeqCst);
    Some(std::thread::spawn(move || {
        const KEEP: usize = 64 * 1024;
        let mut f = std::fs::File::from(r);
        let mut kept = Vec::new();
        let mut buf = [0u8; 4096];
        // Ends when every write end is closed: fd 2 given back by `restore`.
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 {
                break;
            }
            let room = KEEP.saturating_sub(kept.len());
            kept.extend_from_slice(&buf[..n.min(room)]);
        }
        kept
    }))
}

impl Terminal {
    fn enter() -> Result<Terminal> {
        let hook = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            restore();
            hook(info);
        }));
        terminal::enable_raw_mode().context("putting the terminal in raw mode")?;
        if let Err(e) = execute!(io::stdout(), terminal::EnterAlternateScreen, cursor::Hide) {
            restore();
            return Err(e).context("switching to the alternate screen");
        }
        let stderr = capture_stderr();
        let term = match ratatui::Terminal::new(CrosstermBackend::new(io::stdout())) {
            Ok(t) => t,
            Err(e) => {
                restore();
                return Err(e).context("setting up the terminal");
            }
        };
        Ok(Terminal { term, stderr })
    }

    fn draw(&mut self, snap: &agg::Snapshot, v: &ViewState) -> Result<()> {
        self.term
            .draw(|f| view::draw(f, snap, v))
            .context("drawing")?;
        Ok(())
    }
}

impl Drop for Terminal {
    fn drop(&mut self) {
        restore();
        if let Some(t) = self.stderr.take() {
            if let Ok(text) = t.join() {
                let _ = io::stderr().write_all(&text);
            }
        }
    }
}

/// What a key did.
#[derive(Debug, PartialEq, Eq)]
enum Action {
    None,
    Redraw,
    Quit,
}

fn key(v: &mut ViewState, code: KeyCode, mods: KeyModifiers) -> Action {
    if mods.contains(KeyModifiers::CONTROL) && code == KeyCode::Char('c') {
        return Action::Quit;
    }
    if v.editing {
        match code {
            KeyCode::Enter => v.editing = false,
            KeyCode::Esc => {
                v.editing = false;
                v.filter.clear();
            }
            KeyCode::Backspace => {
                v.filter.pop();
            }
            KeyCode::Char(c) if v.filter.len() < 64 => v.filter.push(c),
            _ => return Action::None,
        }
        return Action::Redraw;
    }
    if v.help {
        v.help = false;
        return Action::Redraw;
    }
    match code {
        KeyCode::Char('q') => return Action::Quit,
        KeyCode::Char('s') => v.sort = v.sort.next(),
        KeyCode::Char('/') => {
            v.editing = true;
            v.filter.clear();
        }
        KeyCode::Char('p') => v.paused = !v.paused,
        KeyCode::Char('?') | KeyCode::Char('h') => v.help = true,
        KeyCode::Esc => v.filter.clear(),
        _ => return Action::None,
    }
    Action::Redraw
}

/// Waits up to `timeout` for terminal input and handles it.
///
/// Read from fd 0 here rather than through crossterm's event reader: on a terminal that went
/// away (its emulator closed) that reader spins on end-of-file inside one call and never comes
/// back, so neither a key nor a signal could end `top`. Here end-of-file, POLLHUP and read
/// errors are a quit.
fn poll_keys(v: &mut ViewState, timeout: Duration) -> Result<Action> {
    let mut pfd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = libc::c_int::try_from(timeout.as_millis()).unwrap_or(libc::c_int::MAX);
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n < 0 {
        // EINTR: a signal (SIGWINCH, SIGTERM); the caller looks at STOP and redraws.
        return Ok(Action::Redraw);
    }
    if n == 0 {
        return Ok(Action::None);
    }
    if pfd.revents & libc::POLLIN == 0 {
        return Ok(Action::Quit);
    }
    let mut buf = [0u8; 256];
    // SAFETY: reads into a buffer of the given size.
    let got = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
    let Ok(got) = usize::try_from(got) else {
        return Ok(Action::Quit);
    };
    if got == 0 {
        return Ok(Action::Quit);
    }
    let mut action = Action::None;
    for (k, mods) in parse_keys(&buf[..got]) {
        match key(v, k, mods) {
            Action::Quit => return Ok(Action::Quit),
            Action::Redraw => action = Action::Redraw,
            Action::None => {}
        }
    }
    Ok(action)
}

/// The keys in what the terminal sent (raw mode): the few `top` knows; escape sequences
/// (arrows, function keys) are skipped whole.
fn parse_keys(bytes: &[u8]) -> Vec<(KeyCode, KeyModifiers)> {
    let plain = |k| (k, KeyModifiers::NONE);
    let mut keys = Vec::new();
    let mut i = 0;
    while let Some(&b) = bytes.get(i) {
        i += 1;
        match b {
            // Ctrl-C: raw mode delivers it as a byte, not SIGINT.
            0x03 => keys.push((KeyCode::Char('c'), KeyModifiers::CONTROL)),
            0x1b => match bytes.get(i) {
                Some(b'[') | Some(b'O') => {
                    i += 1;
                    // CSI/SS3: parameters, then one final byte in 0x40..=0x7e.
                    while let Some(&c) = bytes.get(i) {
                        i += 1;
                        if (0x40..=0x7e).contains(&c) {
                            break;
                        }
                    }
                }
                _ => keys.push(plain(KeyCode::Esc)),
            },
            b'\r' | b'\n' => keys.push(plain(KeyCode::Enter)),
            0x7f | 0x08 => keys.push(plain(KeyCode::Backspace)),
            _ => {
                let rest = &bytes[i - 1..];
                let len = utf8_len(b).min(rest.len());
                if let Some(c) = std::str::from_utf8(&rest[..len])
                    .ok()
                    .and_then(|s| s.chars().next())
                {
                    if !c.is_control() {
                        keys.push(plain(KeyCode::Char(c)));
                    }
                }
                i += len - 1;
            }
        }
    }
    keys
}

/// How many bytes the UTF-8 sequence starting with `b` has.
fn utf8_len(b: u8) -> usize {
    match b {
        0xc0..=0xdf => 2,
        0xe0..=0xef => 3,
        0xf0..=0xf7 => 4,
        _ => 1,
    }
}

fn lock(a: &Mutex<Aggregator>) -> MutexGuard<'_, Aggregator> {
    a.lock().unwrap_or_else(|e| e.into_inner())
}

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

/// In a replay nothing else handles signals: they set [`STOP`] so the terminal is restored.
fn catch_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// The recording time an input is at, when it says.
fn input_ts(i: &Input) -> Option<u64> {
    match i {
        Input::Event(e) => Some(e.ts_ns),
        Input::Facts(f) => Some(f.ts_ns),
        Input::Retransmit(r) => Some(r.ts_ns),
        Input::Reset(r) => Some(r.ts_ns),
        Input::Tick { now_ns } => Some(*now_ns),
        Input::Listener(r) => Some(r.ts_ns),
        Input::Netstat(n) => Some(n.ts_ns),
        Input::Counters(_) | Input::Cgroup { .. } => None,
    }
}

fn replay(args: &TopArgs, path: &std::path::Path) -> Result<i32> {
    use crate::pipeline::{ClockBase, OutputConfig, Pipeline, ResetReasons};
    use crate::record::RecordReader;

    let file = std::fs::File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (reader, header) = RecordReader::open(io::BufReader::with_capacity(1 << 20, file))
        .map_err(|e| anyhow::anyhow!("{}: {e}", path.display()))?;
    let agg = Arc::new(Mutex::new(Aggregator::default()));
    let mut pipeline = Pipeline::with_renderer(
        OutputConfig {
            max_tracked: args.max_tracked as usize,
            summary_at_end: false,
            clock: ClockBase {
                start_mono_ns: header.start_mono_ns,
                realtime_minus_mono_ns: header.realtime_minus_mono_ns,
            },
            reset_reasons: ResetReasons::leak(header.reset_reasons),
            stuck: Thresholds::from_specs(&args.stuck),
            ..OutputConfig::default()
        },
        Box::new(TopRenderer {
            agg: agg.clone(),
            clock: None,
        }),
    );
    let speed = args.speed;
    let mut v = ViewState {
        source: format!("replay {}x", speed),
        ..ViewState::default()
    };
    let mut inputs = reader.peekable();
    let mut damage = None;
    catch_signals();
    let mut term = Terminal::enter()?;
    let interval_ns = REFRESH.as_nanos() as u64;
    // Recording time: where the replay is, and where the current interval began.
    let mut start: Option<u64> = None;
    let mut boundary = 0u64;
    let mut now = 0u64;
    let mut last_ts = 0u64;
    let mut last_wall = Instant::now();
    let mut sink = io::sink();
    let mut finished = false;
    let mut dirty = true;
    let mut last_draw = Instant::now();
    loop {
        if STOP.load(Ordering::SeqCst) {
            break;
        }
        let wall = Instant::now();
        let elapsed = wall - last_wall;
        last_wall = wall;
        if !v.paused && !finished {
            now = now.saturating_add((elapsed.as_nanos() as f64 * speed) as u64);
        }
        while !v.paused && !finished {
            let next = match inputs.peek() {
                Some(Ok(i)) => Some(input_ts(i)),
                _ => None,
            };
            let Some(ts) = next else {
                // The end (or damage): the last, partial interval is closed too.
                if let Some(Err(e)) = inputs.next() {
                    damage = Some(e);
                }
                let mut a = lock(&agg);
                let cur = pipeline.engine().now_ns().max(last_ts);
                a.sample(pipeline.engine(), cur);
                let secs = cur.saturating_sub(boundary) as f64 / 1e9;
                if secs > 0.0 {
                    a.rotate(secs);
                }
                finished = true;
                v.source = format!("replay {speed}x finished");
                dirty = true;
                break;
            };
            if let Some(ts) = ts {
                if start.is_none() {
                    start = Some(ts);
                    boundary = ts;
                    now = ts;
                }
                if ts > now {
                    break;
                }
                last_ts = last_ts.max(ts);
                // Every interval this input is past is closed first, as live.
                while ts >= boundary + interval_ns {
                    boundary += interval_ns;
                    pipeline
                        .push(&Input::Tick { now_ns: boundary }, &mut sink)
                        .context("replaying")?;
                    let mut a = lock(&agg);
                    a.sample(pipeline.engine(), boundary);
                    a.rotate(REFRESH.as_secs_f64());
                    dirty = true;
                }
            }
            if let Some(Ok(input)) = inputs.next() {
                pipeline.push(&input, &mut sink).context("replaying")?;
            }
        }
        // Redrawn at least every second as well, so a resized terminal is drawn anew.
        if dirty || last_draw.elapsed() >= REFRESH {
            let snap = lock(&agg).snapshot().clone();
            term.draw(&snap, &v)?;
            dirty = false;
            last_draw = Instant::now();
        }
        match poll_keys(&mut v, KEY_POLL)? {
            Action::Quit => break,
            Action::Redraw => dirty = true,
            Action::None => {}
        }
    }
    drop(term);
    if let Some(e) = damage {
        eprintln!("tcpstate: error: {}: {e}", path.display());
        return Ok(1);
    }
    Ok(0)
}

#[cfg(feature = "kernel")]
fn live(args: &TopArgs) -> Result<i32> {
    use crate::live::{self, Limits};
    use crate::output::Output;
    use crate::pipeline::{OutputConfig, Pipeline};

    let spec = args.filter.spec();
    // No --debug here: the kernel's diagnostics would scribble over the screen.
    let opts = live::probe_options(&spec, &args.probe, false)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    // Attached before the screen is taken: its notes and errors are read on a plain terminal.
    let mut probe = live::attach(&opts)?;
    let agg = Arc::new(Mutex::new(Aggregator::default()));
    let cfg = OutputConfig {
        max_tracked: args.max_tracked as usize,
        summary_at_end: false,
        stuck: Thresholds::from_specs(&args.stuck),
        ..OutputConfig::default()
    };
    let mut output = Output::from_pipeline(Pipeline::with_renderer(
        cfg,
        Box::new(TopRenderer {
            agg: agg.clone(),
            clock: Some(crate::clock::monotonic_ns),
        }),
    ));
    let term = Terminal::enter()?;
    let ui = {
        let agg = agg.clone();
        std::thread::spawn(move || ui_loop(term, &agg))
    };
    let limits = Limits {
        duration: args.duration,
        watch_stdout: false,
        stop: Some(&STOP),
        ring_bytes: args.probe.buffer_size,
    };
    let filtered = !spec.is_empty();
    let result = rt.block_on(live::run_into(limits, filtered, &mut probe, &mut output));
    // However the trace ended (q, a signal, an error), the screen goes first.
    STOP.store(true, Ordering::SeqCst);
    let ui = ui.join();
    probe.detach();
    drop(probe);
    match ui {
        Ok(r) => r?,
        Err(_) => anyhow::bail!("the display thread panicked"),
    }
    result?;
    Ok(0)
}

#[cfg(feature = "kernel")]
fn ui_loop(mut term: Terminal, agg: &Mutex<Aggregator>) -> Result<()> {
    let mut v = ViewState::default();
    let mut started = Instant::now();
    let mut snap = lock(agg).snapshot().clone();
    term.draw(&snap, &v)?;
    while !STOP.load(Ordering::SeqCst) {
        if started.elapsed() >= REFRESH {
            let secs = started.elapsed().as_secs_f64();
            started = Instant::now();
            let mut a = lock(agg);
            a.rotate(secs);
            if !v.paused {
                snap = a.snapshot().clone();
            }
            drop(a);
            term.draw(&snap, &v)?;
        }
        match poll_keys(&mut v, KEY_POLL)? {
            Action::Quit => {
                STOP.store(true, Ordering::SeqCst);
                break;
            }
            Action::Redraw => term.draw(&snap, &v)?,
            Action::None => {}
        }
    }
    drop(term);
    Ok(())
}

#[cfg(not(feature = "kernel"))]
fn live(_: &TopArgs) -> Result<i32> {
    anyhow::bail!(
        "this tcpstate was built without the eBPF program (--no-default-features): live `top` \
         needs the default build (`cargo xtask build`); `top --replay FILE` works in this one"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_change_the_view() {
        let mut v = ViewState::default();
        let none = KeyModifiers::NONE;
        assert_eq!(key(&mut v, KeyCode::Char('s'), none), Action::Redraw);
        assert_eq!(v.sort, view::Sort::Total);
        key(&mut v, KeyCode::Char('/'), none);
        for c in "8080".chars() {
            key(&mut v, KeyCode::Char(c), none);
        }
        // While typing, q is text.
        key(&mut v, KeyCode::Char('q'), none);
        key(&mut v, KeyCode::Backspace, none);
        key(&mut v, KeyCode::Enter, none);
        assert_eq!(v.filter, "8080");
        assert!(!v.editing);
        key(&mut v, KeyCode::Char('p'), none);
        assert!(v.paused);
        key(&mut v, KeyCode::Char('?'), none);
        assert!(v.help);
        // Any key closes the help, q included.
        assert_eq!(key(&mut v, KeyCode::Char('q'), none), Action::Redraw);
        assert_eq!(key(&mut v, KeyCode::Char('q'), none), Action::Quit);
        assert_eq!(
            key(&mut v, KeyCode::Char('c'), KeyModifiers::CONTROL),
            Action::Quit
        );
    }

    #[test]
    fn terminal_bytes_become_keys() {
        let none = KeyModifiers::NONE;
        assert_eq!(
            parse_keys(b"s/80\x7f\r\x1b[A\x1bq\x03\xc3\xa9"),
            vec![
                (KeyCode::Char('s'), none),
                (KeyCode::Char('/'), none),
                (KeyCode::Char('8'), none),
                (KeyCode::Char('0'), none),
                (KeyCode::Backspace, none),
                (KeyCode::Enter, none),
                (KeyCode::Esc, none),
                (KeyCode::Char('q'), none),
                (KeyCode::Char('c'), KeyModifiers::CONTROL),
                (KeyCode::Char('\u{e9}'), none),
            ]
        );
    }

    #[test]
    fn a_small_terminal_is_told_so() {
        let backend = ratatui::backend::TestBackend::new(60, 20);
        let mut t = ratatui::Terminal::new(backend).unwrap();
        t.draw(|f| view::draw(f, &agg::Snapshot::default(), &ViewState::default()))
            .unwrap();
        let text: String = t
            .backend()
            .buffer()
            .content()
            .iter()
            .map(|c| c.symbol())
            .collect();
        assert!(text.contains("terminal too small: 60x20"), "{text}");
    }
}
