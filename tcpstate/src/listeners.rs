//! Listener health (issue 13): per listening socket, its accept queue against its limit, the
//! SYN-ACKs it resent and the packets the kernel dropped for it, plus the kernel's per-namespace
//! listen and SYN-cookie counters from `/proc/PID/net/netstat`.
//!
//! Which signal is which:
//! - **accept queue** (`depth` / `limit`): `sk_ack_backlog` / `sk_max_ack_backlog` of the
//!   listener, read when it creates a child socket (a handshake completed), before the child
//!   joins the queue. It counts completed handshakes not yet `accept()`ed. The kernel admits a
//!   child while the depth is at most the limit, so a depth equal to the limit means the queue
//!   is full: the next completed handshake overflows. The SYN backlog (half-open request
//!   sockets) is not visible this way.
//! - **drops**: `skb:kfree_skb` packets whose receiving socket is the listener, by the kernel's
//!   `enum skb_drop_reason` (`tcp_listen_overflow`: the accept queue was full; `socket_backlog`:
//!   the socket's backlog of packets queued while it was locked was full; ...).
//! - **SYN-ACK retransmits**: `tcp:tcp_retransmit_synack`, whose socket is the listener.
//! - **netstat**: `ListenOverflows`, `ListenDrops`, `SyncookiesSent`, `SyncookiesRecv`,
//!   `SyncookiesFailed` of each network namespace: every listener of that namespace counts in
//!   them, traced or not, so they say "some listener here", not which.
//!
//! Everything here is cumulative since tracing started (interval summaries included).

use std::collections::BTreeMap;

use serde::Serialize;

pub use tcpstate_common::{listener_kind, listener_known, ListenerRecord};

use crate::facts::RetransmitRecord;
use crate::pipeline::ResetReasons;

/// The `TcpExt` counters of `/proc/PID/net/netstat` tcpstate samples, with their names there.
pub const NETSTAT_FIELDS: [(&str, &str); 5] = [
    ("listen_overflows", "ListenOverflows"),
    ("listen_drops", "ListenDrops"),
    ("syncookies_sent", "SyncookiesSent"),
    ("syncookies_recv", "SyncookiesRecv"),
    ("syncookies_failed", "SyncookiesFailed"),
];

/// One network namespace's counters at one moment (an [`Input`](crate::input::Input) of its
/// own, so a replay shows what the live trace showed).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NetstatSample {
    /// The namespace's inode number (`readlink /proc/PID/ns/net`: `net:[N]`).
    pub netns: u64,
    /// The process it was read through.
    pub pid: u32,
    /// CLOCK_MONOTONIC when read.
    pub ts_ns: u64,
    /// [`NETSTAT_FIELDS`] in order; None when the kernel does not have the counter.
    pub values: [Option<u64>; 5],
}

/// The [`NETSTAT_FIELDS`] values of a `/proc/net/netstat` text: its `TcpExt:` lines come in
/// pairs, names then values.
pub fn parse_netstat(text: &str) -> [Option<u64>; 5] {
    let mut out = [None; 5];
    let mut lines = text.lines();
    while let Some(names) = lines.next() {
        let Some(names) = names.strip_prefix("TcpExt:") else {
            continue;
        };
        let Some(values) = lines.next().and_then(|l| l.strip_prefix("TcpExt:")) else {
            break;
        };
        for (name, value) in names.split_whitespace().zip(values.split_whitespace()) {
            if let Some(i) = NETSTAT_FIELDS.iter().position(|(_, n)| *n == name) {
                out[i] = value.parse().ok();
            }
        }
    }
    out
}

/// Most listeners tracked; more are counted in `untracked` (their records are dropped).
pub const MAX_LISTENERS: usize = 1024;
/// Most drop reasons kept per listener (the enum is small; this bounds a broken input).
const MAX_REASONS_PER_LISTENER: usize = 32;
/// Most namespaces kept.
const MAX_NAMESPACES: usize = 256;

