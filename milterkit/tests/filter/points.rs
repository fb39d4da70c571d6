//! Decision points, recipient checks, limits, the spool and failures.

use std::sync::{Arc, Mutex};

use milterkit::filter::{Address, DecideAt, Filter, Limit, Options, Transaction};
use milterkit::mta::Verdict;
use milterkit::proto::message::Mta;
use milterkit::proto::Sent;
use milterkit::{Actions, Decision, Reply, Result, Stage};

use super::{block_on, message, run, Script};

/// Runs `filter` deciding at `at` on the sample message as `mta` would.
fn deciding_at<F: Filter>(filter: F, at: DecideAt, mta: Mta) -> milterkit::mta::Outcome {
    block_on(run(
        filter,
        Options::default().decide_at(at),
        mta,
        &message(),
    ))
}

/// What the filter saw at its decision point, one line per call.
fn seen(tx: &Transaction<'_>) -> String {
    format!(
        "helo={} sender={} rcpts={} headers={} body={}",
        tx.client().helo().is_some(),
        tx.sender().map_or("-".into(), |s| s.addr().to_owned()),
        tx.recipients().count(),
        tx.headers().len(),
        tx.body().len()
    )
}

/// A decision point, the stages answered, the stages sent without a reply, what each call saw.
type Point = (
    DecideAt,
    &'static [Stage],
    &'static [Stage],
    &'static [&'static str],
);

#[test]
fn each_decision_point_sees_what_came_before_it_and_asks_only_for_what_it_needs() {
    use Stage::*;
    #[rustfmt::skip]
    let cases: [Point; 7] = [
        (DecideAt::Connect, &[Connect, Eom], &[], &["helo=false sender=- rcpts=0 headers=0 body=0"]),
        (DecideAt::Helo, &[Helo, Eom], &[Connect], &["helo=true sender=- rcpts=0 headers=0 body=0"]),
        (DecideAt::Mail, &[Mail, Eom], &[Connect, Helo, Rcpt], &["helo=true sender=alice@outside.example rcpts=0 headers=0 body=0"]),
        (DecideAt::Rcpt, &[Rcpt, Eom], &[Connect, Helo, Mail], &[
            "helo=true sender=alice@outside.example rcpts=1 headers=0 body=0",
            "helo=true sender=alice@outside.example rcpts=2 headers=0 body=0",
        ]),
        (DecideAt::Data, &[Rcpt, Data, Eom], &[Connect, Helo, Mail], &["helo=true sender=alice@outside.example rcpts=2 headers=0 body=0"]),
        (DecideAt::Eoh, &[Rcpt, Eoh, Eom], &[Connect, Helo, Mail, Header], &["helo=true sender=alice@outside.example rcpts=2 headers=6 body=0"]),
        (DecideAt::Eom, &[Rcpt, Eom], &[Connect, Helo, Mail, Header, Body], &["helo=true sender=alice@outside.example rcpts=2 headers=6 body=11"]),
    ];
    for (at, answered, unanswered, calls) in cases {
        for mta in [Mta::Postfix, Mta::Sendmail] {
            let log = Arc::new(Mutex::new(Vec::new()));
            let l = log.clone();
            let filter = Script(move |tx: &mut Transaction<'_>| {
                l.lock().unwrap().push(seen(tx));
                Ok(Decision::Continue)
            });
            let outcome = deciding_at(filter, at, mta);
            assert_eq!(outcome.verdict, Some(Verdict::Accept), "{at:?} {mta:?}");
            assert_eq!(*log.lock().unwrap(), calls, "{at:?} {mta:?}");
            let with = |want: fn(&Sent) -> bool| {
                let mut stages: Vec<Stage> = outcome
                    .steps
                    .iter()
                    .filter(|s| want(&s.sent))
                    .map(|s| s.stage)
                    .collect();
                stages.dedup();
                stages
            };
            assert_eq!(
                with(|s| matches!(s, Sent::AwaitingReply(_))),
                answered,
                "{at:?} {mta:?}"
            );
            assert_eq!(with(|s| *s == Sent::NoReply), unanswered, "{at:?} {mta:?}");
        }
    }
}

#[test]
fn an_accept_before_end_of_message_with_edits_waits_for_it() {
    let filter = Script(|tx: &mut Transaction<'_>| {
        tx.add_header("X-Checked", "at MAIL")?;
        Ok(Decision::Accept)
    });
    let outcome = deciding_at(filter, DecideAt::Mail, Mta::Postfix);
    assert_eq!(outcome.decision(Stage::Mail), Some(&Decision::Continue));
    assert_eq!(outcome.decision(Stage::Eom), Some(&Decision::Accept));
    let d = outcome.delivery.expect("delivered");
    assert!(String::from_utf8_lossy(&d.message)
        .contains("Received: from relay.example\r\nX-Checked: at MAIL\r\n\r\n"));
    // Without edits, the accept goes out at once and the MTA sends nothing more.
    let filter = Script(|_: &mut Transaction<'_>| Ok(Decision::Accept));
    let outcome = deciding_at(filter, DecideAt::Mail, Mta::Postfix);
    assert_eq!(outcome.decision(Stage::Mail), Some(&Decision::Accept));
    assert_eq!(outcome.decision(Stage::Eom), None);
    assert_eq!(outcome.verdict, Some(Verdict::Accept));
}

