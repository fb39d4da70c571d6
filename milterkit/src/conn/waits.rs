//! Waiting for input: one timer and one shutdown registration per connection, kept from read
//! to read, and the idle release of the buffers.

use std::future::Future;
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::BytesMut;
use milterkit_proto::MilterSession;
use tokio::io::{AsyncRead, AsyncReadExt, ReadBuf};
use tokio::task::coop::unconstrained;
use tokio::time::{Instant, Sleep};

use crate::shutdown::{same_waker, Shutdown, Subscription};

use super::*;

/// Why a wait for input ended.
pub(super) enum Wake {
    /// A read finished: bytes (0 at end of stream) or an error.
    Read(std::io::Result<usize>),
    /// The shutdown state changed.
    Shutdown,
    /// Nothing came within the read timeout.
    TimedOut,
    /// Quiet for `IDLE_AFTER` with nothing buffered: the buffers were given back (the wait goes
    /// on).
    Idle,
}

/// The connection's clock and wake-ups for its reads, kept from read to read: one timer and one
/// shutdown registration per connection instead of a timeout and a registration per read (those
/// cost about 15 % of the instructions per message).
///
/// The timer is armed no later than the next instant that matters (the idle release or the read
/// timeout of the read in progress) and re-armed only when it fires early; the only per-read cost
/// is one clock reading when a read has to wait.
///
/// The timer's registration is remembered (with the waker it was made with) and made again only
/// when it rings or is reset; it is polled outside tokio's cooperative budget, which could
/// otherwise answer `Pending` without registering anything. The shutdown registration is the
/// [`Subscription`]'s: made once, read before every wait.
pub(super) struct Waits<'a> {
    pub(super) timer: Pin<&'a mut Sleep>,
    /// The waker the timer was last polled with; `None` after a reset.
    pub(super) timer_waker: Option<Waker>,
    /// When the wait for the next input began; `None` after input came.
    pub(super) started: Option<Instant>,
    pub(super) shutdown: &'a mut Subscription,
}

impl<'a> Waits<'a> {
    /// Reads once into the session's input (see [`poll_read_input`]). After `IDLE_AFTER` of quiet
    /// with nothing buffered, the buffers are given back (`out` too) and [`Wake::Idle`] returned;
    /// the read timeout counts from the start of the wait through it. A shutdown state other
    /// than `seen` (the step the connection acted on last) ends the wait with [`Wake::Shutdown`].
    ///
    /// A `poll_fn` returned as it is, not an `async fn`, whose future would hold the arguments
    /// and the closure's references to them both (it is part of every connection's future).
    pub(super) fn read<'s, IO: AsyncRead + Unpin>(
        &'s mut self,
        io: &'s mut IO,
        session: &'s mut MilterSession,
        out: &'s mut BytesMut,
        config: &'s Config,
        seen: Shutdown,
    ) -> impl Future<Output = Wake> + use<'s, 'a, IO> {
        std::future::poll_fn(move |cx| {
            if let Poll::Ready(r) = poll_read_input(io, session.input_mut(), cx) {
                self.started = None;
                return Poll::Ready(Wake::Read(r));
            }
            // Registered for shutdown changes, then checked: a change that lands in between is
            // seen by one or the other.
            if self.shutdown.poll_state(cx) != seen {
                return Poll::Ready(Wake::Shutdown);
            }
            let start = *self.started.get_or_insert_with(|| {
                let now = Instant::now();
                let idle = idle_eligible(session, out);
                let wait = if idle {
                    idle_after(config)
                } else {
                    config.read_timeout
                };
                // The timer may ring early (it is then re-armed), never late.
                let due = later(now, wait);
                if self.timer.deadline() > due {
                    self.timer.as_mut().reset(due);
                    self.timer_waker = None;
                }
                now
            });
            loop {
                if !self.timer.is_elapsed() {
                    if same_waker(&self.timer_waker, cx) {
                        return Poll::Pending;
                    }
                    // Outside the cooperative budget: `Pending` means registered.
                    let timer = self.timer.as_mut();
                    if std::pin::pin!(unconstrained(timer)).poll(cx).is_pending() {
                        self.timer_waker = Some(cx.waker().clone());
                        return Poll::Pending;
                    }
                }
                // The timer rang: see what is due for this read.
                let now = Instant::now();
                let deadline = later(start, config.read_timeout);
                if now >= deadline {
                    return Poll::Ready(Wake::TimedOut);
                }
                let mut next = deadline;
                if idle_eligible(session, out) {
                    let idle_at = later(start, idle_after(config));
                    if now >= idle_at {
                        *session.input_mut() = BytesMut::new();
                        *out = BytesMut::new();
                        self.timer.as_mut().reset(next);
                        self.timer_waker = None;
                        return Poll::Ready(Wake::Idle);
                    }
                    next = idle_at;
                }
                self.timer.as_mut().reset(next);
                self.timer_waker = None;
            }
        })
    }
}

/// `at + wait`, or about thirty years from `at` if that does not fit (a timeout set to
/// `Duration::MAX` means no timeout).
#[inline]
pub(super) fn later(at: Instant, wait: Duration) -> Instant {
    at.checked_add(wait)
        .unwrap_or_else(|| at + Duration::from_secs(30 * 365 * 86_400))
}

/// True while the connection holds buffers it would give back after `IDLE_AFTER` of quiet:
/// nothing is buffered (no partial frame) and a buffer is still allocated.
pub(super) fn idle_eligible(session: &mut MilterSession, out: &BytesMut) -> bool {
    let input = session.input_mut();
    input.is_empty() && (input.capacity() > 0 || out.capacity() > 0)
}

/// One read into `input`. Between commands (nothing buffered, the usual case) it reads through a
/// buffer on the stack and keeps only what came, so that no connection holds a read buffer larger
/// than its input while it waits; a partial frame is completed in place, in the room the decoder
/// reserved for the whole frame.
pub(super) fn poll_read_input<IO: AsyncRead + Unpin>(
    io: &mut IO,
    input: &mut BytesMut,
    cx: &mut Context<'_>,
) -> Poll<std::io::Result<usize>> {
    if input.is_empty() {
        let mut stack = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut stack);
        return Pin::new(io).poll_read(cx, &mut buf).map_ok(|()| {
            input.extend_from_slice(buf.filled());
            buf.filled().len()
        });
    }
    if input.capacity() - input.len() < MIN_READ {
        input.reserve(READ_CHUNK);
    }
    std::pin::pin!(io.read_buf(input)).poll(cx)
}
