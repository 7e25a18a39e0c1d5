//! The kernel boundary: loads the embedded eBPF program, configures it, attaches it to
//! `sock:inet_sock_set_state` and exposes its ring buffer and counters.
//!
//! Everything attached here is owned by [`Probe`] and file-descriptor based (perf link, maps),
//! nothing is pinned: dropping the probe, or the process dying for any reason, detaches it.

use std::{
    fs,
    os::fd::{AsFd, AsRawFd, RawFd},
    path::{Path, PathBuf},
};

pub use crate::cli::{Attachment, Attribution};
use aya::{
    maps::{Array, HashMap, LpmTrie, MapData, PerCpuArray, RingBuf},
    programs::{
        tp_btf::BtfTracePointLinkId, trace_point::TracePointLinkId, BtfTracePoint, TracePoint,
    },
    Btf, Ebpf, EbpfLoader,
};
use tcpstate_common::{
    counter, filter_flags, names, port_slot, Counter, DropLayout, JoinLayout, Layout, ListenKey,
    ListenOffsets, ListenOwner, NetnsOffsets, Owner, Settings, SkbOffsets, SockLayout, TupleKey,
    MODERN_LAYOUT,
};

use super::{
    btf::{self, SockOffsets, FIELDS},
    environment::{self, EnvError},
    facts::{Decoder, FactsPlan},
    procscan::Preexisting,
};
use crate::{
    attribution::Attributor,
    filter::KernelFilter,
    input::KernelCounters,
    tpformat::{self, FormatError, JoinEvent},
};

/// The eBPF object built by build.rs, embedded so the binary is self-contained.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/tcpstate.bpf.o"));

const BPF_NOEXIST: u64 = 1;

#[derive(Debug, Clone)]
pub struct ProbeOptions {
    /// Ring buffer size in bytes: a power of two, at least one page.
    pub buffer_bytes: u32,
    /// Wake user space when this many bytes are waiting (it also drains on a timer).
    pub wakeup_bytes: u64,
    pub filter: KernelFilter,
    /// Forward the program's aya-log diagnostics (otherwise the verifier prunes them).
    pub debug_log: bool,
    /// Read the record with direct loads when the format file matches the modern layout;
    /// false forces the generic path (one copy, parsed offsets) for tests.
    pub allow_direct_read: bool,
    /// Which form of the tracepoint to attach to.
    pub attachment: Attachment,
    /// Where sockets are attributed to their owners.
    pub attribution: Attribution,
}

