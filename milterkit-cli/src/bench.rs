//! `milterkit bench`: Postfix-like load on a milter, with throughput and latency.

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use milterkit::mta::{Connection, Transaction, Verdict};
use serde_json::json;

use crate::ProfileName;

/// Arguments of `milterkit bench`.
#[derive(Debug, clap::Args)]
pub(crate) struct BenchArgs {
    /// The milter's socket.
    socket: String,
    /// Connections open at once, each running messages one after another.
    #[arg(long, default_value_t = 10)]
    connections: usize,
    /// Messages in all (ignored with --duration).
    #[arg(long, default_value_t = 1000)]
    messages: u64,
    /// Body size of each message, in bytes.
    #[arg(long, default_value_t = 1024)]
    size: usize,
    /// Run for this many seconds instead of a number of messages.
    #[arg(long)]
    duration: Option<f64>,
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

/// One worker's results.
#[derive(Default)]
struct Tally {
    latencies: Vec<Duration>,
    accepted: u64,
    refused: u64,
    errors: Vec<String>,
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

async fn worker(args: Arc<BenchArgs>, shared: Arc<Shared>, deadline: Option<Instant>) -> Tally {
    let mut tally = Tally::default();
    let tx = Transaction::new()
        .from("<bench@example.org>")
        .to("<rcpt@example.net>")
        .message(message(args.size));
    'connections: loop {
        let mut conn = match Connection::open(&args.socket, args.profile.profile()).await {
            Ok(c) => c,
            Err(e) => {
                shared.errors.fetch_add(1, Ordering::Relaxed);
                tally.errors.push(format!("connect: {e}"));
                if tally.errors.len() > 100 {
                    return tally;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
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
                let _ = conn.quit().await;
                return tally;
            }
            let t0 = Instant::now();
            match conn.run(&tx).await {
                Ok(out) if out.closed.is_none() => {
                    tally.latencies.push(t0.elapsed());
                    match out.verdict {
                        Some(Verdict::Accept | Verdict::Discard) => tally.accepted += 1,
                        _ => tally.refused += 1,
                    }
                    shared.done.fetch_add(1, Ordering::Relaxed);
                }
                Ok(out) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    tally.errors.push(out.closed.unwrap_or_default());
                    continue 'connections;
                }
                Err(e) => {
                    shared.errors.fetch_add(1, Ordering::Relaxed);
                    tally.errors.push(e.to_string());
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

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 * p).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

/// Runs the load and prints the report; the exit status is 1 if any message failed.
pub(crate) async fn bench(args: BenchArgs) -> Result<u8, milterkit::BoxError> {
    let args = Arc::new(args);
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let deadline = args.duration.map(|s| start + Duration::from_secs_f64(s));
    let workers: Vec<_> = (0..args.connections.max(1))
        .map(|_| tokio::spawn(worker(args.clone(), shared.clone(), deadline)))
        .collect();
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
    let mut all = Tally::default();
    for w in workers {
        let t = w.await?;
        all.latencies.extend(t.latencies);
        all.accepted += t.accepted;
        all.refused += t.refused;
        all.errors.extend(t.errors);
    }
    let elapsed = start.elapsed();
    if let Some(t) = ticker {
        t.abort();
        eprintln!();
    }
    all.latencies.sort();
    let done = all.latencies.len() as u64;
    let rate = done as f64 / elapsed.as_secs_f64();
    let ms = |d: Duration| d.as_secs_f64() * 1000.0;
    let (p50, p90, p99) = (
        percentile(&all.latencies, 0.50),
        percentile(&all.latencies, 0.90),
        percentile(&all.latencies, 0.99),
    );
    let max = all.latencies.last().copied().unwrap_or_default();
    if args.json {
        let report = json!({
            "socket": args.socket,
            "connections": args.connections,
            "body_bytes": args.size,
            "per_connection": args.per_connection,
            "messages": done,
            "accepted": all.accepted,
            "refused": all.refused,
            "errors": all.errors.len(),
            "seconds": elapsed.as_secs_f64(),
            "messages_per_second": rate,
            "latency_ms": {"p50": ms(p50), "p90": ms(p90), "p99": ms(p99), "max": ms(max)},
            "first_errors": all.errors.iter().take(5).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "{done} messages in {:.2} s over {} connection(s): {rate:.0} messages/s",
            elapsed.as_secs_f64(),
            args.connections
        );
        println!(
            "latency: p50 {:.3} ms, p90 {:.3} ms, p99 {:.3} ms, max {:.3} ms",
            ms(p50),
            ms(p90),
            ms(p99),
            ms(max)
        );
        println!(
            "verdicts: {} accepted, {} refused; errors: {}",
            all.accepted,
            all.refused,
            all.errors.len()
        );
        for e in all.errors.iter().take(5) {
            println!("  error: {e}");
        }
    }
    Ok(if all.errors.is_empty() && done > 0 {
        0
    } else {
        1
    })
}
