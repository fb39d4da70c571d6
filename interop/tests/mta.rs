//! A milterkit milter behind real Postfix and real Sendmail, each over TCP and over a Unix
//! socket: every scenario runs in all four setups (`postfix_tcp::…`, `postfix_unix::…`,
//! `sendmail_tcp::…`, `sendmail_unix::…`). Each test starts its own sink, milter and MTA on free
//! ports, so the tests run in parallel. Needs root; the packages come from scripts/test.sh (a
//! missing one fails under CI=true and prints SKIPPED elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeSet;

use interop::milter::{
    large_body, ADDED_HEADER, ADDED_RCPT, ADDED_RCPT_ARGS, CHANGED_SUBJECT, DELETED_HEADER,
    NEW_SENDER, REJECT_TEXT, SMALL_BODY, STAMP_HEADER,
};
use interop::{Action, Message, Mta, Rig, Session, SmtpResult, Transport};
use interop::{DELIVERY_TIMEOUT, QUIET_PERIOD};

const FROM: &str = "alice@example.org";
const BOB: &str = "bob@example.net";

/// A message with every header the MTAs would otherwise add themselves (Date, Message-ID), a
/// header for the milter to delete, the control header when `actions` is not empty, and a body
/// with a line that needs dot-stuffing.
fn message(subject: &str, actions: &str) -> Vec<u8> {
    let control = if actions.is_empty() {
        String::new()
    } else {
        format!("X-Test: {actions}\r\n")
    };
    format!(
        "{}{control}\
         {DELETED_HEADER}: please delete me\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Hello from the interop test.\r\n\
         .a line that starts with a dot\r\n\
         \r\n\
         Bye.\r\n",
        interop::message_head(subject, &subject.replace(' ', "-"))
    )
    .into_bytes()
}

fn body_of(message: &[u8]) -> &[u8] {
    let i = message
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("a message has a header block");
    &message[i + 4..]
}

/// Starts the rig for one test, or `None` when it is skipped.
fn rig(mta: Mta, transport: Transport) -> Option<Rig> {
    Rig::start(mta, transport).unwrap_or_else(|e| panic!("cannot start {mta:?}: {e}"))
}

fn run(mta: Mta, transport: Transport, scenario: fn(&Rig)) {
    if let Some(rig) = rig(mta, transport) {
        scenario(&rig);
    }
}

fn send(rig: &Rig, rcpts: &[&str], message: &[u8]) -> SmtpResult {
    interop::send(rig.port(), FROM, rcpts, message).expect("SMTP dialogue")
}

fn delivered(rig: &Rig, n: usize) -> Vec<Message> {
    let messages = rig.sink.wait_for(n, DELIVERY_TIMEOUT).unwrap();
    // Give a stray extra delivery the chance to show up.
    let all = rig.sink.settle(std::time::Duration::from_millis(300));
    assert_eq!(all.len(), messages.len(), "more deliveries than expected");
    messages
}

fn the_one(rig: &Rig) -> Message {
    delivered(rig, 1).remove(0)
}

fn recipients(messages: &[Message]) -> BTreeSet<String> {
    messages
        .iter()
        .flat_map(|m| m.recipients())
        .map(str::to_owned)
        .collect()
}

// ---- the scenarios ----

/// (a) Accept, no action: the message arrives byte for byte, below the MTA's Received header.
fn accept_untouched(rig: &Rig) {
    let sent = message("accept untouched", "");
    let r = send(rig, &[BOB], &sent);
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    assert_eq!(m.sender(), FROM);
    assert_eq!(m.recipients(), [BOB]);
    assert_eq!(
        m.header_names().iter().filter(|n| *n == "Received").count(),
        1,
        "one Received header, the MTA's"
    );
    assert_eq!(
        String::from_utf8_lossy(&m.without_leading_received()),
        String::from_utf8_lossy(&sent)
    );
    let seen = rig.milter.journal().seen();
    assert_eq!(seen.len(), 1, "the milter saw the message");
    let names: Vec<&str> = seen[0]
        .headers
        .iter()
        .map(|(n, _)| n.as_str())
        .filter(|n| *n != "Received")
        .collect();
    assert_eq!(
        names,
        [
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            DELETED_HEADER,
            "MIME-Version",
            "Content-Type"
        ]
    );
    assert_eq!(seen[0].body_len, body_of(&sent).len());
}

