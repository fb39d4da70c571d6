//! Graceful shutdown: messages in flight finish, new ones get the fail-safe, nothing is lost.

use std::future::IntoFuture;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use milterkit::{Decision, Milter, Stage};
use tokio::sync::oneshot;

use crate::support::gate::Gate;
use crate::support::served::Served;

async fn wait_for(counter: &AtomicU32, n: u32) {
    tokio::time::timeout(Duration::from_secs(30), async {
        while counter.load(Ordering::SeqCst) < n {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("messages arrive");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn graceful_shutdown_completes_all_20_messages_in_flight() {
    let (open_gate, gate) = Gate::closed();
    let config = milterkit::Config {
        handler_timeout: Duration::from_secs(60),
        ..milterkit::Config::default()
    };
    let mut server = serve_gate(&gate, config).await;
    let spec = server.spec.clone();
    let clients: Vec<_> = (0..20)
        .map(|i| {
            let spec = spec.clone();
            tokio::spawn(async move {
                let mut conn = Connection::open(&spec, Profile::postfix()).await.unwrap();
                let tx = Transaction::new().to(format!("<rcpt{i}@example.net>"));
                let out = conn.run(&tx).await.unwrap();
                conn.quit().await.unwrap();
                out
            })
        })
        .collect();
    wait_for(&gate.arrived, 20).await;
    server.shutdown();
    // The listener closes: no new connection is taken.
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(Connection::open(&spec, Profile::postfix()).await.is_err());
    open_gate.send(true).unwrap();
    for c in clients {
        let out = c.await.unwrap();
        assert_eq!(out.verdict, Some(Verdict::Accept));
        assert_eq!(out.decision(Stage::Eom), Some(&Decision::Continue));
        assert_eq!(out.modifications.len(), 1);
    }
    // serve returns once every connection ended.
    server.ended(Duration::from_secs(30)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_message_during_shutdown_gets_the_fail_safe() {
    let (open_gate, gate) = Gate::closed();
    let mut server = serve_gate(&gate, milterkit::Config::default()).await;
    let mut conn = Connection::open(&server.spec, Profile::sendmail())
        .await
        .unwrap();
    let first = tokio::spawn(async move {
        let out = conn
            .run(&Transaction::new().to("<a@example.net>"))
            .await
            .unwrap();
        (conn, out)
    });
    wait_for(&gate.arrived, 1).await;
    server.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    open_gate.send(true).unwrap();
    let (mut conn, out) = first.await.unwrap();
    assert_eq!(
        out.verdict,
        Some(Verdict::Accept),
        "the message in flight finishes"
    );
    let second = conn
        .run(&Transaction::new().to("<b@example.net>"))
        .await
        .unwrap();
    assert_eq!(second.decision(Stage::Mail), Some(&Decision::Tempfail));
    assert_eq!(
        second.verdict,
        Some(Verdict::Tempfail(None)),
        "retried later, not lost"
    );
    conn.quit().await.unwrap();
    server.ended(Duration::from_secs(60)).await.unwrap();
}

/// Serves `gate` on a TCP port of 127.0.0.1 with `config`.
async fn serve_gate(gate: &Gate, config: milterkit::Config) -> Served {
    let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
    let g = gate.clone();
    Served::spawn(listener, move || g.clone(), config)
}

/// No handlers: connections that negotiate and then wait.
#[derive(Default)]
struct Quiet;

impl Milter for Quiet {
    type Message = ();
}

/// Idle connections (some past the idle release after 1 s of quiet, some not) see every step of
/// a shutdown at once: with no grace period the serve loop ends within a second, every round. (A
/// connection that checked the shutdown state before registering for its changes, or trusted an
/// earlier registration, slept through `Closing` and even `Abandon`, until its read timeout.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_connections_wake_for_every_step_of_a_shutdown() {
    for (round, idle_ms) in [(0, 20), (1, 1200), (2, 20), (3, 1200)] {
        let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
        let spec = listener.local_spec().unwrap().to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let config = milterkit::Config {
            grace_period: Duration::ZERO,
            ..milterkit::Config::default()
        };
        let served = tokio::spawn(
            milterkit::serve(listener, Quiet::default)
                .with_config(config)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .into_future(),
        );
        let mut conns = Vec::new();
        for _ in 0..200 {
            conns.push(Connection::open(&spec, Profile::postfix()).await.unwrap());
        }
        tokio::time::sleep(Duration::from_millis(idle_ms)).await;
        let started = std::time::Instant::now();
        stop.send(()).unwrap();
        tokio::time::timeout(Duration::from_secs(30), served)
            .await
            .unwrap_or_else(|_| panic!("round {round}: shutdown still running after 30 s"))
            .unwrap()
            .unwrap();
        let took = started.elapsed();
        assert!(
            took < Duration::from_secs(1),
            "round {round} (idle {idle_ms} ms): shutdown took {took:?}"
        );
        drop(conns);
    }
}
