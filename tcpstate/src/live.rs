//! `tcpstate trace`: attach, stream the ring buffer into the pipeline, stop cleanly.

use std::{
    fs,
    io::{self, BufWriter, Write},
    path::Path,
    time::{Duration, Instant},
};

use anyhow::{Context, Result};
use tokio::{
    io::unix::AsyncFd,
    signal::unix::{signal, SignalKind},
    time::{interval, sleep, Instant as TokioInstant, MissedTickBehavior},
};

use crate::cgroup;
use crate::{
    cli::TraceArgs,
    clock,
    drain::{self, Pace},
    input::{Counter, Input, KernelCounters},
    kernel::{
        environment,
        facts::Decoder,
        probe::{Probe, ProbeOptions},
        procscan,
    },
    output::{Output, OutputError},
    pipeline::ResetReasons,
    record::{self, RecordWriter},
};

/// How often the kernel's counters are sampled into the stream.
const COUNTERS_EVERY: Duration = Duration::from_secs(1);
/// The recording is handed to the file system at least this often, so a tracer killed with
/// SIGKILL (which flushes nothing) leaves every record older than a second on disk.
const RECORD_FLUSH_EVERY: Duration = Duration::from_millis(500);
/// While one drain runs through a burst, the clock is looked at once per this many events.
const FLUSH_CHECK_EVENTS: u64 = 4096;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stop {
    Signal,
    Duration,
    Count,
    StdoutClosed,
    RecordFailed,
}

/// What the run saw, for the final line on stderr.
#[derive(Debug, Default)]
struct Totals {
    delivered: u64,
    undecodable: u64,
}

/// Reads the kernel's counters; says on stderr, once per counter, when one cannot be read (it
/// is then unknown, never 0, in the summary and the recording).
#[derive(Debug, Default)]
struct CounterReader {
    /// Counters whose failure was already reported (bit `Counter::position()`).
    reported: u32,
    /// Owner updates user space's owner table could not keep (as of the last drain).
    user_owner_failed: u64,
}

impl CounterReader {
    fn read(&mut self, probe: &Probe) -> KernelCounters {
        let (mut counters, errors) = probe.read_counters();
        if let Some(n) = counters.get(Counter::OwnerUpdateFailed) {
            counters.set(Counter::OwnerUpdateFailed, Some(n + self.user_owner_failed));
        }
        for e in errors {
            let bit = 1 << e.counter.position();
            if self.reported & bit == 0 {
                self.reported |= bit;
                eprintln!("tcpstate: error: {e}; it is shown as unknown");
            }
        }
        counters
    }
}

/// A counter for the stderr line: its value or `unknown`.
fn show(v: Option<u64>) -> String {
    v.map_or_else(|| "unknown".to_string(), |v| v.to_string())
}

/// The probe's options for a filter, a ring buffer size and `--debug` (which also sends the
/// kernel program's diagnostics to stderr): the same for `trace`, `exporter` and `top`.
pub(crate) fn probe_options(
    spec: &crate::filter::FilterSpec,
    args: &crate::cli::ProbeArgs,
    debug: bool,
) -> Result<ProbeOptions> {
    let filter = spec.to_kernel().map_err(|e| anyhow::anyhow!("{e}"))?;
    if debug {
        // The kernel program's records carry its crate's target, `tcpstate`; aya's own loader
        // chatter stays at warnings.
        env_logger::Builder::new()
            .filter_level(log::LevelFilter::Warn)
            .filter_module("tcpstate", log::LevelFilter::Debug)
            .target(env_logger::Target::Stderr)
            .init();
    }
    Ok(ProbeOptions {
        buffer_bytes: args.buffer_size,
        wakeup_bytes: u64::from(args.buffer_size / 4),
        filter,
        debug_log: debug,
        allow_direct_read: true,
        attachment: args.attach,
        attribution: args.attribution,
    })
}

