//! Metrics: a real transaction counted, scraped over HTTP from the endpoint.

use std::collections::HashMap;
use std::time::Duration;

use milterkit::metrics::Metrics;
use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use milterkit::{Decision, Stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::scripted::{Edit, Script, Scripted};
use crate::support::served::Served;

/// GETs `/metrics` and returns each sample line as `name{labels}` → value.
async fn scrape(addr: std::net::SocketAddr) -> HashMap<String, f64> {
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .unwrap();
    let mut response = String::new();
    s.read_to_string(&mut response).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
    assert!(head.contains("Content-Type: application/openmetrics-text"));
    assert!(body.ends_with("# EOF\n"), "{body}");
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let (name, value) = l.rsplit_once(' ').unwrap();
            (name.to_owned(), value.parse().unwrap())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_scrape_after_transactions_shows_their_numbers() {
    let metrics = Metrics::new();
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    tokio::spawn(metrics.clone().serve(http));
    let config = || milterkit::Config {
        metrics: Some(metrics.clone()),
        ..Default::default()
    };

    // Before anything: the families exist, nothing counted.
    let before = scrape(addr).await;
    assert_eq!(before["milter_connections_total"], 0.0);
    assert_eq!(before["milter_messages_total"], 0.0);

    // Two messages on one connection: carol refused at RCPT, a header and a quarantine at EOM.
    let mut script = Script {
        changes: vec![
            Edit::AddHeader("X-Checked", "yes"),
            Edit::Quarantine("look"),
        ],
        ..Script::default()
    };
    script.rcpt.insert("<carol@example.net>", Decision::Reject);
    script.decisions.insert(Stage::Eom, Decision::Accept);
    let good = Served::with_config("inet:0@127.0.0.1", Scripted::new(script), config()).await;
    let tx = Transaction::new()
        .to("<bob@example.net>")
        .to("<carol@example.net>")
        .message("Subject: hi\r\n\r\nhello\r\n");
    let mut conn = Connection::open(&good.spec, Profile::postfix())
        .await
        .unwrap();
    for _ in 0..2 {
        let out = conn.run(&tx).await.unwrap();
        assert_eq!(out.verdict, Some(Verdict::Accept));
        assert_eq!(out.modifications.len(), 2);
    }
    conn.quit().await.unwrap();

    // A handler that fails at HELO: fail-safe tempfail, the connection ends in error.
    let failing = Script {
        error_at: Some(Stage::Helo),
        ..Script::default()
    };
    let bad = Served::with_config("inet:0@127.0.0.1", Scripted::new(failing), config()).await;
    let mut conn = Connection::open(&bad.spec, Profile::postfix())
        .await
        .unwrap();
    let out = conn.run(&tx).await.unwrap();
    assert!(matches!(out.verdict, Some(Verdict::Tempfail(_))), "{out:?}");

    // The server counts a close when its task ends: wait for both.
    let mut m = scrape(addr).await;
    for _ in 0..100 {
        if m["milter_connections_open"] == 0.0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
        m = scrape(addr).await;
    }
    let get = |k: &str| *m.get(k).unwrap_or_else(|| panic!("no {k} in {m:#?}"));
    for (key, want) in [
        ("milter_connections_total", 2.0),
        ("milter_connections_open", 0.0),
        ("milter_messages_total", 2.0),
        (
            r#"milter_decisions_total{stage="RCPT",decision="reject"}"#,
            2.0,
        ),
        (
            r#"milter_decisions_total{stage="RCPT",decision="continue"}"#,
            2.0,
        ),
        (
            r#"milter_decisions_total{stage="EOM",decision="accept"}"#,
            2.0,
        ),
        (
            r#"milter_decisions_total{stage="HELO",decision="tempfail"}"#,
            1.0,
        ),
        (r#"milter_modifications_total{kind="add_header"}"#, 2.0),
        (r#"milter_modifications_total{kind="quarantine"}"#, 2.0),
        (r#"milter_fail_safe_replies_total{stage="HELO"}"#, 1.0),
        (r#"milter_errors_total{kind="handler"}"#, 1.0),
        (r#"milter_handler_duration_seconds_count{stage="EOM"}"#, 2.0),
        (
            r#"milter_handler_duration_seconds_count{stage="RCPT"}"#,
            4.0,
        ),
    ] {
        assert_eq!(get(key), want, "{key}");
    }
    assert!(get(r#"milter_handler_duration_seconds_sum{stage="EOM"}"#) > 0.0);
    good.stop().await;
    bad.stop().await;
}

#[tokio::test]
async fn the_endpoint_refuses_other_methods_and_oversized_requests() {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    tokio::spawn(Metrics::new().serve(http));
    /// Sends `request` on a new connection; the whole answer.
    async fn answer(addr: std::net::SocketAddr, request: &[u8]) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request).await.unwrap();
        let mut r = String::new();
        s.read_to_string(&mut r).await.unwrap();
        r
    }
    let r = answer(addr, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").await;
    assert!(r.starts_with("HTTP/1.1 405"), "{r}");

    // Bare LF line ends (a hand-typed request) are answered at once.
    let r = answer(addr, b"GET /metrics HTTP/1.0\n\n").await;
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");

    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let _ = s.write_all(&[b'a'; 20_000]).await;
    let mut r = Vec::new();
    let _ = s.read_to_end(&mut r).await;
    assert!(r.is_empty(), "an endless request line gets no answer");
    // Still serving.
    assert!(scrape(addr).await.contains_key("milter_messages_total"));
}

/// Clients that connect and say nothing take the endpoint's 16 slots for 10 s at most: the 17th
/// request waits for a slot, and is then answered; the silent ones are closed. (Paused time: the
/// 10 s pass at once.)
#[tokio::test(start_paused = true)]
async fn silent_clients_hold_the_endpoint_for_ten_seconds_at_most() {
    let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = http.local_addr().unwrap();
    tokio::spawn(Metrics::new().serve(http));
    let mut silent = Vec::new();
    for _ in 0..16 {
        silent.push(tokio::net::TcpStream::connect(addr).await.unwrap());
    }
    let started = tokio::time::Instant::now();
    let scraped = scrape(addr).await;
    assert!(scraped.contains_key("milter_messages_total"));
    let waited = started.elapsed();
    assert!(
        waited >= Duration::from_secs(10) && waited < Duration::from_secs(11),
        "the 17th request waits for the first slot to time out: {waited:?}"
    );
    for mut s in silent {
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        assert!(rest.is_empty(), "closed without an answer");
    }
}

/// A connection whose future is dropped before its end (here by a timeout around
/// `serve_connection`) is still counted closed, as `cancelled`.
#[tokio::test]
async fn a_cancelled_connection_is_counted_closed() {
    let metrics = Metrics::new();
    let config = milterkit::Config {
        metrics: Some(metrics.clone()),
        ..Default::default()
    };
    let (_mta, milter) = tokio::io::duplex(1024);
    let served = milterkit::serve_connection(milter, Scripted::new(Script::default()), &config);
    assert!(tokio::time::timeout(Duration::from_millis(50), served)
        .await
        .is_err());
    let text = metrics.encode();
    assert!(text.contains("\nmilter_connections_total 1\n"), "{text}");
    assert!(text.contains("\nmilter_connections_open 0\n"), "{text}");
    assert!(
        text.contains("milter_errors_total{kind=\"cancelled\"} 1"),
        "{text}"
    );
}
