//! Socket facts at the kernel boundary: which byte ranges of the socket the program copies
//! (planned from the BTF offsets, [`FactsPlan`]), how a [`FactsRecord`] decodes into
//! [`Facts`], and how every ring buffer record becomes an [`Input`].

use tcpstate_common::{
    Event, FactField, FactFields, FactGroup, FactGroups, FactsRecord, ListenerRecord,
    OwnerlessEvent, ResetRecord, RetransmitRecord, EVENT_SIZE, EVENT_WITH_FACTS_SIZE,
    EVENT_WITH_QUEUE_SIZE, FACTS_RAW_LEN, FACTS_RECORD_SIZE, FACT_GROUP_TIERS,
    LISTENER_RECORD_SIZE, MAX_FACT_GROUPS, MAX_FACT_GROUP_LEN, OWNERLESS_EVENT_SIZE,
    OWNERLESS_EVENT_WITH_FACTS_SIZE, RESET_RECORD_SIZE, RETRANSMIT_RECORD_SIZE,
};

use super::btf::{SockOffsets, FIELDS};
use crate::{attribution::Attributor, facts::Facts, input::Input};

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

const _: () = assert!(FACTS.len() <= tcpstate_common::MAX_FACT_FIELDS);

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
    /// The `FACT_FIELDS` load-time global: the groups' fields one by one.
    pub fields: FactFields,
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
        let mut fields = FactFields::default();
        let placed = slots.iter().zip(&FACTS).filter_map(|(slot, (_, name))| {
            let slot = (*slot)?;
            Some(FactField {
                src_off: offsets.get(name)?,
                dst_off: slot.raw_off,
                size: slot.size as u8,
                group: slot.group,
                _pad: 0,
            })
        });
        for (f, field) in fields.fields.iter_mut().zip(placed) {
            *f = field;
        }
        let handshake_groups = HANDSHAKE_FACTS
            .iter()
            .filter_map(|f| slots[*f as usize])
            .fold(0u32, |m, slot| m | 1 << slot.group);
        FactsPlan {
            handshake_groups,
            groups,
            fields,
            slots,
            missing,
        }
    }

    /// The little-endian value of one fact, when its group was copied.
    fn value(&self, raw: &Raw, fact: Fact) -> Option<u64> {
        let slot = self.slots[fact as usize]?;
        if raw.valid_groups & (1 << slot.group) == 0 {
            return None;
        }
        let start = usize::from(slot.raw_off);
        let b = raw.bytes.get(start..start + usize::from(slot.size))?;
        // By size, not a copy of variable length: this runs for every fact of every record.
        Some(match *b {
            [a] => u64::from(a),
            [a, b] => u64::from(u16::from_le_bytes([a, b])),
            [a, b, c, d] => u64::from(u32::from_le_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => u64::from_le_bytes([a, b, c, d, e, f, g, h]),
            _ => {
                let mut word = [0u8; 8];
                word[..b.len().min(8)].copy_from_slice(&b[..b.len().min(8)]);
                u64::from_le_bytes(word)
            }
        })
    }

    /// The facts a record carries; a fact whose copy failed or that this kernel lacks is None.
    pub fn decode(&self, rec: &FactsRecord) -> Facts {
        let raw = Raw {
            valid_groups: rec.valid_groups,
            bytes: &rec.raw,
        };
        self.decode_raw(rec.ts_ns, rec.skaddr, (rec.oldstate, rec.newstate), &raw)
    }

    fn decode_raw(
        &self,
        ts_ns: u64,
        skaddr: u64,
        (oldstate, newstate): (u8, u8),
        raw: &Raw,
    ) -> Facts {
        let u32_of = |f| self.value(raw, f).map(|v| v as u32);
        let i32_of = |f| self.value(raw, f).map(|v| v as u32 as i32);
        let u8_of = |f| self.value(raw, f).map(|v| v as u8);
        Facts {
            ts_ns,
            skaddr,
            oldstate,
            newstate,
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
            bytes_acked: self.value(raw, Fact::BytesAcked),
            bytes_received: self.value(raw, Fact::BytesReceived),
            bytes_retrans: self.value(raw, Fact::BytesRetrans),
            segs_in: u32_of(Fact::SegsIn),
            segs_out: u32_of(Fact::SegsOut),
        }
    }
}

