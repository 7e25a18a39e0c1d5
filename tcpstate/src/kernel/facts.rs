//! Socket facts at the kernel boundary: which byte ranges of the socket the program copies
//! (planned from the BTF offsets, [`FactsPlan`]), how a [`FactsRecord`] decodes into
//! [`Facts`], and how every ring buffer record becomes an [`Input`].

use tcpstate_common::{
    FactGroup, FactGroups, FactsRecord, ListenerRecord, ResetRecord, RetransmitRecord, EVENT_SIZE,
    FACTS_RAW_LEN, FACTS_RECORD_SIZE, FACT_GROUP_TIERS, LISTENER_RECORD_SIZE, MAX_FACT_GROUPS,
    MAX_FACT_GROUP_LEN, RESET_RECORD_SIZE, RETRANSMIT_RECORD_SIZE,
};

use super::btf::{SockOffsets, FIELDS};
use crate::{attribution::Attributor, event, facts::Facts, input::Input};

/// The [`Facts`] fields, named as in [`FIELDS`] (whose sizes they share).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fact {
    SkErr,
    SkErrSoft,
    SrttUs,
    MinRttUs,
    TotalRetrans,
    Retransmits,
    ProbesOut,
    PacketsOut,
    WmemQueued,
    BytesAcked,
    BytesReceived,
    BytesRetrans,
    SegsIn,
    SegsOut,
}

const FACTS: [(Fact, &str); 14] = [
    (Fact::SkErr, "sk_err"),
    (Fact::SkErrSoft, "sk_err_soft"),
    (Fact::SrttUs, "srtt_us"),
    (Fact::MinRttUs, "min_rtt_us"),
    (Fact::TotalRetrans, "total_retrans"),
    (Fact::Retransmits, "retransmits"),
    (Fact::ProbesOut, "probes_out"),
    (Fact::PacketsOut, "packets_out"),
    (Fact::WmemQueued, "wmem_queued"),
    (Fact::BytesAcked, "bytes_acked"),
    (Fact::BytesReceived, "bytes_received"),
    (Fact::BytesRetrans, "bytes_retrans"),
    (Fact::SegsIn, "segs_in"),
    (Fact::SegsOut, "segs_out"),
];

/// What the end of a handshake needs: an accepted socket's SYN-ACK round trip (its smoothed
/// RTT) and the SYN or SYN-ACK retransmits (the retransmit count).
const HANDSHAKE_FACTS: [Fact; 2] = [Fact::SrttUs, Fact::TotalRetrans];

/// Fields closer than this are always copied in one read.
const MERGE_GAP: usize = 16;
/// Two copies with a gap up to this become one: a helper call costs more than the bytes.
const WORTH_MERGING: usize = 128;

/// Whether the program accepts a copy of `len` bytes into `raw` at `dst`.
fn tier_fits(len: usize, dst: usize) -> bool {
    FACT_GROUP_TIERS
        .iter()
        .any(|&t| len <= t && dst <= FACTS_RAW_LEN - t)
}

/// Whether copies of these lengths, placed largest first, all fit the record.
fn feasible(lens: impl Iterator<Item = usize>) -> bool {
    let mut lens: Vec<usize> = lens.collect();
    lens.sort_unstable_by(|a, b| b.cmp(a));
    let mut dst = 0;
    lens.into_iter().all(|len| {
        let ok = tier_fits(len, dst);
        dst += len;
        ok
    })
}

/// Where one fact lies in `FactsRecord::raw`, and which group's bit says it was copied.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Slot {
    raw_off: u16,
    size: u16,
    group: u8,
}

/// The copies the program makes at a transition, and how to read their bytes back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FactsPlan {
    /// The `FACT_GROUPS` load-time global.
    pub groups: FactGroups,
    /// The `FACTS_HANDSHAKE_GROUPS` global: the groups of the facts a handshake's end needs.
    pub handshake_groups: u32,
    slots: [Option<Slot>; FACTS.len()],
    /// Facts this kernel lacks (or that did not fit the record): always unknown.
    pub missing: Vec<&'static str>,
}

/// A run of socket bytes `[start, end)` covering some facts.
struct Span {
    start: usize,
    end: usize,
    facts: Vec<(usize, usize, usize)>, // (index in FACTS, socket offset, size)
}

