//! Runs one event of the core through a [`Milter`]: the handler call with its deadline and panic
//! guard, the per-message state, and the fail-safe. Shared by the connection loop and the harness.

use std::future::Future;
use std::pin::{pin, Pin};

use milterkit_proto::{Decision, Event, MilterSession, Request, Stage};
use tracing::field::Empty;
use tracing::{debug, warn, Span};

use crate::deadline::{guarded, Failure};
use crate::eom::{Eom, Progress};
use crate::meter::{Meter, ModificationCounts};
use crate::milter::{Abort, Body, Connect, Data, Eoh, Header, Helo, Mail, Milter, Rcpt, Unknown};
use crate::shutdown::Shutdown;
use crate::{Config, Error, OnWire, Result};

/// What the driver of a session does while a handler runs: the connection loop sends progress
/// at end of message; the harness just waits.
pub(crate) trait Waiter: Send {
    /// Drives `fut`, the end-of-message or abort handler, to completion; `progress` is where the
    /// handler asks for progress. An I/O error ends the connection. (The other handlers are
    /// awaited as they are: nothing is written while they run.)
    /// `fut` is pinned by the caller, so that the handler's future is stored once, in the
    /// caller's state.
    fn wait<F: Future + Send>(
        &mut self,
        progress: &Progress,
        fut: Pin<&mut F>,
    ) -> impl Future<Output = std::io::Result<F::Output>> + Send;
}

/// The waiter that does nothing but wait.
pub(crate) struct JustWait;

impl Waiter for JustWait {
    async fn wait<F: Future + Send>(
        &mut self,
        _: &Progress,
        fut: Pin<&mut F>,
    ) -> std::io::Result<F::Output> {
        Ok(fut.await)
    }
}

/// What the caller does after an event.
#[derive(Debug)]
pub(crate) enum Flow {
    /// Keep reading.
    Continue,
    /// QUIT: the session is over.
    Quit,
    /// Close the connection (after flushing what was queued) because of this error.
    Close(Error),
}

/// The span of an open message.
struct MessageSpan {
    span: Span,
    /// `queue_id` is recorded (or the span is disabled): no more macro lookups.
    queue_id_known: bool,
}

/// One milter value and the state the protocol gives it. Part of every connection's future,
/// idle or not, so it holds only what lasts between commands: the settings (fail-safe,
/// deadlines) are read from the [`Config`] each call is given, and what is needed only while a
/// handler runs (the progress requests of end of message) lives in that call's future.
pub(crate) struct Dispatcher<M: Milter> {
    pub(crate) milter: M,
    message: Option<M::Message>,
    /// A handler failed at a stage that owed no reply: the next reply is the fail-safe. Boxed:
    /// rare, and an `Error` is larger than everything else here.
    failed: Option<Box<Error>>,
    /// The shutdown step this connection acted on last (the only copy of it): from `Draining`
    /// connection-level commands get the fail-safe instead of the handlers; from `Closing` the
    /// next reply is the fail-safe, then the connection closes.
    pub(crate) shutdown: Shutdown,
    /// How many progress packets handlers asked for, all told.
    progress_requests: u32,
    /// The span of the open message; its `queue_id` is filled in when the MTA sends `i`.
    span: Option<MessageSpan>,
    /// Where handler times, messages, decisions and modifications are counted.
    meter: Meter,
}

impl<M: Milter> Dispatcher<M> {
    pub(crate) fn new(milter: M, config: &Config) -> Self {
        Dispatcher {
            milter,
            message: None,
            failed: None,
            shutdown: Shutdown::Running,
            progress_requests: 0,
            span: None,
            meter: Meter::new(config),
        }
    }

    /// The span for an event of `stage`: the message's span inside a message, else the current
    /// (connection) span.
    fn span(&mut self, stage: Stage, session: &MilterSession) -> Span {
        if !stage.in_message() {
            return Span::current();
        }
        let span = self.span.get_or_insert_with(|| {
            let span = tracing::debug_span!("message", queue_id = Empty);
            MessageSpan {
                // Nothing to record in a span no subscriber wants.
                queue_id_known: span.is_disabled(),
                span,
            }
        });
        if !span.queue_id_known {
            if let Some(id) = session.macros().get("i") {
                span.span
                    .record("queue_id", String::from_utf8_lossy(id).as_ref());
                span.queue_id_known = true;
            }
        }
        span.span.clone()
    }

    /// How many progress packets handlers asked for.
    pub(crate) fn progress_requests(&self) -> u32 {
        self.progress_requests
    }

