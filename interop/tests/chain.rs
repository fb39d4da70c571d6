//! Three milters listed directly in the MTA, the baseline a `milterkit chain` test compares
//! with: OpenDKIM signing for example.org ([`interop::OpenDkim`]), the C libmilter `refmilter`
//! ([`interop::CMilter`]) adding `X-Ref-Added` as its `X-Test-Actions` header asks, and the
//! milterkit [`interop::TestMilter`] adding `X-Interop-Added` as its `X-Test` header asks. A
//! message from alice@example.org must arrive with both added fields and a DKIM signature
//! that dkimpy verifies against the key made for the test (and that fails once the body or the
//! Subject is changed: the verifier can fail).
//!
//! For a chain test: [`Children::start`] starts the three, [`Children::in_order`] lists them
//! for an MTA (or a chain) in an [`Order`], [`send_and_receive`] sends the test message and
//! returns what the sink got, [`check_delivered`] asserts what must hold of it whoever called
//! the milters, and [`Children::saw`] tells which fields each milter saw.
//!
//! Observed with Postfix 3.7.11 and Sendmail 8.17.1.9, the same on both (asserted: [`expected`]
//! derives what each milter sees and the delivered header from the order):
//!
//! - **Each milter sees what the milters before it added, nothing of those after it.** The
//!   message content goes to one milter at a time, in list order: the first gets the headers,
//!   body and end of message, its edits are applied, then the next gets the message as edited
//!   (Sendmail's log at level 14 shows it: all `header`/`body` lines of `test`, its
//!   `insert (0): header: DKIM-Signature`, then those of `test2`, its `add: header`, then
//!   `test3`). So with OpenDKIM first, refmilter and the milterkit milter are sent
//!   `DKIM-Signature` as their first field; the milterkit milter placed before refmilter is
//!   not sent `X-Ref-Added`, and refmilter after it is sent `X-Interop-Added`; OpenDKIM last
//!   signs both added fields (its `h=` lists them, `SignHeaders` asking for them). Neither MTA
//!   sends a milter its own `Received:` field. The envelope, by contrast, goes command by
//!   command: Sendmail's log shows `mail` to `test`, `test2`, `test3`, then `rcpt` to each,
//!   and so on (a milter that asked for no such stage is skipped).
//! - **Delivered order:** `DKIM-Signature` on top, above the MTA's own `Received:` (OpenDKIM
//!   inserts it at index 0), then the fields as sent, then the added fields in the order their
//!   milters ran (`X-Ref-Added, X-Interop-Added` for refmilter before the milterkit milter,
//!   the other way round for the other order).
//! - **DKIM:** the signature verifies at the sink with OpenDKIM first or last. First, it
//!   signed neither added field, and adding unsigned fields after it does not break it; a later
//!   milter that changes a signed field (the Subject) does break it, on both MTAs
//!   (`*_dkim_first_fails_when_a_later_milter_changes_the_subject`).
//!
//! Each test starts its own three children and MTA (a few seconds each); OpenDKIM's key pair
//! is made per test with `opendkim-genkey`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use interop::milter::ADDED_HEADER;
use interop::opendkim::{Signature, CANONICALIZATION, DOMAIN, SELECTOR};
use interop::{
    CMilter, ChainServer, Message, MilterServer, MilterSocket, Mta, OpenDkim, Running, Sink, Tool,
    Transport, DELIVERY_TIMEOUT,
};

const FROM: &str = "alice@example.org";
const BOB: &str = "bob@example.net";
/// The field refmilter adds, and its value.
const REF_ADDED: (&str, &str) = ("X-Ref-Added", "added by refmilter");

/// The three child milters, each on its own TCP port of 127.0.0.1; dropped (killed, stopped)
/// with the value.
struct Children {
    /// OpenDKIM, signing `X-Ref-Added` and `X-Interop-Added` too when it sees them.
    dkim: OpenDkim,
    /// The C libmilter refmilter; its log lists every header it was sent.
    refmilter: CMilter,
    /// The milterkit TestMilter; its journal lists every header it was sent.
    kit: MilterServer,
}

/// One of the three children.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Child {
    Dkim,
    Ref,
    Kit,
}

/// An order of the three.
type Order = [Child; 3];

