//! Rendering of connections, transitions and summaries: aligned tables for people, JSON Lines
//! for programs. Everything here is a pure function of its arguments, so a replay prints exactly
//! what the live trace printed.

pub mod json;
mod jsonw;
pub mod ladder;
pub mod pairing;
pub(crate) mod render;
#[cfg(test)]
mod rendering_tests;
#[cfg(test)]
mod schema_tests;
#[cfg(test)]
mod stuck_tests;
pub mod summary;
pub mod table;
pub mod time;
pub mod transitions;

use std::{
    borrow::Cow,
    fmt::{self, Write},
    net::IpAddr,
};

use crate::event::comm;
use crate::timeline::Role;

/// A duration printed as milliseconds with three decimals (rounded to the microsecond); honours
/// width and alignment like a string.
#[derive(Clone, Copy, Debug)]
pub struct Ms(pub u64);

impl fmt::Display for Ms {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Small::new();
        buf.push_ms(self.0);
        f.pad(buf.as_str())
    }
}

/// Milliseconds as a JSON number: rounded to the microsecond.
pub fn ms_f64(ns: u64) -> f64 {
    (ns.saturating_add(500) / 1_000) as f64 / 1_000.0
}

/// `addr:port`, IPv6 in brackets; honours width and alignment.
#[derive(Clone, Copy, Debug)]
pub struct Endpoint(pub IpAddr, pub u16);

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut buf = Small::new();
        buf.push_endpoint(self.0, self.1);
        f.pad(buf.as_str())
    }
}

/// A task name for display: `-` when empty.
pub fn comm_or_dash(raw: &[u8]) -> Cow<'_, str> {
    let c = comm(raw);
    if c.is_empty() {
        Cow::Borrowed("-")
    } else {
        c
    }
}

/// The role for a column: `?` when unknown.
pub fn role_column(r: Role) -> &'static str {
    match r {
        Role::Unknown => "?",
        r => r.name(),
    }
}

/// A fixed-capacity string on the stack, to give `Formatter::pad` something without allocating.
pub(crate) struct Small {
    buf: [u8; 64],
    len: usize,
}

impl Default for Small {
    fn default() -> Self {
        Small::new()
    }
}

impl Small {
    pub(crate) fn new() -> Small {
        Small {
            buf: [0; 64],
            len: 0,
        }
    }

    pub(crate) fn as_str(&self) -> &str {
        // Only whole `&str`s are ever appended.
        std::str::from_utf8(&self.buf[..self.len]).unwrap_or("")
    }
}

impl Small {
    /// Appends what fits; the buffer is sized for the longest field written into it.
    pub(crate) fn push_str(&mut self, s: &str) {
        let end = (self.len + s.len()).min(self.buf.len());
        let n = end - self.len;
        // Cut only at a character boundary, so the contents stay valid UTF-8.
        let n = (0..=n).rev().find(|&k| s.is_char_boundary(k)).unwrap_or(0);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
    }

    /// Appends ASCII bytes (what fits).
    fn push_ascii(&mut self, bytes: &[u8]) {
        debug_assert!(bytes.is_ascii());
        let n = bytes.len().min(self.buf.len() - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&bytes[..n]);
        self.len += n;
    }

    pub(crate) fn push_u64(&mut self, mut v: u64) {
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        loop {
            i -= 1;
            digits[i] = b'0' + (v % 10) as u8;
            v /= 10;
            if v == 0 {
                break;
            }
        }
        self.push_ascii(&digits[i..]);
    }

    /// Nanoseconds as milliseconds with three decimals, rounded to the microsecond.
    pub(crate) fn push_ms(&mut self, ns: u64) {
        let us = ns.saturating_add(500) / 1_000;
        self.push_u64(us / 1_000);
        let frac = us % 1_000;
        self.push_ascii(&[
            b'.',
            b'0' + (frac / 100) as u8,
            b'0' + (frac / 10 % 10) as u8,
            b'0' + (frac % 10) as u8,
        ]);
    }