impl FactsPlan {
    /// Groups the facts' fields into at most [`MAX_FACT_GROUPS`] copies that fit the record.
    pub fn new(offsets: &SockOffsets) -> FactsPlan {
        let mut missing = Vec::new();
        let mut fields: Vec<(usize, usize, usize)> = Vec::new();
        for (i, (_, name)) in FACTS.iter().enumerate() {
            let size = FIELDS.iter().find(|f| f.name == *name).map(|f| f.size);
            match (offsets.get(name), size) {
                (Some(off), Some(size)) => fields.push((i, usize::from(off), size)),
                _ => missing.push(*name),
            }
        }
        fields.sort_by_key(|&(_, off, _)| off);

        let mut spans: Vec<Span> = Vec::new();
        for (i, off, size) in fields {
            match spans.last_mut() {
                Some(s)
                    if off <= s.end + MERGE_GAP && off + size - s.start <= MAX_FACT_GROUP_LEN =>
                {
                    s.end = s.end.max(off + size);
                    s.facts.push((i, off, size));
                }
                _ => spans.push(Span {
                    start: off,
                    end: off + size,
                    facts: vec![(i, off, size)],
                }),
            }
        }
        // Fewer copies are cheaper: merge the neighbours with the smallest gap while that is
        // worth it (or needed for MAX_FACT_GROUPS) and the record can still hold them.
        loop {
            let too_many = spans.len() > MAX_FACT_GROUPS;
            let best = (0..spans.len().saturating_sub(1))
                .filter(|&k| {
                    let gap = spans[k + 1].start - spans[k].end;
                    (gap <= WORTH_MERGING || too_many)
                        && spans[k + 1].end - spans[k].start <= MAX_FACT_GROUP_LEN
                        && feasible(spans.iter().enumerate().filter_map(|(j, s)| match j {
                            j if j == k => Some(spans[k + 1].end - s.start),
                            j if j == k + 1 => None,
                            _ => Some(s.end - s.start),
                        }))
                })
                .min_by_key(|&k| spans[k + 1].start - spans[k].end);
            let Some(k) = best else {
                break;
            };
            let next = spans.remove(k + 1);
            spans[k].end = next.end;
            spans[k].facts.extend(next.facts);
        }
        // Still too many or too big: the copy with the fewest facts stays unknown.
        while spans.len() > MAX_FACT_GROUPS || !feasible(spans.iter().map(|s| s.end - s.start)) {
            let Some(k) = (0..spans.len())
                .min_by_key(|&k| (spans[k].facts.len(), spans[k].end - spans[k].start))
            else {
                break;
            };
            let dropped = spans.remove(k);
            missing.extend(dropped.facts.iter().map(|&(i, _, _)| FACTS[i].1));
        }

        // The largest copy first: the verifier's bounds let large copies start only early.
        spans.sort_by_key(|s| std::cmp::Reverse(s.end - s.start));
        let mut groups = FactGroups::default();
        let mut slots = [None; FACTS.len()];
        let mut dst = 0usize;
        for (g, span) in spans.into_iter().enumerate() {
            let len = span.end - span.start;
            let (Ok(src_off), true) = (u16::try_from(span.start), tier_fits(len, dst)) else {
                missing.extend(span.facts.iter().map(|&(i, _, _)| FACTS[i].1));
                continue;
            };
            groups.groups[g] = FactGroup {
                src_off,
                dst_off: dst as u16,
                len: len as u16,
                _pad: 0,
            };
            for (i, off, size) in span.facts {
                slots[i] = Some(Slot {
                    raw_off: (dst + off - span.start) as u16,
                    size: size as u16,
                    group: g as u8,
                });
            }
            dst += len;
        }
        missing.sort_unstable();
        let handshake_groups = HANDSHAKE_FACTS
            .iter()
            .filter_map(|f| slots[*f as usize])
            .fold(0u32, |m, slot| m | 1 << slot.group);
        FactsPlan {
            handshake_groups,
            groups,
            slots,
            missing,
        }
    }

    /// The little-endian value of one fact, when its group was copied.
    fn value(&self, rec: &FactsRecord, fact: Fact) -> Option<u64> {
        let slot = self.slots[fact as usize]?;
        if rec.valid_groups & (1 << slot.group) == 0 {
            return None;
        }
        let start = usize::from(slot.raw_off);
        let bytes = rec.raw.get(start..start + usize::from(slot.size))?;
        let mut word = [0u8; 8];
        word[..bytes.len()].copy_from_slice(bytes);
        Some(u64::from_le_bytes(word))
    }