pub fn run(args: &TraceArgs) -> Result<i32> {
    let spec = args.filter_spec();
    let filtered = !spec.is_empty();
    let opts = probe_options(&spec, &args.probe, args.debug)?;
    // Open the recording before attaching so a bad path fails before anything is loaded.
    let record_file = match &args.record {
        Some(path) => Some((
            path.clone(),
            record::create_record_file(path, args.force).map_err(|e| anyhow::anyhow!("{e}"))?,
        )),
        None => None,
    };

    let mut probe = attach(&opts)?;

    let clock = clock::Start::now();
    // The kernel's reset reason names (`enum sk_rst_reason` from BTF, lower case, by value),
    // in the recording too so a replay elsewhere names them the same.
    let reset_reasons: Vec<String> = probe.reset_reasons.clone();
    let drop_reasons: Vec<String> = probe.drop_reasons.clone();
    let mut recorder = match record_file {
        Some((path, file)) => {
            let mut header = record::Header::new(
                environment::kernel_release(),
                clock.start_mono_ns,
                clock.realtime_minus_mono_ns,
                std::env::args().collect::<Vec<_>>().join(" "),
            );
            header.reset_reasons = reset_reasons.clone();
            header.drop_reasons = drop_reasons.clone();
            let w = RecordWriter::new(file, &header)
                .with_context(|| format!("writing {}", path.display()))?;
            Some((path, w))
        }
        None => None,
    };

    let mut output = Output::with_reasons(
        &args.output,
        clock.into(),
        args.count,
        ResetReasons::leak(reset_reasons),
    )
    .with_drop_reasons(ResetReasons::leak(drop_reasons));
    let stdout = io::stdout();
    let mut out = BufWriter::with_capacity(1 << 16, stdout.lock());

    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the event loop")?;
    let mut totals = Totals::default();
    let mut reader = CounterReader::default();
    let result = {
        let mut session = Session {
            output: &mut output,
            out: &mut out,
            recorder: &mut recorder,
            totals: &mut totals,
            counters: &mut reader,
            last_record_flush: Instant::now(),
            netstat: procscan::NetstatSampler::default(),
            cgroups: announcer(),
        };
        let limits = Limits {
            duration: args.duration,
            watch_stdout: true,
            stop: None,
            ring_bytes: args.probe.buffer_size,
        };
        rt.block_on(event_loop(limits, filtered, &mut probe, &mut session))
    };

    // Whatever stopped us, account for everything and leave nothing attached.
    let mut exit = 0;
    let stop = match result {
        Ok(stop) => stop,
        Err(LoopError::Output(OutputError::Closed)) => Stop::StdoutClosed,
        Err(LoopError::Record(path, e)) => {
            // Nothing more can be recorded: stop, but still show and count what was seen.
            eprintln!(
                "tcpstate: error: writing {}: {}; tracing stopped",
                path.display(),
                describe_io(&e)
            );
            recorder = None;
            exit = 1;
            Stop::RecordFailed
        }
        Err(e) => {
            drop(probe);
            return Err(anyhow::anyhow!("{e}"));
        }
    };
    // The loop detaches before its last drain; after an early stop this does it.
    probe.detach();
    let counters = reader.read(&probe);
    drop(probe);
    if let Some((path, mut w)) = recorder.take() {
        let r = w
            .write(&Input::Counters(counters))
            .and_then(|()| w_finish(w));
        if let Err(e) = r {
            eprintln!(
                "tcpstate: error: writing {}: {}",
                path.display(),
                describe_io(&e)
            );
            exit = 1;
        }
    }
    if stop != Stop::StdoutClosed {
        let r = output
            .push(&Input::Counters(counters), &mut out)
            .and_then(|()| output.finish(&mut out))
            .and_then(|()| out.flush().map_err(OutputError::from));
        match r {
            Ok(()) | Err(OutputError::Closed) => {}
            Err(e) => {
                eprintln!("tcpstate: error: {e}");
                exit = 1;
            }
        }
    }
    if let Some(path) = &args.counters_json {
        write_counters_json(path, &counters, totals.delivered)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    let get = |c| show(counters.get(c));
    eprintln!(
        "tcpstate: {} events delivered, {} lost ({} ring buffer full, {} not held, {} recursion \
         misses); {} rescued; kernel saw {} TCP state changes, filtered {}{}",
        totals.delivered,
        show(counters.lost()),
        get(Counter::RingbufFull),
        get(Counter::HoldFailed),
        get(Counter::RecursionMisses),
        get(Counter::Rescued),
        get(Counter::Seen),
        get(Counter::Filtered),
        if totals.undecodable > 0 {
            format!(", {} undecodable records", totals.undecodable)
        } else {
            String::new()
        }
    );
    let (facts_lost, joined_lost) = (
        counters.get(Counter::FactsRingbufFull).unwrap_or(0),
        counters.get(Counter::JoinedRingbufFull).unwrap_or(0),
    );
    if facts_lost + joined_lost > 0 {
        // Counted in `lost` above; their connections' events were delivered, what these records
        // would have added is unknown.
        eprintln!(
            "tcpstate: ring buffer full: {facts_lost} socket-facts records and {joined_lost} \
             retransmit/reset records lost"
        );
    }
    Ok(exit)
}

/// Loads and attaches the program, with the sockets that already exist.
pub(crate) fn attach(opts: &ProbeOptions) -> Result<Probe> {
    let cgroups = procscan::CgroupScan::new(&opts.filter.filter);
    let before = procscan::scan(&cgroups);
    let mut probe = Probe::attach(opts, &before).map_err(|e| anyhow::anyhow!("{e}"))?;
    if let Some(dir) = &probe.mounted_tracefs {
        eprintln!(
            "tcpstate: tracefs was not mounted; mounted it at {}",
            dir.display()
        );
    }
    for notice in &probe.notices {
        eprintln!("tcpstate: note: {notice}");
    }
    // Sockets created between the first scan and the attach.
    probe
        .add_preexisting(&procscan::scan(&cgroups))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok(probe)
}

/// What ends the loop besides a signal, and the ring buffer's size, which paces its drains.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    /// `--duration`.
    pub duration: Option<f64>,
    /// Stop when the reader of stdout goes away (`trace | head`); not for a daemon.
    pub watch_stdout: bool,
    /// Set by someone else to stop the loop as a signal does (`top`'s `q`).
    pub stop: Option<&'static std::sync::atomic::AtomicBool>,
    /// The events ring buffer's size in bytes (`--buffer-size`).
    pub ring_bytes: u32,
}

