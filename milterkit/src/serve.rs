//! Serving: [`serve`] an accept loop with graceful shutdown, [`serve_connection`] one stream.

use std::future::{Future, IntoFuture};
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use milterkit_proto::Decision;
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;
use tracing::{debug, info, warn, Instrument};

use crate::listener::{Listener, Stream};
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
    /// (an idle connection costs about 1.5 KB, `BENCHMARKS.md`).
    pub max_connections: usize,
    /// Longest wait for the MTA's next command. Default 7,210 s, libmilter's `smfi_settimeout`
    /// default; Postfix and Sendmail close idle milter connections long before.
    pub read_timeout: Duration,
    /// Longest wait for the MTA to take a reply. Default 60 s.
    pub write_timeout: Duration,
    /// Deadline of every handler but end of message. Default 8 s: below Sendmail's 10 s reply
    /// timeout (`T=R:10s`), so the fail-safe reply reaches the MTA before it gives up; Postfix
    /// waits 30 s (`milter_command_timeout`).
    ///
    /// A deadline ends a handler at a point where it waits (an `.await` that is pending), and
    /// counts from the first of those: its timer is armed only when a handler does not finish
    /// at once (it costs nothing for the ones that do). Work that never waits cannot be
    /// interrupted in async Rust; run long computations with `tokio::task::spawn_blocking`
    /// and await them, so that the deadline holds.
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
    /// On shutdown, how long open messages may take to finish (a handler still running 10 s
    /// after it is given up). Default 30 s.
    pub grace_period: Duration,
    /// Where connections served with this config count their connections, messages, decisions,
    /// modifications, errors and handler times. Default `None`: nothing is counted or timed.
    /// Needs the `metrics` feature (without it, the field does not exist and nothing is ever
    /// counted).
    #[cfg(feature = "metrics")]
    #[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
    pub metrics: Option<Metrics>,
}

/// The number of the last connection accepted, by any server of the process: what the
/// `milter_conn` span's `id` says.
static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

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
        threads: 1,
    }
}

/// The future of [`serve`], to configure before awaiting.
#[must_use = "a Serve does nothing until awaited"]
pub struct Serve<F, S> {
    listener: Listener,
    factory: F,
    config: Config,
    signal: S,
    /// Threads serving (this one and `threads - 1` more): [`Serve::with_threads`].
    threads: usize,
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
    /// remaining connection answers its next command with the fail-safe and closes; 10 s later,
    /// a handler still running is given up, its command answered with the fail-safe. The future
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
            threads: self.threads,
        }
    }

    /// Uses `config` instead of [`Config::default`].
    pub fn with_config(mut self, config: Config) -> Self {
        self.config = config;
        self
    }

    /// Serves on `threads` threads: the task awaiting this future, and `threads - 1` more, each
    /// with a `current_thread` tokio runtime of its own, all accepting from the same listener. A
    /// connection stays on the thread that accepted it, so its wake-ups never cross threads: one
    /// thread's efficiency (the least CPU per message, measured in BENCHMARKS.md), on every core.
    /// [`Config::max_connections`] is shared out among them; the shutdown reaches them all.
    /// Handlers that compute for long should use `tokio::task::spawn_blocking`, as on any
    /// `current_thread` runtime: they hold up their thread's other connections meanwhile.
    ///
    /// ```no_run
    /// # use milterkit::Milter;
    /// # #[derive(Default)] struct Noop;
    /// # impl Milter for Noop { type Message = (); }
    /// #[tokio::main(flavor = "current_thread")]
    /// async fn main() -> milterkit::Result<()> {
    ///     let listener = milterkit::bind("inet:7357@127.0.0.1").await?;
    ///     let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    ///     milterkit::serve(listener, Noop::default).with_threads(cores).await?;
    ///     Ok(())
    /// }
    /// ```
    pub fn with_threads(mut self, threads: usize) -> Self {
        self.threads = threads.max(1);
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
        // With several threads: counted among its thread's open connections.
        _open: Option<Open>,
    }
}

/// A connection counted among its thread's open ones ([`Serve::with_threads`]) while this lives,
/// however it ends.
struct Open(Arc<AtomicUsize>);

impl Open {
    fn new(count: &Arc<AtomicUsize>) -> Open {
        count.fetch_add(1, Ordering::Relaxed);
        Open(count.clone())
    }
}

impl Drop for Open {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
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

/// A connection accepted by the serving task for another thread: its socket out of the
/// accepting runtime, its span, its place among the connections.
struct Handoff {
    socket: StdStream,
    span: tracing::Span,
    permit: OwnedSemaphorePermit,
    open: Open,
}

enum StdStream {
    Tcp(std::net::TcpStream),
    Unix(std::os::unix::net::UnixStream),
}

impl StdStream {
    fn of(stream: Stream) -> std::io::Result<StdStream> {
        Ok(match stream {
            Stream::Tcp(s) => StdStream::Tcp(s.into_std()?),
            Stream::Unix(s) => StdStream::Unix(s.into_std()?),
        })
    }

