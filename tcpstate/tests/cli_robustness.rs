//! The `tcpstate` binary as a user runs it: clean stops, `kill -9`, a closed stdout, two tracers
//! at once, bad input. Tests that trace need root and say so otherwise.
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;

use std::{
    fs,
    io::{BufRead, BufReader},
    net::{TcpListener, TcpStream},
    path::Path,
    process::{Child, ChildStderr, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use probe_util::root;

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");

/// A running tracer whose stderr is read on a thread.
struct Tracer {
    child: Child,
    stderr: mpsc::Receiver<String>,
    stderr_lines: Vec<String>,
}

impl Tracer {
    fn start(args: &[&str], stdout: Stdio) -> Tracer {
        let mut child = Command::new(BIN)
            .args(args)
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tcpstate");
        let stderr: ChildStderr = child.stderr.take().expect("stderr");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let mut t = Tracer {
            child,
            stderr: rx,
            stderr_lines: Vec::new(),
        };
        t.wait_line("tcpstate: tracing", Duration::from_secs(20));
        t
    }

    fn wait_line(&mut self, prefix: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.stderr.recv_timeout(left) {
                Ok(line) => {
                    self.stderr_lines.push(line.clone());
                    if line.starts_with(prefix) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "tcpstate printed no {prefix:?} line within {limit:?}; stderr: {:?}",
                    self.stderr_lines
                ),
            }
        }
    }

    fn signal(&self, sig: i32) {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    /// Waits (bounded) for the exit; kills it when it does not stop.
    fn wait(&mut self, limit: Duration) -> i32 {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().expect("wait") {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("tcpstate did not exit within {limit:?}");
    }

    /// The ids of BPF programs this process holds, from /proc/PID/fdinfo.
    fn program_ids(&self) -> Vec<u32> {
        let dir = format!("/proc/{}/fdinfo", self.child.id());
        let mut ids = Vec::new();
        for entry in fs::read_dir(dir).into_iter().flatten().flatten() {
            let text = fs::read_to_string(entry.path()).unwrap_or_default();
            ids.extend(
                text.lines()
                    .filter_map(|l| l.strip_prefix("prog_id:"))
                    .filter_map(|v| v.trim().parse::<u32>().ok()),
            );
        }
        ids
    }
}

impl Drop for Tracer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn loaded(id: u32) -> bool {
    aya::programs::loaded_programs()
        .filter_map(Result::ok)
        .any(|p| p.id() == id)
}

#[test]
fn kill_9_leaves_nothing_attached_or_pinned() {
    if !root() {
        return;
    }
    let pinned_before: Vec<_> = fs::read_dir("/sys/fs/bpf")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    let mut t = Tracer::start(&["trace"], Stdio::null());
    let ids = t.program_ids();
    assert!(!ids.is_empty(), "the tracer holds its program");
    assert!(ids.iter().all(|&id| loaded(id)));
    t.signal(libc::SIGKILL);
    t.wait(Duration::from_secs(5));
    let deadline = Instant::now() + Duration::from_secs(5);
    while ids.iter().any(|&id| loaded(id)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        !ids.iter().any(|&id| loaded(id)),
        "programs {ids:?} survived kill -9"
    );
    let pinned_after: Vec<_> = fs::read_dir("/sys/fs/bpf")
        .map(|d| d.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert_eq!(pinned_before, pinned_after, "nothing may be pinned");
}

#[test]
fn sigterm_and_sigint_stop_cleanly_with_the_summary() {
    if !root() {
        return;
    }
    for sig in [libc::SIGTERM, libc::SIGINT] {
        let mut t = Tracer::start(&["trace"], Stdio::null());
        let ids = t.program_ids();
        t.signal(sig);
        let line = t.wait_line("tcpstate: ", Duration::from_secs(10));
        assert!(
            line.contains("events delivered") && line.contains("lost"),
            "{line}"
        );
        assert_eq!(t.wait(Duration::from_secs(10)), 0, "signal {sig}");
        let deadline = Instant::now() + Duration::from_secs(5);
        while ids.iter().any(|&id| loaded(id)) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(!ids.iter().any(|&id| loaded(id)));
    }
}

#[test]
fn closed_stdout_stops_the_tracer() {
    if !root() {
        return;
    }
    let port = probe_util::free_port("127.0.0.1".parse().expect("ip"));
    let port_s = port.to_string();
    let mut t = Tracer::start(
        &["trace", "--transitions", "--port", &port_s],
        Stdio::piped(),
    );
    // Read one line, then close the pipe as `| head -1` does.
    let stdout = t.child.stdout.take().expect("stdout");
    let l = TcpListener::bind(("127.0.0.1", port)).expect("listen");
    let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    drop((l.accept(), c, l));
    let mut first = String::new();
    BufReader::new(stdout)
        .read_line(&mut first)
        .expect("read a line");
    assert!(!first.is_empty());
    // The reader is gone now; the tracer must notice and stop on its own.
    let line = t.wait_line("tcpstate: ", Duration::from_secs(10));
    assert!(line.contains("events delivered"), "{line}");
    assert_eq!(t.wait(Duration::from_secs(10)), 0);
}

#[test]
fn two_tracers_both_see_every_event() {
    if !root() {
        return;
    }
    let port = probe_util::free_port("127.0.0.1".parse().expect("ip"));
    let port_s = port.to_string();
    let dir = tempdir();
    let outs = [dir.join("a.txt"), dir.join("b.txt")];
    let mut tracers: Vec<Tracer> = outs
        .iter()
        .map(|p| {
            let f = fs::File::create(p).expect("create output");
            Tracer::start(
                &["trace", "--transitions", "-o", "json", "--port", &port_s],
                Stdio::from(f),
            )
        })
        .collect();
    let l = TcpListener::bind(("127.0.0.1", port)).expect("listen");
    for _ in 0..20 {
        let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (s, _) = l.accept().expect("accept");
        drop((c, s));
    }
    drop(l);
    std::thread::sleep(Duration::from_millis(300));
    for t in &mut tracers {
        t.signal(libc::SIGINT);
        assert_eq!(t.wait(Duration::from_secs(10)), 0);
    }
    for p in &outs {
        let text = fs::read_to_string(p).expect("read output");
        let n = text
            .lines()
            .filter(|l| l.contains("\"tcpstate.transition.v2\""))
            .count();
        assert_eq!(n, 20 * 10 + 2, "{}: {n} transitions", p.display());
    }
    let _ = fs::remove_dir_all(&dir);
}

fn tempdir() -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("tcpstate-test-{}-{}", std::process::id(), line!()));
    fs::create_dir_all(&d).expect("temp dir");
    d
}

#[test]
fn bad_flags_are_one_line_errors() {
    for args in [
        &["trace", "--buffer-size", "3M"][..],
        &["trace", "--port", "0"],
        &["trace", "--addr", "10.0.0.0/99"],
        &["trace", "--duration", "-1"],
        &["trace", "--comm", "a-name-longer-than-fifteen"],
        &["replay"],
    ] {
        let out = Command::new(BIN).args(args).output().expect("run");
        assert_ne!(out.status.code(), Some(0), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            err.starts_with("error:") || err.starts_with("tcpstate: error:"),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
}

#[test]
fn non_root_gets_a_clear_message_and_nothing_loads() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        // Without root we are the non-root user: the real message is checked directly.
        let out = Command::new(BIN).arg("trace").output().expect("run");
        assert_eq!(out.status.code(), Some(1));
        assert!(String::from_utf8_lossy(&out.stderr).contains("run it with sudo"));
        return;
    }
    // Drop to nobody with setpriv (util-linux); the binary must be readable by that user.
    let copy = std::env::temp_dir().join(format!("tcpstate-nonroot-{}", std::process::id()));
    fs::copy(BIN, &copy).expect("copy binary");
    let _ = Command::new("chmod").arg("755").arg(&copy).status();
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "--inh-caps=-all",
        ])
        .arg(&copy)
        .arg("trace")
        .output();
    let _ = fs::remove_file(&copy);
    let Ok(out) = out else {
        skip::skip(
            "non_root_gets_a_clear_message_and_nothing_loads",
            "setpriv (util-linux) is not installed",
        );
        return;
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(err.contains("needs root") && err.contains("sudo"), "{err}");
    assert!(Path::new(BIN).exists());
}

/// A 64 KiB tmpfs, unmounted (and its directory removed) on drop, also when the test fails.
struct SmallFs(std::path::PathBuf);

impl SmallFs {
    fn mount() -> SmallFs {
        let dir = tempdir().join("smallfs");
        fs::create_dir_all(&dir).expect("mount point");
        let ok = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=64k", "tcpstate-test"])
            .arg(&dir)
            .status()
            .expect("run mount");
        assert!(ok.success(), "mounting a tmpfs");
        SmallFs(dir)
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
        let _ = fs::remove_dir_all(self.0.parent().unwrap_or(&self.0));
    }
}

#[test]
fn disk_full_while_recording_stops_with_a_clear_error_and_a_valid_prefix() {
    if !root() {
        return;
    }
    let small = SmallFs::mount();
    let rec = small.0.join("rec.tsr");
    let port = probe_util::free_port("127.0.0.1".parse().expect("ip"));
    let port_s = port.to_string();
    let rec_s = rec.to_string_lossy().into_owned();
    let mut t = Tracer::start(
        &["trace", "--port", &port_s, "--record", &rec_s],
        Stdio::null(),
    );
    // Each connection records 10 events of 120 bytes: 200 of them overflow 64 KiB.
    let l = TcpListener::bind(("127.0.0.1", port)).expect("listen");
    for _ in 0..200 {
        let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (s, _) = l.accept().expect("accept");
        drop((c, s));
    }
    drop(l);
    let err = t.wait_line("tcpstate: error:", Duration::from_secs(10));
    assert!(err.contains("disk full") && err.contains(&rec_s), "{err}");
    assert_eq!(
        t.wait(Duration::from_secs(10)),
        1,
        "data was lost: non-zero exit"
    );
    assert!(
        t.stderr_lines
            .iter()
            .any(|l| l.contains("events delivered"))
            || t.wait_line("tcpstate: ", Duration::from_secs(5))
                .contains("events delivered"),
        "the final counts are still printed: {:?}",
        t.stderr_lines
    );
    // Everything that made it to the disk replays; the damage, if any, is named by offset.
    let out = Command::new(BIN)
        .args(["replay", "-o", "json"])
        .arg(&rec)
        .output()
        .expect("replay");
    let text = String::from_utf8_lossy(&out.stdout);
    let conns = text
        .lines()
        .filter(|l| l.contains("tcpstate.connection.v2"))
        .count();
    assert!(conns > 10, "replayed {conns} connections");
    if out.status.code() != Some(0) {
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains("at byte"), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
    }
}

/// SIGKILL flushes nothing: the recording must already hold everything older than a second
/// (the trace loop hands it to the file system at least twice a second).
#[test]
fn a_recording_survives_kill_9() {
    if !root() {
        return;
    }
    const N: usize = 10;
    // Its own directory: tempdir() is shared by the tests of this file, which remove it.
    let dir = std::env::temp_dir().join(format!("tcpstate-kill9-{}", std::process::id()));
    fs::create_dir_all(&dir).expect("temp dir");
    let rec = dir.join("killed.tsr");
    let port = probe_util::free_port("127.0.0.1".parse().expect("ip"));
    let port_s = port.to_string();
    let rec_s = rec.to_string_lossy().into_owned();
    let l = TcpListener::bind(("127.0.0.1", port)).expect("listen");
    let mut t = Tracer::start(
        &["trace", "--port", &port_s, "--record", &rec_s],
        Stdio::null(),
    );
    for _ in 0..N {
        let c = TcpStream::connect(("127.0.0.1", port)).expect("connect");
        let (s, _) = l.accept().expect("accept");
        drop((c, s));
    }
    std::thread::sleep(Duration::from_millis(1500));
    t.signal(libc::SIGKILL);
    t.wait(Duration::from_secs(5));
    drop(l);
    let out = Command::new(BIN)
        .args(["replay", "-o", "json"])
        .arg(&rec)
        .output()
        .expect("replay");
    let text = String::from_utf8_lossy(&out.stdout);
    let err = String::from_utf8_lossy(&out.stderr);
    let ours = |role: &str| {
        text.lines()
            .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
            .filter(|v| v["schema"] == "tcpstate.connection.v2" && v["role"] == role)
            .filter(|v| v["outcome"] != "open")
            .filter(|v| v["lport"] == port || v["rport"] == port)
            .count()
    };
    assert_eq!(ours("client"), N, "{text}\n{err}");
    assert_eq!(ours("server"), N, "{text}\n{err}");
    // A file cut inside a record replays its valid prefix and says where it ends.
    if out.status.code() != Some(0) {
        assert_eq!(out.status.code(), Some(1), "{err}");
        assert!(err.contains("at byte"), "{err}");
    }
    let _ = fs::remove_dir_all(&dir);
}
