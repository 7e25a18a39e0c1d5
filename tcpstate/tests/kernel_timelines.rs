//! `tcpstate trace` end to end on real loopback connections made by `tcppeer`: each scenario's
//! connections must come out with the right role, outcome, closer and phase times, and
//! `tcpstate replay` of the recording must print the very same bytes. Needs root.

mod probe_util;
mod support;

use std::{
    fs,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use probe_util::{free_port, root};
use serde_json::Value;
use support::{field_u64, run_client, PeerProcess};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");
const LIMIT: Duration = Duration::from_secs(20);

struct Trace {
    child: Child,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Trace {
    /// Starts `tcpstate trace --port PORT --record FILE EXTRA` and waits until it is attached.
    /// Without `-o` in EXTRA, the output is JSON.
    fn start(port: u16, extra: &[&str]) -> Trace {
        let dir = std::env::temp_dir().join(format!(
            "tcpstate-timelines-{}-{port}",
            std::process::id()
        ));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).expect("temp dir");
        let out = fs::File::create(dir.join("live.json")).expect("output file");
        let port_s = port.to_string();
        let rec = dir.join("rec.tsr");
        let rec_s = rec.to_string_lossy().into_owned();
        let mut args = vec!["trace", "--port", &port_s, "--record", &rec_s];
        if !extra.contains(&"-o") {
            args.extend_from_slice(&["-o", "json"]);
        }
        args.extend_from_slice(extra);
        let mut child = Command::new(BIN)
            .args(&args)
            .stdout(Stdio::from(out))
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpstate");
        let stderr = child.stderr.take().expect("stderr");
        let mut lines = BufReader::new(stderr).lines();
        let deadline = Instant::now() + LIMIT;
        loop {
            assert!(Instant::now() < deadline, "tcpstate did not start");
            match lines.next() {
                Some(Ok(l)) if l.starts_with("tcpstate: tracing") => break,
                Some(Ok(_)) => continue,
                _ => panic!("tcpstate exited before tracing"),
            }
        }
        // Keep draining stderr so the tracer never blocks on it.
        std::thread::spawn(move || for _ in lines {});
        Trace {
            child,
            dir,
            extra: extra.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Stops the tracer, returns the connection objects it printed, and checks that replaying
    /// the recording prints exactly the same bytes.
    fn stop(mut self) -> Vec<Value> {
        // Let the last events reach user space before the stop.
        std::thread::sleep(Duration::from_millis(200));
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + LIMIT;
        let status = loop {
            if let Some(s) = self.child.try_wait().expect("wait") {
                break s;
            }
            assert!(Instant::now() < deadline, "tcpstate did not stop");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "tcpstate exit: {status}");
        let live = fs::read(self.dir.join("live.json")).expect("live output");
        let mut replay = Command::new(BIN);
        replay.arg("replay").arg(self.dir.join("rec.tsr"));
        if !self.extra.iter().any(|a| a == "-o") {
            replay.args(["-o", "json"]);
        }
        let replay = replay.args(&self.extra).output().expect("run replay");
        assert!(replay.status.success(), "replay: {:?}", replay);
        assert_eq!(
            String::from_utf8_lossy(&replay.stdout),
            String::from_utf8_lossy(&live),
            "replay must print what the live trace printed"
        );
        let text = String::from_utf8_lossy(&live).into_owned();
        // Table output has no objects to return; the comparison above is its test.
        text.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
            .filter(|v| v["schema"] == "tcpstate.connection.v1")
            .collect()
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}

fn find<'a>(conns: &'a [Value], role: &str) -> Vec<&'a Value> {
    conns.iter().filter(|c| c["role"] == role).collect()
}

fn one<'a>(conns: &'a [Value], role: &str) -> &'a Value {
    let found = find(conns, role);
    assert_eq!(found.len(), 1, "one {role} in {conns:#?}");
    found[0]
}

fn ms(v: &Value, key: &str) -> f64 {
    v[key].as_f64().unwrap_or_else(|| panic!("no {key} in {v}"))
}

fn run_scenario(server_args: &[&str], client_args: &[&str]) -> (Vec<Value>, u32, u32) {
    let port = free_port("127.0.0.1".parse().expect("ip"));
    let listen = format!("127.0.0.1:{port}");
    let trace = Trace::start(port, &[]);
    let mut sargs = vec!["--listen", listen.as_str()];
    sargs.extend_from_slice(server_args);
    let (srv, _) = PeerProcess::server(&sargs).expect("server");
    let server_pid = srv.pid();
    let mut cargs = vec!["--connect", listen.as_str()];
    cargs.extend_from_slice(client_args);
    let out = run_client(&cargs, LIMIT).expect("client");
    out.assert_success();
    let client_pid = field_u64(&out.lines[0], "pid") as u32;
    srv.finish(LIMIT).expect("server").assert_success();
    (trace.stop(), client_pid, server_pid)
}