impl Default for ProbeOptions {
    fn default() -> Self {
        ProbeOptions {
            buffer_bytes: 8 << 20,
            wakeup_bytes: 1 << 20,
            filter: KernelFilter::default(),
            debug_log: false,
            allow_direct_read: true,
            attachment: Attachment::Auto,
            attribution: Attribution::Auto,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    #[error(transparent)]
    Env(#[from] EnvError),
    #[error(
        "unexpected layout of {0}: {1}; this kernel's sock:inet_sock_set_state is not supported"
    )]
    Format(PathBuf, FormatError),
    #[error("loading the eBPF program failed: {0}")]
    Load(String),
    #[error("attaching to sock:inet_sock_set_state failed: {0}")]
    Attach(String),
    #[error("eBPF map {0}: {1}")]
    Map(&'static str, String),
}

/// A kernel counter that could not be read: it is unknown, never 0.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot read the kernel counter {}: {reason}", counter.name())]
pub struct CounterError {
    pub counter: Counter,
    /// What failed, said for a user.
    pub reason: String,
}

/// The state-change program's attachment.
enum MainLink {
    Classic(TracePointLinkId),
    /// The BTF tracepoint program, and the rescue pair around it (if it attached).
    Btf {
        main: BtfTracePointLinkId,
        rescue: Option<RescueLinks>,
    },
}

/// The programs that make up for the main BTF program's skipped runs: the herald, attached
/// before it, announces every state change; the rescue program, after it, handles the ones the
/// main program did not claim.
struct RescueLinks {
    herald: BtfTracePointLinkId,
    rescue: BtfTracePointLinkId,
}

/// Loaded, configured and attached.
pub struct Probe {
    ebpf: Ebpf,
    counters: PerCpuArray<MapData, u64>,
    prog_fd: RawFd,
    /// The attachment in use, said in the start-up line ("BTF tracepoint, with rescue", ...).
    pub attachment: &'static str,
    /// Whether tracefs had to be mounted (the caller says so on stderr).
    pub mounted_tracefs: Option<PathBuf>,
    logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    link: Option<MainLink>,
    /// The joined programs attached (program name, link).
    joined: Vec<(&'static str, TracePointLinkId)>,
    /// Their file descriptors, for their `recursion_misses` (owned by `ebpf`).
    joined_fds: Vec<RawFd>,
    /// How the program's facts records decode on this kernel.
    pub facts_plan: FactsPlan,
    /// The owner table, when user space keeps it; moves into the `Decoder`.
    attributor: Option<Attributor>,
    /// Names of this kernel's reset reasons.
    pub reset_reasons: Vec<String>,
    /// Names of this kernel's packet drop reasons (`enum skb_drop_reason`).
    pub drop_reasons: Vec<String>,
    /// The `skb:kfree_skb` program is attached (listener drops are seen).
    pub drops_traced: bool,
    /// What this kernel lacks (facts fields, joined tracepoints), one line each, for the
    /// caller to say once on stderr.
    pub notices: Vec<String>,
}

/// Finds a joined tracepoint's layout; an `Err` is the notice to give (the event is optional).
pub(crate) fn locate_joined(
    tracefs: &Path,
    category: &str,
    name: &str,
    event: JoinEvent,
) -> Result<JoinLayout, String> {
    let path = tracefs
        .join("events")
        .join(category)
        .join(name)
        .join("format");
    let text = fs::read_to_string(&path).map_err(|_| {
        format!(
            "this kernel has no {category}:{name} tracepoint; {}",
            what_is_lost(event)
        )
    })?;
    tpformat::join_layout(&text, event).map_err(|e| {
        format!(
            "unexpected layout of {}: {e}; {}",
            path.display(),
            what_is_lost(event)
        )
    })
}

fn what_is_lost(event: JoinEvent) -> &'static str {
    match event {
        JoinEvent::RetransmitSkb => "retransmits per connection are not shown",
        JoinEvent::RetransmitSynack => "SYN-ACK retransmits are known only from the socket",
        JoinEvent::SendReset => "resets sent and refused inbound connections are not shown",
        JoinEvent::ReceiveReset => "resets received are not shown",
    }
}

/// Offsets and names from the kernel's BTF; without BTF every fact is unknown (said once).
fn read_btf(notices: &mut Vec<String>) -> btf::KernelBtf {
    // Parsing the kernel's BTF makes tens of MiB of small allocations, all freed again. Parsed on
    // a thread of its own they live in that thread's malloc arena, the results are copied out
    // here, and the arena is handed back whole: otherwise a tracer meant to run for months
    // keeps ~20 MiB of freed, fragmented heap resident.
    let parsed = std::thread::Builder::new()
        .name("btf".into())
        .spawn(|| btf::load(Path::new(btf::VMLINUX_BTF)))
        .map_err(|e| btf::BtfError::Read {
            path: btf::VMLINUX_BTF.into(),
            source: e,
        })
        .and_then(|t| {
            t.join().unwrap_or_else(|_| {
                Err(btf::BtfError::Parse {
                    path: btf::VMLINUX_BTF.into(),
                    message: "the parser panicked".into(),
                })
            })
        });
    let loaded = parsed.map(|k| btf::KernelBtf {
        sock: SockOffsets {
            offsets: k.sock.offsets.to_vec(),
        },
        skb: k.skb,
        netns: k.netns,
        reset_reasons: k
            .reset_reasons
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect(),
        drop_reasons: k
            .drop_reasons
            .iter()
            .map(|n| n.as_str().to_owned())
            .collect(),
        sock_layout: k.sock_layout,
        per_program_guard: k.per_program_guard,
    });
    // SAFETY: malloc_trim has no preconditions.
    unsafe { libc::malloc_trim(0) };
    match loaded {
        Ok(k) => {
            if k.netns.ok == 0 {
                notices.push(
                    "this kernel's BTF has no sock.skc_net or net.ns.inum: netns is null".into(),
                );
            }
            k
        }
        Err(e) => {
            notices.push(format!(
                "{e}; socket facts (errno, RTT, bytes, retransmits) are unknown"
            ));
            btf::KernelBtf {
                sock: SockOffsets {
                    offsets: vec![None; FIELDS.len()],
                },
                skb: SkbOffsets::default(),
                netns: NetnsOffsets::default(),
                reset_reasons: Vec::new(),
                drop_reasons: Vec::new(),
                sock_layout: None,
                per_program_guard: false,
            }
        }
    }
}

fn map_err(name: &'static str) -> impl Fn(aya::maps::MapError) -> ProbeError {
    move |e| ProbeError::Map(name, e.to_string())
}

/// Explains the kernel's refusal in terms of what the user can do.
fn describe_load_error(e: &aya::EbpfError) -> String {
    let text = format!("{e:#}");
    if text.contains("EPERM") || text.contains("Operation not permitted") {
        return format!("{text} (needs root, or CAP_BPF and CAP_PERFMON)");
    }
    text
}

impl Probe {
    /// Checks the host, loads the program with `opts` and the start-up scan, and attaches it.
    pub fn attach(opts: &ProbeOptions, preexisting: &Preexisting) -> Result<Probe, ProbeError> {
        environment::check_privileges()?;
        environment::check_kernel_version()?;
        let (tracefs, mounted) = environment::ensure_tracefs()?;
        let format_text = environment::read_tracepoint_format(&tracefs)?;
        let layout: Layout = tpformat::inet_sock_set_state_layout(&format_text).map_err(|e| {
            ProbeError::Format(tracefs.join("events/sock/inet_sock_set_state/format"), e)
        })?;
        // Owner filters need the owner in the kernel; without them user space keeps the owner
        // table, which spares the program every hash-map operation on a socket's events.
        let user_attribution = opts.attribution == Attribution::Auto
            && opts.filter.filter.flags & filter_flags::OWNER == 0;
        let settings = Settings {
            wakeup_bytes: opts.wakeup_bytes,
            direct_read: u32::from(opts.allow_direct_read && layout == MODERN_LAYOUT),
            user_attribution: u32::from(user_attribution),
        };
        // 0 switches every aya-log statement off at verification time.
        let log_level: u8 = if opts.debug_log { 0xff } else { 0 };

        let mut notices = Vec::new();
        let btf::KernelBtf {
            sock: sock_offsets,
            skb,
            netns: netns_offsets,
            reset_reasons,
            drop_reasons,
            sock_layout,
            per_program_guard,
        } = read_btf(&mut notices);
        let route = btf_route(opts.attachment, sock_layout, per_program_guard)?;
        let btf_layout = match route {
            Route::Btf(l) => Some(l),
            Route::Classic(notice) => {
                notices.extend(notice);
                None
            }
        };
        // aya's own parse of the kernel's BTF: the loader relocates with it and the BTF
        // tracepoint programs are loaded against it; dropped once they are.
        let aya_btf = match btf_layout {
            Some(_) => match Btf::from_sys_fs() {
                Ok(b) => Some(b),
                Err(e) if opts.attachment == Attachment::Btf => {
                    return Err(ProbeError::Load(format!("reading the kernel's BTF: {e}")))
                }
                Err(e) => {
                    notices.push(format!(
                        "reading the kernel's BTF failed ({e}): attached to the classic \
                         tracepoint"
                    ));
                    None
                }
            },
            None => None,
        };
        let listen_offsets = listen_offsets(&sock_offsets, &mut notices);
        let drop_layout = locate_kfree_skb(&tracefs).map_err(|n| notices.push(n)).ok();
        if opts.filter.filter.flags & tcpstate_common::filter_flags::NETNS != 0
            && netns_offsets.ok == 0
        {
            return Err(ProbeError::Load(
                "--netns needs the socket's namespace from BTF, which this kernel lacks".into(),
            ));
        }
        let facts_plan = FactsPlan::new(&sock_offsets);
        if !facts_plan.missing.is_empty() && sock_offsets.offsets.iter().any(Option::is_some) {
            notices.push(format!(
                "this kernel's socket lacks {}: shown as null",
                facts_plan.missing.join(", ")
            ));
        }
        if skb.tcp_flags_ok == 0 || skb.gso_segs_ok == 0 {
            notices.push(
                "this kernel's BTF has no tcp_skb_cb flags or segment count: retransmits are \
                 not split into SYN, FIN and data"
                    .into(),
            );
        }
        let mut joined_layouts = Vec::new();
        for event in JoinEvent::ALL {
            let (_, _, category, name) = event.names();
            match locate_joined(&tracefs, category, name, event) {
                Ok(l) => {
                    if event == JoinEvent::SendReset && l.sockaddr == 0 {
                        // Before Linux 6.10 the event took its addresses from the socket only.
                        notices.push(
                            "this kernel's tcp:tcp_send_reset carries no addresses for resets \
                             without a socket: refused inbound connections are counted without \
                             their ports (or not reported at all)"
                                .into(),
                        );
                    }
                    joined_layouts.push((event, l))
                }
                Err(notice) => notices.push(notice),
            }
        }
        let mut loader = EbpfLoader::new();
        if let Some(b) = &aya_btf {
            loader.btf(Some(b));
        }
        for (event, l) in &joined_layouts {
            loader.override_global(event.names().1, l, true);
        }

        let mut ebpf = loader
            .override_global(names::FACT_GROUPS, &facts_plan.groups, true)
            .override_global(names::FACT_FIELDS, &facts_plan.fields, true)
            .override_global(
                names::FACTS_HANDSHAKE_GROUPS,
                &facts_plan.handshake_groups,
                true,
            )
            .override_global(names::SKB_OFFSETS, &skb, true)
            .override_global(names::LISTEN_OFFSETS, &listen_offsets, true)
            .override_global(names::DROP_LAYOUT, &drop_layout.unwrap_or_default(), true)
            .override_global(names::NETNS_OFFSETS, &netns_offsets, true)
            .override_global(names::LAYOUT, &layout, true)
            .override_global(names::SOCK_LAYOUT, &btf_layout.unwrap_or_default(), true)
            .override_global(names::FILTER, &opts.filter.filter, true)
            .override_global(names::SETTINGS, &settings, true)
            .override_global("AYA_LOG_LEVEL", &log_level, false)
            .map_max_entries(names::EVENTS, opts.buffer_bytes)
            .load(OBJECT)
            .map_err(|e| ProbeError::Load(describe_load_error(&e)))?;

        let logger = if opts.debug_log {
            aya_log::EbpfLogger::init(&mut ebpf)
                .map(Some)
                .map_err(|e| ProbeError::Load(format!("aya-log: {e}")))?
        } else {
            None
        };
        fill_filter_maps(&mut ebpf, &opts.filter)?;
        let mut attributor = user_attribution.then(Attributor::default);
        fill_preexisting(&mut ebpf, attributor.as_mut(), preexisting)?;

        let counters: PerCpuArray<MapData, u64> = ebpf
            .take_map(names::COUNTERS)
            .ok_or(ProbeError::Map(names::COUNTERS, "missing".into()))?
            .try_into()
            .map_err(map_err(names::COUNTERS))?;

        let btf_main = match &aya_btf {
            Some(b) => match attach_btf(&mut ebpf, b) {
                Ok(attached) => Some(attached),
                Err(e) if opts.attachment == Attachment::Btf => return Err(e),
                Err(e) => {
                    notices.push(format!("{e}; attached to the classic tracepoint instead"));
                    None
                }
            },
            None => None,
        };
        drop(aya_btf);
        let (prog_fd, link, attachment) = match btf_main {
            Some((fd, main, rescue)) => {
                let how = match &rescue {
                    Ok(_) => "BTF tracepoint, with rescue",
                    Err(e) => {
                        notices.push(format!(
                            "the rescue programs did not attach ({e}): state changes nested \
                             in tcpstate's own run are lost (counted in recursion_misses)"
                        ));
                        "BTF tracepoint"
                    }
                };
                let rescue = rescue.ok();
                (fd, MainLink::Btf { main, rescue }, how)
            }
            None => {
                let (fd, link) = attach_classic(&mut ebpf)?;
                (fd, MainLink::Classic(link), "classic tracepoint")
            }
        };
        // SAFETY: malloc_trim has no preconditions (aya's BTF parse is freed).
        unsafe { libc::malloc_trim(0) };

        let mut joined = Vec::new();
        let mut joined_fds = Vec::new();
        for (event, _) in &joined_layouts {
            match attach_joined(&mut ebpf, *event) {
                Ok((link, fd)) => {
                    joined.push((event.names().0, link));
                    joined_fds.push(fd);
                }
                Err(e) => notices.push(format!(
                    "{} not traced ({e}); {}",
                    event.tracepoint(),
                    what_is_lost(*event)
                )),
            }
        }

        let mut drops_traced = false;
        if drop_layout.is_some() {
            match attach_program(&mut ebpf, names::KFREE_SKB, "skb", "kfree_skb") {
                // Its recursion misses are not state changes lost: its fd stays out of
                // `joined_fds`.
                Ok((link, _fd)) => {
                    joined.push((names::KFREE_SKB, link));
                    drops_traced = true;
                }
                Err(e) => notices.push(format!("skb:kfree_skb not traced ({e}); {KFREE_SKB_LOST}")),
            }
        }

        Ok(Probe {
            ebpf,
            counters,
            prog_fd,
            attachment,
            mounted_tracefs: mounted.then_some(tracefs),
            logger,
            link: Some(link),
            joined,
            joined_fds,
            facts_plan,
            attributor,
            reset_reasons,
            drop_reasons,
            drops_traced,
            notices,
        })
    }

    /// The joined programs attached, by program name (`names::RETRANSMIT_SKB`, ...).
    pub fn joined_programs(&self) -> Vec<&'static str> {
        self.joined.iter().map(|(name, _)| *name).collect()
    }

    /// The sum over CPUs of one of the program's counters (`tcpstate_common::counter`).
    pub fn counter(&self, index: u32) -> Result<u64, ProbeError> {
        self.sum_banks(index).map_err(map_err(names::COUNTERS))
    }

    /// One counter summed over CPUs and over the banks of the programs (see `counter::BANKS`).
    fn sum_banks(&self, index: u32) -> Result<u64, aya::maps::MapError> {
        let mut sum = 0u64;
        for bank in 0..counter::BANKS {
            let values = self.counters.get(&(bank * counter::COUNT + index), 0)?;
            sum = values.iter().fold(sum, |a, v| a.wrapping_add(*v));
        }
        Ok(sum)
    }

    /// Stops the program from running while keeping its maps readable: after this, what the
    /// ring buffer holds is all there will be, and the counters are final.
    pub fn detach(&mut self) {
        for (name, link) in std::mem::take(&mut self.joined) {
            if let Some(Ok(program)) = self.ebpf.program_mut(name).map(<&mut TracePoint>::try_from)
            {
                let _ = program.detach(link);
            }
        }
        // An error leaves a program attached until the probe is dropped, a moment later.
        match self.link.take() {
            None => {}
            Some(MainLink::Classic(link)) => {
                if let Some(Ok(program)) = self
                    .ebpf
                    .program_mut(names::PROGRAM)
                    .map(<&mut TracePoint>::try_from)
                {
                    let _ = program.detach(link);
                }
            }
            Some(MainLink::Btf { main, rescue }) => {
                // The herald first: from then on nothing is announced, so the rescue program
                // handles nothing while the main one is still attached (a skipped run is
                // then counted lost, never handled twice or taken for a rescue).
                let rescue = rescue.map(|r| {
                    detach_btf(&mut self.ebpf, names::HERALD, r.herald);
                    r.rescue
                });
                detach_btf(&mut self.ebpf, names::PROGRAM_BTF, main);
                if let Some(link) = rescue {
                    detach_btf(&mut self.ebpf, names::RESCUE, link);
                }
            }
        }
    }

    /// The ring buffer of events; can be taken once.
    pub fn take_events(&mut self) -> Result<RingBuf<MapData>, ProbeError> {
        self.ebpf
            .take_map(names::EVENTS)
            .ok_or(ProbeError::Map(names::EVENTS, "already taken".into()))?
            .try_into()
            .map_err(map_err(names::EVENTS))
    }

    /// Adds sockets found by a scan made after attaching, without overwriting what the program
    /// learnt itself in the meantime.
    pub fn add_preexisting(&mut self, preexisting: &Preexisting) -> Result<(), ProbeError> {
        fill_preexisting(&mut self.ebpf, self.attributor.as_mut(), preexisting)
    }

    /// Whether user space attributes sockets to owners (no owner filter is active).
    pub fn owners_in_user_space(&self) -> bool {
        self.attributor.is_some()
    }

    /// What turns this program's ring buffer records into inputs, owners filled in. Take it
    /// once, after the start-up scans (`add_preexisting`): the owner table moves into it.
    pub fn decoder(&mut self) -> Decoder {
        Decoder::new(self.facts_plan.clone(), self.attributor.take())
    }

    /// Sums of the program's per-CPU counters plus the kernel's count of skipped runs. A
    /// counter that cannot be read is unknown in the result, and its error is in the list.
    pub fn read_counters(&self) -> (KernelCounters, Vec<CounterError>) {
        let mut out = KernelCounters::unknown();
        let mut errors = Vec::new();
        for c in Counter::ALL {
            let value = match c.kernel_index() {
                Some(idx) => self
                    .sum_banks(idx)
                    .map_err(|e| format!("eBPF map {}: {e}", names::COUNTERS)),
                // Every program's skipped runs that no program made up for: a skipped joined
                // program is a lost retransmit or reset, as much a loss as a skipped state
                // change; a skipped run of the BTF program the rescue program handled is not.
                None => self.unrescued_misses(),
            };
            match value {
                Ok(v) => out.set(c, Some(v)),
                Err(reason) => errors.push(CounterError { counter: c, reason }),
            }
        }
        (out, errors)
    }

    /// The kernel's skipped runs of every program, minus those the rescue program handled.
    fn unrescued_misses(&self) -> Result<u64, String> {
        let rescued = self
            .sum_banks(counter::RESCUED)
            .map_err(|e| format!("eBPF map {}: {e}", names::COUNTERS))?;
        let info_err =
            |e: std::io::Error| format!("reading the programs' info (BPF_OBJ_GET_INFO_BY_FD): {e}");
        let main = prog_recursion_misses(self.prog_fd).map_err(info_err)?;
        self.joined_fds
            .iter()
            .try_fold(main.saturating_sub(rescued), |sum, &fd| {
                prog_recursion_misses(fd).map(|n| sum.wrapping_add(n))
            })
            .map_err(info_err)
    }

    /// All counters, or the first that cannot be read as an error.
    pub fn counters(&self) -> Result<KernelCounters, CounterError> {
        let (c, errors) = self.read_counters();
        match errors.into_iter().next() {
            None => Ok(c),
            Some(e) => Err(e),
        }
    }

    /// Forwards pending kernel diagnostics to the log (only with `debug_log`).
    pub fn flush_log(&mut self) {
        if let Some(l) = &mut self.logger {
            l.flush();
        }
    }

    /// The kernel's id of the loaded program (for tests and `bpftool`).
    pub fn program_id(&self) -> Option<u32> {
        prog_info(self.prog_fd).ok().map(|i| i.id)
    }

    /// Connect() events held in the kernel right now (for tests of the accounting identity).
    pub fn held_events(&self) -> Result<u64, ProbeError> {
        let pending: HashMap<_, u64, tcpstate_common::Event> = self
            .ebpf
            .map(names::PENDING)
            .ok_or(ProbeError::Map(names::PENDING, "missing".into()))?
            .try_into()
            .map_err(map_err(names::PENDING))?;
        pending
            .keys()
            .try_fold(0u64, |n, key| key.map(|_| n + 1))
            .map_err(map_err(names::PENDING))
    }
}

/// Which tracepoint to try first.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// The BTF tracepoint, reading the socket at these offsets.
    Btf(SockLayout),
    /// The classic tracepoint, with the notice that says why (none when asked for).
    Classic(Option<String>),
}