#[test]
fn edits_at_a_connection_level_point_are_refused() {
    let filter = Script(|tx: &mut Transaction<'_>| {
        let e = tx.add_header("X-A", "1").unwrap_err();
        assert!(e.to_string().contains("no message"), "{e}");
        assert!(tx.mime()?.is_none());
        Ok(Decision::Reject)
    });
    let outcome = deciding_at(filter, DecideAt::Helo, Mta::Sendmail);
    assert!(
        matches!(outcome.verdict, Some(Verdict::Reject(_))),
        "{outcome:?}"
    );
}

/// Refuses recipients at blocked.example; tags the message with the recipients it kept.
#[derive(Clone)]
struct Gate;

impl Filter for Gate {
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn check_rcpt(&self, tx: &Transaction<'_>, rcpt: &Address) -> Result<Decision> {
        assert_eq!(tx.sender().unwrap().addr(), "alice@outside.example");
        if rcpt.domain_is("BLOCKED.example") {
            return Ok(Decision::Reply(Reply::new(550, "5.7.1", "not here")?));
        }
        Ok(Decision::Continue)
    }

    async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
        let kept: Vec<String> = tx.recipients().map(|r| r.addr().to_owned()).collect();
        tx.add_header("X-Kept", kept.join(","))?;
        Ok(Decision::Continue)
    }
}

#[test]
fn check_rcpt_refuses_one_recipient_and_the_decision_sees_the_others() {
    let msg = message().to("<mallory@blocked.example>");
    for mta in [Mta::Postfix, Mta::Sendmail] {
        let outcome = block_on(run(Gate, Options::default(), mta, &msg));
        assert_eq!(outcome.refused.len(), 1, "{mta:?}");
        assert_eq!(outcome.refused[0].0, "<mallory@blocked.example>");
        let d = outcome.delivery.expect("delivered");
        assert!(String::from_utf8_lossy(&d.message)
            .contains("X-Kept: bob@example.org,carol@example.org\r\n"));
    }
}

#[test]
fn a_reject_at_the_rcpt_point_refuses_that_recipient_only() {
    let filter = Script(|tx: &mut Transaction<'_>| {
        let last = tx.recipients().last().unwrap().addr().to_owned();
        Ok(if last.starts_with("carol") {
            Decision::Reject
        } else {
            Decision::Continue
        })
    });
    let outcome = deciding_at(filter, DecideAt::Rcpt, Mta::Postfix);
    assert_eq!(outcome.refused.len(), 1);
    assert_eq!(outcome.delivery.expect("delivered").recipients.len(), 1);
}

/// A message with a body of `n` bytes (CRLF lines of 10).
fn sized(n: usize) -> milterkit::mta::Transaction {
    let body = "123456789\n".repeat(n / 10);
    message().message(format!("Subject: big\r\nX-A: 1\r\nX-B: 2\r\n\r\n{body}"))
}

#[test]
fn body_limits_reject_truncate_or_skip() {
    let opts = |limit| Options::default().max_body(25, limit);
    // Reject: refused at the chunk that passes the limit.
    let filter = Script(|_: &mut Transaction<'_>| panic!("not called past a rejecting limit"));
    let outcome = block_on(run(filter, opts(Limit::Reject), Mta::Postfix, &sized(100)));
    match outcome.verdict {
        Some(Verdict::Reject(Some(r))) => assert!(r.to_string().starts_with("552 5.3.4"), "{r}"),
        other => panic!("{other:?}"),
    }
    for limit in [Limit::Truncate, Limit::Skip] {
        let filter = Script(|tx: &mut Transaction<'_>| {
            assert!(tx.body().truncated());
            assert_eq!(tx.body().len(), 25);
            assert_eq!(&tx.body().to_bytes()?[..], b"123456789\r\n123456789\r\n123");
            let e = tx.replace_body("x").unwrap_err();
            assert!(e.to_string().contains("truncated"), "{e}");
            Ok(Decision::Continue)
        });
        let outcome = block_on(run(filter, opts(limit), Mta::Postfix, &sized(100)));
        assert_eq!(outcome.verdict, Some(Verdict::Accept), "{limit:?}");
        assert_eq!(
            outcome.decision(Stage::Body) == Some(&Decision::Skip),
            limit == Limit::Skip,
            "{limit:?}"
        );
    }
    // Under the limit: untouched.
    let filter = Script(|tx: &mut Transaction<'_>| {
        assert!(!tx.body().truncated());
        Ok(Decision::Continue)
    });
    let outcome = block_on(run(filter, opts(Limit::Reject), Mta::Postfix, &sized(20)));
    assert_eq!(outcome.verdict, Some(Verdict::Accept));
}