    /// Handles one event from the session; the session's output then holds the answer.
    pub(crate) async fn event<W: Waiter>(
        &mut self,
        session: &mut MilterSession,
        config: &Config,
        event: Event,
        waiter: &mut W,
    ) -> Flow {
        let stage = match event.stage() {
            Some(stage) => stage,
            None => return self.lifecycle(session, event, config, waiter).await,
        };
        if session.awaiting().is_some() {
            if let Some(err) = self.failed.take() {
                return self.fail(session, config, stage, *err);
            }
            if self.shutdown >= Shutdown::Closing {
                self.fail_safe(session, config, stage);
                return Flow::Close(Error::Shutdown);
            }
            // MAIL has already opened the message in the session; it is still connection level.
            if self.shutdown >= Shutdown::Draining
                && (!session.in_message() || stage == Stage::Mail)
            {
                debug!(%stage, "shutting down: fail-safe instead of the handler");
                return self.fail_safe(session, config, stage);
            }
        }
        if stage.in_message() && self.message.is_none() {
            self.message = Some(M::Message::default());
            self.meter.message();
        }
        let started = self.meter.start();
        let mut counts = ModificationCounts::default();
        let span = self.span(stage, session);
        let deadline = config.handler_timeout;
        let macros_owner: &MilterSession = session;
        let macros = macros_owner.macros();
        let milter = &mut self.milter;
        let msg = &mut self.message;
        // One expansion per handler: each handler's future has its own type, and is awaited in
        // place (stored once in the command loop's future) rather than boxed; straight, not
        // through the waiter, which has nothing to do before end of message (one layer of
        // future less for every command).
        macro_rules! call {
            ($handler:expr) => {
                guarded(deadline, span.clone(), $handler).await
            };
        }
        let result = match (&event, msg.as_mut()) {
            (Event::Connect(connect), _) => call!(milter.connect(Connect { connect, macros })),
            (Event::Helo { name }, _) => call!(milter.helo(Helo { name, macros })),
            (Event::Unknown { line }, _) => call!(milter.unknown(Unknown { line, macros })),
            (Event::Mail(envelope), Some(m)) => call!(milter.mail(m, Mail { envelope, macros })),
            (Event::Rcpt(envelope), Some(m)) => call!(milter.rcpt(m, Rcpt { envelope, macros })),
            (Event::Data, Some(m)) => call!(milter.data(m, Data { macros })),
            (Event::Header { name, value }, Some(m)) => {
                call!(milter.header(
                    m,
                    Header {
                        name,
                        value,
                        macros
                    }
                ))
            }
            (Event::Eoh, Some(m)) => call!(milter.eoh(m, Eoh { macros })),
            (Event::Body(chunk), Some(m)) => call!(milter.body(m, Body { chunk, macros })),
            (Event::Eom, Some(m)) => {
                let progress = Progress::default();
                let mut eom = Eom::new(session, &progress);
                let r = {
                    let fut = pin!(guarded(
                        config.eom_timeout,
                        span.clone(),
                        milter.eom(m, &mut eom)
                    ));
                    waiter.wait(&progress, fut).await
                };
                let finished = eom.finish();
                counts = eom.counts;
                self.progress_requests += progress.count.into_inner();
                match (r, finished) {
                    (Err(io), _) => return Flow::Close(Error::Io(io)),
                    (Ok(Ok(Ok(_))), Err(source)) => {
                        return self.fail(session, config, stage, Error::Misuse { stage, source })
                    }
                    (Ok(r), _) => r,
                }
            }
            _ => Ok(Ok(Decision::Continue)),
        };
        self.meter.handler(stage.name(), started);
        let flow = span.in_scope(|| self.conclude(session, config, stage, result));
        if let (Stage::Eom, Flow::Continue) = (stage, &flow) {
            self.meter.modifications(&counts);
        }
        if !session.in_message() {
            self.message = None;
            self.span = None;
        }
        flow
    }

