//! Parses a tracepoint `format` file into the field layout the kernel program reads.
//!
//! Offsets are never hard-coded: `sock:inet_sock_set_state` changed layout in Linux 5.6
//! (`protocol` grew from one byte to two and every address moved).

use tcpstate_common::{DropLayout, JoinLayout, Layout, MAX_RECORD_LEN};

/// One `field:` line of a format file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub decl: String,
    pub name: String,
    pub offset: usize,
    pub size: usize,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FormatError {
    /// A `field:` line that does not have the `offset:N; size:N;` shape.
    #[error("line {line} is not a field description: {text:?}")]
    Malformed { line: usize, text: String },
    #[error("field `{0}` is missing")]
    Missing(&'static str),
    #[error("field `{field}` has size {size}, expected one of {expected:?}")]
    BadSize {
        field: &'static str,
        size: usize,
        expected: &'static [usize],
    },
    #[error(
        "field `{field}` ends at byte {end}, beyond the {MAX_RECORD_LEN} bytes the program reads"
    )]
    TooLong { field: &'static str, end: usize },
}

/// Reads every `field:` line; other lines (name, ID, print fmt) are ignored.
pub fn parse_fields(text: &str) -> Result<Vec<Field>, FormatError> {
    let mut fields = Vec::new();
    for (idx, raw) in text.lines().enumerate() {
        let line = raw.trim();
        let Some(rest) = line.strip_prefix("field:") else {
            continue;
        };
        let malformed = || FormatError::Malformed {
            line: idx + 1,
            text: raw.chars().take(120).collect(),
        };
        let mut decl = None;
        let mut offset = None;
        let mut size = None;
        for part in rest.split(';') {
            let part = part.trim();
            if let Some(v) = part.strip_prefix("offset:") {
                offset = Some(v.trim().parse::<usize>().map_err(|_| malformed())?);
            } else if let Some(v) = part.strip_prefix("size:") {
                size = Some(v.trim().parse::<usize>().map_err(|_| malformed())?);
            } else if decl.is_none() && !part.is_empty() {
                decl = Some(part.to_string());
            }
        }
        let (Some(decl), Some(offset), Some(size)) = (decl, offset, size) else {
            return Err(malformed());
        };
        let name = field_name(&decl).ok_or_else(malformed)?;
        fields.push(Field {
            name,
            decl,
            offset,
            size,
        });
    }
    Ok(fields)
}

/// `const void * skaddr` -> `skaddr`; `__u8 saddr[4]` -> `saddr`.
fn field_name(decl: &str) -> Option<String> {
    let last = decl.rsplit([' ', '*']).next()?;
    let name = last.split('[').next()?.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    Some(name.to_string())
}

/// Builds the layout of `sock:inet_sock_set_state`, checking every field the program reads.
pub fn inet_sock_set_state_layout(text: &str) -> Result<Layout, FormatError> {
    let fields = parse_fields(text)?;
    let mut l = Lookup {
        fields: &fields,
        end: 0,
        zero_is_absent: false,
    };
    let skaddr = l.required("skaddr", &[8])?;
    let oldstate = l.required("oldstate", &[4])?;
    let newstate = l.required("newstate", &[4])?;
    let sport = l.required("sport", &[2])?;
    let dport = l.required("dport", &[2])?;
    let family = l.required("family", &[2])?;
    let protocol = l.required("protocol", &[1, 2])?;
    // Checked by `required` just above: 1 or 2.
    let protocol_size = l.size_of("protocol").unwrap_or(2);
    let saddr = l.required("saddr", &[4])?;
    let daddr = l.required("daddr", &[4])?;
    let saddr_v6 = l.required("saddr_v6", &[16])?;
    let daddr_v6 = l.required("daddr_v6", &[16])?;
    let end = l.end;
    Ok(Layout {
        skaddr,
        oldstate,
        newstate,
        sport,
        dport,
        family,
        protocol,
        protocol_size: protocol_size as u16,
        saddr,
        daddr,
        saddr_v6,
        daddr_v6,
        record_len: end as u16,
        _pad: 0,
    })
}

/// The joined tracepoints the kernel program can attach to (retransmits and resets).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum JoinEvent {
    RetransmitSkb,
    RetransmitSynack,
    SendReset,
    ReceiveReset,
}

impl JoinEvent {
    pub const ALL: [JoinEvent; 4] = [
        JoinEvent::RetransmitSkb,
        JoinEvent::RetransmitSynack,
        JoinEvent::SendReset,
        JoinEvent::ReceiveReset,
    ];