#[test]
fn header_limits_truncate_or_reject() {
    let filter = Script(|tx: &mut Transaction<'_>| {
        assert!(tx.headers_truncated());
        assert_eq!(tx.headers().len(), 2);
        Ok(Decision::Continue)
    });
    let outcome = block_on(run(
        filter,
        Options::default().max_headers(2, Limit::Truncate),
        Mta::Sendmail,
        &sized(10),
    ));
    assert_eq!(outcome.verdict, Some(Verdict::Accept));
    let filter = Script(|_: &mut Transaction<'_>| panic!("not called past a rejecting limit"));
    let outcome = block_on(run(
        filter,
        Options::default().max_headers(2, Limit::Reject),
        Mta::Sendmail,
        &sized(10),
    ));
    assert!(
        matches!(outcome.verdict, Some(Verdict::Reject(Some(_)))),
        "{outcome:?}"
    );
}

#[test]
fn a_body_past_the_memory_limit_is_spooled_and_reads_back_whole() {
    let filter = Script(|tx: &mut Transaction<'_>| {
        assert!(tx.body().is_spooled());
        assert_eq!(tx.body().len(), 198_000);
        let bytes = tx.body().to_bytes()?;
        assert!(bytes.chunks(11).all(|l| l == &b"123456789\r\n"[..l.len()]));
        // Read twice, from two readers.
        let (mut a, mut b) = (Vec::new(), Vec::new());
        std::io::Read::read_to_end(&mut tx.body().reader(), &mut a)?;
        std::io::Read::read_to_end(&mut tx.body().reader(), &mut b)?;
        assert_eq!(a, b);
        assert_eq!(a, bytes);
        tx.replace_body_from(tx_body_reader_copy(&a))?;
        tx.append_body("end\r\n")?;
        Ok(Decision::Continue)
    });
    let outcome = block_on(run(
        filter,
        Options::default().memory_limit(1000),
        Mta::Postfix,
        &sized(180_000),
    ));
    let d = outcome.delivery.expect("delivered");
    assert!(d.message.ends_with(b"123456789\r\nend\r\n"));
    let head = "Subject: big\r\nX-A: 1\r\nX-B: 2\r\n\r\n".len();
    assert_eq!(d.message.len(), head + 198_005);
    // The spooled replacement went out a packet at a time, then the tail, as one run at the end.
    let chunks = outcome
        .modifications
        .iter()
        .filter(|m| m.name() == "replace body")
        .count();
    assert_eq!(chunks, 198_000usize.div_ceil(65_535) + 1);
}

fn tx_body_reader_copy(b: &[u8]) -> std::io::Cursor<Vec<u8>> {
    std::io::Cursor::new(b.to_vec())
}

#[test]
fn a_filter_that_fails_or_panics_gets_the_fail_safe_and_loses_no_mail() {
    let failing = Script(|_: &mut Transaction<'_>| Err("scanner unreachable".into()));
    let outcome = block_on(run(failing, Options::default(), Mta::Postfix, &message()));
    assert_eq!(outcome.verdict, Some(Verdict::Tempfail(None)));
    let panicking = Script(|_: &mut Transaction<'_>| panic!("bug"));
    let outcome = block_on(run(
        panicking,
        Options::default(),
        Mta::Sendmail,
        &message(),
    ));
    assert_eq!(outcome.verdict, Some(Verdict::Tempfail(None)));
}

/// Takes 300 ms to decide.
struct Slow;

impl Filter for Slow {
    async fn decide(&self, _: &mut Transaction<'_>) -> Result<Decision> {
        tokio::time::sleep(std::time::Duration::from_millis(300)).await;
        Ok(Decision::Continue)
    }
}

#[test]
fn progress_goes_out_by_itself_while_the_filter_decides() {
    block_on(async {
        use std::future::IntoFuture;
        let config = milterkit::Config {
            progress_interval: std::time::Duration::from_millis(50),
            ..milterkit::Config::default()
        };
        let milter = milterkit::filter::Filtered::new(Slow, Options::default());
        let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
        let spec = listener.local_spec().unwrap().to_string();
        let server = milterkit::serve(listener, move || milter.clone()).with_config(config);
        tokio::spawn(server.into_future());
        let profile = milterkit::mta::Profile::postfix();
        let mut mta = milterkit::mta::Connection::open(&spec, profile)
            .await
            .unwrap();
        let outcome = mta.run(&message()).await.unwrap();
        assert_eq!(outcome.verdict, Some(Verdict::Accept));
        assert!(
            outcome.progress >= 2,
            "{} progress packets",
            outcome.progress
        );
    });
}
