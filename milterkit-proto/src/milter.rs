//! The milter side of a session: commands in, events up, decisions and modifications out.

use std::collections::VecDeque;

use bytes::{Buf, BytesMut};

use crate::command::Command;
use crate::error::{Incompatible, MisuseError, ProtocolError};
pub use crate::event::Event;
use crate::frame::{FrameDecoder, MILTER_CHUNK_SIZE};
use crate::macros::Macros;
use crate::negotiate::{negotiate, Agreement, Offer, Request};
use crate::order::{admit, after_decision, Admit, State};
use crate::response::{BodyRun, Decision, Modification, Response};
use crate::stage::{Stage, Stages};

/// What the session waits for from its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Pending {
    Nothing,
    Negotiation(Offer),
    Decision(Stage),
}

/// The milter side of one connection, without I/O.
///
/// # Contract
/// 1. When bytes arrive, pass them to [`handle_input`](Self::handle_input) (or read straight into
///    [`input_mut`](Self::input_mut)); at end of stream call [`handle_eof`](Self::handle_eof).
/// 2. Call [`poll_event`](Self::poll_event) until it returns `Ok(None)`.
///    - For [`Event::Negotiate`], call [`negotiate`](Self::negotiate) once.
///    - When [`awaiting`](Self::awaiting) is `Some(stage)` after an event, answer with exactly one
///      [`decide`](Self::decide); at end of message, call [`modify`](Self::modify) and
///      [`progress`](Self::progress) any number of times first. Until then `poll_event` returns
///      `Ok(None)`, so macros stay as they were for that event.
///    - Other events (ABORT, QUIT, no-reply stages) need no answer.
/// 3. Call [`poll_transmit`](Self::poll_transmit) and write what it gives in **one** write.
/// 4. A `ProtocolError` from `poll_event` means: close the connection (after calling the abort
///    and close handlers). A `MisuseError` means the call was refused and nothing changed.
///
/// The session never reads a clock and never blocks. It sends nothing for ABORT, MACRO, QUIT and
/// no-reply stages; answers CONTINUE itself for stages the milter did not ask for but the MTA
/// sent anyway, and for no-reply stages the MTA could not leave unanswered; refuses modifications
/// that were not negotiated or come outside end of message; and splits replacement bodies into
/// 65,535-byte chunks.
///
/// ```
/// use milterkit_proto::{Actions, Command, Decision, Event, MilterSession, Modification, Offer, Request, Stages};
/// use bytes::{Bytes, BytesMut};
///
/// let mut session = MilterSession::new(Default::default());
/// let mut wire = BytesMut::new();
/// Command::Optneg(Offer::default()).encode(&mut wire);
/// Command::Eom { chunk: Bytes::new() }.encode(&mut wire); // an MTA that skipped every stage
/// session.handle_input(&wire);
///
/// let request = Request { stages: Stages::EOM, actions: Actions::ADD_HEADER, ..Request::default() };
/// while let Some(event) = session.poll_event()? {
///     match event {
///         Event::Negotiate(_) => { session.negotiate(&request).unwrap(); }
///         Event::Eom => {
///             session.modify(Modification::AddHeader { name: "X-Seen".into(), value: "yes".into() }).unwrap();
///             session.decide(Decision::Continue).unwrap();
///         }
///         other => panic!("unexpected {other:?}"),
///     }
/// }
/// let mut out = BytesMut::new();
/// session.poll_transmit(&mut out);
/// assert!(out.ends_with(b"\0\0\0\x01c"));
/// # Ok::<(), milterkit_proto::ProtocolError>(())
/// ```
#[derive(Debug)]
pub struct MilterSession {
    decoder: FrameDecoder,
    input: BytesMut,
    out: BytesMut,
    /// libmilter's state: the last command taken (see [`crate::order`]).
    state: State,
    /// A message is open: from its first command until end of message, an abort, or a decision
    /// that returns to connection level. Its state lives in the caller until then.
    open: bool,
    /// QUIT, end of input, or a dropped QUIT: nothing more is read.
    closed: bool,
    agreement: Option<Agreement>,
    /// Stages the milter asked to see.
    wanted: Stages,
    /// No-reply stages the MTA still expects a reply for: answered CONTINUE by the session.
    emulated_no_reply: Stages,
    /// Stages the MTA sends no reply for, from the agreement (none before it).
    no_reply: Stages,
    /// Stages the MTA does not send, from the agreement: libmilter's transition table steps over
    /// their states.
    skip: Stages,
    macros: Macros,
    /// Clears to apply before the next frame: set by ABORT and QUIT_NC so the handler of that
    /// event still sees the macros.
    clear_message_macros: bool,
    clear_all_macros: bool,
    ready: VecDeque<(Event, Pending)>,
    pending: Pending,
    body_run: BodyRun,
    /// Where the output for the awaited decision starts: what `discard_modifications` drops to.
    reply_start: usize,
    /// The MTA closed its end.
    eof: bool,
    error: Option<ProtocolError>,
}

