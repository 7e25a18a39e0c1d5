//! Containers (issue 12): a server in a cgroup named like a Kubernetes pod's container and in
//! one network namespace, a client outside it in another; the real program must name the
//! server's cgroup, pod and container, each socket's own namespace, and its --cgroup and
//! --netns filters must keep exactly those sockets while other traffic runs. Needs root.
// Loads the eBPF program: only in the default (`kernel`) build.
#![cfg(feature = "kernel")]

mod probe_util;
mod skip;
mod support;

use std::{
    fs,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::Duration,
};

use probe_util::{attach, collect_for, free_port, roles, trace::Trace};
use support::{run_client, DelayedLink, LinkConfig, PeerProcess};
use tcpstate::{
    cgroup,
    event::Event,
    filter::{CgroupTarget, FilterSpec},
};

const LIMIT: Duration = Duration::from_secs(20);
const POD_UID: &str = "6f1c2a3b-4d5e-4f60-8a9b-0c1d2e3f4a5b";
const CONTAINER: &str = "9a8b7c6d5e4f30211203f4e5d6c7b8a99a8b7c6d5e4f30211203f4e5d6c7b8a9";

/// A cgroup v2 hierarchy (the host's, or one mounted here outside /sys) with the groups of a
/// Kubernetes pod's container; removes the groups (moving any process out) and the mount on
/// drop, also when the test fails.
struct PodGroups {
    root: PathBuf,
    /// Created groups, outermost first.
    created: Vec<PathBuf>,
    mounted: bool,
}

impl PodGroups {
    fn new() -> PodGroups {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").expect("mountinfo");
        let (root, mounted) = match cgroup::cgroup2_mount(&mountinfo) {
            Some(r) => (r, false),
            None => {
                // Outside /sys: `ip netns exec` remounts /sys, and peers must see the groups.
                let dir = std::env::temp_dir().join(format!("tcpstate-cg2-{}", std::process::id()));
                fs::create_dir_all(&dir).expect("mount point");
                let status = std::process::Command::new("mount")
                    .args(["-t", "cgroup2", "none"])
                    .arg(&dir)
                    .status()
                    .expect("mount");
                assert!(status.success(), "mount cgroup2 at {}", dir.display());
                (dir, true)
            }
        };
        let mut g = PodGroups {
            root,
            created: Vec::new(),
            mounted,
        };
        // A unique top group, so tests running at once and leftovers never collide.
        static MADE: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = MADE.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let top = format!("tcpstate-test-{}-{n}", std::process::id());
        let uid_ = POD_UID.replace('-', "_");
        let mut path = g.root.clone();
        for part in [
            top.as_str(),
            "kubepods.slice",
            "kubepods-burstable.slice",
            &format!("kubepods-burstable-pod{uid_}.slice"),
            &format!("cri-containerd-{CONTAINER}.scope"),
        ] {
            path.push(part);
            fs::create_dir(&path).unwrap_or_else(|e| panic!("mkdir {}: {e}", path.display()));
            g.created.push(path.clone());
        }
        g
    }

    fn container(&self) -> &Path {
        self.created.last().expect("groups")
    }

    fn pod(&self) -> &Path {
        &self.created[self.created.len() - 2]
    }

    /// The path relative to the cgroup v2 root, as the output shows it.
    fn rel(&self, p: &Path) -> String {
        format!(
            "/{}",
            p.strip_prefix(&self.root).expect("under root").display()
        )
    }

    fn target(&self, p: &Path) -> CgroupTarget {
        let (id, level, path) = cgroup::locate(&self.root, &self.rel(p)).expect("locate");
        CgroupTarget { id, level, path }
    }
}

impl Drop for PodGroups {
    fn drop(&mut self) {
        for dir in self.created.iter().rev() {
            // Whatever is still in the group goes back to the root group.
            if let Ok(pids) = fs::read_to_string(dir.join("cgroup.procs")) {
                for pid in pids.lines() {
                    let _ = fs::write(self.root.join("cgroup.procs"), pid);
                }
            }
            let _ = fs::remove_dir(dir);
        }
        if self.mounted {
            let _ = std::process::Command::new("umount")
                .arg(&self.root)
                .status();
            let _ = fs::remove_dir(&self.root);
        }
    }
}

fn ns_inode(name: &str) -> u64 {
    fs::metadata(Path::new("/var/run/netns").join(name))
        .expect("netns file")
        .ino()
}

