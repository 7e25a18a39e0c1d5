//! tcppeer: a small TCP client/server whose connections tests and benchmarks steer precisely
//! (who closes first, half-close, RST, simultaneous close) and time on CLOCK_MONOTONIC, the
//! clock of the tracer's timestamps. Output is one JSON object per line on stdout.
//!
//! Exit status: 0 when it ran to completion (each connection's outcome, refused or timed out
//! included, is in its JSON line), 1 on a setup error or when no connection came in time, 2 on
//! a usage error. Every blocking step is bounded by --timeout-s (default 10).

use std::{
    fmt::Write as _,
    fs,
    io::{self, Read, Write},
    mem,
    net::{Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    process::ExitCode,
    time::{Duration, Instant},
};

const USAGE: &str = "\
usage:
  tcppeer server --listen ADDR:PORT [--netns NAME] [--accept N] [--send BYTES] [--dual-stack]
                 [--close-wait-ms MS | --close-first | --shutdown-write-then-read]
                 [--linger0] [--shutdown-at-mono-ns T] [--timeout-s S]
                 [--keepalive IDLE_S,INTVL_S,CNT] [--user-timeout-ms MS]
  tcppeer client --connect ADDR:PORT [--netns NAME] [--count N] [--interval-ms MS]
                 [--send BYTES] [--close-first | --wait-eof | --hold-idle | --trickle-ms MS]
                 [--linger0] [--shutdown-at-mono-ns T] [--timeout-s S] [--syn-retries N]
                 [--close-after-ms MS]
                 [--keepalive IDLE_S,INTVL_S,CNT] [--user-timeout-ms MS]

server: prints {\"event\":\"listening\",...} once listening, then handles N connections one
  after another, printing {\"event\":\"accepted\",...} as each comes in. Default: read until the client's EOF, then close (the server closes second).
  --close-wait-ms MS       after the EOF, stay in CLOSE_WAIT for MS before closing
  --close-first            close right after accept (the server closes first)
  --shutdown-write-then-read  shutdown(SHUT_WR) after accept, then read until EOF
  --send BYTES             write BYTES right after accept (pair with a reading client)
  --dual-stack             IPV6_V6ONLY off on an IPv6 listener (e.g. [::]:PORT): IPv4 clients
                           are accepted too, as v4-mapped addresses (whatever the sysctl
                           net.ipv6.bindv6only says)
client: connects N times in sequence, each with one blocking connect(), printing
  {\"event\":\"connected\",...} when it succeeds.
  Default (--close-first): write --send BYTES, then close (the client closes first).
  --wait-eof               read until the server's EOF, then write --send BYTES, then close
  --hold-idle              write --send BYTES, then stay idle reading until EOF or an error
                           (e.g. ETIMEDOUT from keepalive), bounded by --timeout-s
  --trickle-ms MS          write --send BYTES, then 100 bytes every MS until a write fails
                           (e.g. ETIMEDOUT from --user-timeout-ms), bounded by --timeout-s
  --interval-ms MS         pause between connections
  --close-after-ms MS      wait MS before the close (e.g. so the server has accepted)
  --syn-retries N          TCP_SYNCNT: SYN retransmits before connect() fails (ETIMEDOUT)
both:
  --linger0                SO_LINGER {on, 0}: the close sends RST instead of FIN
  --realtime               run at SCHED_FIFO priority 10 (sharp timings on a loaded host)
  --shutdown-at-mono-ns T  (one connection) shutdown(SHUT_WR) at CLOCK_MONOTONIC T, read
                           until EOF, close: both ends given the same T close simultaneously
                           (alias: --simultaneous-close-at-mono-ns)
  --netns NAME             enter /run/netns/NAME before creating any socket
  --keepalive I,N,C        SO_KEEPALIVE with TCP_KEEPIDLE I s, TCP_KEEPINTVL N s, TCP_KEEPCNT C
  --user-timeout-ms MS     TCP_USER_TIMEOUT: give up on data unacknowledged for MS
A connection's line has \"errno\"/\"errno_name\" for a failed connect() and
\"io_errno\"/\"io_errno_name\" for the read or write that failed afterwards (null when the
failure was not the kernel's, e.g. this program's own timeout).
";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.is_empty() || args.iter().any(|a| a == "--help" || a == "-h") {
        print!("{USAGE}");
        return ExitCode::from(if args.is_empty() { 2 } else { 0 });
    }
    let opts = match Opts::parse(&args) {
        Ok(o) => o,
        Err(e) => {
            eprintln!("tcppeer: {e} (see tcppeer --help)");
            return ExitCode::from(2);
        }
    };
    if opts.realtime {
        set_realtime();
    }
    let result = enter_netns(opts.netns.as_deref()).and_then(|()| match opts.mode {
        Mode::Server => server(&opts),
        Mode::Client => client(&opts),
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("tcppeer: {e}");
            ExitCode::from(1)
        }
    }
}

#[derive(PartialEq)]
enum Mode {
    Server,
    Client,
}

struct Opts {
    mode: Mode,
    addr: SocketAddr,
    netns: Option<String>,
    count: u32,
    interval: Duration,
    send: usize,
    close_wait: Option<Duration>,
    close_first: bool,
    wait_eof: bool,
    shutdown_write_then_read: bool,
    linger0: bool,
    dual_stack: bool,
    realtime: bool,
    shutdown_at: Option<u64>,
    timeout: Duration,
    hold_idle: bool,
    close_after: Duration,
    trickle: Option<Duration>,
    syn_retries: Option<i32>,
    keepalive: Option<(i32, i32, i32)>,
    user_timeout_ms: Option<u32>,
}

impl Opts {
    fn parse(args: &[String]) -> Result<Opts, String> {
        let mode = match args.first().map(String::as_str) {
            Some("server") => Mode::Server,
            Some("client") => Mode::Client,
            _ => return Err("first argument must be `server` or `client`".into()),
        };
        let mut addr = None;
        let mut o = Opts {
            mode,
            addr: SocketAddr::from(([0, 0, 0, 0], 0)),
            netns: None,
            count: 1,
            interval: Duration::ZERO,
            send: 0,
            close_wait: None,
            close_first: false,
            wait_eof: false,
            shutdown_write_then_read: false,
            linger0: false,
            dual_stack: false,
            realtime: false,
            shutdown_at: None,
            timeout: Duration::from_secs(10),
            hold_idle: false,
            close_after: Duration::ZERO,
            trickle: None,
            syn_retries: None,
            keepalive: None,
            user_timeout_ms: None,
        };
        let mut it = args[1..].iter();
        while let Some(flag) = it.next() {
            let mut value = || {
                it.next()
                    .ok_or_else(|| format!("{flag} needs a value"))
                    .map(String::as_str)
            };
            match (flag.as_str(), &o.mode) {
                ("--listen", Mode::Server) | ("--connect", Mode::Client) => {
                    addr = Some(parse::<SocketAddr>(flag, value()?)?)
                }
                ("--netns", _) => o.netns = Some(value()?.to_owned()),
                ("--accept", Mode::Server) | ("--count", Mode::Client) => {
                    o.count = parse(flag, value()?)?
                }
                ("--interval-ms", Mode::Client) => {
                    o.interval = Duration::from_millis(parse(flag, value()?)?)
                }
                ("--send", _) => o.send = parse(flag, value()?)?,
                ("--close-wait-ms", Mode::Server) => {
                    o.close_wait = Some(Duration::from_millis(parse(flag, value()?)?))
                }
                ("--close-first", _) => o.close_first = true,
                ("--wait-eof", Mode::Client) => o.wait_eof = true,
                ("--shutdown-write-then-read", Mode::Server) => o.shutdown_write_then_read = true,
                ("--linger0", _) => o.linger0 = true,
                ("--dual-stack", Mode::Server) => o.dual_stack = true,
                ("--realtime", _) => o.realtime = true,
                ("--shutdown-at-mono-ns" | "--simultaneous-close-at-mono-ns", _) => {
                    o.shutdown_at = Some(parse(flag, value()?)?)
                }
                ("--hold-idle", Mode::Client) => o.hold_idle = true,
                ("--close-after-ms", Mode::Client) => {
                    o.close_after = Duration::from_millis(parse(flag, value()?)?)
                }
                ("--trickle-ms", Mode::Client) => {
                    o.trickle = Some(Duration::from_millis(parse(flag, value()?)?))
                }
                ("--syn-retries", Mode::Client) => o.syn_retries = Some(parse(flag, value()?)?),
                ("--keepalive", _) => o.keepalive = Some(parse_keepalive(value()?)?),
                ("--user-timeout-ms", _) => o.user_timeout_ms = Some(parse(flag, value()?)?),
                ("--timeout-s", _) => {
                    let secs: f64 = parse(flag, value()?)?;
                    o.timeout = Duration::try_from_secs_f64(secs)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| format!("bad --timeout-s {secs}"))?;
                }
                _ => return Err(format!("unknown option {flag}")),
            }
        }
        o.addr = addr.ok_or_else(|| match o.mode {
            Mode::Server => "--listen ADDR:PORT is required".to_string(),
            Mode::Client => "--connect ADDR:PORT is required".to_string(),
        })?;
        let server_closes = [
            o.close_wait.is_some(),
            o.close_first && o.mode == Mode::Server,
            o.shutdown_write_then_read,
            o.shutdown_at.is_some(),
        ];
        if server_closes.iter().filter(|&&b| b).count() > 1
            || (o.wait_eof && (o.close_first || o.shutdown_at.is_some()))
            || [
                o.wait_eof,
                o.hold_idle,
                o.trickle.is_some(),
                o.shutdown_at.is_some(),
            ]
            .iter()
            .filter(|&&b| b)
            .count()
                > 1
        {
            return Err("choose one way to close".into());
        }
        if o.dual_stack && !o.addr.is_ipv6() {
            return Err("--dual-stack needs an IPv6 --listen address".into());
        }
        if o.shutdown_at.is_some() && o.count != 1 {
            return Err("--shutdown-at-mono-ns is for a single connection".into());
        }
        Ok(o)
    }
}

