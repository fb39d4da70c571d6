//! One connection: read → decode → dispatch → encode → one write. A plain loop in one task.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use milterkit_proto::{MilterConfig, MilterSession};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tracing::debug;

use crate::dispatch::Dispatcher;
use crate::shutdown::{Shutdown, Subscription};
use crate::{Config, Error, Milter};

mod progress;
mod waits;

use progress::{write_all, ProgressWriter};
use waits::{later, Waits, Wake};

/// Most bytes taken by one read between commands (through the stack).
const READ_CHUNK: usize = 4096;

/// Least room a read into a partial frame is given.
const MIN_READ: usize = 512;

/// Above this, an empty buffer is replaced by a small one: above a full body chunk (65,535 bytes
/// plus the 5-byte header), so that a large body does not drop and regrow the buffer every chunk.
const SHRINK_ABOVE: usize = 256 * 1024;

/// A connection quiet for this long between commands gives back its buffers. Not shorter: an
/// MTA often pauses between commands while its SMTP client talks, and each release costs the
/// buffers' allocation again when the next command comes.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// Runs one connection to the end. `close` runs exactly once, whatever happens.
///
/// A plain function returning an `async move` block rather than an `async fn`: an `async fn`
/// keeps its arguments' slots in its future beside the locals they are moved into (the milter's
/// value among them); the block uses what it captured in place.
///
/// The connection's future holds only what a connection keeps between messages (the session,
/// the dispatcher, the timer, the stream): it lives in the task of every connection, idle or
/// not. What answering commands needs (the handlers' futures, the write) is in the future of
/// [`commands`], on the heap while a message is open; the end of the connection is on the heap
/// too.
#[allow(clippy::manual_async_fn)] // on purpose: see above
pub(crate) fn run<'a, M, IO, C>(
    mut io: IO,
    milter: M,
    config: C,
    mut shutdown: Subscription,
) -> impl Future<Output = Result<(), Error>> + Send + 'a
where
    M: Milter + 'a,
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'a,
    C: std::borrow::Borrow<Config> + Send + 'a,
{
    async move {
        let config: &Config = config.borrow();
        let mut session = MilterSession::new(MilterConfig {
            max_payload: config.max_frame,
        });
        let mut d = Dispatcher::new(milter, config);
        // Counted closed when dropped: also if this future is dropped before its end.
        #[cfg(feature = "metrics")]
        let mut counted = config.metrics.as_ref().map(Counted::open);
        let mut waits = Waits {
            timer: std::pin::pin!(tokio::time::sleep(idle_after(config))),
            timer_waker: None,
            started: None,
            shutdown: &mut shutdown,
        };
        let mut out = BytesMut::new();
        let result = loop {
            let wake = waits.read(&mut io, &mut session, &mut out, config, d.shutdown);
            match woke(wake.await, &mut waits, &mut session, &mut d) {
                Next::Answer => {}
                Next::Wait => continue,
                Next::End(result) => break result,
            }
            let message = commands(&mut io, &mut session, &mut d, config, &mut waits, &mut out);
            if let Some(result) = Box::pin(message).await {
                break result;
            }
        };
        // On the heap: once per connection, and its future would make every connection's larger.
        Box::pin(finish(io, session, d, config)).await;
        #[cfg(feature = "metrics")]
        if let Some(c) = counted.as_mut() {
            c.result(&result);
        }
        result
    }
}

/// How long a connection waits before giving back its buffers (never longer than the read
/// timeout). Inlined, as `later`: both run at every wait for input.
#[inline]
fn idle_after(config: &Config) -> Duration {
    IDLE_AFTER.min(config.read_timeout)
}

/// The end of a connection: the open message aborted, the close handler, the stream shut down.
async fn finish<M, IO>(mut io: IO, session: MilterSession, mut d: Dispatcher<M>, config: &Config)
where
    M: Milter,
    IO: AsyncWrite + Unpin + Send,
{
    let mut waiter = ProgressWriter {
        io: &mut io,
        interval: config.progress_interval,
        write_timeout: config.write_timeout,
    };
    d.finish(&session, config, &mut waiter).await;
    let _ = io.shutdown().await;
}

/// An open connection in the metrics: `milter_connections_open` goes down when this is dropped,
/// however the connection's future ends (its end, a panic outside the handlers, cancellation).
#[cfg(feature = "metrics")]
struct Counted<'a> {
    metrics: &'a crate::metrics::Metrics,
    error: Option<&'static str>,
}