/// This process's own cgroup v2 path as the output shows it (`None` for the root of a host
/// with cgroup v1 controllers).
fn own_cgroup() -> Option<String> {
    let text = fs::read_to_string("/proc/self/cgroup").ok()?;
    let path = cgroup::v2_path_of(&text)?.to_string();
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    if path == "/" && cgroup::v1_controllers_mounted(&mountinfo) {
        return None;
    }
    Some(path)
}

fn link() -> DelayedLink {
    DelayedLink::new(LinkConfig::with_delay(Duration::from_millis(1))).expect("build the link")
}

/// Connections on loopback in this namespace, from this process's cgroup: traffic the
/// filters must drop.
fn other_traffic(n: usize) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok((srv, port)) =
            PeerProcess::server(["--listen", "127.0.0.1:0", "--accept", &n.to_string()])
        else {
            return;
        };
        let _ = run_client(
            [
                "--connect",
                &format!("127.0.0.1:{port}"),
                "--count",
                &n.to_string(),
                "--interval-ms",
                "20",
            ],
            LIMIT,
        );
        let _ = srv.finish(LIMIT);
    })
}

#[test]
fn a_pod_like_server_shows_its_cgroup_pod_container_and_namespaces() {
    if !support::need_root("a_pod_like_server_shows_its_cgroup_pod_container_and_namespaces") {
        return;
    }
    let groups = PodGroups::new();
    let link = link();
    let port = free_port("127.0.0.1".parse().expect("ip"));
    let n = 3;
    let json = Trace::start(port, &[]);
    let table = Trace::start(port, &["-o", "table", "--containers"]);
    let steps = Trace::start(port, &["--transitions"]);
    let addr = format!("{}:{port}", link.addr_b_v4());
    let (srv, _) = PeerProcess::server_in_cgroup(
        groups.container(),
        [
            "--listen",
            &addr,
            "--netns",
            link.ns_b(),
            "--accept",
            &n.to_string(),
        ],
    )
    .expect("server");
    run_client(
        [
            "--connect",
            &addr,
            "--netns",
            link.ns_a(),
            "--count",
            &n.to_string(),
        ],
        LIMIT,
    )
    .expect("client")
    .assert_success();
    srv.finish(LIMIT).expect("server").assert_success();

    let conns = json.stop();
    let text = table.stop_text();
    let transitions: Vec<_> = steps
        .stop_objects()
        .into_iter()
        .filter(|v| v["schema"] == "tcpstate.transition.v2")
        .collect();
    let container_path = groups.rel(groups.container());
    let container_id = fs::metadata(groups.container()).expect("group").ino();
    let (ns_a, ns_b) = (ns_inode(link.ns_a()), ns_inode(link.ns_b()));
    let (mut servers, mut clients) = (0, 0);
    for c in &conns {
        match c["role"].as_str() {
            Some("server") => {
                servers += 1;
                assert_eq!(c["cgroup"], container_path.as_str(), "{c}");
                assert_eq!(c["cgroup_id"], container_id, "{c}");
                assert_eq!(c["netns"], ns_b, "{c}");
                assert_eq!(c["pod_uid"], POD_UID, "{c}");
                assert_eq!(c["container_id"], CONTAINER, "{c}");
            }
            Some("client") => {
                clients += 1;
                assert_eq!(c["netns"], ns_a, "{c}");
                assert!(c["pod_uid"].is_null() && c["container_id"].is_null(), "{c}");
                match own_cgroup() {
                    Some(p) => assert_eq!(c["cgroup"], p.as_str(), "{c}"),
                    None => assert!(c["cgroup"].is_null() && c["cgroup_id"].is_null(), "{c}"),
                }
            }
            _ => {}
        }
    }
    assert_eq!((servers, clients), (n, n), "{conns:#?}");
    // Listener and accepted sockets: the server's local port; clients: its remote port.
    let (mut mine, mut theirs) = (0, 0);
    for t in &transitions {
        if t["lport"] == port {
            mine += 1;
            assert_eq!(t["pod_uid"], POD_UID, "{t}");
            assert_eq!(t["container_id"], CONTAINER, "{t}");
            assert_eq!(t["cgroup"], container_path.as_str(), "{t}");
            assert_eq!(t["netns"], ns_b, "{t}");
        } else if t["rport"] == port {
            theirs += 1;
            assert_eq!(t["netns"], ns_a, "{t}");
            assert!(t["pod_uid"].is_null(), "{t}");
        }
    }
    assert!(mine >= 2 + n * 4 && theirs >= n * 4, "{transitions:#?}");
    let header = text.lines().next().expect("header");
    for col in ["NETNS", "POD_UID", "CONTAINER", "CGROUP"] {
        assert!(header.contains(col), "{header}");
    }
    let pod_lines: Vec<&str> = text.lines().filter(|l| l.contains(POD_UID)).collect();
    // The accepted sockets and their listener.
    assert_eq!(pod_lines.len(), n + 1, "{text}");
    let server_lines = pod_lines;
    for l in server_lines {
        assert!(l.contains(&CONTAINER[..12]), "{l}");
        assert!(l.contains(&container_path), "{l}");
        assert!(l.contains(&ns_b.to_string()), "{l}");
    }
    let client_lines = text
        .lines()
        .filter(|l| l.contains(&ns_a.to_string()))
        .count();
    assert_eq!(client_lines, n, "{text}");
}