    pub(crate) fn push_ip(&mut self, ip: IpAddr) {
        match ip {
            IpAddr::V4(a) => {
                for (i, octet) in a.octets().into_iter().enumerate() {
                    if i > 0 {
                        self.push_ascii(b".");
                    }
                    self.push_u64(u64::from(octet));
                }
            }
            IpAddr::V6(a) => {
                let _ = write!(self, "{a}");
            }
        }
    }

    /// `addr:port`, IPv6 in brackets.
    pub(crate) fn push_endpoint(&mut self, ip: IpAddr, port: u16) {
        if ip.is_ipv6() {
            self.push_ascii(b"[");
            self.push_ip(ip);
            self.push_ascii(b"]");
        } else {
            self.push_ip(ip);
        }
        self.push_ascii(b":");
        self.push_u64(u64::from(port));
    }

    pub(crate) fn clear(&mut self) {
        self.len = 0;
    }

    /// The contents (ASCII for what the table writes).
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// Appends one ASCII byte, if it fits.
    fn push_byte(&mut self, b: u8) {
        debug_assert!(b.is_ascii());
        if let Some(slot) = self.buf.get_mut(self.len) {
            *slot = b;
            self.len += 1;
        }
    }
}

const SPACES: &str = "                                                                ";

/// Appends `n` spaces.
pub(crate) fn spaces(out: &mut impl Write, mut n: usize) -> fmt::Result {
    while n > 0 {
        let k = n.min(SPACES.len());
        out.write_str(&SPACES[..k])?;
        n -= k;
    }
    Ok(())
}

/// Appends `s` left-aligned in a column of `width` characters (never truncated).
pub(crate) fn left(out: &mut impl Write, s: &str, width: usize) -> fmt::Result {
    out.write_str(s)?;
    spaces(out, width.saturating_sub(s.chars().count()))
}

/// Appends `s` right-aligned in a column of `width` characters (never truncated).
pub(crate) fn right(out: &mut impl Write, s: &str, width: usize) -> fmt::Result {
    spaces(out, width.saturating_sub(s.chars().count()))?;
    out.write_str(s)
}

/// `fmt::Write` into a byte buffer (the pipeline's), for text written with `write!`.
pub(crate) struct Utf8<'a>(pub(crate) &'a mut Vec<u8>);

impl Write for Utf8<'_> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

// Byte-level columns for the connection table, the default output: what they write is ASCII
// by construction, so it skips the `&str` round trip (UTF-8 validation, counting characters)
// and widths are byte counts.

/// Appends `s` left-aligned in a column of `width` bytes (never truncated).
pub(crate) fn left_bytes(out: &mut Vec<u8>, s: &[u8], width: usize) {
    out.extend_from_slice(s);
    out.resize(out.len() + width.saturating_sub(s.len()), b' ');
}

/// Appends `s` right-aligned in a column of `width` bytes (never truncated).
pub(crate) fn right_bytes(out: &mut Vec<u8>, s: &[u8], width: usize) {
    out.resize(out.len() + width.saturating_sub(s.len()), b' ');
    out.extend_from_slice(s);
}

/// `v` in decimal, written at the end of `buf`; returns the digits.
pub(crate) fn decimal(v: u64, buf: &mut [u8; 24]) -> &[u8] {
    let start = digits_before(v, buf, buf.len());
    &buf[start..]
}

/// Writes `v` in decimal so that it ends just before `end` in `buf`; returns where it starts.
fn digits_before(mut v: u64, buf: &mut [u8; 24], end: usize) -> usize {
    let mut i = end;
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return i;
        }
    }
}

/// Nanoseconds as milliseconds with three decimals, rounded to the microsecond (as
/// [`Small::push_ms`]), written at the end of `buf`.
pub(crate) fn millis(ns: u64, buf: &mut [u8; 24]) -> &[u8] {
    let us = ns.saturating_add(500) / 1_000;
    let frac = us % 1_000;
    let end = buf.len();
    buf[end - 4..].copy_from_slice(&[
        b'.',
        b'0' + (frac / 100) as u8,
        b'0' + (frac / 10 % 10) as u8,
        b'0' + (frac % 10) as u8,
    ]);
    let start = digits_before(us / 1_000, buf, end - 4);
    &buf[start..]
}

