//! Where the socket fields tcpstate reads live in this kernel's `struct sock` / `struct
//! tcp_sock`, from its BTF (`/sys/kernel/btf/vmlinux`).
//!
//! Rust eBPF programs get no CO-RE relocations, so the offsets are resolved here at start-up and
//! handed to the program as load-time constants, the way the tracepoint's format-file offsets
//! are. A field this kernel lacks (or has with another size) is `None`: its value is then
//! unknown (`null` in the output, said once on stderr), never read from a wrong place.

use std::{fs, io, path::Path};

use btfparse::{Integer32Value, Offset, Readable, TypeInformation, TypeVariant};
use tcpstate_common::{NetnsOffsets, SkbOffsets, SockLayout, TASK_COMM_LEN};

/// The kernel's BTF of itself.
pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

/// One field: the struct it is found from, the member path inside it, and the size the program
/// reads. Every path starts at the socket pointer the tracepoint hands over (`struct sock` is
/// the first member of `tcp_sock` and of `inet_connection_sock`), so each offset is from the
/// start of the socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    pub name: &'static str,
    pub strukt: &'static str,
    pub path: &'static str,
    pub size: usize,
}

/// The socket facts of a connection: what `ss -ti` shows, plus the error and the listener's
/// queue.
#[rustfmt::skip]
pub const FIELDS: &[Field] = &[
    Field { name: "sk_err", strukt: "sock", path: "sk_err", size: 4 },
    Field { name: "sk_err_soft", strukt: "sock", path: "sk_err_soft", size: 4 },
    Field { name: "ack_backlog", strukt: "sock", path: "sk_ack_backlog", size: 4 },
    Field { name: "max_ack_backlog", strukt: "sock", path: "sk_max_ack_backlog", size: 4 },
    Field { name: "wmem_queued", strukt: "sock", path: "sk_wmem_queued", size: 4 },
    Field { name: "net", strukt: "sock", path: "__sk_common.skc_net", size: 8 },
    Field { name: "retransmits", strukt: "inet_connection_sock", path: "icsk_retransmits", size: 1 },
    Field { name: "probes_out", strukt: "inet_connection_sock", path: "icsk_probes_out", size: 1 },
    Field { name: "srtt_us", strukt: "tcp_sock", path: "srtt_us", size: 4 },
    Field { name: "min_rtt_us", strukt: "tcp_sock", path: "rtt_min.s[0].v", size: 4 },
    Field { name: "packets_out", strukt: "tcp_sock", path: "packets_out", size: 4 },
    Field { name: "total_retrans", strukt: "tcp_sock", path: "total_retrans", size: 4 },
    Field { name: "bytes_acked", strukt: "tcp_sock", path: "bytes_acked", size: 8 },
    Field { name: "bytes_received", strukt: "tcp_sock", path: "bytes_received", size: 8 },
    Field { name: "bytes_retrans", strukt: "tcp_sock", path: "bytes_retrans", size: 8 },
    Field { name: "segs_in", strukt: "tcp_sock", path: "segs_in", size: 4 },
    Field { name: "segs_out", strukt: "tcp_sock", path: "segs_out", size: 4 },
];

#[derive(Debug, thiserror::Error)]
pub enum BtfError {
    #[error("reading {path}: {source}")]
    Read { path: String, source: io::Error },
    #[error("{path} is not valid BTF: {message}")]
    Parse { path: String, message: String },
}

/// Offsets of [`FIELDS`], in the same order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SockOffsets {
    pub offsets: Vec<Option<u16>>,
}

impl SockOffsets {
    pub fn get(&self, name: &str) -> Option<u16> {
        let i = FIELDS.iter().position(|f| f.name == name)?;
        self.offsets.get(i).copied().flatten()
    }

    /// The fields this kernel lacks, to say once at start-up.
    pub fn missing(&self) -> impl Iterator<Item = &'static Field> + '_ {
        FIELDS
            .iter()
            .zip(&self.offsets)
            .filter(|(_, o)| o.is_none())
            .map(|(f, _)| f)
    }
}

/// The BTF blob, read whole: the file is sysfs and small (a few MiB).
struct Blob(Vec<u8>);

