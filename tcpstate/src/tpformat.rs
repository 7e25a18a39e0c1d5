//! Parses a tracepoint `format` file into the field layout the kernel program reads.
//!
//! Offsets are never hard-coded: `sock:inet_sock_set_state` changed layout in Linux 5.6
//! (`protocol` grew from one byte to two and every address moved).

use tcpstate_common::{Layout, MAX_RECORD_LEN};

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
    let mut end = 0usize;
    let mut get =
        |name: &'static str, expected: &'static [usize]| -> Result<(u16, usize), FormatError> {
            let f = fields
                .iter()
                .find(|f| f.name == name)
                .ok_or(FormatError::Missing(name))?;
            if !expected.contains(&f.size) {
                return Err(FormatError::BadSize {
                    field: name,
                    size: f.size,
                    expected,
                });
            }
            // A format file is input: an absurd offset must be an error, not an overflow.
            let field_end = f
                .offset
                .checked_add(f.size)
                .filter(|&e| e <= MAX_RECORD_LEN)
                .ok_or(FormatError::TooLong {
                    field: name,
                    end: f.offset.saturating_add(f.size),
                })?;
            end = end.max(field_end);
            // In range: field_end <= MAX_RECORD_LEN.
            Ok((f.offset as u16, f.size))
        };
    let (skaddr, _) = get("skaddr", &[8])?;
    let (oldstate, _) = get("oldstate", &[4])?;
    let (newstate, _) = get("newstate", &[4])?;
    let (sport, _) = get("sport", &[2])?;
    let (dport, _) = get("dport", &[2])?;
    let (family, _) = get("family", &[2])?;
    let (protocol, protocol_size) = get("protocol", &[1, 2])?;
    let (saddr, _) = get("saddr", &[4])?;
    let (daddr, _) = get("daddr", &[4])?;
    let (saddr_v6, _) = get("saddr_v6", &[16])?;
    let (daddr_v6, _) = get("daddr_v6", &[16])?;
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

#[cfg(test)]
mod tests {
    use super::*;

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
}