    /// Turns a handler's outcome into the answer.
    fn conclude(
        &mut self,
        session: &mut MilterSession,
        config: &Config,
        stage: Stage,
        result: Result<Result<Decision>, Failure>,
    ) -> Flow {
        let decision = match result {
            Ok(Ok(d)) => d,
            // A refused action passed on with `?` (`eom.add_header(..)?` without ADD_HEADER) is
            // the milter's misuse, and says so, rather than a handler's error.
            Ok(Err(source)) => {
                let err = match source.downcast::<milterkit_proto::MisuseError>() {
                    Ok(misuse) => Error::Misuse {
                        stage,
                        source: *misuse,
                    },
                    Err(source) => Error::Handler { stage, source },
                };
                return self.fail(session, config, stage, err);
            }
            Err(Failure::Panicked) => {
                return self.fail(session, config, stage, Error::Panicked { stage })
            }
            Err(Failure::TimedOut) => {
                return self.fail(session, config, stage, Error::HandlerTimeout { stage })
            }
        };
        if session.awaiting().is_none() {
            if decision != Decision::Continue {
                debug!(%stage, decision = decision.name(), "decision at a no-reply stage ignored");
            }
            return Flow::Continue;
        }
        // SKIP at BODY without SMFIP_SKIP agreed: libmilter sends it anyway, and an MTA that did
        // not agree may take it as an error; going on is what the handler meant.
        let decision = match decision {
            Decision::Skip
                if stage == Stage::Body && !session.agreement().is_some_and(|a| a.skip()) =>
            {
                debug!(%stage, "SKIP was not agreed: continue");
                Decision::Continue
            }
            d => d,
        };
        debug!(%stage, decision = decision.name(), "decided");
        let name = decision.name();
        match session.decide(decision) {
            Ok(()) => {
                self.meter.decision(stage, name);
                Flow::Continue
            }
            Err(source) => self.fail(session, config, stage, Error::Misuse { stage, source }),
        }
    }

    /// A handler failed: the fail-safe goes out now if a reply is owed (then the connection
    /// closes), or at the next reply otherwise.
    fn fail(
        &mut self,
        session: &mut MilterSession,
        config: &Config,
        stage: Stage,
        err: Error,
    ) -> Flow {
        if err.on_wire() == OnWire::Nothing {
            return Flow::Close(err);
        }
        if session.awaiting().is_none() {
            warn!(%stage, error = %err, source = ?std::error::Error::source(&err), "handler failed; the next reply is the fail-safe");
            self.failed = Some(Box::new(err));
            return Flow::Continue;
        }
        warn!(%stage, error = %err, source = ?std::error::Error::source(&err), "handler failed; fail-safe reply");
        session.discard_modifications();
        self.fail_safe(session, config, stage);
        if !session.in_message() {
            self.message = None;
        }
        Flow::Close(err)
    }

    /// Shutdown gave up the handler that was running (its future dropped): the awaited stage,
    /// if any, gets the fail-safe reply without the handler's modifications, so the MTA does not
    /// fall back on its own default action (which may be to accept).
    pub(crate) fn abandoned(&mut self, session: &mut MilterSession, config: &Config) {
        if let Some(stage) = session.awaiting() {
            warn!(%stage, "shutdown: a handler still running is given up; fail-safe reply");
            session.discard_modifications();
            self.fail_safe(session, config, stage);
        }
    }

    /// Answers the awaited stage with the configured fail-safe decision (tempfail where the
    /// configured one is not allowed).
    fn fail_safe(&mut self, session: &mut MilterSession, config: &Config, stage: Stage) -> Flow {
        let mut sent = config.fail_safe.name();
        if session.decide(config.fail_safe.clone()).is_err() {
            // Tempfail is allowed at every stage that is answered.
            sent = Decision::Tempfail.name();
            let _ = session.decide(Decision::Tempfail);
        }
        self.meter.fail_safe(stage);
        self.meter.decision(stage, sent);
        debug!(%stage, "fail-safe decision sent");
        if !session.in_message() {
            self.message = None;
        }
        Flow::Continue
    }

    /// OPTNEG, ABORT, QUIT and QUIT_NC.
    async fn lifecycle<W: Waiter>(
        &mut self,
        session: &mut MilterSession,
        event: Event,
        config: &Config,
        waiter: &mut W,
    ) -> Flow {
        match event {
            Event::Negotiate(offer) => {
                let mut request = Request {
                    stages: M::STAGES,
                    actions: M::ACTIONS,
                    ..Request::default()
                };
                let hook = guarded(
                    config.handler_timeout,
                    Span::current(),
                    self.milter.negotiate(&offer, &mut request),
                );
                let started = self.meter.start();
                let result = hook.await;
                self.meter.handler("NEGOTIATE", started);
                let err = match result {
                    Ok(Ok(())) => match session.negotiate(&request) {
                        Ok(agreement) => {
                            debug!(version = agreement.version, actions = ?agreement.actions, protocol = ?agreement.protocol, "negotiated");
                            return Flow::Continue;
                        }
                        Err(milterkit_proto::NegotiateError::Incompatible(e)) => {
                            Error::Protocol(milterkit_proto::ProtocolError::Incompatible(e))
                        }
                        Err(milterkit_proto::NegotiateError::Misuse(source)) => Error::Misuse {
                            stage: Stage::Connect,
                            source,
                        },
                        Err(_) => Error::Protocol(milterkit_proto::ProtocolError::Closed),
                    },
                    Ok(Err(source)) => Error::Handler {
                        stage: Stage::Connect,
                        source,
                    },
                    Err(Failure::Panicked) => Error::Panicked {
                        stage: Stage::Connect,
                    },
                    Err(Failure::TimedOut) => Error::HandlerTimeout {
                        stage: Stage::Connect,
                    },
                };
                debug!("negotiation failed; closing without a reply");
                Flow::Close(err)
            }
            Event::Abort => {
                self.abort(session, config, waiter).await;
                Flow::Continue
            }
            Event::Quit => Flow::Quit,
            Event::QuitNc => {
                self.close(config).await;
                self.failed = None;
                Flow::Continue
            }
            _ => Flow::Continue,
        }
    }