/// The seam for `exporter`: trace loop and all, into `output` (whose renderer is its sink),
/// until a signal or `limits`. Returns the events delivered and the undecodable records.
pub(crate) async fn run_into(
    limits: Limits,
    filtered: bool,
    probe: &mut Probe,
    output: &mut Output,
) -> Result<(u64, u64)> {
    let mut totals = Totals::default();
    let mut reader = CounterReader::default();
    let mut session = Session {
        output,
        out: &mut io::sink(),
        recorder: &mut None,
        totals: &mut totals,
        counters: &mut reader,
        last_record_flush: Instant::now(),
        netstat: procscan::NetstatSampler::default(),
        cgroups: announcer(),
    };
    event_loop(limits, filtered, probe, &mut session)
        .await
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    Ok((totals.delivered, totals.undecodable))
}

fn w_finish<W: Write>(w: RecordWriter<W>) -> io::Result<()> {
    w.finish().map(|_| ())
}

fn describe_io(e: &io::Error) -> String {
    if e.raw_os_error() == Some(libc::ENOSPC) {
        "disk full; the recording holds everything up to the last complete record".into()
    } else {
        e.to_string()
    }
}

/// Every kernel counter by name (`null` when unknown), `lost`, `held`, and what user space read.
pub(crate) fn write_counters_json(
    path: &Path,
    c: &KernelCounters,
    delivered: u64,
) -> io::Result<()> {
    let mut value = serde_json::to_value(c).map_err(io::Error::from)?;
    if let Some(obj) = value.as_object_mut() {
        obj.insert("lost".into(), c.lost().into());
        obj.insert("held".into(), c.held().into());
        obj.insert("delivered".into(), delivered.into());
    }
    fs::write(path, format!("{value}\n"))
}

#[derive(Debug, thiserror::Error)]
enum LoopError {
    #[error(transparent)]
    Output(OutputError),
    #[error("writing {0}: {desc}", desc = describe_io(.1))]
    Record(std::path::PathBuf, io::Error),
    #[error(transparent)]
    Io(io::Error),
}

type Recorder = Option<(std::path::PathBuf, RecordWriter<fs::File>)>;