/// The lifetimes of one role among the events, by socket.
fn lifetimes(events: &[Event], role: &str) -> Vec<Vec<Event>> {
    roles(events).get(role).cloned().unwrap_or_default()
}

#[test]
fn cgroup_and_netns_filters_are_complete_and_exclusive() {
    if !support::need_root("cgroup_and_netns_filters_are_complete_and_exclusive") {
        return;
    }
    let groups = PodGroups::new();
    let link = link();
    let n = 4;
    // The pod's group: the server is in its container's group, below it.
    let pod = groups.target(groups.pod());
    let container_id = fs::metadata(groups.container()).expect("group").ino();
    let ns_a = ns_inode(link.ns_a()) as u32;
    let mut by_cgroup = attach(FilterSpec {
        cgroup: Some(pod),
        ..Default::default()
    });
    let mut by_netns = attach(FilterSpec {
        netns: Some(ns_a),
        ..Default::default()
    });
    let port = free_port("127.0.0.1".parse().expect("ip"));
    // Combined with a socket filter: the server's namespace and its port.
    let mut by_netns_port = attach(FilterSpec {
        netns: Some(ns_inode(link.ns_b()) as u32),
        lports: vec![port],
        ..Default::default()
    });
    let noise = other_traffic(6);
    let addr = format!("{}:{port}", link.addr_b_v4());
    let (srv, _) = PeerProcess::server_in_cgroup(
        groups.container(),
        [
            "--listen",
            &addr,
            "--netns",
            link.ns_b(),
            "--accept",
            &n.to_string(),
        ],
    )
    .expect("server");
    run_client(
        [
            "--connect",
            &addr,
            "--netns",
            link.ns_a(),
            "--count",
            &n.to_string(),
        ],
        LIMIT,
    )
    .expect("client")
    .assert_success();
    srv.finish(LIMIT).expect("server").assert_success();
    let _ = noise.join();

    // Listener (LISTEN, CLOSE) and each accepted socket's SYN_RECV .. CLOSE.
    let kept = collect_for(&mut by_cgroup, 2 + n * 4, Duration::from_secs(5));
    assert!(
        kept.iter().all(|e| e.cgroup_id == container_id),
        "only the pod's sockets: {kept:#?}"
    );
    let accepted = lifetimes(&kept, "accepted");
    assert_eq!(accepted.len(), n, "{kept:#?}");
    for evs in &accepted {
        assert_eq!(
            evs.last().map(|e| e.newstate),
            Some(7),
            "whole lifetime: {evs:#?}"
        );
    }
    assert!(lifetimes(&kept, "client").is_empty(), "{kept:#?}");

    let kept = collect_for(&mut by_netns, n * 4, Duration::from_secs(5));
    assert!(
        kept.iter().all(|e| e.netns == ns_a),
        "only namespace {ns_a}: {kept:#?}"
    );
    let clients = lifetimes(&kept, "client");
    assert_eq!(clients.len(), n, "{kept:#?}");
    for evs in &clients {
        assert_eq!(
            evs.last().map(|e| e.newstate),
            Some(7),
            "whole lifetime: {evs:#?}"
        );
    }
    assert!(lifetimes(&kept, "accepted").is_empty(), "{kept:#?}");

    let kept = collect_for(&mut by_netns_port, 2 + n * 4, Duration::from_secs(5));
    assert!(kept.iter().all(|e| e.sport == port), "{kept:#?}");
    assert_eq!(lifetimes(&kept, "accepted").len(), n, "{kept:#?}");
    assert_eq!(lifetimes(&kept, "listener").len(), 1, "{kept:#?}");
    assert!(lifetimes(&kept, "client").is_empty(), "{kept:#?}");
}

