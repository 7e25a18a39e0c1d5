//! JSON Lines: one object per connection, per transition or per summary, each naming its
//! schema (`docs/json-schema.md`, `docs/schema/*.json`). Field names are stable snake_case;
//! times are integer nanoseconds (monotonic `*_ns`, wall clock `*_unix_ns`) with rounded
//! millisecond companions (`*_ms`); unknown values are `null`.

use crate::cgroup::Names;
use std::{borrow::Cow, io, net::IpAddr};

use serde::{Serialize, Serializer};
use tcpstate_common::{owner_source, AF_INET};

use super::jsonw::{begin, fields, Comm, Hex, Name, Value};
use super::ms_f64;
use super::summary::{Summary, SummaryKind};
use crate::event::{comm, local_addr, remote_addr, state_name, Event};
use crate::facts::ResetRecord;
use crate::input::KernelCounters;
use crate::pipeline::ResetReasons;
use crate::stats::{Histogram, Log2Histogram};
use crate::timeline::{errno_name, Conn, Outcome, Phase, RetxKind, Role, Step};

pub const CONNECTION_SCHEMA: &str = "tcpstate.connection.v2";
pub const REFUSED_SCHEMA: &str = "tcpstate.refused.v1";
pub const TRANSITION_SCHEMA: &str = "tcpstate.transition.v2";
pub const SUMMARY_SCHEMA: &str = "tcpstate.summary.v2";
pub const STUCK_SCHEMA: &str = "tcpstate.stuck.v1";

fn family(f: u8) -> &'static str {
    if f == AF_INET {
        "ipv4"
    } else {
        "ipv6"
    }
}

pub fn owner_source_name(source: u8) -> &'static str {
    match source {
        owner_source::SYSCALL => "syscall",
        owner_source::REMEMBERED => "remembered",
        owner_source::LISTENER => "listener",
        owner_source::PROC_SCAN => "proc_scan",
        _ => "unknown",
    }
}

fn opt_ms(ns: Option<u64>) -> Option<f64> {
    ns.map(ms_f64)
}

/// The per-record objects below are written field by field (`jsonw`), in the order of their
/// schemas; the summary, one per interval, goes through serde.
///
/// A connection's ladder: `[{state, offset_ns, offset_ms, gap}]`.
fn ladder(c: &Conn, out: &mut Vec<u8>) {
    out.push(b'[');
    for (i, r) in c.ladder().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(b"{\"state\":");
        Name(state_name(r.state)).put(out);
        fields!(out;
            "offset_ns" => r.offset_ns,
            "offset_ms" => ms_f64(r.offset_ns),
            "gap" => r.gap,
        );
        out.push(b'}');
    }
    out.push(b']');
}

/// Where a connection lives: the owner's cgroup v2 group (and the pod and container its path
/// names) and the socket's network namespace; each `null` when unknown.
fn container(cgroup_id: u64, netns: u32, names: &Names, out: &mut Vec<u8>) {
    let info = names.get(cgroup_id);
    fields!(out;
        "cgroup" => info.map(|i| i.path.as_str()),
        // An id without a path is the v2 root on a cgroup v1 host (or a group gone before
        // it was named): not an answer either.
        "cgroup_id" => info.map(|_| cgroup_id),
        "netns" => (netns != 0).then_some(netns),
        "pod_uid" => info.and_then(|i| i.kube.pod_uid.as_deref()),
        "container_id" => info.and_then(|i| i.kube.container_id.as_deref()),
    );
}

/// An errno's symbolic name; `E<number>` for one the table lacks.
struct Errno(u8);

impl Value for Errno {
    fn put(&self, out: &mut Vec<u8>) {
        match errno_name(self.0) {
            Some(n) => Name(n).put(out),
            None => {
                out.extend_from_slice(b"\"E");
                self.0.put(out);
                out.push(b'"');
            }
        }
    }
}

/// `{syn, synack, data, fin, failed}`.
struct Retransmits([u16; 5]);

