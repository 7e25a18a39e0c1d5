//! `cargo xtask bench`: what tracing costs, measured with a loopback connection storm.
//!
//! See docs/benchmark.md for what each figure means. This is a benchmark that prints figures;
//! nothing here asserts a timing.

mod engine;
mod measure;
mod report;
mod rounds;
mod soak;
mod storm;
mod tracer;

use std::{
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicBool, Ordering},
    thread,
    time::{Duration, Instant},
};

use anyhow::{bail, Context, Result};

use storm::{Shape, Storm, StormConfig};
use tracer::{Config, Tools};

#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Traced rounds per configuration; untraced rounds run between them
    #[arg(long, default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=100))]
    pub rounds: u32,
    /// Seconds of storm per round
    #[arg(long, default_value_t = 3.0)]
    pub seconds: f64,
    /// Storm shapes to run, comma separated [default: loopback,epoll]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub storm: Vec<Shape>,
    /// Storm threads (the epoll storm's client threads) [default: one per CPU]
    #[arg(long)]
    pub workers: Option<usize>,
    /// Configurations to measure, comma separated [default: all that can run here]
    #[arg(long, value_enum, value_delimiter = ',')]
    pub config: Vec<Config>,
    /// The tcpstate binary to measure [default: build target/release/tcpstate]
    #[arg(long, value_name = "PATH")]
    pub tracer: Option<PathBuf>,
    /// Leave the kernel's BPF run-time statistics off (they add two clock reads per program run)
    #[arg(long)]
    pub no_bpf_stats: bool,
    /// Benchmark the user-space engine alone on a synthetic recording, no kernel involved
    #[arg(long, conflicts_with = "soak")]
    pub engine: bool,
    /// Connections in the synthetic recording of --engine (10 transitions each)
    #[arg(long, default_value_t = 100_000)]
    pub engine_connections: usize,
    /// Storm for MINUTES under the default tracer, sampling its memory every 10 s
    #[arg(long, value_name = "MINUTES")]
    pub soak: Option<f64>,
}

/// Listening ports per storm worker, and client source addresses: together they spread the
/// storm's connections over enough 4-tuples that ephemeral ports never run short while
/// connections sit in TIME_WAIT for 60 s.
const PORTS_PER_WORKER: usize = 4;
const SOURCES: u8 = 32;

/// Set for the release build of xtask that `run` starts, so it does not start another.
const RELEASE_CHILD_ENV: &str = "TCPSTATE_BENCH_RELEASE";

/// Longest wait for apt-get to install bpftrace.
const INSTALL_TIMEOUT: Duration = Duration::from_secs(300);

/// Set by SIGINT or SIGTERM: the benchmark stops at the next check, and its guards stop and
/// reap every process it started, remove its files and unmount what it mounted.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_interrupt(_signal: libc::c_int) {
    // An atomic store is async-signal-safe.
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Turns Ctrl-C and SIGTERM into [`INTERRUPTED`] rather than an exit that would leave tracers
/// to the parent-death signal and the scratch directory behind.
fn catch_interrupts() {
    for signal in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(
                signal,
                on_interrupt as extern "C" fn(libc::c_int) as libc::sighandler_t,
            )
        };
    }
}

/// Whether the benchmark was asked to stop.
pub(crate) fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// An error once the benchmark was asked to stop.
pub(crate) fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}