/// OpenDKIM last: it signs the message the other two made.
const DKIM_LAST: Order = [Child::Ref, Child::Kit, Child::Dkim];
/// OpenDKIM first: the others edit a message already signed (and the milterkit milter comes
/// before refmilter this time, so the added fields' order tells the milters' order).
const DKIM_FIRST: Order = [Child::Dkim, Child::Kit, Child::Ref];

/// The fields of [`message`], in order.
#[rustfmt::skip]
const SENT: [&str; 7] = ["From", "To", "Subject", "Date", "Message-ID", "X-Test", "X-Test-Actions"];

/// The header field names each child was sent, in the order sent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Saw {
    /// Which of the added fields OpenDKIM signed (so saw): `x-ref-added`, `x-interop-added`.
    dkim: Vec<String>,
    /// What refmilter was sent.
    refmilter: Vec<String>,
    /// What the milterkit milter was sent.
    kit: Vec<String>,
}

impl Drop for Children {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- milterkit milter journal ----\n{:#?}",
                self.kit.journal().seen()
            );
        }
    }
}

impl Children {
    /// Starts the three, once the tools they and `mta` need are there; `None` when one is
    /// missing outside CI (a loud `SKIPPED`; under CI=true a missing tool fails the test).
    fn start(mta: Mta) -> Option<Children> {
        let mut tools = interop::tools_of(mta).to_vec();
        tools.extend([Tool::Gcc, Tool::OpenDkim, Tool::Dkimpy]);
        if !interop::require(&tools) {
            return None;
        }
        Some(Children {
            dkim: OpenDkim::start_signing(&[REF_ADDED.0, ADDED_HEADER.0]).unwrap(),
            refmilter: CMilter::start("refmilter", &[]).unwrap(),
            kit: MilterServer::start(Transport::Tcp).unwrap(),
        })
    }

    /// The children in `order`, to list in an MTA ([`Running::start_milters`]) or a chain.
    fn in_order(&self, order: Order) -> Vec<&dyn MilterSocket> {
        order
            .iter()
            .map(|c| -> &dyn MilterSocket {
                match c {
                    Child::Dkim => &self.dkim,
                    Child::Ref => &self.refmilter,
                    Child::Kit => &self.kit,
                }
            })
            .collect()
    }

    /// What each child saw of the one message sent (`delivered` is that message as delivered,
    /// for OpenDKIM's `h=`).
    fn saw(&self, delivered: &Message) -> Saw {
        let signature = signature(delivered);
        let dkim = [REF_ADDED.0, ADDED_HEADER.0]
            .iter()
            .filter(|h| signature.signs(h))
            .map(|h| h.to_ascii_lowercase())
            .collect();
        let refmilter = self
            .refmilter
            .log()
            .lines()
            .filter_map(|l| {
                l.split_once(" header index=")?
                    .1
                    .split_once("name=\"")?
                    .1
                    .split_once('"')
            })
            .map(|(name, _)| name.to_owned())
            .collect();
        let seen = self.kit.journal().seen();
        assert_eq!(seen.len(), 1, "the milterkit milter saw one message");
        let kit = seen[0].headers.iter().map(|(n, _)| n.clone()).collect();
        Saw {
            dkim,
            refmilter,
            kit,
        }
    }
}

/// The test message: from Alice (example.org, so OpenDKIM signs it), asking refmilter and the
/// milterkit milter to add a field each.
fn message() -> Vec<u8> {
    message_asking("add-header")
}

/// The test message, asking the milterkit milter for the actions `words` (`X-Test`) and
/// refmilter to add its field.
fn message_asking(words: &str) -> Vec<u8> {
    format!(
        "{}X-Test: {words}\r\n\
         X-Test-Actions: addheader:{}:{}\r\n\
         \r\n\
         Hello from the chain test.\r\n\
         Second line of the body.\r\n",
        interop::message_head("Three milters", "chain-direct"),
        REF_ADDED.0,
        REF_ADDED.1
    )
    .into_bytes()
}

/// Sends `data` from Alice to Bob through the MTA on `port` and returns it as the sink got it.
fn send_and_receive(port: u16, sink: &Sink, data: &[u8]) -> Message {
    let r = interop::send(port, FROM, &[BOB], data).unwrap();
    assert!(r.accepted(), "{r}");
    sink.wait_for(1, DELIVERY_TIMEOUT).unwrap().remove(0)
}

