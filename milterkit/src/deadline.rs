//! Time limits that cost nothing when they are not reached: the timer is armed only if the future
//! does not finish at its first poll. Handlers and writes almost always do, and a timer armed and
//! dropped for each of them was a fifth of the work per message.

use std::future::Future;
use std::panic::AssertUnwindSafe;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tracing::instrument::Instrumented;
use tracing::{Instrument, Span};

/// A timer armed at the first poll that needs it: `limit` after that poll.
struct LazyTimer {
    limit: Duration,
    timer: Option<Pin<Box<tokio::time::Sleep>>>,
}

impl LazyTimer {
    fn new(limit: Duration) -> Self {
        LazyTimer { limit, timer: None }
    }

    /// True once the limit passed; registers `cx` for the timer otherwise.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        let limit = self.limit;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep(limit)));
        timer.as_mut().poll(cx).is_ready()
    }
}

/// A future with a time limit. Gives `None` when the limit passed.
pub(crate) struct Deadline<F> {
    fut: F,
    timer: LazyTimer,
}

impl<F> Deadline<F> {
    pub(crate) fn new(limit: Duration, fut: F) -> Self {
        Deadline {
            fut,
            timer: LazyTimer::new(limit),
        }
    }
}

impl<F: Future + Unpin> Future for Deadline<F> {
    type Output = Option<F::Output>;
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        if let Poll::Ready(v) = Pin::new(&mut this.fut).poll(cx) {
            return Poll::Ready(Some(v));
        }
        if this.timer.poll_expired(cx) {
            Poll::Ready(None)
        } else {
            Poll::Pending
        }
    }
}

/// How a guarded handler call ended, besides returning.
pub(crate) enum Failure {
    Panicked,
    TimedOut,
}

pin_project_lite::pin_project! {
    /// One handler call: inside its span, with a panic guard (the `catch_unwind` of each poll) and
    /// a lazy deadline. One struct, so that the handler's future is stored once (it is part of
    /// every connection's future, idle or not).
    pub(crate) struct Guarded<F> {
        #[pin]
        fut: Instrumented<F>,
        timer: LazyTimer,
    }
}

impl<F: Future> Future for Guarded<F> {
    type Output = Result<F::Output, Failure>;
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        let polled = std::panic::catch_unwind(AssertUnwindSafe(|| this.fut.as_mut().poll(cx)));
        match polled {
            Ok(Poll::Ready(v)) => Poll::Ready(Ok(v)),
            Ok(Poll::Pending) if this.timer.poll_expired(cx) => Poll::Ready(Err(Failure::TimedOut)),
            Ok(Poll::Pending) => Poll::Pending,
            Err(_) => Poll::Ready(Err(Failure::Panicked)),
        }
    }
}

/// Runs `fut` with a deadline and a panic guard, inside `span`.
pub(crate) fn guarded<F: Future + Send>(limit: Duration, span: Span, fut: F) -> Guarded<F> {
    Guarded {
        fut: fut.instrument(span),
        timer: LazyTimer::new(limit),
    }
}
