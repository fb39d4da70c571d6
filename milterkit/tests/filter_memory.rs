//! A 50 MiB body through the whole-message layer with a 1 MiB memory limit, over a socket: the
//! process's peak resident memory grows by less than 16 MiB (the body goes to a temporary file),
//! and the filter still reads all of it. One test in its own process, so nothing else counts.
#![cfg(feature = "filter")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::io::Read;

use bytes::Bytes;
use milterkit::filter::{Filter, Filtered, Options, Transaction};
use milterkit::mta::{Connection, Profile};
use milterkit::proto::command::{Connect, Envelope, Family};
use milterkit::{Actions, Decision, Modification, Result};

const CHUNK: usize = 65_535;
const CHUNKS: usize = 800; // 52,428,000 bytes
const BOUND_KIB: u64 = 16 * 1024;

/// The process's peak resident memory so far, in KiB (`VmHWM`; `getrusage`'s `ru_maxrss` did
/// not follow it here).
fn peak_kib() -> u64 {
    testkit::status_kib("VmHWM:").expect("VmHWM in /proc/self/status")
}

/// Counts the body's bytes and lines by reading it in small pieces; stamps the count.
struct Counter;

impl Filter for Counter {
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
        assert!(tx.body().is_spooled());
        let mut reader = tx.body().reader();
        let (mut bytes, mut lines) = (0u64, 0u64);
        let mut buf = [0; 8192];
        loop {
            let n = reader.read(&mut buf)?;
            if n == 0 {
                break;
            }
            bytes += n as u64;
            lines += buf[..n].iter().filter(|&&c| c == b'\n').count() as u64;
        }
        assert_eq!(bytes, tx.body().len());
        tx.add_header("X-Body", format!("{bytes} bytes, {lines} lines"))?;
        Ok(Decision::Continue)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_50_mib_body_with_a_1_mib_memory_limit_stays_under_16_mib_of_peak_memory() {
    let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
    let spec = listener.local_spec().unwrap().to_string();
    let milter = Filtered::new(Counter, Options::default().memory_limit(1 << 20));
    tokio::spawn(milterkit::serve(listener, move || milter.clone()).into_future());

    let mut line = b"0123456789abcdefghijklmnopqrstuvwxyz0123456789abcdefghijklmnopqrstuvwxyz\r\n"
        .repeat(CHUNK / 74 + 1);
    line.truncate(CHUNK);
    let chunk = Bytes::from(line);
    let mut mta = Connection::open(&spec, Profile::postfix()).await.unwrap();
    mta.connect(Connect {
        hostname: "client.example".into(),
        family: Family::Inet,
        port: 4711,
        address: "192.0.2.7".into(),
    })
    .await
    .unwrap();
    mta.helo("client.example").await.unwrap();
    mta.mail(Envelope::new("<a@example.org>")).await.unwrap();
    mta.rcpt(Envelope::new("<b@example.org>")).await.unwrap();
    mta.header("Subject", "big").await.unwrap();
    let before = peak_kib();
    for _ in 0..CHUNKS {
        mta.body(chunk.clone()).await.unwrap();
    }
    let eom = mta.eom().await.unwrap();
    let after = peak_kib();
    assert_eq!(eom.decision, Some(Decision::Continue));
    let lines = chunk.iter().filter(|&&c| c == b'\n').count() * CHUNKS;
    assert_eq!(
        eom.modifications,
        [Modification::AddHeader {
            name: "X-Body".into(),
            value: format!("{} bytes, {lines} lines", CHUNK * CHUNKS).into(),
        }]
    );
    let grew = after.saturating_sub(before);
    eprintln!("filter_memory: {} byte body, peak resident memory grew by {grew} KiB (bound {BOUND_KIB} KiB)", CHUNK * CHUNKS);
    assert!(grew < BOUND_KIB, "peak resident memory grew by {grew} KiB");
}
