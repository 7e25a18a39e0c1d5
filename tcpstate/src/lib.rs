//! tcpstate: what TCP really does on a host, traced with eBPF.
//!
//! The pure logic (decoding, timelines, filters, formatting, statistics, recordings) lives in
//! modules that need neither aya nor root; `probe` is the thin kernel boundary.

pub mod event;
pub mod input;
pub mod tpformat;
