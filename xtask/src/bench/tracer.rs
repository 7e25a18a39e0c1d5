//! The tracers under test: starting one, knowing when it is attached, stopping it and reading
//! what it says it delivered and lost.

use std::{
    fs::{self, File},
    io::{BufRead, BufReader, Read},
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc, Mutex,
    },
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};
use tcpstate_common::{Counter, KernelCounters};

use super::measure;

/// What the tcpstate tracer prints on stderr once its program is attached.
const TCPSTATE_ATTACHED: &str = "tcpstate: tracing";
/// What the bpftrace comparator prints on stderr once attached. BEGIN runs after the probes are
/// attached, and its printf would sit in the output file's buffer, hence system() to stderr
/// (which needs --unsafe).
const BPFTRACE_ATTACHED: &str = "bpftrace: attached";
/// Prints every state change with about the fields tcpstate's default output needs.
const BPFTRACE_PROGRAM: &str = r#"BEGIN { system("echo bpftrace: attached >&2"); }
tracepoint:sock:inet_sock_set_state {
  printf("%llu %llx %d %s %d %d %d %d\n", nsecs, args->skaddr, pid, comm,
         args->oldstate, args->newstate, args->sport, args->dport);
}"#;
/// An empty program on the same tracepoint: the cost of merely having a BPF program attached
/// there, and a second tracer for tcpstate to share the tracepoint with.
const BPFTRACE_EMPTY_PROGRAM: &str = r#"BEGIN { system("echo bpftrace: attached >&2"); }
tracepoint:sock:inet_sock_set_state {}"#;

const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);
const EXIT_TIMEOUT: Duration = Duration::from_secs(30);
const STDERR_TAIL_LINES: usize = 20;

/// A way of tracing the storm.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Config {
    /// `tcpstate trace`: the default output, one line per connection, to a file.
    Connections,
    /// `tcpstate trace --attach classic`: the same on the classic tracepoint, to compare the
    /// attachments in one run.
    Classic,
    /// `tcpstate trace --attribution kernel`: owners attributed in the kernel, as owner filters
    /// need, to compare with the default's user-space attribution in one run.
    KernelOwners,
    /// `tcpstate trace --transitions --output json`, to a file.
    Json,
    /// `tcpstate trace --port 1`: the kernel filters every event out.
    Filtered,
    /// `tcpstate exporter`, scraped once a second like a Prometheus would.
    Exporter,
    /// bpftrace with an empty program on the same tracepoint: the floor of any tracer's cost.
    Empty,
    /// `tcpstate trace` while bpftrace's empty program is attached to the same tracepoint too.
    SecondTracer,
    /// bpftrace printing each event to a file, as a comparator.
    Bpftrace,
    /// libbpf-tools' `tcpstates` (Debian package libbpf-tools) to a file, as a comparator.
    Tcpstates,
    /// libbpf-tools' `tcplife` to a file, as a comparator (one line per connection).
    Tcplife,
}

impl Config {
    pub const ALL: [Config; 11] = [
        Config::Connections,
        Config::Classic,
        Config::KernelOwners,
        Config::Json,
        Config::Filtered,
        Config::Exporter,
        Config::Empty,
        Config::SecondTracer,
        Config::Bpftrace,
        Config::Tcpstates,
        Config::Tcplife,
    ];