/// A listener's local end.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ListenerKey {
    pub port: u16,
    pub family: u16,
    pub addr: [u8; 16],
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ListenerStats {
    /// The latest socket address seen for it.
    pub skaddr: u64,
    /// Accept-queue readings (children created).
    pub accepted: u64,
    pub last_depth: Option<u32>,
    pub max_depth: Option<u32>,
    pub limit: Option<u32>,
    /// Readings with the depth at the limit (the queue full).
    pub full: u64,
    /// Dropped packets by reason value.
    pub drops: BTreeMap<u32, u64>,
    pub synack_retransmits: u64,
}

impl ListenerStats {
    pub fn drops_total(&self) -> u64 {
        self.drops.values().sum()
    }
}

/// The state of every listener and namespace, fed by the pipeline.
#[derive(Debug, Clone, Default)]
pub struct Health {
    listeners: BTreeMap<ListenerKey, ListenerStats>,
    /// Records of listeners beyond [`MAX_LISTENERS`].
    pub untracked: u64,
    /// Listener socket address -> key, to place SYN-ACK retransmits (which carry the listener's
    /// address, and the child's 4-tuple).
    by_skaddr: BTreeMap<u64, ListenerKey>,
    /// Namespace -> (first sample, latest sample).
    netstat: BTreeMap<u64, (NetstatSample, NetstatSample)>,
}

impl Health {
    pub fn is_empty(&self) -> bool {
        self.listeners.is_empty() && self.netstat.is_empty()
    }

    fn entry(&mut self, key: ListenerKey, skaddr: u64) -> Option<&mut ListenerStats> {
        if !self.listeners.contains_key(&key) && self.listeners.len() >= MAX_LISTENERS {
            self.untracked += 1;
            return None;
        }
        if skaddr != 0 && self.by_skaddr.len() < MAX_LISTENERS * 4 {
            self.by_skaddr.insert(skaddr, key);
        }
        let s = self.listeners.entry(key).or_default();
        if skaddr != 0 {
            s.skaddr = skaddr;
        }
        Some(s)
    }

    pub fn listener(&mut self, r: &ListenerRecord) {
        let key = ListenerKey {
            port: r.port,
            family: r.family,
            addr: r.addr,
        };
        let Some(s) = self.entry(key, r.skaddr) else {
            return;
        };
        match r.kind {
            listener_kind::QUEUE => {
                s.accepted += 1;
                if r.known & listener_known::QUEUE != 0 {
                    s.last_depth = Some(r.depth);
                    s.max_depth = Some(s.max_depth.map_or(r.depth, |m| m.max(r.depth)));
                    s.limit = Some(r.limit);
                    s.full += u64::from(r.depth >= r.limit);
                }
            }
            listener_kind::DROP => {
                if s.drops.len() < MAX_REASONS_PER_LISTENER || s.drops.contains_key(&r.reason) {
                    *s.drops.entry(r.reason).or_default() += 1;
                } else {
                    // Bounded: an unexpected reason beyond the cap counts as "unknown".
                    *s.drops.entry(u32::MAX).or_default() += 1;
                }
            }
            _ => {}
        }
    }

    /// A listener's listen() (its CLOSE -> LISTEN event): its socket address names it, for the
    /// SYN-ACK retransmits that follow. No entry yet: a listener shows once something happened
    /// to it.
    pub fn learn(&mut self, ev: &crate::event::Event) {
        if ev.newstate != tcpstate_common::state::LISTEN
            || self.by_skaddr.len() >= MAX_LISTENERS * 4
        {
            return;
        }
        let key = ListenerKey {
            port: ev.sport,
            family: u16::from(ev.family),
            addr: ev.saddr,
        };
        self.by_skaddr.insert(ev.skaddr, key);
    }

    /// A SYN-ACK retransmit: counted on its listener when the listener's address is known here
    /// (from its listen(), a queue reading or a drop). Others stay with their connections only.
    pub fn retransmit(&mut self, r: &RetransmitRecord) {
        if r.kind != tcpstate_common::retransmit_kind::SYNACK {
            return;
        }
        let Some(&key) = self.by_skaddr.get(&r.skaddr) else {
            return;
        };
        if let Some(s) = self.entry(key, r.skaddr) {
            s.synack_retransmits += 1;
        }
    }

