//! Fail-safe behind real Postfix and Sendmail, over TCP and a Unix socket: the milterkit milter
//! panics, returns an error or stalls past its deadline at a stage the `X-Test` header names
//! (`panic:header`, `error:body`, `stall:eom`, `stall:header`). milterkit answers with its
//! fail-safe decision (tempfail): the client sees 4xx after the final dot, nothing is
//! delivered, and the next message, on a NEW SMTP connection, is accepted and delivered.
//!
//! The stalls use a 2 s `Config::handler_timeout` and `Config::eom_timeout`, far below the MTAs'
//! own milter timeouts (Postfix `milter_command_timeout = 30s`, Sendmail `T=R:60s;E:5m`), so
//! the fail-safe reply, not the MTA's timeout, decides.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use interop::milter::MilterServer;
use interop::{Mta, Rig, Transport};
use interop::{DELIVERY_TIMEOUT, QUIET_PERIOD};

const FROM: &str = "alice@example.org";
const BOB: &str = "bob@example.net";
const DEADLINE: Duration = Duration::from_secs(2);

fn message(subject: &str, actions: &str) -> Vec<u8> {
    format!(
        "{}X-Test: {actions}\r\n\
         \r\n\
         Hello from the interop test.\r\n",
        interop::message_head(subject, &subject.replace(' ', "-"))
    )
    .into_bytes()
}

/// Sends a message that makes the milter fail as `word` says, checks the tempfail and that
/// nothing arrives, then sends a good message on a new connection and checks its delivery.
fn fails_safe(mta: Mta, transport: Transport, word: &str) {
    let config = milterkit::Config {
        handler_timeout: DEADLINE,
        eom_timeout: DEADLINE,
        ..MilterServer::default_config()
    };
    let Some(rig) = Rig::start_with(mta, transport, config)
        .unwrap_or_else(|e| panic!("cannot start {mta:?}: {e}"))
    else {
        return;
    };
    let started = Instant::now();
    let r = interop::send(rig.port(), FROM, &[BOB], &message("failing", word)).unwrap();
    let took = started.elapsed();
    let end = r
        .end
        .as_ref()
        .unwrap_or_else(|| panic!("no reply to the dot: {r}"));
    assert_eq!(end.code, 451, "{r}");
    let want = match mta {
        Mta::Postfix => "4.7.1 Service unavailable - try again later",
        Mta::Sendmail => "4.3.2 Please try again later",
    };
    assert_eq!(end.text(), want, "{r}");
    if word.starts_with("stall") {
        assert!(took >= DEADLINE, "answered before the deadline: {took:?}");
    }
    assert!(
        took < Duration::from_secs(20),
        "the fail-safe took {took:?}"
    );
    assert!(
        rig.sink.settle(QUIET_PERIOD).is_empty(),
        "nothing delivered"
    );

    let r = interop::send(
        rig.port(),
        FROM,
        &[BOB],
        &message("after the failure", "stamp"),
    )
    .unwrap();
    assert!(r.accepted(), "{r}");
    let delivered = rig.sink.wait_for(1, DELIVERY_TIMEOUT).unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].header("Subject").as_deref(),
        Some("after the failure")
    );
    assert!(
        delivered[0].header("X-Interop-Seq").is_some(),
        "the milter saw it"
    );
}

interop::tests_on_each_mta_and_transport! {
    fails_safe:
    tempfails_when_the_header_handler_panics_then_delivers_the_next_message => "panic:header",
    tempfails_when_the_body_handler_returns_an_error_then_delivers_the_next_message => "error:body",
    tempfails_when_end_of_message_stalls_past_its_deadline_then_delivers_the_next_message => "stall:eom",
    tempfails_when_the_header_handler_stalls_past_its_deadline_then_delivers_the_next_message => "stall:header",
}
