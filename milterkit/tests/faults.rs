//! Fault injection: handlers that panic, fail or stall at every stage; an MTA that hangs up at
//! every point of a transaction; a peer gone while a large replacement body is written.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::atomic::Ordering;
use std::time::Duration;

use bytes::BytesMut;
use milterkit::mta::{Profile, Transaction, Verdict};
use milterkit::proto::{Command, Envelope, Offer};
use milterkit::testing::Harness;
use milterkit::{Config, Decision, Stage};

mod support;

use support::commands::greeting;
use support::scripted::{Edit, Script, Scripted};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Fault {
    Panic,
    Error,
    Stall,
}

/// The scripted milter failing in one way at one stage.
fn faulty(stage: Stage, fault: Fault) -> Scripted {
    Scripted::new(match fault {
        Fault::Panic => Script {
            panic_at: Some(stage),
            ..Script::default()
        },
        Fault::Error => Script {
            error_at: Some(stage),
            ..Script::default()
        },
        Fault::Stall => Script {
            sleep_at: Some((stage, Duration::from_secs(100_000))),
            ..Script::default()
        },
    })
}

fn tx() -> Transaction {
    Transaction::new().unknown("XFOO").to("<b@example.net>")
}

#[tokio::test(start_paused = true)]
async fn every_fault_at_every_stage_gives_the_fail_safe_and_close_runs_once() {
    let mut injected = 0;
    for profile in [Profile::postfix(), Profile::sendmail()] {
        for stage in Stage::ALL {
            for fault in [Fault::Panic, Fault::Error, Fault::Stall] {
                let m = faulty(stage, fault);
                let script = m.0.clone();
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
                // The fail-safe ends the message everywhere but at RCPT (it refuses one
                // recipient); only a message still open when the connection closes is aborted.
                let open = stage == Stage::Rcpt;
                script.assert_ended(open, &format!("{stage} {fault:?}"));
                injected += 1;
            }
        }
    }
    println!("{injected} faults injected");
}

/// The commands of one Postfix-like transaction, as bytes, with the index where each command ends.
fn stream() -> (Vec<u8>, Vec<usize>) {
    let mut cmds = vec![
        Command::Optneg(Offer::default()),
        Command::Macro {
            stage: b'C',
            pairs: vec![("j".into(), "mx".into())],
        },
    ];
    cmds.extend(greeting("client", 25));
    cmds.extend([
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
    ]);
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
        let m = Scripted::new(Script::default());
        let script = m.0.clone();
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
        // Inside the message (after MAIL, before the end-of-message reply) the message is aborted.
        let complete = ends.iter().filter(|&&e| e <= cut).count();
        let in_message = (5..=10).contains(&complete);
        script.assert_ended(in_message, &format!("cut at {cut} ({complete} commands)"));
        cuts += 1;
    }
    println!("{cuts} hang-up points");
}

#[tokio::test]
async fn a_peer_gone_while_a_large_replacement_body_is_written_ends_the_connection() {
    let (bytes, _) = stream();
    let m = Scripted::new(Script {
        changes: vec![Edit::ReplaceBody(vec![b'r'; 20 * 1024 * 1024])],
        ..Script::default()
    });
    let script = m.0.clone();
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
    assert_eq!(script.closes.load(Ordering::SeqCst), 1);
}