/// (b) Add, change and delete a header in one end of message.
fn header_changes(rig: &Rig) {
    let sent = message("header changes", "add-header change-header delete-header");
    let r = send(rig, &[BOB], &sent);
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    let names = m.header_names();
    assert_eq!(
        names.last().map(String::as_str),
        Some(ADDED_HEADER.0),
        "added at the end: {names:?}"
    );
    assert_eq!(m.header_values(ADDED_HEADER.0), [ADDED_HEADER.1]);
    assert_eq!(m.header_values("Subject"), [CHANGED_SUBJECT]);
    assert!(m.header(DELETED_HEADER).is_none(), "{}", m.text());
    assert_eq!(
        m.header("X-Test").as_deref(),
        Some("add-header change-header delete-header")
    );
    assert_eq!(m.body(), body_of(&sent));
}

/// (c) Add a recipient with NOTIFY=NEVER and delete another.
fn recipient_changes(rig: &Rig) {
    let sent = message("recipient changes", "add-rcpt delete-rcpt");
    let r = send(rig, &[BOB, "delete-me@example.net"], &sent);
    assert!(r.accepted(), "{r}");
    let added = ADDED_RCPT.trim_matches(['<', '>']);
    let messages = interop::util::poll(DELIVERY_TIMEOUT, || {
        let all = rig.sink.messages();
        recipients(&all).contains(added).then_some(all)
    })
    .unwrap_or_else(|| panic!("{added} never arrived: {:#?}", rig.sink.messages()));
    let messages = {
        let later = rig.sink.settle(std::time::Duration::from_millis(300));
        assert!(later.len() >= messages.len());
        later
    };
    assert_eq!(
        recipients(&messages),
        BTreeSet::from([BOB.to_owned(), added.to_owned()]),
        "{messages:#?}"
    );
    let params = messages.iter().find_map(|m| m.rcpt_params(added)).unwrap();
    assert!(params.contains(&ADDED_RCPT_ARGS), "{params:?}");
    for m in &messages {
        assert_eq!(m.body(), body_of(&sent));
    }
}

/// (d) Change the sender with RET and ENVID parameters.
fn sender_change(rig: &Rig) {
    let sent = message("sender change", "change-from");
    let r = send(rig, &[BOB], &sent);
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    assert_eq!(
        m.sender(),
        NEW_SENDER.trim_matches(['<', '>']),
        "{}",
        m.mail
    );
    let params = m.mail_params();
    assert!(params.contains(&"RET=HDRS"), "{}", m.mail);
    assert!(params.contains(&"ENVID=milterkit-interop"), "{}", m.mail);
    assert_eq!(m.recipients(), [BOB]);
}

/// (e) Replace the body with a small one.
fn small_body(rig: &Rig) {
    let sent = message("small body", "replace-body");
    let r = send(rig, &[BOB], &sent);
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    assert_eq!(String::from_utf8_lossy(m.body()), SMALL_BODY);
    assert_eq!(m.header("Subject").as_deref(), Some("small body"));
}

/// (e) Replace the body with one larger than a milter packet (two REPLBODY chunks).
fn large_body_replacement(rig: &Rig) {
    let sent = message("large body", "replace-body-large");
    let r = send(rig, &[BOB], &sent);
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    let want = large_body();
    assert_eq!(m.body().len(), want.len());
    assert!(m.body() == want.as_slice(), "the large body differs");
}

/// (f) Refuse one recipient of two at RCPT with a custom reply; the other gets the message.
fn rcpt_reject(rig: &Rig) {
    let rejected = "reject-me@example.net";
    let sent = message("rcpt reject", "");
    let r = send(rig, &[BOB, rejected], &sent);
    assert_eq!(r.rcpts[0].code, 250, "{r}");
    assert_eq!(r.rcpts[1].code, 550, "{r}");
    let want = match rig.mta.kind() {
        Mta::Postfix => format!("5.7.1 {REJECT_TEXT}"),
        // Sendmail puts the address after the codes of a custom reply at RCPT.
        Mta::Sendmail => format!("5.7.1 <{rejected}>... {REJECT_TEXT}"),
    };
    assert_eq!(r.rcpts[1].text(), want, "{r}");
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    assert_eq!(m.recipients(), [BOB]);
    assert_eq!(rig.milter.journal().seen()[0].rcpts, [format!("<{BOB}>")]);
}

