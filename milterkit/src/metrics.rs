//! Counters and histograms of a served milter, in Prometheus' text format, with an optional HTTP
//! endpoint to scrape them.
//!
//! Built on `prometheus-client`, the Prometheus project's own Rust client. Metrics are off unless
//! [`Config::metrics`](crate::Config::metrics) holds a [`Metrics`]; then every connection served
//! with that config counts into it. A milter's own metrics go into the same
//! [`Registry`] with [`Metrics::with_registry`].
//!
//! | metric | type | labels |
//! |---|---|---|
//! | `milter_connections` | counter | – |
//! | `milter_connections_open` | gauge | – |
//! | `milter_messages` | counter | – (a message is counted when its first event arrives) |
//! | `milter_decisions` | counter | `stage` (spec name: `CONNECT` … `EOM`), `decision` (`continue`, `accept`, `reject`, `tempfail`, `discard`, `skip`, `reply`, `shutdown`) |
//! | `milter_modifications` | counter | `kind` (`add_header`, `insert_header`, `change_header`, `change_from`, `add_rcpt`, `add_rcpt_par`, `delete_rcpt`, `replace_body`, `quarantine`) |
//! | `milter_errors` | counter | `kind`: why a connection ended in error (`io`, `protocol`, `misuse`, `timeout`, `handler_timeout`, `handler`, `panic`, `shutdown`; `cancelled` when its future was dropped before its end) |
//! | `milter_fail_safe_replies` | counter | `stage` |
//! | `milter_handler_duration_seconds` | histogram | `stage` (plus `NEGOTIATE`, `ABORT`, `CLOSE`) |
//!
//! Counters get the `_total` suffix on the wire, as the format asks.
//!
//! ```
//! # async fn f() -> std::io::Result<()> {
//! let metrics = milterkit::metrics::Metrics::new();
//! let config = milterkit::Config { metrics: Some(metrics.clone()), ..Default::default() };
//! let http = tokio::net::TcpListener::bind("127.0.0.1:9100").await?;
//! tokio::spawn(metrics.clone().serve(http));
//! // milterkit::serve(listener, factory).with_config(config).await ...
//! # drop(config); Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant};

use milterkit_proto::Stage;
use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tracing::{debug, warn};

type Labels1 = [(&'static str, &'static str); 1];
type Labels2 = [(&'static str, &'static str); 2];
type HistogramFamily = Family<Labels1, Histogram, fn() -> Histogram>;

/// The metrics of one served milter (cheap to clone: all clones count into the same values).
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    connections: Counter,
    connections_open: Gauge,
    messages: Counter,
    decisions: Family<Labels2, Counter>,
    modifications: Family<Labels1, Counter>,
    errors: Family<Labels1, Counter>,
    fail_safe: Family<Labels1, Counter>,
    handler_seconds: HistogramFamily,
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Handler latency buckets: 100 µs to about 26 s, doubling.
fn handler_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.0001, 2.0, 19))
}

impl Metrics {
    /// A fresh set of the milter's metrics in a registry of their own.
    pub fn new() -> Self {
        Self::with_registry(Registry::default())
    }

    /// The milter's metrics added to `registry`, which may already hold the milter author's own
    /// metrics; [`Metrics::encode`] and the endpoint show them all.
    ///
    /// ```
    /// use prometheus_client::metrics::counter::Counter;
    /// use prometheus_client::registry::Registry;
    ///
    /// let spam: Counter = Counter::default();
    /// let mut registry = Registry::default();
    /// registry.register("spam_found", "Messages found to be spam", spam.clone());
    /// let metrics = milterkit::metrics::Metrics::with_registry(registry);
    /// spam.inc();
    /// assert!(metrics.encode().contains("spam_found_total 1"));
    /// ```
    pub fn with_registry(mut registry: Registry) -> Self {
        let inner = Inner {
            connections: Counter::default(),
            connections_open: Gauge::default(),
            messages: Counter::default(),
            decisions: Family::default(),
            modifications: Family::default(),
            errors: Family::default(),
            fail_safe: Family::default(),
            handler_seconds: Family::new_with_constructor(handler_histogram),
            registry: Registry::default(),
        };
        macro_rules! register {
            ($($name:literal, $help:literal, $field:ident;)*) => {
                $(registry.register($name, $help, inner.$field.clone());)*
            };
        }
        register! {
            "milter_connections", "Connections accepted from MTAs", connections;
            "milter_connections_open", "Connections open now", connections_open;
            "milter_messages", "Messages (transactions) seen", messages;
            "milter_decisions", "Decisions sent, by stage and decision", decisions;
            "milter_modifications", "Modifications sent at end of message, by kind", modifications;
            "milter_errors", "Connections that ended in error, by kind", errors;
            "milter_fail_safe_replies",
                "Fail-safe decisions sent (handler failed, panicked or timed out; shutdown), by stage",
                fail_safe;
            "milter_handler_duration_seconds", "Time spent in handlers, by stage", handler_seconds;
        }
        Metrics {
            inner: Arc::new(Inner { registry, ..inner }),
        }
    }