impl Readable for Blob {
    fn read(&self, offset: u64, buffer: &mut [u8]) -> btfparse::Result<()> {
        let start = usize::try_from(offset).unwrap_or(usize::MAX);
        let slice = start
            .checked_add(buffer.len())
            .and_then(|end| self.0.get(start..end))
            .ok_or_else(|| btfparse::Error::new(btfparse::ErrorKind::EOF, "read past the end"))?;
        buffer.copy_from_slice(slice);
        Ok(())
    }
}

/// Resolves [`FIELDS`] from the BTF file at `path`.
pub fn resolve(path: &Path) -> Result<SockOffsets, BtfError> {
    Ok(load(path)?.sock)
}

/// Everything tcpstate takes from the kernel's BTF, from one parse of it.
#[derive(Debug, Clone)]
pub struct KernelBtf {
    pub sock: SockOffsets,
    pub skb: SkbOffsets,
    /// Where a socket's network namespace inode is.
    pub netns: NetnsOffsets,
    /// `enum sk_rst_reason` names by value ("" for a value without a name; empty when the kernel
    /// has no such enum).
    pub reset_reasons: Vec<String>,
    /// `enum skb_drop_reason` names by value, the same way (`SKB_DROP_REASON_` stripped).
    pub drop_reasons: Vec<String>,
    /// Where the BTF tracepoint program reads the socket; `None` when a field is missing or laid
    /// out otherwise (then only the classic tracepoint can be used).
    pub sock_layout: Option<SockLayout>,
    /// Raw and BTF tracepoint programs have a recursion guard of their own (see
    /// [`has_per_program_guard`]).
    pub per_program_guard: bool,
}

/// Parses the BTF file at `path` once and resolves every offset and name tcpstate uses.
pub fn load(path: &Path) -> Result<KernelBtf, BtfError> {
    let shown = path.display().to_string();
    let blob = fs::read(path).map_err(|source| BtfError::Read {
        path: shown.clone(),
        source,
    })?;
    let types = TypeInformation::new(&Blob(blob)).map_err(|e| BtfError::Parse {
        path: shown,
        message: e.message().to_string(),
    })?;
    Ok(KernelBtf {
        sock: SockOffsets {
            offsets: FIELDS.iter().map(|f| offset_of(&types, f)).collect(),
        },
        skb: skb_offsets(&types),
        netns: netns_offsets(&types),
        reset_reasons: enum_names(&types, "sk_rst_reason", "SK_RST_REASON_"),
        drop_reasons: enum_names(&types, "skb_drop_reason", "SKB_DROP_REASON_"),
        sock_layout: sock_layout(&types),
        per_program_guard: has_per_program_guard(&types),
    })
}

/// Whether this kernel runs raw and BTF tracepoint programs under a recursion guard of each
/// program's own (skipping, and counting in the program's `recursion_misses`, a run that would
/// nest in a run of the same program on the same CPU) rather than running them nested.
///
/// The guard came with Linux 6.1 (commit 05b24ff9b2cf, "bpf: Prevent bpf program recursion for
/// raw tracepoint probes") and was backported to stable kernels (6.0.10 among them). That
/// commit made `bpf_prog_inc_misses_counter` a global function, so the kernel's BTF lists it
/// exactly when the guard is there: this checks the feature, not a version number.
pub fn has_per_program_guard(types: &TypeInformation) -> bool {
    types.id_of("bpf_prog_inc_misses_counter").is_some()
}

/// The socket fields the classic `inet_sock_set_state` record is filled from (see its
/// `TP_fast_assign`): `skc_family`, `skc_dport`, `skc_daddr`, the IPv6 pair, and `inet_saddr`
/// and `inet_sport` of `struct inet_sock`, all from the start of the `tcp_sock` (which begins
/// with them). `sk_protocol` is checked by the program's `bpf_skc_to_tcp_sock`.
fn sock_layout(types: &TypeInformation) -> Option<SockLayout> {
    let field = |strukt, path, size| member_offset(types, strukt, path, size);
    Some(SockLayout {
        family: field("sock", "__sk_common.skc_family", 2)?,
        dport: field("sock", "__sk_common.skc_dport", 2)?,
        daddr: field("sock", "__sk_common.skc_daddr", 4)?,
        v6_daddr: field("sock", "__sk_common.skc_v6_daddr", 16)?,
        v6_rcv_saddr: field("sock", "__sk_common.skc_v6_rcv_saddr", 16)?,
        inet_saddr: field("inet_sock", "inet_saddr", 4)?,
        inet_sport: field("inet_sock", "inet_sport", 2)?,
        task_comm: field("task_struct", "comm", TASK_COMM_LEN)?,
    })
}

