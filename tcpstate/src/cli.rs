//! Command-line interface. Flags follow bcc's tcpstates / tcplife / tcpconnlat where they overlap.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::filter::{self, Cidr, Family, FilterSpec};

#[derive(Debug, Parser)]
#[command(
    name = "tcpstate",
    version,
    about = "Shows what TCP really does on this host: every connection's handshake, life and \
             teardown, with the latency of each phase (eBPF, sock:inet_sock_set_state)"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace TCP state changes live (needs root).
    Trace(Box<TraceArgs>),
    /// Serve Prometheus metrics of the traced connections on GET /metrics (needs root).
    Exporter(Box<ExporterArgs>),
    /// Rebuild the output of a recording made with `trace --record` (no root needed).
    Replay(ReplayArgs),
    /// A live terminal view of the host's TCP, refreshed every second (needs root; with
    /// --replay FILE, a recording shown the same way without root).
    Top(Box<TopArgs>),
    /// Print a shell completion script: `tcpstate completions bash > /etc/bash_completion.d/tcpstate`.
    Completions(CompletionsArgs),
}

#[derive(Debug, Clone, Args)]
pub struct CompletionsArgs {
    /// The shell to complete in.
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

impl CompletionsArgs {
    /// Writes the completion script for the whole command line.
    pub fn write(&self, out: &mut dyn std::io::Write) {
        use clap::CommandFactory;
        let shell = match self.shell {
            Shell::Bash => clap_complete::Shell::Bash,
            Shell::Zsh => clap_complete::Shell::Zsh,
            Shell::Fish => clap_complete::Shell::Fish,
        };
        clap_complete::generate(shell, &mut Cli::command(), "tcpstate", out);
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    /// Aligned columns for people.
    Table,
    /// JSON Lines, schema in docs/json-schema.md.
    Json,
}

/// How results are printed; shared by `trace` and `replay`.
#[derive(Debug, Clone, Args)]
pub struct OutputArgs {
    /// One line per state change (like bcc's tcpstates) instead of one per connection.
    #[arg(long, conflicts_with = "timeline")]
    pub transitions: bool,
    /// Draw each finished connection as a ladder of its transitions.
    #[arg(long)]
    pub timeline: bool,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value_t = OutputFormat::Table)]
    pub format: OutputFormat,
    /// Include a wall-clock time column (HH:MM:SS.mmm, local time).
    #[arg(short = 'T', long = "time", conflicts_with = "relative_time")]
    pub wall_time: bool,
    /// Include a column of seconds since tracing started.
    #[arg(short = 't', long = "timestamp")]
    pub relative_time: bool,
    /// Wide address columns (for IPv6).
    #[arg(short = 'w', long)]
    pub wide: bool,
    /// Table columns for containers: the socket's network namespace, the owner's pod UID,
    /// container id (its first 12 digits) and cgroup v2 path.
    #[arg(long)]
    pub containers: bool,
    /// Print a summary every SECS seconds as well as at the end.
    #[arg(short = 'i', long, value_name = "SECS", value_parser = positive_f64)]
    pub interval: Option<f64>,
    /// Only print connections whose HS_MS (the handshake; for an accepted socket its SYN-ACK round
    /// trip when known) is at least MS milliseconds.
    #[arg(long, value_name = "MS", value_parser = non_negative_f64)]
    pub min_handshake_ms: Option<f64>,
    /// Only print connections that stayed in CLOSE_WAIT at least MS milliseconds.
    #[arg(long, value_name = "MS", value_parser = non_negative_f64)]
    pub min_close_wait_ms: Option<f64>,
    /// Report a socket stuck in a state, once, when it has stayed there longer than MS
    /// milliseconds, while it is still open: `--stuck MS` for every watched state,
    /// `--stuck STATE=MS` (or `STATE=off`) for one, repeatable, applied in order; `--stuck off`
    /// for none. Watched: SYN_SENT (default 5000), CLOSE_WAIT (30000), FIN_WAIT1 (10000),
    /// FIN_WAIT2 (60000), CLOSING (10000), LAST_ACK (10000).
    #[arg(long, value_name = "[STATE=]MS|off", value_parser = crate::timeline::stuck::parse_spec)]
    pub stuck: Vec<crate::timeline::stuck::Spec>,
    /// Do not print the summary at the end.
    #[arg(long)]
    pub no_summary: bool,
    /// Most sockets followed at once; the oldest is dropped (and counted) beyond that.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_tracked: u32,
}

