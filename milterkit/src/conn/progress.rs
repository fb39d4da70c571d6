//! The waiter of the connection loop: while an end-of-message handler runs it writes
//! `SMFIR_PROGRESS` on time, and at once when the handler asks.

use std::future::Future;
use std::pin::Pin;
use std::task::Poll;
use std::time::Duration;

use bytes::BytesMut;
use milterkit_proto::Response;
use tokio::io::{AsyncWrite, AsyncWriteExt};
use tokio::sync::futures::Notified;
use tokio::time::Instant;
use tracing::debug;

use crate::deadline::Deadline;
use crate::dispatch::Waiter;
use crate::eom::Progress;

use super::*;

/// The connection loop's waiter: at end of message it writes `SMFIR_PROGRESS` every
/// `interval`, and at once when the handler asks.
pub(super) struct ProgressWriter<'a, IO> {
    pub(super) io: &'a mut IO,
    pub(super) interval: Duration,
    pub(super) write_timeout: Duration,
}

impl<IO: AsyncWrite + Unpin + Send> Waiter for ProgressWriter<'_, IO> {
    async fn wait<F: Future + Send>(
        &mut self,
        progress: &Progress,
        mut fut: Pin<&mut F>,
    ) -> std::io::Result<F::Output> {
        // Progress goes out every `interval` from now, and at once when the handler asks. The
        // ticker and the registration are only made if the handler does not finish at its first
        // poll (most do), and on the heap: they would otherwise make every connection's future
        // larger, idle or not.
        let start = Instant::now();
        let mut ticker: Option<tokio::time::Interval> = None;
        let mut asked: Option<Pin<Box<Notified<'_>>>> = None;
        loop {
            if let Some(out) = std::future::poll_fn(|cx| {
                if let Poll::Ready(out) = fut.as_mut().poll(cx) {
                    return Poll::Ready(Some(out));
                }
                let ticker = ticker.get_or_insert_with(|| {
                    {
                        // A zero period would panic; one too long to add means no ticks.
                        let period = self.interval.max(Duration::from_millis(1));
                        tokio::time::interval_at(later(start, period), period)
                    }
                });
                if ticker.poll_tick(cx).is_ready() {
                    return Poll::Ready(None);
                }
                let notified = asked.get_or_insert_with(|| Box::pin(progress.notify.notified()));
                if notified.as_mut().poll(cx).is_ready() {
                    notified.set(progress.notify.notified());
                    return Poll::Ready(None);
                }
                Poll::Pending
            })
            .await
            {
                return Ok(out);
            }
            debug!("progress");
            let mut frame = BytesMut::new();
            Response::Progress.encode(&mut frame);
            Box::pin(write_all(self.io, &frame, self.write_timeout)).await?;
        }
    }
}

pub(super) async fn write_all<IO: AsyncWrite + Unpin>(
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