/// GET /metrics over plain HTTP/1.0; the body, or "" when the exporter is not there yet.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return String::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    let _ = write!(s, "GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
    let mut resp = String::new();
    let _ = s.read_to_string(&mut resp);
    resp.split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default()
}

/// Kills and reaps the exporter whatever happened.
struct Reaped(std::process::Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn the_exporter_labels_a_pods_connections() {
    if !support::need_root("the_exporter_labels_a_pods_connections") {
        return;
    }
    let groups = PodGroups::new();
    let link = link();
    let n = 2;
    let port = free_port("127.0.0.1".parse().expect("ip"));
    let listen = free_port("127.0.0.1".parse().expect("ip"));
    let port_s = port.to_string();
    let mut exporter = Reaped(
        std::process::Command::new(env!("CARGO_BIN_EXE_tcpstate"))
            .args([
                "exporter",
                "--listen",
                &format!("127.0.0.1:{listen}"),
                "--port",
                &port_s,
                "--metrics-ports",
                &port_s,
                "--metrics-labels",
                "container",
                "--duration",
                "60",
            ])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("start the exporter"),
    );
    let stderr = exporter.0.stderr.take().expect("stderr");
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    loop {
        match lines.next() {
            Some(Ok(l)) if l.starts_with("tcpstate: tracing") => break,
            Some(Ok(_)) => continue,
            _ => panic!("the exporter exited before tracing"),
        }
    }
    std::thread::spawn(move || for _ in lines {});
    let addr = format!("{}:{port}", link.addr_b_v4());
    let (srv, _) = PeerProcess::server_in_cgroup(
        groups.container(),
        [
            "--listen",
            &addr,
            "--netns",
            link.ns_b(),
            "--accept",
            &n.to_string(),
        ],
    )
    .expect("server");
    run_client(
        [
            "--connect",
            &addr,
            "--netns",
            link.ns_a(),
            "--count",
            &n.to_string(),
        ],
        LIMIT,
    )
    .expect("client")
    .assert_success();
    srv.finish(LIMIT).expect("server").assert_success();
    let want = format!(
        "tcpstate_connections_total{{role=\"server\",outcome=\"closed\",port=\"{port}\",pod_uid=\"{POD_UID}\",container_id=\"{CONTAINER}\"}} {n}"
    );
    let client = format!(
        "tcpstate_connections_total{{role=\"client\",outcome=\"time_wait\",port=\"{port}\",pod_uid=\"\",container_id=\"\"}} {n}"
    );
    let deadline = std::time::Instant::now() + LIMIT;
    let mut body = String::new();
    while std::time::Instant::now() < deadline {
        body = scrape(listen);
        if body.contains(&want) && body.contains(&client) {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    panic!("no {want} and {client} in\n{body}");
}

#[test]
fn a_listener_older_than_the_trace_gets_its_cgroup_from_proc() {
    if !support::need_root("a_listener_older_than_the_trace_gets_its_cgroup_from_proc") {
        return;
    }
    let groups = PodGroups::new();
    let link = link();
    let n = 2;
    let port = free_port("127.0.0.1".parse().expect("ip"));
    let addr = format!("{}:{port}", link.addr_b_v4());
    // Listening before tracing starts: only the start-up scan of /proc knows its owner.
    let (srv, _) = PeerProcess::server_in_cgroup(
        groups.container(),
        [
            "--listen",
            &addr,
            "--netns",
            link.ns_b(),
            "--accept",
            &n.to_string(),
        ],
    )
    .expect("server");
    let pod = groups.rel(groups.pod());
    let json = Trace::start_filtered(port, &["--cgroup", &pod], &[]);
    run_client(
        [
            "--connect",
            &addr,
            "--netns",
            link.ns_a(),
            "--count",
            &n.to_string(),
        ],
        LIMIT,
    )
    .expect("client")
    .assert_success();
    srv.finish(LIMIT).expect("server").assert_success();
    let conns = json.stop();
    let servers: Vec<_> = conns.iter().filter(|c| c["role"] == "server").collect();
    assert_eq!(servers.len(), n, "{conns:#?}");
    for c in servers {
        assert_eq!(c["pod_uid"], POD_UID, "{c}");
        assert_eq!(c["container_id"], CONTAINER, "{c}");
        assert_eq!(c["netns"], ns_inode(link.ns_b()), "{c}");
    }
    // The --cgroup filter keeps the pod's sockets only: no client.
    assert!(conns.iter().all(|c| c["role"] != "client"), "{conns:#?}");
}