    /// The command line, as shown in the report.
    pub fn label(self) -> &'static str {
        match self {
            Config::Connections => "tcpstate trace",
            Config::Classic => "tcpstate trace --attach classic",
            Config::KernelOwners => "tcpstate trace --attribution kernel",
            Config::Json => "tcpstate trace --transitions --output json",
            Config::Filtered => "tcpstate trace --port 1",
            Config::Exporter => "tcpstate exporter, scraped every 1 s",
            Config::Empty => "bpftrace empty program (the floor)",
            Config::SecondTracer => "tcpstate trace + bpftrace empty program",
            Config::Bpftrace => "bpftrace printf",
            Config::Tcpstates => "libbpf-tools tcpstates",
            Config::Tcplife => "libbpf-tools tcplife",
        }
    }

    /// The name used in the JSON result and on the command line.
    pub fn key(self) -> &'static str {
        match self {
            Config::Connections => "connections",
            Config::Classic => "classic",
            Config::KernelOwners => "kernel-owners",
            Config::Json => "json",
            Config::Filtered => "filtered",
            Config::Exporter => "exporter",
            Config::Empty => "empty",
            Config::SecondTracer => "second-tracer",
            Config::Bpftrace => "bpftrace",
            Config::Tcpstates => "tcpstates",
            Config::Tcplife => "tcplife",
        }
    }

    fn tcpstate_args(self) -> &'static [&'static str] {
        match self {
            Config::Connections | Config::SecondTracer => &["trace"],
            Config::Classic => &["trace", "--attach", "classic"],
            Config::KernelOwners => &["trace", "--attribution", "kernel"],
            Config::Json => &["trace", "--transitions", "--output", "json"],
            Config::Filtered => &["trace", "--port", "1"],
            Config::Exporter => &["exporter"],
            Config::Empty | Config::Bpftrace | Config::Tcpstates | Config::Tcplife => &[],
        }
    }

    pub fn is_tcpstate(self) -> bool {
        matches!(
            self,
            Config::Connections
                | Config::Classic
                | Config::KernelOwners
                | Config::Json
                | Config::Filtered
                | Config::SecondTracer
                | Config::Exporter
        )
    }

    /// Whether it runs bpftrace (alone or beside tcpstate).
    pub fn needs_bpftrace(self) -> bool {
        matches!(
            self,
            Config::Empty | Config::SecondTracer | Config::Bpftrace
        )
    }

    /// Whether the tracer reports every event it handled, so that events can be accounted for:
    /// the empty program reports none, tcplife one line per connection.
    pub fn accounts_events(self) -> bool {
        !matches!(self, Config::Empty | Config::Tcplife)
    }
}

/// The programs the configurations run.
#[derive(Debug, Clone)]
pub struct Tools {
    /// The tcpstate binary, when it can write `--counters-json`.
    pub tcpstate: Option<PathBuf>,
    pub bpftrace: Option<PathBuf>,
    pub tcpstates: Option<PathBuf>,
    pub tcplife: Option<PathBuf>,
}

impl Tools {
    /// Why `config` cannot run here, if it cannot.
    pub fn unavailable(&self, config: Config) -> Option<&'static str> {
        match config {
            c if c.needs_bpftrace() && self.bpftrace.is_none() => Some("bpftrace is not installed"),
            c if c.is_tcpstate() && self.tcpstate.is_none() => {
                Some("the tcpstate binary has no --counters-json option yet")
            }
            Config::Tcpstates if self.tcpstates.is_none() => {
                Some("libbpf-tools is not installed (apt-get install libbpf-tools)")
            }
            Config::Tcplife if self.tcplife.is_none() => {
                Some("libbpf-tools is not installed (apt-get install libbpf-tools)")
            }
            _ => None,
        }
    }
}

/// A libbpf-tools program: Debian installs them as /usr/sbin/NAME (not on every user's PATH);
/// some packagings prefix the names with `libbpf-`.
pub fn find_libbpf_tool(name: &str) -> Option<PathBuf> {
    let prefixed = format!("libbpf-{name}");
    [name, prefixed.as_str()].iter().find_map(|n| {
        which(n).or_else(|| {
            let p = Path::new("/usr/sbin").join(n);
            p.is_file().then_some(p)
        })
    })
}

/// Whether this tcpstate binary supports what the benchmark needs.
pub fn supports_counters_json(tcpstate: &Path) -> Result<bool> {
    let out = Command::new(tcpstate)
        .args(["trace", "--help"])
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("running {} trace --help", tcpstate.display()))?;
    Ok(String::from_utf8_lossy(&out.stdout).contains("--counters-json"))
}