/// An address as [`Small::push_ip`] writes it, IPv4 without going through `fmt`.
pub(crate) fn ip_bytes(ip: IpAddr, buf: &mut Small) -> &[u8] {
    buf.clear();
    match ip {
        IpAddr::V4(a) => {
            for (i, o) in a.octets().into_iter().enumerate() {
                if i > 0 {
                    buf.push_byte(b'.');
                }
                if o >= 100 {
                    buf.push_byte(b'0' + o / 100);
                }
                if o >= 10 {
                    buf.push_byte(b'0' + o / 10 % 10);
                }
                buf.push_byte(b'0' + o % 10);
            }
        }
        IpAddr::V6(_) => buf.push_ip(ip),
    }
    buf.as_bytes()
}

impl Write for Small {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let end = self.len + s.len();
        if end > self.buf.len() {
            return Err(fmt::Error);
        }
        self.buf[self.len..end].copy_from_slice(s.as_bytes());
        self.len = end;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    #[test]
    fn byte_columns_match_small() {
        let mut buf = [0; 24];
        for v in [0, 7, 10, 999, 65_535, 4_294_967_295, u64::MAX] {
            let mut s = Small::new();
            s.push_u64(v);
            assert_eq!(decimal(v, &mut buf), s.as_bytes());
        }
        for ns in [
            0,
            499,
            500,
            31_245,
            999_499,
            999_500,
            12_345_678_901,
            u64::MAX,
        ] {
            let mut s = Small::new();
            s.push_ms(ns);
            assert_eq!(millis(ns, &mut buf), s.as_bytes());
        }
        let mut field = Small::new();
        for ip in [
            "0.0.0.0",
            "127.0.0.1",
            "10.20.30.255",
            "::1",
            "2001:db8::ff00:42:8329",
        ] {
            let ip: IpAddr = ip.parse().unwrap();
            assert_eq!(ip_bytes(ip, &mut field), ip.to_string().as_bytes());
        }
        let mut out = Vec::new();
        left_bytes(&mut out, b"ab", 4);
        right_bytes(&mut out, b"cd", 3);
        left_bytes(&mut out, b"toolong", 2);
        assert_eq!(out, b"ab   cdtoolong");
    }

    #[test]
    fn small_formats() {
        assert_eq!(format!("{:>8}|", Ms(31_245)), "   0.031|");
        assert_eq!(format!("{}", Ms(31_500)), "0.032");
        assert_eq!(format!("{}", Ms(12_345_678_901)), "12345.679");
        assert_eq!(
            format!("{:<22}|", Endpoint(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080)),
            "127.0.0.1:8080        |"
        );
        assert_eq!(
            format!("{}", Endpoint(IpAddr::V6(Ipv6Addr::LOCALHOST), 443)),
            "[::1]:443"
        );
        assert_eq!(ms_f64(1_234_567), 1.235);
        assert_eq!(format!("{}", Ms(0)), "0.000");
        assert_eq!(format!("{}", Ms(999_499)), "0.999");
        assert_eq!(format!("{}", Ms(999_500)), "1.000");
        assert_eq!(format!("{}", Ms(u64::MAX)), "18446744073709.551");
    }

    #[test]
    fn columns() {
        let mut s = String::new();
        left(&mut s, "ab", 4).unwrap();
        right(&mut s, "cd", 4).unwrap();
        left(&mut s, "toolong", 3).unwrap();
        spaces(&mut s, 70).unwrap();
        assert_eq!(s, format!("ab    cdtoolong{}", " ".repeat(70)));
        let mut small = Small::new();
        small.push_endpoint(IpAddr::V4(Ipv4Addr::new(10, 0, 255, 1)), 0);
        assert_eq!(small.as_str(), "10.0.255.1:0");
        small.clear();
        small.push_str(&"é".repeat(40));
        assert_eq!(small.as_str().chars().count(), 32);
    }
}
