//! `tcpstate exporter` scraped by a real Prometheus (Debian's, installed by the test set-up):
//! known connections over a delayed link (RTT 60 ms) between two namespaces of the test's own,
//! then Prometheus' query API must show their outcomes and put the connect latency in the
//! histogram bucket the link's RTT falls in. Every process is killed and reaped on any failure.

#![cfg(feature = "kernel")]

mod skip;
mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Child, Command, Stdio},
    sync::mpsc,
    thread,
    time::{Duration, Instant},
};

use serde_json::Value;
use support::{need_root, run_in_netns, DelayedLink, LinkConfig};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");
const PROMETHEUS: &str = "/usr/bin/prometheus";
const DELAY: Duration = Duration::from_millis(30);
const LIMIT: Duration = Duration::from_secs(60);

const N_OK: usize = 5;
const N_RESET: usize = 2;
const N_REFUSED: usize = 3;

/// Kills and reaps its process when dropped, whatever happened.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("binding a free port");
    l.local_addr().expect("local address").port()
}

/// Lines of a child's stderr, read on a thread so a wait on them is bounded.
fn stderr_lines(child: &mut Child) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    let err = child.stderr.take().expect("stderr is piped");
    thread::spawn(move || {
        for line in BufReader::new(err).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_line(rx: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> Vec<String> {
    let deadline = Instant::now() + limit;
    let mut seen = Vec::new();
    while let Some(left) = deadline.checked_duration_since(Instant::now()) {
        match rx.recv_timeout(left) {
            Ok(l) => {
                let hit = l.contains(needle);
                seen.push(l);
                if hit {
                    return seen;
                }
            }
            Err(_) => break,
        }
    }
    panic!("no line with {needle:?} within {limit:?}; saw {seen:?}");
}

fn percent_encode(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// A request over plain HTTP/1.0 (the server closes when done): head and body.
fn http(port: u16, method: &str, path: &str) -> std::io::Result<(String, String)> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::from(([127, 0, 0, 1], port)), LIMIT)?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    write!(s, "{method} {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut resp = String::new();
    s.read_to_string(&mut resp)?;
    let (head, body) = resp.split_once("\r\n\r\n").unwrap_or((&resp, ""));
    Ok((head.to_string(), body.to_string()))
}

fn http_get(port: u16, path: &str) -> std::io::Result<String> {
    http(port, "GET", path).map(|(_, body)| body)
}

/// An instant query: label set -> value.
fn query(port: u16, q: &str) -> Vec<(Value, f64)> {
    let Ok(body) = http_get(port, &format!("/api/v1/query?query={}", percent_encode(q))) else {
        return Vec::new();
    };
    let Ok(v) = serde_json::from_str::<Value>(&body) else {
        return Vec::new();
    };
    v["data"]["result"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|r| {
                    let val = r["value"][1].as_str()?.parse::<f64>().ok()?;
                    Some((r["metric"].clone(), val))
                })
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn prometheus_scrapes_known_connections() {
    if !need_root("prometheus_scrapes_known_connections") {
        return;
    }
    if !Path::new(PROMETHEUS).exists() {
        skip::skip(
            "prometheus_scrapes_known_connections",
            &format!("{PROMETHEUS} missing (cargo xtask test installs it)"),
        );
        return;
    }
    let link = DelayedLink::new(LinkConfig::with_delay(DELAY)).expect("building the link");
    let server_ip = IpAddr::V4(link.addr_b_v4());
    let listener = run_in_netns(link.ns_b(), || TcpListener::bind((server_ip, 0)))
        .expect("listening in namespace b");
    let port = listener.local_addr().expect("address").port();
    // A port nobody listens on in b: bound and closed again.
    let refused_port = run_in_netns(link.ns_b(), || {
        TcpListener::bind((server_ip, 0)).and_then(|l| l.local_addr())
    })
    .expect("a free port in b")
    .port();

    let exporter_port = free_port();
    let mut exporter = Reaped(
        Command::new(BIN)
            .args([
                "exporter",
                "--listen",
                &format!("127.0.0.1:{exporter_port}"),
                "--metrics-ports",
                &format!("{port},{refused_port}"),
                "--duration",
                "120",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting the exporter"),
    );
    let exporter_err = stderr_lines(&mut exporter.0);
    let said = wait_line(&exporter_err, "tracing TCP state changes", LIMIT);
    assert!(
        said.iter().any(|l| l.contains(&format!(
            "serving metrics on http://127.0.0.1:{exporter_port}/metrics"
        ))),
        "{said:?}"
    );
    // GET /metrics only.
    let (head, body) = http(exporter_port, "GET", "/metrics").expect("GET /metrics");
    assert!(
        head.starts_with("HTTP/1.0 200") || head.starts_with("HTTP/1.1 200"),
        "{head}"
    );
    assert!(
        head.to_ascii_lowercase()
            .contains("content-type: application/openmetrics-text"),
        "{head}"
    );
    assert!(body.ends_with("# EOF\n"), "{body}");
    let (head, _) = http(exporter_port, "GET", "/").expect("GET /");
    assert!(head.contains(" 404 "), "{head}");
    let (head, _) = http(exporter_port, "POST", "/metrics").expect("POST /metrics");
    assert!(head.contains(" 405 "), "{head}");

    let dir = std::env::temp_dir().join(format!("tcpstate-prom-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nscrape_configs:\n  - job_name: tcpstate\n    static_configs:\n      - targets: ['127.0.0.1:{exporter_port}']\n"
        ),
    )
    .expect("prometheus config");
    let prom_port = free_port();
    let mut prometheus = Reaped(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting prometheus"),
    );
    let prom_err = stderr_lines(&mut prometheus.0);
    wait_line(&prom_err, "Server is ready to receive web requests", LIMIT);

    // The server: each accepted socket waits for the client's close, or resets it.
    let server = thread::spawn(move || {
        for i in 0..N_OK + N_RESET {
            let (mut s, _) = listener.accept().expect("accept");
            if i >= N_OK {
                // SO_LINGER 0: close() sends a RST.
                let linger = libc::linger {
                    l_onoff: 1,
                    l_linger: 0,
                };
                // SAFETY: a valid socket and a linger struct of the size given.
                unsafe {
                    use std::os::fd::AsRawFd;
                    libc::setsockopt(
                        s.as_raw_fd(),
                        libc::SOL_SOCKET,
                        libc::SO_LINGER,
                        &linger as *const _ as *const libc::c_void,
                        std::mem::size_of::<libc::linger>() as libc::socklen_t,
                    );
                }
                drop(s);
                continue;
            }
            let mut buf = [0u8; 16];
            let _ = s.set_read_timeout(Some(Duration::from_secs(10)));
            let _ = s.read(&mut buf);
        }
    });
    let to = |p: u16| SocketAddr::new(server_ip, p);
    for i in 0..N_OK + N_RESET {
        let mut c = run_in_netns(link.ns_a(), || {
            TcpStream::connect_timeout(&to(port), Duration::from_secs(10))
        })
        .expect("connect");
        if i < N_OK {
            // The client closes first: TIME_WAIT.
            drop(c);
        } else {
            let _ = c.set_read_timeout(Some(Duration::from_secs(10)));
            let mut buf = [0u8; 16];
            let r = c.read(&mut buf);
            assert!(r.is_err(), "expected a reset, got {r:?}");
        }
    }
    for _ in 0..N_REFUSED {
        let r = run_in_netns(link.ns_a(), || {
            TcpStream::connect_timeout(&to(refused_port), Duration::from_secs(10))
        });
        assert_eq!(
            r.err().map(|e| e.kind()),
            Some(std::io::ErrorKind::ConnectionRefused)
        );
    }
    server.join().expect("server thread");

    let want = [
        ("time_wait", N_OK as f64),
        ("reset", N_RESET as f64),
        ("refused", N_REFUSED as f64),
    ];
    let by_outcome = format!(
        "sum by (outcome) (tcpstate_connections_total{{role=\"client\",port=~\"{port}|{refused_port}\"}})"
    );
    let quantile = format!(
        "histogram_quantile(0.5, sum by (le) (tcpstate_connect_duration_seconds_bucket{{port=\"{port}\"}}))"
    );
    let deadline = Instant::now() + LIMIT;
    loop {
        let last = query(prom_port, &by_outcome);
        let got = |o: &str| {
            last.iter()
                .find(|(m, _)| m["outcome"] == o)
                .map(|(_, v)| *v)
        };
        if want.iter().all(|(o, n)| got(o) == Some(*n)) && last.len() == want.len() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "Prometheus never showed {want:?}; last answer {last:?}"
        );
        thread::sleep(Duration::from_millis(500));
    }
    let q = query(prom_port, &quantile);
    let median = q.first().map(|(_, v)| *v).unwrap_or(f64::NAN);
    println!("outcomes by Prometheus as expected {want:?}; median connect latency {median} s");
    // RTT 60 ms: the (51.2 ms, 102.4 ms] bucket; interpolation stays inside it.
    assert!(
        median > 0.0512 && median <= 0.1024,
        "median connect latency {median} s outside (0.0512, 0.1024]: {q:?}"
    );
    // The tracer's health made it too.
    let built = query(prom_port, "tcpstate_build_info");
    assert_eq!(built.len(), 1, "{built:?}");
    let states = query(prom_port, "count(tcpstate_open_connections)");
    assert_eq!(states.first().map(|(_, v)| *v), Some(11.0), "{states:?}");
    let lost = query(prom_port, "sum(tcpstate_events_lost_total)");
    assert_eq!(lost.first().map(|(_, v)| *v), Some(0.0), "{lost:?}");
    // The socket facts made it: the refused connects' errno, the resets both ways, the SYNs
    // this host refused for want of a listener (at least the test's own: the host may have
    // other traffic; these families carry no port label).
    let at_least = |q: &str, n: usize| {
        let got = query(prom_port, q);
        let v = got.first().map(|(_, v)| *v).unwrap_or(0.0);
        assert!(v >= n as f64, "{q}: {v} < {n}: {got:?}");
    };
    at_least(
        "sum(tcpstate_connect_failures_total{errno=\"ECONNREFUSED\"})",
        N_REFUSED,
    );
    at_least("sum(tcpstate_resets_total{direction=\"sent\"})", N_RESET);
    at_least(
        "sum(tcpstate_resets_total{direction=\"received\"})",
        N_RESET + N_REFUSED,
    );
    at_least("sum(tcpstate_refused_inbound_total)", N_REFUSED);

    // SIGTERM stops it cleanly and promptly.
    // SAFETY: signalling our own child.
    unsafe { libc::kill(exporter.0.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = exporter.0.try_wait().expect("waiting for the exporter") {
            break s;
        }
        assert!(Instant::now() < deadline, "the exporter ignored SIGTERM");
        thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "exporter exit {status:?}");
    wait_line(&exporter_err, "exporter stopped", Duration::from_secs(5));
    drop(prometheus);
    let _ = std::fs::remove_dir_all(&dir);
}
