//! More scenarios through real Postfix and Sendmail over TCP and a Unix socket, in the style of
//! `tests/mta.rs`: quarantine, custom multi-line replies at MAIL, a tempfail at RCPT for one
//! recipient of several, header values with UTF-8, folding and leading spaces (passed through
//! and added), and an inserted header. Where the MTAs differ, each test asserts each MTA's
//! behaviour and says why (`interop/SCENARIOS.md` has the table).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use interop::milter::{
    FOLDED_VALUE, MAIL_REJECT_CODE, MAIL_REJECT_ENHANCED, MAIL_REJECT_LINES, MAIL_TEMPFAIL_CODE,
    MAIL_TEMPFAIL_ENHANCED, MAIL_TEMPFAIL_LINES, QUARANTINE_REASON, SPACED_VALUE, UTF8_VALUE,
};
use interop::{Message, Mta, Rig, Running, SmtpResult, Transport};
use interop::{DELIVERY_TIMEOUT, QUIET_PERIOD};

const FROM: &str = "alice@example.org";
const BOB: &str = "bob@example.net";
const CAROL: &str = "carol@example.net";

fn message(subject: &str, actions: &str, extra_headers: &str) -> Vec<u8> {
    format!(
        "{}X-Test: {actions}\r\n\
         {extra_headers}\
         MIME-Version: 1.0\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         Hello from the interop test.\r\n",
        interop::message_head(subject, &subject.replace(' ', "-"))
    )
    .into_bytes()
}

fn run(mta: Mta, transport: Transport, scenario: fn(&Rig)) {
    if let Some(rig) =
        Rig::start(mta, transport).unwrap_or_else(|e| panic!("cannot start {mta:?}: {e}"))
    {
        scenario(&rig);
    }
}

fn send_from(rig: &Rig, from: &str, rcpts: &[&str], message: &[u8]) -> SmtpResult {
    interop::send(rig.port(), from, rcpts, message).expect("SMTP dialogue")
}

fn the_one(rig: &Rig) -> Message {
    let mut messages = rig.sink.wait_for(1, DELIVERY_TIMEOUT).unwrap();
    let all = rig.sink.settle(std::time::Duration::from_millis(300));
    assert_eq!(all.len(), 1, "more deliveries than expected");
    messages.remove(0)
}

/// Quarantine: the client sees 250, nothing is delivered, and the message waits in the MTA's
/// quarantine: Postfix's hold queue (`postqueue -p` marks it `!`), Sendmail's queue as a
/// quarantined `hf…` file with the reason in its log.
fn quarantine(rig: &Rig) {
    let r = send_from(rig, FROM, &[BOB], &message("quarantine", "quarantine", ""));
    assert!(r.accepted(), "{r}");
    assert!(
        rig.sink.settle(QUIET_PERIOD).is_empty(),
        "nothing delivered"
    );
    let log = rig.mta.log();
    match &rig.mta {
        Running::Postfix(p) => {
            assert!(log.contains("milter triggers HOLD action"), "{log}");
            let queue = p.queue().unwrap();
            let held = queue
                .lines()
                .find(|l| l.contains('!'))
                .unwrap_or_else(|| panic!("nothing on hold: {queue}"));
            assert!(held.contains(FROM), "{queue}");
        }
        Running::Sendmail(s) => {
            assert!(
                log.contains(&format!("quarantine={QUARANTINE_REASON}")),
                "{log}"
            );
            let files = s.queue_files();
            assert!(files.iter().any(|f| f.starts_with("hf")), "{files:?}");
        }
    }
}

/// Refuse the sender at MAIL with a three-line custom reply; the client sees every line.
/// Sendmail puts `<sender>... ` after the codes of the first line.
fn mail_reject_multiline(rig: &Rig) {
    let r = refused_at_mail(
        rig,
        "reject-mail@example.org",
        "mail reject",
        (MAIL_REJECT_CODE, MAIL_REJECT_ENHANCED, &MAIL_REJECT_LINES),
    );
    assert!(r.rcpts.is_empty() && r.end.is_none(), "{r}");
}

/// Tempfail the sender at MAIL with a two-line custom 4xx reply.
fn mail_tempfail_multiline(rig: &Rig) {
    refused_at_mail(
        rig,
        "tempfail-mail@example.org",
        "mail tempfail",
        (
            MAIL_TEMPFAIL_CODE,
            MAIL_TEMPFAIL_ENHANCED,
            &MAIL_TEMPFAIL_LINES,
        ),
    );
}

/// Sends a message from `from`, which the milter refuses at MAIL with the custom reply
/// `(code, enhanced, lines)`: the client sees the code and every line, nothing is delivered.
fn refused_at_mail(
    rig: &Rig,
    from: &str,
    subject: &str,
    (code, enhanced, lines): (u16, &str, &[&str]),
) -> SmtpResult {
    let r = send_from(rig, from, &[BOB], &message(subject, "", ""));
    assert_eq!(r.mail.code, code, "{r}");
    assert_eq!(r.mail.lines, want_lines(rig, enhanced, lines, from), "{r}");
    assert!(rig.sink.settle(QUIET_PERIOD).is_empty());
    r
}