    /// Registers it with the current runtime.
    fn stream(self) -> std::io::Result<Stream> {
        Ok(match self {
            StdStream::Tcp(s) => Stream::Tcp(tokio::net::TcpStream::from_std(s)?),
            StdStream::Unix(s) => Stream::Unix(tokio::net::UnixStream::from_std(s)?),
        })
    }
}

/// A thread serving connections the serving task hands it, on a `current_thread` runtime of its
/// own ([`Serve::with_threads`]).
struct Worker {
    jobs: tokio::sync::mpsc::UnboundedSender<Handoff>,
    /// Its connections open now: new ones go to the thread with the fewest.
    open: Arc<AtomicUsize>,
    done: tokio::sync::oneshot::Receiver<()>,
}

impl Worker {
    fn start<M, F>(
        i: usize,
        factory: Arc<F>,
        config: Arc<Config>,
        state: &Signal,
    ) -> std::io::Result<Worker>
    where
        M: Milter,
        F: Fn() -> M + Send + Sync + 'static,
    {
        let (jobs, mut queue) = tokio::sync::mpsc::unbounded_channel::<Handoff>();
        let (finished, done) = tokio::sync::oneshot::channel();
        let open = Arc::new(AtomicUsize::new(0));
        let state = state.clone();
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        std::thread::Builder::new()
            .name(format!("milter-{i}"))
            .spawn(move || {
                runtime.block_on(async move {
                    let mut tasks = JoinSet::new();
                    // A job dropped on the way takes its count with it (`Open`).
                    while let Some(Handoff {
                        socket,
                        span,
                        permit,
                        open,
                    }) = queue.recv().await
                    {
                        while tasks.try_join_next().is_some() {}
                        let stream = match socket.stream() {
                            Ok(s) => s,
                            Err(e) => {
                                warn!(parent: &span, error = %e, "cannot take the connection over");
                                continue;
                            }
                        };
                        let served = (&*factory, &config, &state);
                        if let Some(task) = task(served, stream, permit, Some(open), span) {
                            tasks.spawn(task);
                        }
                    }
                    while tasks.join_next().await.is_some() {}
                });
                let _ = finished.send(());
            })?;
        Ok(Worker { jobs, open, done })
    }
}

/// The task of one accepted connection (`served`: the factory, the config, the shutdown signal):
/// a milter from the factory, the connection served, its end logged, in the connection's span;
/// `None` (logged) when the factory panics.
fn task<M, F>(
    (factory, config, state): (&F, &Arc<Config>, &Signal),
    stream: Stream,
    permit: OwnedSemaphorePermit,
    open: Option<Open>,
    span: tracing::Span,
) -> Option<impl Future<Output = ()> + Send + 'static>
where
    M: Milter,
    F: Fn() -> M,
{
    let Ok(milter) = std::panic::catch_unwind(std::panic::AssertUnwindSafe(factory)) else {
        warn!(parent: &span, "the milter factory panicked; connection dropped");
        return None;
    };
    let served = Served {
        conn: conn::run(stream, milter, config.clone(), state.subscribe()),
        _permit: permit,
        _open: open,
    };
    Some(served.instrument(span))
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
        threads,
    } = serve;
    let config = Arc::new(config);
    let factory = Arc::new(factory);
    let state = Signal::default();
    let limit = Arc::new(Semaphore::new(config.max_connections.max(1)));
    let mut workers = Vec::new();
    for i in 1..threads {
        workers.push(Worker::start(i, factory.clone(), config.clone(), &state)?);
    }
    let local_open = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    let mut signal = pin!(signal);
    let mut backoff = Duration::from_millis(5);
    match listener.local_spec() {
        Ok(spec) => info!(listen = %spec, threads, "serving"),
        Err(_) => info!(threads, "serving"),
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
        // One numbering for every thread and server of the process.
        let id = NEXT_ID.fetch_add(1, Ordering::Relaxed) + 1;
        let span = tracing::info_span!("milter_conn", id, peer = %peer);
        span.in_scope(|| debug!("connected"));
        // The thread with the fewest open connections takes it (this one on a tie).
        let load = |open: &AtomicUsize| open.load(Ordering::Relaxed);
        let target = workers
            .iter()
            .filter(|w| load(&w.open) < load(&local_open))
            .min_by_key(|w| load(&w.open));
        if let Some(worker) = target {
            match StdStream::of(stream) {
                Ok(socket) => {
                    let job = Handoff {
                        socket,
                        span,
                        permit,
                        open: Open::new(&worker.open),
                    };
                    if worker.jobs.send(job).is_err() {
                        warn!("a serving thread is gone; connection dropped");
                    }
                }
                Err(e) => warn!(parent: &span, error = %e, "cannot hand the connection over"),
            }
            continue;
        }
        // One thread: no count to keep.
        let open = (!workers.is_empty()).then(|| Open::new(&local_open));
        if let Some(task) = task((&*factory, &config, &state), stream, permit, open, span) {
            tasks.spawn(task);
        }
    }
    drop(listener);
    while tasks.try_join_next().is_some() {}
    let mut done = Vec::new();
    for w in workers {
        // Closing its queue lets the thread end once its connections have.
        drop(w.jobs);
        done.push(w.done);
    }
    info!(
        open = config.max_connections.max(1) - limit.available_permits(),
        "shutting down"
    );
    state.send(Shutdown::Draining);
    let all_done = async {
        while tasks.join_next().await.is_some() {}
        for d in &mut done {
            let _ = d.await;
        }
    };
    let mut all_done = pin!(all_done);
    for (next, wait) in [
        (Shutdown::Closing, config.grace_period),
        (Shutdown::Abandon, LAST_CALL),
    ] {
        if tokio::time::timeout(wait, all_done.as_mut()).await.is_ok() {
            return Ok(());
        }
        info!(
            open = config.max_connections.max(1) - limit.available_permits(),
            state = ?next,
            "shutdown: connections still open"
        );
        state.send(next);
    }
    all_done.await;
    Ok(())
}