/// Where a retransmitted skb keeps its TCP flags and segment count (`struct tcp_skb_cb` lives in
/// `sk_buff.cb`), and where a received one has its TCP header.
fn skb_offsets(types: &TypeInformation) -> SkbOffsets {
    let field = |strukt, path, size| member_offset(types, strukt, path, size);
    let cb = types
        .id_of("sk_buff")
        .and_then(|tid| match types.offset_of(tid, "cb").ok()? {
            (_, Offset::ByteOffset(off)) => u16::try_from(off).ok(),
            _ => None,
        });
    let in_cb = |inner: Option<u16>| cb.zip(inner).and_then(|(c, i)| c.checked_add(i));
    // A byte until Linux 6.18 made it a u16 (for AccECN's AE bit); the program reads the low
    // byte, which holds FIN..CWR either way on this little-endian target.
    let tcp_flags =
        in_cb(field("tcp_skb_cb", "tcp_flags", 1).or_else(|| field("tcp_skb_cb", "tcp_flags", 2)));
    let gso_segs = in_cb(field("tcp_skb_cb", "tcp_gso_segs", 2));
    let head = field("sk_buff", "head", 8);
    let transport_header = field("sk_buff", "transport_header", 2);
    SkbOffsets {
        cb_tcp_flags: tcp_flags.unwrap_or(0),
        cb_gso_segs: gso_segs.unwrap_or(0),
        head: head.unwrap_or(0),
        transport_header: transport_header.unwrap_or(0),
        tcp_flags_ok: u8::from(tcp_flags.is_some()),
        gso_segs_ok: u8::from(gso_segs.is_some()),
        seg_flags_ok: u8::from(head.is_some() && transport_header.is_some()),
        _pad: [0; 5],
    }
}

/// `sock.__sk_common.skc_net` (a `possible_net_t` holding one pointer) and `net.ns.inum`.
fn netns_offsets(types: &TypeInformation) -> NetnsOffsets {
    let field = |strukt, path, size| member_offset(types, strukt, path, size);
    let net = field("sock", "__sk_common.skc_net", 8);
    let inum = field("net", "ns.inum", 4);
    match (net, inum) {
        (Some(skc_net), Some(ns_inum)) => NetnsOffsets {
            skc_net,
            ns_inum,
            ok: 1,
        },
        _ => NetnsOffsets::default(),
    }
}

/// The names of an enum by value, lower case without `prefix`: `SK_RST_REASON_TCP_ABORT_ON_CLOSE`
/// of `enum sk_rst_reason` (Linux 6.10+) is `"tcp_abort_on_close"`, `SKB_DROP_REASON_
/// TCP_LISTEN_OVERFLOW` of `enum skb_drop_reason` is `"tcp_listen_overflow"`.
fn enum_names(types: &TypeInformation, enum_name: &str, prefix: &str) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    let Some(tid) = types.id_of(enum_name) else {
        return names;
    };
    let Some(TypeVariant::Enum(e)) = types.from_id(tid) else {
        return names;
    };
    for v in e.named_value_list() {
        let value = match v.value {
            Integer32Value::Signed(n) => usize::try_from(n).ok(),
            Integer32Value::Unsigned(n) => usize::try_from(n).ok(),
        };
        // The enum is dense and small; an absurd value is not a reset reason to name.
        let Some(value) = value.filter(|&n| n < 1024) else {
            continue;
        };
        let name = v.name.strip_prefix(prefix).unwrap_or(&v.name);
        if names.len() <= value {
            names.resize(value + 1, String::new());
        }
        names[value] = name.to_ascii_lowercase();
    }
    names
}

/// The offset of a member path of `strukt` read with `size` bytes (see [`offset_of`]).
fn member_offset(
    types: &TypeInformation,
    strukt: &'static str,
    path: &'static str,
    size: usize,
) -> Option<u16> {
    offset_of(
        types,
        &Field {
            name: path,
            strukt,
            path,
            size,
        },
    )
}