/// Which connections are traced, in the kernel; shared by `trace` and `exporter`.
#[derive(Debug, Clone, Args)]
pub struct FilterArgs {
    /// Only sockets owned by these processes (comma-separated pids; threads included).
    #[arg(short = 'p', long = "pid", value_name = "PIDS", value_parser = filter::parse_pids)]
    pub pids: Vec<Vec<u32>>,
    /// Only sockets owned by a process with this command name.
    #[arg(long, value_name = "NAME")]
    pub comm: Option<String>,
    /// Only these local ports (comma-separated, ranges like 8000-8010).
    #[arg(short = 'L', long = "lport", value_name = "PORTS", value_parser = filter::parse_ports)]
    pub lports: Vec<Vec<u16>>,
    /// Only these remote ports.
    #[arg(short = 'D', long = "rport", value_name = "PORTS", value_parser = filter::parse_ports)]
    pub rports: Vec<Vec<u16>>,
    /// Only connections with this port at either end.
    #[arg(long = "port", value_name = "PORTS", value_parser = filter::parse_ports)]
    pub ports: Vec<Vec<u16>>,
    /// Only these remote addresses (IP or CIDR, repeatable; an IPv4 block also matches an
    /// IPv6 socket's v4-mapped address).
    #[arg(long = "addr", value_name = "CIDR")]
    pub addrs: Vec<Cidr>,
    /// IPv4 only (IPv6 sockets with a v4-mapped remote address included; listeners on `::` too).
    #[arg(short = '4', long = "ipv4", conflicts_with = "ipv6")]
    pub ipv4: bool,
    /// IPv6 only (not IPv6 sockets with a v4-mapped remote address; listeners on `::` too).
    #[arg(short = '6', long = "ipv6")]
    pub ipv6: bool,
    /// Only sockets whose owner is in this cgroup v2 group or below it (a path relative to
    /// the cgroup v2 root, or under its mount point), as of the owner's system call.
    #[arg(long = "cgroup", value_name = "PATH", value_parser = parse_cgroup)]
    pub cgroup: Option<filter::CgroupTarget>,
    /// Only sockets in this network namespace: an inode, a `/proc/PID/ns/net` or
    /// `/var/run/netns/NAME` path, or a NAME of `ip netns`.
    #[arg(long = "netns", value_name = "NS", value_parser = crate::cgroup::netns_inode)]
    pub netns: Option<u32>,
}

fn parse_cgroup(s: &str) -> Result<filter::CgroupTarget, String> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").map_err(|e| e.to_string())?;
    let root = crate::cgroup::cgroup2_mount(&mountinfo)
        .ok_or("no cgroup v2 hierarchy is mounted on this host")?;
    let (id, level, path) = crate::cgroup::locate(&root, s)
        .ok_or_else(|| format!("no cgroup v2 group {s:?} under {}", root.display()))?;
    Ok(filter::CgroupTarget { id, level, path })
}

#[derive(Debug, Clone, Args)]
pub struct TraceArgs {
    #[command(flatten)]
    pub output: OutputArgs,

    #[command(flatten)]
    pub filter: FilterArgs,

    /// Stop after SECS seconds.
    #[arg(short = 'd', long, value_name = "SECS", value_parser = positive_f64)]
    pub duration: Option<f64>,
    /// Stop after N output records (transitions with --transitions, else connections).
    #[arg(short = 'c', long, value_name = "N", value_parser = clap::value_parser!(u64).range(1..))]
    pub count: Option<u64>,

    /// Also write the raw transitions to FILE (replay it with `tcpstate replay FILE`).
    #[arg(long, value_name = "FILE")]
    pub record: Option<PathBuf>,
    /// Overwrite the --record file if it exists.
    #[arg(long, requires = "record")]
    pub force: bool,

    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Write the kernel's final counters as JSON to PATH at exit (for benchmarks and scripts):
    /// every counter by name, null when it could not be read.
    #[arg(long, value_name = "PATH")]
    pub counters_json: Option<PathBuf>,
    /// Show the kernel program's diagnostics (aya-log) on stderr.
    #[arg(long)]
    pub debug: bool,
}

/// The default `--listen`: loopback, and a port outside the fully allocated 9100-9999
/// exporter range.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:14620";

#[derive(Debug, Clone, Args)]
pub struct ExporterArgs {
    #[command(flatten)]
    pub filter: FilterArgs,

