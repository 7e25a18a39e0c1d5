//! JSON values written straight into the pipeline's line buffer, byte for byte as `serde_json`
//! writes them (the same `itoa` and `zmij` number formatting, the same string escapes), but
//! without a serializer: keys are pre-escaped constants and nothing is allocated per record.
//! `--transitions -o json` writes one object per kernel event, so this is on the hot path.

use std::{io::Write as _, net::IpAddr};

/// Something that writes itself as one JSON value.
pub(super) trait Value {
    fn put(&self, out: &mut Vec<u8>);
}

/// Writes `,"key":value` for each pair; keys must be literals that need no escaping. The key
/// is copied as a constant of known length, which the compiler turns into a few moves.
macro_rules! fields {
    ($out:expr; $($key:literal => $value:expr),* $(,)?) => {
        $(
            $out.extend_from_slice(concat!(",\"", $key, "\":").as_bytes());
            $crate::report::jsonw::Value::put(&$value, $out);
        )*
    };
}
pub(super) use fields;

/// Opens an object with its `schema` field: `{"schema":"<schema>"`.
pub(super) fn begin(out: &mut Vec<u8>, schema: &'static str) {
    out.extend_from_slice(b"{\"schema\":");
    Name(schema).put(out);
}

/// One of this program's own names (a state, a role, a schema): a string constant that needs
/// no escaping, so it is copied without looking at it.
#[derive(Clone, Copy)]
pub(super) struct Name(pub &'static str);

impl Value for Name {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        debug_assert!(!self.0.bytes().any(needs_escape), "{:?}", self.0);
        out.push(b'"');
        out.extend_from_slice(self.0.as_bytes());
        out.push(b'"');
    }
}

macro_rules! integers {
    ($($t:ty),*) => {$(
        impl Value for $t {
            #[inline]
            fn put(&self, out: &mut Vec<u8>) {
                out.extend_from_slice(itoa::Buffer::new().format(*self).as_bytes());
            }
        }
    )*};
}
integers!(u8, u16, u32, u64, i64);

impl Value for f64 {
    /// As `serde_json`: the shortest representation that reads back exactly; `null` when not
    /// finite.
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        if self.is_finite() {
            out.extend_from_slice(zmij::Buffer::new().format_finite(*self).as_bytes());
        } else {
            out.extend_from_slice(b"null");
        }
    }
}

impl Value for bool {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(if *self { b"true" } else { b"false" });
    }
}

impl Value for &str {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        escaped(self, out);
        out.push(b'"');
    }
}

impl<T: Value> Value for Option<T> {
    #[inline]
    fn put(&self, out: &mut Vec<u8>) {
        match self {
            Some(v) => v.put(out),
            None => out.extend_from_slice(b"null"),
        }
    }
}

impl Value for IpAddr {
    /// The address as its `Display` form, as serde serialises it.
    fn put(&self, out: &mut Vec<u8>) {
        out.push(b'"');
        match self {
            IpAddr::V4(a) => {
                for (i, octet) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        out.push(b'.');
                    }
                    decimal_u8(octet, out);
                }
            }
            // The compressed and IPv4-mapped forms are std's; nothing in them needs escaping.
            // Writing into a Vec cannot fail.
            IpAddr::V6(a) => {
                let _ = write!(out, "{a}");
            }
        }
        out.push(b'"');
    }
}

/// An octet in decimal, without the general formatter (four per IPv4 address).
fn decimal_u8(v: u8, out: &mut Vec<u8>) {
    if v >= 100 {
        out.push(b'0' + v / 100);
    }
    if v >= 10 {
        out.push(b'0' + v / 10 % 10);
    }
    out.push(b'0' + v % 10);
}

/// A u64 as a `0x`-prefixed lowercase hex string (kernel addresses exceed what JSON numbers
/// hold exactly everywhere), as `{:#x}` formats it.
pub(super) struct Hex(pub u64);

impl Value for Hex {
    fn put(&self, out: &mut Vec<u8>) {
        const DIGITS: &[u8; 16] = b"0123456789abcdef";
        let mut buf = [0u8; 16];
        let mut i = buf.len();
        let mut v = self.0;
        loop {
            i -= 1;
            buf[i] = DIGITS[(v & 0xf) as usize];
            v >>= 4;
            if v == 0 {
                break;
            }
        }
        out.extend_from_slice(b"\"0x");
        out.extend_from_slice(&buf[i..]);
        out.push(b'"');
    }
}

/// A task name up to its NUL, invalid UTF-8 replaced as `String::from_utf8_lossy` does (one
/// U+FFFD per invalid sequence), as a JSON string.
pub(super) struct Comm<'a>(pub &'a [u8]);

impl Value for Comm<'_> {
    fn put(&self, out: &mut Vec<u8>) {
        let end = self.0.iter().position(|&b| b == 0).unwrap_or(self.0.len());
        let raw = &self.0[..end];
        out.push(b'"');
        if let Ok(s) = std::str::from_utf8(raw) {
            escaped(s, out);
            out.push(b'"');
            return;
        }
        for chunk in raw.utf8_chunks() {
            escaped(chunk.valid(), out);
            if !chunk.invalid().is_empty() {
                out.extend_from_slice(
                    char::REPLACEMENT_CHARACTER
                        .encode_utf8(&mut [0; 4])
                        .as_bytes(),
                );
            }
        }
        out.push(b'"');
    }
}

