//! `--engine`: the user-space pipeline alone, on a synthetic recording, on one core.
//!
//! The recording looks like the storm traced: each connection is a client socket and the
//! server socket accepted for it, both on this host, with the kernel's ten transitions in the
//! kernel's order, connections overlapping in time and socket addresses reused after close the
//! way the slab allocator reuses them. The pipeline is the one a live trace and a replay run.
//!
//! Needs the `engine` feature (xtask then links the tcpstate library, whose build needs the
//! eBPF toolchain that `cargo xtask setup` installs); `bench::run` re-runs xtask with it.

#[cfg(not(feature = "engine"))]
pub fn run(_connections: usize) -> anyhow::Result<()> {
    anyhow::bail!("the engine benchmark needs xtask built with `--features engine`")
}

#[cfg(feature = "engine")]
pub use imp::run;

#[cfg(feature = "engine")]
mod imp {
    use std::{
        io::{self, Write},
        time::Instant,
    };

    use anyhow::{bail, Result};
    use serde_json::json;
    use tcpstate::{
        event::Event,
        input::Input,
        pipeline::{Format, Mode, OutputConfig, Pipeline},
    };
    use tcpstate_common::{owner_source, state, AF_INET};

    use crate::bench::measure;

    /// A new connection every 25 µs: the storm's 40k connections per second.
    const CONNECTION_EVERY_NS: u64 = 25_000;
    /// A tick of the clock every 10 ms of event time, as a live trace sends while draining.
    const TICK_EVERY_NS: u64 = 10_000_000;
    const LISTEN_PORTS: u16 = 8;
    const SOURCES: u8 = 32;

    /// The ten transitions of one storm connection: (offset ns, server side?, old, new).
    const SCRIPT: [(u64, bool, u8, u8); 10] = [
        (0, false, state::CLOSE, state::SYN_SENT),
        (15_000, false, state::SYN_SENT, state::ESTABLISHED),
        (20_000, true, state::LISTEN, state::SYN_RECV),
        (21_000, true, state::SYN_RECV, state::ESTABLISHED),
        (40_000, false, state::ESTABLISHED, state::FIN_WAIT1),
        (45_000, true, state::ESTABLISHED, state::CLOSE_WAIT),
        (47_000, false, state::FIN_WAIT1, state::FIN_WAIT2),
        (60_000, true, state::CLOSE_WAIT, state::LAST_ACK),
        (65_000, false, state::FIN_WAIT2, state::CLOSE),
        (67_000, true, state::LAST_ACK, state::CLOSE),
    ];

    /// Counts what the pipeline writes, and throws it away.
    #[derive(Default)]
    struct CountingSink {
        bytes: u64,
    }

    impl Write for CountingSink {
        fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
            self.bytes += buf.len() as u64;
            Ok(buf.len())
        }

        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    /// Kernel-like socket addresses: freed ones are reused, most recently freed first.
    struct Addresses {
        free: Vec<u64>,
        next: u64,
    }

    impl Addresses {
        fn new() -> Addresses {
            Addresses {
                free: Vec::new(),
                next: 0xffff_8881_0000_0000,
            }
        }

        fn take(&mut self) -> u64 {
            self.free.pop().unwrap_or_else(|| {
                self.next += 0x980;
                self.next
            })
        }

        fn give_back(&mut self, addr: u64) {
            self.free.push(addr);
        }
    }

    struct Tuple {
        client_ip: [u8; 4],
        client_port: u16,
        server_port: u16,
    }

    fn tuple(i: u64) -> Tuple {
        Tuple {
            client_ip: [127, 0, 0, 2 + (i % SOURCES as u64) as u8],
            client_port: 32768 + (i % 28_000) as u16,
            server_port: 40_000 + (i % LISTEN_PORTS as u64) as u16,
        }
    }

    fn event(ts_ns: u64, skaddr: u64, server: bool, old: u8, new: u8, t: &Tuple) -> Event {
        let mut e = Event::zeroed();
        e.ts_ns = ts_ns;
        e.skaddr = skaddr;
        e.oldstate = old;
        e.newstate = new;
        e.family = AF_INET;
        let (pid, comm): (u32, &[u8]) = if server {
            (2000, b"server")
        } else {
            (1000, b"client")
        };
        e.ctx_pid = pid;
        e.ctx_tid = pid;
        e.ctx_comm[..comm.len()].copy_from_slice(comm);
        e.owner_pid = pid;
        e.owner_tid = pid;
        e.owner_comm = e.ctx_comm;
        let server_ip = [127, 0, 0, 1];
        if server {
            e.owner_source = owner_source::LISTENER;
            e.sport = t.server_port;
            e.dport = t.client_port;
            e.saddr[..4].copy_from_slice(&server_ip);
            e.daddr[..4].copy_from_slice(&t.client_ip);
        } else {
            e.owner_source = owner_source::SYSCALL;
            // The kernel picks the client's port after CLOSE -> SYN_SENT.
            e.sport = if old == state::CLOSE {
                0
            } else {
                t.client_port
            };
            e.dport = t.server_port;
            e.saddr[..4].copy_from_slice(&t.client_ip);
            e.daddr[..4].copy_from_slice(&server_ip);
        }
        e
    }

