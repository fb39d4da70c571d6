//! Every edit of a `Transaction`, delivered as Postfix and as Sendmail would deliver it.

use std::io::Cursor;

use milterkit::filter::mail_parser::MimeHeaders;
use milterkit::filter::{Address, Filter, Options, Transaction};
use milterkit::mta::Verdict;
use milterkit::proto::message::Mta;
use milterkit::proto::{Envelope, MisuseError};
use milterkit::{Actions, Decision, Error, Modification, Result};

use super::{block_on, message, run, Script, MESSAGE};

const HEADERS: [&str; 6] = [
    "From: Alice <alice@outside.example>",
    "To: bob@example.org",
    "Subject: Hello",
    "X-Dup: one",
    "X-Dup: two",
    "Received: from relay.example",
];

type Edit = fn(&mut Transaction<'_>) -> Result<()>;

/// The headers after an edit, as a list of lines.
fn with(f: impl FnOnce(&mut Vec<&'static str>)) -> Vec<&'static str> {
    let mut h = HEADERS.to_vec();
    f(&mut h);
    h
}

fn delivered(headers: &[&str], body: &str) -> String {
    let mut s = String::new();
    for h in headers {
        s.push_str(h);
        s.push_str("\r\n");
    }
    s.push_str("\r\n");
    s.push_str(body);
    s
}

#[test]
fn each_header_edit_is_delivered_as_made_with_the_fewest_modifications() {
    let cases: Vec<(&str, Edit, Vec<&str>, usize)> = vec![
        ("nothing", |_| Ok(()), HEADERS.to_vec(), 0),
        (
            "set an existing header",
            |tx| Ok(tx.set_header("Subject", "[ext] Hello")?),
            with(|h| h[2] = "Subject: [ext] Hello"),
            1,
        ),
        (
            "set a repeated header",
            |tx| Ok(tx.set_header("x-dup", "only")?),
            with(|h| {
                h[3] = "X-Dup: only";
                h.remove(4);
            }),
            2,
        ),
        (
            "set a missing header",
            |tx| Ok(tx.set_header("X-New", "v")?),
            with(|h| h.push("X-New: v")),
            1,
        ),
        (
            "add a header",
            |tx| Ok(tx.add_header("X-Spam", "yes\r\n\tscore=1")?),
            with(|h| h.push("X-Spam: yes\r\n\tscore=1")),
            1,
        ),
        (
            "insert on top",
            |tx| Ok(tx.insert_header(0, "X-Top", "1")?),
            with(|h| h.insert(0, "X-Top: 1")),
            1,
        ),
        (
            "insert in the middle, twice",
            |tx| {
                tx.insert_header(3, "X-Mid", "1")?;
                Ok(tx.insert_header(4, "X-Mid", "2")?)
            },
            with(|h| {
                h.insert(3, "X-Mid: 1");
                h.insert(4, "X-Mid: 2");
            }),
            2,
        ),
        (
            "remove a repeated header",
            |tx| {
                assert_eq!(tx.remove_header("X-DUP")?, 2);
                Ok(())
            },
            with(|h| {
                h.remove(4);
                h.remove(3);
            }),
            2,
        ),
        (
            "set by position",
            |tx| Ok(tx.set_header_at(1, "carol@example.org")?),
            with(|h| h[1] = "To: carol@example.org"),
            1,
        ),
        (
            "remove by position",
            |tx| Ok(tx.remove_header_at(5)?),
            with(|h| {
                h.remove(5);
            }),
            1,
        ),
        (
            "set to an empty value",
            |tx| Ok(tx.set_header_at(2, "")?),
            with(|h| h[2] = "Subject: "),
            2,
        ),
        (
            "add a header Sendmail has a default for, and a trace header",
            |tx| {
                tx.add_header("Date", "Sun, 6 Dec 2026 10:00:00 +0000")?;
                Ok(tx.add_header("Received", "by filter")?)
            },
            with(|h| {
                h.push("Date: Sun, 6 Dec 2026 10:00:00 +0000");
                h.push("Received: by filter");
            }),
            2,
        ),
        (
            "a new header edited again, then removed: nothing",
            |tx| {
                tx.add_header("X-Tmp", "1")?;
                tx.set_header("X-Tmp", "2")?;
                tx.remove_header("X-Tmp")?;
                Ok(())
            },
            HEADERS.to_vec(),
            0,
        ),
    ];
    for (name, edit, expected, count) in cases {
        for mta in [Mta::Postfix, Mta::Sendmail] {
            let filter = Script(move |tx: &mut Transaction<'_>| {
                edit(tx)?;
                Ok(Decision::Continue)
            });
            let outcome = block_on(run(filter, Options::default(), mta, &message()));
            assert_eq!(outcome.verdict, Some(Verdict::Accept), "{name} {mta:?}");
            assert_eq!(
                outcome.modifications.len(),
                count,
                "{name} {mta:?}: {:?}",
                outcome.modifications
            );
            let delivery = outcome.delivery.expect("delivered");
            assert_eq!(
                String::from_utf8_lossy(&delivery.message),
                delivered(&expected, "Hello Bob\r\n"),
                "{name} {mta:?}: {:?}",
                outcome.modifications
            );
        }
    }
}

#[test]
fn envelope_body_and_quarantine_edits_are_delivered() {
    for mta in [Mta::Postfix, Mta::Sendmail] {
        let filter = Script(|tx: &mut Transaction<'_>| {
            tx.set_sender(Address::with_args("<bounce@example.org>", ["RET=HDRS"]))?;
            tx.add_rcpt("<dave@example.org>")?;
            tx.add_rcpt(Address::with_args("<erin@example.org>", ["NOTIFY=NEVER"]))?;
            assert_eq!(tx.remove_rcpt("carol@example.org")?, 1);
            assert_eq!(tx.recipients().count(), 3);
            tx.replace_body_from(Cursor::new(b"Bye\r\n".to_vec()))?;
            assert!(tx.body_changed());
            assert_eq!(&tx.body().to_bytes()?[..], b"Hello Bob\r\n");
            tx.quarantine("held for review")?;
            Ok(Decision::Continue)
        });
        let outcome = block_on(run(filter, Options::default(), mta, &message()));
        let d = outcome.delivery.expect("delivered");
        assert_eq!(d.sender, envelope("<bounce@example.org>", &["RET=HDRS"]));
        assert_eq!(
            d.recipients,
            [
                envelope("<bob@example.org>", &[]),
                envelope("<dave@example.org>", &[]),
                envelope("<erin@example.org>", &["NOTIFY=NEVER"]),
            ]
        );
        assert_eq!(
            String::from_utf8_lossy(&d.message),
            delivered(&HEADERS, "Bye\r\n")
        );
        assert_eq!(d.quarantine.as_deref(), Some(&b"held for review"[..]));
        let kinds: Vec<&str> = outcome
            .modifications
            .iter()
            .map(Modification::name)
            .collect();
        assert_eq!(
            kinds,
            [
                "change from",
                "delete recipient",
                "add recipient",
                "add recipient with parameters",
                "quarantine",
                "replace body"
            ],
            "{mta:?}"
        );
    }
}

fn envelope(address: &str, args: &[&str]) -> Envelope {
    Envelope {
        address: address.as_bytes().to_vec().into(),
        args: args.iter().map(|a| a.as_bytes().to_vec().into()).collect(),
    }
}

#[test]
fn a_footer_appended_to_the_body_that_came_or_to_a_new_one() {
    let footer = Script(|tx: &mut Transaction<'_>| {
        tx.append_body("-- \r\nfooter\r\n")?;
        Ok(Decision::Continue)
    });
    let replaced = Script(|tx: &mut Transaction<'_>| {
        tx.replace_body(b"New\r\n".to_vec())?;
        tx.append_body("-- \r\nfooter\r\n")?;
        Ok(Decision::Continue)
    });
    for mta in [Mta::Postfix, Mta::Sendmail] {
        let outcome = block_on(run(footer.clone(), Options::default(), mta, &message()));
        let d = outcome.delivery.expect("delivered");
        assert_eq!(
            String::from_utf8_lossy(&d.message),
            delivered(&HEADERS, "Hello Bob\r\n-- \r\nfooter\r\n")
        );
        let outcome = block_on(run(replaced.clone(), Options::default(), mta, &message()));
        let d = outcome.delivery.expect("delivered");
        assert_eq!(
            String::from_utf8_lossy(&d.message),
            delivered(&HEADERS, "New\r\n-- \r\nfooter\r\n")
        );
    }
}