impl Value for Retransmits {
    fn put(&self, out: &mut Vec<u8>) {
        let r = &self.0;
        out.extend_from_slice(b"{\"syn\":");
        r[RetxKind::Syn as usize].put(out);
        fields!(out;
            "synack" => r[RetxKind::SynAck as usize],
            "data" => r[RetxKind::Data as usize],
            "fin" => r[RetxKind::Fin as usize],
            "failed" => r[RetxKind::Failed as usize],
        );
        out.push(b'}');
    }
}

/// `{direction, reason}`.
struct Reset(&'static str, Option<&'static str>);

impl Value for Reset {
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(b"{\"direction\":");
        Name(self.0).put(out);
        fields!(out; "reason" => self.1);
        out.push(b'}');
    }
}

/// Closes an object and its line.
fn end(out: &mut Vec<u8>) {
    out.extend_from_slice(b"}\n");
}

/// One connection object (`tcpstate.connection.v2`) and its newline.
pub fn connection(
    c: &Conn,
    peer: Option<&Conn>,
    clock: &super::time::ClockBase,
    reasons: &ResetReasons,
    cgroups: &Names,
    out: &mut Vec<u8>,
) {
    let phase = |p| c.phase_ns(p);
    let (ctx_pid, ctx_comm) = c.ctx();
    begin(out, CONNECTION_SCHEMA);
    fields!(out;
        "id" => c.id(),
        "peer_id" => peer.map(Conn::id),
        "skaddr" => Hex(c.skaddr()),
        "family" => Name(family(c.family())),
        "laddr" => c.laddr(),
        "lport" => c.lport(),
        "raddr" => c.raddr(),
        "rport" => c.rport(),
        "role" => Name(c.role().name()),
        "outcome" => Name(c.outcome().name()),
        "closer" => c.closer().name().map(Name),
        "time_wait" => c.time_wait(),
        "syn_retransmitted" => c.syn_retransmitted(),
        "partial" => c.partial(),
        "incomplete" => c.incomplete(),
        "first_state" => Name(state_name(c.first_state())),
        "last_state" => Name(state_name(c.state())),
        "pid" => c.owner().map(|o| o.0),
        "comm" => c.owner().map(|o| Comm(o.1)),
        "owner_source" => Name(owner_source_name(c.owner_source())),
        "ctx_pid" => ctx_pid,
        "ctx_comm" => Comm(ctx_comm),
    );
    container(c.cgroup_id(), c.netns(), cgroups, out);
    fields!(out;
        "start_ns" => c.first_ts(),
        "end_ns" => c.last_ts(),
        "start_unix_ns" => clock.unix_ns(c.first_ts()),
        "end_unix_ns" => clock.unix_ns(c.last_ts()),
        "life_ns" => c.life_ns(),
        "life_ms" => ms_f64(c.life_ns()),
        "handshake_ns" => phase(Phase::Handshake),
        "handshake_ms" => opt_ms(phase(Phase::Handshake)),
        "established_ns" => phase(Phase::Established),
        "established_ms" => opt_ms(phase(Phase::Established)),
        "fin_wait1_ns" => phase(Phase::FinWait1),
        "fin_wait1_ms" => opt_ms(phase(Phase::FinWait1)),
        "fin_wait2_ns" => phase(Phase::FinWait2),
        "fin_wait2_ms" => opt_ms(phase(Phase::FinWait2)),
        "closing_ns" => phase(Phase::Closing),
        "closing_ms" => opt_ms(phase(Phase::Closing)),
        "close_wait_ns" => phase(Phase::CloseWait),
        "close_wait_ms" => opt_ms(phase(Phase::CloseWait)),
        "last_ack_ns" => phase(Phase::LastAck),
        "last_ack_ms" => opt_ms(phase(Phase::LastAck)),
        "close_ns" => c.close_ns(),
        "close_ms" => opt_ms(c.close_ns()),
    );
    out.extend_from_slice(b",\"transitions\":");
    ladder(c, out);
    fields!(out;
        "transitions_overflow" => c.ladder_overflow(),
        "synack_rtt_ns" => c.synack_rtt_ns(),
        "srtt_ns" => c.srtt_ns(),
        "min_rtt_ns" => c.min_rtt_ns(),
        "retransmits" => c.retransmits().map(Retransmits),
        "reset" => c.reset_info().map(|(dir, reason)| Reset(
            if dir == tcpstate_common::reset_direction::SENT {
                "sent"
            } else {
                "received"
            },
            reason.and_then(|r| reasons.name(r)),
        )),
        "errno" => c.errno().filter(|&e| e != 0).map(Errno),
        "bytes_acked" => c.bytes_acked(),
        "bytes_received" => c.bytes_received(),
        "bytes_retrans" => c.bytes_retrans(),
        "segs_in" => c.segs_in(),
        "segs_out" => c.segs_out(),
        "timeout" => c.timeout().name().map(Name),
        "outcome_basis" => c.outcome_basis().name().map(Name),
    );
    end(out);
}