/// The message's only `DKIM-Signature`, parsed.
fn signature(msg: &Message) -> Signature {
    let all = msg.header_values("DKIM-Signature");
    assert_eq!(all.len(), 1, "one DKIM-Signature:\n{}", msg.text());
    Signature::parse(&all[0])
}

/// `data` with its last body byte before the final CRLF changed.
fn tampered_body(data: &[u8]) -> Vec<u8> {
    let mut out = data.to_vec();
    let at = out.len() - 3;
    out[at] = if out[at] == b'X' { b'Y' } else { b'X' };
    out
}

/// What must hold of the delivered message whoever called the milters: each added field once,
/// with its value; one signature by OpenDKIM's key, for example.org, selector test, that
/// verifies, and fails once the body or the Subject is changed. Returns the signature.
fn check_delivered(msg: &Message, dkim: &OpenDkim) -> Signature {
    let text = msg.text();
    assert_eq!(
        msg.header_values(REF_ADDED.0),
        [REF_ADDED.1],
        "refmilter's field:\n{text}"
    );
    assert_eq!(
        msg.header_values(ADDED_HEADER.0),
        [ADDED_HEADER.1],
        "the milterkit milter's field:\n{text}"
    );
    let sig = signature(msg);
    assert_eq!(sig.tag("d"), Some(DOMAIN), "{text}");
    assert_eq!(sig.tag("s"), Some(SELECTOR), "{text}");
    assert_eq!(sig.tag("c"), Some(CANONICALIZATION), "{text}");
    assert!(sig.signs("From") && sig.signs("Subject"), "{text}");
    let v = dkim.verify(&msg.data).unwrap();
    assert!(v.pass, "the signature verifies:\n{}\n{text}", v.details);
    let v = dkim.verify(&tampered_body(&msg.data)).unwrap();
    assert!(!v.pass, "a changed body fails:\n{}", v.details);
    assert!(v.details.contains("body hash mismatch"), "{}", v.details);
    let changed = text.replacen("Subject: Three milters", "Subject: Three Milters", 1);
    assert_ne!(changed, text);
    let v = dkim.verify(changed.as_bytes()).unwrap();
    assert!(!v.pass, "a changed Subject fails:\n{}", v.details);
    sig
}

/// What both MTAs do with milters listed directly, in `order`: each milter is sent the
/// message as the milters before it left it (their added fields included: `DKIM-Signature` on
/// top, the others at the end) and nothing of the milters after it; neither MTA sends its own
/// `Received:`. The delivered header: OpenDKIM's `DKIM-Signature` on top, above the MTA's
/// `Received:` (OpenDKIM inserts it at index 0), then the fields sent, then the added fields in
/// the order their milters ran. Gives what each saw and the delivered header names.
fn expected(order: Order) -> (Saw, Vec<String>) {
    let (mut top, mut bottom): (Vec<&str>, Vec<&str>) = (Vec::new(), Vec::new());
    let mut saw = Saw {
        dkim: Vec::new(),
        refmilter: Vec::new(),
        kit: Vec::new(),
    };
    for child in order {
        let seen: Vec<String> = top
            .iter()
            .chain(&SENT)
            .chain(&bottom)
            .map(|s| s.to_string())
            .collect();
        match child {
            Child::Dkim => {
                saw.dkim = bottom.iter().map(|h| h.to_ascii_lowercase()).collect();
                top.insert(0, "DKIM-Signature");
            }
            Child::Ref => {
                saw.refmilter = seen;
                bottom.push(REF_ADDED.0);
            }
            Child::Kit => {
                saw.kit = seen;
                bottom.push(ADDED_HEADER.0);
            }
        }
    }
    let delivered = top
        .iter()
        .chain(&["Received"])
        .chain(&SENT)
        .chain(&bottom)
        .map(|s| s.to_string())
        .collect();
    (saw, delivered)
}