    /// Where to serve GET /metrics. Loopback by default; any other address is served only
    /// because it is written here (e.g. 0.0.0.0:14620 in a pod) and is warned about.
    #[arg(long, value_name = "ADDR:PORT", default_value = DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// Ports that get a `port` label value of their own (comma-separated, ranges); without
    /// it, every port seen listening on this host. Others are port="other".
    #[arg(long, value_name = "PORTS", value_parser = filter::parse_ports)]
    pub metrics_ports: Vec<Vec<u16>>,
    /// Most distinct `port` label values; beyond it values go to port="other" and
    /// tcpstate_metrics_series_dropped_total counts the ports refused.
    #[arg(long, value_name = "N", default_value_t = crate::metrics::DEFAULT_MAX_PORT_SERIES,
          value_parser = clap::value_parser!(u32).range(0..=4096))]
    pub metrics_max_series: u32,
    /// Extra labels on tcpstate_connections_total: `container` adds `pod_uid` and
    /// `container_id` (from the owner's cgroup path; "" when it names none), at most
    /// --metrics-max-series pairs, beyond that "other" (counted in
    /// tcpstate_metrics_series_dropped_total).
    #[arg(long, value_name = "LABELS", value_delimiter = ',')]
    pub metrics_labels: Vec<MetricsLabels>,
    /// Most sockets followed at once; the oldest is dropped (and counted) beyond that.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_tracked: u32,
    #[command(flatten)]
    pub probe: ProbeArgs,
    /// Stop after SECS seconds (for tests and benchmarks; a service runs until SIGTERM).
    #[arg(short = 'd', long, value_name = "SECS", value_parser = positive_f64)]
    pub duration: Option<f64>,
    /// Write the kernel's final counters as JSON to PATH at exit (as `trace --counters-json`).
    #[arg(long, value_name = "PATH")]
    pub counters_json: Option<PathBuf>,
    /// Show the kernel program's diagnostics (aya-log) on stderr.
    #[arg(long)]
    pub debug: bool,
}

/// `--metrics-labels` values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum MetricsLabels {
    /// `pod_uid` and `container_id`.
    Container,
}

impl ExporterArgs {
    /// The `--metrics-ports` list, or None for "listening ports".
    pub fn metrics_ports(&self) -> Option<Vec<u16>> {
        let v = self.metrics_ports.concat();
        (!v.is_empty()).then_some(v)
    }
}

#[derive(Debug, Clone, Args)]
pub struct TopArgs {
    #[command(flatten)]
    pub filter: FilterArgs,
    /// Show a recording made with `trace --record` instead of tracing (no root needed).
    #[arg(long, value_name = "FILE")]
    pub replay: Option<PathBuf>,
    /// With --replay: this many times faster than the recording's own pace.
    #[arg(long, value_name = "X", default_value_t = 1.0, requires = "replay", value_parser = positive_f64)]
    pub speed: f64,
    /// When a socket counts as stuck, as in `trace --stuck`: `--stuck MS`, `--stuck STATE=MS`
    /// (or `STATE=off`), repeatable; the defaults are trace's.
    #[arg(long, value_name = "[STATE=]MS|off", value_parser = crate::timeline::stuck::parse_spec)]
    pub stuck: Vec<crate::timeline::stuck::Spec>,
    /// Stop after SECS seconds (live).
    #[arg(short = 'd', long, value_name = "SECS", value_parser = positive_f64, conflicts_with = "replay")]
    pub duration: Option<f64>,
    /// Most sockets followed at once; the oldest is dropped (and counted) beyond that.
    #[arg(long, value_name = "N", default_value_t = 65536, value_parser = clap::value_parser!(u32).range(1..=16_777_216))]
    pub max_tracked: u32,
    #[command(flatten)]
    pub probe: ProbeArgs,
}

#[derive(Debug, Clone, Args)]
pub struct ReplayArgs {
    /// A file written by `tcpstate trace --record`.
    pub file: PathBuf,
    #[command(flatten)]
    pub output: OutputArgs,
}

impl TraceArgs {
    pub fn filter_spec(&self) -> FilterSpec {
        self.filter.spec()
    }
}

impl FilterArgs {
    pub fn spec(&self) -> FilterSpec {
        FilterSpec {
            pids: self.pids.concat(),
            comm: self.comm.clone(),
            lports: self.lports.concat(),
            rports: self.rports.concat(),
            ports: self.ports.concat(),
            addrs: self.addrs.clone(),
            family: if self.ipv4 {
                Family::V4
            } else if self.ipv6 {
                Family::V6
            } else {
                Family::Any
            },
            cgroup: self.cgroup.clone(),
            netns: self.netns,
        }
    }
}

