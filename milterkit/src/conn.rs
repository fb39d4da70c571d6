//! One connection: read → decode → dispatch → encode → one write. A plain loop in one task.

use std::future::Future;
use std::time::Duration;

use bytes::BytesMut;
use milterkit_proto::{MilterConfig, MilterSession, Response, Stage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::dispatch::{Deadline, Dispatcher, Flow, Waiter};
use crate::eom::Progress;
use crate::serve::Shutdown;
use crate::{Config, Error, Milter};

/// Buffer kept for reading; it is given back after a large body.
const READ_CHUNK: usize = 4096;

/// Above this, an empty buffer is replaced by a small one: above a full body chunk (65,535 bytes
/// plus the 5-byte header), so that a large body does not drop and regrow the buffer every chunk.
const SHRINK_ABOVE: usize = 256 * 1024;

/// A connection quiet for this long between commands gives its buffers back.
const IDLE_AFTER: Duration = Duration::from_secs(1);

/// The stack buffer an idle connection waits with.
const IDLE_READ: usize = 256;

/// The connection loop's waiter: at end of message it writes `SMFIR_PROGRESS` every
/// `interval`, and at once when the handler asks.
struct ProgressWriter<'a, IO> {
    io: &'a mut IO,
    interval: Duration,
    write_timeout: Duration,
}

impl<IO: AsyncWrite + Unpin + Send> Waiter for ProgressWriter<'_, IO> {
    async fn wait<F: Future + Send>(
        &mut self,
        stage: Stage,
        progress: &Progress,
        fut: F,
    ) -> std::io::Result<F::Output> {
        if stage != Stage::Eom {
            return Ok(fut.await);
        }
        let mut fut = std::pin::pin!(fut);
        let mut ticker = tokio::time::interval(self.interval);
        ticker.tick().await; // the first tick is immediate
        let mut frame = BytesMut::new();
        Response::Progress.encode(&mut frame);
        loop {
            tokio::select! {
                out = &mut fut => return Ok(out),
                _ = ticker.tick() => {}
                _ = progress.notify.notified() => {}
            }
            debug!("progress");
            write_all(self.io, &frame, self.write_timeout).await?;
        }
    }
}

async fn write_all<IO: AsyncWrite + Unpin>(
    io: &mut IO,
    bytes: &[u8],
    limit: Duration,
) -> std::io::Result<()> {
    let write = std::pin::pin!(io.write_all(bytes));
    match Deadline::new(limit, write).await {
        Some(r) => r,
        None => Err(std::io::Error::new(
            std::io::ErrorKind::TimedOut,
            "the MTA did not take our reply in time",
        )),
    }
}

/// Runs one connection to the end. `close` runs exactly once, whatever happens.
pub(crate) async fn run<M, IO>(
    mut io: IO,
    milter: M,
    config: &Config,
    mut shutdown: watch::Receiver<Shutdown>,
) -> Result<(), Error>
where
    M: Milter,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut session = MilterSession::new(MilterConfig {
        max_payload: config.max_frame,
    });
    let mut d = Dispatcher::new(milter, config);
    let result = serve_session(&mut io, &mut session, &mut d, config, &mut shutdown).await;
    if d.has_message() || session.in_message() {
        let mut waiter = ProgressWriter {
            io: &mut io,
            interval: config.progress_interval,
            write_timeout: config.write_timeout,
        };
        d.abort(&session, &mut waiter).await;
    }
    d.close().await;
    let _ = io.shutdown().await;
    result
}

async fn serve_session<M, IO>(
    io: &mut IO,
    session: &mut MilterSession,
    d: &mut Dispatcher<M>,
    config: &Config,
    shutdown: &mut watch::Receiver<Shutdown>,
) -> Result<(), Error>
where
    M: Milter,
    IO: AsyncRead + AsyncWrite + Unpin + Send,
{
    let mut out = BytesMut::new();
    loop {
        // Every event the input holds, answered; then one write for the whole turn.
        let ended = loop {
            let event = match session.poll_event() {
                Ok(Some(e)) => e,
                Ok(None) => break None,
                Err(e) => break Some(Err(Error::Protocol(e))),
            };
            let mut waiter = ProgressWriter {
                io: &mut *io,
                interval: config.progress_interval,
                write_timeout: config.write_timeout,
            };
            match d.event(session, event, &mut waiter).await {
                Flow::Continue => {}
                Flow::Quit => break Some(Ok(())),
                Flow::Close(e) => break Some(Err(e)),
            }
        };
        if session.poll_transmit(&mut out) {
            let written = write_all(io, &out, config.write_timeout).await;
            out.clear();
            if out.capacity() > SHRINK_ABOVE {
                out = BytesMut::new();
            }
            if let Err(e) = written {
                return Err(Error::Io(e));
            }
        }
        if let Some(result) = ended {
            return result;
        }
        if session.is_closed() {
            return Ok(());
        }
        // Shutdown: a connection with no message open and nothing owed may go once the grace
        // period is over; one in a message answers its next command with the fail-safe.
        let state = *shutdown.borrow();
        match state {
            Shutdown::Running => {}
            Shutdown::Draining => d.draining = true,
            Shutdown::Closing if !session.in_message() && session.awaiting().is_none() => {
                debug!("shutdown: closing an idle connection");
                return Ok(());
            }
            Shutdown::Closing => {
                d.draining = true;
                d.closing = true;
            }
            Shutdown::Abandon => return Err(Error::Shutdown),
        }
        let deadline = tokio::time::Instant::now() + config.read_timeout;
        let input = session.input_mut();
        if input.is_empty() && input.capacity() > SHRINK_ABOVE {
            *input = BytesMut::new();
        }
        input.reserve(READ_CHUNK);
        // A busy connection reads straight into its buffer. One that stays quiet for IDLE_AFTER
        // between commands gives its buffers back and waits with a small one on the stack, so
        // that thousands of idle connections cost little memory.
        let wait = if input.is_empty() {
            IDLE_AFTER.min(config.read_timeout)
        } else {
            config.read_timeout
        };
        let read = tokio::select! {
            r = tokio::time::timeout(wait, io.read_buf(input)) => r,
            _ = shutdown.changed() => continue,
        };
        let read = match read {
            Err(_) if wait < config.read_timeout => {
                *session.input_mut() = BytesMut::new();
                out = BytesMut::new();
                let mut small = [0u8; IDLE_READ];
                let r = tokio::select! {
                    r = tokio::time::timeout_at(deadline, io.read(&mut small)) => r,
                    _ = shutdown.changed() => continue,
                };
                if let Ok(Ok(n)) = r {
                    session.input_mut().extend_from_slice(&small[..n]);
                }
                r
            }
            other => other,
        };
        match read {
            Ok(Ok(0)) => session.handle_eof(),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(Error::Io(e)),
            Err(_) => {
                warn!("no command from the MTA within the read timeout");
                return Err(Error::Timeout("waiting for the MTA"));
            }
        }
    }
}
