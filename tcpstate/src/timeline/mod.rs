//! Per-connection timelines: the pure heart of tcpstate.
//!
//! [`Reorder`] puts events back in timestamp order, [`Engine`] follows each socket lifetime
//! from its first to its last transition and hands over finished [`Conn`]s, classified by role,
//! outcome and closer, with the time spent in each phase.

mod conn;
mod engine;
mod index;
pub(crate) mod linger;
mod reorder;
mod span;
pub(crate) mod stuck;
#[cfg(test)]
pub(crate) mod tests;
mod why;

#[cfg(test)]
pub(crate) use conn::Closer;
pub(crate) use conn::{Conn, Entry, Mark, Outcome, Phase, Role, LADDER};
pub(crate) use engine::{Engine, Step, DEFAULT_MAX_TRACKED};
pub(crate) use linger::Linger;
pub(crate) use reorder::Item;
pub(crate) use reorder::{Reorder, DEFAULT_CAPACITY, DEFAULT_WINDOW_NS};
pub(crate) use why::{errno_name, is_refused_inbound, RetxKind, Timeout};