/// Finds a program on PATH.
pub fn which(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

const TRACEFS: &str = "/sys/kernel/tracing";

/// tracefs, mounted for bpftrace (which does not mount it itself) when nothing has mounted it,
/// and unmounted again when dropped.
pub struct TracefsMount {
    mounted: bool,
}

impl TracefsMount {
    pub fn ensure() -> Result<TracefsMount> {
        let mounts = fs::read_to_string("/proc/mounts").context("reading /proc/mounts")?;
        if mounts
            .lines()
            .any(|l| l.split_whitespace().nth(2) == Some("tracefs"))
        {
            return Ok(TracefsMount { mounted: false });
        }
        let c = |s: &str| std::ffi::CString::new(s).context("path with a NUL");
        let (source, target) = (c("tracefs")?, c(TRACEFS)?);
        // SAFETY: NUL-terminated strings that outlive the call; no mount data.
        let ret = unsafe {
            libc::mount(
                source.as_ptr(),
                target.as_ptr(),
                source.as_ptr(),
                0,
                std::ptr::null(),
            )
        };
        if ret != 0 {
            bail!(
                "mounting tracefs at {TRACEFS}: {}",
                std::io::Error::last_os_error()
            );
        }
        Ok(TracefsMount { mounted: true })
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if !self.mounted {
            return;
        }
        if let Ok(target) = std::ffi::CString::new(TRACEFS) {
            // SAFETY: a NUL-terminated string that outlives the call.
            if unsafe { libc::umount(target.as_ptr()) } != 0 {
                eprintln!(
                    "bench: could not unmount {TRACEFS}: {}",
                    std::io::Error::last_os_error()
                );
            }
        }
    }
}

/// What a tracer reported at exit about the events it handled.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TracerCounts {
    /// Events user space read.
    pub delivered: u64,
    /// Lost because the kernel-to-user buffer was full.
    pub buffer_full: u64,
    /// Lost because the kernel skipped the program (from the tracer's own counters; `None`
    /// when it does not count them).
    pub recursion_misses: Option<u64>,
    /// Rejected by the in-kernel filter.
    pub filtered: u64,
    /// Times the program ran, when the tracer counts them.
    pub seen: Option<u64>,
    /// Events the kernel held back until their port was known (tcpstate's port filters).
    pub deferred: u64,
    /// Lost because they could not be held until their port was known (tcpstate's port
    /// filters; the table of held events was full).
    pub hold_failed: u64,
    /// Bytes of output written.
    pub output_bytes: u64,
    /// Skipped runs a second program recovered (tcpstate's rescue program): delivered, not lost.
    pub rescued: u64,
}

#[derive(Default)]
struct StderrState {
    tail: Vec<String>,
    /// libbpf-tools' "lost N events on CPU #C" warnings, summed.
    lost: u64,
}

/// A running tracer.
pub struct Tracer {
    config: Config,
    child: Child,
    output: PathBuf,
    counters: PathBuf,
    attached: Arc<AtomicBool>,
    stderr: Arc<Mutex<StderrState>>,
    stderr_reader: Option<JoinHandle<()>>,
    /// The second tracer attached beside tcpstate ([`Config::SecondTracer`]).
    companion: Option<Box<Tracer>>,
    /// What scrapes the exporter ([`Config::Exporter`]).
    scraper: Option<Scraper>,
}

const SCRAPE_EVERY: Duration = Duration::from_secs(1);

/// GETs /metrics once a second, as Prometheus would, until stopped.
struct Scraper {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u64>>,
}

