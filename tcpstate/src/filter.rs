//! The user's filters, parsed and turned into what the kernel program's maps hold.
//!
//! Filtering happens in the kernel so that filtered-out events never reach the ring buffer; this
//! module only validates the user's words and lays them out for the maps.

use std::{
    collections::BTreeMap,
    fmt,
    net::{IpAddr, Ipv4Addr, Ipv6Addr},
    str::FromStr,
};

use tcpstate_common::{filter_flags, port_bits, Filter, ADDRS_MAX, PIDS_MAX, TASK_COMM_LEN};

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    #[error("invalid port {0:?}: expected a number 1-65535 or a range like 8000-8010")]
    Port(String),
    #[error("invalid pid {0:?}: expected a positive number")]
    Pid(String),
    #[error("invalid address {0:?}: expected an IP address or CIDR like 10.0.0.0/8 or fd00::/8")]
    Cidr(String),
    #[error(
        "invalid command name {0:?}: expected 1-{max} bytes (the kernel's comm length)",
        max = TASK_COMM_LEN - 1
    )]
    Comm(String),
    #[error("too many {what}: at most {max}")]
    TooMany { what: &'static str, max: u32 },
}

/// A CIDR block; IPv4 is kept as IPv4-mapped IPv6 so one trie serves both families.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cidr {
    pub addr: [u8; 16],
    /// Prefix length over the 128-bit mapped address.
    pub prefix: u32,
}

impl FromStr for Cidr {
    type Err = FilterError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FilterError::Cidr(s.to_string());
        let (ip, len) = match s.split_once('/') {
            Some((ip, len)) => (ip, Some(len.parse::<u32>().map_err(|_| err())?)),
            None => (s, None),
        };
        let ip: IpAddr = ip.trim_matches(['[', ']']).parse().map_err(|_| err())?;
        let (addr, prefix) = match ip {
            IpAddr::V4(v4) => {
                let len = len.unwrap_or(32);
                if len > 32 {
                    return Err(err());
                }
                (v4.to_ipv6_mapped().octets(), 96 + len)
            }
            IpAddr::V6(v6) => {
                let len = len.unwrap_or(128);
                if len > 128 {
                    return Err(err());
                }
                (v6.octets(), len)
            }
        };
        Ok(Cidr {
            addr: mask(addr, prefix),
            prefix,
        })
    }
}

fn mask(mut addr: [u8; 16], prefix: u32) -> [u8; 16] {
    for (i, byte) in addr.iter_mut().enumerate() {
        let bits = prefix.saturating_sub(i as u32 * 8).min(8);
        *byte &= (0xffu16 << (8 - bits)) as u8;
    }
    addr
}

impl Cidr {
    /// Whether an address (as the kernel stores it for `family`) lies in this block.
    pub fn contains(&self, ip: IpAddr) -> bool {
        let octets = match ip {
            IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
            IpAddr::V6(v6) => v6.octets(),
        };
        mask(octets, self.prefix) == self.addr
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let v6 = Ipv6Addr::from(self.addr);
        match v6.to_ipv4_mapped() {
            Some(v4) if self.prefix >= 96 => write!(f, "{v4}/{}", self.prefix - 96),
            _ => write!(f, "{v6}/{}", self.prefix),
        }
    }
}

/// Parses `80,443,8000-8010` into ports.
pub fn parse_ports(s: &str) -> Result<Vec<u16>, FilterError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let err = || FilterError::Port(part.to_string());
        let (lo, hi) = match part.split_once('-') {
            Some((lo, hi)) => (lo.trim(), hi.trim()),
            None => (part, part),
        };
        let lo: u16 = lo.parse().map_err(|_| err())?;
        let hi: u16 = hi.parse().map_err(|_| err())?;
        if lo == 0 || hi < lo {
            return Err(err());
        }
        out.extend(lo..=hi);
    }
    if out.is_empty() {
        return Err(FilterError::Port(s.to_string()));
    }
    Ok(out)
}

/// Parses `123,456` into pids.
pub fn parse_pids(s: &str) -> Result<Vec<u32>, FilterError> {
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.parse::<u32>() {
            Ok(p) if p > 0 => out.push(p),
            _ => return Err(FilterError::Pid(part.to_string())),
        }
    }
    if out.is_empty() {
        return Err(FilterError::Pid(s.to_string()));
    }
    Ok(out)
}

/// `-4` / `-6`, decided in the kernel by what a socket carries rather than by its family
/// alone: an AF_INET6 socket whose remote address is v4-mapped (an IPv4 client accepted by a
/// dual-stack listener) is IPv4. A socket without a remote address (a listener) is judged by
/// its local one; bound to `::` it may accept both families (the record does not say whether
/// IPV6_V6ONLY is set), so both keep it.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Family {
    #[default]
    Any,
    V4,
    V6,
}

/// Everything the user asked to keep. Empty lists mean "no filter".
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FilterSpec {
    pub pids: Vec<u32>,
    pub comm: Option<String>,
    pub lports: Vec<u16>,
    pub rports: Vec<u16>,
    /// Either end.
    pub ports: Vec<u16>,
    /// Remote address in any of these.
    pub addrs: Vec<Cidr>,
    pub family: Family,
    /// Only owners in this cgroup v2 group or below it.
    pub cgroup: Option<CgroupTarget>,
    /// Only sockets in this network namespace (inode).
    pub netns: Option<u32>,
}

/// A cgroup v2 group to filter on: its id, its level (the root is 0) and its path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CgroupTarget {
    pub id: u64,
    pub level: u32,
    pub path: String,
}