/// The contents of a JSON string, escaped as `serde_json` escapes them: `"` and `\`, the
/// control characters below 0x20 (short forms where JSON has one, `\u00XX` otherwise).
fn escaped(s: &str, out: &mut Vec<u8>) {
    let bytes = s.as_bytes();
    let needs = needs_escape;
    // Almost every string (task names, paths, ids) needs no escape: one copy.
    if !bytes.iter().any(|&b| needs(b)) {
        out.extend_from_slice(bytes);
        return;
    }
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        if !needs(b) {
            continue;
        }
        out.extend_from_slice(&bytes[start..i]);
        start = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            _ => {
                const HEX: &[u8; 16] = b"0123456789abcdef";
                out.extend_from_slice(b"\\u00");
                out.push(HEX[usize::from(b >> 4)]);
                out.push(HEX[usize::from(b & 0xf)]);
            }
        }
    }
    out.extend_from_slice(&bytes[start..]);
}

#[inline]
fn needs_escape(b: u8) -> bool {
    b < 0x20 || b == b'"' || b == b'\\'
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn put(v: impl Value) -> String {
        let mut out = Vec::new();
        v.put(&mut out);
        String::from_utf8(out).unwrap()
    }

    fn serde(v: impl serde::Serialize) -> String {
        serde_json::to_string(&v).unwrap()
    }

    #[test]
    fn strings_escape_as_serde_json() {
        let every_ascii: String = (0u8..128).map(char::from).collect();
        for s in [
            "",
            "plain",
            "a\"b\\c",
            "\u{7f}é漢字🦀",
            "/kubepods/pod\n\t\r\u{8}\u{c}",
            every_ascii.as_str(),
        ] {
            assert_eq!(put(s), serde(s), "{s:?}");
        }
    }

    #[test]
    fn task_names_as_lossy_utf8() {
        for raw in [
            &b"curl\0\0\0\0"[..],
            b"0123456789abcdef",
            b"a\"b\\\n\x01\xffz\xc3\xa9q\0",
            b"\xf0\x9f\xa6",
            b"\xc3\x28\xa0\xa1x",
            b"",
            b"\0curl",
        ] {
            assert_eq!(put(Comm(raw)), serde(crate::event::comm(raw)), "{raw:?}");
        }
    }

    #[test]
    fn numbers_as_serde_json() {
        for v in [0u64, 1, 9, 10, 12345, u64::MAX] {
            assert_eq!(put(v), serde(v));
        }
        for v in [0i64, -1, i64::MIN, i64::MAX, 1_795_244_685_178_089_193] {
            assert_eq!(put(v), serde(v));
        }
        assert_eq!(put(u16::MAX), serde(u16::MAX));
        assert_eq!(put(u32::MAX), serde(u32::MAX));
        for ns in [
            0u64,
            1,
            499,
            500,
            28_814,
            1_000_000,
            123_456_789_012,
            u64::MAX,
        ] {
            let ms = super::super::ms_f64(ns);
            assert_eq!(put(ms), serde(ms), "{ns}");
        }
        for v in [f64::NAN, f64::INFINITY, -0.0, 1e300, 5e-324, 0.1 + 0.2] {
            assert_eq!(put(v), serde(v), "{v}");
        }
        assert_eq!(put(Some(3u32)), serde(Some(3u32)));
        assert_eq!(put(None::<f64>), serde(None::<f64>));
        assert_eq!(put(true), "true");
        assert_eq!(put(false), "false");
    }

    #[test]
    fn addresses_as_serde() {
        let v6: [Ipv6Addr; 6] = [
            Ipv6Addr::UNSPECIFIED,
            Ipv6Addr::LOCALHOST,
            "::ffff:10.1.2.3".parse().unwrap(),
            "2001:db8::1:0:0:1".parse().unwrap(),
            "fe80::1ff:fe23:4567:890a".parse().unwrap(),
            Ipv6Addr::from([0xffff; 8]),
        ];
        let v4 = [
            Ipv4Addr::UNSPECIFIED,
            Ipv4Addr::LOCALHOST,
            Ipv4Addr::BROADCAST,
            Ipv4Addr::new(10, 0, 100, 9),
        ];
        for a in v6.map(IpAddr::V6).into_iter().chain(v4.map(IpAddr::V4)) {
            assert_eq!(put(a), serde(a), "{a}");
        }
    }

    #[test]
    fn hex_as_alternate_lower_hex() {
        for v in [0u64, 1, 0xf, 0x10, 0xffff_8881_3ca3_e5c0, u64::MAX] {
            assert_eq!(put(Hex(v)), format!("\"{v:#x}\""));
        }
    }

    #[test]
    fn fields_and_begin() {
        let mut out = Vec::new();
        begin(&mut out, "s.v1");
        fields!(&mut out; "a" => 1u64, "b" => None::<u32>, "c" => "x\"", "d" => Name("N"));
        out.push(b'}');
        assert_eq!(
            out,
            br#"{"schema":"s.v1","a":1,"b":null,"c":"x\"","d":"N"}"#
        );
    }
}