fn positive_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a positive number")),
    }
}

fn non_negative_f64(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v >= 0.0 && v.is_finite() => Ok(v),
        _ => Err(format!("{s:?} is not a number >= 0")),
    }
}

/// How the kernel side is loaded: the same flags for `trace`, `exporter` and `top`.
#[derive(Debug, Clone, Args)]
pub struct ProbeArgs {
    /// Size of the kernel's ring buffer (power of two; suffixes K, M).
    #[arg(long, value_name = "BYTES", default_value = "8M", value_parser = parse_buffer_size)]
    pub buffer_size: u32,
    /// How the program attaches to sock:inet_sock_set_state: `btf` (the BTF-enabled
    /// tracepoint, with a second program recovering the runs the kernel skips; Linux 6.1+),
    /// `classic` (the tracepoint with its trace record), `auto`: btf where the kernel has it.
    #[arg(long, value_name = "HOW", value_enum, default_value_t = Attachment::Auto)]
    pub attach: Attachment,
    /// Where sockets are attributed to their owners: `auto` in user space unless an owner
    /// filter (--pid, --comm, a cgroup or network namespace) needs it in the kernel; `kernel`
    /// always in the kernel (costs the program its owner-table work on every event).
    #[arg(long, value_name = "WHERE", value_enum, default_value_t = Attribution::Auto)]
    pub attribution: Attribution,
}

/// How the state-change program is attached (`--attach`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attachment {
    /// The BTF tracepoint where the kernel has it (and its per-program recursion guard), the
    /// classic one otherwise (said once on stderr).
    Auto,
    /// The BTF tracepoint, or an error.
    Btf,
    /// The classic tracepoint.
    Classic,
}

/// Where sockets are attributed to their owning processes (`--attribution`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Attribution {
    /// In user space, unless an owner filter (`--pid`, `--comm`, a cgroup or namespace) needs
    /// the owner in the kernel: the kernel program then does no owner-table work per event.
    Auto,
    /// Always in the kernel (as owner filters need it), to compare the two.
    Kernel,
}

/// `8M`, `512K`, `4096`: a power of two from 4 KiB to 1 GiB (what the kernel accepts).
pub fn parse_buffer_size(s: &str) -> Result<u32, String> {
    let t = s.trim();
    let (num, mult) = match t.char_indices().last() {
        Some((i, 'k' | 'K')) => (&t[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&t[..i], 1u64 << 20),
        Some((i, 'g' | 'G')) => (&t[..i], 1u64 << 30),
        _ => (t, 1),
    };
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size like 8M"))?;
    let bytes = n.saturating_mul(mult);
    if !bytes.is_power_of_two() || !(4096..=1 << 30).contains(&bytes) {
        return Err(format!(
            "{s:?}: the ring buffer size must be a power of two from 4K to 1G"
        ));
    }
    Ok(bytes as u32)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn buffer_sizes() {
        assert_eq!(parse_buffer_size("8M"), Ok(8 << 20));
        assert_eq!(parse_buffer_size("4096"), Ok(4096));
        assert!(parse_buffer_size("3M").is_err());
        assert!(parse_buffer_size("1K").is_err());
        assert!(parse_buffer_size("2G").is_err());
        assert!(parse_buffer_size("x").is_err());
    }

    #[test]
    fn filters_from_flags() {
        let cli = Cli::try_parse_from([
            "tcpstate",
            "trace",
            "-p",
            "1,2",
            "-L",
            "80",
            "--port",
            "443",
            "--addr",
            "10.0.0.0/8",
            "-6",
        ])
        .unwrap();
        let Command::Trace(t) = cli.command else {
            panic!("not trace")
        };
        let f = t.filter_spec();
        assert_eq!(f.pids, vec![1, 2]);
        assert_eq!(f.lports, vec![80]);
        assert_eq!(f.ports, vec![443]);
        assert_eq!(f.family, Family::V6);
        assert_eq!(f.addrs.len(), 1);
    }

    #[test]
    fn bad_values_are_rejected() {
        for args in [
            &["tcpstate", "trace", "--duration", "0"][..],
            &["tcpstate", "trace", "--count", "0"],
            &["tcpstate", "trace", "-L", "70000"],
            &["tcpstate", "trace", "--addr", "300.1.1.1"],
            &["tcpstate", "trace", "-4", "-6"],
            &["tcpstate", "trace", "--force"],
        ] {
            assert!(Cli::try_parse_from(args).is_err(), "{args:?}");
        }
    }
}