impl Scraper {
    fn start(port: u16) -> Scraper {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let thread = thread::spawn(move || {
            let mut scrapes = 0;
            while !flag.load(Ordering::Relaxed) {
                if scrape(port).is_ok() {
                    scrapes += 1;
                }
                let wake = Instant::now() + SCRAPE_EVERY;
                while Instant::now() < wake && !flag.load(Ordering::Relaxed) {
                    thread::sleep(Duration::from_millis(50));
                }
            }
            scrapes
        });
        Scraper {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops scraping; the number of scrapes that succeeded.
    fn finish(&mut self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().and_then(|t| t.join().ok()).unwrap_or(0)
    }
}

fn scrape(port: u16) -> std::io::Result<usize> {
    use std::io::Write;
    let addr = std::net::SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
    let mut body = Vec::new();
    s.read_to_end(&mut body)?;
    Ok(body.len())
}

fn free_loopback_port() -> Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0").context("finding a free port")?;
    Ok(l.local_addr()?.port())
}

impl Tracer {
    /// Starts `config`, writing its output to `output` (a file, or /dev/null) and tcpstate's
    /// counters to `counters`, and returns once it is attached.
    pub fn start(config: Config, tools: &Tools, output: &Path, counters: &Path) -> Result<Tracer> {
        let counters = counters.to_path_buf();
        let _ = fs::remove_file(&counters);
        // The second tracer attaches first, so it is there for the whole traced round.
        let companion = match config {
            Config::SecondTracer => Some(Box::new(Tracer::start(
                Config::Empty,
                tools,
                Path::new("/dev/null"),
                &counters.with_extension("companion.json"),
            )?)),
            _ => None,
        };
        let mut scrape_port = None;
        let mut cmd = match config {
            Config::Empty | Config::Bpftrace => {
                let bin = tools
                    .bpftrace
                    .as_ref()
                    .context("bpftrace is not installed")?;
                let program = if config == Config::Empty {
                    BPFTRACE_EMPTY_PROGRAM
                } else {
                    BPFTRACE_PROGRAM
                };
                let mut cmd = Command::new(bin);
                cmd.arg("--unsafe")
                    .arg("-o")
                    .arg(output)
                    .args(["-e", program]);
                cmd.stdout(Stdio::null());
                cmd
            }
            Config::Tcpstates | Config::Tcplife => {
                let bin = match config {
                    Config::Tcpstates => tools.tcpstates.as_ref(),
                    _ => tools.tcplife.as_ref(),
                }
                .context("libbpf-tools is not installed")?;
                let mut cmd = Command::new(bin);
                let file = File::create(output)
                    .with_context(|| format!("creating {}", output.display()))?;
                cmd.stdout(file);
                cmd
            }
            _ => {
                let bin = tools
                    .tcpstate
                    .as_ref()
                    .context("no usable tcpstate binary")?;
                let mut cmd = Command::new(bin);
                cmd.args(config.tcpstate_args())
                    .arg("--counters-json")
                    .arg(&counters);
                if config == Config::Exporter {
                    scrape_port = Some(free_loopback_port()?);
                    cmd.arg(format!(
                        "--listen=127.0.0.1:{}",
                        scrape_port.unwrap_or_default()
                    ));
                }
                let file = File::create(output)
                    .with_context(|| format!("creating {}", output.display()))?;
                cmd.stdout(file);
                cmd
            }
        };
        cmd.stdin(Stdio::null()).stderr(Stdio::piped());
        // The tracer dies with the thread that started it (the benchmark's main thread), so
        // no tracer outlives a benchmark that is killed or interrupted. SAFETY: prctl is
        // async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", config.label()))?;
        let attached = Arc::new(AtomicBool::new(false));
        let stderr = Arc::new(Mutex::new(StderrState::default()));
        let stderr_reader = child.stderr.take().map(|pipe| {
            let attached = Arc::clone(&attached);
            let state = Arc::clone(&stderr);
            thread::spawn(move || read_stderr(pipe, &attached, &state))
        });
        let mut tracer = Tracer {
            config,
            child,
            output: output.to_path_buf(),
            counters,
            attached,
            stderr,
            stderr_reader,
            companion,
            scraper: None,
        };
        if let Err(e) = tracer.wait_attached() {
            tracer.kill();
            return Err(e);
        }
        tracer.scraper = scrape_port.map(Scraper::start);
        Ok(tracer)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    fn wait_attached(&mut self) -> Result<()> {
        let start = Instant::now();
        loop {
            // libbpf-tools print nothing once attached; their BPF link shows it.
            let libbpf_attached = matches!(self.config, Config::Tcpstates | Config::Tcplife)
                && measure::holds_bpf_link(self.pid());
            if self.attached.load(Ordering::Acquire) || libbpf_attached {
                return Ok(());
            }
            super::check_interrupted()?;
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "{} exited ({status}) before attaching:\n{}",
                    self.config.label(),
                    self.stderr_tail()
                );
            }
            if start.elapsed() > ATTACH_TIMEOUT {
                bail!(
                    "{} did not attach within {ATTACH_TIMEOUT:?}:\n{}",
                    self.config.label(),
                    self.stderr_tail()
                );
            }
            thread::sleep(Duration::from_millis(20));
        }
    }

    fn stderr_tail(&self) -> String {
        match self.stderr.lock() {
            Ok(s) => s.tail.join("\n"),
            Err(_) => String::new(),
        }
    }

