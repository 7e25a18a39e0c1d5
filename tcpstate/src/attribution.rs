//! Owner attribution in user space: who owns each socket, for the events the kernel left
//! `owner_source::DEFERRED`.
//!
//! When no owner filter is active the kernel program keeps no owner table (its hash-map work
//! was a fifth of its time per event): it fills the owner where the event itself says who it
//! is (the owner's own system call, a child of a known listener) and this table remembers it
//! for the socket's later events, the way the kernel's table does otherwise. The rules are the
//! kernel's (`attribute` in tcpstate-ebpf): remembered from the socket's last owner event,
//! else from the start-up scan of /proc by 4-tuple, else unknown; forgotten at CLOSE, and
//! replaced when a new socket is born at a reused address.
//!
//! It must see every event of a socket in the order the socket changed state: the ring buffer
//! delivers them so (each change reserves its slot under the socket's lock), and events lost
//! to a full buffer are counted; a lost birth event can leave a reused address with its
//! previous socket's owner until that socket's next system call.

use std::collections::HashMap;

use tcpstate_common::{owner_source, state, Event, Owner, TupleKey, OWNERS_MAX, TASK_COMM_LEN};

/// What is remembered of a socket's owner.
#[derive(Debug, Clone, Copy)]
struct Known {
    pid: u32,
    tid: u32,
    comm: [u8; TASK_COMM_LEN],
    cgroup_id: u64,
}

type Fast = foldhash::fast::FixedState;

#[derive(Debug)]
pub struct Attributor {
    owners: HashMap<u64, Known, Fast>,
    preexisting: HashMap<TupleKey, Known, Fast>,
    max: usize,
    /// Owners not remembered because the table was full (the kernel's `owner_update_failed`).
    failed: u64,
}

impl Default for Attributor {
    fn default() -> Self {
        Attributor::with_capacity(OWNERS_MAX as usize)
    }
}

impl Attributor {
    /// A table of at most `max` sockets: like the kernel's, a full table leaves a new socket's
    /// owner unknown (counted), never wrong.
    pub fn with_capacity(max: usize) -> Attributor {
        Attributor {
            owners: HashMap::default(),
            preexisting: HashMap::default(),
            max,
            failed: 0,
        }
    }

    /// Connections found by a scan of /proc; an earlier entry for the same 4-tuple stays.
    pub fn add_preexisting<'a>(&mut self, conns: impl IntoIterator<Item = &'a (TupleKey, Owner)>) {
        for (key, o) in conns {
            self.preexisting.entry(*key).or_insert(Known {
                pid: o.pid,
                tid: o.tid,
                comm: o.comm,
                cgroup_id: o.cgroup_id,
            });
        }
    }

    /// Owner updates lost to a full table so far.
    pub fn failed(&self) -> u64 {
        self.failed
    }

    /// Fills in the owner of an event the kernel left to user space, and keeps the table up to
    /// date with every event (the others already carry their owner or none).
    pub fn apply(&mut self, ev: &mut Event) {
        match ev.owner_source {
            owner_source::DEFERRED => self.look_up(ev),
            owner_source::SYSCALL | owner_source::LISTENER => {
                let k = Known {
                    pid: ev.owner_pid,
                    tid: ev.owner_tid,
                    comm: ev.owner_comm,
                    cgroup_id: ev.cgroup_id,
                };
                self.remember(ev, k);
            }
            _ => {
                if ev.oldstate == state::LISTEN && ev.newstate == state::SYN_RECV {
                    // A new socket at this address, of a listener nobody is known to own.
                    self.owners.remove(&ev.skaddr);
                }
            }
        }
        if ev.newstate == state::CLOSE {
            // The socket's life is over; its address may be reused by an unrelated socket.
            self.owners.remove(&ev.skaddr);
        }
    }

    fn look_up(&mut self, ev: &mut Event) {
        if let Some(&k) = self.owners.get(&ev.skaddr) {
            fill(ev, k, owner_source::REMEMBERED);
            return;
        }
        let key = TupleKey {
            family: u16::from(ev.family),
            sport: ev.sport,
            dport: ev.dport,
            _pad: 0,
            saddr: ev.saddr,
            daddr: ev.daddr,
        };
        match self.preexisting.get(&key).copied() {
            Some(k) => {
                fill(ev, k, owner_source::PROC_SCAN);
                self.remember(ev, k);
            }
            None => {
                ev.owner_source = owner_source::UNKNOWN;
            }
        }
    }

    fn remember(&mut self, ev: &Event, k: Known) {
        if ev.newstate == state::CLOSE {
            return;
        }
        if let Some(slot) = self.owners.get_mut(&ev.skaddr) {
            *slot = k;
        } else if self.owners.len() < self.max {
            self.owners.insert(ev.skaddr, k);
        } else {
            self.failed += 1;
        }
    }
}

fn fill(ev: &mut Event, k: Known, source: u8) {
    ev.owner_pid = k.pid;
    ev.owner_tid = k.tid;
    ev.owner_comm = k.comm;
    ev.cgroup_id = k.cgroup_id;
    ev.owner_source = source;
}

#[cfg(test)]
mod tests {
    use super::*;
    use tcpstate_common::AF_INET;