/// The route for `attachment` on this kernel; an error when `--attach btf` cannot be honoured.
fn btf_route(
    attachment: Attachment,
    layout: Option<SockLayout>,
    guard: bool,
) -> Result<Route, ProbeError> {
    let why_not = match (attachment, layout, guard) {
        (Attachment::Classic, _, _) => return Ok(Route::Classic(None)),
        (_, Some(l), true) => return Ok(Route::Btf(l)),
        (_, None, _) => {
            "this kernel's BTF does not describe the socket and task fields the BTF \
                         tracepoint program reads"
        }
        // Without the guard, a run nested in another would run, racing the outer run's
        // read-modify-write of this CPU's counters.
        (_, Some(_), false) => {
            "this kernel runs BTF tracepoint programs without a per-program recursion guard \
             (Linux 6.1+)"
        }
    };
    if attachment == Attachment::Btf {
        return Err(ProbeError::Load(format!("--attach btf: {why_not}")));
    }
    Ok(Route::Classic(Some(format!(
        "{why_not}: attached to the classic tracepoint, where a state change that happens \
         while another BPF program runs on its CPU is lost (counted in recursion_misses)"
    ))))
}

/// Loads the BTF tracepoint program and attaches it between the herald and the rescue
/// program (the programs of a tracepoint run in the order they were attached). Returns the
/// main program's descriptor and link, and the rescue pair's links or why not.
#[allow(clippy::type_complexity)]
fn attach_btf(
    ebpf: &mut Ebpf,
    btf: &Btf,
) -> Result<(RawFd, BtfTracePointLinkId, Result<RescueLinks, String>), ProbeError> {
    let herald = attach_btf_program(ebpf, names::HERALD, btf).map(|(_, link)| link);
    let (fd, main) = match attach_btf_program(ebpf, names::PROGRAM_BTF, btf) {
        Ok(attached) => attached,
        Err(e) => {
            if let Ok(link) = herald {
                detach_btf(ebpf, names::HERALD, link);
            }
            return Err(ProbeError::Load(format!(
                "the BTF tracepoint program did not load or attach: {e}"
            )));
        }
    };
    let rescue = herald.and_then(|herald| {
        match attach_btf_program(ebpf, names::RESCUE, btf) {
            Ok((_, rescue)) => Ok(RescueLinks { herald, rescue }),
            Err(e) => {
                // Alone, the herald's announcements would only wait for a rescue.
                detach_btf(ebpf, names::HERALD, herald);
                Err(e)
            }
        }
    });
    Ok((fd, main, rescue))
}

