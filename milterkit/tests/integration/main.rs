//! Integration tests of the milter side: real sockets, in-memory streams, the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

#[path = "../support/mod.rs"]
mod support;
use support::scripted;

mod api;
mod failsafe;
mod memory;
#[cfg(feature = "metrics")]
mod metrics;
mod order;
mod profiles;
mod reuse;
mod shutdown;
mod sockets;