    /// The facts a record carries; a fact whose copy failed or that this kernel lacks is None.
    pub fn decode(&self, rec: &FactsRecord) -> Facts {
        let u32_of = |f| self.value(rec, f).map(|v| v as u32);
        let i32_of = |f| self.value(rec, f).map(|v| v as u32 as i32);
        let u8_of = |f| self.value(rec, f).map(|v| v as u8);
        Facts {
            ts_ns: rec.ts_ns,
            skaddr: rec.skaddr,
            oldstate: rec.oldstate,
            newstate: rec.newstate,
            sk_err: i32_of(Fact::SkErr),
            sk_err_soft: i32_of(Fact::SkErrSoft),
            // The kernel keeps the smoothed RTT scaled by 8.
            srtt_us: u32_of(Fact::SrttUs).map(|v| v >> 3),
            min_rtt_us: u32_of(Fact::MinRttUs),
            total_retrans: u32_of(Fact::TotalRetrans),
            retransmits: u8_of(Fact::Retransmits),
            probes_out: u8_of(Fact::ProbesOut),
            packets_out: u32_of(Fact::PacketsOut),
            wmem_queued: u32_of(Fact::WmemQueued),
            bytes_acked: self.value(rec, Fact::BytesAcked),
            bytes_received: self.value(rec, Fact::BytesReceived),
            bytes_retrans: self.value(rec, Fact::BytesRetrans),
            segs_in: u32_of(Fact::SegsIn),
            segs_out: u32_of(Fact::SegsOut),
        }
    }
}

/// A ring buffer record that is none of the four kinds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("ring buffer record of {got} bytes is not an event, facts, retransmit or reset record")]
pub struct RecordSizeError {
    pub got: usize,
}