/// One refused inbound attempt (`tcpstate.refused.v1`) and its newline. Addresses are `null`
/// where the running kernel's event carries none.
pub fn refused(r: &ResetRecord, clock: &super::time::ClockBase, out: &mut Vec<u8>) {
    let has = r.family != 0;
    let fam = r.family as u8;
    let ip = |raw: &[u8; 16]| {
        if fam == AF_INET {
            IpAddr::from([raw[0], raw[1], raw[2], raw[3]])
        } else {
            IpAddr::from(*raw)
        }
    };
    begin(out, REFUSED_SCHEMA);
    fields!(out;
        "ts_ns" => r.ts_ns,
        "unix_ns" => clock.unix_ns(r.ts_ns),
        "family" => has.then(|| Name(family(fam))),
        "laddr" => has.then(|| ip(&r.saddr)),
        "lport" => has.then_some(r.sport),
        "raddr" => has.then(|| ip(&r.daddr)),
        "rport" => has.then_some(r.dport),
    );
    end(out);
}

/// An open socket that crossed its stuck threshold at `at_ns` (`tcpstate.stuck.v1`).
pub fn stuck(
    c: &Conn,
    at_ns: u64,
    clock: &super::time::ClockBase,
    cgroups: &Names,
    out: &mut Vec<u8>,
) {
    let owner = c.owner();
    begin(out, STUCK_SCHEMA);
    fields!(out;
        "ts_ns" => at_ns,
        "unix_ns" => clock.unix_ns(at_ns),
        "state" => Name(state_name(c.state())),
        "age_ns" => at_ns.saturating_sub(c.state_ts()),
        "since_ns" => c.state_ts(),
        "pid" => owner.map(|(p, _)| p),
        "comm" => owner.map(|(_, raw)| Comm(raw)),
        "family" => Name(family(c.family())),
        "laddr" => c.laddr(),
        "lport" => c.lport(),
        "raddr" => c.raddr(),
        "rport" => c.rport(),
        "skaddr" => Hex(c.skaddr()),
        "id" => c.id(),
        "role" => Name(c.role().name()),
        "partial" => c.partial(),
    );
    container(c.cgroup_id(), c.netns(), cgroups, out);
    end(out);
}

/// One transition object (`tcpstate.transition.v2`) and its newline.
pub fn transition(
    ev: &Event,
    step: &Step,
    clock: &super::time::ClockBase,
    cgroups: &Names,
    out: &mut Vec<u8>,
) {
    let in_old = step.since_ns.map(|s| ev.ts_ns.saturating_sub(s));
    let known = step.owner_pid != 0;
    begin(out, TRANSITION_SCHEMA);
    fields!(out;
        "ts_ns" => ev.ts_ns,
        "unix_ns" => clock.unix_ns(ev.ts_ns),
        "skaddr" => Hex(ev.skaddr),
        "family" => Name(family(ev.family)),
        "laddr" => local_addr(ev),
        "lport" => ev.sport,
        "raddr" => remote_addr(ev),
        "rport" => ev.dport,
        "old_state" => Name(state_name(ev.oldstate)),
        "new_state" => Name(state_name(ev.newstate)),
        "old_state_ns" => in_old,
        "old_state_ms" => opt_ms(in_old),
        "pid" => known.then_some(step.owner_pid),
        "comm" => known.then_some(Comm(&step.owner_comm)),
        "owner_source" => Name(owner_source_name(step.owner_source)),
        "ctx_pid" => ev.ctx_pid,
        "ctx_comm" => Comm(&ev.ctx_comm),
    );
    container(step.cgroup_id, step.netns, cgroups, out);
    end(out);
}

