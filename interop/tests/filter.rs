//! The whole-message layer (`milterkit::filter`) behind real Postfix and real Sendmail, over TCP
//! and over a Unix socket: a filter that makes every kind of edit (a changed, a removed, a moved
//! and new header fields at the top, in the middle and at the end, one of them a header Sendmail
//! has a default for; a new sender; a recipient added and one removed; a footer) sees its edited
//! transaction delivered exactly: the header fields in order (the MTA's own `Received:` aside),
//! the body, the envelope. Needs root; the packages come from scripts/test.sh (a missing one
//! fails under CI=true and prints SKIPPED elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::{Arc, Mutex};

use interop::milter::MilterServer;
use interop::{Mta, Rig, Running, Sink, Transport, DELIVERY_TIMEOUT};
use milterkit::filter::{Filter, Filtered, Options, Transaction};
use milterkit::{Actions, Decision, Result};

const FOOTER: &str = "-- \r\nfiltered by milterkit\r\n";

/// What the filter left: the header fields in order and the body, as they must arrive.
#[derive(Debug, Default, Clone)]
struct Edited {
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

/// Makes every edit, and keeps what the transaction looked like after them.
struct EveryEdit(Arc<Mutex<Option<Edited>>>);

impl Filter for EveryEdit {
    // Every edit but quarantine (Postfix would hold the message instead of delivering it).
    const ACTIONS: Actions =
        Actions::CURRENT.difference(Actions::QUARANTINE.union(Actions::SET_SYMLIST));

    async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
        let subject = tx.header("Subject").expect("a subject").text();
        tx.set_header("Subject", format!("[filtered] {subject}"))?;
        assert_eq!(tx.remove_header("X-Remove-Me")?, 1);
        tx.insert_header(0, "X-Top", "first")?;
        let to = tx
            .headers()
            .iter()
            .position(|f| f.name() == "To")
            .expect("a To");
        tx.insert_header(to + 1, "X-Middle", "after To")?;
        // A header Sendmail has a default for, moved to the end: its ADDHEADER would be ignored.
        tx.remove_header("Date")?;
        tx.add_header("Date", "Tue, 1 Dec 2026 12:00:00 +0000")?;
        tx.add_header("X-Added", "folded\n\tsecond line")?;
        tx.set_sender("<bounce@example.org>")?;
        tx.add_rcpt("<carol@example.net>")?;
        assert_eq!(tx.remove_rcpt("<bob@example.net>")?, 1);
        tx.append_body(FOOTER)?;
        let headers = tx
            .headers()
            .iter()
            .map(|f| {
                let value = f.value().to_string_lossy().replace('\n', "\r\n");
                (f.name().to_string_lossy().into_owned(), value)
            })
            .collect();
        let mut body = tx.body().to_bytes()?.to_vec();
        body.extend_from_slice(FOOTER.as_bytes());
        *self.0.lock().unwrap() = Some(Edited { headers, body });
        Ok(Decision::Continue)
    }
}

fn message() -> Vec<u8> {
    format!(
        "{}X-Remove-Me: please\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=us-ascii\r\n\
         \r\n\
         Hello from the filter test.\r\n\
         .a line that starts with a dot\r\n",
        interop::message_head("Whole message", "filter-every-edit")
    )
    .into_bytes()
}

fn every_edit(mta: Mta, transport: Transport, (): ()) {
    if !interop::require(interop::tools_of(mta)) {
        return;
    }
    let edited = Arc::new(Mutex::new(None));
    let seen = edited.clone();
    let milter = Filtered::new(EveryEdit(seen), Options::default());
    let sink = Sink::start().unwrap();
    let server = MilterServer::serving(transport, move || milter.clone()).unwrap();
    let running = Running::start(mta, &server, sink.port()).unwrap();
    let rig = Rig {
        mta: running,
        milter: server,
        sink,
    };
    let sent = interop::send(
        rig.port(),
        "alice@example.org",
        &["bob@example.net"],
        &message(),
    )
    .expect("SMTP dialogue");
    assert!(sent.accepted(), "{sent:?}");
    let got = rig.sink.wait_for(1, DELIVERY_TIMEOUT).unwrap().remove(0);
    let want = edited.lock().unwrap().clone().expect("the filter ran");
    assert_eq!(got.sender(), "bounce@example.org");
    assert_eq!(got.recipients(), ["carol@example.net"]);
    let delivered: Vec<(String, String)> = got
        .headers()
        .into_iter()
        .filter(|(name, _)| !name.eq_ignore_ascii_case("Received"))
        .collect();
    assert_eq!(
        delivered,
        want.headers,
        "{mta:?} {transport:?}\n{}",
        got.text()
    );
    assert_eq!(
        String::from_utf8_lossy(got.body()),
        String::from_utf8_lossy(&want.body)
    );
    // The MTA's own Received: stays below the field inserted on top.
    assert_eq!(got.header_names()[0], "X-Top", "{}", got.text());
    assert_eq!(got.header_names()[1], "Received", "{}", got.text());
}

interop::tests_on_each_mta_and_transport! {
    every_edit: every_edit_is_delivered_as_the_filter_left_it => (),
}