    /// Everything in the registry, in Prometheus' text exposition format (version 0.0.4 as
    /// OpenMetrics text, ending with `# EOF`).
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.inner.registry);
        out
    }

    /// Serves `GET /metrics` (any path, in fact) on `listener` until the future is dropped: a
    /// plain HTTP/1.1 responder, one request per connection, for Prometheus to scrape. Requests
    /// larger than 8 KiB or slower than 10 s are dropped; at most 16 are answered at once (more
    /// wait in the listen backlog).
    pub async fn serve(self, listener: TcpListener) {
        let limit = Arc::new(tokio::sync::Semaphore::new(16));
        loop {
            let Ok(permit) = limit.clone().acquire_owned().await else {
                return;
            };
            let (mut stream, peer) = match listener.accept().await {
                Ok(a) => a,
                Err(e) => {
                    warn!(error = %e, "metrics endpoint: accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let metrics = self.clone();
            tokio::spawn(async move {
                let answer = async {
                    let mut request = Vec::with_capacity(512);
                    let mut buf = [0u8; 1024];
                    // The end of the request head; bare LF line ends are accepted too.
                    let ended = |r: &[u8]| {
                        r.windows(4).any(|w| w == b"\r\n\r\n") || r.windows(2).any(|w| w == b"\n\n")
                    };
                    while !ended(&request) {
                        let n = stream.read(&mut buf).await?;
                        if n == 0 || request.len() + n > 8192 {
                            return Ok(());
                        }
                        request.extend_from_slice(&buf[..n]);
                    }
                    let response = if request.starts_with(b"GET ") {
                        let body = metrics.encode();
                        format!(
                            "HTTP/1.1 200 OK\r\nContent-Type: application/openmetrics-text; version=1.0.0; charset=utf-8\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                            body.len()
                        )
                    } else {
                        "HTTP/1.1 405 Method Not Allowed\r\nAllow: GET\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
                    };
                    stream.write_all(response.as_bytes()).await?;
                    stream.shutdown().await
                };
                match tokio::time::timeout(Duration::from_secs(10), answer).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => debug!(%peer, error = %e, "metrics endpoint: request failed"),
                    Err(_) => debug!(%peer, "metrics endpoint: request timed out"),
                }
                drop(permit);
            });
        }
    }

    pub(crate) fn connection_opened(&self) {
        self.inner.connections.inc();
        self.inner.connections_open.inc();
    }

    /// `error`: the kind of error the connection ended with, if any.
    pub(crate) fn connection_closed(&self, error: Option<&'static str>) {
        self.inner.connections_open.dec();
        if let Some(kind) = error {
            self.inner.errors.get_or_create(&[("kind", kind)]).inc();
        }
    }

    pub(crate) fn message(&self) {
        self.inner.messages.inc();
    }

    pub(crate) fn decision(&self, stage: Stage, decision: &'static str) {
        self.inner
            .decisions
            .get_or_create(&[("stage", stage.name()), ("decision", decision)])
            .inc();
    }

    pub(crate) fn fail_safe(&self, stage: Stage) {
        self.inner
            .fail_safe
            .get_or_create(&[("stage", stage.name())])
            .inc();
    }

    pub(crate) fn modifications(&self, kind: &'static str, n: u32) {
        self.inner
            .modifications
            .get_or_create(&[("kind", kind)])
            .inc_by(u64::from(n));
    }

    pub(crate) fn handler(&self, stage: &'static str, started: Instant) {
        self.inner
            .handler_seconds
            .get_or_create(&[("stage", stage)])
            .observe(started.elapsed().as_secs_f64());
    }
}
