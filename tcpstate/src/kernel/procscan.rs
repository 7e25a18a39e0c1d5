//! Sockets that existed before tracing started, and their owners, read from /proc the way
//! `ss -tanp` does: /proc/net/tcp{,6} for the sockets, /proc/PID/fd for who holds them.
//!
//! The kernel program learns owners from system calls it sees; a socket created before it was
//! attached never makes one, so its owner comes from here.

use std::{
    collections::{HashMap, HashSet},
    fs, io,
    net::{Ipv4Addr, Ipv6Addr},
    path::{Path, PathBuf},
};

use tcpstate_common::{
    owner_flags, Filter, ListenKey, Owner, TupleKey, AF_INET, AF_INET6, TASK_COMM_LEN,
};

use crate::cgroup;

const ST_ESTABLISHED: u8 = 0x01;
const ST_LISTEN: u8 = 0x0A;

/// One line of /proc/net/tcp or /proc/net/tcp6.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcSocket {
    pub family: u8,
    pub state: u8,
    /// Network byte order, IPv4 in the first 4 bytes (as in events).
    pub local: [u8; 16],
    pub lport: u16,
    pub remote: [u8; 16],
    pub rport: u16,
    pub inode: u64,
}

/// `0100007F:1F90` (IPv4) or 32 hex digits (IPv6): each 32-bit word is printed in host order.
fn parse_endpoint(s: &str, family: u8) -> Option<([u8; 16], u16)> {
    let (addr, port) = s.split_once(':')?;
    let port = u16::from_str_radix(port, 16).ok()?;
    let words = if family == AF_INET { 1 } else { 4 };
    if addr.len() != words * 8 {
        return None;
    }
    let mut out = [0u8; 16];
    for w in 0..words {
        let word = u32::from_str_radix(addr.get(w * 8..w * 8 + 8)?, 16).ok()?;
        out[w * 4..w * 4 + 4].copy_from_slice(&word.to_ne_bytes());
    }
    Some((out, port))
}

/// Parses /proc/net/tcp (`family` AF_INET) or /proc/net/tcp6 (AF_INET6) line by line into
/// `out`: the file of a busy host is tens of megabytes of TIME_WAIT sockets, which reading it
/// whole would leave behind in the allocator. Lines that do not parse are skipped (the header,
/// or a format this version does not know). Sockets no process holds (inode 0: TIME_WAIT,
/// orphans) are skipped before their addresses are parsed.
pub fn parse_proc_net_tcp(mut text: impl io::BufRead, family: u8, out: &mut Vec<ProcSocket>) {
    let mut line = String::new();
    let mut header = true;
    loop {
        line.clear();
        match text.read_line(&mut line) {
            Ok(0) | Err(_) => break,
            Ok(_) if header => header = false,
            Ok(_) => out.extend(parse_socket_line(&line, family)),
        }
    }
}

/// One line of /proc/net/tcp{,6}; None for the header, an unknown format or a socket no
/// process holds.
fn parse_socket_line(line: &str, family: u8) -> Option<ProcSocket> {
    let mut cols = line.split_whitespace();
    let local = cols.nth(1)?;
    let remote = cols.next()?;
    let state = cols.next()?;
    // tx_queue:rx_queue, tr:tm->when, retrnsmt, uid, timeout, then the inode.
    let inode: u64 = cols.nth(5)?.parse().ok()?;
    if inode == 0 {
        return None;
    }
    let state = u8::from_str_radix(state, 16).ok()?;
    let (local, lport) = parse_endpoint(local, family)?;
    let (remote, rport) = parse_endpoint(remote, family)?;
    Some(ProcSocket {
        family,
        state,
        local,
        lport,
        remote,
        rport,
        inode,
    })
}

fn comm_bytes(name: &str) -> [u8; TASK_COMM_LEN] {
    let mut out = [0u8; TASK_COMM_LEN];
    let b = name.trim_end_matches('\n').as_bytes();
    let n = b.len().min(TASK_COMM_LEN - 1);
    out[..n].copy_from_slice(&b[..n]);
    out
}

/// Socket inode -> the process holding it. A socket held by several processes (a listener
/// shared by forked workers) gets pid 0: which of them will act on it cannot be known.
pub fn socket_owners(proc_root: &Path, cgroups: &CgroupScan) -> HashMap<u64, Owner> {
    let mut owners: HashMap<u64, Owner> = HashMap::new();
    let Ok(dir) = fs::read_dir(proc_root) else {
        return owners;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        // Processes come and go while we read; whatever vanished is simply skipped.
        let Ok(fds) = fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        let comm = fs::read_to_string(entry.path().join("comm")).unwrap_or_default();
        // Read only for processes that hold a socket.
        let mut cgroup: Option<(u64, u32)> = None;
        for fd in fds.flatten() {
            let Ok(target) = fs::read_link(fd.path()) else {
                continue;
            };
            let Some(inode) = target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .and_then(|t| t.parse::<u64>().ok())
            else {
                continue;
            };
            let (cgroup_id, flags) = *cgroup.get_or_insert_with(|| cgroups.of(&entry.path()));
            let owner = Owner {
                pid,
                tid: pid,
                comm: comm_bytes(&comm),
                cgroup_id,
                // The kernel reads the socket's own namespace when it first meets the socket.
                netns: 0,
                flags,
            };
            owners
                .entry(inode)
                .and_modify(|o| {
                    if o.pid != pid {
                        o.pid = 0;
                        o.tid = 0;
                    }
                })
                .or_insert(owner);
        }
    }
    owners
}