#[test]
fn a_body_replaced_with_nothing_is_delivered_empty() {
    let filter = Script(|tx: &mut Transaction<'_>| {
        tx.replace_body("")?;
        Ok(Decision::Continue)
    });
    let outcome = block_on(run(filter, Options::default(), Mta::Postfix, &message()));
    let d = outcome.delivery.expect("delivered");
    assert_eq!(String::from_utf8_lossy(&d.message), delivered(&HEADERS, ""));
}

/// Allowed to add headers only.
struct AddOnly;

impl Filter for AddOnly {
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
        tx.add_header("X-Ok", "1")?;
        // A header the filter added itself may be changed and removed without CHANGE_HEADER.
        tx.set_header("X-Ok", "2")?;
        let refused = [
            tx.set_header("Subject", "x").unwrap_err(),
            tx.remove_header("X-Dup").unwrap_err(),
            tx.add_rcpt("<x@example.org>").unwrap_err(),
            tx.quarantine("q").unwrap_err(),
            tx.replace_body("x").unwrap_err(),
        ];
        for e in &refused {
            assert!(matches!(e, MisuseError::NotNegotiated { .. }), "{e}");
        }
        assert_eq!(
            refused[0].to_string(),
            "set header was not negotiated (needs Actions(CHANGE_HEADER))"
        );
        let invalid = [
            tx.add_header("Bad Name", "x").unwrap_err(),
            tx.add_header("X-Nul", "a\0b").unwrap_err(),
            tx.insert_header(99, "X-Far", "x").unwrap_err(),
            tx.remove_header_at(99).unwrap_err(),
        ];
        for e in &invalid {
            assert!(matches!(e, MisuseError::Invalid { .. }), "{e}");
        }
        // Nothing refused changed the transaction.
        assert_eq!(tx.headers().len(), 7);
        tx.set_header("Subject", "x")?; // refused: the strict harness fails with it
        Ok(Decision::Continue)
    }
}