/// The three listed directly in `mta` in `order`: checks the delivery, returns what the
/// children saw and the delivered message's header names.
fn direct(mta: Mta, order: Order) -> Option<(Saw, Vec<String>)> {
    let children = Children::start(mta)?;
    let sink = Sink::start().unwrap();
    let running = Running::start_milters(mta, &children.in_order(order), sink.port()).unwrap();
    let got = send_and_receive(running.port(), &sink, &message());
    check_delivered(&got, &children.dkim);
    let saw = children.saw(&got);
    let names = got.header_names();
    eprintln!("{mta:?} {order:?}:\n  saw {saw:#?}\n  delivered {names:?}");
    Some((saw, names))
}

/// The three listed directly in `mta` in `order`, checked against [`expected`].
fn direct_three_milters(mta: Mta, order: Order) {
    let Some((saw, names)) = direct(mta, order) else {
        return;
    };
    let (want_saw, want_names) = expected(order);
    assert_eq!(saw, want_saw, "what each milter saw, {mta:?} {order:?}");
    assert_eq!(names, want_names, "the delivered header, {mta:?} {order:?}");
}

/// OpenDKIM first, then the milterkit milter changing the Subject (a field OpenDKIM signed):
/// the message arrives with the new Subject and a signature that no longer verifies, on both
/// MTAs. A signer must come after every milter that edits what it signs.
fn signature_breaks_when_a_later_milter_changes_a_signed_field(mta: Mta) {
    let Some(children) = Children::start(mta) else {
        return;
    };
    let sink = Sink::start().unwrap();
    let running = Running::start_milters(mta, &children.in_order(DKIM_FIRST), sink.port()).unwrap();
    let got = send_and_receive(
        running.port(),
        &sink,
        &message_asking("add-header change-header"),
    );
    let text = got.text();
    assert_eq!(
        got.header("Subject").as_deref(),
        Some(interop::milter::CHANGED_SUBJECT),
        "{text}"
    );
    assert!(signature(&got).signs("Subject"), "{text}");
    let v = children.dkim.verify(&got.data).unwrap();
    assert!(!v.pass, "the signature fails:\n{}\n{text}", v.details);
    // The signature is good for the message as OpenDKIM saw it.
    let original = text.replacen(interop::milter::CHANGED_SUBJECT, "Three milters", 1);
    let v = children.dkim.verify(original.as_bytes()).unwrap();
    assert!(v.pass, "with the old Subject back:\n{}", v.details);
}

// ---- The same three behind `milterkit::chain` ----

/// The chain's settings for `children` in `order`, each `[[milter]]` table with `extra` lines
/// added for the child named there (`dkim`, `ref`, `kit`).
fn chain_settings(mta: Mta, children: &Children, order: Order, extra: &[(Child, &str)]) -> String {
    let mut text = format!("mta = \"{}\"\n", format!("{mta:?}").to_lowercase());
    let sockets = children.in_order(order);
    for (child, socket) in order.iter().zip(sockets) {
        let name = match child {
            Child::Dkim => "dkim",
            Child::Ref => "ref",
            Child::Kit => "kit",
        };
        text += &format!(
            "[[milter]]\nname = \"{name}\"\nsocket = \"{}\"\n",
            socket.sendmail_spec()
        );
        for (c, lines) in extra {
            if c == child {
                text += lines;
                text += "\n";
            }
        }
    }
    text
}

/// `mta` relaying to a fresh sink, with only a chain of `children` in `order` (and `extra`
/// settings) as its milter.
fn behind_chain(
    mta: Mta,
    children: &Children,
    order: Order,
    extra: &[(Child, &str)],
) -> (ChainServer, Sink, Running) {
    let chain = ChainServer::start(&chain_settings(mta, children, order, extra)).unwrap();
    let sink = Sink::start().unwrap();
    let running = Running::start_milters(mta, &[&chain], sink.port()).unwrap();
    (chain, sink, running)
}

