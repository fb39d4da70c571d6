//! Soak: many concurrent connections doing transactions for a while against a milter served in
//! this process; the load comes from `milterkit bench` in another process. Memory of the milter's
//! process is taken at the start, the middle and the end; no connection may get a wrong answer.
//!
//! Size from the environment: `MILTERKIT_SOAK_CONNECTIONS` (default 1,000) and
//! `MILTERKIT_SOAK_SECONDS` (default 5). The full setting, 10,000 connections for 60 s:
//! `MILTERKIT_SOAK_CONNECTIONS=10000 MILTERKIT_SOAK_SECONDS=60 cargo test --release -p milterkit-cli --test soak -- --nocapture`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use serde_json::Value;
use testkit::rss_kib;

mod support;

use support::{demo_milter, milterkit};

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn open_files_limit() -> u64 {
    testkit::soft_limit("Max open files").unwrap_or(1024)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn soak_many_connections_with_flat_memory_and_no_wrong_answer() {
    let n = env("MILTERKIT_SOAK_CONNECTIONS", 1_000);
    let seconds = env("MILTERKIT_SOAK_SECONDS", 5);
    assert!(
        open_files_limit() > n + 100,
        "the file limit allows {n} connections"
    );
    let listener = milterkit::bind_with_backlog("inet:0@127.0.0.1", 16_384)
        .await
        .unwrap();
    let served = demo_milter::Served::start(listener).unwrap();
    let start = rss_kib();
    let args = [
        "bench".to_owned(),
        served.spec.clone(),
        "--connections".to_owned(),
        n.to_string(),
        "--duration".to_owned(),
        seconds.to_string(),
        "--json".to_owned(),
    ];
    let bench = tokio::task::spawn_blocking(move || milterkit(&args));
    tokio::time::sleep(Duration::from_secs(seconds) / 2).await;
    let middle = rss_kib();
    let (_, out, err) = bench.await.unwrap();
    let end = rss_kib();
    served.stop().await.unwrap();
    let report: Value = serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {err}"));
    println!(
        "soak: {n} connections for {seconds} s: {} messages, {} accepted, {} refused, {} errors; milter RSS start {start} KiB, middle {middle} KiB, end {end} KiB",
        report["messages"], report["accepted"], report["refused"], report["errors"]
    );
    assert_eq!(report["errors"], 0, "{report}");
    assert_eq!(
        report["refused"], 0,
        "no connection got a wrong answer: {report}"
    );
    assert!(
        report["messages"].as_u64().unwrap() >= n,
        "every connection sent messages: {report}"
    );
    assert!(
        end <= middle + middle / 4 + 16 * 1024,
        "memory flat: middle {middle} KiB, end {end} KiB"
    );
}
