//! A milter that is down (nothing listens on its socket), behind real Postfix and Sendmail: what
//! the MTA's failure setting does with the mail (issue #19, item 3; docs/scaling.md). Postfix with
//! `milter_default_action = tempfail` (its default) refuses the session with 4xx and delivers
//! nothing; with `accept` it delivers the mail unfiltered. Sendmail with `F=T` (the interop
//! configuration) refuses with 4xx. A milter that takes the connection and never answers is given
//! up after Postfix's `milter_command_timeout` (seen; its documentation says
//! `milter_connect_timeout` covers the negotiation too). Nothing is lost: a 4xx makes the client keep the
//! message and try again. Needs root; the packages come from scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use interop::{Mta, Postfix, RunDir, Sendmail, Sink, Transport};

const FROM: &str = "alice@example.org";
const BOB: &str = "bob@example.net";

fn message() -> Vec<u8> {
    format!(
        "{}\r\nThe milter is down.\r\n",
        interop::message_head("milter down", "milter-down")
    )
    .into_bytes()
}

/// A socket nobody listens on, spelled for `mta`, on `tcp` or a Unix path.
fn dead_socket(mta: Mta, tcp: bool, dir: &RunDir) -> String {
    let port = interop::free_port().unwrap();
    let path = dir.join("nobody.sock");
    match (mta, tcp) {
        (Mta::Postfix, true) => format!("inet:127.0.0.1:{port}"),
        (Mta::Postfix, false) => format!("unix:{}", path.display()),
        (Mta::Sendmail, true) => format!("inet:{port}@127.0.0.1"),
        (Mta::Sendmail, false) => format!("local:{}", path.display()),
    }
}

/// Sends one message through `mta` in front of a dead milter; gives the SMTP result and what the
/// sink received within a short wait.
fn through(
    mta: Mta,
    tcp: bool,
    postfix_action: &str,
) -> (interop::SmtpResult, Vec<interop::Message>) {
    let dir = RunDir::new("milter-down").unwrap();
    let spec = dead_socket(mta, tcp, &dir);
    let sink = Sink::start().unwrap();
    let started = Instant::now();
    // The MTA stays up until the sink has had its chance: it delivers after the SMTP dialogue.
    let (_postfix, _sendmail, port);
    match mta {
        Mta::Postfix => {
            let pf = Postfix::start_with(
                &spec,
                sink.port(),
                &[("milter_default_action", postfix_action)],
            )
            .unwrap();
            port = pf.port();
            (_postfix, _sendmail) = (Some(pf), None);
        }
        Mta::Sendmail => {
            let sm = Sendmail::start(&spec, sink.port()).unwrap();
            port = sm.port();
            (_postfix, _sendmail) = (None, Some(sm));
        }
    }
    let result = interop::send(port, FROM, &[BOB], &message()).expect("SMTP dialogue");
    let waited = started.elapsed();
    assert!(waited < Duration::from_secs(60), "the MTA took {waited:?}");
    let delivered = if result.accepted() {
        sink.wait_for(1, interop::DELIVERY_TIMEOUT).unwrap()
    } else {
        sink.settle(Duration::from_millis(500))
    };
    (result, delivered)
}

/// The first reply of the dialogue that was not 2xx or 3xx.
fn refusal(r: &interop::SmtpResult) -> u16 {
    std::iter::once(&r.mail)
        .chain(&r.rcpts)
        .chain(r.data.as_ref())
        .chain(r.end.as_ref())
        .map(|reply| reply.code)
        .find(|&code| code >= 400)
        .unwrap_or(0)
}

fn tempfails(mta: Mta, transport: Transport, (): ()) {
    if !interop::require(interop::tools_of(mta)) {
        return;
    }
    let (r, delivered) = through(mta, transport == Transport::Tcp, "tempfail");
    assert!(!r.accepted(), "{r}");
    // Both refuse the session at MAIL, with their stock temporary texts.
    assert_eq!(refusal(&r), 451, "{r}");
    let want = match mta {
        Mta::Postfix => "4.7.1 Service unavailable - try again later",
        Mta::Sendmail => "4.3.2 Please try again later",
    };
    assert_eq!((r.mail.code, r.mail.text()), (451, want.to_owned()), "{r}");
    assert!(delivered.is_empty(), "nothing delivered: {delivered:?}");
}

fn postfix_accepts_unfiltered(tcp: bool) {
    if !interop::require(interop::tools_of(Mta::Postfix)) {
        return;
    }
    let (r, delivered) = through(Mta::Postfix, tcp, "accept");
    assert!(r.accepted(), "{r}");
    assert_eq!(delivered.len(), 1);
    assert_eq!(
        delivered[0].header("Subject").as_deref(),
        Some("milter down")
    );
}

interop::tests_on_each_mta_and_transport! {
    tempfails: tempfails_when_the_milter_is_down => (),
}

#[test]
fn postfix_with_milter_default_action_accept_delivers_unfiltered_when_the_milter_is_down() {
    postfix_accepts_unfiltered(true);
    postfix_accepts_unfiltered(false);
}

#[test]
fn postfix_gives_up_on_a_silent_milter_after_milter_command_timeout_not_connect_timeout() {
    if !interop::require(interop::tools_of(Mta::Postfix)) {
        return;
    }
    let port = interop::free_port().unwrap();
    let sink = Sink::start().unwrap();
    let postfix = Postfix::start_with(
        &format!("inet:127.0.0.1:{port}"),
        sink.port(),
        &[
            ("milter_connect_timeout", "1s"),
            ("milter_command_timeout", "3s"),
        ],
    )
    .unwrap();
    // Only now a "milter" that takes connections and never answers the negotiation (Postfix's
    // start-up probe would have waited on it).
    let silent = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let held = std::thread::spawn(move || silent.accept().map(|(conn, _)| conn));
    let started = Instant::now();
    let r = interop::send(postfix.port(), FROM, &[BOB], &message()).expect("SMTP dialogue");
    let took = started.elapsed();
    assert_eq!(r.mail.code, 451, "{r}");
    // Seen with Postfix 3.7: the wait for the negotiation's answer is milter_command_timeout's
    // (3 s here), not milter_connect_timeout's (1 s), which bounds connect() alone.
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(15),
        "answered after {took:?}"
    );
    assert!(sink.settle(Duration::from_millis(500)).is_empty());
    assert!(
        held.join().unwrap().is_ok(),
        "Postfix connected to the silent milter"
    );
}
