//! A loopback connection storm whose every connection makes exactly ten TCP state changes.
//!
//! Each worker thread owns its own listeners and runs one connection at a time, start to end:
//! connect from `127.0.0.x:0` (port chosen at connect time), accept, the client closes first,
//! the server reads end-of-file and closes. On loopback the whole exchange runs synchronously in
//! the worker's own system calls, so a worker never has more than one connection in flight and
//! no accept queue can overflow. The connections emit, in order:
//! client CLOSE->SYN_SENT->ESTABLISHED->FIN_WAIT1->FIN_WAIT2->CLOSE (the TIME_WAIT socket that
//! takes over emits nothing), server child LISTEN->SYN_RECV->ESTABLISHED->CLOSE_WAIT->LAST_ACK->
//! CLOSE. Listeners live as long as the [`Storm`], so their own LISTEN transitions fall outside
//! any measured round.

use std::{
    io,
    mem::size_of,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    sync::atomic::{AtomicBool, AtomicU64, Ordering},
    thread,
    time::{Duration, Instant},
};

/// `inet_sock_set_state` transitions each storm connection produces.
pub const EVENTS_PER_CONNECTION: u64 = 10;

/// The kernel's `IP_BIND_ADDRESS_NO_PORT` (not in every libc version).
const IP_BIND_ADDRESS_NO_PORT: libc::c_int = 24;

/// Connect failures tolerated per worker before it gives up: a failed connect() still emits
/// CLOSE->SYN_SENT->CLOSE, so any failure already spoils the exact event count.
const MAX_CONNECT_FAILURES: u64 = 100;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormConfig {
    /// Threads, each running connections back to back.
    pub workers: usize,
    /// Listening ports per worker.
    pub ports_per_worker: usize,
    /// Client source addresses, 127.0.0.2 upwards.
    pub sources: u8,
}

/// What one storm achieved.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StormResult {
    /// Connections that went through all ten transitions.
    pub connections: u64,
    /// connect() calls that failed (each one emits two transitions of its own).
    pub connect_failures: u64,
    pub elapsed: Duration,
}

impl StormResult {
    pub fn per_second(&self) -> f64 {
        per_second(self.connections, self.elapsed)
    }

    /// Transitions the storm caused (failed connects included).
    pub fn events(&self) -> u64 {
        self.connections * EVENTS_PER_CONNECTION + self.connect_failures * 2
    }
}

pub fn per_second(count: u64, elapsed: Duration) -> f64 {
    let secs = elapsed.as_secs_f64();
    if secs > 0.0 {
        count as f64 / secs
    } else {
        0.0
    }
}

struct Listener {
    fd: OwnedFd,
    addr: libc::sockaddr_in,
}

impl Listener {
    #[cfg(test)]
    fn port(&self) -> u16 {
        u16::from_be(self.addr.sin_port)
    }
}

/// Listening sockets, created once and reused by every round.
pub struct Storm {
    per_worker: Vec<Vec<Listener>>,
    sources: Vec<libc::sockaddr_in>,
}

impl Storm {
    pub fn new(config: StormConfig) -> io::Result<Storm> {
        let workers = config.workers.max(1);
        let ports = config.ports_per_worker.max(1);
        let mut per_worker = Vec::with_capacity(workers);
        for _ in 0..workers {
            let listeners = (0..ports)
                .map(|_| listen_loopback())
                .collect::<io::Result<_>>()?;
            per_worker.push(listeners);
        }
        let sources = (0..config.sources.clamp(1, 250))
            .map(|i| sockaddr([127, 0, 0, 2 + i], 0))
            .collect();
        Ok(Storm {
            per_worker,
            sources,
        })
    }

    /// The listening ports, for filters that pick out the storm's own events.
    #[cfg(test)]
    pub fn ports(&self) -> impl Iterator<Item = u16> + '_ {
        self.per_worker.iter().flatten().map(Listener::port)
    }

    /// Storms for `duration`.
    pub fn run_for(&self, duration: Duration) -> io::Result<StormResult> {
        let stop = AtomicBool::new(false);
        let progress = AtomicU64::new(0);
        self.run(Some(Instant::now() + duration), &stop, &progress)
    }

    /// Storms until `deadline` (when given) or until `stop` is set, adding completed
    /// connections to `progress` as it goes (in batches).
    pub fn run(
        &self,
        deadline: Option<Instant>,
        stop: &AtomicBool,
        progress: &AtomicU64,
    ) -> io::Result<StormResult> {
        let start = Instant::now();
        let outcomes: Vec<io::Result<(u64, u64)>> = thread::scope(|scope| {
            let handles: Vec<_> = self
                .per_worker
                .iter()
                .enumerate()
                .map(|(index, listeners)| {
                    let sources = &self.sources;
                    scope.spawn(move || worker(index, listeners, sources, deadline, stop, progress))
                })
                .collect();
            handles
                .into_iter()
                .map(|h| {
                    h.join()
                        .unwrap_or_else(|_| Err(io::Error::other("storm worker panicked")))
                })
                .collect()
        });
        let elapsed = start.elapsed();
        let mut result = StormResult {
            elapsed,
            ..StormResult::default()
        };
        for outcome in outcomes {
            let (connections, failures) = outcome?;
            result.connections += connections;
            result.connect_failures += failures;
        }
        Ok(result)
    }
}

