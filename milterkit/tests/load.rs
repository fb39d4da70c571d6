//! Load: accept failures when file descriptors run out, graceful shutdown with 500 messages in
//! flight, and a soak of many concurrent connections with memory measured at start, middle and
//! end. Its own test binary: it changes this process's file limit with `prlimit`.
//!
//! The soak's size comes from the environment: `MILTERKIT_SOAK_CONNECTIONS` (default 1,000) and
//! `MILTERKIT_SOAK_SECONDS` (default 5); the full setting is 10,000 connections for 60 s:
//! `MILTERKIT_SOAK_CONNECTIONS=10000 MILTERKIT_SOAK_SECONDS=60 cargo test --release -p milterkit --test load -- --nocapture soak`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::process::Command;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use milterkit::{Actions, Config, Decision, Eom, Milter, Modification, Result, Stage, Stages};
use tokio::sync::{oneshot, watch, Mutex};

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
    std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find(|l| l.starts_with("Max open files"))
        .and_then(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .and_then(|v| v.parse().ok())
        .unwrap_or(4096)
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Stamps every message; holds it at end of message until the gate opens.
#[derive(Clone)]
struct Stamp {
    arrived: Arc<AtomicU32>,
    gate: watch::Receiver<bool>,
}

impl Milter for Stamp {
    type Message = ();
    const STAGES: Stages = Stages::RCPT.union(Stages::EOM);
    const ACTIONS: Actions = Actions::ADD_HEADER;
    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut gate = self.gate.clone();
        gate.wait_for(|open| *open).await?;
        eom.add_header("X-Stamp", "1")?;
        Ok(Decision::Continue)
    }
}

struct Served {
    spec: String,
    stop: oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::result::Result<(), milterkit::Error>>,
    arrived: Arc<AtomicU32>,
    open: watch::Sender<bool>,
}

async fn serve(config: Config, gate_open: bool) -> Served {
    let (open, gate) = watch::channel(gate_open);
    let arrived = Arc::new(AtomicU32::new(0));
    let milter = Stamp {
        arrived: arrived.clone(),
        gate,
    };
    let listener = milterkit::bind_with_backlog("inet:0@127.0.0.1", 16_384)
        .await
        .unwrap();
    let spec = listener.local_spec().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let task = tokio::spawn(
        milterkit::serve(listener, move || milter.clone())
            .with_config(config)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .into_future(),
    );
    Served {
        spec,
        stop,
        task,
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
                name: "X-Stamp".into(),
                value: "1".into(),
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
    let s = serve(Config::default(), true).await;
    // The spec reads inet:PORT@[127.0.0.1].
    let port: u16 = s
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
    let mut conn = Connection::open(&s.spec, Profile::postfix()).await.unwrap();
    let out = conn.run(&tx()).await.unwrap();
    assert!(right(&out), "{out:?}");
    conn.quit().await.unwrap();
    s.stop.send(()).unwrap();
    s.task.await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_with_500_messages_in_flight_loses_none() {
    let _one = SERIAL.lock().await;
    set_nofile(hard_nofile());
    let config = Config {
        handler_timeout: Duration::from_secs(120),
        ..Config::default()
    };
    let s = serve(config, false).await;
    let clients: Vec<_> = (0..500)
        .map(|_| {
            let spec = s.spec.clone();
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
    s.stop.send(()).unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.open.send(true).unwrap();
    let mut delivered = 0;
    for c in clients {
        let out = c.await.unwrap();
        assert!(right(&out), "{out:?}");
        delivered += 1;
    }
    assert_eq!(delivered, 500, "none lost");
    s.task.await.unwrap().unwrap();
}

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_many_connections_with_flat_memory_and_no_wrong_answer() {
    let _one = SERIAL.lock().await;
    let n = env("MILTERKIT_SOAK_CONNECTIONS", 1_000);
    let seconds = env("MILTERKIT_SOAK_SECONDS", 5);
    set_nofile(hard_nofile().max(2 * n + 1000));
    assert!(
        hard_nofile() >= 2 * n + 100,
        "the file limit allows {n} connections (raise it as root)"
    );
    let s = serve(Config::default(), true).await;
    let sent = Arc::new(AtomicU64::new(0));
    let wrong = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let connected = Arc::new(AtomicU64::new(0));
    let start_rss = rss_kib();
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let clients: Vec<_> = (0..n)
        .map(|_| {
            let (spec, sent, wrong, failed, connected) = (
                s.spec.clone(),
                sent.clone(),
                wrong.clone(),
                failed.clone(),
                connected.clone(),
            );
            tokio::spawn(async move {
                let Ok(mut conn) = Connection::open(&spec, Profile::postfix()).await else {
                    failed.fetch_add(1, Ordering::Relaxed);
                    return;
                };
                connected.fetch_add(1, Ordering::Relaxed);
                // Every connection holds on until the end, doing a transaction now and then.
                while Instant::now() < deadline {
                    match conn.run(&tx()).await {
                        Ok(out) if right(&out) => {}
                        Ok(_) => {
                            wrong.fetch_add(1, Ordering::Relaxed);
                        }
                        Err(_) => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            return;
                        }
                    }
                    sent.fetch_add(1, Ordering::Relaxed);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                let _ = conn.quit().await;
            })
        })
        .collect();
    tokio::time::sleep(Duration::from_secs(seconds) / 2).await;
    let middle_rss = rss_kib();
    let middle_sent = sent.load(Ordering::Relaxed);
    for c in clients {
        c.await.unwrap();
    }
    let end_rss = rss_kib();
    s.stop.send(()).unwrap();
    s.task.await.unwrap().unwrap();
    let (sent, wrong, failed) = (
        sent.load(Ordering::Relaxed),
        wrong.load(Ordering::Relaxed),
        failed.load(Ordering::Relaxed),
    );
    println!(
        "soak: {n} connections ({} connected) for {seconds} s: {sent} messages ({middle_sent} by the middle), {wrong} wrong, {failed} failed; RSS start {start_rss} KiB, middle {middle_rss} KiB, end {end_rss} KiB (clients and server in one process)",
        connected.load(Ordering::Relaxed)
    );
    assert_eq!(wrong, 0, "no connection got a wrong answer");
    assert_eq!(failed, 0, "no connection failed");
    assert!(sent >= n, "every connection sent at least one message");
    assert!(
        end_rss <= middle_rss + middle_rss / 4 + 16 * 1024,
        "memory flat: middle {middle_rss} KiB, end {end_rss} KiB"
    );
}