/// How the scan learns a process's cgroup v2 id (the inode of its group's directory), and
/// whether it is in the `--cgroup` group (`owner_flags::IN_CGROUP`).
#[derive(Debug, Default)]
pub struct CgroupScan {
    root: Option<PathBuf>,
    /// `--cgroup`: the group's id and level.
    target: Option<(u64, u32)>,
}

impl CgroupScan {
    pub fn new(filter: &Filter) -> CgroupScan {
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        CgroupScan {
            root: cgroup::cgroup2_mount(&mountinfo),
            target: (filter.flags & tcpstate_common::filter_flags::CGROUP != 0)
                .then_some((filter.cgroup_id, filter.cgroup_level)),
        }
    }

    /// The cgroup id and owner flags of the process at `/proc/PID`.
    fn of(&self, proc_pid: &Path) -> (u64, u32) {
        let Some(root) = &self.root else {
            return (0, 0);
        };
        let text = fs::read_to_string(proc_pid.join("cgroup")).unwrap_or_default();
        let Some(path) = cgroup::v2_path_of(&text) else {
            return (0, 0);
        };
        let id = cgroup::id_of(root, path).unwrap_or(0);
        let mut flags = 0;
        if let Some((target, level)) = self.target {
            let parts: Vec<&str> = path.split('/').filter(|p| !p.is_empty()).collect();
            if let Some(prefix) = parts.get(..level as usize) {
                if cgroup::id_of(root, &prefix.join("/")) == Some(target) {
                    flags |= owner_flags::IN_CGROUP;
                }
            }
        }
        (id, flags)
    }
}

/// What the kernel program's attribution maps get at start-up.
#[derive(Debug, Default)]
pub struct Preexisting {
    pub listeners: Vec<(ListenKey, Owner)>,
    pub connections: Vec<(TupleKey, Owner)>,
}

/// Joins sockets with their owners. Sockets nobody holds (orphans, TIME_WAIT) are left out.
pub fn join(sockets: &[ProcSocket], owners: &HashMap<u64, Owner>) -> Preexisting {
    let mut out = Preexisting::default();
    for s in sockets {
        let Some(owner) = owners.get(&s.inode) else {
            continue;
        };
        match s.state {
            ST_LISTEN => out.listeners.push((
                ListenKey {
                    family: s.family as u16,
                    port: s.lport,
                    addr: s.local,
                },
                *owner,
            )),
            ST_ESTABLISHED | 0x02..=0x09 | 0x0B if owner.pid != 0 => out.connections.push((
                TupleKey {
                    family: s.family as u16,
                    sport: s.lport,
                    dport: s.rport,
                    _pad: 0,
                    saddr: s.local,
                    daddr: s.remote,
                },
                *owner,
            )),
            _ => {}
        }
    }
    out
}

/// One process per network namespace: /proc/net/tcp shows only the reader's namespace, and the
/// tracepoint sees them all (containers included), so each is read through one of its members.
fn namespace_representatives(proc_root: &Path) -> Vec<PathBuf> {
    let mut seen = HashSet::new();
    let mut out = vec![proc_root.join("self")];
    if let Ok(own) = fs::read_link(proc_root.join("self/ns/net")) {
        seen.insert(own);
    }
    let Ok(dir) = fs::read_dir(proc_root) else {
        return out;
    };
    for entry in dir.flatten() {
        let is_pid = entry
            .file_name()
            .to_str()
            .is_some_and(|s| s.bytes().all(|b| b.is_ascii_digit()));
        if !is_pid {
            continue;
        }
        if let Ok(ns) = fs::read_link(entry.path().join("ns/net")) {
            if seen.insert(ns) {
                out.push(entry.path());
            }
        }
    }
    out
}

/// Reads the host's current TCP sockets, in every network namespace, and their owners.
pub fn scan(cgroups: &CgroupScan) -> Preexisting {
    let proc_root = Path::new("/proc");
    let mut sockets = Vec::new();
    for member in namespace_representatives(proc_root) {
        for (file, family) in [("net/tcp", AF_INET), ("net/tcp6", AF_INET6)] {
            if let Ok(f) = fs::File::open(member.join(file)) {
                parse_proc_net_tcp(
                    io::BufReader::with_capacity(64 << 10, f),
                    family,
                    &mut sockets,
                );
            }
        }
    }
    join(&sockets, &socket_owners(proc_root, cgroups))
}