fn parse<T: std::str::FromStr>(flag: &str, s: &str) -> Result<T, String> {
    s.parse().map_err(|_| format!("bad value for {flag}: {s}"))
}

/// `IDLE_S,INTVL_S,CNT`, each at least 1 (the kernel refuses 0).
fn parse_keepalive(s: &str) -> Result<(i32, i32, i32), String> {
    let v: Vec<i32> = s
        .split(',')
        .map(|p| parse("--keepalive", p.trim()))
        .collect::<Result<_, _>>()?;
    match v[..] {
        [idle, intvl, cnt] if idle > 0 && intvl > 0 && cnt > 0 => Ok((idle, intvl, cnt)),
        _ => Err(format!(
            "--keepalive wants IDLE_S,INTVL_S,CNT (each >= 1), not {s}"
        )),
    }
}

/// SCHED_FIFO, so that a loaded machine does not delay this process's wake-ups and its own
/// timings stay sharp. Refused (not root): it runs as before.
fn set_realtime() {
    let param = libc::sched_param { sched_priority: 10 };
    // SAFETY: valid sched_param for the calling process.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_FIFO, &param) };
}

fn enter_netns(name: Option<&str>) -> Result<(), String> {
    let Some(name) = name else {
        return Ok(());
    };
    let file = fs::File::open(format!("/run/netns/{name}"))
        .map_err(|e| format!("network namespace {name}: {e}"))?;
    // SAFETY: plain syscall on a valid fd; no other thread exists yet.
    if unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(format!("setns {name}: {}", io::Error::last_os_error()));
    }
    Ok(())
}