/// The three behind one chain in `mta`, in `order`: the same delivery, the same view for each
/// child, the same header as when listed directly ([`expected`], which the direct tests hold
/// the MTAs to).
fn chain_three_milters(mta: Mta, order: Order) {
    let Some(children) = Children::start(mta) else {
        return;
    };
    let (chain, sink, running) = behind_chain(mta, &children, order, &[]);
    let got = send_and_receive(running.port(), &sink, &message());
    check_delivered(&got, &children.dkim);
    let saw = children.saw(&got);
    let names = got.header_names();
    let (want_saw, want_names) = expected(order);
    assert_eq!(
        saw, want_saw,
        "what each milter saw behind the chain, {mta:?} {order:?}"
    );
    assert_eq!(
        names, want_names,
        "the delivered header behind the chain, {mta:?} {order:?}"
    );
    let text = chain.metrics();
    // OpenDKIM accepts at end of message; the other two continue.
    for (name, decision) in [("dkim", "accept"), ("ref", "continue"), ("kit", "continue")] {
        let line = format!(
            "milter_chain_child_decisions_total{{child=\"{name}\",stage=\"EOM\",decision=\"{decision}\",mode=\"enforce\"}} 1"
        );
        assert!(text.contains(&line), "{line} missing:\n{text}");
    }
}

/// Messages sent by four clients at once through the chain (OpenDKIM last); refmilter, with
/// fail-safe skip, is killed once a third of them are delivered. Every message is accepted and
/// delivered (none lost), signed and stamped by the milterkit milter; refmilter's field is on
/// those before the kill only; the chain counted the skips.
fn child_killed_mid_load(mta: Mta) {
    let Some(mut children) = Children::start(mta) else {
        return;
    };
    let skip = [(Child::Ref, "fail_safe = \"skip\"")];
    let (chain, sink, running) = behind_chain(mta, &children, DKIM_LAST, &skip);
    let port = running.port();
    const CLIENTS: usize = 4;
    const EACH: usize = 12;
    let total = CLIENTS * EACH;
    let accepted = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for c in 0..CLIENTS {
            let accepted = &accepted;
            s.spawn(move || {
                for n in 0..EACH {
                    let data = message_asking("add-header");
                    let id = "Message-ID: <chain-direct@example.org>";
                    let text = String::from_utf8(data).unwrap().replacen(
                        id,
                        &format!("Message-ID: <load-{c}-{n}@example.org>"),
                        1,
                    );
                    let r = interop::send(port, FROM, &[BOB], text.as_bytes()).unwrap();
                    assert!(r.accepted(), "message {c}-{n}: {r}");
                    accepted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                }
            });
        }
        sink.wait_for(total / 3, DELIVERY_TIMEOUT).unwrap();
        children.refmilter.kill();
    });
    assert_eq!(accepted.into_inner(), total);
    let got = sink.wait_for(total, DELIVERY_TIMEOUT).unwrap();
    assert_eq!(got.len(), total, "every message delivered, none lost");
    std::thread::sleep(interop::QUIET_PERIOD);
    assert_eq!(sink.messages().len(), total, "and none twice");
    let with_ref = got
        .iter()
        .filter(|m| m.header(REF_ADDED.0).is_some())
        .count();
    for m in &got {
        assert_eq!(
            m.header_values(ADDED_HEADER.0),
            [ADDED_HEADER.1],
            "{}",
            m.text()
        );
        let v = children.dkim.verify(&m.data).unwrap();
        assert!(v.pass, "{}\n{}", v.details, m.text());
    }
    assert!(
        with_ref >= total / 3 && with_ref < total,
        "refmilter's field on {with_ref} of {total}"
    );
    let text = chain.metrics();
    let skips = text
        .lines()
        .find(|l| {
            l.starts_with("milter_chain_child_fail_safe_total{child=\"ref\",fail_safe=\"skip\"}")
        })
        .and_then(|l| l.rsplit(' ').next()?.parse::<usize>().ok())
        .unwrap_or_else(|| panic!("no skips counted:\n{text}"));
    assert_eq!(
        skips,
        total - with_ref,
        "one skip per message without refmilter:\n{text}"
    );
    for other in ["kit", "dkim"] {
        let errors = format!("milter_chain_child_errors_total{{child=\"{other}\"");
        let fail_safe = format!("milter_chain_child_fail_safe_total{{child=\"{other}\"");
        assert!(
            !text.contains(&errors) && !text.contains(&fail_safe),
            "{other}:\n{text}"
        );
    }
    eprintln!("{mta:?}: {total} sent, {total} delivered, {with_ref} with refmilter, {skips} skips");
}

