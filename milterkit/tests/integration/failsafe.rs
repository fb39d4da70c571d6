//! A handler that errors, panics or runs past its deadline gives the fail-safe reply, closes only
//! its connection, and `close` runs once.

use std::sync::atomic::Ordering;
use std::time::Duration;

use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use milterkit::testing::Harness;
use milterkit::{Config, Decision, Error, Milter, Rcpt, Result, Stage, Stages};

use crate::scripted::{Script, Scripted};
use crate::support::served::Served;

fn tx() -> Transaction {
    Transaction::new().to("<bob@example.net>")
}

async fn failing(script: Script, config: Config) -> (milterkit::mta::Outcome, Scripted) {
    let milter = Scripted::new(script);
    let server = Served::with_config("inet:0@127.0.0.1", milter.clone(), config).await;
    let mut conn = Connection::open(&server.spec, Profile::postfix())
        .await
        .unwrap();
    let mut out = conn.run(&tx()).await.unwrap();
    // That connection is over: the next message finds it closed.
    let next = conn.run(&tx()).await.unwrap();
    out.closed = next.closed;
    // The server keeps serving: a second connection gets normal answers.
    let mut other = Connection::open(&server.spec, Profile::postfix())
        .await
        .unwrap();
    let mut healthy = Transaction::new().to("<carol@example.net>");
    healthy.helo = "second.example".into();
    let second = other.run(&healthy).await;
    assert!(second.is_ok(), "{second:?}");
    other.quit().await.unwrap();
    drop(conn);
    server.stop().await;
    (out, milter)
}

#[tokio::test]
async fn a_panicking_handler_gives_tempfail_and_closes_only_its_connection() {
    for stage in [
        Stage::Connect,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Header,
        Stage::Eom,
    ] {
        let script = Script {
            panic_at: Some(stage),
            ..Script::default()
        };
        let (out, milter) = failing(script, Config::default()).await;
        assert_eq!(out.decision(stage), Some(&Decision::Tempfail), "{stage}");
        assert!(out.closed.is_some(), "{stage}: the connection closes");
        assert_eq!(
            milter.0.closes.load(Ordering::SeqCst),
            2,
            "{stage}: close ran once per connection"
        );
    }
}

/// [`failing`] with a handler that errors at `stage` and `fail_safe` configured.
async fn erroring_at(stage: Stage, fail_safe: Decision) -> milterkit::mta::Outcome {
    let script = Script {
        error_at: Some(stage),
        ..Script::default()
    };
    let config = Config {
        fail_safe,
        ..Config::default()
    };
    failing(script, config).await.0
}

#[tokio::test]
async fn an_erroring_handler_gives_the_configured_fail_safe() {
    let out = erroring_at(Stage::Mail, Decision::Reject).await;
    assert_eq!(out.decision(Stage::Mail), Some(&Decision::Reject));
    assert_eq!(out.verdict, Some(Verdict::Reject(None)));
}

#[tokio::test]
async fn a_fail_safe_not_allowed_at_the_stage_falls_back_to_tempfail() {
    let out = erroring_at(Stage::Connect, Decision::Discard).await;
    assert_eq!(out.decision(Stage::Connect), Some(&Decision::Tempfail));
}

/// `milter` served on one in-memory connection: the MTA side, negotiated as Sendmail, and the
/// serving task.
async fn on_duplex(
    milter: &Scripted,
) -> (
    Connection<tokio::io::DuplexStream>,
    tokio::task::JoinHandle<Result<(), Error>>,
) {
    let (mta_end, milter_end) = tokio::io::duplex(64 * 1024);
    let served = tokio::spawn({
        let m = milter.clone();
        async move { milterkit::serve_connection(milter_end, m, &Config::default()).await }
    });
    let conn = Connection::negotiate(mta_end, Profile::sendmail())
        .await
        .unwrap();
    (conn, served)
}

#[tokio::test(start_paused = true)]
async fn a_handler_past_its_deadline_gives_tempfail() {
    let script = Script {
        sleep_at: Some((Stage::Rcpt, Duration::from_secs(3600))),
        ..Script::default()
    };
    let milter = Scripted::new(script);
    let (mut conn, served) = on_duplex(&milter).await;
    let started = tokio::time::Instant::now();
    let out = conn.run(&tx()).await.unwrap();
    assert_eq!(out.decision(Stage::Rcpt), Some(&Decision::Tempfail));
    assert_eq!(
        started.elapsed().as_secs(),
        8,
        "the default handler deadline"
    );
    assert!(matches!(
        served.await.unwrap(),
        Err(Error::HandlerTimeout { stage: Stage::Rcpt })
    ));
    milter.0.assert_ended(true, "past the deadline at RCPT");
}