#[derive(Serialize)]
struct LatencyJson {
    count: u64,
    p50_ns: Option<u64>,
    p90_ns: Option<u64>,
    p99_ns: Option<u64>,
    max_ns: Option<u64>,
    p50_ms: Option<f64>,
    p90_ms: Option<f64>,
    p99_ms: Option<f64>,
    max_ms: Option<f64>,
}

impl LatencyJson {
    fn of(h: &Histogram) -> LatencyJson {
        let p = |q| h.percentile(q);
        LatencyJson {
            count: h.count(),
            p50_ns: p(50.0),
            p90_ns: p(90.0),
            p99_ns: p(99.0),
            max_ns: h.max(),
            p50_ms: opt_ms(p(50.0)),
            p90_ms: opt_ms(p(90.0)),
            p99_ms: opt_ms(p(99.0)),
            max_ms: opt_ms(h.max()),
        }
    }
}

/// The non-empty part of a log2 histogram as `[{low, high, count}]`.
struct Buckets<'a>(&'a Log2Histogram);

impl Serialize for Buckets<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        #[derive(Serialize)]
        struct Bucket {
            low: u64,
            high: u64,
            count: u64,
        }
        s.collect_seq(
            self.0
                .buckets()
                .map(|(low, high, count)| Bucket { low, high, count }),
        )
    }
}

/// Counts keyed by the stable names of an enum's values, all of them present.
struct Counts<'a>(&'a [(&'static str, u64)]);

impl Serialize for Counts<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_map(self.0.iter().map(|(k, v)| (*k, *v)))
    }
}

/// Every kernel counter by name (`null` when unknown), then the two derived from them.
#[derive(Serialize)]
struct KernelJson {
    #[serde(flatten)]
    counters: KernelCounters,
    /// `ringbuf_full + hold_failed + recursion_misses`.
    lost: Option<u64>,
    /// `deferred - released - held_dropped`.
    held: Option<u64>,
}

#[derive(Serialize)]
struct PipelineJson {
    events: u64,
    late_events: u64,
    forced_releases: u64,
    superseded: u64,
    ignored: u64,
    paired: u64,
}

#[derive(Serialize)]
struct SummaryJson<'a> {
    schema: &'static str,
    kind: &'static str,
    start_ns: u64,
    end_ns: u64,
    connections: u64,
    outcomes: Counts<'a>,
    roles: Counts<'a>,
    time_wait: u64,
    partial: u64,
    incomplete: u64,
    still_open: u64,
    evictions: u64,
    connect_latency: LatencyJson,
    connect_latency_us_log2: Buckets<'a>,
    close_wait: LatencyJson,
    kernel: Option<KernelJson>,
    pipeline: PipelineJson,
    why: WhyJson<'a>,
    /// Listener health (issue 13); absent when no listener record arrived.
    #[serde(skip_serializing_if = "Option::is_none")]
    listeners: Option<Vec<crate::listeners::ListenerJson>>,
    /// Per-namespace listen and SYN-cookie counters; absent without samples (a replay of an
    /// older recording).
    #[serde(skip_serializing_if = "Option::is_none")]
    netstat: Option<crate::listeners::NetstatJson>,
    /// Absent when no socket is stuck (older readers and golden files see no change).
    #[serde(skip_serializing_if = "Option::is_none")]
    stuck: Option<StuckNowJson<'a>>,
}

/// The sockets stuck at the end of a summary's period.
#[derive(Serialize)]
struct StuckNowJson<'a> {
    total: u64,
    groups: Vec<StuckGroupJson<'a>>,
}

#[derive(Serialize)]
struct StuckGroupJson<'a> {
    state: &'static str,
    pid: Option<u32>,
    comm: Option<Cow<'a, str>>,
    count: u64,
    oldest_age_ns: u64,
}