fn want_lines(rig: &Rig, enhanced: &str, lines: &[&str], addr: &str) -> Vec<String> {
    lines
        .iter()
        .enumerate()
        .map(|(i, l)| match (rig.mta.kind(), i) {
            (Mta::Sendmail, 0) => format!("{enhanced} <{addr}>... {l}"),
            _ => format!("{enhanced} {l}"),
        })
        .collect()
}

/// Tempfail the second of three recipients at RCPT; the others get the message.
fn rcpt_tempfail(rig: &Rig) {
    let deferred = "tempfail-me@example.net";
    let r = send_from(
        rig,
        FROM,
        &[BOB, deferred, CAROL],
        &message("rcpt tempfail", "", ""),
    );
    let codes: Vec<u16> = r.rcpts.iter().map(|r| r.code).collect();
    assert_eq!(codes, [250, 451, 250], "{r}");
    // A plain tempfail (no custom reply): each MTA's stock text, without Sendmail's address.
    let want = match rig.mta.kind() {
        Mta::Postfix => "4.7.1 Service unavailable - try again later",
        Mta::Sendmail => "4.3.2 Please try again later",
    };
    assert_eq!(r.rcpts[1].text(), want, "{r}");
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    let mut rcpts = m.recipients();
    rcpts.sort();
    assert_eq!(rcpts, [BOB, CAROL]);
    assert_eq!(
        rig.milter.journal().seen()[0].rcpts,
        [format!("<{BOB}>"), format!("<{CAROL}>")]
    );
}

/// Header values with 8-bit UTF-8, a fold and leading spaces: passed through untouched, and
/// the same kinds added by the milter.
fn header_values(rig: &Rig) {
    let extra = "X-Utf8-In: Grüße aus Zürich, 東京\r\n\
                 X-Folded-In: first line\r\n\tsecond line\r\n\
                 X-Spaced-In:    three leading spaces\r\n";
    let sent = message("header values", "add-utf8 add-folded add-spaced", extra);
    let r = send_from(rig, FROM, &[BOB], &sent);
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    let block = String::from_utf8_lossy(m.header_block()).into_owned();
    // Passed through byte for byte.
    for line in extra.split_inclusive("\r\n") {
        assert!(block.contains(line), "{line:?} not in {block}");
    }
    assert_eq!(m.header_values("X-Interop-Utf8"), [UTF8_VALUE]);
    assert_eq!(
        m.header_values("X-Interop-Folded"),
        [FOLDED_VALUE.replace('\n', "\r\n")]
    );
    assert_eq!(m.header_values("X-Interop-Spaced"), [SPACED_VALUE]);
    // What the milter was handed (both MTAs alike, SMFIP_HDR_LEADSPC not negotiated): the value
    // without the one space after the colon, a fold as LF + the continuation's whitespace.
    let seen = &rig.milter.journal().seen()[0].headers;
    let value = |name: &str| {
        seen.iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
            .unwrap_or_else(|| panic!("{name} not seen: {seen:?}"))
    };
    assert_eq!(value("X-Utf8-In"), UTF8_VALUE);
    assert_eq!(value("X-Folded-In"), "first line\n\tsecond line");
    assert_eq!(value("X-Spaced-In"), "   three leading spaces");
}

/// Insert a header at index 1: on both MTAs it lands right below the MTA's own `Received:`
/// (Postfix counts its Received as index 0; Sendmail's hidden entries ahead of the message's
/// headers put it at the same visible place; `tests/prediction.rs` covers every index).
fn insert_header(rig: &Rig) {
    let sent = message("insert header", "insert-header:1", "");
    let r = send_from(rig, FROM, &[BOB], &sent);
    assert!(r.accepted(), "{r}");
    let m = the_one(rig);
    assert_eq!(
        m.header_names(),
        [
            "Received",
            "X-Interop-Ins-1",
            "From",
            "To",
            "Subject",
            "Date",
            "Message-ID",
            "X-Test",
            "MIME-Version",
            "Content-Type"
        ]
    );
    assert_eq!(m.header_values("X-Interop-Ins-1"), ["inserted at 1"]);
}

interop::tests_on_each_mta_and_transport! {
    run:
    holds_a_quarantined_message_and_delivers_nothing => quarantine,
    rejects_the_sender_with_a_multi_line_custom_reply => mail_reject_multiline,
    tempfails_the_sender_with_a_multi_line_custom_reply => mail_tempfail_multiline,
    tempfails_one_recipient_of_three_and_delivers_to_the_others => rcpt_tempfail,
    passes_and_adds_utf8_folded_and_space_led_header_values => header_values,
    inserts_a_header_at_index_one => insert_header,
}