/// CLOCK_MONOTONIC in nanoseconds, the clock of bpf_ktime_get_ns.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: valid out pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Sleeps until CLOCK_MONOTONIC reaches `t`, refusing targets further away than `limit`.
fn sleep_until_mono(t: u64, limit: Duration) -> Result<(), String> {
    let now = mono_ns();
    if t.saturating_sub(now) > limit.as_nanos() as u64 {
        return Err(format!(
            "--shutdown-at-mono-ns is {} ms away, beyond the timeout",
            (t - now) / 1_000_000
        ));
    }
    let ts = libc::timespec {
        tv_sec: (t / 1_000_000_000) as libc::time_t,
        tv_nsec: (t % 1_000_000_000) as libc::c_long,
    };
    // Bounded: each retry happens only on a signal, and the target is in the near future.
    // SAFETY: valid timespec; absolute sleep on the monotonic clock.
    while unsafe {
        libc::clock_nanosleep(
            libc::CLOCK_MONOTONIC,
            libc::TIMER_ABSTIME,
            &ts,
            std::ptr::null_mut(),
        )
    } == libc::EINTR
    {}
    Ok(())
}

/// One connection's record, printed as a JSON line when it is over.
#[derive(Default)]
struct Record {
    seq: u32,
    local_port: u16,
    remote_port: u16,
    connect_start_ns: Option<u64>,
    connect_end_ns: Option<u64>,
    result: Option<&'static str>,
    errno: Option<i32>,
    /// The kernel's smoothed RTT right after the handshake (its first sample is the
    /// handshake's own round trip), free of this process's scheduling delays.
    kernel_rtt_us: Option<u32>,
    accept_ns: Option<u64>,
    shutdown_ns: Option<u64>,
    eof_ns: Option<u64>,
    close_ns: Option<u64>,
    bytes_sent: usize,
    bytes_received: usize,
    error: Option<String>,
    /// The OS error of the read or write that failed (`error`), when it was one.
    io_errno: Option<i32>,
}