pub fn run(args: &BenchArgs) -> Result<()> {
    // `cargo xtask` is a debug build; the storm generator and above all the engine benchmark
    // must run optimised, and the engine benchmark needs the tcpstate library linked in.
    if (cfg!(debug_assertions) || !cfg!(feature = "engine"))
        && std::env::var_os(RELEASE_CHILD_ENV).is_none()
    {
        return rerun_in_release();
    }
    if args.engine {
        return engine::run(args.engine_connections);
    }
    catch_interrupts();
    if !(args.seconds.is_finite() && args.seconds > 0.0 && args.seconds <= 600.0) {
        bail!("--seconds must be in (0, 600]");
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("the benchmark loads BPF programs: run it as root");
    }
    let workers = args
        .workers
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()))
        .clamp(1, 64);
    let tools = find_tools(args)?;
    warn_other_tracers();
    let mut shapes: Vec<Shape> = Vec::new();
    for &shape in if args.storm.is_empty() {
        &Shape::ALL[..]
    } else {
        &args.storm[..]
    } {
        if !shapes.contains(&shape) {
            shapes.push(shape);
        }
    }
    let new_storm = |shape: Shape| {
        Storm::new(StormConfig {
            shape,
            workers,
            ports_per_worker: PORTS_PER_WORKER,
            sources: SOURCES,
        })
        .context("creating the storm's listeners")
    };
    let scratch = Scratch::create()?;

    if let Some(minutes) = args.soak {
        if !(minutes.is_finite() && minutes > 0.0) {
            bail!("--soak needs a positive number of minutes");
        }
        if let Some(why) = tools.unavailable(Config::Connections) {
            bail!("--soak needs the tcpstate tracer: {why}");
        }
        // The soak runs one storm: the first one asked for (loopback by default).
        let storm = new_storm(shapes[0])?;
        return soak::run(
            &storm,
            &tools,
            scratch.path(),
            Duration::from_secs_f64(minutes * 60.0),
        );
    }

    let wanted: Vec<Config> = if args.config.is_empty() {
        Config::ALL.to_vec()
    } else {
        args.config.clone()
    };
    let mut configs = Vec::new();
    for config in wanted {
        match tools.unavailable(config) {
            Some(why) => eprintln!("bench: skipping {}: {why}", config.label()),
            None if !configs.contains(&config) => configs.push(config),
            None => {}
        }
    }
    let _tracefs = if configs.iter().any(|c| c.needs_bpftrace()) {
        Some(tracer::TracefsMount::ensure()?)
    } else {
        None
    };
    let _stats = if args.no_bpf_stats {
        None
    } else {
        match measure::BpfStats::enable() {
            Ok(s) => Some(s),
            Err(e) => {
                eprintln!("bench: kernel program time not measured: enabling BPF stats: {e}");
                None
            }
        }
    };
    let seconds = Duration::from_secs_f64(args.seconds);
    let plan = rounds::Plan {
        rounds: args.rounds as usize,
        seconds,
        configs: &configs,
        tools: &tools,
        scratch: scratch.path(),
    };
    eprintln!(
        "bench: {} storm shapes ({}), {} rounds of {:.1} s each, {} configurations, about {:.0} s",
        shapes.len(),
        shapes
            .iter()
            .map(|s| s.key())
            .collect::<Vec<_>>()
            .join(", "),
        plan.rounds,
        args.seconds,
        configs.len(),
        shapes.len() as f64 * (plan.rounds * (configs.len() + 1) + 1) as f64 * (args.seconds + 0.5)
    );
    warn_busy();
    // Each shape runs its own untraced and traced rounds: its ratios are against its own
    // untraced rounds, measured in the same run.
    let mut results = Vec::with_capacity(shapes.len());
    for &shape in &shapes {
        let storm = new_storm(shape)?;
        eprintln!("bench: {}", storm.describe());
        let m = rounds::run(&storm, &plan)?;
        let untraced = report::untraced_rate(&m);
        let summaries: Vec<_> = configs
            .iter()
            .filter_map(|&c| report::summarize(&m, c))
            .collect();
        results.push((shape, storm.describe(), untraced, summaries));
    }
    warn_other_tracers();

    for (_, describe, untraced, summaries) in &results {
        report::print_table(describe, *untraced, args.seconds, summaries);
    }
    let storms: Vec<serde_json::Value> = results
        .iter()
        .map(|(shape, _, untraced, summaries)| {
            report::to_json(shape.key(), *untraced, workers, args.seconds, summaries)
        })
        .collect();
    println!(
        "{}",
        serde_json::json!({ "bench": "storm", "storms": storms })
    );
    Ok(())
}

/// Warns when other work keeps the CPUs busy: it takes CPU from the storm unevenly across
/// rounds and enters the whole-machine CPU figure.
fn warn_busy() {
    if let Ok(share) = measure::machine_busy_share(Duration::from_secs(1)) {
        if share > 0.10 {
            eprintln!(
                "bench: warning: the CPUs were {:.0}% busy in the second before starting: other \
                 work on this machine makes the figures noisy",
                share * 100.0
            );
        }
    }
}

fn warn_other_tracers() {
    let others = measure::other_tracepoint_holders();
    if !others.is_empty() {
        let list: Vec<String> = others
            .iter()
            .map(|(pid, comm)| format!("{pid} {comm}"))
            .collect();
        eprintln!(
            "bench: warning: other processes hold tracepoint BPF programs ({}); if they trace \
             inet_sock_set_state they slow every round, untraced ones included",
            list.join(", ")
        );
    }
}

fn cargo() -> Command {
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    // Lets the workspace's own toolchain choice apply rather than the caller's override.
    cmd.env_remove("RUSTUP_TOOLCHAIN")
        .current_dir(workspace_root());
    cmd
}

/// Runs this same xtask command again from a release build with the `engine` feature.
fn rerun_in_release() -> Result<()> {
    eprintln!("bench: running from a release build of xtask (features: engine)");
    // This process only waits: after a Ctrl-C it must outlive the release build, which stops
    // promptly and cleans up.
    catch_interrupts();
    let status = cargo()
        .args([
            "run",
            "--release",
            "-p",
            "xtask",
            "--bin",
            "xtask",
            "--features",
            "engine",
        ])
        .arg("--")
        .args(std::env::args_os().skip(1))
        .env(RELEASE_CHILD_ENV, "1")
        .status()
        .context("running cargo run --release -p xtask")?;
    check_interrupted()?;
    if !status.success() {
        bail!("the release build of the benchmark failed ({status})");
    }
    Ok(())
}