    /// The recording: `connections` storm connections, in timestamp order, with ticks.
    fn recording(connections: u64) -> Vec<Input> {
        let mut events: Vec<Event> = Vec::with_capacity(connections as usize * SCRIPT.len());
        let mut addrs = Addresses::new();
        // Sockets still open, by the time they close, so their addresses are reused only after.
        let mut closing: std::collections::VecDeque<(u64, u64)> = Default::default();
        for i in 0..connections {
            let start = 1_000_000_000 + i * CONNECTION_EVERY_NS;
            while closing.front().is_some_and(|&(at, _)| at <= start) {
                if let Some((_, addr)) = closing.pop_front() {
                    addrs.give_back(addr);
                }
            }
            let t = tuple(i);
            let (client, server) = (addrs.take(), addrs.take());
            for &(offset, is_server, old, new) in &SCRIPT {
                let skaddr = if is_server { server } else { client };
                events.push(event(start + offset, skaddr, is_server, old, new, &t));
            }
            let end = start + SCRIPT[SCRIPT.len() - 1].0;
            closing.push_back((end, client));
            closing.push_back((end, server));
        }
        // Connections overlap: merge them into one time-ordered stream.
        events.sort_by_key(|e| e.ts_ns);
        let mut inputs = Vec::with_capacity(events.len() + events.len() / 100);
        let mut next_tick = events.first().map_or(0, |e| e.ts_ns) + TICK_EVERY_NS;
        for e in events {
            while e.ts_ns >= next_tick {
                inputs.push(Input::Tick { now_ns: next_tick });
                next_tick += TICK_EVERY_NS;
            }
            inputs.push(Input::Event(e));
        }
        inputs
    }

    struct Throughput {
        name: &'static str,
        transitions: u64,
        wall_s: f64,
        cpu_s: f64,
        output_bytes: u64,
        records: u64,
    }

    fn thread_cpu_s() -> f64 {
        let mut ts = libc::timespec {
            tv_sec: 0,
            tv_nsec: 0,
        };
        // SAFETY: `ts` is valid for writes.
        unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
        ts.tv_sec as f64 + ts.tv_nsec as f64 * 1e-9
    }

    fn throughput(name: &'static str, cfg: OutputConfig, inputs: &[Input]) -> Result<Throughput> {
        let mut pipeline = Pipeline::new(cfg);
        let mut sink = CountingSink::default();
        let transitions = inputs
            .iter()
            .filter(|i| matches!(i, Input::Event(_)))
            .count() as u64;
        let (wall0, cpu0) = (Instant::now(), thread_cpu_s());
        for input in inputs {
            pipeline.push(input, &mut sink)?;
        }
        pipeline.finish(&mut sink)?;
        let (wall_s, cpu_s) = (wall0.elapsed().as_secs_f64(), thread_cpu_s() - cpu0);
        Ok(Throughput {
            name,
            transitions,
            wall_s,
            cpu_s,
            output_bytes: sink.bytes,
            records: pipeline.records(),
        })
    }

    struct Memory {
        connections: u64,
        rss_growth_bytes: u64,
        engine_bytes_per_connection: usize,
    }