/// The copied socket bytes of a facts record, wherever they sit.
struct Raw<'a> {
    valid_groups: u32,
    bytes: &'a [u8],
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

/// Hands each input of one ring buffer record to `f`, by reference (records are told apart by
/// their size); false when the record is none of the kinds. Nothing is copied but the record's
/// fields into the inputs: this runs for every record.
fn decode_each<E>(
    bytes: &[u8],
    plan: &FactsPlan,
    attributor: Option<&mut Attributor>,
    mut f: impl FnMut(&Input) -> Result<(), E>,
) -> Result<bool, E> {
    let input = match bytes.len() {
        EVENT_SIZE
        | EVENT_WITH_FACTS_SIZE
        | OWNERLESS_EVENT_SIZE
        | OWNERLESS_EVENT_WITH_FACTS_SIZE => {
            // An event, with its owner's fields or without (then they are 0), and then maybe
            // valid_groups, padding and the raw facts (offsets asserted in tcpstate-common).
            let ownerless = matches!(
                bytes.len(),
                OWNERLESS_EVENT_SIZE | OWNERLESS_EVENT_WITH_FACTS_SIZE
            );
            let head = if ownerless {
                OWNERLESS_EVENT_SIZE
            } else {
                EVENT_SIZE
            };
            let event = bytes.get(..head).and_then(|b| {
                if ownerless {
                    read_pod::<OwnerlessEvent>(b).map(|o| o.event())
                } else {
                    read_pod::<Event>(b)
                }
            });
            let Some(mut ev) = event else {
                return Ok(false);
            };
            if let Some(a) = attributor {
                a.apply(&mut ev);
            }
            let (ts, sk, states) = (ev.ts_ns, ev.skaddr, (ev.oldstate, ev.newstate));
            f(&Input::Event(ev))?;
            if bytes.len() > head {
                let valid = bytes.get(head..head + 4).and_then(read_pod::<u32>);
                let raw = bytes.get(head + 8..);
                if let (Some(valid_groups), Some(raw)) = (valid, raw) {
                    let raw = Raw {
                        valid_groups,
                        bytes: raw,
                    };
                    f(&Input::Facts(plan.decode_raw(ts, sk, states, &raw)))?;
                }
            }
            return Ok(true);
        }
        FACTS_RECORD_SIZE => read_pod::<FactsRecord>(bytes).map(|r| Input::Facts(plan.decode(&r))),
        RETRANSMIT_RECORD_SIZE => read_pod::<RetransmitRecord>(bytes).map(Input::Retransmit),
        RESET_RECORD_SIZE => read_pod::<ResetRecord>(bytes).map(Input::Reset),
        LISTENER_RECORD_SIZE => read_pod::<ListenerRecord>(bytes).map(Input::Listener),
        EVENT_WITH_QUEUE_SIZE => {
            // EventWithQueue: the event, then its listener's queue reading (offset asserted in
            // tcpstate-common).
            let (Some(mut ev), Some(queue)) = (
                bytes.get(..EVENT_SIZE).and_then(read_pod::<Event>),
                bytes.get(EVENT_SIZE..).and_then(read_pod::<ListenerRecord>),
            ) else {
                return Ok(false);
            };
            if let Some(a) = attributor {
                a.apply(&mut ev);
            }
            f(&Input::Event(ev))?;
            Some(Input::Listener(queue))
        }
        _ => None,
    };
    match input {
        Some(i) => f(&i).map(|()| true),
        None => Ok(false),
    }
}

/// One ring buffer record as the pipeline's inputs: one, or an event and its socket facts
/// (tests and tools; the trace loop uses [`Decoder::decode_each`]).
pub fn decode_record(bytes: &[u8], plan: &FactsPlan) -> Result<Vec<Input>, RecordSizeError> {
    collect(bytes, plan, None)
}