    /// One turn of the connection: every event the input holds, each answered into the session's
    /// output. `None` when more input is needed; the end of the connection otherwise: QUIT
    /// (`Ok`), or the error it closes with. The connection loop and the test harness both turn
    /// through here.
    pub(crate) async fn turn<W: Waiter>(
        &mut self,
        session: &mut MilterSession,
        config: &Config,
        waiter: &mut W,
    ) -> Option<Result<(), Error>> {
        loop {
            let event = match session.poll_event() {
                Ok(Some(e)) => e,
                Ok(None) => return None,
                Err(e) => return Some(Err(Error::Protocol(e))),
            };
            match self.event(session, config, event, waiter).await {
                Flow::Continue => {}
                Flow::Quit => return Some(Ok(())),
                Flow::Close(e) => return Some(Err(e)),
            }
        }
    }

    /// The end of a connection, however it came: the open message aborted, then the close
    /// handler. Call it once.
    pub(crate) async fn finish<W: Waiter>(
        &mut self,
        session: &MilterSession,
        config: &Config,
        waiter: &mut W,
    ) {
        if self.has_message() || session.in_message() {
            // On the heap: rare, and its future would make every connection's larger.
            Box::pin(self.abort(session, config, waiter)).await;
        }
        self.close(config).await;
    }

    /// Runs the abort handler for the open message, if any.
    pub(crate) async fn abort<W: Waiter>(
        &mut self,
        session: &MilterSession,
        config: &Config,
        waiter: &mut W,
    ) {
        let message = self.message.take().unwrap_or_default();
        let args = Abort {
            macros: session.macros(),
        };
        let span = self.span.take().map_or_else(Span::current, |s| s.span);
        let fut = guarded(
            config.handler_timeout,
            span,
            self.milter.abort(message, args),
        );
        let started = self.meter.start();
        // Waited for as end of message is: progress goes out on time while it runs.
        let progress = Progress::default();
        let result = waiter.wait(&progress, pin!(fut)).await;
        self.meter.handler("ABORT", started);
        match result {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "abort handler failed"),
            Ok(Err(_)) => warn!("abort handler panicked or ran past its deadline"),
            Err(e) => warn!(error = %e, "i/o error while the abort handler ran"),
        }
    }

    /// Runs the close handler, guarded.
    pub(crate) async fn close(&mut self, config: &Config) {
        self.message = None;
        self.span = None;
        let close = guarded(config.handler_timeout, Span::current(), self.milter.close());
        let started = self.meter.start();
        let result = close.await;
        self.meter.handler("CLOSE", started);
        if result.is_err() {
            warn!("close handler panicked or ran past its deadline");
        }
    }

    /// True while a message's state exists.
    pub(crate) fn has_message(&self) -> bool {
        self.message.is_some()
    }
}

#[cfg(test)]
mod tests {
    #[derive(Default)]
    struct Quiet;

    impl crate::Milter for Quiet {
        type Message = ();
    }

    /// Part of every connection's future, idle or not (see `tests/integration/memory.rs`): the
    /// settings stay in the `Config`, the progress requests in the end-of-message call.
    #[test]
    fn the_dispatcher_holds_only_what_lasts_between_commands() {
        let size = std::mem::size_of::<super::Dispatcher<Quiet>>();
        // The metrics handle (with the `metrics` feature) comes on top.
        let meter = std::mem::size_of::<crate::meter::Meter>();
        assert!(size <= 64 + meter, "Dispatcher grew: {size} bytes");
    }
}
