//! `tcpstate top` under a real terminal emulator: tmux (installed by the test set-up) runs it in
//! a detached session of a fixed size on a server of the test's own (`tmux -L`), the test reads
//! the screen with `capture-pane`, types keys with `send-keys`, and checks that `q` gives the
//! terminal back (the alternate screen left, the shell after it running). The replay test needs
//! no root and is deterministic: it shows the committed recording `testdata/top.tsr`; the live
//! test makes the same kinds of connections (a CLOSE_WAIT leak, refused connects, a burst) with
//! the tcppeer example and reads them off the live screen. Every wait is bounded; the tmux
//! server (and with it tcpstate) is killed when the test ends, failed or not.

#[cfg_attr(not(feature = "kernel"), allow(dead_code))]
mod skip;
#[cfg(feature = "kernel")]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");
const WIDTH: u16 = 160;
const HEIGHT: u16 = 50;
const LIMIT: Duration = Duration::from_secs(20);
/// What the shell prints once tcpstate has exited, with its status.
const EXITED: &str = "TOP-EXITED rc=";

fn testdata(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("testdata")
        .join(name)
}

fn have_tmux() -> bool {
    Command::new("tmux")
        .arg("-V")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A tmux server of the test's own running one session; killed on drop.
struct Tmux {
    socket: String,
}

impl Tmux {
    /// Starts `cmd` (a shell command line) in a WIDTH x HEIGHT session.
    fn start(name: &str, cmd: &str) -> Tmux {
        let socket = format!("tcpstate-top-{name}-{}", std::process::id());
        let t = Tmux { socket };
        // The shell says how tcpstate ended, then stays so the pane can be read.
        let line = format!("{cmd}; echo {EXITED}$?; sleep 120");
        let out = t.tmux(&[
            "new-session",
            "-d",
            "-x",
            &WIDTH.to_string(),
            "-y",
            &HEIGHT.to_string(),
            &line,
        ]);
        assert!(
            out.status.success(),
            "tmux new-session: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        t
    }

    fn tmux(&self, args: &[&str]) -> Output {
        Command::new("tmux")
            .args(["-L", &self.socket, "-f", "/dev/null"])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("running tmux")
    }

    fn screen(&self) -> String {
        let out = self.tmux(&["capture-pane", "-p"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn keys(&self, keys: &[&str]) {
        let mut args = vec!["send-keys"];
        args.extend_from_slice(keys);
        let out = self.tmux(&args);
        assert!(out.status.success(), "tmux send-keys {keys:?}");
    }

    /// Types text literally (no key names).
    fn type_text(&self, text: &str) {
        let out = self.tmux(&["send-keys", "-l", text]);
        assert!(out.status.success(), "tmux send-keys -l {text:?}");
    }

    /// The pid of tcpstate: the pane's shell's child.
    fn top_pid(&self) -> i32 {
        let out = self.tmux(&["display-message", "-p", "#{pane_pid}"]);
        let shell: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .expect("pane pid");
        let children = std::fs::read_to_string(format!("/proc/{shell}/task/{shell}/children"))
            .expect("the shell's children");
        children
            .split_whitespace()
            .next()
            .and_then(|p| p.parse().ok())
            .expect("tcpstate's pid")
    }

    fn alternate_on(&self) -> bool {
        let out = self.tmux(&["display-message", "-p", "#{alternate_on}"]);
        String::from_utf8_lossy(&out.stdout).trim() == "1"
    }

    /// Waits (bounded) until the screen satisfies `ok`; panics with the screen otherwise.
    fn wait_for(&self, what: &str, ok: impl Fn(&str) -> bool) -> String {
        let start = Instant::now();
        loop {
            let s = self.screen();
            if ok(&s) {
                return s;
            }
            if start.elapsed() > LIMIT {
                panic!("waited {LIMIT:?} for {what}; the screen:\n{s}");
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// `q`, then the terminal must be back: the shell's line after tcpstate with status 0 and
    /// the alternate screen left.
    fn quit_and_check_restored(&self) {
        self.keys(&["q"]);
        let s = self.wait_for("tcpstate to exit", |s| s.contains(EXITED));
        assert!(
            s.contains(&format!("{EXITED}0")),
            "exit status; screen:\n{s}"
        );
        assert!(!self.alternate_on(), "still on the alternate screen:\n{s}");
        assert!(
            !s.contains("tcpstate top "),
            "the view is left on screen:\n{s}"
        );
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = self.tmux(&["kill-server"]);
    }
}

/// The line of `screen` holding every one of `parts`.
fn line_with<'a>(screen: &'a str, parts: &[&str]) -> Option<&'a str> {
    screen.lines().find(|l| parts.iter().all(|p| l.contains(p)))
}

/// The cells of a table row, split on whitespace, without the border.
fn cells(line: &str) -> Vec<&str> {
    line.trim_matches(|c: char| c == '│' || c.is_whitespace())
        .split_whitespace()
        .collect()
}

fn tmux_or_skip(test: &str) -> bool {
    if have_tmux() {
        return true;
    }
    skip::skip(
        test,
        "tmux is not installed (`cargo xtask setup` installs it)",
    );
    false
}

/// The committed recording (made with `trace --port 24711-24713 --record` while tcppeer made a
/// CLOSE_WAIT leak on 24711, 3 refused connects to 24712 and a burst of 20 to 24713) shown at
/// 50x: what is on screen is decided by the recording alone.
#[test]
fn replay_shows_the_recording_and_keys_work() {
    if !tmux_or_skip("replay_shows_the_recording_and_keys_work") {
        return;
    }
    let rec = testdata("top.tsr");
    let t = Tmux::start(
        "replay",
        &format!(
            "{BIN} top --replay {} --speed 50 --stuck CLOSE_WAIT=2000",
            rec.display()
        ),
    );
    let s = t.wait_for("the replay to finish", |s| s.contains("finished"));
    assert!(t.alternate_on(), "top draws on the alternate screen");
    assert!(
        s.contains("open sockets by state:  CLOSE_WAIT 1  LISTEN 1"),
        "{s}"
    );
    // The leak, with its owner (the recording's server pid) and its age at the end.
    let leak = line_with(&s, &["CLOSE_WAIT", "127.0.0.1:24711"]).unwrap_or_else(|| panic!("{s}"));
    let c = cells(leak);
    assert_eq!(c[0], "CLOSE_WAIT", "{leak}");
    assert_eq!(c[2], "30750", "the leaking server's pid: {leak}");
    assert_eq!(c[3], "tcppeer", "{leak}");
    // 2.2 s in CLOSE_WAIT at the end, past the 2 s given.
    assert_eq!(c.last(), Some(&"stuck"), "{leak}");
    // Per port: 20 accepted on 24713, 3 refused inbound on 24712 (totals columns).
    let burst = line_with(&s, &["│24713 "]).unwrap_or_else(|| panic!("{s}"));
    assert_eq!(cells(burst)[7], "20", "accepted on 24713: {burst}");
    let refused = line_with(&s, &["│24712 "]).unwrap_or_else(|| panic!("{s}"));
    assert_eq!(cells(refused)[8], "3", "refused on 24712: {refused}");
    // Per process: 24 connects, 3 failed with ECONNREFUSED.
    let proc_row = line_with(&s, &["│tcppeer "]).unwrap_or_else(|| panic!("{s}"));
    let c = cells(proc_row);
    assert_eq!(
        (c[7], c[8], c[9]),
        ("24", "3", "ECONNREFUSED:3"),
        "{proc_row}"
    );
    assert!(s.contains("lost 0 (last interval 0)"), "{s}");

    // s: the sort column cycles.
    t.keys(&["s"]);
    t.wait_for("sort: total", |s| s.contains("sort: total"));
    // /: filter by port; only the matching port row stays.
    t.keys(&["/"]);
    t.type_text("24712");
    t.keys(&["Enter"]);
    let s = t.wait_for("the filter", |s| s.contains("filter: 24712"));
    assert!(line_with(&s, &["│24712 "]).is_some(), "{s}");
    assert!(line_with(&s, &["│24713 "]).is_none(), "{s}");
    assert!(line_with(&s, &["CLOSE_WAIT", "24711"]).is_none(), "{s}");
    // Filter by process name instead.
    t.keys(&["/"]);
    t.type_text("tcppeer");
    t.keys(&["Enter"]);
    let s = t.wait_for("the process filter", |s| s.contains("filter: tcppeer"));
    assert!(line_with(&s, &["│tcppeer "]).is_some(), "{s}");
    assert!(line_with(&s, &["CLOSE_WAIT", "24711"]).is_some(), "{s}");
    // p pauses, ? shows help (any key closes it).
    t.keys(&["p"]);
    t.wait_for("PAUSED", |s| s.contains("PAUSED"));
    t.keys(&["?"]);
    t.wait_for("the help", |s| s.contains("cycle the sort column"));
    t.keys(&["Escape"]);
    t.wait_for("the help closed", |s| !s.contains("cycle the sort column"));
    t.quit_and_check_restored();
}

/// A terminal smaller than the view says so instead of drawing; stdout not a terminal is one
/// line of error.
#[test]
fn a_small_terminal_and_a_pipe_are_told_so() {
    let out = Command::new(BIN)
        .args(["top", "--replay"])
        .arg(testdata("top.tsr"))
        .stdin(Stdio::null())
        .output()
        .expect("running tcpstate");
    assert_eq!(out.status.code(), Some(1));
    assert!(out.stdout.is_empty());
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("stdout is not one"), "{err}");

    if !tmux_or_skip("a_small_terminal_and_a_pipe_are_told_so") {
        return;
    }
    let t = Tmux::start(
        "small",
        &format!("{BIN} top --replay {}", testdata("top.tsr").display()),
    );
    // On a terminal, but with stdin elsewhere: keys could not be read, so it says so.
    let no_keys = Tmux::start(
        "nokeys",
        &format!(
            "{BIN} top --replay {} < /dev/null",
            testdata("top.tsr").display()
        ),
    );
    let s = no_keys.wait_for("the error", |s| s.contains(EXITED));
    assert!(s.contains(&format!("{EXITED}1")), "{s}");
    assert!(s.contains("stdin is not one"), "{s}");
    drop(no_keys);
    t.tmux(&["resize-window", "-x", "70", "-y", "20"]);
    let s = t.wait_for("the too-small message", |s| {
        s.contains("terminal too small")
    });
    assert!(s.contains("terminal too small: 70x20"), "{s}");
    assert!(!s.contains("local ports"), "{s}");
    t.quit_and_check_restored();
}

/// SIGTERM restores the terminal too.
#[test]
fn sigterm_restores_the_terminal() {
    if !tmux_or_skip("sigterm_restores_the_terminal") {
        return;
    }
    let t = Tmux::start(
        "term",
        &format!("{BIN} top --replay {}", testdata("top.tsr").display()),
    );
    t.wait_for("the view", |s| s.contains("tcpstate top "));
    let top = t.top_pid();
    // SAFETY: a signal to the test's own child process.
    assert_eq!(unsafe { libc::kill(top, libc::SIGTERM) }, 0);
    let s = t.wait_for("tcpstate to exit", |s| s.contains(EXITED));
    assert!(s.contains(&format!("{EXITED}0")), "{s}");
    assert!(!t.alternate_on(), "still on the alternate screen:\n{s}");
}

/// A terminal that goes away (the emulator closed: here the tmux server killed) ends `top`
/// instead of leaving it spinning on a dead terminal.
#[test]
fn a_closed_terminal_ends_top() {
    if !tmux_or_skip("a_closed_terminal_ends_top") {
        return;
    }
    let t = Tmux::start(
        "hangup",
        &format!("{BIN} top --replay {}", testdata("top.tsr").display()),
    );
    t.wait_for("the view", |s| s.contains("tcpstate top "));
    let top = t.top_pid();
    drop(t);
    let start = Instant::now();
    // SAFETY: signal 0 only checks that the process exists.
    while unsafe { libc::kill(top, 0) } == 0 {
        let state = std::fs::read_to_string(format!("/proc/{top}/stat")).unwrap_or_default();
        // Exited, not yet reaped by whoever inherited it.
        if state.split_whitespace().nth(2) == Some("Z") {
            break;
        }
        if start.elapsed() > LIMIT {
            // SAFETY: our own child's child; it must not outlive the test.
            unsafe { libc::kill(top, libc::SIGKILL) };
            panic!("tcpstate top still running {LIMIT:?} after its terminal closed");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Live, as root: known connections, read off the screen.
#[cfg(feature = "kernel")]
#[test]
fn live_shows_a_leak_refusals_and_a_burst() {
    use support::{need_root, run_client, PeerProcess};
    if !need_root("live_shows_a_leak_refusals_and_a_burst")
        || !tmux_or_skip("live_shows_a_leak_refusals_and_a_burst")
    {
        return;
    }
    let free = || {
        std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port")
            .port()
    };
    let (leak_port, refused_port, burst_port) = (free(), free(), free());
    // Only this test's ports: other developers' traffic stays off the screen.
    let t = Tmux::start(
        "live",
        &format!("{BIN} top --port {leak_port},{refused_port},{burst_port}"),
    );
    t.wait_for("the view", |s| {
        s.contains("tcpstate top ") && s.contains("live")
    });
    // Give the trace loop a moment past the first draw to be attached and reading.
    std::thread::sleep(Duration::from_millis(500));

    let (mut leaker, _) = PeerProcess::server([
        "--listen",
        &format!("127.0.0.1:{leak_port}"),
        "--accept",
        "1",
        "--close-wait-ms",
        "30000",
    ])
    .expect("leaking server");
    run_client(
        [
            "--connect",
            &format!("127.0.0.1:{leak_port}"),
            "--count",
            "1",
        ],
        LIMIT,
    )
    .expect("client of the leak")
    .assert_success();
    leaker
        .wait_event("accepted", LIMIT)
        .expect("the leak accepted");
    run_client(
        [
            "--connect",
            &format!("127.0.0.1:{refused_port}"),
            "--count",
            "3",
        ],
        LIMIT,
    )
    .expect("refused client");
    let (burst, _) = PeerProcess::server([
        "--listen",
        &format!("127.0.0.1:{burst_port}"),
        "--accept",
        "20",
    ])
    .expect("burst server");
    run_client(
        [
            "--connect",
            &format!("127.0.0.1:{burst_port}"),
            "--count",
            "20",
        ],
        LIMIT,
    )
    .expect("burst client")
    .assert_success();
    burst.finish(LIMIT).expect("burst server").assert_success();

    let leak_local = format!("127.0.0.1:{leak_port}");
    let burst_row = format!("│{burst_port} ");
    let refused_row = format!("│{refused_port} ");
    let s = t.wait_for("the leak, refusals and burst", |s| {
        line_with(s, &["CLOSE_WAIT", &leak_local]).is_some()
            && line_with(s, &[&burst_row]).is_some_and(|l| cells(l).get(7) == Some(&"20"))
            && line_with(s, &[&refused_row]).is_some_and(|l| cells(l).get(8) == Some(&"3"))
            && line_with(s, &["│tcppeer "])
                .is_some_and(|l| l.contains("ECONNREFUSED:3") && cells(l).get(7) == Some(&"24"))
    });
    let leak = line_with(&s, &["CLOSE_WAIT", &leak_local]).unwrap_or_default();
    let c = cells(leak);
    assert_eq!(c[2], leaker.pid().to_string(), "the leak's owner: {leak}");
    assert_eq!(c[3], "tcppeer", "{leak}");

    t.keys(&["s"]);
    t.wait_for("sort: total", |s| s.contains("sort: total"));
    t.keys(&["/"]);
    t.type_text(&burst_port.to_string());
    t.keys(&["Enter"]);
    let s = t.wait_for("the filter", |s| {
        s.contains(&format!("filter: {burst_port}")) && line_with(s, &[&refused_row]).is_none()
    });
    assert!(line_with(&s, &[&burst_row]).is_some(), "{s}");
    t.quit_and_check_restored();
    drop(leaker);
}

/// Live, as root: SIGTERM stops the trace loop and the terminal is given back.
#[cfg(feature = "kernel")]
#[test]
fn live_sigterm_restores_the_terminal() {
    if !support::need_root("live_sigterm_restores_the_terminal")
        || !tmux_or_skip("live_sigterm_restores_the_terminal")
    {
        return;
    }
    let t = Tmux::start("liveterm", &format!("{BIN} top --port 9"));
    t.wait_for("the view", |s| {
        s.contains("tcpstate top ") && s.contains("live")
    });
    let top = t.top_pid();
    // SAFETY: a signal to the test's own child process.
    assert_eq!(unsafe { libc::kill(top, libc::SIGTERM) }, 0);
    let s = t.wait_for("tcpstate to exit", |s| s.contains(EXITED));
    assert!(s.contains(&format!("{EXITED}0")), "{s}");
    assert!(!t.alternate_on(), "still on the alternate screen:\n{s}");
    // What the tracer said on stderr while the screen was taken is shown after it.
    assert!(s.contains("tcpstate: tracing TCP state changes"), "{s}");
}

/// Groups named like a Kubernetes pod's container in the cgroup v2 hierarchy (the host's, or
/// one mounted outside /sys); removed on drop, processes moved out first.
#[cfg(feature = "kernel")]
struct PodGroups {
    root: PathBuf,
    created: Vec<PathBuf>,
    mounted: bool,
}

#[cfg(feature = "kernel")]
const CONTAINER: &str = "5e1f0c2d3b4a59687a6b5c4d3e2f10a95e1f0c2d3b4a59687a6b5c4d3e2f10a9";

#[cfg(feature = "kernel")]
impl PodGroups {
    fn new() -> PodGroups {
        let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let (root, mounted) = match tcpstate::cgroup::cgroup2_mount(&mountinfo) {
            Some(r) => (r, false),
            None => {
                let dir =
                    std::env::temp_dir().join(format!("tcpstate-top-cg2-{}", std::process::id()));
                std::fs::create_dir_all(&dir).expect("mount point");
                let ok = Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(&dir)
                    .status()
                    .is_ok_and(|s| s.success());
                assert!(ok, "mount cgroup2 at {}", dir.display());
                (dir, true)
            }
        };
        let mut g = PodGroups {
            root,
            created: Vec::new(),
            mounted,
        };
        let uid = "7a2b3c4d_5e6f_4a1b_8c9d_0e1f2a3b4c5d";
        let mut path = g.root.clone();
        for part in [
            format!("tcpstate-top-test-{}", std::process::id()),
            "kubepods.slice".into(),
            "kubepods-besteffort.slice".into(),
            format!("kubepods-besteffort-pod{uid}.slice"),
            format!("cri-containerd-{CONTAINER}.scope"),
        ] {
            path.push(part);
            std::fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
            g.created.push(path.clone());
        }
        g
    }

    fn container(&self) -> &Path {
        self.created.last().expect("groups")
    }
}

#[cfg(feature = "kernel")]
impl Drop for PodGroups {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            if let Ok(pids) = std::fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = std::fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = std::fs::remove_dir(dir);
        }
        if self.mounted {
            let _ = Command::new("umount").arg(&self.root).status();
            let _ = std::fs::remove_dir(&self.root);
        }
    }
}

/// Live, as root: a leaking server and a client in a pod-like container's cgroup: the leak
/// and the client's process row carry the container (its id's first 12 digits), and `/`
/// filters by it.
#[cfg(feature = "kernel")]
#[test]
fn live_shows_the_container() {
    use support::{need_root, PeerProcess};
    if !need_root("live_shows_the_container") || !tmux_or_skip("live_shows_the_container") {
        return;
    }
    let groups = PodGroups::new();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let t = Tmux::start("container", &format!("{BIN} top --port {port}"));
    t.wait_for("the view", |s| {
        s.contains("tcpstate top ") && s.contains("live")
    });
    std::thread::sleep(Duration::from_millis(500));
    let addr = format!("127.0.0.1:{port}");
    let (mut leaker, _) = PeerProcess::server_in_cgroup(
        groups.container(),
        [
            "--listen",
            &addr,
            "--accept",
            "1",
            "--close-wait-ms",
            "30000",
        ],
    )
    .expect("leaking server");
    PeerProcess::spawn_in_cgroup(
        "client",
        groups.container(),
        ["--connect", &addr, "--count", "1"],
    )
    .expect("client")
    .finish(LIMIT)
    .expect("client")
    .assert_success();
    leaker.wait_event("accepted", LIMIT).expect("accepted");
    let short = &CONTAINER[..12];
    let s = t.wait_for("the container on the leak and the process", |s| {
        line_with(s, &["CLOSE_WAIT", &addr, short]).is_some()
            && line_with(s, &["│tcppeer ", short]).is_some_and(|l| cells(l).get(7) == Some(&"1"))
    });
    let leak = line_with(&s, &["CLOSE_WAIT", &addr]).unwrap_or_default();
    assert_eq!(cells(leak)[4], short, "{leak}");
    t.keys(&["/"]);
    t.type_text(short);
    t.keys(&["Enter"]);
    let s = t.wait_for("the container filter", |s| {
        s.contains(&format!("filter: {short}"))
    });
    assert!(line_with(&s, &["│tcppeer ", short]).is_some(), "{s}");
    t.quit_and_check_restored();
    drop(leaker);
}
