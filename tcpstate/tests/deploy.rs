//! The deployment files, checked as far as this machine allows: the Kubernetes manifests
//! against the schemas kubernetes-validate bundles, the systemd unit with `systemd-analyze
//! verify`, both granting the same capabilities, and (as root) the exporter really running and
//! serving with nothing but those capabilities.

mod skip;
mod support;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

const BIN: &str = env!("CARGO_BIN_EXE_tcpstate");

fn deploy(rel: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../deploy")
        .join(rel)
}

fn read(rel: &str) -> String {
    std::fs::read_to_string(deploy(rel)).unwrap_or_else(|e| panic!("reading deploy/{rel}: {e}"))
}

/// A tool the test set-up installs: missing, the test says it skipped (and fails in CI).
fn have(tool: &str, test: &str) -> bool {
    let found = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !found {
        skip::skip(
            test,
            &format!("{tool} missing (cargo xtask test installs it)"),
        );
    }
    found
}

#[test]
fn kubernetes_manifests_validate() {
    if !have("kubernetes-validate", "kubernetes_manifests_validate") {
        return;
    }
    let dir = deploy("kubernetes");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .expect("deploy/kubernetes")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "yaml"))
        .collect();
    files.sort();
    assert!(!files.is_empty());
    let out = Command::new("kubernetes-validate")
        .arg("--strict")
        .args(&files)
        .output()
        .expect("running kubernetes-validate");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    assert!(text.contains("daemonset/tcpstate-exporter"), "{text}");
    assert!(!text.contains("WARN"), "{text}");
}

/// The capabilities the DaemonSet adds, upper case without CAP_.
fn daemonset_caps() -> Vec<String> {
    let y = read("kubernetes/tcpstate-exporter.yaml");
    let add = y.split_once("add:\n").expect("capabilities.add").1;
    let mut caps: Vec<String> = add
        .lines()
        .map(str::trim)
        .take_while(|l| l.starts_with('-') || l.starts_with('#'))
        .filter_map(|l| l.strip_prefix("- "))
        .map(str::to_string)
        .collect();
    caps.sort();
    caps
}

fn unit_caps() -> Vec<String> {
    let unit = read("systemd/tcpstate-exporter.service");
    let line = unit
        .lines()
        .find_map(|l| l.strip_prefix("CapabilityBoundingSet="))
        .expect("CapabilityBoundingSet");
    let ambient = unit
        .lines()
        .find_map(|l| l.strip_prefix("AmbientCapabilities="))
        .expect("AmbientCapabilities");
    assert_eq!(line, ambient, "ambient and bounding sets differ");
    let mut caps: Vec<String> = line
        .split_whitespace()
        .map(|c| c.trim_start_matches("CAP_").to_string())
        .collect();
    caps.sort();
    caps
}

#[test]
fn deployments_grant_the_same_capabilities_and_image() {
    assert_eq!(daemonset_caps(), ["BPF", "PERFMON", "SYS_PTRACE"]);
    assert_eq!(unit_caps(), daemonset_caps());
    let image = format!("ghcr.io/tcpstate/tcpstate:{}", env!("CARGO_PKG_VERSION"));
    assert!(read("kubernetes/tcpstate-exporter.yaml").contains(&format!("image: {image}")));
    assert!(
        read("Dockerfile").contains(&image),
        "the Dockerfile builds another tag"
    );
}

#[test]
fn systemd_unit_verifies() {
    if !have("systemd-analyze", "systemd_unit_verifies") {
        return;
    }
    // verify wants ExecStart to exist: point it at the binary under test.
    let dir = std::env::temp_dir().join(format!("tcpstate-unit-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let unit = dir.join("tcpstate-exporter.service");
    let text = read("systemd/tcpstate-exporter.service").replace("/usr/local/bin/tcpstate", BIN);
    std::fs::write(&unit, text).expect("writing the unit");
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(&unit)
        .output()
        .expect("running systemd-analyze");
    let _ = std::fs::remove_dir_all(&dir);
    let msg = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && msg.trim().is_empty(), "{msg}");
}

/// As root, with the bounding set cut to the unit's capabilities: the exporter attaches and
/// serves. Proves the list is enough (tracefs mounted, as systemd does at boot).
#[cfg(feature = "kernel")]
#[test]
fn exporter_runs_with_only_the_granted_capabilities() {
    use std::{
        io::{Read, Write},
        net::{SocketAddr, TcpListener, TcpStream},
        thread,
        time::{Duration, Instant},
    };
    if !support::need_root("exporter_runs_with_only_the_granted_capabilities")
        || !have(
            "setpriv",
            "exporter_runs_with_only_the_granted_capabilities",
        )
    {
        return;
    }
    let caps: Vec<String> = unit_caps()
        .iter()
        .map(|c| format!("+{}", c.to_lowercase()))
        .collect();
    let set = format!("-all,{}", caps.join(","));
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port();
    let mut child = Command::new("setpriv")
        .arg(format!("--bounding-set={set}"))
        .arg(format!("--inh-caps={set}"))
        .args([BIN, "exporter", "--duration", "20"])
        .arg(format!("--listen=127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting the exporter under setpriv");
    let deadline = Instant::now() + Duration::from_secs(15);
    let body = loop {
        let got = TcpStream::connect(SocketAddr::from(([127, 0, 0, 1], port))).and_then(|mut s| {
            s.set_read_timeout(Some(Duration::from_secs(5)))?;
            s.write_all(b"GET /metrics HTTP/1.0\r\n\r\n")?;
            let mut r = String::new();
            s.read_to_string(&mut r)?;
            Ok(r)
        });
        match got {
            Ok(r) if r.contains("tcpstate_build_info") => break Some(r),
            _ if Instant::now() > deadline => break None,
            _ => {}
        }
        if child.try_wait().ok().flatten().is_some() {
            break None;
        }
        thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: signalling our own child (setpriv execs the exporter in place).
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let mut err = String::new();
    let status = child.wait().expect("reaping the exporter");
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    assert!(body.is_some(), "no metrics with {set}: {status:?}\n{err}");
    assert!(status.success(), "{status:?}\n{err}");
}
