//! `milterkit bench`: Postfix-like load on a milter, with throughput and latency.

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use hdrhistogram::Histogram;
use milterkit::mta::{Transaction, Verdict};
use milterkit::SocketSpec;
use serde_json::json;
use tokio::time::Instant;

use crate::error::{chain, print, CliError};
use crate::ProfileName;

/// Arguments of `milterkit bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The milter's socket.
    socket: String,
    /// Connections open at once, each running messages one after another.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u32).range(1..))]
    connections: u32,
    /// Messages in all (ignored with --duration).
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u64).range(1..))]
    messages: u64,
    /// Body size of each message, in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Run for this many seconds instead of a number of messages; bounds the whole run,
    /// connecting and negotiating included.
    #[arg(long, value_parser = crate::seconds)]
    duration: Option<Duration>,
    /// Longest wait, in seconds, to connect, to negotiate, and for each reply. Default: Postfix's,
    /// 30 s to connect and negotiate, 300 s per reply.
    #[arg(long, value_parser = crate::seconds)]
    timeout: Option<Duration>,
    /// Messages per connection before it is closed and reopened (1 = connection churn; 0 = keep
    /// each connection for the whole run).
    #[arg(long, default_value_t = 0)]
    per_connection: u64,
    /// Which MTA to imitate.
    #[arg(long, value_enum, default_value = "postfix")]
    profile: ProfileName,
    /// Print JSON instead of text.
    #[arg(long)]
    json: bool,
}

/// What the workers share.
#[derive(Default)]
struct Shared {
    started: AtomicU64,
    done: AtomicU64,
    errors: AtomicU64,
}

/// Errors one connection's worker may meet before it gives up.
const MAX_ERRORS: u64 = 100;

/// Latencies are recorded in microseconds, from 1 µs to an hour, to 3 significant figures.
const LATENCY_MAX_US: u64 = 3_600_000_000;

/// Errors counted by kind, with the first message of each kind.
#[derive(Debug, Default)]
struct Errors(BTreeMap<String, (u64, String)>);

impl Errors {
    fn add(&mut self, kind: &str, message: String) {
        self.0
            .entry(kind.to_owned())
            .or_insert_with(|| (0, message))
            .0 += 1;
    }

    fn total(&self) -> u64 {
        self.0.values().map(|(n, _)| n).sum()
    }

    fn merge(&mut self, other: Errors) {
        for (kind, (n, example)) in other.0 {
            self.0.entry(kind).or_insert_with(|| (0, example)).0 += n;
        }
    }
}

/// One worker's results.
struct Tally {
    /// Microseconds per message.
    latencies: Histogram<u64>,
    accepted: u64,
    refused: u64,
    errors: Errors,
}

impl Tally {
    fn new() -> Result<Tally, hdrhistogram::CreationError> {
        Ok(Tally {
            latencies: Histogram::new_with_bounds(1, LATENCY_MAX_US, 3)?,
            accepted: 0,
            refused: 0,
            errors: Errors::default(),
        })
    }
}

/// A message of a few headers and a body of `size` bytes in 76-character lines.
pub(crate) fn message(size: usize) -> Bytes {
    let mut m = b"From: Bench <bench@example.org>\r\nTo: <rcpt@example.net>\r\nSubject: load test\r\nMessage-ID: <bench@example.org>\r\nMIME-Version: 1.0\r\nContent-Type: text/plain\r\n\r\n".to_vec();
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopq\r\n";
    while m.len() < size + 150 {
        m.extend_from_slice(line);
    }
    Bytes::from(m)
}

/// `f`, unless `deadline` passes first (then `None`).
async fn within<F: Future>(deadline: Option<Instant>, f: F) -> Option<F::Output> {
    match deadline {
        Some(d) => tokio::time::timeout_at(d, f).await.ok(),
        None => Some(f.await),
    }
}