fn json_str(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// The symbolic name of the errors these tests meet; others as `E<number>`.
fn errno_name(e: i32) -> String {
    let name = match e {
        libc::ECONNREFUSED => "ECONNREFUSED",
        libc::ETIMEDOUT => "ETIMEDOUT",
        libc::ECONNRESET => "ECONNRESET",
        libc::EPIPE => "EPIPE",
        libc::EHOSTUNREACH => "EHOSTUNREACH",
        libc::ENETUNREACH => "ENETUNREACH",
        libc::ECONNABORTED => "ECONNABORTED",
        libc::EINPROGRESS => "EINPROGRESS",
        libc::EAGAIN => "EAGAIN",
        libc::EINTR => "EINTR",
        _ => return format!("E{e}"),
    };
    name.to_string()
}

fn json_errno(out: &mut String, key: &str, e: Option<i32>) {
    json_opt(out, key, e);
    let _ = write!(out, ",\"{key}_name\":");
    match e {
        Some(e) => json_str(out, &errno_name(e)),
        None => out.push_str("null"),
    }
}

fn json_opt<T: std::fmt::Display>(out: &mut String, key: &str, v: Option<T>) {
    match v {
        Some(v) => {
            let _ = write!(out, ",\"{key}\":{v}");
        }
        None => {
            let _ = write!(out, ",\"{key}\":null");
        }
    }
}

impl Record {
    fn print(&self, role: &str) {
        let mut out = String::with_capacity(400);
        let _ = write!(
            out,
            "{{\"event\":\"conn\",\"role\":\"{role}\",\"pid\":{},\"seq\":{},\"local_port\":{},\"remote_port\":{}",
            std::process::id(),
            self.seq,
            self.local_port,
            self.remote_port
        );
        json_opt(&mut out, "connect_start_ns", self.connect_start_ns);
        json_opt(&mut out, "connect_end_ns", self.connect_end_ns);
        out.push_str(",\"result\":");
        match self.result {
            Some(r) => json_str(&mut out, r),
            None => out.push_str("null"),
        }
        json_errno(&mut out, "errno", self.errno);
        json_opt(&mut out, "kernel_rtt_us", self.kernel_rtt_us);
        json_opt(&mut out, "accept_ns", self.accept_ns);
        json_opt(&mut out, "shutdown_ns", self.shutdown_ns);
        json_opt(&mut out, "eof_ns", self.eof_ns);
        json_opt(&mut out, "close_ns", self.close_ns);
        let _ = write!(
            out,
            ",\"bytes_sent\":{},\"bytes_received\":{},\"error\":",
            self.bytes_sent, self.bytes_received
        );
        match &self.error {
            Some(e) => json_str(&mut out, e),
            None => out.push_str("null"),
        }
        json_errno(&mut out, "io_errno", self.io_errno);
        out.push('}');
        emit(&out);
    }
}

fn emit(line: &str) {
    let mut stdout = io::stdout().lock();
    // Tests read lines as they come; a closed stdout only loses the report.
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

fn set_linger0(fd: &impl AsRawFd) -> io::Result<()> {
    let lg = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    setsockopt(fd, libc::SOL_SOCKET, libc::SO_LINGER, &lg)
}

fn setsockopt<T>(fd: &impl AsRawFd, level: i32, name: i32, val: &T) -> io::Result<()> {
    // SAFETY: val points to a T of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (val as *const T).cast(),
            mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// The per-socket timers the options ask for: keepalive and TCP_USER_TIMEOUT.
fn set_timers(o: &Opts, fd: &impl AsRawFd) -> io::Result<()> {
    if let Some((idle, intvl, cnt)) = o.keepalive {
        setsockopt(fd, libc::SOL_SOCKET, libc::SO_KEEPALIVE, &1i32)?;
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPIDLE, &idle)?;
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPINTVL, &intvl)?;
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_KEEPCNT, &cnt)?;
    }
    if let Some(ms) = o.user_timeout_ms {
        setsockopt(fd, libc::IPPROTO_TCP, libc::TCP_USER_TIMEOUT, &ms)?;
    }
    Ok(())
}