/// Reads each network namespace's listen and SYN-cookie counters (`/proc/PID/net/netstat`)
/// through one of its processes, like [`scan`] reads its sockets. Finding the namespaces walks
/// every process, so that is redone only every [`NetstatSampler::RESCAN_EVERY`] samples; a
/// namespace whose process went away is dropped at the next walk.
#[derive(Debug, Default)]
pub struct NetstatSampler {
    members: Vec<(u64, u32)>,
    samples: u64,
}

/// `net:[4026531840]` -> 4026531840.
fn netns_inode(link: &Path) -> Option<u64> {
    let text = fs::read_link(link).ok()?;
    let text = text.to_str()?;
    text.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

impl NetstatSampler {
    pub const RESCAN_EVERY: u64 = 30;

    fn rescan(&mut self) {
        let proc_root = Path::new("/proc");
        self.members = namespace_representatives(proc_root)
            .into_iter()
            .filter_map(|p| {
                let ns = netns_inode(&p.join("ns/net"))?;
                let pid = if p.ends_with("self") {
                    std::process::id()
                } else {
                    p.file_name()?.to_str()?.parse().ok()?
                };
                Some((ns, pid))
            })
            .collect();
    }

    /// One sample per namespace, stamped `ts_ns`.
    pub fn sample(&mut self, ts_ns: u64) -> Vec<crate::listeners::NetstatSample> {
        if self.samples.is_multiple_of(Self::RESCAN_EVERY) {
            self.rescan();
        }
        self.samples += 1;
        let mut out = Vec::with_capacity(self.members.len());
        for &(netns, pid) in &self.members {
            let path = PathBuf::from(format!("/proc/{pid}/net/netstat"));
            // The process may be gone, or in another namespace now: checked again.
            if netns_inode(&PathBuf::from(format!("/proc/{pid}/ns/net"))) != Some(netns) {
                continue;
            }
            if let Ok(text) = fs::read_to_string(&path) {
                out.push(crate::listeners::NetstatSample {
                    netns,
                    pid,
                    ts_ns,
                    values: crate::listeners::parse_netstat(&text),
                });
            }
        }
        out
    }
}

/// For messages: a listening key as text.
pub fn describe(key: &ListenKey) -> String {
    if key.family == AF_INET as u16 {
        let a = Ipv4Addr::new(key.addr[0], key.addr[1], key.addr[2], key.addr[3]);
        format!("{a}:{}", key.port)
    } else {
        format!("[{}]:{}", Ipv6Addr::from(key.addr), key.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str, family: u8) -> Vec<ProcSocket> {
        let mut out = Vec::new();
        parse_proc_net_tcp(text.as_bytes(), family, &mut out);
        out
    }

    const TCP: &str = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 1145 1 0000000041a227d1 100 0 0 10 0
   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000     0        0 2222 1 0000000041a227d1 100 0 0 10 0
   2: 0100007F:9C40 0100007F:1F90 06 00000000:00000000 00:00000000 00000000     0        0 0 1 0000000041a227d1 100 0 0 10 0
";
    const TCP6: &str = "  sl  local_address                         remote_address                        st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 00000000000000000000000001000000:0050 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 3333 1 0000000000000000 100 0 0 10 0
";

    #[test]
    fn parses_ipv4_lines() {
        let s = parse(TCP, AF_INET);
        // The TIME_WAIT line has inode 0: nobody holds it.
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].state, s[0].lport, s[0].inode),
            (ST_LISTEN, 8080, 1145)
        );
        assert_eq!(&s[1].local[..4], &[127, 0, 0, 1]);
        assert_eq!((s[1].lport, s[1].rport), (8080, 50000));
    }

    #[test]
    fn parses_ipv6_lines() {
        let s = parse(TCP6, AF_INET6);
        assert_eq!(s.len(), 1);
        assert_eq!(Ipv6Addr::from(s[0].local), Ipv6Addr::LOCALHOST);
        assert_eq!(s[0].lport, 80);
    }

    #[test]
    fn joins_owners_and_skips_orphans_and_shared_connections() {
        let s = parse(TCP, AF_INET);
        let mut owners = HashMap::new();
        let o = Owner {
            pid: 7,
            tid: 7,
            comm: comm_bytes("srv\n"),
            cgroup_id: 0,
            netns: 0,
            flags: 0,
        };
        owners.insert(1145, o);
        owners.insert(2222, Owner { pid: 0, ..o });
        let p = join(&s, &owners);
        assert_eq!(p.listeners.len(), 1);
        assert_eq!(describe(&p.listeners[0].0), "0.0.0.0:8080");
        assert_eq!(&p.listeners[0].1.comm[..4], b"srv\0");
        assert!(
            p.connections.is_empty(),
            "a shared socket has no single owner"
        );
    }

    #[test]
    fn garbage_is_skipped_not_fatal() {
        assert!(parse("header\nnot a line\n0: zz:zz", AF_INET).is_empty());
    }

    #[test]
    fn reads_this_process_sockets() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = scan(&CgroupScan::default());
        let me = std::process::id();
        assert!(
            p.listeners
                .iter()
                .any(|(k, o)| k.port == port && o.pid == me),
            "own listener on {port} not found"
        );
    }
}