/// Settings of a [`MilterSession`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MilterConfig {
    /// Largest payload accepted from the MTA; default [`DEFAULT_MAX_PAYLOAD`](crate::frame::DEFAULT_MAX_PAYLOAD).
    pub max_payload: usize,
}

impl Default for MilterConfig {
    fn default() -> Self {
        MilterConfig {
            max_payload: crate::frame::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// Why [`MilterSession::negotiate`] failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum NegotiateError {
    /// No OPTNEG is waiting for an answer.
    #[error(transparent)]
    Misuse(#[from] MisuseError),
    /// The MTA cannot give what the milter needs; the session is closed and the connection should
    /// be closed without a reply, as libmilter does.
    #[error(transparent)]
    Incompatible(#[from] Incompatible),
}

impl MilterSession {
    /// A session waiting for the MTA's OPTNEG.
    pub fn new(config: MilterConfig) -> Self {
        MilterSession {
            decoder: FrameDecoder::new(config.max_payload),
            input: BytesMut::new(),
            out: BytesMut::new(),
            state: State::Init,
            open: false,
            closed: false,
            agreement: None,
            wanted: Stages::all(),
            emulated_no_reply: Stages::empty(),
            no_reply: Stages::empty(),
            skip: Stages::empty(),
            macros: Macros::default(),
            clear_message_macros: false,
            clear_all_macros: false,
            ready: VecDeque::new(),
            pending: Pending::Nothing,
            body_run: BodyRun::NotStarted,
            reply_start: 0,
            eof: false,
            error: None,
        }
    }

    /// Buffers bytes received from the MTA.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// The input buffer, to read into directly (append at its end).
    pub fn input_mut(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// The MTA closed the connection. Complete commands still buffered are handed up first; then
    /// an open message is aborted ([`Event::Abort`]) and the session ends. A trailing partial
    /// frame is dropped.
    pub fn handle_eof(&mut self) {
        self.eof = true;
    }

    /// The next event, `Ok(None)` when more input is needed or an answer is awaited.
    pub fn poll_event(&mut self) -> Result<Option<Event>, ProtocolError> {
        loop {
            if let Some(e) = &self.error {
                return Err(e.clone());
            }
            if self.pending != Pending::Nothing {
                return Ok(None);
            }
            if let Some((event, pending)) = self.ready.pop_front() {
                self.pending = pending;
                self.reply_start = self.out.len();
                return Ok(Some(event));
            }
            if self.closed {
                return Ok(None);
            }
            if std::mem::take(&mut self.clear_all_macros) {
                self.macros.clear();
            }
            if std::mem::take(&mut self.clear_message_macros) {
                self.macros.clear_message();
            }
            let (code, len) = match self.decoder.complete(&mut self.input) {
                Ok(Some(f)) => f,
                Ok(None) if self.eof => {
                    self.abort_message();
                    self.closed = true;
                    continue;
                }
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(e.into())),
            };
            if code == crate::command::code::MACRO {
                // Half of what an MTA sends: read in place and copied into the macro slots,
                // without a frame, a command or a vector of pairs.
                if let Err(e) = self.macro_packet(len) {
                    return Err(self.fail(e));
                }
                continue;
            }
            let frame = crate::frame::take(&mut self.input, code, len);
            match Command::decode(frame) {
                Ok(cmd) => match self.command(cmd) {
                    Ok(Some((event, pending))) if self.ready.is_empty() => {
                        self.pending = pending;
                        self.reply_start = self.out.len();
                        return Ok(Some(event));
                    }
                    Ok(Some(ready)) => self.ready.push_back(ready),
                    Ok(None) => {}
                    Err(e) => return Err(self.fail(e)),
                },
                Err(e) => return Err(self.fail(e)),
            }
        }
    }

    /// The complete `SMFIC_MACRO` frame at the front of the input, with a payload of `len`
    /// bytes: as `Command::decode` then [`Macros::set`] would take it. libmilter ignores macro
    /// packets it cannot parse, as long as they have a stage.
    fn macro_packet(&mut self, len: usize) -> Result<(), ProtocolError> {
        let start = crate::frame::LEN_BYTES + 1;
        let payload = &self.input[start..start + len];
        let Some((&stage, pairs)) = payload.split_first() else {
            return Err(ProtocolError::Malformed {
                code: crate::command::code::MACRO,
                reason: "macro packet without a stage",
            });
        };
        // Taken in any state, as libmilter takes them (`ST_NONE`); OPTNEG clears them.
        if let Some(strings) = crate::macros::well_formed(pairs) {
            self.macros.set_wire(stage, pairs, strings);
        }
        self.input.advance(start + len);
        Ok(())
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.error = Some(e.clone());
        self.pending = Pending::Nothing;
        self.ready.clear();
        e
    }

    /// Applies one command; gives the event it raises last, to hand up after those queued in
    /// `ready` (most commands raise exactly one and queue nothing). The order is libmilter's
    /// (see [`crate::order`]).
    fn command(&mut self, cmd: Command) -> Result<Option<(Event, Pending)>, ProtocolError> {
        let code = cmd.code();
        let Some(to) = State::of(&cmd) else {
            if let Command::Macro { stage, pairs } = cmd {
                self.macros.set(stage, pairs);
            }
            return Ok(None);
        };
        if self.agreement.is_none() && to != State::Opts {
            // Intended difference 2 of `crate::order`.
            return Err(ProtocolError::OutOfOrder {
                code,
                state: State::Init.describe(),
            });
        }
        let expects_reply = match to.stage() {
            Some(s) => !self.no_reply.has(s),
            None => to == State::Opts,
        };
        match admit(self.state, to, self.skip) {
            Admit::Direct => {
                // Intended difference 3: libmilter starts over from UNKNOWN without an abort.
                if self.state == State::Unkn
                    && matches!(to, State::Mail | State::Helo | State::Quit | State::QuitNc)
                {
                    self.abort_message();
                }
            }
            Admit::FromHelo => self.abort_message(),
            Admit::Ignored if expects_reply => {
                // Intended difference 1: libmilter would leave the MTA waiting for a reply.
                return Err(ProtocolError::OutOfOrder {
                    code,
                    state: self.state.describe(),
                });
            }
            Admit::Ignored => {
                self.abort_message();
                self.state = State::Helo;
                if to == State::Quit {
                    // libmilter's loop ends at QUIT even when it drops it.
                    self.quit(false);
                }
                return Ok(None);
            }
        }
        let (event, stage) = match cmd {
            Command::Optneg(offer) => {
                self.state = State::Opts;
                self.macros.clear();
                return Ok(Some((Event::Negotiate(offer), Pending::Negotiation(offer))));
            }
            Command::Abort => {
                if self.open {
                    self.abort_message();
                    self.clear_message_macros = true;
                }
                self.state = State::Abrt;
                return Ok(None);
            }
            Command::Quit | Command::QuitNc => {
                self.abort_message();
                self.quit(matches!(cmd, Command::QuitNc));
                return Ok(None);
            }
            Command::Connect(c) => (Event::Connect(c), Stage::Connect),
            Command::Helo { name } => (Event::Helo { name }, Stage::Helo),
            Command::Mail(e) => (Event::Mail(e), Stage::Mail),
            Command::Rcpt(e) => (Event::Rcpt(e), Stage::Rcpt),
            Command::Data => (Event::Data, Stage::Data),
            Command::Header { name, value } => (Event::Header { name, value }, Stage::Header),
            Command::Eoh => (Event::Eoh, Stage::Eoh),
            Command::Body(chunk) => (Event::Body(chunk), Stage::Body),
            Command::Eom { chunk } => {
                if !chunk.is_empty() && self.wanted.has(Stage::Body) {
                    // libmilter hands a chunk inside BODYEOB to the body callback first; its
                    // decision cannot be sent (the EOM reply is the only one owed), so none is asked.
                    self.ready.push_back((Event::Body(chunk), Pending::Nothing));
                }
                (Event::Eom, Stage::Eom)
            }
            Command::Unknown { line } => (Event::Unknown { line }, Stage::Unknown),
            Command::Macro { .. } => return Ok(None),
        };
        self.open |= to.opens_message();
        self.state = to;
        self.macros.command(stage);
        let wanted = self.wanted.has(stage) || stage == Stage::Eom;
        if expects_reply && (!wanted || self.emulated_no_reply.has(stage)) {
            Response::Decision(Decision::Continue).encode(&mut self.out);
        }
        if wanted {
            let pending = if expects_reply && !self.emulated_no_reply.has(stage) {
                Pending::Decision(stage)
            } else {
                Pending::Nothing
            };
            return Ok(Some((event, pending)));
        }
        Ok(None)
    }

    /// Ends the open message without end of message: [`Event::Abort`] is queued.
    fn abort_message(&mut self) {
        if std::mem::take(&mut self.open) {
            self.ready.push_back((Event::Abort, Pending::Nothing));
        }
    }

    /// QUIT (the session ends) or QUIT_NC (a new one follows with CONNECT).
    fn quit(&mut self, new_session: bool) {
        self.ready.push_back((
            if new_session {
                Event::QuitNc
            } else {
                Event::Quit
            },
            Pending::Nothing,
        ));
        self.state = if new_session {
            State::QuitNc
        } else {
            State::Quit
        };
        self.closed = !new_session;
        self.clear_all_macros = true;
    }

    /// Moves to the state after a decision (see [`after_decision`]); the message is over once
    /// that is outside a transaction (an open message survives UNKNOWN).
    fn after_reply(&mut self, next: State) {
        self.state = next;
        self.open &= next.in_mail() || next == State::Unkn;
    }

    /// Answers the OPTNEG with what `request` asks for, within what the MTA offered. On
    /// [`NegotiateError::Incompatible`] nothing is sent and the session is closed: close the
    /// connection (libmilter does the same; the MTA then applies its failure policy).
    pub fn negotiate(&mut self, request: &Request) -> Result<&Agreement, NegotiateError> {
        let Pending::Negotiation(offer) = self.pending else {
            return Err(MisuseError::NotAwaiting.into());
        };
        self.pending = Pending::Nothing;
        let agreement = match negotiate(&offer, request) {
            Ok(a) => a,
            Err(e) => {
                self.fail(ProtocolError::Incompatible(e.clone()));
                return Err(e.into());
            }
        };
        self.wanted = request.stages | Stages::EOM;
        self.emulated_no_reply = Stage::ALL
            .into_iter()
            .filter(|s| request.no_reply.has(*s) && agreement.expects_reply(*s))
            .fold(Stages::empty(), |acc, s| acc | s.as_set());
        self.no_reply = Stage::ALL
            .into_iter()
            .filter(|s| !agreement.expects_reply(*s))
            .fold(Stages::empty(), |acc, s| acc | s.as_set());
        self.skip = Stages::all().difference(agreement.sent_stages());
        Response::Optneg(agreement.clone()).encode(&mut self.out);
        Ok(self.agreement.insert(agreement))
    }

    /// Answers the event awaiting a decision.
    ///
    /// Refused (nothing sent, still awaiting) when no decision is awaited, and for a decision the
    /// stage does not allow ([`Decision::allowed_at`]: SKIP outside BODY or without `SMFIP_SKIP`,
    /// DISCARD at CONNECT or HELO).
    pub fn decide(&mut self, decision: Decision) -> Result<(), MisuseError> {
        if self.error.is_some() {
            return Err(MisuseError::Closed);
        }
        let Pending::Decision(stage) = self.pending else {
            return Err(MisuseError::NotAwaiting);
        };
        let allowed = self
            .agreement
            .as_ref()
            .is_some_and(|a| decision.allowed_at(stage, a));
        if !allowed {
            return Err(MisuseError::DecisionNotAllowed {
                stage,
                decision: decision.name(),
            });
        }
        let next = after_decision(self.state, &decision);
        Response::Decision(decision).encode(&mut self.out);
        self.pending = Pending::Nothing;
        self.after_reply(next);
        if stage == Stage::Eom {
            self.body_run = BodyRun::NotStarted;
        }
        Ok(())
    }

    /// Queues a modification, at end of message before the decision. Checked against the
    /// agreement and the limits of the MTAs; a replacement body of any size is split into
    /// 65,535-byte chunks.
    pub fn modify(&mut self, m: Modification) -> Result<(), MisuseError> {
        self.check_eom(m.name())?;
        let agreement = self.agreement.as_ref().ok_or(MisuseError::Closed)?;
        if !agreement.actions.contains(m.action()) {
            return Err(MisuseError::NotNegotiated {
                what: m.name(),
                needs: m.action(),
            });
        }
        m.validate()?;
        if !self.body_run.admits(&m) {
            return Err(MisuseError::BodyNotContiguous);
        }
        let run = self.body_run.after(&m);
        if let Modification::ReplaceBody { chunk } = m {
            self.body_run = run;
            // An empty replacement is one empty packet; anything else goes in full-size chunks.
            let mut rest = chunk;
            loop {
                let part = rest.split_to(rest.len().min(MILTER_CHUNK_SIZE));
                Response::Modification(Modification::ReplaceBody { chunk: part })
                    .encode(&mut self.out);
                if rest.is_empty() {
                    break;
                }
            }
            return Ok(());
        }
        let len = m.payload_len();
        if len > agreement.max_payload() {
            return Err(MisuseError::TooLarge {
                len,
                max: agreement.max_payload(),
            });
        }
        self.body_run = run;
        Response::Modification(m).encode(&mut self.out);
        Ok(())
    }

    /// Queues `SMFIR_PROGRESS` (`smfi_progress`): at end of message, tells the MTA to keep waiting.
    #[doc(alias = "smfi_progress")]
    pub fn progress(&mut self) -> Result<(), MisuseError> {
        self.check_eom("progress")?;
        Response::Progress.encode(&mut self.out);
        Ok(())
    }

    fn check_eom(&self, what: &'static str) -> Result<(), MisuseError> {
        if self.error.is_some() {
            return Err(MisuseError::Closed);
        }
        match self.pending {
            Pending::Decision(Stage::Eom) => Ok(()),
            _ => Err(MisuseError::OutsideEom(what)),
        }
    }

    /// Drops the modifications and progress queued for the awaited end of message (and not yet
    /// taken by [`poll_transmit`](Self::poll_transmit)), so that a fail-safe decision goes out
    /// alone.
    pub fn discard_modifications(&mut self) {
        if self.pending == Pending::Decision(Stage::Eom) {
            self.out.truncate(self.reply_start);
            self.body_run = BodyRun::NotStarted;
        }
    }

    /// Moves every queued byte into `dst`; true if there was any. Write `dst` in one write.
    pub fn poll_transmit(&mut self, dst: &mut BytesMut) -> bool {
        self.reply_start = 0;
        crate::frame::transmit(&mut self.out, dst)
    }

    /// The stage whose decision is awaited, if any.
    pub fn awaiting(&self) -> Option<Stage> {
        match self.pending {
            Pending::Decision(s) => Some(s),
            _ => None,
        }
    }

    /// The agreement, once negotiated.
    pub fn agreement(&self) -> Option<&Agreement> {
        self.agreement.as_ref()
    }

    /// The macros in effect for the latest event.
    pub fn macros(&self) -> &Macros {
        &self.macros
    }

    /// True while a message is open (from its first command until its end, abort, or a decision
    /// that ends it).
    pub fn in_message(&self) -> bool {
        self.open
    }

    /// True once the session has ended (QUIT, end of stream, or a protocol error).
    pub fn is_closed(&self) -> bool {
        self.closed || self.error.is_some()
    }

    /// Bytes received and not yet decoded.
    pub fn buffered(&self) -> usize {
        self.input.len()
    }
}
