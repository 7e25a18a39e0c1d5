//! tcpstate: what TCP really does on a host, traced with eBPF.
//!
//! The pure logic (decoding, timelines, filters, formatting, statistics, recordings) lives in
//! modules that need neither aya nor root and builds with `--no-default-features`; `kernel` is
//! the thin kernel boundary and `live` the trace that drives it.

pub mod attribution;
pub mod cgroup;
pub mod cli;
pub(crate) mod clock;
// Pure, so its tests run in the core build too; only the live trace (kernel feature) uses it.
#[cfg_attr(not(feature = "kernel"), allow(dead_code))]
pub(crate) mod drain;
pub mod event;
#[cfg(feature = "kernel")]
pub mod exporter;
pub mod facts;
pub mod filter;
pub mod input;
#[cfg(feature = "kernel")]
pub mod kernel;
pub mod listeners;
#[cfg(feature = "kernel")]
pub mod live;
// Pure, so its tests (and the dashboard check) run in the core build too; only the exporter
// (kernel feature) feeds it.
pub(crate) mod le;
#[cfg_attr(not(feature = "kernel"), allow(dead_code))]
pub mod metrics;
pub(crate) mod output;
pub mod pipeline;
pub mod record;
pub mod replay;
pub(crate) mod report;
pub(crate) mod stats;
pub(crate) mod timeline;
pub mod top;
pub mod tpformat;
