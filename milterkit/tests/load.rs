//! Load: accept failures when file descriptors run out, and graceful shutdown with 500 messages
//! in flight. Its own test binary: it changes this process's file limit with `prlimit`. (The soak
//! of 10,000 connections is milterkit-cli/tests/soak.rs: its clients run in another process.)
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use milterkit::{Config, Decision, Modification, Stage};
use tokio::sync::{watch, Mutex};

mod support;

use support::gate::Gate;
use support::served::Served;

/// Tests here change the process-wide file limit: one at a time.
static SERIAL: Mutex<()> = Mutex::const_new(());

fn set_nofile(soft: u64) {
    let pid = std::process::id().to_string();
    // Raising the hard limit too needs root (the tests run as root in CI).
    let limit = if soft > hard_nofile() {
        format!("--nofile={soft}:{soft}")
    } else {
        format!("--nofile={soft}:")
    };
    let ok = Command::new("prlimit")
        .args(["--pid", &pid, &limit])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "prlimit could not set the file limit to {soft} (util-linux is needed)"
    );
}

fn hard_nofile() -> u64 {
    testkit::hard_limit("Max open files").unwrap_or(4096)
}

/// A [`Gate`] served, with its count of messages at end of message and the sender that opens it.
struct Stamped {
    server: Served,
    arrived: Arc<AtomicU32>,
    open: watch::Sender<bool>,
}

async fn serve(config: Config, gate_open: bool) -> Stamped {
    let (open, gate) = Gate::new(gate_open);
    let arrived = gate.arrived.clone();
    let listener = milterkit::bind_with_backlog("inet:0@127.0.0.1", 16_384)
        .await
        .unwrap();
    Stamped {
        server: Served::spawn(listener, move || gate.clone(), config),
        arrived,
        open,
    }
}

fn tx() -> Transaction {
    Transaction::new().to("<rcpt@example.net>")
}

fn right(out: &milterkit::mta::Outcome) -> bool {
    out.verdict == Some(Verdict::Accept)
        && out.decision(Stage::Eom) == Some(&Decision::Continue)
        && out.modifications
            == [Modification::AddHeader {
                name: "X-Gate".into(),
                value: "passed".into(),
            }]
}

/// Log lines of this test binary.
static LOG: std::sync::Mutex<Vec<u8>> = std::sync::Mutex::new(Vec::new());

/// Sends log lines to [`LOG`].
struct LogWriter;

impl std::io::Write for LogWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        LOG.lock().unwrap().extend_from_slice(b);
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn running_out_of_file_descriptors_is_survived() {
    let _one = SERIAL.lock().await;
    let _ = tracing_subscriber::fmt()
        .with_writer(|| LogWriter)
        .with_ansi(false)
        .with_max_level(tracing::Level::WARN)
        .try_init();
    let mut s = serve(Config::default(), true).await;
    // The spec reads inet:PORT@[127.0.0.1].
    let port: u16 = s
        .server
        .spec
        .split(':')
        .nth(1)
        .unwrap()
        .split('@')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    set_nofile(64);
    // Another process opens 200 connections: this one runs out of descriptors while accepting.
    let clients = Command::new("prlimit")
        .args([
            "--nofile=4096:",
            "python3",
            "-c",
            &format!(
                "import socket,time\ns=[]\nfor _ in range(200):\n    s.append(socket.create_connection(('127.0.0.1',{port})))\ntime.sleep(2)\n"
            ),
        ])
        .status();
    set_nofile(hard_nofile());
    assert!(
        clients.map(|c| c.success()).unwrap_or(false),
        "python3 opened its connections"
    );
    // The accept loop backs off and goes on: a normal transaction works again.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let log = String::from_utf8_lossy(&LOG.lock().unwrap()).into_owned();
    let failures = log.matches("accept failed").count();
    assert!(failures > 0, "descriptors ran out while accepting: {log}");
    assert!(log.contains("Too many open files"), "{log}");
    println!("accept failed {failures} times, logged with back-off");
    let mut conn = Connection::open(&s.server.spec, Profile::postfix())
        .await
        .unwrap();
    let out = conn.run(&tx()).await.unwrap();
    assert!(right(&out), "{out:?}");
    conn.quit().await.unwrap();
    s.server.shutdown();
    s.server.ended(Duration::from_secs(60)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_with_500_messages_in_flight_loses_none() {
    let _one = SERIAL.lock().await;
    set_nofile(hard_nofile());
    let config = Config {
        handler_timeout: Duration::from_secs(120),
        ..Config::default()
    };
    let mut s = serve(config, false).await;
    let clients: Vec<_> = (0..500)
        .map(|_| {
            let spec = s.server.spec.clone();
            tokio::spawn(async move {
                let mut conn = Connection::open(&spec, Profile::postfix()).await.unwrap();
                let out = conn.run(&tx()).await.unwrap();
                conn.quit().await.unwrap();
                out
            })
        })
        .collect();
    let started = Instant::now();
    while s.arrived.load(Ordering::SeqCst) < 500 {
        assert!(
            started.elapsed() < Duration::from_secs(120),
            "500 messages reach end of message"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    s.server.shutdown();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.open.send(true).unwrap();
    let mut delivered = 0;
    for c in clients {
        let out = c.await.unwrap();
        assert!(right(&out), "{out:?}");
        delivered += 1;
    }
    assert_eq!(delivered, 500, "none lost");
    s.server.ended(Duration::from_secs(120)).await.unwrap();
}
