//! Two network namespaces joined by a point-to-point link with a known one-way delay, so TCP
//! runs over a real (non-loopback) path with RTT = 2 x delay.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr},
    time::Duration,
};

use super::{
    netns,
    relay::{Counts, Dir, DropRule, Relay, Seen},
};

pub const ADDR_A_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 1);
pub const ADDR_B_V4: Ipv4Addr = Ipv4Addr::new(198, 18, 0, 2);
pub const ADDR_A_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x7c5, 0, 0, 0, 0, 0, 1);
pub const ADDR_B_V6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x7c5, 0, 0, 0, 0, 0, 2);

#[derive(Debug, Clone)]
pub struct LinkConfig {
    /// One-way delay added to every packet, in each direction.
    pub delay: Duration,
    /// Drop the first N TCP SYNs (without ACK) going A->B: the client retransmits after ~1 s.
    pub drop_syns: u32,
    /// Drop everything going A->B (can be changed later with `set_blackhole`).
    pub blackhole: bool,
    /// Chosen segments to drop: the Nth SYN-ACK, data segment, FIN ... in a direction.
    pub drops: Vec<DropRule>,
}

impl LinkConfig {
    pub fn with_delay(delay: Duration) -> LinkConfig {
        LinkConfig {
            delay,
            drop_syns: 0,
            blackhole: false,
            drops: Vec::new(),
        }
    }
}

impl Default for LinkConfig {
    fn default() -> LinkConfig {
        LinkConfig::with_delay(Duration::from_millis(20))
    }
}

/// Deletes the namespaces it holds when dropped, also when setup fails halfway.
struct Namespaces(Vec<String>);

impl Drop for Namespaces {
    fn drop(&mut self) {
        for name in &self.0 {
            let _ = netns::del(name);
        }
    }
}

/// The link; dropping it stops the relay and deletes both namespaces.
pub struct DelayedLink {
    // Field order matters: the relay stops (and closes the TUN fds) before the namespaces go.
    relay: Relay,
    namespaces: Namespaces,
    config: LinkConfig,
}

impl DelayedLink {
    pub fn new(config: LinkConfig) -> io::Result<DelayedLink> {
        netns::remove_stale();
        let (a, b) = netns::unique_pair();
        let mut namespaces = Namespaces(Vec::with_capacity(2));
        for name in [&a, &b] {
            // A leftover of this very pid (a previous process with the same pid that died).
            if netns::exists(name) {
                let _ = netns::del(name);
            }
            netns::add(name)?;
            namespaces.0.push(name.clone());
        }
        // Each TUN device is named after its namespace, so it is unique host-wide too.
        let tun_a = netns::open_tun(&a, &a)?;
        let tun_b = netns::open_tun(&b, &b)?;
        configure(&a, ADDR_A_V4, ADDR_B_V4, ADDR_A_V6)?;
        configure(&b, ADDR_B_V4, ADDR_A_V4, ADDR_B_V6)?;
        let relay = Relay::start(
            tun_a,
            tun_b,
            config.delay,
            config.drop_syns,
            config.blackhole,
            &config.drops,
        )?;
        Ok(DelayedLink {
            relay,
            namespaces,
            config,
        })
    }

    pub fn ns_a(&self) -> &str {
        &self.namespaces.0[0]
    }

    pub fn ns_b(&self) -> &str {
        &self.namespaces.0[1]
    }

    /// The TUN device in namespace A (same name as the namespace).
    pub fn dev_a(&self) -> &str {
        self.ns_a()
    }

    pub fn dev_b(&self) -> &str {
        self.ns_b()
    }

    pub fn addr_a_v4(&self) -> Ipv4Addr {
        ADDR_A_V4
    }

    pub fn addr_b_v4(&self) -> Ipv4Addr {
        ADDR_B_V4
    }

    pub fn addr_a_v6(&self) -> Ipv6Addr {
        ADDR_A_V6
    }

    pub fn addr_b_v6(&self) -> Ipv6Addr {
        ADDR_B_V6
    }

    pub fn config(&self) -> &LinkConfig {
        &self.config
    }

    /// Round-trip time the link adds: twice the one-way delay.
    pub fn rtt(&self) -> Duration {
        self.config.delay * 2
    }

    /// Packets delivered, both directions (includes IPv6 housekeeping such as MLD reports).
    pub fn packets_relayed(&self) -> u64 {
        self.relay.packets_relayed()
    }

    pub fn packets_dropped(&self) -> u64 {
        self.relay.packets_dropped()
    }

    pub fn syns_dropped(&self) -> u32 {
        self.relay.syns_dropped()
    }

    /// Starts or stops dropping everything A->B, e.g. to make an established peer vanish.
    pub fn set_blackhole(&self, on: bool) {
        self.relay.set_blackhole(on);
    }

    /// Starts or stops dropping everything going `dir`.
    pub fn set_blackhole_dir(&self, dir: Dir, on: bool) {
        self.relay.set_blackhole_dir(dir, on);
    }

    /// The path goes dark (both directions dropped) or comes back.
    pub fn set_dark(&self, on: bool) {
        self.relay.set_blackhole_dir(Dir::AToB, on);
        self.relay.set_blackhole_dir(Dir::BToA, on);
    }

    /// Adds a drop rule while the link runs (its `nth` counts from the link's start).
    pub fn add_drop(&self, rule: DropRule) {
        self.relay.add_rule(rule);
    }

    /// TCP segments the relay saw going `dir` (delivered or dropped), and those it dropped.
    pub fn counts(&self, dir: Dir) -> Counts {
        self.relay.counts(dir)
    }

    /// Every TCP segment the relay saw (bounded log) and how many the log left out.
    pub fn log(&self) -> (Vec<Seen>, u64) {
        self.relay.log()
    }

    /// How late packets left the relay past their due time: (mean, max).
    pub fn lateness(&self) -> (Duration, Duration) {
        self.relay.lateness()
    }

    /// How many of the two relay threads run with SCHED_FIFO.
    pub fn realtime_threads(&self) -> u32 {
        self.relay.realtime_threads()
    }
}

fn configure(ns: &str, local: Ipv4Addr, peer: Ipv4Addr, local6: Ipv6Addr) -> io::Result<()> {
    // The device carries the namespace's name. nodad: the address is usable at once instead
    // of after duplicate address detection.
    let script = format!(
        "link set dev lo up\n\
         link set dev {ns} up\n\
         addr add {local} peer {peer} dev {ns}\n\
         addr add {local6}/64 dev {ns} nodad\n"
    );
    netns::ip(&["-n", ns, "-batch", "-"], Some(&script))
}