    fn kill(&mut self) {
        if let Some(mut s) = self.scraper.take() {
            s.finish();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
    }

    /// Interrupts the tracer, waits for it to exit and reads its counts.
    pub fn stop(mut self) -> Result<TracerCounts> {
        if let Some(mut s) = self.scraper.take() {
            if s.finish() == 0 {
                eprintln!("bench: the exporter answered no scrape");
            }
        }
        // SAFETY: plain system call; the child has not been waited for, so its pid is still ours.
        unsafe { libc::kill(self.child.id() as libc::pid_t, libc::SIGINT) };
        let start = Instant::now();
        let status = loop {
            if let Some(status) = self.child.try_wait()? {
                break status;
            }
            if start.elapsed() > EXIT_TIMEOUT {
                self.kill();
                bail!(
                    "{} did not exit within {EXIT_TIMEOUT:?} of SIGINT",
                    self.config.label()
                );
            }
            thread::sleep(Duration::from_millis(20));
        };
        if let Some(reader) = self.stderr_reader.take() {
            let _ = reader.join();
        }
        if let Some(companion) = self.companion.take() {
            companion.stop()?;
        }
        // bpftrace exits with a failure status after SIGINT on some versions; only the tcpstate
        // tracer is held to a clean exit.
        if self.config.is_tcpstate() && !status.success() {
            bail!(
                "{} exited with {status}:\n{}",
                self.config.label(),
                self.stderr_tail()
            );
        }
        let output_bytes = fs::metadata(&self.output).map(|m| m.len()).unwrap_or(0);
        let mut counts = match self.config {
            Config::Tcpstates | Config::Tcplife => TracerCounts {
                delivered: count_record_lines(&self.output)?,
                buffer_full: self.stderr.lock().map_or(0, |s| s.lost),
                ..TracerCounts::default()
            },
            Config::Empty | Config::Bpftrace => {
                let (delivered, lost) = scan_bpftrace_output(&self.output)?;
                TracerCounts {
                    delivered,
                    buffer_full: lost,
                    ..TracerCounts::default()
                }
            }
            _ => read_counters(&self.counters)?,
        };
        counts.output_bytes = output_bytes;
        let _ = fs::remove_file(&self.counters);
        Ok(counts)
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            self.kill();
        }
    }
}

fn read_stderr(pipe: impl Read, attached: &AtomicBool, state: &Mutex<StderrState>) {
    for line in BufReader::new(pipe).lines() {
        let Ok(line) = line else { break };
        if line.starts_with(TCPSTATE_ATTACHED) || line.starts_with(BPFTRACE_ATTACHED) {
            attached.store(true, Ordering::Release);
        }
        let Ok(mut s) = state.lock() else { break };
        if let Some(n) = parse_libbpf_lost(&line) {
            s.lost += n;
        }
        if s.tail.len() == STDERR_TAIL_LINES {
            s.tail.remove(0);
        }
        s.tail.push(line);
    }
}

/// bpftrace's "Lost 123 events" warning.
fn parse_lost(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix("Lost ")?;
    let (n, tail) = rest.split_once(' ')?;
    if !tail.starts_with("events") {
        return None;
    }
    n.parse().ok()
}

/// libbpf-tools' perf buffer warning, "lost 123 events on CPU #1".
fn parse_libbpf_lost(line: &str) -> Option<u64> {
    let rest = line.trim().strip_prefix("lost ")?;
    let (n, tail) = rest.split_once(' ')?;
    if !tail.starts_with("events") {
        return None;
    }
    n.parse().ok()
}

/// Counts the record lines of a libbpf-tools output: tcpstates' start with the socket address
/// in hex, tcplife's with a pid; their header lines start with a column name.
fn count_record_lines(path: &Path) -> Result<u64> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(128);
    let mut records = 0;
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok(records);
        }
        if line.first().is_some_and(u8::is_ascii_hexdigit) {
            records += 1;
        }
    }
}