#[test]
fn a_refused_edit_is_an_error_at_the_call_and_the_strict_harness_names_it() {
    let milter = milterkit::filter::Filtered::new(AddOnly, Options::default());
    let mut h = milterkit::testing::Harness::postfix(milter);
    let err = block_on(h.run(&message())).unwrap_err();
    assert!(
        matches!(
            &err,
            Error::Misuse {
                source: MisuseError::NotNegotiated {
                    what: "set header",
                    ..
                },
                ..
            }
        ),
        "{err:?}"
    );
}

#[test]
fn headers_read_raw_and_decoded_and_the_message_parses_as_mime() {
    let raw = "From: =?UTF-8?B?SsO8cmdlbg==?= <j@example.org>\r\n\
        Subject: =?ISO-8859-1?Q?Gr=FC=DFe?= aus\r\n Berlin\r\n\
        MIME-Version: 1.0\r\n\
        Content-Type: multipart/mixed; boundary=\"b\"\r\n\
        \r\n\
        --b\r\nContent-Type: text/plain\r\n\r\nhello\r\n\
        --b\r\nContent-Type: application/pdf; name=\"a.pdf\"\r\nContent-Disposition: attachment; filename=\"a.pdf\"\r\nContent-Transfer-Encoding: base64\r\n\r\nJVBERi0=\r\n\
        --b--\r\n";
    let filter = Script(|tx: &mut Transaction<'_>| {
        let subject = tx.header("subject").expect("a subject");
        assert_eq!(subject.value(), "=?ISO-8859-1?Q?Gr=FC=DFe?= aus\n Berlin");
        assert_eq!(subject.text(), "Grüße aus Berlin");
        assert_eq!(tx.headers()[0].text(), "Jürgen <j@example.org>");
        let mime = tx.mime()?.expect("parses");
        assert_eq!(mime.body_text(0).as_deref(), Some("hello"));
        let names: Vec<_> = mime
            .attachments()
            .filter_map(|a| a.attachment_name())
            .collect();
        assert_eq!(names, ["a.pdf"]);
        assert_eq!(mime.attachments().next().unwrap().contents(), b"%PDF-");
        Ok(Decision::Accept)
    });
    let msg = message().message(raw);
    let outcome = block_on(run(filter, Options::default(), Mta::Postfix, &msg));
    assert_eq!(outcome.verdict, Some(Verdict::Accept));
    assert!(outcome.modifications.is_empty());
}

#[test]
fn the_original_message_is_delivered_byte_for_byte_when_nothing_changes() {
    let filter = Script(|tx: &mut Transaction<'_>| {
        assert_eq!(tx.headers().len(), 6);
        assert_eq!(tx.client().helo().unwrap(), "client.example");
        assert_eq!(tx.client().port(), 4711);
        assert_eq!(tx.sender().unwrap().args(), ["SIZE=100"]);
        assert!(tx.agreement().actions.contains(Actions::CHANGE_BODY));
        Ok(Decision::Continue)
    });
    let postfix = Script(|tx: &mut Transaction<'_>| {
        assert_eq!(tx.mta(), Mta::Postfix);
        assert_eq!(tx.mta_version().unwrap(), "Postfix 3.7.11");
        assert_eq!(tx.queue_id().unwrap(), "4ABC123");
        Ok(Decision::Continue)
    });
    let m = message().with_macro(milterkit::Stage::Eom, "i", "4ABC123");
    let outcome = block_on(run(postfix, Options::default(), Mta::Postfix, &m));
    assert_eq!(outcome.verdict, Some(Verdict::Accept));
    for mta in [Mta::Postfix, Mta::Sendmail] {
        let outcome = block_on(run(filter.clone(), Options::default(), mta, &message()));
        assert!(outcome.modifications.is_empty());
        assert_eq!(outcome.delivery.unwrap().message, MESSAGE.as_bytes());
    }
}
