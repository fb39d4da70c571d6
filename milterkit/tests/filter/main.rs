//! The whole-message layer (`milterkit::filter`) through the in-process harness, as Postfix and as
//! Sendmail: every edit, every decision point, the limits and the spool.
#![cfg(feature = "filter")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod edits;
mod points;

use milterkit::filter::{Filter, Filtered, Options, Transaction};
use milterkit::mta::{Outcome, Transaction as Message};
use milterkit::proto::message::Mta;
use milterkit::testing::Harness;
use milterkit::{Actions, Decision, Result};

/// Every action an edit can need: all of version 6 but SETSYMLIST.
pub const EDITS: Actions = Actions::CURRENT.difference(Actions::SET_SYMLIST);

/// A filter whose decision is a closure, allowed every edit.
#[derive(Clone)]
pub struct Script<F>(pub F);

impl<F> Filter for Script<F>
where
    F: Fn(&mut Transaction<'_>) -> Result<Decision> + Send + Sync + 'static,
{
    const ACTIONS: Actions = EDITS;

    async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
        (self.0)(tx)
    }
}

/// The sample message: repeated and trace headers, a short body.
pub const MESSAGE: &str = "From: Alice <alice@outside.example>\r\n\
    To: bob@example.org\r\n\
    Subject: Hello\r\n\
    X-Dup: one\r\n\
    X-Dup: two\r\n\
    Received: from relay.example\r\n\
    \r\n\
    Hello Bob\r\n";

/// The sample transaction: client, HELO, sender with SIZE, two recipients, [`MESSAGE`].
pub fn message() -> Message {
    Message::new()
        .client(
            Some("client.example"),
            Some("192.0.2.7".parse().unwrap()),
            4711,
        )
        .helo("client.example")
        .from_with_args("<alice@outside.example>", ["SIZE=100"])
        .to("<bob@example.org>")
        .to("<carol@example.org>")
        .message(MESSAGE)
}

/// Runs `filter` with `options` on `message` as `mta` would, strictly.
pub async fn run<F: Filter>(filter: F, options: Options, mta: Mta, message: &Message) -> Outcome {
    let milter = Filtered::new(filter, options);
    let mut h = match mta {
        Mta::Postfix => Harness::postfix(milter),
        Mta::Sendmail => Harness::sendmail(milter),
    };
    h.run(message).await.expect("the harness runs")
}

/// Runs a future on a fresh current-thread runtime.
pub fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}
