//! Does milterkit's in-process harness predict what the real MTA delivers?
//!
//! `testing::Harness::postfix` / `::sendmail` run a milter against an imitated MTA and apply its
//! modifications "as Postfix or Sendmail would" (`Outcome::delivery`). Each case here sends the
//! same message through the real MTA with the same milter and compares: the delivered message
//! (without the `Received:` the MTA wrote), the sender and the recipients (and the ESMTP arguments the
//! milter gave them). The cases lean on the quirks in the fixtures README: INSHEADER indexes,
//! duplicate headers, deletes, folding, leading spaces, recipient spelling.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::BTreeMap;
use std::time::Duration;

use interop::{Journal, Mta, Rig, TestMilter, Transport, DELIVERY_TIMEOUT};
use milterkit::mta::{Outcome, Transaction, Verdict};
use milterkit::testing::Harness;

const FROM: &str = "alice@example.org";

/// A message with two `X-Dup` headers and a folded one, for the index cases.
fn message(actions: &str) -> Vec<u8> {
    format!(
        "From: Alice <alice@example.org>\r\n\
         To: Bob <bob@example.net>\r\n\
         Subject: prediction\r\n\
         X-Dup: one\r\n\
         Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
         X-Dup: two\r\n\
         Message-ID: <prediction@example.org>\r\n\
         X-Test: {actions}\r\n\
         X-Folded-In: part one\r\n\tpart two\r\n\
         X-Interop-Remove: please delete me\r\n\
         \r\n\
         Body line one.\r\n\
         Body line two.\r\n"
    )
    .into_bytes()
}

fn unbracket(a: &[u8]) -> String {
    let a = String::from_utf8_lossy(a);
    a.trim_start_matches('<').trim_end_matches('>').to_owned()
}

/// What the harness says the MTA will deliver.
fn predict(mta: Mta, rcpts: &[&str], sent: &[u8]) -> Outcome {
    let mut tx = Transaction::new()
        .from(format!("<{FROM}>"))
        .message(sent.to_vec());
    for r in rcpts {
        tx = tx.to(format!("<{r}>"));
    }
    let milter = TestMilter::new(Journal::default(), 1);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut h = match mta {
            Mta::Postfix => Harness::postfix(milter),
            Mta::Sendmail => Harness::sendmail(milter),
        };
        h.run(&tx).await.expect("the harness runs the milter")
    })
}

fn check(mta: Mta, actions: &str, rcpts: &[&str]) {
    let sent = message(actions);
    let outcome = predict(mta, rcpts, &sent);
    assert_eq!(outcome.verdict, Some(Verdict::Accept), "{outcome:#?}");
    let want = outcome
        .delivery
        .expect("an accepted message has a delivery");
    let Some(rig) = Rig::start(mta, Transport::Unix).unwrap() else {
        return;
    };
    let r = interop::send(rig.port(), FROM, rcpts, &sent).unwrap();
    assert!(r.accepted(), "{r}");
    rig.sink.wait_for(1, DELIVERY_TIMEOUT).unwrap();
    // Recipients may come in more than one delivery; give a second one a moment.
    let got = rig.sink.settle(Duration::from_millis(300));

    // Recipients, with the arguments the milter gave them (the MTA adds its own, such as
    // Postfix's ORCPT, and may split recipients over several deliveries).
    let mut delivered: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for m in &got {
        for addr in m.recipients() {
            let params = m.rcpt_params(addr).unwrap_or_default();
            delivered.insert(
                addr.to_owned(),
                params.iter().map(|p| p.to_string()).collect(),
            );
        }
    }
    let predicted: BTreeMap<String, Vec<String>> = want
        .recipients
        .iter()
        .map(|r| {
            (
                unbracket(&r.address),
                r.args
                    .iter()
                    .map(|a| String::from_utf8_lossy(a).into_owned())
                    .collect(),
            )
        })
        .collect();
    assert_eq!(
        delivered.keys().collect::<Vec<_>>(),
        predicted.keys().collect::<Vec<_>>(),
        "recipients: delivered vs predicted"
    );
    for (addr, args) in &predicted {
        for a in args {
            assert!(
                delivered[addr].contains(a),
                "{addr}: predicted argument {a} not delivered: {:?}",
                delivered[addr]
            );
        }
    }

    for m in &got {
        assert_eq!(m.sender(), unbracket(&want.sender.address), "sender");
        for a in &want.sender.args {
            let a = String::from_utf8_lossy(a);
            assert!(m.mail_params().contains(&a.as_ref()), "{}", m.mail);
        }
        assert_eq!(
            String::from_utf8_lossy(&m.without_received_by(rig.mta.hostname())),
            String::from_utf8_lossy(&want.message),
            "delivered (left) vs predicted (right)"
        );
    }
}