fn connected_line(event: &str, rec: &Record) {
    emit(&format!(
        "{{\"event\":\"{event}\",\"pid\":{},\"seq\":{},\"local_port\":{},\"remote_port\":{},\"mono_ns\":{}}}",
        std::process::id(),
        rec.seq,
        rec.local_port,
        rec.remote_port,
        mono_ns()
    ));
}

/// Writes 100 bytes every `every` until a write fails (its error is returned) or `limit`
/// passes (an error of this program's own, without an OS errno).
fn trickle(
    stream: &mut TcpStream,
    every: Duration,
    limit: Duration,
    rec: &mut Record,
) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let chunk = [0u8; 100];
    while Instant::now() < deadline {
        rec.bytes_sent += stream.write(&chunk)?;
        std::thread::sleep(every);
    }
    Err(io::Error::new(
        io::ErrorKind::TimedOut,
        "still writing at the end of --timeout-s",
    ))
}

fn kernel_rtt_us(fd: &impl AsRawFd) -> Option<u32> {
    // SAFETY: all-zero is a valid tcp_info.
    let mut info: libc::tcp_info = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::tcp_info>() as libc::socklen_t;
    // SAFETY: info and len describe a writable buffer.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r == 0).then_some(info.tcpi_rtt)
}

fn timeval(d: Duration) -> libc::timeval {
    libc::timeval {
        tv_sec: d.as_secs() as libc::time_t,
        tv_usec: d.subsec_micros() as libc::suseconds_t,
    }
}

/// Writes `n` bytes (zeros).
fn send_bytes(stream: &mut TcpStream, n: usize, rec: &mut Record) -> io::Result<()> {
    let chunk = [0u8; 16 * 1024];
    while rec.bytes_sent < n {
        let len = (n - rec.bytes_sent).min(chunk.len());
        rec.bytes_sent += stream.write(&chunk[..len])?;
    }
    Ok(())
}

/// Reads until EOF, bounded by `limit` overall (each read is bounded by SO_RCVTIMEO).
fn read_to_eof(stream: &mut TcpStream, limit: Duration, rec: &mut Record) -> io::Result<()> {
    let deadline = Instant::now() + limit;
    let mut buf = [0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => {
                rec.eof_ns = Some(mono_ns());
                return Ok(());
            }
            Ok(n) => rec.bytes_received += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "timed out waiting for EOF",
                ))
            }
            Err(e) => return Err(e),
        }
        if Instant::now() >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "timed out waiting for EOF",
            ));
        }
    }
}

fn shutdown_write(stream: &TcpStream, rec: &mut Record) -> io::Result<()> {
    rec.shutdown_ns = Some(mono_ns());
    stream.shutdown(Shutdown::Write)
}

fn close(stream: TcpStream, rec: &mut Record) {
    rec.close_ns = Some(mono_ns());
    drop(stream);
}