fn find_tools(args: &BenchArgs) -> Result<Tools> {
    let wants_bpftrace = args.soak.is_none()
        && (args.config.is_empty() || args.config.iter().any(|c| c.needs_bpftrace()));
    let mut bpftrace = tracer::which("bpftrace");
    if bpftrace.is_none() && wants_bpftrace {
        bpftrace = install_bpftrace();
    }
    let needs_tcpstate = args.soak.is_some()
        || args.config.is_empty()
        || args.config.iter().any(|c| c.is_tcpstate());
    let tcpstate = if !needs_tcpstate {
        None
    } else {
        let bin = match &args.tracer {
            Some(path) => path.clone(),
            None => build_tracer()?,
        };
        tracer::supports_counters_json(&bin)?.then_some(bin)
    };
    Ok(Tools {
        tcpstate,
        bpftrace,
        tcpstates: tracer::find_libbpf_tool("tcpstates"),
        tcplife: tracer::find_libbpf_tool("tcplife"),
    })
}

/// Installs Debian's bpftrace, which the floor, the second-tracer and the bpftrace
/// configurations need; says why not, and returns `None`, when it cannot.
fn install_bpftrace() -> Option<PathBuf> {
    let give_up = |why: &str| {
        eprintln!(
            "bench: bpftrace is not installed and could not be installed ({why}): the empty-program \
             floor, the second-tracer and the bpftrace configurations are skipped; install it \
             with `apt-get install bpftrace`"
        );
        None
    };
    if tracer::which("apt-get").is_none() {
        return give_up("no apt-get on this system");
    }
    eprintln!("bench: bpftrace is not installed: apt-get install -y bpftrace");
    let install = || {
        let mut cmd = Command::new("apt-get");
        cmd.args(["install", "-y", "-q", "bpftrace"])
            .env("DEBIAN_FRONTEND", "noninteractive");
        run_bounded(cmd, INSTALL_TIMEOUT)
    };
    // A fresh machine may have no package lists yet: update them once and retry.
    let mut result = install();
    if result.is_err() {
        let mut update = Command::new("apt-get");
        update.args(["update", "-q"]);
        result = run_bounded(update, INSTALL_TIMEOUT).and_then(|()| install());
    }
    match result {
        Ok(()) => match tracer::which("bpftrace") {
            Some(path) => Some(path),
            None => give_up("apt-get succeeded but bpftrace is not on PATH"),
        },
        Err(e) => give_up(&format!("{e:#}")),
    }
}

/// Runs `cmd` (its output to this process's stderr) and kills it if it takes longer than
/// `timeout`.
fn run_bounded(mut cmd: Command, timeout: Duration) -> Result<()> {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::from(std::io::stderr().as_fd().try_clone_to_owned()?))
        .spawn()
        .with_context(|| format!("starting {cmd:?}"))?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if !status.success() {
                bail!("{cmd:?} failed ({status})");
            }
            return Ok(());
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            bail!("{cmd:?} did not finish within {timeout:?}");
        }
        thread::sleep(Duration::from_millis(100));
    }
}

fn workspace_root() -> PathBuf {
    let xtask = Path::new(env!("CARGO_MANIFEST_DIR"));
    xtask.parent().unwrap_or(xtask).to_path_buf()
}

/// `cargo build --release -p tcpstate`, returning the path of the binary cargo reports.
fn build_tracer() -> Result<PathBuf> {
    eprintln!("bench: cargo build --release -p tcpstate");
    let out = cargo()
        .args(["build", "--release", "-p", "tcpstate", "--bin", "tcpstate"])
        .arg("--message-format=json-render-diagnostics")
        .stdin(Stdio::null())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo build")?;
    if !out.status.success() {
        bail!("cargo build --release -p tcpstate failed");
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .filter(|msg| msg["reason"] == "compiler-artifact" && msg["target"]["name"] == "tcpstate")
        .find_map(|msg| msg["executable"].as_str().map(PathBuf::from))
        .context("cargo did not report the tcpstate executable")
}

/// A private directory for tracer output, removed with everything in it when dropped.
struct Scratch(PathBuf);

impl Scratch {
    fn create() -> Result<Scratch> {
        let path = std::env::temp_dir().join(format!("tcpstate-bench-{}", std::process::id()));
        fs::create_dir_all(&path).with_context(|| format!("creating {}", path.display()))?;
        Ok(Scratch(path))
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}