    pub fn netstat(&mut self, n: &NetstatSample) {
        if let Some((_, last)) = self.netstat.get_mut(&n.netns) {
            *last = *n;
        } else if self.netstat.len() < MAX_NAMESPACES {
            self.netstat.insert(n.netns, (*n, *n));
        }
    }

    pub fn listeners(&self) -> impl Iterator<Item = (&ListenerKey, &ListenerStats)> {
        self.listeners.iter()
    }

    /// Per namespace: the first and the latest sample.
    pub fn namespaces(&self) -> impl Iterator<Item = &(NetstatSample, NetstatSample)> {
        self.netstat.values()
    }

    /// Summed over namespaces, each field's increase since its first sample (None when no
    /// namespace knows it).
    pub fn netstat_increase(&self) -> [Option<u64>; 5] {
        let mut out = [None; 5];
        for (first, last) in self.netstat.values() {
            for (i, o) in out.iter_mut().enumerate() {
                if let (Some(a), Some(b)) = (first.values[i], last.values[i]) {
                    *o = Some(o.unwrap_or(0) + b.saturating_sub(a));
                }
            }
        }
        out
    }
}

/// A listener's address for humans: `*:8080`, `127.0.0.1:8080`, `[::1]:8080`.
pub fn describe(k: &ListenerKey) -> String {
    let a = &k.addr;
    if k.family == u16::from(tcpstate_common::AF_INET) {
        if a[..4] == [0; 4] {
            format!("*:{}", k.port)
        } else {
            format!("{}.{}.{}.{}:{}", a[0], a[1], a[2], a[3], k.port)
        }
    } else if *a == [0; 16] {
        format!("[::]:{}", k.port)
    } else {
        format!("[{}]:{}", std::net::Ipv6Addr::from(*a), k.port)
    }
}

/// The address part alone, for JSON (`0.0.0.0`, `::`, ...).
pub fn addr_text(k: &ListenerKey) -> String {
    let a = &k.addr;
    if k.family == u16::from(tcpstate_common::AF_INET) {
        std::net::Ipv4Addr::new(a[0], a[1], a[2], a[3]).to_string()
    } else {
        std::net::Ipv6Addr::from(*a).to_string()
    }
}

/// A drop reason's name: from the kernel's enum when known, else `reason_N`.
pub fn reason_name(names: &ResetReasons, reason: u32) -> String {
    if reason == u32::MAX {
        return "unknown".into();
    }
    u16::try_from(reason)
        .ok()
        .and_then(|r| names.name(r))
        .map_or_else(|| format!("reason_{reason}"), str::to_string)
}

/// The summary's `listeners` array element.
#[derive(Debug, Serialize)]
pub struct ListenerJson {
    pub addr: String,
    pub port: u16,
    pub skaddr: String,
    pub accepted: u64,
    pub queue_depth: Option<u32>,
    pub queue_max: Option<u32>,
    pub queue_limit: Option<u32>,
    pub queue_full: u64,
    pub synack_retransmits: u64,
    pub drops: u64,
    pub drop_reasons: BTreeMap<String, u64>,
}

/// The summary's `netstat` object: per namespace, the latest values and their increase since
/// the first sample.
#[derive(Debug, Serialize)]
pub struct NetstatJson {
    pub namespaces: Vec<NamespaceJson>,
}

#[derive(Debug, Serialize)]
pub struct NamespaceJson {
    pub netns: u64,
    pub pid: u32,
    pub values: BTreeMap<&'static str, Option<u64>>,
    pub increase: BTreeMap<&'static str, Option<u64>>,
}

impl Health {
    pub fn listeners_json(&self, names: &ResetReasons) -> Vec<ListenerJson> {
        self.listeners
            .iter()
            .map(|(k, s)| ListenerJson {
                addr: addr_text(k),
                port: k.port,
                skaddr: format!("{:#x}", s.skaddr),
                accepted: s.accepted,
                queue_depth: s.last_depth,
                queue_max: s.max_depth,
                queue_limit: s.limit,
                queue_full: s.full,
                synack_retransmits: s.synack_retransmits,
                drops: s.drops_total(),
                drop_reasons: s
                    .drops
                    .iter()
                    .map(|(&r, &n)| (reason_name(names, r), n))
                    .collect(),
            })
            .collect()
    }