    /// (program, layout global, tracepoint category, tracepoint name).
    pub fn names(self) -> (&'static str, &'static str, &'static str, &'static str) {
        tcpstate_common::names::JOINED[self as usize]
    }

    /// `tcp:tcp_retransmit_skb` and so on.
    pub fn tracepoint(self) -> String {
        let (_, _, category, name) = self.names();
        format!("{category}:{name}")
    }
}

/// Finds named fields with their expected sizes, tracking the end of the last one.
struct Lookup<'a> {
    fields: &'a [Field],
    end: usize,
    /// The program reads offset 0 as "the event lacks this field" (joined events): a field
    /// there (over `common_type`) is then an error rather than silently absent.
    zero_is_absent: bool,
}

impl Lookup<'_> {
    /// The field's offset, or None when the event lacks it; a wrong size or offset is an error.
    fn optional(
        &mut self,
        name: &'static str,
        expected: &'static [usize],
    ) -> Result<Option<u16>, FormatError> {
        let Some(f) = self.fields.iter().find(|f| f.name == name) else {
            return Ok(None);
        };
        if !expected.contains(&f.size) {
            return Err(FormatError::BadSize {
                field: name,
                size: f.size,
                expected,
            });
        }
        let field_end = f
            .offset
            .checked_add(f.size)
            .filter(|&e| e <= MAX_RECORD_LEN)
            .ok_or(FormatError::TooLong {
                field: name,
                end: f.offset.saturating_add(f.size),
            })?;
        // Offset 0 is `common_type`: a field there would read as "absent" in the program.
        if self.zero_is_absent && f.offset == 0 {
            return Err(FormatError::Malformed {
                line: 0,
                text: format!("field `{name}` at offset 0"),
            });
        }
        self.end = self.end.max(field_end);
        Ok(Some(f.offset as u16))
    }

    fn required(
        &mut self,
        name: &'static str,
        expected: &'static [usize],
    ) -> Result<u16, FormatError> {
        self.optional(name, expected)?
            .ok_or(FormatError::Missing(name))
    }

    fn size_of(&self, name: &str) -> Option<usize> {
        self.fields.iter().find(|f| f.name == name).map(|f| f.size)
    }
}

/// Builds the layout of one joined tracepoint, checking every field the program reads: the
/// socket's addresses as `tcp_event_sk` events carry them, or (`tcp_send_reset` since Linux
/// 6.10) as socket address storage; `err` and `reason` where the kernel has them.
pub fn join_layout(text: &str, event: JoinEvent) -> Result<JoinLayout, FormatError> {
    let fields = parse_fields(text)?;
    let mut l = Lookup {
        fields: &fields,
        end: 0,
        zero_is_absent: true,
    };
    let mut out = JoinLayout {
        skaddr: l.required("skaddr", &[8])?,
        ..JoinLayout::default()
    };
    match event {
        JoinEvent::RetransmitSkb => {
            out.skbaddr = l.required("skbaddr", &[8])?;
            out.state = l.required("state", &[4])?;
            out.err = l.optional("err", &[4])?.unwrap_or(0);
        }
        JoinEvent::RetransmitSynack | JoinEvent::ReceiveReset => {}
        JoinEvent::SendReset => {
            out.skbaddr = l.required("skbaddr", &[8])?;
            out.state = l.required("state", &[4])?;
            out.reason = l.optional("reason", &[4])?.unwrap_or(0);
        }
    }
    const SOCKADDR_STORAGE: usize = 28;
    if event == JoinEvent::SendReset && l.size_of("saddr") == Some(SOCKADDR_STORAGE) {
        out.saddr = l.required("saddr", &[SOCKADDR_STORAGE])?;
        out.daddr = l.required("daddr", &[SOCKADDR_STORAGE])?;
        out.sockaddr = 1;
    } else {
        out.sport = l.required("sport", &[2])?;
        out.dport = l.required("dport", &[2])?;
        out.family = l.required("family", &[2])?;
        out.saddr = l.required("saddr", &[4])?;
        out.daddr = l.required("daddr", &[4])?;
        out.saddr_v6 = l.required("saddr_v6", &[16])?;
        out.daddr_v6 = l.required("daddr_v6", &[16])?;
    }
    out.record_len = l.end as u16;
    Ok(out)
}