#[cfg(feature = "metrics")]
impl<'a> Counted<'a> {
    fn open(metrics: &'a crate::metrics::Metrics) -> Self {
        metrics.connection_opened();
        Counted {
            metrics,
            error: Some("cancelled"),
        }
    }

    fn result(&mut self, result: &Result<(), Error>) {
        self.error = result.as_ref().err().map(Error::kind);
    }
}

#[cfg(feature = "metrics")]
impl Drop for Counted<'_> {
    fn drop(&mut self) {
        self.metrics.connection_closed(self.error);
    }
}

/// Acts on the shutdown state, and records it in the dispatcher as the step acted on: a
/// connection with no message open and nothing owed may go once the grace period is over
/// (`Some`); one in a message answers its next command with the fail-safe.
fn shutdown_step<M: Milter>(
    waits: &mut Waits<'_>,
    session: &MilterSession,
    d: &mut Dispatcher<M>,
) -> Option<Result<(), Error>> {
    d.shutdown = waits.shutdown.state();
    match d.shutdown {
        Shutdown::Running | Shutdown::Draining => None,
        Shutdown::Closing if !session.in_message() && session.awaiting().is_none() => {
            debug!("shutdown: closing an idle connection");
            Some(Ok(()))
        }
        Shutdown::Closing => None,
        Shutdown::Abandon => Some(Err(Error::Shutdown)),
    }
}

/// What to do after a wait for input.
enum Next {
    /// Answer what came (or the end of the input).
    Answer,
    /// Wait again.
    Wait,
    /// The connection ends.
    End(Result<(), Error>),
}

/// What `wake`, the end of a wait for input, means for the connection.
fn woke<M: Milter>(
    wake: Wake,
    waits: &mut Waits<'_>,
    session: &mut MilterSession,
    d: &mut Dispatcher<M>,
) -> Next {
    match wake {
        Wake::Read(Ok(0)) => {
            session.handle_eof();
            Next::Answer
        }
        Wake::Read(Ok(_)) => Next::Answer,
        Wake::Read(Err(e)) => Next::End(Err(Error::Io(e))),
        Wake::TimedOut => Next::End(Err(Error::Timeout("waiting for the MTA"))),
        Wake::Idle => Next::Wait,
        Wake::Shutdown => match shutdown_step(waits, session, d) {
            Some(result) => Next::End(result),
            None => Next::Wait,
        },
    }
}