async fn worker(
    args: Arc<BenchArgs>,
    shared: Arc<Shared>,
    deadline: Option<Instant>,
    mut tally: Tally,
) -> Tally {
    let tx = Transaction::new()
        .from("<bench@example.org>")
        .to("<rcpt@example.net>")
        .message(message(args.size));
    let failure = |tally: &mut Tally, kind: &str, message: String| {
        shared.errors.fetch_add(1, Ordering::Relaxed);
        tally.errors.add(kind, message);
        tally.errors.total() > MAX_ERRORS
    };
    'connections: loop {
        let opened = crate::open(&args.socket, args.profile.profile(), args.timeout);
        let Some(opened) = within(deadline, opened).await else {
            return tally;
        };
        let mut conn = match opened {
            // The resulting message is not looked at: not put together either.
            Ok(c) => c.without_delivery(),
            Err(e) => {
                if failure(&mut tally, e.kind(), chain(&e)) {
                    return tally;
                }
                let pause = tokio::time::sleep(Duration::from_millis(10));
                if within(deadline, pause).await.is_none() {
                    return tally;
                }
                continue;
            }
        };
        let mut on_this = 0;
        loop {
            let more = match deadline {
                Some(d) => Instant::now() < d,
                None => shared.started.fetch_add(1, Ordering::Relaxed) < args.messages,
            };
            if !more {
                let _ = tokio::time::timeout(Duration::from_secs(1), conn.quit()).await;
                return tally;
            }
            let t0 = Instant::now();
            let Some(result) = within(deadline, conn.run(&tx)).await else {
                return tally;
            };
            match result {
                Ok(out) => match out.closed {
                    None => {
                        let us = u64::try_from(t0.elapsed().as_micros()).unwrap_or(u64::MAX);
                        tally.latencies.saturating_record(us.max(1));
                        match out.verdict {
                            Some(Verdict::Accept | Verdict::Discard) => tally.accepted += 1,
                            _ => tally.refused += 1,
                        }
                        shared.done.fetch_add(1, Ordering::Relaxed);
                    }
                    Some(why) => {
                        if failure(&mut tally, "closed", why) {
                            return tally;
                        }
                        continue 'connections;
                    }
                },
                Err(e) => {
                    if failure(&mut tally, e.kind(), chain(&e)) {
                        return tally;
                    }
                    continue 'connections;
                }
            }
            on_this += 1;
            if args.per_connection > 0 && on_this >= args.per_connection {
                let _ = conn.quit().await;
                continue 'connections;
            }
        }
    }
}

/// Runs the load and prints the report; the exit status is 1 if any message failed or none
/// completed.
pub(crate) async fn bench(args: BenchArgs) -> Result<u8, milterkit::BoxError> {
    // A spec that does not parse fails every connection the same way: say so once.
    args.socket.parse::<SocketSpec>().map_err(CliError::Open)?;
    let args = Arc::new(args);
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let deadline = args.duration.map(|d| start + d);
    let mut workers = Vec::new();
    for _ in 0..args.connections.max(1) {
        let tally = Tally::new()?;
        workers.push(tokio::spawn(worker(
            args.clone(),
            shared.clone(),
            deadline,
            tally,
        )));
    }
    let live = std::io::stderr().is_terminal() && !args.json;
    let ticker = live.then(|| {
        let shared = shared.clone();
        tokio::spawn(async move {
            let mut last = 0;
            loop {
                tokio::time::sleep(Duration::from_millis(500)).await;
                let done = shared.done.load(Ordering::Relaxed);
                let rate = (done - last) * 2;
                last = done;
                eprint!(
                    "\r{done} messages, {rate}/s, {} errors   ",
                    shared.errors.load(Ordering::Relaxed)
                );
                let _ = std::io::stderr().flush();
            }
        })
    });
    let mut all = Tally::new()?;
    for w in workers {
        let t = w.await?;
        all.latencies.add(&t.latencies)?;
        all.accepted += t.accepted;
        all.refused += t.refused;
        all.errors.merge(t.errors);
    }
    let elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
        eprintln!();
    }
    let done = all.latencies.len();
    let rate = done as f64 / elapsed.as_secs_f64();
    let errors = all.errors.total();
    // Percentiles in milliseconds; none when no message completed.
    let latency = (done > 0).then(|| {
        let ms = |us: u64| us as f64 / 1000.0;
        let h = &all.latencies;
        [
            ms(h.value_at_quantile(0.50)),
            ms(h.value_at_quantile(0.90)),
            ms(h.value_at_quantile(0.99)),
            ms(h.max()),
        ]
    });
    if args.json {
        let report = json!({
            "socket": args.socket,
            "connections": args.connections,
            "body_bytes": args.size,
            "per_connection": args.per_connection,
            "messages": done,
            "accepted": all.accepted,
            "refused": all.refused,
            "errors": errors,
            "seconds": elapsed.as_secs_f64(),
            "messages_per_second": rate,
            "latency_ms": latency.map(|[p50, p90, p99, max]| {
                json!({"p50": p50, "p90": p90, "p99": p99, "max": max})
            }),
            "error_kinds": all.errors.0.iter().map(|(kind, (n, example))| {
                json!({"kind": kind, "count": n, "example": example})
            }).collect::<Vec<_>>(),
        });
        print(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        let mut text = format!(
            "{done} messages in {:.2} s over {} connection(s): {rate:.0} messages/s\n",
            elapsed.as_secs_f64(),
            args.connections
        );
        text += &match latency {
            Some([p50, p90, p99, max]) => format!(
                "latency: p50 {p50:.3} ms, p90 {p90:.3} ms, p99 {p99:.3} ms, max {max:.3} ms\n"
            ),
            None => "latency: none (no message completed)\n".to_owned(),
        };
        text += &format!(
            "verdicts: {} accepted, {} refused; errors: {errors}\n",
            all.accepted, all.refused
        );
        for (kind, (n, example)) in &all.errors.0 {
            text += &format!("  {n} × {kind}, e.g. {example}\n");
        }
        print(&text)?;
    }
    Ok(if errors == 0 && done > 0 { 0 } else { 1 })
}
