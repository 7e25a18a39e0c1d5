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
//!
//! The second shape, [`Shape::Epoll`], makes the same ten transitions per connection but splits
//! the two ends: client threads only connect and close, and two acceptor threads serve eight
//! non-blocking listeners through epoll, accepting, reading end-of-file and closing. The
//! server's packets are then processed in softirq while other threads (and their BPF programs)
//! run, which is where a tracer's program interrupts itself. The clients keep at most
//! [`MAX_IN_FLIGHT`] connections unserved, far below the listeners' backlog, so no accept queue
//! overflows and every connection still makes exactly ten transitions.

use std::{
    collections::HashMap,
    io,
    mem::size_of,
    os::fd::RawFd,
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

/// Listeners of the epoll storm, and the threads that serve them.
pub const EPOLL_LISTENERS: usize = 8;
pub const EPOLL_ACCEPTORS: usize = 2;
/// Connections the epoll storm's clients may have connected and not yet seen served.
const MAX_IN_FLIGHT: u64 = 512;
/// Longest wait for the acceptors to serve the last connections once the clients stop.
const SERVE_TIMEOUT: Duration = Duration::from_secs(5);

/// How the storm's connections are made and served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Shape {
    /// Each thread connects, accepts and closes both ends itself, one connection at a time.
    Loopback,
    /// Client threads connect and close; two acceptor threads serve eight listeners by epoll.
    Epoll,
}

impl Shape {
    pub const ALL: [Shape; 2] = [Shape::Loopback, Shape::Epoll];