fn detach_btf(ebpf: &mut Ebpf, name: &str, link: BtfTracePointLinkId) {
    if let Some(Ok(program)) = ebpf.program_mut(name).map(<&mut BtfTracePoint>::try_from) {
        let _ = program.detach(link);
    }
}

fn attach_btf_program(
    ebpf: &mut Ebpf,
    name: &str,
    btf: &Btf,
) -> Result<(RawFd, BtfTracePointLinkId), String> {
    let program: &mut BtfTracePoint = ebpf
        .program_mut(name)
        .ok_or_else(|| format!("program `{name}` missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    program
        .load("inet_sock_set_state", btf)
        .map_err(|e| with_privilege_hint(format!("{e:#}")))?;
    let fd = program
        .fd()
        .map_err(|e| format!("{e:#}"))?
        .as_fd()
        .as_raw_fd();
    let link = program.attach().map_err(|e| format!("{e:#}"))?;
    Ok((fd, link))
}

/// The classic tracepoint program, loaded and attached.
fn attach_classic(ebpf: &mut Ebpf) -> Result<(RawFd, TracePointLinkId), ProbeError> {
    let program: &mut TracePoint = ebpf
        .program_mut(names::PROGRAM)
        .ok_or_else(|| ProbeError::Load("program `tcpstate` missing from the object".into()))?
        .try_into()
        .map_err(|e| ProbeError::Load(format!("{e}")))?;
    program
        .load()
        .map_err(|e| ProbeError::Load(with_privilege_hint(format!("{e:#}"))))?;
    let fd = program
        .fd()
        .map_err(|e| ProbeError::Load(e.to_string()))?
        .as_fd()
        .as_raw_fd();
    let link = program
        .attach("sock", "inet_sock_set_state")
        .map_err(|e| ProbeError::Attach(format!("{e:#}")))?;
    Ok((fd, link))
}

fn with_privilege_hint(text: String) -> String {
    if text.contains("Operation not permitted") {
        format!("{text} (needs root, or CAP_BPF and CAP_PERFMON)")
    } else {
        text
    }
}

/// Loads and attaches one joined program (its layout global is already set).
fn attach_joined(ebpf: &mut Ebpf, event: JoinEvent) -> Result<(TracePointLinkId, RawFd), String> {
    let (prog, _, category, name) = event.names();
    attach_program(ebpf, prog, category, name)
}

const KFREE_SKB_LOST: &str = "packets dropped for listeners are not shown";

/// `skb:kfree_skb`'s layout; an `Err` is the notice to give (listener drops are optional).
fn locate_kfree_skb(tracefs: &Path) -> Result<DropLayout, String> {
    let path = tracefs.join("events/skb/kfree_skb/format");
    let text = fs::read_to_string(&path)
        .map_err(|_| format!("this kernel has no skb:kfree_skb tracepoint; {KFREE_SKB_LOST}"))?;
    tpformat::drop_layout(&text).map_err(|e| match e {
        FormatError::Missing("rx_sk") => {
            format!("this kernel's skb:kfree_skb has no rx_sk (Linux 6.12+); {KFREE_SKB_LOST}")
        }
        e => format!(
            "unexpected layout of {}: {e}; {KFREE_SKB_LOST}",
            path.display()
        ),
    })
}

/// Where the listener's accept queue is, from BTF; none: no queue readings (said once).
fn listen_offsets(sock: &SockOffsets, notices: &mut Vec<String>) -> ListenOffsets {
    match (sock.get("ack_backlog"), sock.get("max_ack_backlog")) {
        (Some(a), Some(m)) => ListenOffsets {
            ack_backlog: a,
            max_ack_backlog: m,
            ok: 1,
            _pad: [0; 3],
        },
        _ => {
            if sock.offsets.iter().any(Option::is_some) {
                notices.push(
                    "this kernel's socket has no sk_ack_backlog / sk_max_ack_backlog: listeners' \
                     accept queues are not shown"
                        .into(),
                );
            }
            ListenOffsets::default()
        }
    }
}

/// Loads and attaches one tracepoint program of the object by name.
fn attach_program(
    ebpf: &mut Ebpf,
    prog: &str,
    category: &str,
    name: &str,
) -> Result<(TracePointLinkId, RawFd), String> {
    let program: &mut TracePoint = ebpf
        .program_mut(prog)
        .ok_or_else(|| format!("program `{prog}` missing from the object"))?
        .try_into()
        .map_err(|e| format!("{e}"))?;
    program.load().map_err(|e| format!("{e:#}"))?;
    let fd = program
        .fd()
        .map_err(|e| format!("{e:#}"))?
        .as_fd()
        .as_raw_fd();
    let link = program
        .attach(category, name)
        .map_err(|e| format!("{e:#}"))?;
    Ok((link, fd))
}

fn fill_filter_maps(ebpf: &mut Ebpf, k: &KernelFilter) -> Result<(), ProbeError> {
    if !k.pids.is_empty() {
        let mut pids: HashMap<_, u32, u8> = ebpf
            .map_mut(names::PIDS)
            .ok_or(ProbeError::Map(names::PIDS, "missing".into()))?
            .try_into()
            .map_err(map_err(names::PIDS))?;
        for p in &k.pids {
            pids.insert(p, 1, 0).map_err(map_err(names::PIDS))?;
        }
    }
    if !k.ports.is_empty() {
        let mut ports: Array<_, u32> = ebpf
            .map_mut(names::PORTS)
            .ok_or(ProbeError::Map(names::PORTS, "missing".into()))?
            .try_into()
            .map_err(map_err(names::PORTS))?;
        let mut slots: std::collections::BTreeMap<u32, u32> = std::collections::BTreeMap::new();
        for (&port, &bits) in &k.ports {
            let (slot, shift) = port_slot(port);
            *slots.entry(slot).or_default() |= u32::from(bits) << shift;
        }
        for (slot, value) in slots {
            ports.set(slot, value, 0).map_err(map_err(names::PORTS))?;
        }
    }
    if !k.addrs.is_empty() {
        let mut addrs: LpmTrie<_, [u8; 16], u8> = ebpf
            .map_mut(names::ADDRS)
            .ok_or(ProbeError::Map(names::ADDRS, "missing".into()))?
            .try_into()
            .map_err(map_err(names::ADDRS))?;
        for c in &k.addrs {
            let key = aya::maps::lpm_trie::Key::new(c.prefix, c.addr);
            addrs.insert(&key, 1, 0).map_err(map_err(names::ADDRS))?;
        }
    }
    Ok(())
}

/// The start-up scan's listeners go to the kernel (children are attributed there), its
/// connections to whoever keeps the owner table.
fn fill_preexisting(
    ebpf: &mut Ebpf,
    attributor: Option<&mut Attributor>,
    p: &Preexisting,
) -> Result<(), ProbeError> {
    {
        let mut listeners: HashMap<_, ListenKey, ListenOwner> = ebpf
            .map_mut(names::LISTENERS)
            .ok_or(ProbeError::Map(names::LISTENERS, "missing".into()))?
            .try_into()
            .map_err(map_err(names::LISTENERS))?;
        for (key, owner) in &p.listeners {
            let value = ListenOwner {
                skaddr: 0,
                owner: *owner,
            };
            // EEXIST: the program saw this listener itself; a full table: attribution of
            // that listener's children stays unknown, which the output says.
            let _ = listeners.insert(key, value, BPF_NOEXIST);
        }
    }
    if let Some(a) = attributor {
        a.add_preexisting(&p.connections);
        return Ok(());
    }
    let mut conns: HashMap<_, TupleKey, Owner> = ebpf
        .map_mut(names::PREEXISTING)
        .ok_or(ProbeError::Map(names::PREEXISTING, "missing".into()))?
        .try_into()
        .map_err(map_err(names::PREEXISTING))?;
    for (key, owner) in &p.connections {
        let _ = conns.insert(key, owner, BPF_NOEXIST);
    }
    Ok(())
}

/// `struct bpf_prog_info` through BPF_OBJ_GET_INFO_BY_FD; aya's ProgramInfo does not expose
/// `recursion_misses`.
fn prog_info(fd: RawFd) -> std::io::Result<aya_obj::generated::bpf_prog_info> {
    const BPF_OBJ_GET_INFO_BY_FD: libc::c_long = 15;
    #[repr(C)]
    struct InfoAttr {
        bpf_fd: u32,
        info_len: u32,
        info: u64,
    }
    // SAFETY: bpf_prog_info is plain data; all-zero is a valid value.
    let mut info: aya_obj::generated::bpf_prog_info = unsafe { std::mem::zeroed() };
    let mut attr = InfoAttr {
        bpf_fd: fd as u32,
        info_len: std::mem::size_of_val(&info) as u32,
        info: &mut info as *mut _ as u64,
    };
    // SAFETY: attr points to a valid buffer of info_len bytes for the kernel to fill.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_OBJ_GET_INFO_BY_FD,
            &mut attr as *mut InfoAttr,
            std::mem::size_of::<InfoAttr>() as u32,
        )
    };
    if rc == 0 {
        Ok(info)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn prog_recursion_misses(fd: RawFd) -> std::io::Result<u64> {
    prog_info(fd).map(|i| i.recursion_misses)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `auto` falls back to the classic tracepoint with one notice saying why; `btf` refuses to
    /// instead; `classic` never tries.
    #[test]
    fn the_btf_route_degrades_with_a_notice_or_refuses() {
        let l = SockLayout::default();
        assert_eq!(
            btf_route(Attachment::Auto, Some(l), true).ok(),
            Some(Route::Btf(l))
        );
        assert_eq!(
            btf_route(Attachment::Btf, Some(l), true).ok(),
            Some(Route::Btf(l))
        );
        assert_eq!(
            btf_route(Attachment::Classic, Some(l), true).ok(),
            Some(Route::Classic(None))
        );
        let Ok(Route::Classic(Some(notice))) = btf_route(Attachment::Auto, Some(l), false) else {
            panic!("auto without the guard falls back");
        };
        assert!(notice.contains("recursion guard (Linux 6.1+)"), "{notice}");
        assert!(notice.contains("classic tracepoint"), "{notice}");
        let Ok(Route::Classic(Some(notice))) = btf_route(Attachment::Auto, None, true) else {
            panic!("auto without the socket layout falls back");
        };
        assert!(
            notice.contains("does not describe the socket and task fields"),
            "{notice}"
        );
        let err = btf_route(Attachment::Btf, Some(l), false).expect_err("btf refuses");
        assert!(err
            .to_string()
            .starts_with("loading the eBPF program failed: --attach btf:"));
    }

    /// A kernel without one of the joined tracepoints: a notice, not an error.
    #[test]
    fn a_missing_joined_tracepoint_is_a_notice() {
        let dir = std::env::temp_dir().join(format!("tcpstate-tracefs-{}", std::process::id()));
        let r = locate_joined(&dir, "tcp", "no_such_event", JoinEvent::SendReset);
        let notice = r.expect_err("no format file");
        assert!(notice.contains("tcp:no_such_event"), "{notice}");
        assert!(notice.contains("resets sent"), "{notice}");
        // A format file that does not describe the event is a notice too.
        let event_dir = dir.join("events/tcp/tcp_receive_reset");
        fs::create_dir_all(&event_dir).expect("mkdir");
        fs::write(
            event_dir.join("format"),
            "format:\n\tfield:int x;\toffset:8;\tsize:4;\n",
        )
        .expect("write");
        let r = locate_joined(&dir, "tcp", "tcp_receive_reset", JoinEvent::ReceiveReset);
        let _ = fs::remove_dir_all(&dir);
        let notice = r.expect_err("bad layout");
        assert!(notice.contains("skaddr"), "{notice}");
    }
}