    /// RSS growth while `connections` connections are open (client CLOSE -> SYN_SENT ->
    /// ESTABLISHED, never closed). Measured before anything else allocates, so freed memory
    /// of other work cannot hide the growth.
    fn memory(connections: u64) -> Result<Memory> {
        let cfg = OutputConfig {
            max_tracked: connections as usize + 1,
            ..OutputConfig::default()
        };
        let mut pipeline = Pipeline::new(cfg);
        let mut sink = CountingSink::default();
        let mut addrs = Addresses::new();
        let before = measure::vm_rss_kib("self")?;
        let mut last_ts = 0;
        for i in 0..connections {
            let start = 1_000_000_000 + i * CONNECTION_EVERY_NS;
            let (t, skaddr) = (tuple(i), addrs.take());
            for (offset, old, new) in [
                (0, state::CLOSE, state::SYN_SENT),
                (15_000, state::SYN_SENT, state::ESTABLISHED),
            ] {
                let e = event(start + offset, skaddr, false, old, new, &t);
                pipeline.push(&Input::Event(e), &mut sink)?;
            }
            last_ts = start + 15_000;
        }
        // Moves everything out of the reorder window into the table.
        pipeline.push(
            &Input::Tick {
                now_ns: last_ts + 1_000_000_000,
            },
            &mut sink,
        )?;
        let after = measure::vm_rss_kib("self")?;
        let open = pipeline.engine().open_count() as u64;
        if open != connections {
            bail!("the engine tracks {open} connections, expected {connections}");
        }
        Ok(Memory {
            connections,
            rss_growth_bytes: after.saturating_sub(before) * 1024,
            engine_bytes_per_connection: pipeline.engine().bytes_per_connection(),
        })
    }

    pub fn run(connections: usize) -> Result<()> {
        if connections == 0 {
            bail!("--engine-connections must be at least 1");
        }
        let connections = connections as u64;
        let mem = memory(connections)?;
        eprintln!(
            "bench: generating {} transitions ({connections} connections)",
            connections * SCRIPT.len() as u64
        );
        let inputs = recording(connections);
        let runs = [
            ("tcpstate trace", OutputConfig::default()),
            (
                "tcpstate trace --transitions --output json",
                OutputConfig {
                    mode: Mode::Transitions,
                    format: Format::Json,
                    ..OutputConfig::default()
                },
            ),
        ];
        let mut results = Vec::new();
        for (name, cfg) in runs {
            // The first pass warms caches and the allocator; the second is measured.
            throughput(name, cfg, &inputs)?;
            results.push(throughput(name, cfg, &inputs)?);
        }

        println!();
        println!(
            "engine alone, one core, {} transitions:",
            results[0].transitions
        );
        println!(
            "{:<44} {:>14} {:>10} {:>12} {:>10}",
            "pipeline", "transitions/s", "ns/event", "bytes out", "records"
        );
        for r in &results {
            println!(
                "{:<44} {:>14.0} {:>10.0} {:>12} {:>10}",
                r.name,
                r.transitions as f64 / r.cpu_s,
                r.cpu_s * 1e9 / r.transitions as f64,
                r.output_bytes,
                r.records
            );
        }
        let per_conn = mem.rss_growth_bytes as f64 / mem.connections as f64;
        println!(
            "memory: {per_conn:.0} bytes of RSS per open connection ({} open; the engine's own \
             count: {} bytes)",
            mem.connections, mem.engine_bytes_per_connection
        );
        println!();
        let line = json!({
            "bench": "engine",
            "connections": connections,
            "runs": results.iter().map(|r| json!({
                "pipeline": r.name,
                "transitions": r.transitions,
                "transitions_per_s": r.transitions as f64 / r.cpu_s,
                "cpu_s": r.cpu_s,
                "wall_s": r.wall_s,
                "output_bytes": r.output_bytes,
                "records": r.records,
            })).collect::<Vec<_>>(),
            "open_connections": mem.connections,
            "rss_bytes_per_connection": per_conn,
            "engine_bytes_per_connection": mem.engine_bytes_per_connection,
        });
        println!("{line}");
        Ok(())
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn recording_is_ordered_and_complete() {
            let inputs = recording(1000);
            let events: Vec<&Event> = inputs
                .iter()
                .filter_map(|i| match i {
                    Input::Event(e) => Some(e),
                    _ => None,
                })
                .collect();
            assert_eq!(events.len(), 10_000);
            assert!(events.windows(2).all(|w| w[0].ts_ns <= w[1].ts_ns));
            // Addresses are reused, but never while their socket is still open.
            let mut open = std::collections::HashSet::new();
            for e in &events {
                if tcpstate::event::starts_lifetime(e) {
                    assert!(open.insert(e.skaddr), "address reused while open");
                } else if tcpstate::event::ends_lifetime(e) {
                    assert!(open.remove(&e.skaddr));
                }
            }
            assert!(open.is_empty());
        }

        #[test]
        fn pipeline_sees_every_connection() {
            let inputs = recording(500);
            let r = throughput("t", OutputConfig::default(), &inputs).expect("pipeline runs");
            assert_eq!(r.transitions, 5000);
            assert!(r.output_bytes > 0);
            // Both ends of each connection are on this host; the pipeline prints each
            // connection once or each end once, never nothing.
            assert!(r.records >= 500, "records {}", r.records);
        }
    }
}