/// The layout of `skb:kfree_skb`: `rx_sk` (Linux 6.12+; its absence is `Missing`, and the
/// caller gives a notice), `reason` and `protocol` (optional).
pub fn drop_layout(text: &str) -> Result<DropLayout, FormatError> {
    let fields = parse_fields(text)?;
    let mut l = Lookup {
        fields: &fields,
        end: 0,
        zero_is_absent: true,
    };
    let mut out = DropLayout {
        rx_sk: l.required("rx_sk", &[8])?,
        ..DropLayout::default()
    };
    out.reason = l.required("reason", &[4])?;
    out.protocol = l.optional("protocol", &[2])?.unwrap_or(0);
    out.record_len = l.end as u16;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kfree_skb_layout_of_6_18() {
        let text = "format:\n\tfield:unsigned short common_type;\toffset:0;\tsize:2;\tsigned:0;\n\
            \tfield:void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;\n\
            \tfield:void * location;\toffset:16;\tsize:8;\tsigned:0;\n\
            \tfield:void * rx_sk;\toffset:24;\tsize:8;\tsigned:0;\n\
            \tfield:unsigned short protocol;\toffset:32;\tsize:2;\tsigned:0;\n\
            \tfield:enum skb_drop_reason reason;\toffset:36;\tsize:4;\tsigned:0;\n";
        let l = drop_layout(text).expect("layout");
        assert_eq!(
            (l.rx_sk, l.protocol, l.reason, l.record_len),
            (24, 32, 36, 40)
        );
        let old = text.replace("rx_sk", "other");
        assert!(matches!(
            drop_layout(&old),
            Err(FormatError::Missing("rx_sk"))
        ));
    }

    const MODERN: &str = include_str!("../testdata/format-6.18.txt");
    const PRE_5_6: &str = include_str!("../testdata/format-5.4.txt");

    #[test]
    fn modern_layout() {
        let l = inet_sock_set_state_layout(MODERN).unwrap();
        assert_eq!(
            (l.skaddr, l.oldstate, l.newstate, l.sport, l.dport, l.family),
            (8, 16, 20, 24, 26, 28)
        );
        assert_eq!((l.protocol, l.protocol_size), (30, 2));
        assert_eq!((l.saddr, l.daddr, l.saddr_v6, l.daddr_v6), (32, 36, 40, 56));
        assert_eq!(l.record_len, 72);
    }

    #[test]
    fn pre_5_6_layout_has_a_one_byte_protocol() {
        let l = inet_sock_set_state_layout(PRE_5_6).unwrap();
        assert_eq!((l.protocol, l.protocol_size), (30, 1));
        assert_eq!((l.saddr, l.daddr, l.saddr_v6, l.daddr_v6), (31, 35, 39, 55));
        assert_eq!(l.record_len, 71);
    }

    #[test]
    fn missing_field_is_named() {
        let text = MODERN.replace("daddr_v6[16]", "other[16]");
        assert_eq!(
            inet_sock_set_state_layout(&text),
            Err(FormatError::Missing("daddr_v6"))
        );
    }

    #[test]
    fn wrong_size_is_rejected() {
        let text = MODERN.replace("offset:24;\tsize:2;", "offset:24;\tsize:4;");
        assert!(matches!(
            inet_sock_set_state_layout(&text),
            Err(FormatError::BadSize {
                field: "sport",
                size: 4,
                ..
            })
        ));
    }

    #[test]
    fn offset_beyond_the_copied_record_is_rejected() {
        let text = MODERN.replace("offset:56;", "offset:500;");
        assert!(matches!(
            inet_sock_set_state_layout(&text),
            Err(FormatError::TooLong {
                field: "daddr_v6",
                ..
            })
        ));
    }

    #[test]
    fn huge_offset_is_an_error_not_an_overflow() {
        let text = MODERN.replace("offset:56;", "offset:18446744073709551615;");
        assert!(matches!(
            inet_sock_set_state_layout(&text),
            Err(FormatError::TooLong {
                field: "daddr_v6",
                ..
            })
        ));
    }

    #[test]
    fn malformed_field_line_is_an_error_not_a_panic() {
        let text = "format:\n\tfield:int x;\toffset:abc;\tsize:4;\n";
        assert!(matches!(
            parse_fields(text),
            Err(FormatError::Malformed { line: 2, .. })
        ));
        assert!(parse_fields("field:").is_err());
        assert!(parse_fields("field:;offset:1;size:1;").is_err());
    }

    #[test]
    fn field_names() {
        assert_eq!(field_name("const void * skaddr").as_deref(), Some("skaddr"));
        assert_eq!(field_name("__u8 saddr_v6[16]").as_deref(), Some("saddr_v6"));
        assert_eq!(field_name("int *p").as_deref(), Some("p"));
    }

    const RETRANSMIT_SKB: &str = include_str!("../testdata/tcp_retransmit_skb-6.18.txt");
    const RETRANSMIT_SYNACK: &str = include_str!("../testdata/tcp_retransmit_synack-6.18.txt");
    const SEND_RESET: &str = include_str!("../testdata/tcp_send_reset-6.18.txt");
    const RECEIVE_RESET: &str = include_str!("../testdata/tcp_receive_reset-6.18.txt");

    #[test]
    fn joined_layouts_of_6_18() {
        let l = join_layout(RETRANSMIT_SKB, JoinEvent::RetransmitSkb).unwrap();
        assert_eq!((l.skbaddr, l.skaddr, l.state, l.err), (8, 16, 24, 76));
        assert_eq!((l.sport, l.dport, l.family), (28, 30, 32));
        assert_eq!((l.saddr, l.daddr, l.saddr_v6, l.daddr_v6), (34, 38, 42, 58));
        assert_eq!((l.sockaddr, l.record_len), (0, 80));

        let l = join_layout(RETRANSMIT_SYNACK, JoinEvent::RetransmitSynack).unwrap();
        assert_eq!((l.skbaddr, l.skaddr, l.state, l.err), (0, 8, 0, 0));
        assert_eq!(
            (l.sport, l.saddr_v6, l.daddr_v6, l.record_len),
            (24, 38, 54, 70)
        );

        let l = join_layout(SEND_RESET, JoinEvent::SendReset).unwrap();
        assert_eq!((l.skbaddr, l.skaddr, l.state, l.reason), (8, 16, 24, 28));
        assert_eq!((l.sockaddr, l.saddr, l.daddr, l.sport), (1, 32, 60, 0));
        assert_eq!(l.record_len, 88);

        let l = join_layout(RECEIVE_RESET, JoinEvent::ReceiveReset).unwrap();
        assert_eq!((l.skaddr, l.sport, l.family, l.daddr_v6), (8, 16, 20, 46));
        assert_eq!(l.record_len, 62);
    }

    #[test]
    fn retransmit_skb_before_6_17_has_no_err() {
        let text: String = RETRANSMIT_SKB
            .lines()
            .filter(|l| !l.contains(" err;"))
            .map(|l| format!("{l}\n"))
            .collect();
        let l = join_layout(&text, JoinEvent::RetransmitSkb).unwrap();
        assert_eq!((l.err, l.record_len), (0, 74));
    }

    #[test]
    fn send_reset_before_6_10_has_tcp_event_sk_addresses() {
        // The tcp_event_sk_skb layout: ports, family and addresses as separate fields.
        let text = "\tfield:const void * skbaddr;\toffset:8;\tsize:8;\tsigned:0;
\tfield:const void * skaddr;\toffset:16;\tsize:8;\tsigned:0;
\tfield:int state;\toffset:24;\tsize:4;\tsigned:1;
\tfield:__u16 sport;\toffset:28;\tsize:2;\tsigned:0;
\tfield:__u16 dport;\toffset:30;\tsize:2;\tsigned:0;
\tfield:__u16 family;\toffset:32;\tsize:2;\tsigned:0;
\tfield:__u8 saddr[4];\toffset:34;\tsize:4;\tsigned:0;
\tfield:__u8 daddr[4];\toffset:38;\tsize:4;\tsigned:0;
\tfield:__u8 saddr_v6[16];\toffset:42;\tsize:16;\tsigned:0;
\tfield:__u8 daddr_v6[16];\toffset:58;\tsize:16;\tsigned:0;
";
        let l = join_layout(text, JoinEvent::SendReset).unwrap();
        assert_eq!((l.sockaddr, l.reason, l.sport, l.saddr_v6), (0, 0, 28, 42));
        assert_eq!(l.record_len, 74);
    }

    #[test]
    fn joined_layout_errors() {
        let text = RECEIVE_RESET.replace("skaddr;", "other;");
        assert_eq!(
            join_layout(&text, JoinEvent::ReceiveReset),
            Err(FormatError::Missing("skaddr"))
        );
        let text = SEND_RESET.replace(
            "daddr[28];\toffset:60;\tsize:28;",
            "daddr[28];\toffset:60;\tsize:16;",
        );
        assert!(join_layout(&text, JoinEvent::SendReset).is_err());
        let text = RETRANSMIT_SKB.replace("offset:76;", "offset:200;");
        assert!(matches!(
            join_layout(&text, JoinEvent::RetransmitSkb),
            Err(FormatError::TooLong { field: "err", .. })
        ));
    }
}
