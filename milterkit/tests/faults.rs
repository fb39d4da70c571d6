//! Fault injection: handlers that panic, fail or stall at every stage; an MTA that hangs up at
//! every point of a transaction; a peer gone while a large replacement body is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use milterkit::mta::{Profile, Transaction, Verdict};
use milterkit::proto::{Command, Envelope, Offer};
use milterkit::testing::Harness;
use milterkit::{
    Actions, Body, Config, Connect, Context, Decision, Eom, Header, Helo, Mail, Milter, Rcpt,
    Result, Stage, Stages, Unknown,
};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Panic,
    Error,
    Stall,
}

/// Fails in one way at one stage; counts close and abort calls.
#[derive(Clone)]
struct Faulty {
    at: Option<(Stage, Fault)>,
    closes: Arc<AtomicU32>,
    aborts: Arc<AtomicU32>,
    body: usize,
}

impl Faulty {
    fn new(at: Option<(Stage, Fault)>) -> Self {
        Faulty {
            at,
            closes: Arc::default(),
            aborts: Arc::default(),
            body: 0,
        }
    }

    async fn act(&self, stage: Stage) -> Result<Decision> {
        match self.at {
            Some((s, Fault::Panic)) if s == stage => panic!("injected panic at {stage}"),
            Some((s, Fault::Error)) if s == stage => {
                Err(format!("injected error at {stage}").into())
            }
            Some((s, Fault::Stall)) if s == stage => {
                tokio::time::sleep(Duration::from_secs(100_000)).await;
                Ok(Decision::Continue)
            }
            _ => Ok(Decision::Continue),
        }
    }
}

impl Milter for Faulty {
    type Message = ();
    const ACTIONS: Actions = Actions::CHANGE_BODY;
    const STAGES: Stages = Stages::all();
    async fn connect(&mut self, _: Connect<'_>) -> Result<Decision> {
        self.act(Stage::Connect).await
    }
    async fn helo(&mut self, _: Helo<'_>) -> Result<Decision> {
        self.act(Stage::Helo).await
    }
    async fn mail(&mut self, _: &mut (), _: Mail<'_>) -> Result<Decision> {
        self.act(Stage::Mail).await
    }
    async fn rcpt(&mut self, _: &mut (), _: Rcpt<'_>) -> Result<Decision> {
        self.act(Stage::Rcpt).await
    }
    async fn data(&mut self, _: &mut (), _: Context<'_>) -> Result<Decision> {
        self.act(Stage::Data).await
    }
    async fn header(&mut self, _: &mut (), _: Header<'_>) -> Result<Decision> {
        self.act(Stage::Header).await
    }
    async fn eoh(&mut self, _: &mut (), _: Context<'_>) -> Result<Decision> {
        self.act(Stage::Eoh).await
    }
    async fn body(&mut self, _: &mut (), _: Body<'_>) -> Result<Decision> {
        self.act(Stage::Body).await
    }
    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        if self.body > 0 {
            eom.replace_body(vec![b'r'; self.body])?;
        }
        self.act(Stage::Eom).await
    }
    async fn unknown(&mut self, _: Unknown<'_>) -> Result<Decision> {
        self.act(Stage::Unknown).await
    }
    async fn abort(&mut self, _: (), _: Context<'_>) -> Result<()> {
        self.aborts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn close(&mut self) {
        self.closes.fetch_add(1, Ordering::SeqCst);
    }
}

fn tx() -> Transaction {
    Transaction::new().unknown("XFOO").to("<b@example.net>")
}

#[tokio::test(start_paused = true)]
async fn every_fault_at_every_stage_gives_the_fail_safe_and_close_runs_once() {
    let stages = [
        Stage::Connect,
        Stage::Helo,
        Stage::Unknown,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Header,
        Stage::Eoh,
        Stage::Body,
        Stage::Eom,
    ];
    let mut injected = 0;
    for profile in [Profile::postfix(), Profile::sendmail()] {
        for stage in stages {
            for fault in [Fault::Panic, Fault::Error, Fault::Stall] {
                let m = Faulty::new(Some((stage, fault)));
                let (closes, aborts) = (m.closes.clone(), m.aborts.clone());
                let mut h = Harness::new(m, profile.clone()).lenient();
                let out = h.run(&tx()).await.unwrap();
                assert_eq!(
                    out.decision(stage),
                    Some(&Decision::Tempfail),
                    "{stage} {fault:?}"
                );
                assert!(
                    out.closed.is_some(),
                    "{stage} {fault:?}: the connection closes"
                );
                assert_ne!(
                    out.verdict,
                    Some(Verdict::Accept),
                    "{stage} {fault:?}: never accepted"
                );
                h.quit().await.unwrap();
                assert_eq!(
                    closes.load(Ordering::SeqCst),
                    1,
                    "{stage} {fault:?}: close once"
                );
                // The fail-safe ends the message everywhere but at RCPT (it refuses one
                // recipient); only a message still open when the connection closes is aborted.
                let open = stage == Stage::Rcpt;
                assert_eq!(
                    aborts.load(Ordering::SeqCst),
                    u32::from(open),
                    "{stage} {fault:?}: abort"
                );
                injected += 1;
            }
        }
    }
    println!("{injected} faults injected");
}