#[tokio::test(start_paused = true)]
async fn a_slow_end_of_message_sends_progress_and_is_not_tempfailed() {
    let script = Script {
        sleep_at: Some((Stage::Eom, Duration::from_secs(22))),
        ..Script::default()
    };
    let (conn, _served) = on_duplex(&Scripted::new(script)).await;
    // Sendmail's own per-reply timeout is 10 s: progress must come before that.
    let mut conn = conn.with_reply_timeout(Duration::from_secs(10));
    let out = conn.run(&tx()).await.unwrap();
    assert_eq!(out.decision(Stage::Eom), Some(&Decision::Continue));
    assert_eq!(out.progress, 4, "one progress every 5 s for 22 s");
}

#[tokio::test(start_paused = true)]
async fn a_silent_mta_is_dropped_after_the_read_timeout() {
    let (mta_end, milter_end) = tokio::io::duplex(1024);
    let milter = Scripted::new(Script::default());
    let r = milterkit::serve_connection(milter_end, milter.clone(), &Config::default()).await;
    assert!(matches!(r, Err(Error::Timeout(_))), "{r:?}");
    assert_eq!(milter.0.closes.load(Ordering::SeqCst), 1);
    drop(mta_end);
}

/// A milter that answers SKIP at RCPT, which the protocol does not allow.
#[derive(Default)]
struct Misuses;

impl Milter for Misuses {
    type Message = ();
    const STAGES: Stages = Stages::RCPT;
    async fn rcpt(&mut self, _: &mut (), _: Rcpt<'_>) -> Result<Decision> {
        Ok(Decision::Skip)
    }
}

#[tokio::test]
async fn a_decision_not_allowed_at_its_stage_fails_a_strict_test_and_is_a_fail_safe_in_production()
{
    let mut strict = Harness::postfix(Misuses);
    let err = strict.run(&tx()).await.unwrap_err();
    let Error::Misuse { stage, .. } = &err else {
        panic!("not a misuse: {err:?}")
    };
    assert_eq!(*stage, Stage::Rcpt);

    let mut lenient = Harness::postfix(Misuses).lenient();
    let out = lenient.run(&tx()).await.unwrap();
    assert_eq!(out.decision(Stage::Rcpt), Some(&Decision::Tempfail));
    assert!(out.closed.is_some());
}

#[tokio::test]
async fn a_failure_at_a_no_reply_stage_is_answered_at_the_next_reply() {
    /// Fails at HEADER, which it declared it will not answer.
    #[derive(Default)]
    struct FailsQuietly;
    impl Milter for FailsQuietly {
        type Message = ();
        async fn negotiate(
            &mut self,
            _: &milterkit::Offer,
            r: &mut milterkit::Request,
        ) -> Result<()> {
            r.no_reply = Stages::HEADER;
            Ok(())
        }
        async fn header(&mut self, _: &mut (), _: milterkit::Header<'_>) -> Result<Decision> {
            Err("bad header".into())
        }
    }
    let mut h = Harness::sendmail(FailsQuietly).lenient();
    let out = h.run(&tx()).await.unwrap();
    assert_eq!(out.decision(Stage::Header), None);
    assert_eq!(out.decision(Stage::Eoh), Some(&Decision::Tempfail));
    assert_eq!(out.verdict, Some(Verdict::Tempfail(None)));
}

/// Adds a header it did not ask to add.
#[derive(Default)]
struct Careless;

impl Milter for Careless {
    type Message = ();

    async fn eom(&mut self, _: &mut (), eom: &mut milterkit::Eom<'_>) -> Result<Decision> {
        eom.add_header("X-Not-Negotiated", "1")?;
        Ok(Decision::Continue)
    }
}

#[tokio::test]
async fn an_action_not_negotiated_passed_on_with_question_mark_is_misuse_in_the_strict_harness() {
    let mut h = Harness::postfix(Careless);
    let err = h.run(&tx()).await.unwrap_err();
    let Error::Misuse { stage, source } = &err else {
        panic!("not a misuse: {err:?}")
    };
    assert_eq!(*stage, Stage::Eom);
    assert!(
        matches!(source, milterkit::proto::MisuseError::NotNegotiated { .. }),
        "{err:?}"
    );
}

/// Answers SKIP at BODY without asking for SMFIP_SKIP.
#[derive(Default)]
struct SkipsUnasked;

impl Milter for SkipsUnasked {
    type Message = ();

    async fn body(&mut self, _: &mut (), _: milterkit::Body<'_>) -> Result<Decision> {
        Ok(Decision::Skip)
    }
}

#[tokio::test]
async fn skip_without_agreement_goes_on_as_continue() {
    let mut h = Harness::postfix(SkipsUnasked);
    let out = h.run(&tx()).await.unwrap();
    assert_eq!(out.decision(Stage::Body), Some(&Decision::Continue));
    assert_eq!(out.verdict, Some(Verdict::Accept));
    assert!(out.closed.is_none(), "{:?}", out.closed);
}
