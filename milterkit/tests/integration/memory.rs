//! What a connection costs in memory: a connection waiting for its MTA holds its session and its
//! milter, not the futures of its handlers (the command loop, with them, is on the heap only while
//! a message is open or a command is being answered).

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
fn an_idle_connection_does_not_hold_its_handlers_futures() {
    let config = milterkit::Config::default();
    let (small_io, _a) = tokio::io::duplex(16);
    let (big_io, _b) = tokio::io::duplex(16);
    let small = milterkit::serve_connection(small_io, Small, &config);
    let big = milterkit::serve_connection(big_io, Big, &config);
    let (small, big) = (std::mem::size_of_val(&small), std::mem::size_of_val(&big));
    println!("connection future: {small} bytes; with a 4,000-byte handler future: {big} bytes");
    assert_eq!(
        big, small,
        "the handler's future is part of the connection's: {small} -> {big} bytes"
    );
}

/// What an idle connection keeps (in its task, beside tokio's own 176 bytes of task header and
/// the stream's registration): the connection's future, of which the session is the largest part.
/// 2,240 bytes before the command loop moved to the heap, 1,208 before it was made only while a
/// message is open and the session, its macros and the dispatcher were compacted (issue #18:
/// 3,135 -> 1,455 bytes per idle negotiated connection on one thread, `bench/idle.py`). A task of
/// 128-byte-aligned size: with this future (the benchmark milter's is 712 bytes), 896 bytes.
#[test]
fn the_idle_state_is_compact() {
    let config = milterkit::Config::default();
    let (io, _mta) = tokio::io::duplex(16);
    let connection = std::mem::size_of_val(&milterkit::serve_connection(io, Small, &config));
    let session = std::mem::size_of::<milterkit_proto::MilterSession>();
    let macros = std::mem::size_of::<milterkit_proto::Macros>();
    println!("connection future {connection}, session {session}, macros {macros} bytes");
    assert!(macros <= 80, "Macros grew: {macros} bytes");
    assert!(session <= 296, "MilterSession grew: {session} bytes");
    assert!(
        connection <= 720,
        "the connection future grew: {connection} bytes"
    );
}
