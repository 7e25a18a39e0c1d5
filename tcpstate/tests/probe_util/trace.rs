//! Runs the `tcpstate` binary as a user would: `trace` with a recording, then `replay`.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::atomic::{AtomicU32, Ordering},
    time::{Duration, Instant},
};

use serde_json::Value;

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");
const LIMIT: Duration = Duration::from_secs(20);

pub struct Trace {
    child: Child,
    dir: PathBuf,
    extra: Vec<String>,
}

impl Trace {
    /// Starts `tcpstate trace --port PORT --record FILE EXTRA` and waits until it is attached.
    /// Without `-o` in EXTRA, the output is JSON.
    pub fn start(port: u16, extra: &[&str]) -> Trace {
        Trace::start_filtered(port, &[], extra)
    }

    /// The same with FILTERS, trace-only options (`-4`, `--addr` ...) that the replay of the
    /// recording does not take: EXTRA is passed to both.
    pub fn start_filtered(port: u16, filters: &[&str], extra: &[&str]) -> Trace {
        // Several tracers of one port may run at once.
        static STARTED: AtomicU32 = AtomicU32::new(0);
        let n = STARTED.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!(
            "tcpstate-timelines-{}-{port}-{n}",
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
        args.extend_from_slice(filters);
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
    pub fn stop(self) -> Vec<Value> {
        self.stop_objects()
            .into_iter()
            .filter(|v| v["schema"] == "tcpstate.connection.v2")
            .collect()
    }

    /// Like `stop`, but returns every JSON object printed, whatever its schema (connection
    /// objects of any version, refused attempts, the summary).
    pub fn stop_objects(self) -> Vec<Value> {
        let text = self.stop_text();
        // Table output has no objects to return; the comparison in stop_text is its test.
        text.lines()
            .filter(|l| l.starts_with('{'))
            .map(|l| serde_json::from_str::<Value>(l).expect("JSON line"))
            .collect()
    }

    /// Stops the tracer and returns what it printed, after checking that replaying the
    /// recording prints exactly the same bytes.
    pub fn stop_text(mut self) -> String {
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
        String::from_utf8_lossy(&live).into_owned()
    }
}

impl Drop for Trace {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = fs::remove_dir_all(&self.dir);
    }
}
