//! Serving: [`serve`] an accept loop with graceful shutdown, [`serve_connection`] one stream.

use std::future::{Future, IntoFuture};
use std::pin::{pin, Pin};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use milterkit_proto::Decision;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::listener::Listener;
#[cfg(feature = "metrics")]
use crate::metrics::Metrics;
use crate::shutdown::{Shutdown, Signal, Subscription};
use crate::{conn, Error, Milter};

/// Settings of a served milter. Every default says where it comes from.
///
/// Build it from [`Config::default`] with `..Default::default()` for the fields you leave: the
/// set of fields depends on the crate's features (the `metrics` field needs feature `metrics`).
#[derive(Debug, Clone)]
pub struct Config {
    /// Most connections served at once; further ones wait in the listen backlog. Default 10,000
    /// (an idle connection costs a few KiB).
    pub max_connections: usize,
    /// Longest wait for the MTA's next command. Default 7,210 s, libmilter's `smfi_settimeout`
    /// default; Postfix and Sendmail close idle milter connections long before.
    pub read_timeout: Duration,
    /// Longest wait for the MTA to take a reply. Default 60 s.
    pub write_timeout: Duration,
    /// Deadline of every handler but end of message. Default 8 s: below Sendmail's 10 s reply
    /// timeout (`T=R:10s`), so the fail-safe reply reaches the MTA before it gives up; Postfix
    /// waits 30 s (`milter_command_timeout`).
    pub handler_timeout: Duration,
    /// Deadline of the end-of-message handler. Default 240 s: below Sendmail's overall 5 min
    /// end-of-message limit (`T=E:5m`), which progress does not extend; Postfix waits 300 s per
    /// reply (`milter_content_timeout`), which progress does extend.
    pub eom_timeout: Duration,
    /// While the end-of-message handler runs, `SMFIR_PROGRESS` goes out this often. Default 5 s:
    /// half of Sendmail's 10 s per-reply timeout.
    pub progress_interval: Duration,
    /// Largest payload accepted from the MTA. Default 1 MiB − 1 (libmilter's largest negotiable
    /// size, `MILTER_MDS_1M`): Postfix sends headers as large as they are.
    pub max_frame: usize,
    /// The decision sent when a handler fails, panics or runs past its deadline, and for
    /// connection-level commands during shutdown. Default tempfail: the client retries later, no
    /// mail is lost or wrongly accepted. Where it is not allowed (DISCARD at CONNECT), tempfail.
    pub fail_safe: Decision,
    /// On shutdown, how long open messages may take to finish. Default 30 s.
    pub grace_period: Duration,
    /// Where connections served with this config count their connections, messages, decisions,
    /// modifications, errors and handler times. Default `None`: nothing is counted or timed.
    /// Needs the `metrics` feature (without it, the field does not exist and nothing is ever
    /// counted).
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub metrics: Option<Metrics>,
}

/// After the grace period, how long connections still waiting on their MTA are given before
/// they are closed.
const LAST_CALL: Duration = Duration::from_secs(10);

impl Default for Config {
    fn default() -> Self {
        Config {
            max_connections: 10_000,
            read_timeout: Duration::from_secs(7_210),
            write_timeout: Duration::from_secs(60),
            handler_timeout: Duration::from_secs(8),
            eom_timeout: Duration::from_secs(240),
            progress_interval: Duration::from_secs(5),
            max_frame: milterkit_proto::frame::DEFAULT_MAX_PAYLOAD,
            fail_safe: Decision::Tempfail,
            grace_period: Duration::from_secs(30),
            #[cfg(feature = "metrics")]
            metrics: None,
        }
    }
}

/// Runs one connection on any stream (a socket you accepted yourself, a systemd socket, a
/// `tokio::io::duplex` in tests) until the MTA quits or the connection fails. `close` runs once.
///
/// ```
/// # use milterkit::{Config, Milter, serve_connection};
/// # #[derive(Default)] struct Noop;
/// # impl Milter for Noop { type Message = (); }
/// # async fn f() -> Result<(), milterkit::Error> {
/// let (mta_end, milter_end) = tokio::io::duplex(4096);
/// drop(mta_end); // the MTA hangs up at once
/// serve_connection(milter_end, Noop, &Config::default()).await?;
/// # Ok(()) }
/// # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(f()).unwrap();
/// ```
pub fn serve_connection<'a, M, IO>(
    io: IO,
    milter: M,
    config: &'a Config,
) -> impl Future<Output = Result<(), Error>> + Send + 'a
where
    M: Milter,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'a,
{
    // Not an `async fn`, whose future would hold the stream and the milter twice (see `conn::run`).
    conn::run(io, milter, config, Subscription::alone())
}