#[test]
fn client_closes_first() {
    if !root() {
        return;
    }
    let (conns, cpid, spid) = run_scenario(&[], &[]);
    let c = one(&conns, "client");
    assert_eq!((c["outcome"].as_str(), c["closer"].as_str()), (Some("time_wait"), Some("local")));
    assert_eq!(c["time_wait"], true);
    assert_eq!(c["pid"], cpid);
    assert!(ms(c, "handshake_ms") > 0.0);
    let s = one(&conns, "server");
    assert_eq!((s["outcome"].as_str(), s["closer"].as_str()), (Some("closed"), Some("remote")));
    assert_eq!(s["pid"], spid);
    assert_eq!(s["peer_id"], c["id"], "both ends paired");
    let l = one(&conns, "listener");
    assert_eq!(l["pid"], spid);
}

#[test]
fn server_closes_first() {
    if !root() {
        return;
    }
    let (conns, _, _) = run_scenario(&["--close-first"], &["--wait-eof"]);
    let c = one(&conns, "client");
    assert_eq!((c["outcome"].as_str(), c["closer"].as_str()), (Some("closed"), Some("remote")));
    let s = one(&conns, "server");
    assert_eq!((s["outcome"].as_str(), s["closer"].as_str()), (Some("time_wait"), Some("local")));
}

#[test]
fn reset_with_linger_zero() {
    if !root() {
        return;
    }
    let (conns, _, _) = run_scenario(&["--close-first", "--linger0"], &["--wait-eof"]);
    assert_eq!(one(&conns, "server")["outcome"], "reset");
    assert_eq!(one(&conns, "client")["outcome"], "reset");
}

#[test]
fn refused_connect() {
    if !root() {
        return;
    }
    let port = free_port("127.0.0.1".parse().expect("ip"));
    let trace = Trace::start(port, &[]);
    let out = run_client(["--connect", &format!("127.0.0.1:{port}")], LIMIT).expect("client");
    assert_eq!(out.conns()[0]["result"], "refused");
    let conns = trace.stop();
    let c = one(&conns, "client");
    assert_eq!(c["outcome"], "refused");
    assert!(ms(c, "life_ms") < 1000.0);
}

#[test]
fn close_wait_of_one_second_is_measured() {
    if !root() {
        return;
    }
    let (conns, _, spid) = run_scenario(&["--close-wait-ms", "1000"], &[]);
    let s = one(&conns, "server");
    assert_eq!(s["closer"], "remote");
    assert_eq!(s["pid"], spid, "the process that leaked CLOSE_WAIT");
    let cw = ms(s, "close_wait_ms");
    assert!((cw - 1000.0).abs() <= 50.0, "CLOSE_WAIT {cw} ms");
}

#[test]
fn half_close_with_data_after_shutdown() {
    if !root() {
        return;
    }
    let (conns, _, _) = run_scenario(
        &["--shutdown-write-then-read"],
        &["--wait-eof", "--send", "5000"],
    );
    let s = one(&conns, "server");
    // The server shut its side first, then kept reading: it is the first closer, and the
    // connection still ends normally.
    assert_eq!(s["closer"], "local");
    assert_eq!(s["outcome"], "time_wait");
    let c = one(&conns, "client");
    assert_eq!((c["closer"].as_str(), c["outcome"].as_str()), (Some("remote"), Some("closed")));
    assert!(ms(c, "close_wait_ms") >= 0.0);
}

#[test]
fn ipv6_connection() {
    if !root() {
        return;
    }
    let port = free_port("::1".parse().expect("ip"));
    let listen = format!("[::1]:{port}");
    let trace = Trace::start(port, &[]);
    let (srv, _) = PeerProcess::server(["--listen", &listen]).expect("server");
    run_client(["--connect", &listen], LIMIT)
        .expect("client")
        .assert_success();
    srv.finish(LIMIT).expect("server").assert_success();
    let conns = trace.stop();
    let c = one(&conns, "client");
    assert_eq!(c["family"], "ipv6");
    assert_eq!(c["raddr"], "::1");
    assert_eq!(c["outcome"], "time_wait");
}

/// The other output forms replay identically too.
#[test]
fn table_timeline_and_transitions_replay_identically() {
    if !root() {
        return;
    }
    for extra in [
        &["-o", "table", "--timeline"][..],
        &["-o", "table", "--transitions", "-T"],
        &["-o", "table", "-w", "-t"],
        &["--timeline"],
        &["--transitions"],
    ] {
        let port = free_port("127.0.0.1".parse().expect("ip"));
        let listen = format!("127.0.0.1:{port}");
        let trace = Trace::start(port, extra);
        let (srv, _) = PeerProcess::server(["--listen", &listen, "--accept", "3"]).expect("srv");
        run_client(["--connect", &listen, "--count", "3"], LIMIT)
            .expect("client")
            .assert_success();
        srv.finish(LIMIT).expect("server").assert_success();
        // stop() compares replay with live (in JSON plus these flags).
        trace.stop();
    }
}