    pub fn key(self) -> &'static str {
        match self {
            Shape::Loopback => "loopback",
            Shape::Epoll => "epoll",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StormConfig {
    pub shape: Shape,
    /// Threads, each running connections back to back (the epoll storm's client threads).
    pub workers: usize,
    /// Listening ports per worker (loopback storm; the epoll storm has [`EPOLL_LISTENERS`]).
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
    shape: Shape,
    workers: usize,
    /// Per loopback worker, or per epoll acceptor, its listeners.
    per_worker: Vec<Vec<Listener>>,
    sources: Vec<libc::sockaddr_in>,
}

impl Storm {
    pub fn new(config: StormConfig) -> io::Result<Storm> {
        let workers = config.workers.max(1);
        let (groups, ports) = match config.shape {
            Shape::Loopback => (workers, config.ports_per_worker.max(1)),
            Shape::Epoll => (EPOLL_ACCEPTORS, EPOLL_LISTENERS / EPOLL_ACCEPTORS),
        };
        let mut per_worker = Vec::with_capacity(groups);
        for _ in 0..groups {
            let listeners = (0..ports)
                .map(|_| listen_loopback(config.shape == Shape::Epoll))
                .collect::<io::Result<_>>()?;
            per_worker.push(listeners);
        }
        let sources = (0..config.sources.clamp(1, 250))
            .map(|i| sockaddr([127, 0, 0, 2 + i], 0))
            .collect();
        Ok(Storm {
            shape: config.shape,
            workers,
            per_worker,
            sources,
        })
    }

    /// What the report says about the storm's threads.
    pub fn describe(&self) -> String {
        match self.shape {
            Shape::Loopback => format!(
                "loopback storm: {} threads, each with its own {} listeners",
                self.workers,
                self.per_worker.first().map_or(0, Vec::len)
            ),
            Shape::Epoll => format!(
                "epoll storm: {} client threads, {EPOLL_ACCEPTORS} acceptor threads serving \
                 {EPOLL_LISTENERS} listeners by epoll",
                self.workers
            ),
        }
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
        match self.shape {
            Shape::Loopback => self.run_loopback(deadline, stop, progress),
            Shape::Epoll => self.run_epoll(deadline, stop, progress),
        }
    }

    fn run_loopback(
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

    fn run_epoll(
        &self,
        deadline: Option<Instant>,
        stop: &AtomicBool,
        progress: &AtomicU64,
    ) -> io::Result<StormResult> {
        let start = Instant::now();
        let all: Vec<&Listener> = self.per_worker.iter().flatten().collect();
        let shared = Served {
            connected: AtomicU64::new(0),
            served: AtomicU64::new(0),
            clients_done: AtomicBool::new(false),
            abort: AtomicBool::new(false),
        };
        let (clients, acceptors) = thread::scope(|scope| {
            let acceptors: Vec<_> = self
                .per_worker
                .iter()
                .map(|listeners| {
                    let shared = &shared;
                    scope.spawn(move || {
                        let r = acceptor(listeners, shared, progress);
                        if r.is_err() {
                            shared.abort.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                })
                .collect();
            let clients: Vec<_> = (0..self.workers)
                .map(|index| {
                    let (all, sources, shared) = (&all, &self.sources, &shared);
                    scope.spawn(move || {
                        let r = client(index, all, sources, deadline, stop, shared);
                        if r.is_err() {
                            shared.abort.store(true, Ordering::Relaxed);
                        }
                        r
                    })
                })
                .collect();
            let join = |h: thread::ScopedJoinHandle<'_, io::Result<u64>>| {
                h.join()
                    .unwrap_or_else(|_| Err(io::Error::other("storm thread panicked")))
            };
            let clients: Vec<_> = clients.into_iter().map(join).collect();
            shared.clients_done.store(true, Ordering::Release);
            let acceptors: Vec<_> = acceptors.into_iter().map(join).collect();
            (clients, acceptors)
        });
        let elapsed = start.elapsed();
        let mut result = StormResult {
            elapsed,
            ..StormResult::default()
        };
        for outcome in clients {
            result.connect_failures += outcome?;
        }
        for outcome in acceptors {
            result.connections += outcome?;
        }
        Ok(result)
    }
}

/// What the epoll storm's clients and acceptors share.
struct Served {
    /// Connections the clients have established.
    connected: AtomicU64,
    /// Connections the acceptors have closed after reading end-of-file.
    served: AtomicU64,
    /// Set once every client thread has returned.
    clients_done: AtomicBool,
    /// Set by any thread that fails, so the others stop rather than wait for it.
    abort: AtomicBool,
}

/// An epoll storm client: connects and closes until the deadline, keeping the number of
/// connections not yet served below [`MAX_IN_FLIGHT`]. Returns its failed connects.
fn client(
    index: usize,
    listeners: &[&Listener],
    sources: &[libc::sockaddr_in],
    deadline: Option<Instant>,
    stop: &AtomicBool,
    shared: &Served,
) -> io::Result<u64> {
    let mut failures = 0u64;
    let mut turn = index * 7;
    loop {
        if stop.load(Ordering::Relaxed)
            || super::interrupted()
            || shared.abort.load(Ordering::Relaxed)
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
            return Ok(failures);
        }
        let in_flight = shared
            .connected
            .load(Ordering::Relaxed)
            .saturating_sub(shared.served.load(Ordering::Relaxed));
        if in_flight >= MAX_IN_FLIGHT {
            thread::yield_now();
            continue;
        }
        let listener = listeners[turn % listeners.len()];
        let source = &sources[(turn / listeners.len()) % sources.len()];
        turn = turn.wrapping_add(1);
        let socket = tcp_socket()?;
        set_bind_no_port(&socket)?;
        bind(&socket, source)?;
        match connect(&socket, &listener.addr) {
            Ok(()) => {
                shared.connected.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                failures += 1;
                if failures >= MAX_CONNECT_FAILURES {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("storm: {failures} connect() calls failed, last: {e}"),
                    ));
                }
            }
        }
        // The client closes first, as in the loopback storm.
        drop(socket);
    }
}

/// An epoll storm acceptor: accepts on its listeners, closes each connection once it reads
/// end-of-file, and returns the connections it served once the clients are done and every
/// established connection has been served.
fn acceptor(listeners: &[Listener], shared: &Served, progress: &AtomicU64) -> io::Result<u64> {
    const PROGRESS_BATCH: u64 = 256;
    // SAFETY: plain system call; the descriptor is owned by the OwnedFd below.
    let ep = check(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
    // SAFETY: a fresh descriptor nothing else owns.
    let ep = unsafe { OwnedFd::from_raw_fd(ep) };
    for l in listeners {
        epoll_add(&ep, l.fd.as_raw_fd())?;
    }
    let is_listener = |fd: RawFd| listeners.iter().any(|l| l.fd.as_raw_fd() == fd);
    let mut open: HashMap<RawFd, OwnedFd> = HashMap::new();
    let mut served = 0u64;
    let mut events = [libc::epoll_event { events: 0, u64: 0 }; 64];
    let mut draining_since: Option<Instant> = None;
    loop {
        if shared.abort.load(Ordering::Relaxed) {
            return Err(io::Error::other("storm: another storm thread failed"));
        }
        if shared.clients_done.load(Ordering::Acquire) {
            let connected = shared.connected.load(Ordering::Relaxed);
            if shared.served.load(Ordering::Relaxed) >= connected {
                progress.fetch_add(served % PROGRESS_BATCH, Ordering::Relaxed);
                return Ok(served);
            }
            let since = *draining_since.get_or_insert_with(Instant::now);
            if since.elapsed() > SERVE_TIMEOUT {
                return Err(io::Error::other(format!(
                    "storm: {} connections were not served within {SERVE_TIMEOUT:?}",
                    connected.saturating_sub(shared.served.load(Ordering::Relaxed))
                )));
            }
        }
        // SAFETY: `events` is valid for writes of the length passed.
        let n = unsafe {
            libc::epoll_wait(
                ep.as_raw_fd(),
                events.as_mut_ptr(),
                events.len() as libc::c_int,
                10,
            )
        };
        let n = match check(n) {
            Ok(n) => n as usize,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        for event in &events[..n] {
            let fd = event.u64 as RawFd;
            if is_listener(fd) {
                while let Some(conn) = accept_nonblocking(fd)? {
                    epoll_add(&ep, conn.as_raw_fd())?;
                    open.insert(conn.as_raw_fd(), conn);
                }
                continue;
            }
            let Some(conn) = open.get(&fd) else { continue };
            let mut byte = [0u8; 1];
            // SAFETY: `byte` is valid for writes of its length.
            let got = unsafe { libc::read(conn.as_raw_fd(), byte.as_mut_ptr().cast(), 1) };
            match got {
                0 => {
                    // Closing the last descriptor also takes it out of the epoll set.
                    open.remove(&fd);
                    served += 1;
                    shared.served.fetch_add(1, Ordering::Relaxed);
                    if served.is_multiple_of(PROGRESS_BATCH) {
                        progress.fetch_add(PROGRESS_BATCH, Ordering::Relaxed);
                    }
                }
                n if n > 0 => {
                    return Err(io::Error::other(
                        "storm: the server read data where it expected end-of-file",
                    ))
                }
                _ => {
                    let e = io::Error::last_os_error();
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
                    ) {
                        return Err(e);
                    }
                }
            }
        }
    }
}

fn epoll_add(ep: &OwnedFd, fd: RawFd) -> io::Result<()> {
    let mut event = libc::epoll_event {
        events: libc::EPOLLIN as u32,
        u64: fd as u64,
    };
    // SAFETY: `event` is valid for the call; both descriptors are open.
    check(unsafe { libc::epoll_ctl(ep.as_raw_fd(), libc::EPOLL_CTL_ADD, fd, &mut event) }).map(drop)
}

/// The next connection waiting on a non-blocking listener, if any.
fn accept_nonblocking(listener: RawFd) -> io::Result<Option<OwnedFd>> {
    loop {
        // SAFETY: no address is requested; the descriptor is owned by the returned OwnedFd.
        let fd = unsafe {
            libc::accept4(
                listener,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC | libc::SOCK_NONBLOCK,
            )
        };
        match check(fd) {
            // SAFETY: a fresh descriptor nothing else owns.
            Ok(fd) => return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) })),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(None),
            Err(e) => return Err(e),
        }
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
        if stop.load(Ordering::Relaxed)
            || super::interrupted()
            || deadline.is_some_and(|d| Instant::now() >= d)
        {
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
fn listen_loopback(nonblocking: bool) -> io::Result<Listener> {
    let fd = tcp_socket()?;
    if nonblocking {
        // SAFETY: plain system calls on a descriptor we own.
        let flags = check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) })?;
        check(unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) })?;
    }
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

    fn small_storm(shape: Shape) -> Storm {
        Storm::new(StormConfig {
            shape,
            workers: 2,
            ports_per_worker: 2,
            sources: 3,
        })
        .expect("listeners on loopback")
    }

    #[test]
    fn storm_completes_connections() {
        for shape in Shape::ALL {
            let result = small_storm(shape)
                .run_for(Duration::from_millis(200))
                .expect("storm");
            assert!(result.connections > 0, "{shape:?}");
            assert_eq!(result.connect_failures, 0, "{shape:?}");
            assert_eq!(result.events(), result.connections * EVENTS_PER_CONNECTION);
        }
    }

    #[test]
    fn epoll_storm_has_eight_listeners() {
        assert_eq!(small_storm(Shape::Epoll).ports().count(), EPOLL_LISTENERS);
    }

    /// Traces the storm's own ports with bpftrace and checks that every connection made exactly
    /// the ten expected transitions, in both shapes: the benchmark's accounting rests on that.
    #[test]
    fn every_connection_makes_ten_transitions() {
        for shape in Shape::ALL {
            ten_transitions(shape);
        }
    }

    fn ten_transitions(shape: Shape) {
        // SAFETY: geteuid has no preconditions.
        // In CI (`CI=true`, as root, bpftrace installed by the test set-up) this must run.
        let in_ci = std::env::var("CI").as_deref() == Ok("true");
        if unsafe { libc::geteuid() } != 0 {
            assert!(!in_ci, "would be skipped in CI: needs root");
            eprintln!("skipped: needs root");
            return;
        }
        let Some(bpftrace) = which("bpftrace") else {
            assert!(
                !in_ci,
                "would be skipped in CI: needs bpftrace (`cargo xtask test` installs it)"
            );
            eprintln!("skipped: needs bpftrace");
            return;
        };
        let _tracefs = TracefsMount::ensure().expect("tracefs");
        let storm = small_storm(shape);
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
        // Lets the last connections' final ACKs be processed (on a loaded machine the
        // acceptor threads can be a while behind the storm's end).
        std::thread::sleep(Duration::from_millis(1000));
        // Runs the kernel skipped (another BPF program was running on the CPU: in the epoll
        // storm a softirq interrupts the program of another socket's transition). They are the
        // only events allowed to be missing.
        let misses = crate::bench::measure::tracepoint_prog_stats(child.id())
            .expect("bpftrace's program statistics")
            .recursion_misses;
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
        let keys: Vec<_> = counts.keys().collect();
        assert_eq!(
            keys,
            expected.keys().collect::<Vec<_>>(),
            "{shape:?} storm, bpftrace output:\n{text}"
        );
        let missing: u64 = counts.values().map(|&c| n.saturating_sub(c)).sum();
        // In the epoll storm a client socket's FIN_WAIT1 -> FIN_WAIT2 -> CLOSE now and then
        // reaches no BPF program and counts no skipped run: the softirq that processed it ran on
        // top of a task the kernel hides from BPF (on this project's VMs, the threads of PID 1;
        // docs/benchmark.md, "unaccounted"). Beyond the counted skips, only such pairs may be
        // missing, in at most one connection in a thousand.
        let deficit = |k: (u8, u8)| n.saturating_sub(counts.get(&k).copied().unwrap_or(0));
        let pairs = match shape {
            Shape::Epoll => deficit((4, 5)).min(deficit((5, 7))),
            Shape::Loopback => 0,
        };
        let unexplained = missing.saturating_sub(misses);
        if unexplained > 0 {
            eprintln!(
                "{shape:?} storm: {unexplained} transitions missing beyond the {misses} skipped \
                 runs (client closes without FIN_WAIT1 -> FIN_WAIT2 -> CLOSE: {pairs})"
            );
        }
        assert!(
            counts.values().all(|&c| c <= n) && unexplained <= 2 * pairs.min(n / 1000 + 1),
            "{shape:?} storm: {n} connections, {missing} transitions missing, {misses} recursion \
             misses; bpftrace output:\n{text}"
        );
    }
}