fn worker(
    index: usize,
    listeners: &[Listener],
    sources: &[libc::sockaddr_in],
    deadline: Option<Instant>,
    stop: &AtomicBool,
    progress: &AtomicU64,
) -> io::Result<(u64, u64)> {
    const PROGRESS_BATCH: u64 = 256;
    let mut connections = 0u64;
    let mut failures = 0u64;
    // Workers start at different sources so they do not walk the same port ranges in step.
    let mut turn = index * 7;
    loop {
        if stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| Instant::now() >= d) {
            progress.fetch_add(connections % PROGRESS_BATCH, Ordering::Relaxed);
            return Ok((connections, failures));
        }
        let listener = &listeners[turn % listeners.len()];
        let source = &sources[(turn / listeners.len()) % sources.len()];
        turn = turn.wrapping_add(1);
        match one_connection(listener, source) {
            Ok(()) => {
                connections += 1;
                if connections.is_multiple_of(PROGRESS_BATCH) {
                    progress.fetch_add(PROGRESS_BATCH, Ordering::Relaxed);
                }
            }
            Err(Failure::Connect(e)) => {
                failures += 1;
                if failures >= MAX_CONNECT_FAILURES {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("storm: {failures} connect() calls failed, last: {e}"),
                    ));
                }
            }
            Err(Failure::Other(e)) => return Err(e),
        }
    }
}

enum Failure {
    Connect(io::Error),
    Other(io::Error),
}

fn one_connection(listener: &Listener, source: &libc::sockaddr_in) -> Result<(), Failure> {
    let client = tcp_socket().map_err(Failure::Other)?;
    set_bind_no_port(&client).map_err(Failure::Other)?;
    bind(&client, source).map_err(Failure::Other)?;
    connect(&client, &listener.addr).map_err(Failure::Connect)?;
    let server = accept(&listener.fd).map_err(Failure::Other)?;
    drop(client);
    let mut byte = [0u8; 1];
    let n = read_retrying(&server, &mut byte).map_err(Failure::Other)?;
    if n != 0 {
        return Err(Failure::Other(io::Error::other(
            "storm: the server read data where it expected end-of-file",
        )));
    }
    drop(server);
    Ok(())
}

fn sockaddr(ip: [u8; 4], port: u16) -> libc::sockaddr_in {
    libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip),
        },
        sin_zero: [0; 8],
    }
}

