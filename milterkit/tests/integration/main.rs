//! Integration tests of the milter side: real sockets, in-memory streams, the harness.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod api;
mod failsafe;
mod memory;
#[cfg(feature = "metrics")]
mod metrics;
mod order;
mod profiles;
mod scripted;
mod shutdown;
mod sockets;