/// Counts the event lines of bpftrace's output (they start with the timestamp) and sums its
/// "Lost N events" lines, which it writes to the same output.
fn scan_bpftrace_output(path: &Path) -> Result<(u64, u64)> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let mut reader = BufReader::with_capacity(1 << 20, file);
    let mut line = Vec::with_capacity(128);
    let (mut events, mut lost) = (0, 0);
    loop {
        line.clear();
        if reader.read_until(b'\n', &mut line)? == 0 {
            return Ok((events, lost));
        }
        if line.first().is_some_and(u8::is_ascii_digit) {
            events += 1;
        } else if let Some(n) = parse_lost(&String::from_utf8_lossy(&line)) {
            lost += n;
        }
    }
}

fn read_counters(path: &Path) -> Result<TracerCounts> {
    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    parse_counters(&text).with_context(|| format!("parsing {}", path.display()))
}

/// tcpstate's `--counters-json`: every kernel counter by name (tcpstate's own `KernelCounters`
/// type, so no counter is forgotten here) plus `delivered`.
fn parse_counters(text: &str) -> Result<TracerCounts> {
    let text = text.trim();
    let kernel: KernelCounters = serde_json::from_str(text)?;
    let value: serde_json::Value = serde_json::from_str(text)?;
    let delivered = value
        .get("delivered")
        .and_then(serde_json::Value::as_u64)
        .context("no \"delivered\" count")?;
    // An unknown counter is an error here: the benchmark's accounting needs every one.
    let field = |c: Counter| -> Result<u64> {
        kernel
            .get(c)
            .with_context(|| format!("counter {:?} unknown or missing", c.name()))
    };
    Ok(TracerCounts {
        delivered,
        buffer_full: field(Counter::RingbufFull)?,
        recursion_misses: Some(field(Counter::RecursionMisses)?),
        filtered: field(Counter::Filtered)?,
        seen: Some(field(Counter::Seen)?),
        deferred: field(Counter::Deferred)?,
        hold_failed: field(Counter::HoldFailed)?,
        output_bytes: 0,
        // A tcpstate from before the rescue program (`--tracer PATH`) does not report it.
        rescued: kernel.get(Counter::Rescued).unwrap_or(0),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_json() {
        let text = r#"{"seen":30,"filtered":10,"submitted":20,"ringbuf_full":1,"hold_failed":3,"recursion_misses":2,"deferred":0,"released":0,"held_dropped":0,"owner_update_failed":0,"lost":6,"held":0,"delivered":19}"#;
        let c = parse_counters(text).expect("valid");
        assert_eq!(
            c,
            TracerCounts {
                delivered: 19,
                buffer_full: 1,
                recursion_misses: Some(2),
                filtered: 10,
                seen: Some(30),
                deferred: 0,
                hold_failed: 3,
                output_bytes: 0,
                rescued: 0,
            }
        );
        assert!(parse_counters(r#"{"seen":1}"#).is_err());
        // Unknown is not 0.
        let unknown = text.replace(r#""hold_failed":3"#, r#""hold_failed":null"#);
        assert!(parse_counters(&unknown).is_err());
    }

    #[test]
    fn libbpf_tools_lines() {
        assert_eq!(parse_libbpf_lost("lost 17 events on CPU #1"), Some(17));
        assert_eq!(parse_libbpf_lost("lost track"), None);
        let dir = std::env::temp_dir().join(format!("xtask-bench-libbpf-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("ts.out");
        let text = "SKADDR           C-PID C-COMM     LADDR           LPORT\n\
                    ffff8881 1 x 127.0.0.1 80\nffff8882 1 x 127.0.0.1 80\n";
        fs::write(&path, text).expect("write");
        assert_eq!(count_record_lines(&path).expect("count"), 2);
        fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn bpftrace_lost_lines() {
        assert_eq!(parse_lost("Lost 1234 events"), Some(1234));
        assert_eq!(parse_lost("Lost track"), None);
        assert_eq!(parse_lost("Attaching 2 probes..."), None);
    }

    #[test]
    fn event_lines_skip_headers() {
        let dir = std::env::temp_dir().join(format!("xtask-bench-test-{}", std::process::id()));
        fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("bt.out");
        let text = "Attaching 2 probes...\n1 ff 3 x 7 2 0 80\nLost 7 events\n2 ff 3 x 2 1 5 80\n\
                    Lost 3 events\n";
        fs::write(&path, text).expect("write");
        assert_eq!(scan_bpftrace_output(&path).expect("scan"), (2, 10));
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