/// Reads a plain-data record of exactly its size (any alignment).
fn read_pod<T: Copy>(bytes: &[u8]) -> Option<T> {
    (bytes.len() == std::mem::size_of::<T>()).then(|| {
        // SAFETY: the length is checked; T is one of the repr(C) plain-data records of
        // tcpstate-common, valid for any bytes; read_unaligned has no alignment requirement.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    })
}

/// One ring buffer record as the pipeline's input, told apart by its size.
pub fn decode_record(bytes: &[u8], plan: &FactsPlan) -> Result<Input, RecordSizeError> {
    let err = RecordSizeError { got: bytes.len() };
    match bytes.len() {
        EVENT_SIZE => event::decode(bytes).map(Input::Event).map_err(|_| err),
        FACTS_RECORD_SIZE => read_pod::<FactsRecord>(bytes)
            .map(|r| Input::Facts(plan.decode(&r)))
            .ok_or(err),
        RETRANSMIT_RECORD_SIZE => read_pod::<RetransmitRecord>(bytes)
            .map(Input::Retransmit)
            .ok_or(err),
        RESET_RECORD_SIZE => read_pod::<ResetRecord>(bytes).map(Input::Reset).ok_or(err),
        LISTENER_RECORD_SIZE => read_pod::<ListenerRecord>(bytes)
            .map(Input::Listener)
            .ok_or(err),
        _ => Err(err),
    }
}

/// Turns the program's ring buffer records into the pipeline's inputs: decoded by size, and
/// each event's owner filled in where the kernel left it to user space.
#[derive(Debug)]
pub struct Decoder {
    plan: FactsPlan,
    attributor: Option<Attributor>,
}

impl Decoder {
    pub fn new(plan: FactsPlan, attributor: Option<Attributor>) -> Decoder {
        Decoder { plan, attributor }
    }

    pub fn decode(&mut self, bytes: &[u8]) -> Result<Input, RecordSizeError> {
        let mut input = decode_record(bytes, &self.plan)?;
        if let (Input::Event(ev), Some(a)) = (&mut input, self.attributor.as_mut()) {
            a.apply(ev);
        }
        Ok(input)
    }

    /// Owners user space could not remember (its table was full), 0 when the kernel keeps the
    /// table: added to the kernel's `owner_update_failed`.
    pub fn owner_updates_failed(&self) -> u64 {
        self.attributor.as_ref().map_or(0, Attributor::failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kernel::btf;

    fn offsets(pairs: &[(&str, u16)]) -> SockOffsets {
        SockOffsets {
            offsets: FIELDS
                .iter()
                .map(|f| pairs.iter().find(|(n, _)| *n == f.name).map(|p| p.1))
                .collect(),
        }
    }

    fn record(plan: &FactsPlan, sock: &[u8]) -> FactsRecord {
        let mut rec = FactsRecord {
            ts_ns: 5,
            skaddr: 6,
            oldstate: 1,
            newstate: 7,
            _pad: [0; 2],
            valid_groups: 0,
            raw: [0; FACTS_RAW_LEN],
        };
        for (i, g) in plan.groups.groups.iter().enumerate() {
            if g.len == 0 {
                continue;
            }
            let (s, d, l) = (g.src_off as usize, g.dst_off as usize, g.len as usize);
            rec.raw[d..d + l].copy_from_slice(&sock[s..s + l]);
            rec.valid_groups |= 1 << i;
        }
        rec
    }

    #[test]
    fn groups_respect_the_program_bounds_on_this_kernel() {
        let path = std::path::Path::new(btf::VMLINUX_BTF);
        if !path.exists() {
            return;
        }
        let plan = FactsPlan::new(&btf::resolve(path).expect("btf"));
        assert!(plan.missing.is_empty(), "{:?}", plan.missing);
        let hs = plan.handshake_groups;
        for f in HANDSHAKE_FACTS {
            let slot = plan.slots[f as usize].expect("handshake fact");
            assert_ne!(hs & 1 << slot.group, 0, "{f:?}");
        }
        assert!(hs.count_ones() < plan.groups.groups.iter().filter(|g| g.len > 0).count() as u32);
        let used: Vec<_> = plan.groups.groups.iter().filter(|g| g.len > 0).collect();
        assert!(!used.is_empty() && used.len() <= MAX_FACT_GROUPS);
        for g in &used {
            assert!(
                tier_fits(usize::from(g.len), usize::from(g.dst_off)),
                "{g:?}"
            );
        }
        // Merged over small gaps: fewer copies than the eight distinct places of the fields.
        eprintln!("{:?}", plan.groups);
        assert!(used.len() <= 6, "{used:?}");
    }

    #[test]
    fn decodes_values_and_unknowns() {
        // A made-up socket: fields far apart (several groups) and one missing.
        let plan = FactsPlan::new(&offsets(&[
            ("sk_err", 100),
            ("sk_err_soft", 104),
            ("srtt_us", 1000),
            ("min_rtt_us", 1100),
            ("bytes_acked", 1504),
            ("bytes_received", 2000),
            ("segs_in", 2008),
        ]));
        assert!(plan.missing.contains(&"segs_out") && plan.missing.contains(&"total_retrans"));
        let mut sock = vec![0u8; 4096];
        sock[100..104].copy_from_slice(&111i32.to_le_bytes());
        sock[1000..1004].copy_from_slice(&(40_168u32 << 3).to_le_bytes());
        sock[1100..1104].copy_from_slice(&39_000u32.to_le_bytes());
        sock[1504..1512].copy_from_slice(&3002u64.to_le_bytes());
        sock[2000..2008].copy_from_slice(&7001u64.to_le_bytes());
        sock[2008..2012].copy_from_slice(&9u32.to_le_bytes());
        let mut rec = record(&plan, &sock);
        let f = plan.decode(&rec);
        assert_eq!((f.ts_ns, f.skaddr, f.oldstate, f.newstate), (5, 6, 1, 7));
        assert_eq!((f.sk_err, f.sk_err_soft), (Some(111), Some(0)));
        assert_eq!((f.srtt_us, f.min_rtt_us), (Some(40_168), Some(39_000)));
        assert_eq!((f.bytes_acked, f.bytes_received), (Some(3002), Some(7001)));
        assert_eq!(
            (f.segs_in, f.segs_out, f.total_retrans),
            (Some(9), None, None)
        );
        // A copy that failed: its facts are unknown, the others still known.
        let g = plan.slots[Fact::SrttUs as usize].expect("srtt").group;
        rec.valid_groups &= !(1 << g);
        let f = plan.decode(&rec);
        assert_eq!((f.srtt_us, f.sk_err), (None, Some(111)));
    }

    #[test]
    fn too_many_scattered_fields_leave_some_unknown_never_misplaced() {
        // Fourteen fields 200 bytes apart: no two share a copy.
        let pairs: Vec<(&str, u16)> = FACTS
            .iter()
            .enumerate()
            .map(|(i, (_, n))| (*n, 200 * (i as u16 + 1)))
            .collect();
        let plan = FactsPlan::new(&offsets(&pairs));
        assert_eq!(plan.missing.len(), FACTS.len() - MAX_FACT_GROUPS);
        let mut sock = vec![0u8; 4096];
        for (n, off) in &pairs {
            let o = usize::from(*off);
            sock[o] = n.len() as u8;
        }
        let f = plan.decode(&record(&plan, &sock));
        if let Some(v) = f.segs_out {
            assert_eq!(v, "segs_out".len() as u32);
        }
        if let Some(v) = f.bytes_acked {
            assert_eq!(v, "bytes_acked".len() as u64);
        }
    }

    #[test]
    fn records_are_told_apart_by_size() {
        let plan = FactsPlan::new(&offsets(&[]));
        assert!(matches!(
            decode_record(&[0u8; EVENT_SIZE], &plan),
            Ok(Input::Event(_))
        ));
        assert!(matches!(
            decode_record(&[0u8; FACTS_RECORD_SIZE], &plan),
            Ok(Input::Facts(_))
        ));
        assert!(matches!(
            decode_record(&[0u8; RETRANSMIT_RECORD_SIZE], &plan),
            Ok(Input::Retransmit(_))
        ));
        assert!(matches!(
            decode_record(&[0u8; RESET_RECORD_SIZE], &plan),
            Ok(Input::Reset(_))
        ));
        assert_eq!(
            decode_record(&[0u8; 3], &plan),
            Err(RecordSizeError { got: 3 })
        );
    }
}
