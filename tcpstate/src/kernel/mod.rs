//! The kernel boundary, and the only part of tcpstate that needs aya and root: checks of the
//! host, the start-up scan of /proc, loading and attaching the eBPF program, turning filters
//! into maps, and reading its ring buffer and counters. Everything else is pure and builds
//! without the `kernel` feature.

pub mod btf;
pub(crate) mod environment;
pub mod facts;
pub mod probe;
pub mod procscan;