/// Everything an input goes through: the recording, then the output.
struct Session<'a, W: Write> {
    output: &'a mut Output,
    out: &'a mut W,
    recorder: &'a mut Recorder,
    totals: &'a mut Totals,
    counters: &'a mut CounterReader,
    last_record_flush: Instant,
    /// Listen and SYN-cookie counters per namespace, sampled with the kernel's counters.
    netstat: procscan::NetstatSampler,
    /// Names each cgroup id in the stream before its first event.
    cgroups: cgroup::Announcer,
}

/// The host's cgroup names; what cannot be known is said once on stderr.
fn announcer() -> cgroup::Announcer {
    let mut notices = Vec::new();
    let resolver = cgroup::Resolver::host(&mut notices);
    for n in notices {
        eprintln!("tcpstate: note: {n}");
    }
    cgroup::Announcer::new(resolver)
}

impl<W: Write> Session<'_, W> {
    fn feed(&mut self, input: &Input) -> Result<(), LoopError> {
        if let Some((path, w)) = self.recorder.as_mut() {
            w.write(input)
                .map_err(|e| LoopError::Record(path.clone(), e))?;
        }
        self.output.push(input, self.out).map_err(LoopError::Output)
    }

    /// One netstat sample per namespace into the stream (and the recording).
    fn sample_netstat(&mut self) -> Result<(), LoopError> {
        for n in self.netstat.sample(clock::monotonic_ns()) {
            self.feed(&Input::Netstat(n))?;
        }
        Ok(())
    }

    /// Hands the recording's buffer to the file system when it was last done
    /// `RECORD_FLUSH_EVERY` ago.
    fn flush_record_if_due(&mut self) -> Result<(), LoopError> {
        if self.last_record_flush.elapsed() < RECORD_FLUSH_EVERY {
            return Ok(());
        }
        self.last_record_flush = Instant::now();
        if let Some((path, w)) = self.recorder.as_mut() {
            w.flush().map_err(|e| LoopError::Record(path.clone(), e))?;
        }
        Ok(())
    }

    /// Reads everything the ring buffer holds.
    fn drain(
        &mut self,
        ring: &mut aya::maps::RingBuf<aya::maps::MapData>,
        decoder: &mut Decoder,
    ) -> Result<Drained, LoopError> {
        let mut any = false;
        let mut bytes = 0;
        while let Some(item) = ring.next() {
            bytes += drain::ring_bytes(item.len());
            // An event (with its facts, or not), a retransmit, reset or listener record, told
            // apart by size and handed over by reference.
            let decoded = decoder.decode_each(&item, |input| {
                if let Input::Event(ev) = input {
                    self.totals.delivered += 1;
                    if let Some(path) = self.cgroups.announce(ev.cgroup_id) {
                        self.feed(&Input::Cgroup {
                            id: ev.cgroup_id,
                            path,
                        })?;
                    }
                }
                self.feed(input)
            });
            drop(item);
            if !decoded? {
                self.totals.undecodable += 1;
                continue;
            }
            any = true;
            if self.output.limit_reached() {
                return Ok(Drained {
                    bytes,
                    count_reached: true,
                });
            }
            // A burst can keep this loop going for long: flushing only after it would not do.
            if self.totals.delivered.is_multiple_of(FLUSH_CHECK_EVENTS) {
                self.flush_record_if_due()?;
            }
        }
        self.flush_record_if_due()?;
        self.counters.user_owner_failed = decoder.owner_updates_failed();
        if any {
            self.out.flush().map_err(|e| LoopError::Output(e.into()))?;
        }
        Ok(Drained {
            bytes,
            count_reached: false,
        })
    }
}

/// What one drain read.
#[derive(Debug, Clone, Copy)]
struct Drained {
    /// Ring buffer bytes the records read had taken.
    bytes: u64,
    /// `--count` is reached.
    count_reached: bool,
}

