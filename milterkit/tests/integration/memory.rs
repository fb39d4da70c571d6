//! What a connection costs in memory: a handler's future is stored once in the connection's
//! future (which every connection holds, idle or not), not once per wrapper around it.

use milterkit::{Decision, Milter, Rcpt, Result};

/// No handlers: the connection's own state only.
#[derive(Default)]
struct Small;

impl Milter for Small {
    type Message = ();
}

/// A RCPT handler whose future holds 4,000 bytes across an await.
#[derive(Default)]
struct Big;

impl Milter for Big {
    type Message = ();
    async fn rcpt(&mut self, _: &mut (), _: Rcpt<'_>) -> Result<Decision> {
        let buf = [1u8; 4000];
        tokio::task::yield_now().await;
        Ok(if buf.iter().all(|&b| b == 1) {
            Decision::Continue
        } else {
            Decision::Reject
        })
    }
}

#[test]
fn a_handler_future_is_stored_once_in_the_connection_future() {
    let config = milterkit::Config::default();
    let (small_io, _a) = tokio::io::duplex(16);
    let (big_io, _b) = tokio::io::duplex(16);
    let small = milterkit::serve_connection(small_io, Small, &config);
    let big = milterkit::serve_connection(big_io, Big, &config);
    let (small, big) = (std::mem::size_of_val(&small), std::mem::size_of_val(&big));
    println!("connection future: {small} bytes; with a 4,000-byte handler future: {big} bytes");
    assert!(
        big - small < 4000 + 512,
        "the handler's future is stored more than once: {small} -> {big} bytes"
    );
    assert!(small < 3000, "the connection future grew: {small} bytes");
}