    pub fn netstat_json(&self) -> Option<NetstatJson> {
        if self.netstat.is_empty() {
            return None;
        }
        let namespaces = self
            .netstat
            .values()
            .map(|(first, last)| {
                let mut values = BTreeMap::new();
                let mut increase = BTreeMap::new();
                for (i, (name, _)) in NETSTAT_FIELDS.iter().enumerate() {
                    values.insert(*name, last.values[i]);
                    increase.insert(
                        *name,
                        first.values[i]
                            .zip(last.values[i])
                            .map(|(a, b)| b.saturating_sub(a)),
                    );
                }
                NamespaceJson {
                    netns: last.netns,
                    pid: last.pid,
                    values,
                    increase,
                }
            })
            .collect();
        Some(NetstatJson { namespaces })
    }

    /// The summary's text lines (none when nothing is known).
    pub fn text(&self, names: &ResetReasons, out: &mut impl std::fmt::Write) -> std::fmt::Result {
        for (k, s) in &self.listeners {
            let show = |v: Option<u32>| v.map_or_else(|| "?".to_string(), |v| v.to_string());
            write!(
                out,
                "listener {}: {} accepted, accept queue {}/{} (max {}, full {} times), {} SYN-ACK retransmits, {} drops",
                describe(k),
                s.accepted,
                show(s.last_depth),
                show(s.limit),
                show(s.max_depth),
                s.full,
                s.synack_retransmits,
                s.drops_total()
            )?;
            if !s.drops.is_empty() {
                out.write_str(" (")?;
                for (i, (&r, &n)) in s.drops.iter().enumerate() {
                    let sep = if i > 0 { ", " } else { "" };
                    write!(out, "{sep}{} {n}", reason_name(names, r))?;
                }
                out.write_str(")")?;
            }
            out.write_char('\n')?;
        }
        if self.untracked > 0 {
            writeln!(
                out,
                "listeners: {} records of listeners beyond the first {MAX_LISTENERS} not counted",
                self.untracked
            )?;
        }
        // Only the namespaces where something rose: a container host has hundreds.
        let mut quiet = 0usize;
        for (first, last) in self.netstat.values() {
            let rose = first
                .values
                .iter()
                .zip(&last.values)
                .any(|(a, b)| matches!((a, b), (Some(a), Some(b)) if b > a));
            if !rose {
                quiet += 1;
                continue;
            }
            write!(out, "netstat netns {} (pid {}):", last.netns, last.pid)?;
            for (i, (name, _)) in NETSTAT_FIELDS.iter().enumerate() {
                let sep = if i > 0 { "," } else { "" };
                match (first.values[i], last.values[i]) {
                    (Some(a), Some(b)) => write!(out, "{sep} {name} +{}", b.saturating_sub(a))?,
                    _ => write!(out, "{sep} {name} unknown")?,
                }
            }
            out.write_char('\n')?;
        }
        if quiet > 0 {
            writeln!(
                out,
                "netstat: no listen overflow, listen drop or SYN cookie in {quiet} network namespaces"
            )?;
        }
        Ok(())
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    const NETSTAT: &str = "TcpExt: SyncookiesSent SyncookiesRecv SyncookiesFailed EmbryonicRsts ListenOverflows ListenDrops\n\
TcpExt: 1 2 3 4 5 6\n\
IpExt: InNoRoutes\n\
IpExt: 0\n";

    #[test]
    fn parses_the_tcpext_pair() {
        assert_eq!(
            parse_netstat(NETSTAT),
            [Some(5), Some(6), Some(1), Some(2), Some(3)]
        );
        assert_eq!(parse_netstat("garbage\nTcpExt: A\n"), [None; 5]);
    }

    pub(crate) fn queue(port: u16, depth: u32, limit: u32) -> ListenerRecord {
        ListenerRecord {
            ts_ns: 1,
            skaddr: 0x1000 + u64::from(port),
            kind: listener_kind::QUEUE,
            known: listener_known::QUEUE,
            family: 2,
            port,
            _pad: 0,
            depth,
            limit,
            reason: 0,
            _pad2: 0,
            addr: [0; 16],
        }
    }

    #[test]
    fn queue_and_drops_per_listener() {
        let mut h = Health::default();
        for d in [0, 1, 2] {
            h.listener(&queue(80, d, 2));
        }
        h.listener(&queue(81, 0, 128));
        let mut drop = queue(80, 0, 0);
        drop.kind = listener_kind::DROP;
        drop.known = 0;
        drop.reason = 40;
        h.listener(&drop);
        h.listener(&drop);
        let mut names = vec![String::new(); 41];
        names[40] = "tcp_listen_overflow".into();
        let names = ResetReasons::leak(names);
        let j = h.listeners_json(&names);
        assert_eq!(j.len(), 2);
        assert_eq!(
            (j[0].port, j[0].queue_max, j[0].queue_limit),
            (80, Some(2), Some(2))
        );
        assert_eq!(j[0].queue_full, 1);
        assert_eq!(j[0].drop_reasons.get("tcp_listen_overflow"), Some(&2));
        assert_eq!((j[1].port, j[1].drops, j[1].queue_full), (81, 0, 0));
        let mut text = String::new();
        h.text(&names, &mut text).expect("text");
        assert!(text.contains("listener *:80: 3 accepted, accept queue 2/2 (max 2, full 1 times), 0 SYN-ACK retransmits, 2 drops (tcp_listen_overflow 2)"), "{text}");
    }

    #[test]
    fn synack_retransmits_go_to_the_listener_named_by_its_listen() {
        use tcpstate_common::state::{CLOSE, LISTEN};
        let mut h = Health::default();
        let mut r = RetransmitRecord {
            ts_ns: 5,
            skaddr: 0x9000,
            kind: tcpstate_common::retransmit_kind::SYNACK,
            state: 0,
            tcp_flags: 0,
            known: 0,
            segs: 1,
            family: 2,
            sport: 443,
            dport: 50_000,
            err: 0,
            saddr: [0; 16],
            daddr: [0; 16],
        };
        // Unknown listener: not counted (the retransmit alone does not say its address).
        h.retransmit(&r);
        assert_eq!(h.listeners().count(), 0);
        let listen = crate::event::tests::ev(1, 0x9000, CLOSE, LISTEN, 443, 0);
        h.learn(&listen);
        h.retransmit(&r);
        h.retransmit(&r);
        r.kind = tcpstate_common::retransmit_kind::SKB;
        h.retransmit(&r);
        let (k, s) = h.listeners().next().expect("the listener");
        assert_eq!((k.port, s.synack_retransmits, s.accepted), (443, 2, 0));
    }

    #[test]
    fn netstat_increase_per_namespace() {
        let mut h = Health::default();
        let s = |ns, v| NetstatSample {
            netns: ns,
            pid: 1,
            ts_ns: 0,
            values: [Some(v), Some(v), None, Some(0), Some(0)],
        };
        h.netstat(&s(1, 10));
        h.netstat(&s(2, 3));
        h.netstat(&s(1, 15));
        assert_eq!(
            h.netstat_increase(),
            [Some(5), Some(5), None, Some(0), Some(0)]
        );
        let mut text = String::new();
        h.text(&ResetReasons::default(), &mut text).expect("text");
        assert_eq!(
            text,
            "netstat netns 1 (pid 1): listen_overflows +5, listen_drops +5, syncookies_sent unknown, syncookies_recv +0, syncookies_failed +0\n\
             netstat: no listen overflow, listen drop or SYN cookie in 1 network namespaces\n"
        );
        let j = h.netstat_json().expect("some");
        assert_eq!(j.namespaces[0].increase["listen_overflows"], Some(5));
        assert_eq!(j.namespaces[0].values["syncookies_sent"], None);
    }
}
