//! Test infrastructure shared by the integration tests: network namespaces joined by a link
//! with a known delay (real, non-loopback TCP paths with RTT = 2 x delay), and the `tcppeer`
//! example program that makes connections over it.
//!
//! Use from an integration test with `mod support;`. Each test binary uses only part of this.
#![allow(dead_code, unused_imports)]

pub mod link;
pub mod netns;
pub mod peer;
pub mod relay;

pub use link::{DelayedLink, LinkConfig};
pub use netns::{enter_netns, run_in_netns};
pub use peer::{field_u64, peer_path, run_client, PeerOutput, PeerProcess};
pub use relay::mono_ns;

/// Whether the test runs as root; when not it is skipped, which fails in CI (`CI=true`).
pub use crate::skip::need_root;
