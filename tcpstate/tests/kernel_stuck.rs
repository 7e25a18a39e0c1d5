//! A CLOSE_WAIT leak seen while it leaks: a server that does not close its accepted socket
//! after the client's FIN, and `tcpstate trace --stuck CLOSE_WAIT=1000 -o json --port P` run as
//! a user would. The `tcpstate.stuck.v1` object must reach the tracer's stdout within a second
//! of the crossing (the drain tick, at most 100 ms apart when idle, and the 10 ms reorder window
//! are all it should wait), name the leaking server as the owner, and come while the leak is
//! still going on. Needs root.
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;
mod support;

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use probe_util::{free_port, root};
use serde_json::Value;
use support::{run_client, PeerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");
const LIMIT: Duration = Duration::from_secs(20);
/// How long the server stays in CLOSE_WAIT: well past the 1 s threshold.
const LEAK_MS: u64 = 4000;

/// CLOCK_MONOTONIC, the clock of the kernel's event times.
fn mono_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec for the call to fill.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Kills the tracer if the test fails half way.
struct Tracer(std::process::Child);

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn a_close_wait_leak_is_reported_while_it_leaks() {
    if !root() {
        return;
    }
    let port = free_port("127.0.0.1".parse().expect("ip"));
    let port_s = port.to_string();
    let mut child = Command::new(BIN)
        .args([
            "trace",
            "--stuck",
            "CLOSE_WAIT=1000",
            "-o",
            "json",
            "--port",
            &port_s,
        ])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start tcpstate");
    let stdout = child.stdout.take().expect("stdout");
    let stderr = child.stderr.take().expect("stderr");
    let mut tracer = Tracer(child);
    let mut err_lines = BufReader::new(stderr).lines();
    let deadline = Instant::now() + LIMIT;
    loop {
        assert!(Instant::now() < deadline, "tcpstate did not start");
        match err_lines.next() {
            Some(Ok(l)) if l.starts_with("tcpstate: tracing") => break,
            Some(Ok(_)) => continue,
            _ => panic!("tcpstate exited before tracing"),
        }
    }
    std::thread::spawn(move || for _ in err_lines {});
    // Each line with the moment it reached us.
    let (tx, rx) = mpsc::channel::<(u64, Value)>();
    let reader = std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            let at = mono_ns();
            let v = serde_json::from_str(&line).unwrap_or(Value::Null);
            if tx.send((at, v)).is_err() {
                break;
            }
        }
    });

    let listen = format!("127.0.0.1:{port}");
    let leak = LEAK_MS.to_string();
    let (server, _) = PeerProcess::server([
        "--listen",
        listen.as_str(),
        "--close-wait-ms",
        leak.as_str(),
    ])
    .expect("server");
    let server_pid = server.pid();
    let client_started = mono_ns();
    run_client(["--connect", listen.as_str()], LIMIT)
        .expect("client")
        .assert_success();

    // The stuck object, before the server closes.
    let deadline = Instant::now() + Duration::from_millis(LEAK_MS + 5000);
    let (arrived, stuck) = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((at, v)) if v["schema"] == "tcpstate.stuck.v1" => break (at, v),
            Ok(_) => continue,
            Err(e) => panic!("no tcpstate.stuck.v1 object: {e}"),
        }
    };
    let crossing = stuck["ts_ns"].as_u64().expect("ts_ns");
    let since = stuck["since_ns"].as_u64().expect("since_ns");
    let latency_ms = arrived.saturating_sub(crossing) as f64 / 1e6;
    eprintln!("stuck object arrived {latency_ms:.1} ms after the crossing: {stuck}");
    assert_eq!(stuck["state"], "CLOSE_WAIT");
    assert_eq!(stuck["age_ns"], 1_000_000_000u64);
    assert_eq!(crossing, since + 1_000_000_000);
    assert!(
        since > client_started,
        "entered CLOSE_WAIT during the test: {stuck}"
    );
    assert_eq!(
        stuck["pid"], server_pid,
        "owner is the leaking server: {stuck}"
    );
    assert_eq!(stuck["comm"], "tcppeer");
    assert_eq!(stuck["lport"], u64::from(port));
    assert_eq!(stuck["partial"], false);
    assert!(arrived >= crossing, "printed before the crossing: {stuck}");
    assert!(
        latency_ms < 1000.0,
        "arrived {latency_ms:.1} ms after the crossing"
    );
    // While the leak goes on: the server still holds the socket in CLOSE_WAIT.
    assert!(
        arrived < since + LEAK_MS * 1_000_000,
        "arrived after the server closed"
    );

    let out = server.finish(LIMIT).expect("server");
    out.assert_success();
    // The connection object follows when the socket closes; no second stuck object.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut more_stuck = 0;
    let conn = loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok((_, v)) if v["schema"] == "tcpstate.stuck.v1" => more_stuck += 1,
            Ok((_, v)) if v["schema"] == "tcpstate.connection.v2" && v["id"] == stuck["id"] => {
                break v
            }
            Ok(_) => continue,
            Err(e) => panic!("no connection object for the stuck socket: {e}"),
        }
    };
    assert_eq!(more_stuck, 0);
    assert_eq!(conn["role"], "server");
    assert!(
        conn["close_wait_ns"]
            .as_u64()
            .is_some_and(|n| n >= LEAK_MS * 1_000_000),
        "{conn}"
    );
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(tracer.0.id() as i32, libc::SIGINT) };
    let deadline = Instant::now() + LIMIT;
    let status = loop {
        if let Some(s) = tracer.0.try_wait().expect("wait") {
            break s;
        }
        assert!(Instant::now() < deadline, "tcpstate did not stop");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(status.success(), "tcpstate exit: {status}");
    let _ = reader.join();
}
