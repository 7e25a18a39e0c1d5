//! Readings of CPU time, memory and BPF program statistics from /proc and the bpf() call.

use std::{
    fs, io,
    os::fd::{FromRawFd, OwnedFd},
    path::Path,
};

use anyhow::{bail, Context, Result};

/// Clock ticks per second of the CPU times in /proc (USER_HZ).
pub fn ticks_per_second() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as u64
    } else {
        100
    }
}

pub fn ticks_to_ns(ticks: u64) -> f64 {
    ticks as f64 * 1e9 / ticks_per_second() as f64
}

/// Busy CPU time of the whole machine, all CPUs, in ticks: everything but idle and iowait.
pub fn machine_busy_ticks() -> Result<u64> {
    Ok(machine_ticks()?.0)
}

/// The share of all CPUs' time that was busy over the next `span`.
pub fn machine_busy_share(span: std::time::Duration) -> Result<f64> {
    let (busy0, total0) = machine_ticks()?;
    std::thread::sleep(span);
    let (busy1, total1) = machine_ticks()?;
    Ok(busy1.saturating_sub(busy0) as f64 / total1.saturating_sub(total0).max(1) as f64)
}

/// (busy, total) ticks of all CPUs.
fn machine_ticks() -> Result<(u64, u64)> {
    let stat = fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    parse_machine_ticks(&stat).context("parsing /proc/stat")
}

fn parse_machine_ticks(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let fields: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().ok())
        .collect::<Option<_>>()?;
    // user nice system idle iowait irq softirq steal [guest guest_nice]; guest time is already
    // part of user time.
    let [user, nice, system, idle, iowait, irq, softirq, steal, ..] = fields[..] else {
        return None;
    };
    let busy = user + nice + system + irq + softirq + steal;
    Some((busy, busy + idle + iowait))
}

/// User plus system CPU time of one process (all its threads), in ticks.
pub fn process_cpu_ticks(pid: u32) -> Result<u64> {
    let path = format!("/proc/{pid}/stat");
    let stat = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_process_cpu(&stat).with_context(|| format!("parsing {path}"))
}

fn parse_process_cpu(stat: &str) -> Option<u64> {
    // The command name may contain spaces and parentheses; the fields start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    // Field 3 (state) comes first; utime and stime are fields 14 and 15.
    let utime: u64 = fields.nth(11)?.parse().ok()?;
    let stime: u64 = fields.next()?.parse().ok()?;
    Some(utime + stime)
}

/// Resident memory of a process ("self" for this one), in KiB.
pub fn vm_rss_kib(pid: &str) -> Result<u64> {
    let path = format!("/proc/{pid}/status");
    let status = fs::read_to_string(&path).with_context(|| format!("reading {path}"))?;
    parse_vm_rss(&status).with_context(|| format!("no VmRSS in {path}"))
}

fn parse_vm_rss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Statistics the kernel keeps per BPF program (run time only while stats are enabled).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ProgStats {
    pub run_time_ns: u64,
    pub run_cnt: u64,
    pub recursion_misses: u64,
}

impl ProgStats {
    pub fn since(&self, earlier: &ProgStats) -> ProgStats {
        ProgStats {
            run_time_ns: self.run_time_ns.saturating_sub(earlier.run_time_ns),
            run_cnt: self.run_cnt.saturating_sub(earlier.run_cnt),
            recursion_misses: self
                .recursion_misses
                .saturating_sub(earlier.recursion_misses),
        }
    }
}

/// `BPF_PROG_TYPE_TRACEPOINT`, `BPF_PROG_TYPE_RAW_TRACEPOINT` and `BPF_PROG_TYPE_TRACING` (BTF
/// tracepoints among them): the program types a tracer of a tracepoint holds.
const PROG_TYPES_TRACEPOINT: [u64; 3] = [5, 17, 26];

/// Sums the statistics of the tracepoint programs a process holds open, read from the fdinfo
/// of its descriptors: this finds the tracer's own program without knowing its name, and works
/// for bpftrace as well as tcpstate.
pub fn tracepoint_prog_stats(pid: u32) -> Result<ProgStats> {
    let fd_dir = format!("/proc/{pid}/fd");
    let mut total = ProgStats::default();
    let mut found = false;
    for entry in fs::read_dir(&fd_dir).with_context(|| format!("listing {fd_dir}"))? {
        let Ok(entry) = entry else { continue };
        let Ok(target) = fs::read_link(entry.path()) else {
            continue;
        };
        if target != Path::new("anon_inode:bpf-prog") {
            continue;
        }
        let info_path = format!("/proc/{pid}/fdinfo/{}", entry.file_name().to_string_lossy());
        // The descriptor may close between the listing and this read.
        let Ok(info) = fs::read_to_string(&info_path) else {
            continue;
        };
        if let Some(stats) = parse_prog_fdinfo(&info) {
            found = true;
            total.run_time_ns += stats.run_time_ns;
            total.run_cnt += stats.run_cnt;
            total.recursion_misses += stats.recursion_misses;
        }
    }
    if !found {
        bail!("process {pid} holds no tracepoint BPF program");
    }
    Ok(total)
}