fn check(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

fn tcp_socket() -> io::Result<OwnedFd> {
    // SAFETY: plain system call; the descriptor is owned by the returned OwnedFd.
    let fd =
        check(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: `fd` is a fresh descriptor nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(
    fd: &OwnedFd,
    level: libc::c_int,
    name: libc::c_int,
    value: libc::c_int,
) -> io::Result<()> {
    // SAFETY: `value` outlives the call and its size is passed.
    check(unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&value as *const libc::c_int).cast(),
            size_of::<libc::c_int>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Defers the choice of the local port from bind() to connect(), where the kernel picks a port
/// free for this 4-tuple rather than one free for every destination: without it, binding a
/// source address would run out of ports after ~28k connections in TIME_WAIT.
fn set_bind_no_port(fd: &OwnedFd) -> io::Result<()> {
    set_int_opt(fd, libc::IPPROTO_IP, IP_BIND_ADDRESS_NO_PORT, 1)
}

fn bind(fd: &OwnedFd, addr: &libc::sockaddr_in) -> io::Result<()> {
    // SAFETY: `addr` is a valid sockaddr_in of the size passed.
    check(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn connect(fd: &OwnedFd, addr: &libc::sockaddr_in) -> io::Result<()> {
    // SAFETY: `addr` is a valid sockaddr_in of the size passed.
    check(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (addr as *const libc::sockaddr_in).cast(),
            size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .map(drop)
}

fn accept(listener: &OwnedFd) -> io::Result<OwnedFd> {
    loop {
        // SAFETY: no address is requested; the descriptor is owned by the returned OwnedFd.
        let fd = unsafe {
            libc::accept4(
                listener.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        match check(fd) {
            // SAFETY: a fresh descriptor nothing else owns.
            Ok(fd) => return Ok(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
}

fn read_retrying(fd: &OwnedFd, buf: &mut [u8]) -> io::Result<usize> {
    loop {
        // SAFETY: `buf` is valid for writes of its length.
        let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if n >= 0 {
            return Ok(n as usize);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// A listener on 127.0.0.1 with a port the kernel picks, and a backlog as deep as allowed.
fn listen_loopback() -> io::Result<Listener> {
    let fd = tcp_socket()?;
    bind(&fd, &sockaddr([127, 0, 0, 1], 0))?;
    // SAFETY: plain system call on a descriptor we own.
    check(unsafe { libc::listen(fd.as_raw_fd(), 4096) })?;
    let mut addr = sockaddr([0; 4], 0);
    let mut len = size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: `addr` and `len` are valid for writes and `len` holds the buffer's size.
    check(unsafe {
        libc::getsockname(
            fd.as_raw_fd(),
            (&mut addr as *mut libc::sockaddr_in).cast(),
            &mut len,
        )
    })?;
    Ok(Listener { fd, addr })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::bench::tracer::{which, TracefsMount};
    use std::{
        collections::BTreeMap,
        io::{BufRead, BufReader},
        process::{Command, Stdio},
    };

    fn small_storm() -> Storm {
        Storm::new(StormConfig {
            workers: 2,
            ports_per_worker: 2,
            sources: 3,
        })
        .expect("listeners on loopback")
    }

    #[test]
    fn storm_completes_connections() {
        let result = small_storm()
            .run_for(Duration::from_millis(200))
            .expect("storm");
        assert!(result.connections > 0);
        assert_eq!(result.connect_failures, 0);
        assert_eq!(result.events(), result.connections * EVENTS_PER_CONNECTION);
    }

    /// Traces the storm's own ports with bpftrace and checks that every connection made exactly
    /// the ten expected transitions: the benchmark's accounting rests on that.
    #[test]
    fn every_connection_makes_ten_transitions() {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("skipped: needs root");
            return;
        }
        let Some(bpftrace) = which("bpftrace") else {
            eprintln!("skipped: needs bpftrace");
            return;
        };
        let _tracefs = TracefsMount::ensure().expect("tracefs");
        let storm = small_storm();
        let predicate = storm
            .ports()
            .map(|p| format!("args->sport == {p} || args->dport == {p}"))
            .collect::<Vec<_>>()
            .join(" || ");
        let program = format!(
            "BEGIN {{ system(\"echo attached >&2\"); }}
             tracepoint:sock:inet_sock_set_state /{predicate}/
             {{ @[args->oldstate, args->newstate] = count(); }}"
        );
        let mut child = Command::new(bpftrace)
            .args(["--unsafe", "-e", &program])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("bpftrace starts");
        let stderr = child.stderr.take().expect("piped stderr");
        let attached = BufReader::new(stderr)
            .lines()
            .map_while(Result::ok)
            .any(|l| l.starts_with("attached"));
        assert!(attached, "bpftrace did not attach");
        let result = storm.run_for(Duration::from_millis(300)).expect("storm");
        // Lets the last connections' final ACKs be processed.
        std::thread::sleep(Duration::from_millis(100));
        // SAFETY: plain system call on our own child.
        unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
        let out = child.wait_with_output().expect("bpftrace exits");
        let text = String::from_utf8_lossy(&out.stdout);
        let counts: BTreeMap<(u8, u8), u64> = text
            .lines()
            .filter_map(|l| {
                let (key, n) = l.strip_prefix("@[")?.split_once("]: ")?;
                let (old, new) = key.split_once(", ")?;
                Some((
                    (old.parse().ok()?, new.parse().ok()?),
                    n.trim().parse().ok()?,
                ))
            })
            .collect();
        let n = result.connections;
        assert!(n > 0);
        let expected: BTreeMap<(u8, u8), u64> = [
            (7, 2),
            (2, 1),
            (1, 4),
            (4, 5),
            (5, 7), // client
            (10, 3),
            (3, 1),
            (1, 8),
            (8, 9),
            (9, 7), // accepted server socket
        ]
        .into_iter()
        .map(|k| (k, n))
        .collect();
        assert_eq!(counts, expected, "bpftrace output:\n{text}");
    }
}