/// (g) Tempfail at end of message: the client sees 4xx, nothing is delivered.
fn eom_tempfail(rig: &Rig) {
    let sent = message("tempfail", "tempfail");
    let r = send(rig, &[BOB], &sent);
    let end = r
        .end
        .as_ref()
        .unwrap_or_else(|| panic!("no reply to the dot: {r}"));
    assert_eq!(end.code, 451, "{r}");
    let want = match rig.mta.kind() {
        Mta::Postfix => "4.7.1 Service unavailable - try again later",
        Mta::Sendmail => "4.3.2 Please try again later",
    };
    assert_eq!(end.text(), want, "{r}");
    assert!(rig.sink.settle(QUIET_PERIOD).is_empty());
    assert_eq!(rig.milter.journal().seen()[0].actions, [Action::Tempfail]);
}

/// (h) Discard at end of message: the client sees 250, nothing is delivered.
fn eom_discard(rig: &Rig) {
    let sent = message("discard", "discard");
    let r = send(rig, &[BOB], &sent);
    assert!(r.accepted(), "{r}");
    assert!(rig.sink.settle(QUIET_PERIOD).is_empty());
    assert_eq!(rig.milter.journal().seen()[0].actions, [Action::Discard]);
}

/// A message larger than one milter packet reaches the milter whole, in 65,535-byte chunks,
/// and is delivered unchanged.
fn large_message(rig: &Rig) {
    let mut sent = message("large message", "");
    for i in 0..4000 {
        sent.extend_from_slice(format!("{i:06} {:=<70}\r\n", "").as_bytes());
    }
    let r = send(rig, &[BOB], &sent);
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    assert!(m.body() == body_of(&sent), "the delivered body differs");
    let seen = rig.milter.journal().seen();
    let body = body_of(&sent);
    assert_eq!(seen[0].body_len, body.len());
    assert_eq!(seen[0].body_chunks, body.len().div_ceil(65_535));
    assert_eq!(seen[0].body_hash, interop::milter::fnv1a(body));
}

/// (i) Two messages on one SMTP connection: both arrive, each modified, and the milter counts
/// them on one connection.
fn two_messages(rig: &Rig) {
    let mut s = Session::connect(rig.port()).unwrap();
    s.ehlo("client.test.invalid").unwrap();
    let first = s
        .send(FROM, &[BOB], &message("first of two", "stamp"))
        .unwrap();
    assert!(first.accepted(), "{first}");
    let second = s
        .send(
            FROM,
            &["carol@example.net"],
            &message("second of two", "stamp add-header"),
        )
        .unwrap();
    assert!(second.accepted(), "{second}");
    s.quit().unwrap();
    let mut messages = delivered(rig, 2);
    messages.sort_by_key(|m| m.header("Subject"));
    assert_eq!(
        messages[0].header("Subject").as_deref(),
        Some("first of two")
    );
    assert_eq!(messages[0].header_values(STAMP_HEADER), ["1"]);
    assert_eq!(messages[0].recipients(), [BOB]);
    assert!(messages[0].header(ADDED_HEADER.0).is_none());
    assert_eq!(messages[1].header_values(STAMP_HEADER), ["2"]);
    assert_eq!(messages[1].recipients(), ["carol@example.net"]);
    assert!(messages[1].header(ADDED_HEADER.0).is_some());
    let seen = rig.milter.journal().seen();
    assert_eq!(seen.len(), 2);
    assert_eq!(
        seen[0].connection, seen[1].connection,
        "one milter connection"
    );
}

interop::tests_on_each_mta_and_transport! {
    run:
    delivers_an_accepted_message_untouched => accept_untouched,
    adds_changes_and_deletes_headers => header_changes,
    adds_a_recipient_with_notify_never_and_deletes_another => recipient_changes,
    changes_the_sender_with_ret_and_envid => sender_change,
    replaces_the_body_with_a_small_one => small_body,
    replaces_the_body_with_one_larger_than_a_packet => large_body_replacement,
    rejects_one_recipient_of_two_with_a_custom_reply => rcpt_reject,
    tempfails_at_end_of_message_and_delivers_nothing => eom_tempfail,
    discards_with_250_and_delivers_nothing => eom_discard,
    passes_a_body_larger_than_a_packet_to_the_milter_whole => large_message,
    handles_two_messages_on_one_connection => two_messages,
}
