//! Real TCP (IPv4, IPv6) and Unix sockets: each decision and modification reaches the wire.

use crate::scripted::{Edit, Script, Scripted};
use crate::support::served::Served;
use bytes::Bytes;
use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use milterkit::{Decision, Modification, Reply, Stage};

impl Served {
    /// Serves `milter` on `bind` with the default configuration.
    pub(crate) async fn start(bind: &str, milter: Scripted) -> Served {
        Served::with_config(bind, milter, milterkit::Config::default()).await
    }

    /// Serves `milter` on `bind` with `config`.
    pub(crate) async fn with_config(
        bind: &str,
        milter: Scripted,
        config: milterkit::Config,
    ) -> Served {
        let listener = milterkit::bind(bind).await.unwrap();
        Served::spawn(listener, move || milter.clone(), config)
    }
}

fn unix_path(name: &str) -> String {
    let dir = std::env::temp_dir().join(format!("milterkit-test-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    format!("unix:{}", dir.join(name).display())
}

fn every_change() -> Vec<Edit> {
    vec![
        Edit::ChangeFrom("<bounce@example.org>", Some("RET=HDRS ENVID=x1")),
        Edit::DeleteRcpt("<bob@example.net>"),
        Edit::AddRcpt("<archive@example.org>", None),
        Edit::AddRcpt("<copy@example.org>", Some("NOTIFY=NEVER")),
        Edit::ChangeHeader("Subject", 1, "[checked] Test"),
        Edit::DeleteHeader("X-Drop", 1),
        Edit::InsertHeader(0, "X-Top", "first"),
        Edit::AddHeader("X-Folded", "line one\r\n\tline two"),
        Edit::ReplaceBody(vec![b'z'; 150_000]),
        Edit::Quarantine("held for review"),
    ]
}

fn expected_changes() -> Vec<Modification> {
    vec![
        Modification::ChangeFrom {
            sender: "<bounce@example.org>".into(),
            args: Some("RET=HDRS ENVID=x1".into()),
        },
        Modification::DeleteRcpt {
            rcpt: "<bob@example.net>".into(),
        },
        Modification::AddRcpt {
            rcpt: "<archive@example.org>".into(),
        },
        Modification::AddRcptPar {
            rcpt: "<copy@example.org>".into(),
            args: Some("NOTIFY=NEVER".into()),
        },
        Modification::ChangeHeader {
            index: 1,
            name: "Subject".into(),
            value: "[checked] Test".into(),
        },
        Modification::ChangeHeader {
            index: 1,
            name: "X-Drop".into(),
            value: "".into(),
        },
        Modification::InsertHeader {
            index: 0,
            name: "X-Top".into(),
            value: "first".into(),
        },
        // CRLF in a header value becomes the LF the MTAs expect.
        Modification::AddHeader {
            name: "X-Folded".into(),
            value: "line one\n\tline two".into(),
        },
        Modification::Quarantine {
            reason: "held for review".into(),
        },
    ]
}

fn tx() -> Transaction {
    Transaction::new()
        .to("<bob@example.net>")
        .to("<carol@example.net>")
        .message("Subject: Test\r\nX-Drop: me\r\n\r\nhello\r\n")
}

async fn modifications_reach_the_wire(bind: &str, profile: Profile) {
    let script = Script {
        changes: every_change(),
        ..Script::default()
    };
    let server = Served::start(bind, Scripted::new(script)).await;
    let mut conn = Connection::open(&server.spec, profile).await.unwrap();
    let out = conn.run(&tx()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept));
    let d = out.delivery.clone().expect("accepted: a delivery");
    assert_eq!(d.sender.address, "<bounce@example.org>");
    let to: Vec<_> = d.recipients.iter().map(|r| r.address.clone()).collect();
    assert_eq!(
        to,
        [
            "<carol@example.net>",
            "<archive@example.org>",
            "<copy@example.org>"
        ]
    );
    assert_eq!(d.quarantine.as_deref(), Some(&b"held for review"[..]));
    let text = String::from_utf8(d.message.to_vec()).unwrap();
    assert!(
        text.starts_with("X-Top: first\r\nSubject: [checked] Test\r\nX-Folded: line one\r\n\tline two\r\n\r\nzzz"),
        "{}",
        &text[..120]
    );
    assert_eq!(
        text.len(),
        72 + 150_000,
        "headers, then the replaced body in full"
    );
    let (body, other): (Vec<_>, Vec<_>) = out
        .modifications
        .into_iter()
        .partition(|m| matches!(m, Modification::ReplaceBody { .. }));
    assert_eq!(other, expected_changes());
    let sizes: Vec<usize> = body
        .iter()
        .map(|m| match m {
            Modification::ReplaceBody { chunk } => chunk.len(),
            _ => 0,
        })
        .collect();
    assert_eq!(
        sizes,
        [65_535, 65_535, 18_930],
        "body in full chunks, as one run"
    );
    conn.quit().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn every_modification_reaches_the_wire_over_tcp() {
    modifications_reach_the_wire("inet:0@127.0.0.1", Profile::postfix()).await;
}

#[tokio::test]
async fn every_modification_reaches_the_wire_over_ipv6() {
    modifications_reach_the_wire("inet6:0@[::1]", Profile::sendmail()).await;
}

#[tokio::test]
async fn every_modification_reaches_the_wire_over_a_unix_socket() {
    modifications_reach_the_wire(&unix_path("mods.sock"), Profile::postfix()).await;
}

/// Runs `tx` against a milter deciding `decision` at `stage`; returns the outcome.
async fn decide(bind: &str, stage: Stage, decision: Decision) -> milterkit::mta::Outcome {
    let mut script = Script::default();
    script.decisions.insert(stage, decision);
    let server = Served::start(bind, Scripted::new(script)).await;
    let mut conn = Connection::open(&server.spec, Profile::postfix())
        .await
        .unwrap();
    let out = conn.run(&tx()).await.unwrap();
    conn.quit().await.unwrap();
    server.stop().await;
    out
}

#[tokio::test]
async fn each_decision_reaches_the_wire_at_each_stage() {
    let reply = Reply::multiline(550, "5.7.1", ["no", "thanks"]).unwrap();
    let cases = [
        (Stage::Connect, Decision::Tempfail, Verdict::Tempfail(None)),
        (Stage::Helo, Decision::Reject, Verdict::Reject(None)),
        (Stage::Mail, Decision::Accept, Verdict::Accept),
        (
            Stage::Mail,
            Decision::Reply(reply.clone()),
            Verdict::Reject(Some(reply.clone())),
        ),
        (Stage::Data, Decision::Discard, Verdict::Discard),
        (Stage::Header, Decision::Tempfail, Verdict::Tempfail(None)),
        (Stage::Eoh, Decision::Reject, Verdict::Reject(None)),
        (Stage::Body, Decision::Accept, Verdict::Accept),
        (Stage::Eom, Decision::Discard, Verdict::Discard),
        (
            Stage::Eom,
            Decision::Reply(reply.clone()),
            Verdict::Reject(Some(reply)),
        ),
    ];
    for (stage, decision, verdict) in cases {
        let out = decide("inet:0@127.0.0.1", stage, decision.clone()).await;
        assert_eq!(out.decision(stage), Some(&decision), "{stage}");
        assert_eq!(out.verdict, Some(verdict), "{stage} {decision:?}");
        let last = out
            .steps
            .iter()
            .rev()
            .find(|s| s.decision.is_some())
            .unwrap();
        assert_eq!(
            last.stage, stage,
            "nothing is sent after a decision that ends the message"
        );
    }
}

#[tokio::test]
async fn skip_in_body_stops_the_body_and_end_of_message_still_comes() {
    let out = decide("inet:0@127.0.0.1", Stage::Body, Decision::Skip).await;
    let stages = crate::support::sent_stages(&out);
    assert_eq!(stages.iter().filter(|s| **s == Stage::Body).count(), 1);
    assert_eq!(stages.last(), Some(&Stage::Eom));
}

#[tokio::test]
async fn reject_at_rcpt_refuses_one_recipient_and_the_message_goes_on() {
    let mut script = Script::default();
    script.rcpt.insert("<bob@example.net>", Decision::Tempfail);
    let server = Served::start("inet:0@127.0.0.1", Scripted::new(script)).await;
    let mut conn = Connection::open(&server.spec, Profile::sendmail())
        .await
        .unwrap();
    let out = conn.run(&tx()).await.unwrap();
    assert_eq!(
        out.refused,
        [(Bytes::from("<bob@example.net>"), Decision::Tempfail)]
    );
    assert_eq!(out.verdict, Some(Verdict::Accept));
    // A second message on the same connection.
    let again = conn.run(&tx()).await.unwrap();
    assert_eq!(again.refused.len(), 1);
    conn.quit().await.unwrap();
    server.stop().await;
}

#[tokio::test]
async fn a_stale_unix_socket_is_replaced_and_another_file_is_refused() {
    let spec = unix_path("stale.sock");
    let path = spec.trim_start_matches("unix:").to_owned();
    drop(std::os::unix::net::UnixListener::bind(&path).unwrap()); // leaves the file behind
    assert!(std::path::Path::new(&path).exists());
    let listener = milterkit::bind(&spec).await.unwrap();
    drop(listener);
    assert!(
        !std::path::Path::new(&path).exists(),
        "removed when the listener goes"
    );
    std::fs::write(&path, b"not a socket").unwrap();
    assert!(matches!(
        milterkit::bind(&spec).await,
        Err(milterkit::Error::Bind { .. })
    ));
    std::fs::remove_file(&path).unwrap();
}

#[tokio::test]
async fn a_live_unix_socket_is_not_taken_over_and_stays_its_owners() {
    let spec = unix_path("live.sock");
    let path = std::path::PathBuf::from(spec.trim_start_matches("unix:"));
    let first = milterkit::bind(&spec).await.unwrap();
    // A second instance on the same path: refused, as a TCP port in use is.
    let second = milterkit::bind(&spec).await.expect_err("in use");
    assert!(
        second.to_string().contains("another process is listening"),
        "{second}"
    );
    assert!(path.exists());
    // The file replaced under the first (a start that removed it by hand): the first's stop
    // leaves the newcomer's file alone.
    std::fs::remove_file(&path).unwrap();
    let newcomer = milterkit::bind(&spec).await.unwrap();
    drop(first);
    assert!(path.exists(), "not the first listener's file any more");
    drop(newcomer);
    assert!(!path.exists(), "removed by its own listener");
}

#[tokio::test]
async fn binds_every_spelling_of_a_socket() {
    for spec in [
        "inet:0@127.0.0.1",
        "inet:127.0.0.1:0",
        "inet:0@[127.0.0.1]",
        "inet6:0@[::1]",
        "inet:[::1]:0",
        "INET:0@localhost",
    ] {
        let l = milterkit::bind(spec)
            .await
            .unwrap_or_else(|e| panic!("{spec}: {e}"));
        assert!(l.local_spec().is_ok());
    }
    assert!(milterkit::bind("tcp:0@127.0.0.1").await.is_err());
    assert!(milterkit::bind("inet:notaport@127.0.0.1").await.is_err());
}

#[test]
fn reads_service_names_from_etc_services() {
    let services = std::fs::read_to_string("/etc/services").unwrap_or_default();
    let parsed = "inet:smtp@127.0.0.1".parse::<milterkit::SocketSpec>();
    if services
        .lines()
        .any(|l| l.starts_with("smtp\t") || l.starts_with("smtp "))
    {
        assert_eq!(parsed.unwrap().to_string(), "inet:25@[127.0.0.1]");
    } else {
        assert!(parsed.is_err());
    }
}

#[tokio::test]
async fn binds_with_a_chosen_backlog_on_tcp_and_unix() {
    for spec in ["inet:0@127.0.0.1".to_owned(), unix_path("backlog.sock")] {
        let listener = milterkit::bind_with_backlog(&spec, 20).await.unwrap();
        let bound = listener.local_spec().unwrap().to_string();
        let server = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            let milter = Scripted::new(Script::default());
            milterkit::serve_connection(stream, milter, &milterkit::Config::default()).await
        });
        let mut conn = Connection::open(&bound, Profile::postfix()).await.unwrap();
        let out = conn.run(&tx()).await.unwrap();
        assert_eq!(out.verdict, Some(Verdict::Accept), "{spec}");
        conn.quit().await.unwrap();
        server.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn a_unix_socket_gets_the_mode_and_owner_asked_for() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let spec = unix_path("mode.sock");
    let path = spec.trim_start_matches("unix:").to_owned();
    let listener = milterkit::bind(&spec).await.unwrap();
    listener.set_permissions(0o660).unwrap();
    let meta = std::fs::metadata(&path).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    // Giving it to the owner it already has works for anyone; another owner needs root.
    listener
        .set_owner(Some(meta.uid()), Some(meta.gid()))
        .unwrap();
    let tcp = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
    assert!(tcp.set_permissions(0o600).is_ok(), "no effect on TCP");
}