    /// An IPv4 loopback event of socket `skaddr` whose owner (as the kernel filled it) is `pid`
    /// with cgroup `10 * pid`, from `source`.
    fn ev(skaddr: u64, old: u8, new: u8, source: u8, pid: u32) -> Event {
        let mut e = crate::event::tests::ev(0, skaddr, old, new, 1000, 2000);
        e.owner_source = source;
        e.owner_pid = pid;
        e.owner_tid = pid;
        e.cgroup_id = u64::from(pid) * 10;
        e
    }

    fn run(a: &mut Attributor, mut e: Event) -> (u8, u32, u64) {
        a.apply(&mut e);
        (e.owner_source, e.owner_pid, e.cgroup_id)
    }

    use owner_source::{DEFERRED, LISTENER, PROC_SCAN, REMEMBERED, SYSCALL, UNKNOWN};
    use state::*;

    #[test]
    fn a_client_is_remembered_from_its_connect_until_close() {
        let mut a = Attributor::default();
        assert_eq!(
            run(&mut a, ev(1, CLOSE, SYN_SENT, SYSCALL, 7)),
            (SYSCALL, 7, 70)
        );
        assert_eq!(
            run(&mut a, ev(1, SYN_SENT, ESTABLISHED, DEFERRED, 0)),
            (REMEMBERED, 7, 70)
        );
        // Another process closes it (an inherited descriptor): it is the owner from now on.
        assert_eq!(
            run(&mut a, ev(1, ESTABLISHED, FIN_WAIT1, SYSCALL, 8)),
            (SYSCALL, 8, 80)
        );
        assert_eq!(
            run(&mut a, ev(1, FIN_WAIT1, FIN_WAIT2, DEFERRED, 0)),
            (REMEMBERED, 8, 80)
        );
        assert_eq!(
            run(&mut a, ev(1, FIN_WAIT2, CLOSE, DEFERRED, 0)),
            (REMEMBERED, 8, 80)
        );
        // The address is free again: a later socket there is not known.
        assert_eq!(
            run(&mut a, ev(1, SYN_SENT, CLOSE, DEFERRED, 0)),
            (UNKNOWN, 0, 0)
        );
        assert!(a.owners.is_empty());
    }

    #[test]
    fn an_accepted_socket_keeps_its_listeners_owner_and_a_reused_address_forgets() {
        let mut a = Attributor::default();
        assert_eq!(
            run(&mut a, ev(2, LISTEN, SYN_RECV, LISTENER, 5)),
            (LISTENER, 5, 50)
        );
        assert_eq!(
            run(&mut a, ev(2, SYN_RECV, ESTABLISHED, DEFERRED, 0)),
            (REMEMBERED, 5, 50)
        );
        // Its CLOSE was lost (a full ring buffer); a child of an unowned listener reuses the
        // address: the old owner must not stick to it.
        assert_eq!(
            run(&mut a, ev(2, LISTEN, SYN_RECV, UNKNOWN, 0)),
            (UNKNOWN, 0, 0)
        );
        assert_eq!(
            run(&mut a, ev(2, SYN_RECV, ESTABLISHED, DEFERRED, 0)),
            (UNKNOWN, 0, 0)
        );
    }

    #[test]
    fn sockets_older_than_the_trace_are_found_by_their_tuple_once() {
        let mut a = Attributor::default();
        let e = ev(3, ESTABLISHED, FIN_WAIT1, DEFERRED, 0);
        let key = TupleKey {
            family: u16::from(AF_INET),
            sport: 1000,
            dport: 2000,
            _pad: 0,
            saddr: e.saddr,
            daddr: e.daddr,
        };
        let owner = Owner {
            pid: 9,
            tid: 9,
            comm: *b"old\0\0\0\0\0\0\0\0\0\0\0\0\0",
            cgroup_id: 90,
            netns: 0,
            flags: 0,
        };
        a.add_preexisting(&[(key, owner)]);
        assert_eq!(run(&mut a, e), (PROC_SCAN, 9, 90));
        let mut next = e;
        next.oldstate = FIN_WAIT1;
        next.newstate = FIN_WAIT2;
        assert_eq!(run(&mut a, next), (REMEMBERED, 9, 90));
    }

    #[test]
    fn a_full_table_leaves_new_owners_unknown_and_counts_them() {
        let mut a = Attributor::with_capacity(1);
        run(&mut a, ev(1, CLOSE, SYN_SENT, SYSCALL, 7));
        run(&mut a, ev(2, CLOSE, SYN_SENT, SYSCALL, 8));
        assert_eq!(a.failed(), 1);
        assert_eq!(
            run(&mut a, ev(2, SYN_SENT, ESTABLISHED, DEFERRED, 0)),
            (UNKNOWN, 0, 0)
        );
        assert_eq!(
            run(&mut a, ev(1, SYN_SENT, ESTABLISHED, DEFERRED, 0)),
            (REMEMBERED, 7, 70)
        );
    }

    #[test]
    fn a_listener_closing_is_not_remembered() {
        let mut a = Attributor::default();
        run(&mut a, ev(4, CLOSE, LISTEN, SYSCALL, 3));
        assert_eq!(a.owners.len(), 1);
        run(&mut a, ev(4, LISTEN, CLOSE, SYSCALL, 3));
        assert!(a.owners.is_empty());
    }
}
