//! Decoding of the kernel's events and the small conversions every output needs.

use std::{
    borrow::Cow,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
};

pub use tcpstate_common::Event;
use tcpstate_common::{state, AF_INET, EVENT_SIZE, EVENT_V1_SIZE};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// The ring buffer or a file handed over a record of the wrong size.
    #[error("event record has {got} bytes, expected {EVENT_SIZE}")]
    Size { got: usize },
}

/// Reads one event from its raw bytes (any alignment).
pub fn decode(bytes: &[u8]) -> Result<Event, DecodeError> {
    if bytes.len() != EVENT_SIZE {
        return Err(DecodeError::Size { got: bytes.len() });
    }
    // SAFETY: the length is checked, Event is repr(C) plain data valid for any bytes, and
    // read_unaligned has no alignment requirement.
    Ok(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<Event>()) })
}

/// Reads one event of a recording's format version: version 1's events lack the last two
/// fields (`netns`, `cgroup_id`), which stay 0 (unknown).
pub fn decode_version(bytes: &[u8], version: u16) -> Result<Event, DecodeError> {
    if version == 1 && bytes.len() == EVENT_V1_SIZE {
        let mut full = [0u8; EVENT_SIZE];
        full[..EVENT_V1_SIZE].copy_from_slice(bytes);
        return decode(&full);
    }
    decode(bytes)
}

/// The raw bytes of an event, as `decode` reads them.
pub fn encode(ev: &Event) -> &[u8] {
    // SAFETY: Event is repr(C) plain data without implicit padding (size asserted in common).
    unsafe { std::slice::from_raw_parts((ev as *const Event).cast::<u8>(), EVENT_SIZE) }
}

/// The kernel's name of a TCP state, without the `TCP_` prefix.
pub fn state_name(s: u8) -> &'static str {
    match s {
        state::ESTABLISHED => "ESTABLISHED",
        state::SYN_SENT => "SYN_SENT",
        state::SYN_RECV => "SYN_RECV",
        state::FIN_WAIT1 => "FIN_WAIT1",
        state::FIN_WAIT2 => "FIN_WAIT2",
        state::TIME_WAIT => "TIME_WAIT",
        state::CLOSE => "CLOSE",
        state::CLOSE_WAIT => "CLOSE_WAIT",
        state::LAST_ACK => "LAST_ACK",
        state::LISTEN => "LISTEN",
        state::CLOSING => "CLOSING",
        state::NEW_SYN_RECV => "NEW_SYN_RECV",
        _ => "UNKNOWN",
    }
}

fn addr(family: u8, raw: &[u8; 16]) -> IpAddr {
    if family == AF_INET {
        IpAddr::V4(Ipv4Addr::new(raw[0], raw[1], raw[2], raw[3]))
    } else {
        IpAddr::V6(Ipv6Addr::from(*raw))
    }
}

pub fn local_addr(ev: &Event) -> IpAddr {
    addr(ev.family, &ev.saddr)
}

pub fn remote_addr(ev: &Event) -> IpAddr {
    addr(ev.family, &ev.daddr)
}

/// A task name up to its NUL.
pub fn comm(raw: &[u8]) -> Cow<'_, str> {
    let end = raw.iter().position(|&b| b == 0).unwrap_or(raw.len());
    String::from_utf8_lossy(&raw[..end])
}

/// Whether this transition starts a new life of the socket at `skaddr`: out of CLOSE (connect,
/// listen) or a child socket born from a listener.
pub fn starts_lifetime(ev: &Event) -> bool {
    ev.oldstate == state::CLOSE || (ev.oldstate == state::LISTEN && ev.newstate == state::SYN_RECV)
}

/// Whether this transition ends the life of the socket.
pub fn ends_lifetime(ev: &Event) -> bool {
    ev.newstate == state::CLOSE
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use tcpstate_common::AF_INET6;

    pub const US: u64 = 1_000;
    pub const MS: u64 = 1_000_000;
    pub const SEC: u64 = 1_000_000_000;
    /// Socket addresses for tests: a listener, a client, and the child the listener accepts.
    pub const LISTENER: u64 = 0xffff_8880_0001_0000;
    pub const CLIENT: u64 = 0xffff_8880_0002_0000;
    pub const CHILD: u64 = 0xffff_8880_0003_0000;

    /// A test event: IPv4 127.0.0.1:sport -> 127.0.0.1:dport.
    pub fn ev(ts_ns: u64, skaddr: u64, old: u8, new: u8, sport: u16, dport: u16) -> Event {
        let mut e = Event::zeroed();
        e.ts_ns = ts_ns;
        e.skaddr = skaddr;
        e.oldstate = old;
        e.newstate = new;
        e.family = AF_INET;
        e.sport = sport;
        e.dport = dport;
        e.saddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.daddr[..4].copy_from_slice(&[127, 0, 0, 1]);
        e.owner_pid = 42;
        e.owner_tid = 42;
        e.owner_comm[..4].copy_from_slice(b"curl");
        e
    }

    #[test]
    fn roundtrip() {
        let e = ev(1, 2, state::CLOSE, state::SYN_SENT, 0, 80);
        assert_eq!(decode(encode(&e)).unwrap(), e);
        assert_eq!(decode(&[0u8; 3]), Err(DecodeError::Size { got: 3 }));
    }

    #[test]
    fn addresses() {
        let mut e = ev(1, 2, state::CLOSE, state::SYN_SENT, 0, 80);
        assert_eq!(local_addr(&e).to_string(), "127.0.0.1");
        e.family = AF_INET6;
        e.daddr = Ipv6Addr::LOCALHOST.octets();
        assert_eq!(remote_addr(&e).to_string(), "::1");
    }

    #[test]
    fn names() {
        assert_eq!(state_name(state::CLOSE_WAIT), "CLOSE_WAIT");
        assert_eq!(state_name(99), "UNKNOWN");
        assert_eq!(comm(b"nginx\0\0\0"), "nginx");
        assert_eq!(comm(b"0123456789abcdef"), "0123456789abcdef");
    }

    #[test]
    fn lifetimes() {
        assert!(starts_lifetime(&ev(
            0,
            1,
            state::CLOSE,
            state::SYN_SENT,
            0,
            1
        )));
        assert!(starts_lifetime(&ev(
            0,
            1,
            state::LISTEN,
            state::SYN_RECV,
            1,
            1
        )));
        assert!(!starts_lifetime(&ev(
            0,
            1,
            state::SYN_SENT,
            state::ESTABLISHED,
            1,
            1
        )));
        assert!(ends_lifetime(&ev(
            0,
            1,
            state::FIN_WAIT2,
            state::CLOSE,
            1,
            1
        )));
    }
}