/// One test per case and MTA. A case may carry an attribute for its Sendmail test only
/// (`sendmail: #[ignore = "…"]`) for a known disagreement; there is none now.
macro_rules! cases {
    ($($name:ident: $actions:expr, $rcpts:expr $(, sendmail: #[$sendmail:meta])?;)+) => {
        mod postfix {
            use super::*;
            $(
                #[test]
                fn $name() {
                    check(Mta::Postfix, $actions, $rcpts);
                }
            )+
        }

        mod sendmail {
            use super::*;
            $(
                $(#[$sendmail])?
                #[test]
                fn $name() {
                    check(Mta::Sendmail, $actions, $rcpts);
                }
            )+
        }
    };
}

const BOB: &[&str] = &["bob@example.net"];

// Real Sendmail 8.17 taught the Sendmail rules (milterkit-proto `Mta::Sendmail`) three
// things these tests found: Sendmail keeps the cf file's default headers in its header list ahead
// of the message's own (`Received`, then `Resent-Date`, `Date`, `Resent-From`, `From`,
// `Full-Name`, `Resent-Message-Id`, `Message-Id` with Debian's cf), so INSHEADER indexes 1 to 8 all
// land below `Received`; a `Received` a milter adds goes on top; and ADDHEADER of a header the cf
// defines (`Return-Path`) changes the unwritten default entry instead of adding a header.
cases! {
    predicts_an_untouched_message: "none", BOB;
    predicts_add_change_and_delete: "add-header change-header delete-header", BOB;
    predicts_recipient_changes: "add-rcpt delete-rcpt", &["bob@example.net", "delete-me@example.net"];
    predicts_a_sender_change_with_arguments: "change-from", BOB;
    predicts_a_sender_change_without_arguments: "change-from:<new@example.org>", BOB;
    predicts_a_small_body: "replace-body", BOB;
    predicts_a_large_body: "replace-body-large", BOB;
    predicts_an_empty_body: "replace-body-empty", BOB;
    predicts_insert_at_index_0: "insert-header:0", BOB;
    predicts_insert_at_index_1: "insert-header:1", BOB;
    predicts_insert_at_index_2: "insert-header:2", BOB;
    predicts_insert_at_index_3: "insert-header:3", BOB;
    predicts_insert_at_index_4: "insert-header:4", BOB;
    predicts_insert_at_index_5: "insert-header:5", BOB;
    predicts_insert_at_index_8: "insert-header:8", BOB;
    predicts_insert_at_index_9: "insert-header:9", BOB;
    predicts_insert_past_the_end: "insert-header:1000", BOB;
    predicts_a_change_of_the_second_duplicate: "change:X-Dup:2", BOB;
    predicts_deleting_the_first_duplicate_twice: "delete:X-Dup:1 delete:X-Dup:1", BOB;
    predicts_deleting_duplicates_from_the_top_down: "delete:X-Dup:1 delete:X-Dup:2", BOB;
    predicts_a_change_of_a_missing_header: "change:X-Missing:1", BOB;
    predicts_a_change_of_a_folded_header: "change:X-Folded-In:1", BOB;
    predicts_a_change_of_the_mtas_received_header: "change:Received:1", BOB;
    predicts_a_delete_of_the_mtas_received_header: "delete:Received:1", BOB;
    predicts_an_added_received_header: "add:Received", BOB;
    predicts_an_added_return_path_header: "add:Return-Path", BOB;
    predicts_a_folded_added_header: "add-folded", BOB;
    predicts_an_added_value_with_leading_spaces: "add-spaced", BOB;
    predicts_an_added_utf8_header: "add-utf8", BOB;
    predicts_a_delete_and_add_of_the_same_header: "delete:Subject:1 change:Subject:1", BOB;
    predicts_an_added_recipient_without_arguments: "add-rcpt:<carol@example.net>", BOB;
    predicts_deleting_a_recipient_spelled_in_another_case: "delete-rcpt:<BOB@example.net>", &["bob@example.net", "dave@example.net"];
    predicts_deleting_a_recipient_without_brackets: "delete-rcpt:bob@example.net", &["bob@example.net", "dave@example.net"];
}