/// What the kernel needs: the global filter and the contents of its lookup maps.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelFilter {
    pub filter: Filter,
    pub pids: Vec<u32>,
    /// Port -> `port_bits`.
    pub ports: BTreeMap<u16, u8>,
    pub addrs: Vec<Cidr>,
}

impl FilterSpec {
    pub fn is_empty(&self) -> bool {
        *self == FilterSpec::default()
    }

    pub fn to_kernel(&self) -> Result<KernelFilter, FilterError> {
        let mut k = KernelFilter::default();
        if !self.pids.is_empty() {
            if self.pids.len() > PIDS_MAX as usize {
                return Err(FilterError::TooMany {
                    what: "pids",
                    max: PIDS_MAX,
                });
            }
            k.filter.flags |= filter_flags::PID;
            k.pids = self.pids.clone();
        }
        if let Some(comm) = &self.comm {
            let bytes = comm.as_bytes();
            if bytes.is_empty() || bytes.len() >= TASK_COMM_LEN || bytes.contains(&0) {
                return Err(FilterError::Comm(comm.clone()));
            }
            k.filter.flags |= filter_flags::COMM;
            k.filter.comm[..bytes.len()].copy_from_slice(bytes);
        }
        for (list, bit, flag) in [
            (&self.lports, port_bits::LOCAL, filter_flags::LPORT),
            (&self.rports, port_bits::REMOTE, filter_flags::RPORT),
            (&self.ports, port_bits::EITHER, filter_flags::PORT),
        ] {
            if !list.is_empty() {
                k.filter.flags |= flag;
                for &p in list {
                    *k.ports.entry(p).or_insert(0) |= bit;
                }
            }
        }
        if !self.addrs.is_empty() {
            if self.addrs.len() > ADDRS_MAX as usize {
                return Err(FilterError::TooMany {
                    what: "addresses",
                    max: ADDRS_MAX,
                });
            }
            k.filter.flags |= filter_flags::ADDR;
            k.addrs = self.addrs.clone();
        }
        if let Some(c) = &self.cgroup {
            k.filter.flags |= filter_flags::CGROUP;
            k.filter.cgroup_id = c.id;
            k.filter.cgroup_level = c.level;
        }
        if let Some(n) = self.netns {
            k.filter.flags |= filter_flags::NETNS;
            k.filter.netns = n;
        }
        match self.family {
            Family::Any => {}
            Family::V4 => k.filter.flags |= filter_flags::IPV4_ONLY,
            Family::V6 => k.filter.flags |= filter_flags::IPV6_ONLY,
        }
        Ok(k)
    }
}

/// Loopback in both families, for tests and messages.
pub fn is_loopback(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(v4) => v4.is_loopback(),
        IpAddr::V6(v6) => {
            v6.is_loopback()
                || v6
                    .to_ipv4_mapped()
                    .is_some_and(|v4: Ipv4Addr| v4.is_loopback())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_and_ranges() {
        assert_eq!(parse_ports("80,443").unwrap(), vec![80, 443]);
        assert_eq!(parse_ports("8000-8002").unwrap(), vec![8000, 8001, 8002]);
        for bad in ["0", "65536", "x", "9-8", "", ","] {
            assert!(parse_ports(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pids("1,22").unwrap(), vec![1, 22]);
        assert!(parse_pids("0").is_err());
        assert!(parse_pids("-3").is_err());
    }

    #[test]
    fn cidrs() {
        let c: Cidr = "10.1.2.3/8".parse().unwrap();
        assert_eq!(c.to_string(), "10.0.0.0/8");
        assert!(c.contains("10.200.0.1".parse().unwrap()));
        assert!(!c.contains("11.0.0.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let h: Cidr = "127.0.0.1".parse().unwrap();
        assert_eq!(h.prefix, 128);
        let v6: Cidr = "fd00::/8".parse().unwrap();
        assert!(v6.contains("fd12::1".parse().unwrap()));
        assert!(!v6.contains("fe80::1".parse().unwrap()));
        assert_eq!(v6.to_string(), "fd00::/8");
        // An IPv4 peer on an IPv6 socket (v4-mapped) is in the IPv4 block, as in the kernel's
        // trie.
        let net: Cidr = "198.18.0.0/24".parse().unwrap();
        assert!(net.contains("::ffff:198.18.0.2".parse().unwrap()));
        assert!(!net.contains("::ffff:198.19.0.2".parse().unwrap()));
        assert!(!net.contains("c612::2".parse().unwrap()));
        for bad in ["10.0.0.0/33", "::/129", "nope", "1.2.3.4/x"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn kernel_layout() {
        let spec = FilterSpec {
            lports: vec![80],
            rports: vec![80, 443],
            comm: Some("nginx".into()),
            family: Family::V6,
            ..Default::default()
        };
        let k = spec.to_kernel().unwrap();
        assert_eq!(
            k.filter.flags,
            filter_flags::LPORT
                | filter_flags::RPORT
                | filter_flags::COMM
                | filter_flags::IPV6_ONLY
        );
        assert_eq!(k.ports[&80], port_bits::LOCAL | port_bits::REMOTE);
        assert_eq!(k.ports[&443], port_bits::REMOTE);
        assert_eq!(&k.filter.comm[..6], b"nginx\0");
        assert!(FilterSpec::default().to_kernel().unwrap().filter.flags == 0);
    }

    #[test]
    fn comm_length_is_checked() {
        let spec = FilterSpec {
            comm: Some("a-very-long-name-indeed".into()),
            ..Default::default()
        };
        assert!(matches!(spec.to_kernel(), Err(FilterError::Comm(_))));
    }
}