/// A listener built by hand, so that IPV6_V6ONLY is set (off) before bind(): std leaves it
/// to the sysctl's default.
fn dual_stack_listener(addr: &SocketAddr) -> io::Result<TcpListener> {
    // SAFETY: plain syscall.
    let raw = unsafe { libc::socket(libc::AF_INET6, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt(&fd, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, &0i32)?;
    setsockopt(&fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, &1i32)?;
    let (storage, len) = sockaddr(addr);
    // SAFETY: storage holds a sockaddr of `len` bytes.
    let r = unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    // SAFETY: plain syscall on our fd.
    if r != 0 || unsafe { libc::listen(fd.as_raw_fd(), 128) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(TcpListener::from(fd))
}

fn server(o: &Opts) -> Result<(), String> {
    let listener = if o.dual_stack {
        dual_stack_listener(&o.addr)
    } else {
        TcpListener::bind(o.addr)
    }
    .map_err(|e| format!("cannot listen on {}: {e}", o.addr))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    emit(&format!(
        "{{\"event\":\"listening\",\"pid\":{},\"port\":{port}}}",
        std::process::id()
    ));
    for seq in 0..o.count {
        if !wait_readable(&listener, o.timeout) {
            return Err(format!(
                "no connection within {:?} (accepted {seq} of {})",
                o.timeout, o.count
            ));
        }
        let (stream, peer) = listener.accept().map_err(|e| format!("accept: {e}"))?;
        let mut rec = Record {
            seq,
            accept_ns: Some(mono_ns()),
            remote_port: peer.port(),
            kernel_rtt_us: kernel_rtt_us(&stream),
            ..Record::default()
        };
        if let Ok(local) = stream.local_addr() {
            rec.local_port = local.port();
        }
        connected_line("accepted", &rec);
        if let Err(e) = serve_one(o, stream, &mut rec) {
            rec.error = Some(e.to_string());
            rec.io_errno = e.raw_os_error();
        }
        rec.print("server");
    }
    Ok(())
}

fn serve_one(o: &Opts, mut stream: TcpStream, rec: &mut Record) -> io::Result<()> {
    let result = serve_steps(o, &mut stream, rec);
    close(stream, rec);
    result
}

fn serve_steps(o: &Opts, stream: &mut TcpStream, rec: &mut Record) -> io::Result<()> {
    stream.set_read_timeout(Some(o.timeout))?;
    stream.set_write_timeout(Some(o.timeout))?;
    if o.linger0 {
        set_linger0(stream)?;
    }
    set_timers(o, stream)?;
    send_bytes(stream, o.send, rec)?;
    if let Some(t) = o.shutdown_at {
        sleep_until_mono(t, o.timeout).map_err(io::Error::other)?;
        shutdown_write(stream, rec)?;
        read_to_eof(stream, o.timeout, rec)
    } else if o.close_first {
        Ok(())
    } else if o.shutdown_write_then_read {
        shutdown_write(stream, rec)?;
        read_to_eof(stream, o.timeout, rec)
    } else {
        read_to_eof(stream, o.timeout, rec)?;
        if let Some(d) = o.close_wait {
            std::thread::sleep(d);
        }
        Ok(())
    }
}

fn wait_readable(fd: &impl AsRawFd, limit: Duration) -> bool {
    let mut pfd = libc::pollfd {
        fd: fd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let deadline = Instant::now() + limit;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        // Round up so a sub-millisecond rest does not spin.
        let ms = left.as_millis().min(i32::MAX as u128) as i32 + 1;
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, ms) };
        if n > 0 {
            return true;
        }
        if (n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted)
            || Instant::now() >= deadline
        {
            return false;
        }
    }
}

fn client(o: &Opts) -> Result<(), String> {
    emit(&format!(
        "{{\"event\":\"start\",\"pid\":{}}}",
        std::process::id()
    ));
    for seq in 0..o.count {
        if seq > 0 && !o.interval.is_zero() {
            std::thread::sleep(o.interval);
        }
        let mut rec = Record {
            seq,
            remote_port: o.addr.port(),
            ..Record::default()
        };
        match connect(o, &mut rec) {
            Ok(Some(mut stream)) => {
                connected_line("connected", &rec);
                let result = client_steps(o, &mut stream, &mut rec);
                if result.is_ok() && !o.close_after.is_zero() {
                    std::thread::sleep(o.close_after);
                }
                close(stream, &mut rec);
                if let Err(e) = result {
                    rec.error = Some(e.to_string());
                    rec.io_errno = e.raw_os_error();
                }
            }
            Ok(None) => {}
            Err(e) => return Err(e),
        }
        rec.print("client");
    }
    Ok(())
}

fn client_steps(o: &Opts, stream: &mut TcpStream, rec: &mut Record) -> io::Result<()> {
    stream.set_read_timeout(Some(o.timeout))?;
    stream.set_write_timeout(Some(o.timeout))?;
    if o.linger0 {
        set_linger0(stream)?;
    }
    set_timers(o, stream)?;
    if let Some(t) = o.shutdown_at {
        send_bytes(stream, o.send, rec)?;
        sleep_until_mono(t, o.timeout).map_err(io::Error::other)?;
        shutdown_write(stream, rec)?;
        read_to_eof(stream, o.timeout, rec)
    } else if o.wait_eof {
        read_to_eof(stream, o.timeout, rec)?;
        send_bytes(stream, o.send, rec)
    } else if o.hold_idle {
        send_bytes(stream, o.send, rec)?;
        read_to_eof(stream, o.timeout, rec)
    } else if let Some(every) = o.trickle {
        send_bytes(stream, o.send, rec)?;
        trickle(stream, every, o.timeout, rec)
    } else {
        send_bytes(stream, o.send, rec)
    }
}

/// One blocking connect() with SO_SNDTIMEO as its bound, timed immediately around the call.
/// Returns the stream, or None when the connection failed (the outcome is in `rec`).
fn connect(o: &Opts, rec: &mut Record) -> Result<Option<TcpStream>, String> {
    let family = match o.addr {
        SocketAddr::V4(_) => libc::AF_INET,
        SocketAddr::V6(_) => libc::AF_INET6,
    };
    // SAFETY: plain syscall.
    let raw = unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(format!("socket: {}", io::Error::last_os_error()));
    }
    // SAFETY: raw is a fresh fd we own.
    let fd = unsafe { OwnedFd::from_raw_fd(raw) };
    setsockopt(
        &fd,
        libc::SOL_SOCKET,
        libc::SO_SNDTIMEO,
        &timeval(o.timeout),
    )
    .map_err(|e| format!("SO_SNDTIMEO: {e}"))?;
    if let Some(n) = o.syn_retries {
        setsockopt(&fd, libc::IPPROTO_TCP, libc::TCP_SYNCNT, &n)
            .map_err(|e| format!("TCP_SYNCNT {n}: {e}"))?;
    }
    let (storage, len) = sockaddr(&o.addr);
    rec.connect_start_ns = Some(mono_ns());
    // SAFETY: storage holds a sockaddr of `len` bytes.
    let r = unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    };
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    rec.connect_end_ns = Some(mono_ns());
    rec.local_port = local_port(&fd);
    if r == 0 {
        rec.result = Some("ok");
        rec.kernel_rtt_us = kernel_rtt_us(&fd);
        return Ok(Some(TcpStream::from(fd)));
    }
    rec.errno = Some(errno);
    rec.result = Some(match errno {
        libc::ECONNREFUSED => "refused",
        // A connect() cut short by SO_SNDTIMEO reports EINPROGRESS; the kernel giving up
        // after its SYN retries reports ETIMEDOUT.
        libc::EINPROGRESS | libc::ETIMEDOUT | libc::EAGAIN => "timeout",
        libc::ECONNRESET => "reset",
        libc::ENETUNREACH | libc::EHOSTUNREACH => "unreachable",
        _ => "error",
    });
    rec.close_ns = Some(mono_ns());
    drop(fd);
    Ok(None)
}

fn sockaddr(addr: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn local_port(fd: &OwnedFd) -> u16 {
    // SAFETY: all-zero is a valid sockaddr_storage.
    let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: storage and len describe a writable buffer.
    let r = unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return 0;
    }
    // sin_port and sin6_port sit at the same offset, right after the family.
    // SAFETY: the kernel filled at least a family and a port.
    let sin = unsafe { &*(&storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
    u16::from_be(sin.sin_port)
}