fn offset_of(types: &TypeInformation, f: &Field) -> Option<u16> {
    let tid = types.id_of(f.strukt)?;
    match types.offset_of(tid, f.path).ok()? {
        (member, Offset::ByteOffset(off)) if types.size_of(member).ok()? == f.size => {
            u16::try_from(off).ok()
        }
        // A bitfield or a field of another size: not what the program would read.
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The running kernel's BTF (every kernel tcpstate traces on has it; /sys is readable
    /// without root).
    #[test]
    fn resolves_every_field_on_this_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            eprintln!("skipped: {VMLINUX_BTF} missing");
            assert!(std::env::var_os("CI").is_none(), "CI must have kernel BTF");
            return;
        }
        let o = resolve(path).expect("resolve");
        let missing: Vec<_> = o.missing().map(|f| f.name).collect();
        assert!(missing.is_empty(), "missing on this kernel: {missing:?}");
        // `struct sock` comes first in `tcp_sock`: its fields lie before the TCP ones.
        let sk_err = o.get("sk_err").expect("sk_err");
        let srtt = o.get("srtt_us").expect("srtt_us");
        assert!(sk_err < srtt);
        // Each offset is aligned to its size, as the compiler lays structs out.
        for (f, off) in FIELDS.iter().zip(&o.offsets) {
            let off = off.expect("resolved");
            assert_eq!(usize::from(off) % f.size, 0, "{} at {off}", f.name);
        }
    }

    #[test]
    fn skb_offsets_and_reset_reasons_on_this_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let k = load(path).expect("load");
        let s = k.skb;
        assert_eq!(
            (s.tcp_flags_ok, s.gso_segs_ok, s.seg_flags_ok),
            (1, 1, 1),
            "{s:?}"
        );
        // tcp_skb_cb: seq, end_seq, then the gso segs/size union, then the flags.
        assert_eq!(s.cb_tcp_flags, s.cb_gso_segs + 4, "{s:?}");
        assert_eq!(k.reset_reasons[0], "not_specified");
        assert_eq!(k.reset_reasons[1], "no_socket");
        assert!(k.reset_reasons.iter().any(|n| n == "tcp_abort_on_close"));
    }

    /// This kernel (6.18) has BTF tracepoints with the per-program guard, and the socket
    /// laid out as the BTF tracepoint program reads it.
    #[test]
    fn sock_layout_and_guard_on_this_kernel() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let k = load(path).expect("load");
        assert!(k.per_program_guard);
        let l = k.sock_layout.expect("sock layout");
        // sock_common: daddr first, the IPv6 destination right before the IPv6 source.
        assert_eq!(l.daddr, 0, "{l:?}");
        assert_eq!(l.v6_rcv_saddr, l.v6_daddr + 16, "{l:?}");
        // inet_sock's own fields come after the struct sock it begins with.
        assert!(
            l.inet_saddr > l.v6_rcv_saddr && l.inet_sport > l.inet_saddr,
            "{l:?}"
        );
        // The task's name is far into task_struct (its state, stack and scheduling come first).
        assert!(l.task_comm > 64, "{l:?}");
    }

    #[test]
    fn a_missing_or_resized_field_is_none() {
        let path = Path::new(VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let blob = fs::read(path).expect("read");
        let types = TypeInformation::new(&Blob(blob)).expect("parse");
        let absent = Field {
            name: "x",
            strukt: "tcp_sock",
            path: "no_such_member",
            size: 4,
        };
        assert_eq!(offset_of(&types, &absent), None);
        let resized = Field {
            name: "x",
            strukt: "tcp_sock",
            path: "bytes_acked",
            size: 4,
        };
        assert_eq!(offset_of(&types, &resized), None);
        let no_struct = Field {
            name: "x",
            strukt: "no_such_struct",
            path: "a",
            size: 4,
        };
        assert_eq!(offset_of(&types, &no_struct), None);
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        let dir = std::env::temp_dir().join(format!("tcpstate-btf-{}", std::process::id()));
        fs::write(&dir, b"not btf at all").expect("write");
        let r = resolve(&dir);
        let _ = fs::remove_file(&dir);
        assert!(matches!(r, Err(BtfError::Parse { .. })), "{r:?}");
        assert!(matches!(
            resolve(Path::new("/nonexistent/btf")),
            Err(BtfError::Read { .. })
        ));
    }
}