/// Whether the reader of stdout went away (`| head` finished) even though nothing was written
/// since: a pipe's write end then polls as POLLERR.
fn stdout_closed() -> bool {
    let mut pfd = libc::pollfd {
        fd: libc::STDOUT_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, zero timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & (libc::POLLERR | libc::POLLHUP) != 0
}

async fn event_loop<W: Write>(
    limits: Limits,
    filtered: bool,
    probe: &mut Probe,
    session: &mut Session<'_, W>,
) -> Result<Stop, LoopError> {
    let ring = probe
        .take_events()
        .map_err(|e| LoopError::Io(io::Error::other(e.to_string())))?;
    let mut decoder = probe.decoder();
    // SAFETY: the ring buffer owns its fd and is moved into the AsyncFd, which deregisters it
    // before dropping it.
    let mut ring = unsafe { AsyncFd::register(ring) }
        .map_err(|e| LoopError::Io(io::Error::other(e.to_string())))?;
    let mut sigint = signal(SignalKind::interrupt()).map_err(LoopError::Io)?;
    let mut sigterm = signal(SignalKind::terminate()).map_err(LoopError::Io)?;
    let mut sighup = signal(SignalKind::hangup()).map_err(LoopError::Io)?;
    // Said only now that a signal stops us cleanly: scripts wait for this line.
    eprintln!(
        "tcpstate: tracing TCP state changes{} on the {}; Ctrl-C to stop",
        if filtered {
            " (filtered in the kernel)"
        } else {
            ""
        },
        probe.attachment
    );
    // The next drain (and clock tick) is due after a wait that adapts to what the last drain
    // found (`drain::Pace`); the kernel's wake-ups drain in between and may bring it closer.
    let mut pace = Pace::new(limits.ring_bytes);
    let mut last_drain = TokioInstant::now();
    // The first drain and tick at once, as the fixed timer's first tick was.
    let drain_timer = sleep(Duration::ZERO);
    tokio::pin!(drain_timer);
    let mut counters_timer = interval(COUNTERS_EVERY);
    counters_timer.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let deadline = sleep(
        limits
            .duration
            .map(Duration::from_secs_f64)
            .unwrap_or(Duration::from_secs(100 * 365 * 86400)),
    );
    tokio::pin!(deadline);

    let stop = loop {
        tokio::select! {
            _ = sigint.recv() => break Stop::Signal,
            _ = sigterm.recv() => break Stop::Signal,
            _ = sighup.recv() => break Stop::Signal,
            _ = &mut deadline => break Stop::Duration,
            guard = ring.readable_mut() => {
                let mut guard = guard.map_err(LoopError::Io)?;
                let drained = session.drain(guard.get_inner_mut(), &mut decoder)?;
                if drained.count_reached {
                    return Ok(Stop::Count);
                }
                guard.clear_ready();
                // Sooner if this wake-up says so; never later, so the clock keeps ticking
                // however often the kernel wakes us.
                let now = TokioInstant::now();
                let due = now + pace.next(drained.bytes, now - last_drain);
                last_drain = now;
                if due < drain_timer.deadline() {
                    drain_timer.as_mut().reset(due);
                }
            }
            _ = &mut drain_timer => {
                if limits.watch_stdout && stdout_closed() {
                    break Stop::StdoutClosed;
                }
                if limits.stop.is_some_and(|s| s.load(std::sync::atomic::Ordering::SeqCst)) {
                    break Stop::Signal;
                }
                let drained = session.drain(ring.get_mut(), &mut decoder)?;
                if drained.count_reached {
                    return Ok(Stop::Count);
                }
                let now = TokioInstant::now();
                drain_timer.as_mut().reset(now + pace.next(drained.bytes, now - last_drain));
                last_drain = now;
                probe.flush_log();
                session.feed(&Input::Tick { now_ns: clock::monotonic_ns() })?;
                if session.output.limit_reached() {
                    return Ok(Stop::Count);
                }
                session.out.flush().map_err(|e| LoopError::Output(e.into()))?;
            }
            _ = counters_timer.tick() => {
                // The first tick is at once: the start's sample.
                session.sample_netstat()?;
                let c = session.counters.read(probe);
                session.feed(&Input::Counters(c))?;
            }
        }
    };
    // The last sample, for the final summary.
    session.sample_netstat()?;
    // Whatever the kernel delivered before the stop is still shown, and with the program
    // detached first, delivered + lost accounts for every event it ran for.
    probe.detach();
    probe.flush_log();
    if session.drain(ring.get_mut(), &mut decoder)?.count_reached {
        return Ok(Stop::Count);
    }
    Ok(stop)
}
