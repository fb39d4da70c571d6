//! Logs: a span per connection with its id and peer, and each handler failure at warn. Its own
//! test binary, so that the global subscriber sees every callsite.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};

use milterkit::mta::{Connection, Profile, Transaction};
use milterkit::proto::{Command, Envelope, Offer};
use milterkit::{Config, Decision, Helo, Milter, Result, Stage};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Fails at HELO.
#[derive(Default)]
struct FailsAtHelo;

impl Milter for FailsAtHelo {
    type Message = ();
    async fn helo(&mut self, _: Helo<'_>) -> Result<Decision> {
        Err("scripted error at HELO".into())
    }
}

/// Collects log output.
#[derive(Clone, Default)]
struct Buf(Arc<Mutex<Vec<u8>>>);

impl Write for Buf {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test]
async fn the_connection_span_names_its_id_and_peer_and_failures_are_logged() {
    let buf = Buf::default();
    let writer = buf.clone();
    tracing_subscriber::fmt()
        .with_writer(move || writer.clone())
        .with_ansi(false)
        .with_max_level(tracing::Level::DEBUG)
        .init();
    let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
    let spec = listener.local_spec().unwrap().to_string();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(std::future::IntoFuture::into_future(
        milterkit::serve(listener, FailsAtHelo::default)
            .with_config(Config::default())
            .with_graceful_shutdown(async {
                stopped.await.ok();
            }),
    ));
    let mut conn = Connection::open(&spec, Profile::postfix()).await.unwrap();
    let out = conn
        .run(&Transaction::new().to("<b@example.net>"))
        .await
        .unwrap();
    assert_eq!(out.decision(Stage::Helo), Some(&Decision::Tempfail));
    // A command libmilter would drop while the MTA waits for its reply: the connection closes
    // and the reason is logged once, with its cause, in the connection's span.
    let (port, host) = spec.trim_start_matches("inet:").split_once('@').unwrap();
    let host = host.trim_matches(|c| c == '[' || c == ']');
    let mut raw = tokio::net::TcpStream::connect((host, port.parse::<u16>().unwrap()))
        .await
        .unwrap();
    let mut wire = bytes::BytesMut::new();
    for cmd in [
        Command::Optneg(Offer::default()),
        Command::Connect(milterkit::proto::Connect {
            hostname: "client".into(),
            family: milterkit::proto::Family::Unknown,
            port: 0,
            address: "".into(),
        }),
        Command::Mail(Envelope::new("<a@example.org>")),
        Command::Rcpt(Envelope::new("<b@example.net>")),
        Command::Unknown {
            line: "XFOO".into(),
        },
        Command::Header {
            name: "Subject".into(),
            value: "hi".into(),
        },
    ] {
        cmd.encode(&mut wire);
    }
    raw.write_all(&wire).await.unwrap();
    let mut answers = Vec::new();
    raw.read_to_end(&mut answers).await.unwrap();
    // A peer that resets the connection in the middle of a frame: one line, at debug.
    let mut reset = tokio::net::TcpStream::connect((host, port.parse::<u16>().unwrap()))
        .await
        .unwrap();
    let mut half = bytes::BytesMut::new();
    Command::Optneg(Offer::default()).encode(&mut half);
    reset.write_all(&half[..5]).await.unwrap();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    #[allow(deprecated)] // SO_LINGER 0: the close sends RST, as a crashed peer's would
    reset.set_linger(Some(std::time::Duration::ZERO)).unwrap();
    drop(reset);
    tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    let log = String::from_utf8(buf.0.lock().unwrap().clone()).unwrap();
    let closed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("milter_conn{id=2") && l.contains("connection closed"))
        .collect();
    assert_eq!(closed.len(), 1, "{log}");
    assert!(closed[0].contains("WARN"), "{log}");
    assert!(
        closed[0].contains("error=protocol error: command 'L' out of order after UNKNOWN"),
        "{log}"
    );
    let ended: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("milter_conn{id=3") && l.contains("connection"))
        .collect();
    assert_eq!(ended.len(), 1, "{log}");
    assert!(
        ended[0].contains("DEBUG") && ended[0].contains("connection ended"),
        "{log}"
    );
    assert!(log.contains("milter_conn{id=1 peer=127.0.0.1:"), "{log}");
    assert!(log.contains("WARN"), "{log}");
    assert!(log.contains("handler failed; fail-safe reply"), "{log}");
    assert!(log.contains("stage=HELO"), "{log}");
}