/// The commands of one Postfix-like transaction, as bytes, with the index where each command ends.
fn stream() -> (Vec<u8>, Vec<usize>) {
    let cmds = [
        Command::Optneg(Offer::default()),
        Command::Macro {
            stage: b'C',
            pairs: vec![("j".into(), "mx".into())],
        },
        Command::Connect(milterkit::proto::Connect {
            hostname: "client".into(),
            family: milterkit::proto::Family::Inet,
            port: 25,
            address: "192.0.2.1".into(),
        }),
        Command::Helo {
            name: "client".into(),
        },
        Command::Mail(Envelope::new("<a@example.org>")),
        Command::Rcpt(Envelope::new("<b@example.net>")),
        Command::Data,
        Command::Header {
            name: "Subject".into(),
            value: "hi".into(),
        },
        Command::Eoh,
        Command::Body("hello\r\n".into()),
        Command::Eom {
            chunk: Default::default(),
        },
        Command::Abort,
        Command::Quit,
    ];
    let mut b = BytesMut::new();
    let mut ends = Vec::new();
    for c in cmds {
        c.encode(&mut b);
        ends.push(b.len());
    }
    (b.to_vec(), ends)
}

#[tokio::test]
async fn an_mta_hanging_up_at_every_point_ends_the_connection_cleanly() {
    let (bytes, ends) = stream();
    let mut cuts = 0;
    for cut in 0..=bytes.len() {
        let m = Faulty::new(None);
        let (closes, aborts) = (m.closes.clone(), m.aborts.clone());
        let (mut mta, milter) = tokio::io::duplex(1 << 16);
        let served = tokio::spawn(async move {
            milterkit::serve_connection(milter, m, &Config::default()).await
        });
        tokio::io::AsyncWriteExt::write_all(&mut mta, &bytes[..cut])
            .await
            .unwrap();
        drop(mta);
        let result = tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("ends at once");
        assert!(result.is_ok(), "cut at {cut}: no panic");
        assert_eq!(closes.load(Ordering::SeqCst), 1, "cut at {cut}: close once");
        // Inside the message (after MAIL, before the end-of-message reply) the message is aborted.
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        let in_message = (5..=10).contains(&complete);
        assert_eq!(
            aborts.load(Ordering::SeqCst),
            u32::from(in_message),
            "cut at {cut} ({complete} commands)"
        );
        cuts += 1;
    }
    println!("{cuts} hang-up points");
}

#[tokio::test]
async fn a_peer_gone_while_a_large_replacement_body_is_written_ends_the_connection() {
    let (bytes, _) = stream();
    let mut m = Faulty::new(None);
    m.body = 20 * 1024 * 1024;
    let closes = m.closes.clone();
    let (mut mta, milter) = tokio::io::duplex(1 << 16);
    let served =
        tokio::spawn(
            async move { milterkit::serve_connection(milter, m, &Config::default()).await },
        );
    let until_eom = bytes.len() - 10; // everything up to and including EOM
    tokio::io::AsyncWriteExt::write_all(&mut mta, &bytes[..until_eom])
        .await
        .unwrap();
    // Read a little of the answer, then hang up in the middle of the body.
    let mut some = vec![0; 100_000];
    tokio::io::AsyncReadExt::read_exact(&mut mta, &mut some)
        .await
        .unwrap();
    drop(mta);
    let result = tokio::time::timeout(Duration::from_secs(10), served)
        .await
        .expect("ends")
        .unwrap();
    assert!(matches!(result, Err(milterkit::Error::Io(_))), "{result:?}");
    assert_eq!(closes.load(Ordering::SeqCst), 1);
}
