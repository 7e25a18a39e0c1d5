//! tcpstate: what TCP really does on a host, traced with eBPF.
//!
//! The pure logic (decoding, timelines, filters, formatting, statistics, recordings) lives in
//! modules that need neither aya nor root; `probe` is the thin kernel boundary.

pub mod cli;
pub mod clock;
pub mod environment;
pub mod event;
pub mod filter;
pub mod input;
pub mod live;
pub mod output;
pub mod pipeline;
pub mod probe;
pub mod procscan;
pub mod record;
pub mod replay;
pub mod report;
pub mod stats;
pub mod timeline;
pub mod tpformat;