/// The milterkit milter in evaluation mode, asked to add its field and tempfail: the message is
/// delivered without its field, signed by OpenDKIM (which never saw that field), while its
/// verdict and modification are counted.
fn evaluated_child_changes_nothing(mta: Mta) {
    let Some(children) = Children::start(mta) else {
        return;
    };
    let evaluate = [(Child::Kit, "mode = \"evaluate\"")];
    let (chain, sink, running) = behind_chain(mta, &children, DKIM_LAST, &evaluate);
    let got = send_and_receive(
        running.port(),
        &sink,
        &message_asking("add-header tempfail"),
    );
    let text = got.text();
    assert!(got.header(ADDED_HEADER.0).is_none(), "{text}");
    assert_eq!(got.header_values(REF_ADDED.0), [REF_ADDED.1], "{text}");
    let v = children.dkim.verify(&got.data).unwrap();
    assert!(v.pass, "{}\n{text}", v.details);
    assert!(
        !signature(&got).signs(ADDED_HEADER.0),
        "OpenDKIM did not see it: {text}"
    );
    let metrics = chain.metrics();
    for line in [
        "milter_chain_child_decisions_total{child=\"kit\",stage=\"EOM\",decision=\"tempfail\",mode=\"evaluate\"} 1",
        "milter_chain_child_modifications_total{child=\"kit\",kind=\"add_header\",mode=\"evaluate\"} 1",
    ] {
        assert!(metrics.contains(line), "{line} missing:\n{metrics}");
    }
}

/// The milterkit milter stops answering at a recipient (its RCPT hangs) behind the chain, with
/// fail-safe tempfail: that recipient is deferred, and so is the message for the recipient
/// accepted before it, as when the milter is listed directly (the MTA's default action at every
/// later stage). Nothing is delivered unfiltered.
fn child_failing_at_a_recipient_defers_the_message(mta: Mta) {
    let Some(children) = Children::start(mta) else {
        return;
    };
    let timeout = [(Child::Kit, "command_timeout = \"2s\"")];
    let (chain, sink, running) = behind_chain(mta, &children, DKIM_LAST, &timeout);
    let to = [BOB, "hang@example.net"];
    let r = interop::send(running.port(), FROM, &to, &message()).unwrap();
    assert_eq!(r.rcpts[0].code, 250, "{r}");
    assert!(r.rcpts[1].is_transient(), "{r}");
    assert!(!r.accepted() && r.last().is_transient(), "{r}");
    std::thread::sleep(interop::QUIET_PERIOD);
    assert!(sink.messages().is_empty(), "nothing delivered:\n{r}");
    let text = chain.metrics();
    for line in [
        "milter_chain_child_errors_total{child=\"kit\",kind=\"timeout\"} 1",
        "milter_chain_child_fail_safe_total{child=\"kit\",fail_safe=\"tempfail\"} 1",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

/// Each case as two tests, one behind Postfix and one behind Sendmail.
macro_rules! on_both_mtas {
    ($($postfix:ident, $sendmail:ident => $case:ident($($arg:expr),*);)*) => {$(
        #[test]
        fn $postfix() {
            $case(Mta::Postfix, $($arg),*)
        }
        #[test]
        fn $sendmail() {
            $case(Mta::Sendmail, $($arg),*)
        }
    )*};
}

on_both_mtas! {
    postfix_direct_three_milters, sendmail_direct_three_milters => direct_three_milters(DKIM_LAST);
    postfix_direct_three_milters_dkim_first, sendmail_direct_three_milters_dkim_first => direct_three_milters(DKIM_FIRST);
    postfix_dkim_first_fails_when_a_later_milter_changes_the_subject, sendmail_dkim_first_fails_when_a_later_milter_changes_the_subject => signature_breaks_when_a_later_milter_changes_a_signed_field();
    postfix_chain_three_milters, sendmail_chain_three_milters => chain_three_milters(DKIM_LAST);
    postfix_chain_three_milters_dkim_first, sendmail_chain_three_milters_dkim_first => chain_three_milters(DKIM_FIRST);
    postfix_chain_child_killed_mid_load, sendmail_chain_child_killed_mid_load => child_killed_mid_load();
    postfix_chain_evaluated_child_changes_nothing, sendmail_chain_evaluated_child_changes_nothing => evaluated_child_changes_nothing();
    postfix_chain_child_failing_at_a_recipient, sendmail_chain_child_failing_at_a_recipient => child_failing_at_a_recipient_defers_the_message();
}