/// The command loop: answers what the input holds (every event, then one write for the whole
/// turn), and goes on reading and answering while a message is open. `Some` when the connection
/// ends; `None` between messages, where the connection waits without it.
///
/// Its future holds the handlers' futures (as large as the milter makes them), so the connection
/// boxes it (see [`run`]): an idle connection, negotiated or between messages, holds none of it.
/// Kept through a message rather than made for each command: boxing costs about 250
/// instructions (the allocation and free, and the copy of the whole future into it: callgrind),
/// twice a message this way (the ABORT Postfix sends after each message, and MAIL) instead of a
/// dozen times.
/// An `async move` block rather than an `async fn` (see [`run`]): 1,040 bytes -> 992 for the
/// benchmark milter, within the sizes glibc's allocator keeps per thread (up to 1,032), which
/// it hands out fastest.
#[allow(clippy::manual_async_fn)] // on purpose: see above
fn commands<'a, 'w, M, IO>(
    io: &'a mut IO,
    session: &'a mut MilterSession,
    d: &'a mut Dispatcher<M>,
    config: &'a Config,
    waits: &'a mut Waits<'w>,
    out: &'a mut BytesMut,
) -> impl Future<Output = Option<Result<(), Error>>> + Send + use<'a, 'w, M, IO>
where
    M: Milter,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    async move {
        loop {
            let mut waiter = ProgressWriter {
                io: &mut *io,
                interval: config.progress_interval,
                write_timeout: config.write_timeout,
            };
            // A handler still running when shutdown reaches its last step (the grace period
            // and the last call over) is given up: its command gets the fail-safe reply and the
            // connection closes. Checked only while the turn waits, so a turn that finishes at
            // its first poll (nearly all) costs nothing more.
            let ended = {
                let mut turn = std::pin::pin!(d.turn(session, config, &mut waiter));
                let shutdown = &mut *waits.shutdown;
                std::future::poll_fn(|cx| match turn.as_mut().poll(cx) {
                    std::task::Poll::Ready(ended) => std::task::Poll::Ready(Some(ended)),
                    std::task::Poll::Pending if shutdown.poll_state(cx) == Shutdown::Abandon => {
                        std::task::Poll::Ready(None)
                    }
                    std::task::Poll::Pending => std::task::Poll::Pending,
                })
                .await
            };
            let Some(ended) = ended else {
                d.abandoned(session, config);
                if session.poll_transmit(out) {
                    let _ = write_all(io, out, config.write_timeout).await;
                }
                return Some(Err(Error::Shutdown));
            };
            if session.poll_transmit(out) {
                let written = write_all(io, out, config.write_timeout).await;
                out.clear();
                if out.capacity() > SHRINK_ABOVE {
                    *out = BytesMut::new();
                }
                if let Err(e) = written {
                    return Some(Err(Error::Io(e)));
                }
            }
            if let Some(result) = ended {
                return Some(result);
            }
            if session.is_closed() {
                return Some(Ok(()));
            }
            if let Some(result) = shutdown_step(waits, session, d) {
                return Some(result);
            }
            let input = session.input_mut();
            if input.is_empty() && input.capacity() > SHRINK_ABOVE {
                *input = BytesMut::new();
            }
            if !session.in_message() {
                return None;
            }
            loop {
                let wake = waits.read(io, session, out, config, d.shutdown).await;
                match woke(wake, waits, session, d) {
                    Next::Answer => break,
                    Next::Wait => {}
                    Next::End(result) => return Some(result),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use bytes::BytesMut;
    use milterkit_proto::{Command, Offer};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::time::Instant;

    use crate::shutdown::{Shutdown, Signal};
    use crate::{Config, Decision, Error, Milter};

    #[derive(Default)]
    struct Quiet;

    impl Milter for Quiet {
        type Message = ();
    }

    /// The MTA negotiates after `first`, then says nothing: how long after the start the
    /// connection ends, and how.
    async fn silent_after_optneg(first: Duration, config: Config) -> (Duration, Result<(), Error>) {
        let (mut mta, milter) = tokio::io::duplex(4096);
        let start = Instant::now();
        let served =
            tokio::spawn(async move { crate::serve_connection(milter, Quiet, &config).await });
        tokio::time::sleep(first).await;
        let mut optneg = BytesMut::new();
        Command::Optneg(Offer::default()).encode(&mut optneg);
        mta.write_all(&optneg).await.unwrap();
        let mut reply = [0u8; 64];
        assert!(mta.read(&mut reply).await.unwrap() > 0);
        let result = served.await.unwrap();
        (start.elapsed(), result)
    }

    #[tokio::test(start_paused = true)]
    async fn the_read_timeout_counts_from_the_last_read_through_the_idle_release() {
        let config = Config {
            read_timeout: Duration::from_secs(5),
            ..Config::default()
        };
        let (elapsed, result) = silent_after_optneg(Duration::from_secs(3), config).await;
        assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
        // OPTNEG at 3 s, the buffers given back at 4 s, the timeout at 8 s (timers tick in ms).
        assert!(
            elapsed >= Duration::from_secs(8) && elapsed < Duration::from_millis(8_010),
            "{elapsed:?}"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_read_timeout_too_large_for_the_clock_means_none() {
        let config = Config {
            read_timeout: Duration::MAX,
            ..Config::default()
        };
        let (mut mta, milter) = tokio::io::duplex(4096);
        let served =
            tokio::spawn(async move { crate::serve_connection(milter, Quiet, &config).await });
        let mut optneg = BytesMut::new();
        Command::Optneg(Offer::default()).encode(&mut optneg);
        mta.write_all(&optneg).await.unwrap();
        let mut reply = [0u8; 64];
        assert!(mta.read(&mut reply).await.unwrap() > 0);
        tokio::time::sleep(Duration::from_secs(365 * 86_400)).await;
        assert!(!served.is_finished());
        drop(mta);
        assert!(served.await.unwrap().is_ok());
    }

    /// A connection of a server that is shutting down: negotiated, then quiet.
    async fn negotiated(
        signal: &crate::shutdown::Signal,
        config: Config,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Result<(), Error>>,
    ) {
        negotiated_with(Quiet, signal, config).await
    }

    /// `milter` served with `config` under `signal`, negotiated with.
    async fn negotiated_with<M: Milter>(
        milter: M,
        signal: &crate::shutdown::Signal,
        config: Config,
    ) -> (
        tokio::io::DuplexStream,
        tokio::task::JoinHandle<Result<(), Error>>,
    ) {
        let (mut mta, io) = tokio::io::duplex(4096);
        let shutdown = signal.subscribe();
        let served = tokio::spawn(async move { super::run(io, milter, &config, shutdown).await });
        let mut optneg = BytesMut::new();
        Command::Optneg(Offer::default()).encode(&mut optneg);
        mta.write_all(&optneg).await.unwrap();
        let mut reply = [0u8; 64];
        assert!(mta.read(&mut reply).await.unwrap() > 0);
        (mta, served)
    }

    #[tokio::test(start_paused = true)]
    async fn a_shutdown_step_does_not_restart_the_read_timeout() {
        let signal = Signal::default();
        let config = Config {
            read_timeout: Duration::from_secs(5),
            ..Config::default()
        };
        let start = Instant::now();
        let (_mta, served) = negotiated(&signal, config).await;
        // Past the idle release (1 s), then a shutdown step at 3 s.
        tokio::time::sleep(Duration::from_secs(3)).await;
        signal.send(Shutdown::Draining);
        let result = served.await.unwrap();
        assert!(matches!(result, Err(Error::Timeout(_))), "{result:?}");
        let elapsed = start.elapsed();
        assert!(elapsed < Duration::from_millis(5_010), "{elapsed:?}");
    }

    #[tokio::test(start_paused = true)]
    async fn quiet_connections_stay_while_draining_and_go_at_closing_or_abandon() {
        let signal = Signal::default();
        let start = Instant::now();
        let (_a, first) = negotiated(&signal, Config::default()).await;
        let (_b, second) = negotiated(&signal, Config::default()).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
        signal.send(Shutdown::Draining);
        tokio::time::sleep(Duration::from_secs(3)).await;
        assert!(!first.is_finished() && !second.is_finished());
        signal.send(Shutdown::Closing);
        assert!(first.await.unwrap().is_ok());
        assert!(second.await.unwrap().is_ok());
        assert!(start.elapsed() < Duration::from_millis(6_010));

        // One in a message stays at Closing (its next command gets the fail-safe) and goes at
        // Abandon.
        let signal = Signal::default();
        let (mut mta, served) = negotiated(&signal, Config::default()).await;
        let mut mail = BytesMut::new();
        Command::Mail(milterkit_proto::Envelope::new("<a@example.org>")).encode(&mut mail);
        mta.write_all(&mail).await.unwrap();
        let mut reply = [0u8; 64];
        assert!(mta.read(&mut reply).await.unwrap() > 0);
        tokio::time::sleep(Duration::from_secs(3)).await;
        signal.send(Shutdown::Closing);
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert!(!served.is_finished());
        signal.send(Shutdown::Abandon);
        let result = served.await.unwrap();
        assert!(matches!(result, Err(Error::Shutdown)), "{result:?}");
    }

    /// A milter whose MAIL handler never returns.
    struct Stuck;

    impl Milter for Stuck {
        type Message = ();

        async fn mail(&mut self, _: &mut (), _: crate::Mail<'_>) -> crate::Result<Decision> {
            std::future::pending().await
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_handler_still_running_at_abandon_is_given_up() {
        // Given up well before the handler's deadline (8 s).
        let signal = Signal::default();
        let (mut mta, served) = negotiated_with(Stuck, &signal, Config::default()).await;
        let mut mail = BytesMut::new();
        Command::Mail(milterkit_proto::Envelope::new("<a@example.org>")).encode(&mut mail);
        mta.write_all(&mail).await.unwrap();
        tokio::time::sleep(Duration::from_secs(1)).await;
        let start = Instant::now();
        signal.send(Shutdown::Closing);
        tokio::time::sleep(Duration::from_secs(1)).await;
        if served.is_finished() {
            panic!("finished early: {:?}", served.await);
        }
        signal.send(Shutdown::Abandon);
        let result = tokio::time::timeout(Duration::from_secs(60), served)
            .await
            .expect("given up at once, not at the handler's deadline")
            .unwrap();
        assert!(matches!(result, Err(Error::Shutdown)), "{result:?}");
        assert!(
            start.elapsed() < Duration::from_secs(2),
            "{:?}",
            start.elapsed()
        );
        // MAIL is answered with the fail-safe (tempfail), not left to the MTA's default.
        let mut got = Vec::new();
        mta.read_to_end(&mut got).await.unwrap();
        assert_eq!(got, [0, 0, 0, 1, b't'], "{got:?}");
    }
}