fn collect(
    bytes: &[u8],
    plan: &FactsPlan,
    attributor: Option<&mut Attributor>,
) -> Result<Vec<Input>, RecordSizeError> {
    let mut got: Vec<Input> = Vec::with_capacity(2);
    let ok = decode_each(bytes, plan, attributor, |i| {
        got.push(i.clone());
        Ok::<(), std::convert::Infallible>(())
    })
    .unwrap_or_else(|never| match never {});
    if ok {
        Ok(got)
    } else {
        Err(RecordSizeError { got: bytes.len() })
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

    /// One record's inputs, collected (tests).
    pub fn decode(&mut self, bytes: &[u8]) -> Result<Vec<Input>, RecordSizeError> {
        collect(bytes, &self.plan, self.attributor.as_mut())
    }

    /// Hands each input of one record to `f`; false when the record is undecodable.
    pub fn decode_each<E>(
        &mut self,
        bytes: &[u8],
        f: impl FnMut(&Input) -> Result<(), E>,
    ) -> Result<bool, E> {
        decode_each(bytes, &self.plan, self.attributor.as_mut(), f)
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
    use tcpstate_common::{EventWithFacts, EventWithQueue};

    /// A ring buffer record's bytes, as the kernel writes it.
    fn record_bytes<T: Copy>(rec: &T) -> &[u8] {
        // SAFETY: the records of tcpstate-common are repr(C) plain data of their own size.
        unsafe {
            std::slice::from_raw_parts((rec as *const T).cast::<u8>(), std::mem::size_of::<T>())
        }
    }

    /// Decodes a record that must be an event followed by its facts.
    fn event_then_facts(bytes: &[u8], plan: &FactsPlan) -> (crate::event::Event, Facts) {
        let got = decode_record(bytes, plan).expect("decodes");
        match got.as_slice() {
            [Input::Event(ev), Input::Facts(f)] => (*ev, *f),
            _ => panic!("an event, then its facts: {got:?}"),
        }
    }

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
        let one = |bytes: &[u8]| {
            let mut d = decode_record(bytes, &plan).expect("decodes");
            assert_eq!(d.len(), 1);
            d.remove(0)
        };
        assert!(matches!(one(&[0u8; EVENT_SIZE]), Input::Event(_)));
        assert!(matches!(one(&[0u8; FACTS_RECORD_SIZE]), Input::Facts(_)));
        assert!(matches!(
            one(&[0u8; RETRANSMIT_RECORD_SIZE]),
            Input::Retransmit(_)
        ));
        assert!(matches!(one(&[0u8; RESET_RECORD_SIZE]), Input::Reset(_)));
        assert!(matches!(
            one(&[0u8; LISTENER_RECORD_SIZE]),
            Input::Listener(_)
        ));
        assert!(matches!(one(&[0u8; OWNERLESS_EVENT_SIZE]), Input::Event(_)));
        assert_eq!(
            decode_record(&[0u8; 3], &plan).err(),
            Some(RecordSizeError { got: 3 })
        );
    }

    /// The kernel's one record of an event and its facts is two inputs, the event first, the
    /// facts with its time, socket and states.
    #[test]
    fn an_event_with_facts_is_the_event_then_its_facts() {
        let plan = FactsPlan::new(&offsets(&[("srtt_us", 100)]));
        let mut sock = vec![0u8; 512];
        sock[100..104].copy_from_slice(&(8000u32 << 3).to_ne_bytes());
        let facts = record(&plan, &sock);
        let mut e = crate::event::Event::zeroed();
        e.ts_ns = 42;
        e.skaddr = 0xffff_8880_0000_1000;
        e.oldstate = tcpstate_common::state::SYN_SENT;
        e.newstate = tcpstate_common::state::ESTABLISHED;
        let rec = EventWithFacts {
            event: e,
            valid_groups: facts.valid_groups,
            _pad: 0,
            raw: facts.raw,
        };
        let bytes = record_bytes(&rec);
        let (ev, f) = event_then_facts(bytes, &plan);
        assert_eq!(ev, e);
        assert_eq!((f.ts_ns, f.skaddr), (42, e.skaddr));
        assert_eq!((f.oldstate, f.newstate), (e.oldstate, e.newstate));
        assert_eq!(f.srtt_us, Some(8000));
    }

    /// An event without its owner's fields is the event with them 0, facts and all.
    #[test]
    fn an_ownerless_event_is_the_event_with_no_owner() {
        use tcpstate_common::{owner_source, OwnerlessEventWithFacts};
        let plan = FactsPlan::new(&offsets(&[("srtt_us", 100)]));
        let mut sock = vec![0u8; 512];
        sock[100..104].copy_from_slice(&(5000u32 << 3).to_ne_bytes());
        let facts = record(&plan, &sock);
        let o = OwnerlessEvent {
            ts_ns: 9,
            skaddr: 0xffff_8880_0000_4000,
            ctx_pid: 11,
            ctx_tid: 12,
            oldstate: tcpstate_common::state::LAST_ACK,
            newstate: tcpstate_common::state::CLOSE,
            family: 10,
            flags: 0,
            sport: 443,
            dport: 50000,
            saddr: [1; 16],
            daddr: [2; 16],
            ctx_comm: *b"ksoftirqd/0\0\0\0\0\0",
            owner_source: owner_source::DEFERRED,
            _pad: [0; 3],
            netns: 4026531840,
        };
        let mut want = crate::event::Event::zeroed();
        want.ts_ns = 9;
        want.skaddr = o.skaddr;
        (want.ctx_pid, want.ctx_tid) = (11, 12);
        (want.oldstate, want.newstate, want.family) = (o.oldstate, o.newstate, 10);
        (want.sport, want.dport) = (443, 50000);
        (want.saddr, want.daddr, want.ctx_comm) = (o.saddr, o.daddr, o.ctx_comm);
        (want.owner_source, want.netns) = (owner_source::DEFERRED, o.netns);
        assert_eq!(o.event(), want);
        let rec = OwnerlessEventWithFacts {
            event: o,
            valid_groups: facts.valid_groups,
            _pad: 0,
            raw: facts.raw,
        };
        let bytes = record_bytes(&rec);
        let (ev, f) = event_then_facts(bytes, &plan);
        assert_eq!(ev, want);
        assert_eq!((f.ts_ns, f.skaddr), (9, o.skaddr));
        assert_eq!(f.srtt_us, Some(5000));
        let plain = decode_record(&bytes[..OWNERLESS_EVENT_SIZE], &plan).expect("decodes");
        assert_eq!(plain, vec![Input::Event(want)]);
    }

    /// An accepted socket's first event and its listener's queue reading are one record: the
    /// event, then the reading.
    #[test]
    fn an_event_with_a_queue_reading_is_the_event_then_the_reading() {
        let plan = FactsPlan::new(&offsets(&[]));
        let mut e = crate::event::Event::zeroed();
        e.ts_ns = 7;
        e.skaddr = 0xffff_8880_0000_2000;
        e.oldstate = tcpstate_common::state::LISTEN;
        e.newstate = tcpstate_common::state::SYN_RECV;
        let queue = ListenerRecord {
            ts_ns: 7,
            skaddr: 0xffff_8880_0000_3000,
            kind: tcpstate_common::listener_kind::QUEUE,
            known: tcpstate_common::listener_known::QUEUE,
            family: 2,
            port: 443,
            _pad: 0,
            depth: 3,
            limit: 128,
            reason: 0,
            _pad2: 0,
            addr: [0; 16],
        };
        let rec = EventWithQueue { event: e, queue };
        let bytes = record_bytes(&rec);
        let got = decode_record(bytes, &plan).expect("decodes");
        assert_eq!(got.len(), 2);
        assert!(matches!(&got[0], Input::Event(ev) if *ev == e));
        assert!(matches!(&got[1], Input::Listener(l) if *l == queue));
    }
}
