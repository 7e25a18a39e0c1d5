//! Running the `tcppeer` example (tcpstate/examples/tcppeer.rs) from tests and reading its
//! JSON lines.

use std::{
    ffi::OsStr,
    io::{self, BufRead, BufReader, Read},
    path::{Path, PathBuf},
    process::{Child, Command, ExitStatus, Stdio},
    sync::mpsc::{self, Receiver, RecvTimeoutError},
    thread::{self, JoinHandle},
    time::{Duration, Instant},
};

use serde_json::Value;

use super::netns::wait_bounded;

/// Where cargo put the tcppeer example: `<target>/<profile>/examples/tcppeer`, next to the
/// `deps/` directory holding this test binary. Panics with instructions when it is missing.
pub fn peer_path() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    let profile_dir = exe
        .parent()
        .filter(|d| d.ends_with("deps"))
        .and_then(|d| d.parent());
    let Some(profile_dir) = profile_dir else {
        panic!(
            "cannot locate the tcppeer example from test binary {}",
            exe.display()
        );
    };
    let path = profile_dir.join("examples").join("tcppeer");
    if !path.is_file() {
        panic!(
            "{} is missing: run the tests with plain `cargo test -p tcpstate` (which builds \
             examples), or run `cargo build -p tcpstate --examples` first",
            path.display()
        );
    }
    path
}

/// What a finished tcppeer said.
#[derive(Debug)]
pub struct PeerOutput {
    pub status: ExitStatus,
    /// Every stdout line, parsed.
    pub lines: Vec<Value>,
    pub stderr: String,
}

impl PeerOutput {
    /// The per-connection records (`"event":"conn"`), in order.
    pub fn conns(&self) -> Vec<&Value> {
        self.lines.iter().filter(|v| v["event"] == "conn").collect()
    }

    /// Panics with the peer's stderr unless it exited with status 0.
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "tcppeer failed ({}): {}",
            self.status,
            self.stderr.trim()
        );
        self
    }
}

/// A running tcppeer. Dropping it kills the process if it is still running.
pub struct PeerProcess {
    child: Child,
    lines: Receiver<Value>,
    seen: Vec<Value>,
    stdout_reader: Option<JoinHandle<()>>,
    stderr_reader: Option<JoinHandle<String>>,
}

impl PeerProcess {
    /// Starts `tcppeer <mode> <args...>` (mode is "server" or "client").
    pub fn spawn<I, S>(mode: &str, args: I) -> io::Result<PeerProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new(peer_path());
        cmd.arg(mode).args(args);
        PeerProcess::spawn_command(cmd)
    }

    /// Starts `tcppeer <mode> <args...>` as a member of the cgroup v2 group at `cgroup_dir`
    /// from its first instruction (a shell joins the group, then execs the peer), so every
    /// system call of it is made from that group.
    pub fn spawn_in_cgroup<I, S>(mode: &str, cgroup_dir: &Path, args: I) -> io::Result<PeerProcess>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg(r#"echo $$ > "$1/cgroup.procs" && shift && exec "$@""#)
            .arg("sh")
            .arg(cgroup_dir)
            .arg(peer_path())
            .arg(mode)
            .args(args);
        PeerProcess::spawn_command(cmd)
    }

    fn spawn_command(mut cmd: Command) -> io::Result<PeerProcess> {
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        let (tx, rx) = mpsc::channel();
        let stdout = child.stdout.take();
        let stdout_reader = thread::spawn(move || {
            let Some(stdout) = stdout else {
                return;
            };
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else {
                    break;
                };
                let value = serde_json::from_str(&line)
                    .unwrap_or_else(|_| Value::String(format!("unparsed: {line}")));
                if tx.send(value).is_err() {
                    break;
                }
            }
        });
        let stderr = child.stderr.take();
        let stderr_reader = thread::spawn(move || {
            let mut text = String::new();
            if let Some(mut stderr) = stderr {
                let _ = stderr.read_to_string(&mut text);
            }
            text
        });
        Ok(PeerProcess {
            child,
            lines: rx,
            seen: Vec::new(),
            stdout_reader: Some(stdout_reader),
            stderr_reader: Some(stderr_reader),
        })
    }

    /// Starts a server and waits (bounded) for its "listening" line; returns it and the port.
    pub fn server<I, S>(args: I) -> io::Result<(PeerProcess, u16)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        PeerProcess::listening(PeerProcess::spawn("server", args)?)
    }

    /// A server started in a cgroup (`spawn_in_cgroup`), once it listens.
    pub fn server_in_cgroup<I, S>(cgroup_dir: &Path, args: I) -> io::Result<(PeerProcess, u16)>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        PeerProcess::listening(PeerProcess::spawn_in_cgroup("server", cgroup_dir, args)?)
    }

    fn listening(mut peer: PeerProcess) -> io::Result<(PeerProcess, u16)> {
        let line = peer.wait_event("listening", Duration::from_secs(10))?;
        let port = line["port"]
            .as_u64()
            .and_then(|p| u16::try_from(p).ok())
            .ok_or_else(|| io::Error::other(format!("bad listening line {line}")))?;
        Ok((peer, port))
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Waits for the next stdout line whose "event" is `event`, keeping the lines before it.
    pub fn wait_event(&mut self, event: &str, limit: Duration) -> io::Result<Value> {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(v) if v["event"] == event => {
                    self.seen.push(v.clone());
                    return Ok(v);
                }
                Ok(v) => self.seen.push(v),
                Err(RecvTimeoutError::Timeout) => {
                    return Err(io::Error::new(
                        io::ErrorKind::TimedOut,
                        format!("tcppeer printed no {event:?} line within {limit:?}"),
                    ))
                }
                Err(RecvTimeoutError::Disconnected) => {
                    return Err(io::Error::other(format!(
                        "tcppeer exited before printing a {event:?} line: {}",
                        self.take_stderr().trim()
                    )))
                }
            }
        }
    }

    fn take_stderr(&mut self) -> String {
        let _ = wait_bounded(&mut self.child, Duration::from_secs(5));
        self.stderr_reader
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default()
    }

    /// Waits for the process to exit (killing it after `limit`) and returns all it printed.
    pub fn finish(mut self, limit: Duration) -> io::Result<PeerOutput> {
        let status = wait_bounded(&mut self.child, limit)?;
        // The process is gone, so its pipes are closed and the readers end promptly.
        if let Some(h) = self.stdout_reader.take() {
            let _ = h.join();
        }
        let stderr = self
            .stderr_reader
            .take()
            .and_then(|h| h.join().ok())
            .unwrap_or_default();
        let mut lines = std::mem::take(&mut self.seen);
        lines.extend(self.lines.try_iter());
        Ok(PeerOutput {
            status,
            lines,
            stderr,
        })
    }
}

impl Drop for PeerProcess {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// Runs a client to completion (killed after `limit`).
pub fn run_client<I, S>(args: I, limit: Duration) -> io::Result<PeerOutput>
where
    I: IntoIterator<Item = S>,
    S: AsRef<OsStr>,
{
    PeerProcess::spawn("client", args)?.finish(limit)
}

/// A u64 field of a JSON record, with a message naming the field when it is absent.
pub fn field_u64(v: &Value, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("tcppeer record has no number {key:?}: {v}"))
}