/// The summary's part from socket facts, retransmits and resets (issue 10).
#[derive(Serialize)]
struct WhyJson<'a> {
    synack_rtt: LatencyJson,
    synack_rtt_us_log2: Buckets<'a>,
    retransmits: Counts<'a>,
    resets: Counts<'a>,
    errors: Counts<'a>,
    refused_inbound: u64,
    refused_by_port: Vec<PortCount>,
    unjoined: u64,
}

#[derive(Serialize)]
struct PortCount {
    port: u16,
    count: u64,
}

/// One summary object (`tcpstate.summary.v2`) and its newline.
pub fn summary(s: &Summary<'_>, out: &mut impl io::Write) -> io::Result<()> {
    let outcomes: Vec<(&'static str, u64)> = Outcome::ALL
        .iter()
        .map(|&o| (o.name(), s.stats.outcome(o)))
        .collect();
    let roles: Vec<(&'static str, u64)> = Role::ALL
        .iter()
        .map(|&r| (r.name(), s.stats.role(r)))
        .collect();
    let w = &s.stats.why;
    let retx: Vec<(&'static str, u64)> = RetxKind::ALL
        .iter()
        .map(|&k| (k.name(), w.retransmits[k as usize]))
        .collect();
    let resets = [("sent", w.resets_sent), ("received", w.resets_received)];
    // Numbers without a name share one key.
    let mut errors: Vec<(&'static str, u64)> = Vec::new();
    for (&e, &n) in &w.errors {
        let name = errno_name(e).unwrap_or("EUNKNOWN");
        match errors.iter_mut().find(|(k, _)| *k == name) {
            Some((_, total)) => *total += n,
            None => errors.push((name, n)),
        }
    }
    let obj = SummaryJson {
        schema: SUMMARY_SCHEMA,
        kind: match s.kind {
            SummaryKind::Interval => "interval",
            SummaryKind::Final => "final",
        },
        start_ns: s.start_ns,
        end_ns: s.end_ns,
        connections: s.stats.connections,
        outcomes: Counts(&outcomes),
        roles: Counts(&roles),
        time_wait: s.stats.time_wait,
        partial: s.stats.partial,
        incomplete: s.stats.incomplete,
        still_open: s.still_open,
        evictions: s.evictions,
        connect_latency: LatencyJson::of(&s.stats.connect),
        connect_latency_us_log2: Buckets(&s.stats.connect_us),
        close_wait: LatencyJson::of(&s.stats.close_wait),
        kernel: s.counters.map(|k| KernelJson {
            counters: k,
            lost: k.lost(),
            held: k.held(),
        }),
        pipeline: PipelineJson {
            events: s.pipeline.events,
            late_events: s.pipeline.late,
            forced_releases: s.pipeline.forced,
            superseded: s.pipeline.superseded,
            ignored: s.pipeline.ignored,
            paired: s.pipeline.paired,
        },
        why: WhyJson {
            synack_rtt: LatencyJson::of(&w.synack_rtt),
            synack_rtt_us_log2: Buckets(&w.synack_rtt_us),
            retransmits: Counts(&retx),
            resets: Counts(&resets),
            errors: Counts(&errors),
            refused_inbound: w.refused,
            refused_by_port: w
                .refused_by_port
                .iter()
                .map(|(&port, &count)| PortCount { port, count })
                .collect(),
            unjoined: s.pipeline.unjoined,
        },
        listeners: Some(s.health.listeners_json(&s.drop_reasons)).filter(|l| !l.is_empty()),
        netstat: s.health.netstat_json(),
        stuck: (s.stuck_now > 0).then(|| StuckNowJson {
            total: s.stuck_now,
            groups: s
                .stuck
                .iter()
                .map(|g| StuckGroupJson {
                    state: state_name(g.state),
                    pid: (g.pid != 0).then_some(g.pid),
                    comm: (g.pid != 0).then(|| comm(&g.comm)),
                    count: g.count,
                    oldest_age_ns: s.end_ns.saturating_sub(g.oldest_since_ns),
                })
                .collect(),
        }),
    };
    write_line(&obj, out)
}

fn write_line(obj: &impl Serialize, out: &mut impl io::Write) -> io::Result<()> {
    serde_json::to_writer(&mut *out, obj).map_err(io::Error::from)?;
    out.write_all(b"\n")
}