/// Whether a process holds a BPF link: libbpf attaches a tracepoint program through one, so
/// it shows that a libbpf tool, which prints nothing then, has attached.
pub fn holds_bpf_link(pid: u32) -> bool {
    let Ok(dir) = fs::read_dir(format!("/proc/{pid}/fd")) else {
        return false;
    };
    dir.filter_map(|e| fs::read_link(e.ok()?.path()).ok())
        .any(|target| target == Path::new("anon_inode:bpf_link"))
}

/// Other processes holding tracepoint BPF programs, as (pid, comm): another tracer on
/// `inet_sock_set_state` would trace the storm too, untraced rounds included.
pub fn other_tracepoint_holders() -> Vec<(u32, String)> {
    let me = std::process::id();
    let Ok(dir) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut holders: Vec<(u32, String)> = dir
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| pid != me)
        .filter(|&pid| tracepoint_prog_stats(pid).is_ok())
        .map(|pid| {
            let comm = fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
            (pid, comm.trim().to_string())
        })
        .collect();
    holders.sort();
    holders
}

fn parse_prog_fdinfo(info: &str) -> Option<ProgStats> {
    let field = |name: &str| -> Option<u64> {
        info.lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .and_then(|v| v.trim().parse().ok())
    };
    if !PROG_TYPES_TRACEPOINT.contains(&field("prog_type")?) {
        return None;
    }
    Some(ProgStats {
        run_time_ns: field("run_time_ns")?,
        run_cnt: field("run_cnt")?,
        // Older kernels do not report it.
        recursion_misses: field("recursion_misses").unwrap_or(0),
    })
}

/// Keeps the kernel's BPF run-time statistics on while it lives.
///
/// Uses `BPF_ENABLE_STATS`, the descriptor form of `sysctl kernel.bpf_stats_enabled=1`: the
/// kernel turns the statistics off again when the last such descriptor closes, even if this
/// process is killed, so the host is never left paying for them.
pub struct BpfStats {
    _fd: OwnedFd,
}

const BPF_ENABLE_STATS: libc::c_long = 32;
const BPF_STATS_RUN_TIME: u32 = 0;

impl BpfStats {
    pub fn enable() -> io::Result<BpfStats> {
        // union bpf_attr { struct { __u32 type; } enable_stats; ... }
        let attr: [u32; 2] = [BPF_STATS_RUN_TIME, 0];
        // SAFETY: `attr` is valid for reads of the size passed; the result is a new descriptor.
        let fd = unsafe {
            libc::syscall(
                libc::SYS_bpf,
                BPF_ENABLE_STATS,
                attr.as_ptr(),
                std::mem::size_of_val(&attr) as libc::c_uint,
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: a fresh descriptor nothing else owns.
        Ok(BpfStats {
            _fd: unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) },
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_busy_excludes_idle() {
        let stat = "cpu  100 5 50 9000 20 3 7 1 0 0\ncpu0 50 2 25 4500 10 1 3 0 0 0\n";
        assert_eq!(parse_machine_ticks(stat), Some((166, 166 + 9020)));
        assert_eq!(parse_machine_ticks("cpu  1 2\n"), None);
    }

    #[test]
    fn process_cpu_survives_odd_names() {
        let stat = "42 (a) b (c) S 1 42 42 0 -1 4194560 100 0 0 0 17 4 0 0 20 0 1 0 5 0 0";
        assert_eq!(parse_process_cpu(stat), Some(21));
        assert!(process_cpu_ticks(std::process::id()).is_ok());
    }

    #[test]
    fn rss_of_self() {
        assert_eq!(parse_vm_rss("Name:\tx\nVmRSS:\t  1234 kB\n"), Some(1234));
        assert!(vm_rss_kib("self").expect("own status") > 0);
    }

    #[test]
    fn prog_fdinfo() {
        let info = "pos:\t0\nprog_type:\t5\nprog_id:\t103\nrun_time_ns:\t900\nrun_cnt:\t3\n\
                    recursion_misses:\t1\n";
        assert_eq!(
            parse_prog_fdinfo(info),
            Some(ProgStats {
                run_time_ns: 900,
                run_cnt: 3,
                recursion_misses: 1
            })
        );
        assert_eq!(
            parse_prog_fdinfo(&info.replace("prog_type:\t5", "prog_type:\t2")),
            None
        );
    }
}