/// Serves `factory`'s milters on `listener`: one task per connection, each with a new value from
/// the factory. Await it (it runs until the shutdown signal), optionally after
/// [`Serve::with_graceful_shutdown`] and [`Serve::with_config`].
///
/// Accept errors (EMFILE and the like) are logged and retried with a back-off, never fatal.
/// Nothing that happens to one connection reaches this future.
///
/// ```no_run
/// # use milterkit::Milter;
/// # #[derive(Default)] struct Noop;
/// # impl Milter for Noop { type Message = (); }
/// # async fn f() -> milterkit::Result<()> {
/// let listener = milterkit::bind("inet:7357@127.0.0.1").await?;
/// milterkit::serve(listener, Noop::default)
///     .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
///     .await?;
/// # Ok(()) }
/// ```
pub fn serve<M, F>(listener: Listener, factory: F) -> Serve<F, std::future::Pending<()>>
where
    M: Milter,
    F: Fn() -> M + Send + Sync + 'static,
{
    Serve {
        listener,
        factory,
        config: Config::default(),
        signal: std::future::pending(),
    }
}

/// The future of [`serve`], to configure before awaiting.
#[must_use = "a Serve does nothing until awaited"]
pub struct Serve<F, S> {
    listener: Listener,
    factory: F,
    config: Config,
    signal: S,
}

impl<F, S> std::fmt::Debug for Serve<F, S> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Serve")
            .field("listener", &self.listener)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl<F, S> Serve<F, S> {
    /// Stops when `signal` completes: no new connections; connection-level commands get the
    /// fail-safe decision; open messages get [`Config::grace_period`] to finish; then each
    /// remaining connection answers its next command with the fail-safe and closes. The future
    /// returns when every connection has ended.
    pub fn with_graceful_shutdown<S2>(self, signal: S2) -> Serve<F, S2>
    where
        S2: Future<Output = ()> + Send + 'static,
    {
        Serve {
            listener: self.listener,
            factory: self.factory,
            config: self.config,
            signal,
        }
    }

    /// Uses `config` instead of [`Config::default`].
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }
}

impl<M, F, S> IntoFuture for Serve<F, S>
where
    M: Milter,
    F: Fn() -> M + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    type Output = Result<(), Error>;
    type IntoFuture = Pin<Box<dyn Future<Output = Result<(), Error>> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(run(self))
    }
}

pin_project_lite::pin_project! {
    /// A served connection's task: the connection, then its end logged. The permit is given back
    /// when the task ends. (A struct rather than an `async` block, which would hold the
    /// connection's stream and milter twice: once captured, once moved into the connection.)
    struct Served<C> {
        #[pin]
        conn: C,
        _permit: OwnedSemaphorePermit,
    }
}

impl<C: Future<Output = Result<(), Error>>> Future for Served<C> {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match std::task::ready!(self.project().conn.poll(cx)) {
            Ok(()) => debug!("closed"),
            Err(e) => e.log_close(),
        }
        Poll::Ready(())
    }
}

async fn run<M, F, S>(serve: Serve<F, S>) -> Result<(), Error>
where
    M: Milter,
    F: Fn() -> M + Send + Sync + 'static,
    S: Future<Output = ()> + Send + 'static,
{
    let Serve {
        listener,
        factory,
        config,
        signal,
    } = serve;
    let config = Arc::new(config);
    let state = Signal::default();
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut tasks = JoinSet::new();
    let mut signal = pin!(signal);
    let mut next_id: u64 = 0;
    let mut backoff = Duration::from_millis(5);
    match listener.local_spec() {
        Ok(spec) => info!(listen = %spec, "serving"),
        Err(_) => info!("serving"),
    }
    loop {
        while tasks.try_join_next().is_some() {}
        let permit = tokio::select! {
            p = limit.clone().acquire_owned() => p,
            _ = &mut signal => break,
        };
        let Ok(permit) = permit else { break };
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = &mut signal => break,
        };
        let (stream, peer) = match accepted {
            Ok(a) => {
                backoff = Duration::from_millis(5);
                a
            }
            Err(e) => {
                warn!(error = %e, "accept failed; retrying in {backoff:?}");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = &mut signal => break,
                }
                backoff = (backoff * 2).min(Duration::from_secs(1));
                continue;
            }
        };
        next_id += 1;
        let span = tracing::info_span!("milter_conn", id = next_id, peer = %peer);
        let milter = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(&factory)) {
            Ok(m) => m,
            Err(_) => {
                warn!(parent: &span, "the milter factory panicked; connection dropped");
                continue;
            }
        };
        span.in_scope(|| debug!("connected"));
        tasks.spawn(
            Served {
                conn: conn::run(stream, milter, config.clone(), state.subscribe()),
                _permit: permit,
            }
            .instrument(span),
        );
    }
    drop(listener);
    while tasks.try_join_next().is_some() {}
    info!(open = tasks.len(), "shutting down");
    state.send(Shutdown::Draining);
    for (next, wait) in [
        (Shutdown::Closing, config.grace_period),
        (Shutdown::Abandon, LAST_CALL),
    ] {
        let all_done = async { while tasks.join_next().await.is_some() {} };
        if tokio::time::timeout(wait, all_done).await.is_ok() {
            return Ok(());
        }
        info!(open = tasks.len(), state = ?next, "shutdown: connections still open");
        state.send(next);
    }
    while tasks.join_next().await.is_some() {}
    Ok(())
}
