//! The MTA side of a session: commands out, the milter's answers up.

use std::collections::VecDeque;

use bytes::BytesMut;

use crate::command::Command;
use crate::error::{Incompatible, MisuseError, ProtocolError};
use crate::frame::{FrameDecoder, MILTER_CHUNK_SIZE};
use crate::negotiate::{Agreement, Offer};
use crate::response::{BodyRun, Decision, Modification, Response};
use crate::stage::{Order, Phase, Stage};

/// What the milter said, one item per response that matters to the MTA.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum MtaEvent {
    /// The milter answered OPTNEG and the answer fits the offer.
    Negotiated(Agreement),
    /// The milter's decision for `stage`; the wait is over.
    Decision {
        /// The stage that was answered.
        stage: Stage,
        /// What the milter decided.
        decision: Decision,
    },
    /// A modification, at end of message, before the decision.
    Modification(Modification),
    /// `SMFIR_PROGRESS`: restart the reply timer.
    Progress,
}

/// What [`MtaSession::send`] did with a command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "kind", content = "stage", rename_all = "snake_case")
)]
pub enum Sent {
    /// Sent; the milter owes a reply: feed input until [`MtaEvent::Decision`] for this stage.
    AwaitingReply(Stage),
    /// Sent; no reply comes (MACRO, ABORT, QUIT, QUIT_NC, or a no-reply stage).
    NoReply,
    /// Not sent: the milter asked not to see this stage, skipped the rest of the body, or already
    /// decided the message (or, at CONNECT/HELO, the whole session).
    Skipped,
}

/// Settings of an [`MtaSession`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MtaConfig {
    /// Largest payload accepted from the milter (replacement body chunks, headers). Default
    /// [`DEFAULT_MAX_PAYLOAD`](crate::frame::DEFAULT_MAX_PAYLOAD).
    pub max_payload: usize,
}

impl Default for MtaConfig {
    fn default() -> Self {
        MtaConfig {
            max_payload: crate::frame::DEFAULT_MAX_PAYLOAD,
        }
    }
}

/// The MTA side of one milter connection, without I/O: the mirror of
/// [`MilterSession`](crate::MilterSession).
///
/// # Contract
/// 1. [`new`](Self::new) queues the OPTNEG; write what [`poll_transmit`](Self::poll_transmit)
///    gives, then feed the milter's bytes to [`handle_input`](Self::handle_input) and call
///    [`poll_event`](Self::poll_event) until [`MtaEvent::Negotiated`].
/// 2. [`send`](Self::send) each command of the SMTP session in order (macros right before their
///    command). It answers [`Sent::Skipped`] for stages the milter declined and does not send them;
///    for [`Sent::AwaitingReply`], write, then read and poll until the [`MtaEvent::Decision`]
///    for that stage (modifications and progress may come first). Sending another reply-bearing
///    command before that is refused.
/// 3. A new MAIL or HELO inside an open message sends ABORT first, as Sendmail does.
/// 4. A `ProtocolError` means the milter broke the protocol: close it and apply your failure
///    policy (Postfix: `milter_default_action`; Sendmail: the `F=` flags).
///
/// ```
/// use milterkit_proto::{Command, Decision, MilterSession, MtaEvent, MtaSession, Offer, Request, Sent, Event, Stage};
/// use bytes::{Bytes, BytesMut};
///
/// let mut mta = MtaSession::new(Offer::default(), Default::default());
/// let mut milter = MilterSession::new(Default::default());
/// let mut wire = BytesMut::new();
/// // One round trip: MTA bytes to the milter, milter bytes back.
/// fn pump(mta: &mut MtaSession, milter: &mut MilterSession, wire: &mut BytesMut) -> Vec<MtaEvent> {
///     mta.poll_transmit(wire);
///     milter.handle_input(&wire.split());
///     while let Some(e) = milter.poll_event().unwrap() {
///         match e {
///             Event::Negotiate(_) => { milter.negotiate(&Request::default()).unwrap(); }
///             _ if milter.awaiting().is_some() => milter.decide(Decision::Continue).unwrap(),
///             _ => {}
///         }
///     }
///     milter.poll_transmit(wire);
///     mta.handle_input(&wire.split());
///     std::iter::from_fn(|| mta.poll_event().unwrap()).collect()
/// }
/// assert!(matches!(pump(&mut mta, &mut milter, &mut wire)[..], [MtaEvent::Negotiated(_)]));
/// let sent = mta.send(Command::Helo { name: Bytes::from("client.example") }).unwrap();
/// assert_eq!(sent, Sent::AwaitingReply(Stage::Helo));
/// assert_eq!(
///     pump(&mut mta, &mut milter, &mut wire),
///     [MtaEvent::Decision { stage: Stage::Helo, decision: Decision::Continue }]
/// );
/// ```
#[derive(Debug)]
pub struct MtaSession {
    decoder: FrameDecoder,
    input: BytesMut,
    out: BytesMut,
    offer: Offer,
    phase: Phase,
    agreement: Option<Agreement>,
    awaiting: Awaiting,
    /// The milter answered SKIP: no more BODY until EOM.
    skipping_body: bool,
    /// The milter decided the open message: its remaining commands are skipped until MAIL or ABORT.
    message_decided: bool,
    /// The milter accepted the whole session at CONNECT or HELO.
    session_accepted: bool,
    /// At EOM: where the replacement body run stands.
    body_run: BodyRun,
    events: VecDeque<MtaEvent>,
    error: Option<ProtocolError>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Awaiting {
    Nothing,
    Negotiation,
    Reply(Stage),
}

impl MtaSession {
    /// A session that offers `offer`; its OPTNEG is queued for [`poll_transmit`](Self::poll_transmit).
    pub fn new(offer: Offer, config: MtaConfig) -> Self {
        let mut out = BytesMut::new();
        Command::Optneg(offer).encode(&mut out);
        MtaSession {
            decoder: FrameDecoder::new(config.max_payload),
            input: BytesMut::new(),
            out,
            offer,
            phase: Phase::Init,
            agreement: None,
            awaiting: Awaiting::Negotiation,
            skipping_body: false,
            message_decided: false,
            session_accepted: false,
            body_run: BodyRun::NotStarted,
            events: VecDeque::new(),
            error: None,
        }
    }

    /// Queues `cmd` if the session should send it now; see [`Sent`].
    pub fn send(&mut self, cmd: Command) -> Result<Sent, MisuseError> {
        if self.error.is_some() {
            return Err(MisuseError::Closed);
        }
        let name = cmd.name();
        match self.awaiting {
            Awaiting::Negotiation => {
                return Err(MisuseError::CannotSend {
                    command: name,
                    state: "before the OPTNEG reply",
                })
            }
            Awaiting::Reply(stage) => return Err(MisuseError::ReplyPending(stage)),
            Awaiting::Nothing => {}
        }
        let Some(agreement) = &self.agreement else {
            return Err(MisuseError::Closed);
        };
        if self.phase == Phase::Closed {
            return Err(MisuseError::CannotSend {
                command: name,
                state: "after QUIT",
            });
        }
        let max = agreement.max_payload();
        match &cmd {
            Command::Optneg(_) => {
                return Err(MisuseError::CannotSend {
                    command: name,
                    state: "twice",
                })
            }
            Command::Macro { stage, .. } => {
                if let Some(s) = Stage::from_code(*stage) {
                    let suppressed = matches!(s, Stage::Header | Stage::Eoh | Stage::Body)
                        && !agreement.sends(s);
                    if suppressed || self.skips(s) {
                        return Ok(Sent::Skipped);
                    }
                }
                self.encode(&cmd, max)?;
                return Ok(Sent::NoReply);
            }
            Command::Abort => {
                self.encode(&cmd, max)?;
                self.end_message();
                return Ok(Sent::NoReply);
            }
            Command::Quit | Command::QuitNc => {
                self.encode(&cmd, max)?;
                self.end_message();
                self.session_accepted = false;
                self.phase = if matches!(cmd, Command::Quit) {
                    Phase::Closed
                } else {
                    Phase::Negotiated
                };
                return Ok(Sent::NoReply);
            }
            Command::Body(chunk) if chunk.len() > MILTER_CHUNK_SIZE => {
                return Err(MisuseError::TooLarge {
                    len: chunk.len(),
                    max: MILTER_CHUNK_SIZE,
                })
            }
            Command::Eom { chunk } if !chunk.is_empty() => {
                return Err(MisuseError::Invalid {
                    what: "EOM",
                    reason: "carries body data; send it as BODY",
                })
            }
            _ => {}
        }
        let Some(stage) = cmd.stage() else {
            return Err(MisuseError::CannotSend {
                command: name,
                state: "now",
            });
        };
        if self.skips(stage) {
            return Ok(Sent::Skipped);
        }
        let (sends, expects_reply, sent) = (
            agreement.sends(stage),
            agreement.expects_reply(stage),
            agreement.sent_stages(),
        );
        match self.phase.admit(stage, sent) {
            Order::Refuse(state) => {
                return Err(MisuseError::CannotSend {
                    command: name,
                    state,
                })
            }
            Order::AbortFirst => {
                self.encode(&Command::Abort, max)?;
                self.end_message();
            }
            Order::Ok => {}
        }
        if sends {
            self.encode(&cmd, max)?;
        }
        if stage == Stage::Mail {
            self.end_message();
        }
        self.phase = self.phase.after(stage);
        if !sends {
            return Ok(Sent::Skipped);
        }
        if expects_reply {
            self.awaiting = Awaiting::Reply(stage);
            Ok(Sent::AwaitingReply(stage))
        } else {
            Ok(Sent::NoReply)
        }
    }

    /// True if commands of `stage` are not sent because of an earlier decision.
    fn skips(&self, stage: Stage) -> bool {
        if self.session_accepted {
            return true;
        }
        match stage {
            Stage::Mail | Stage::Connect | Stage::Helo | Stage::Unknown => false,
            Stage::Body if self.skipping_body => true,
            _ => self.message_decided,
        }
    }

    fn end_message(&mut self) {
        self.message_decided = false;
        self.skipping_body = false;
        self.body_run = BodyRun::NotStarted;
        if self.phase.in_message() {
            self.phase = Phase::Connected;
        }
    }

    fn encode(&mut self, cmd: &Command, max: usize) -> Result<(), MisuseError> {
        let start = self.out.len();
        cmd.encode(&mut self.out);
        let len = self.out.len() - start - 5;
        if len > max {
            self.out.truncate(start);
            return Err(MisuseError::TooLarge { len, max });
        }
        Ok(())
    }

    /// Buffers bytes received from the milter.
    pub fn handle_input(&mut self, data: &[u8]) {
        self.input.extend_from_slice(data);
    }

    /// The input buffer, to read into directly (append at its end).
    pub fn input_mut(&mut self) -> &mut BytesMut {
        &mut self.input
    }

    /// The next thing the milter said, `Ok(None)` when more input is needed.
    pub fn poll_event(&mut self) -> Result<Option<MtaEvent>, ProtocolError> {
        loop {
            if let Some(e) = &self.error {
                return Err(e.clone());
            }
            if let Some(e) = self.events.pop_front() {
                return Ok(Some(e));
            }
            let frame = match self.decoder.decode(&mut self.input) {
                Ok(Some(f)) => f,
                Ok(None) => return Ok(None),
                Err(e) => return Err(self.fail(e.into())),
            };
            let result = Response::decode(frame).and_then(|r| self.response(r));
            if let Err(e) = result {
                return Err(self.fail(e));
            }
        }
    }

    fn fail(&mut self, e: ProtocolError) -> ProtocolError {
        self.error = Some(e.clone());
        self.events.clear();
        e
    }

    fn response(&mut self, resp: Response) -> Result<(), ProtocolError> {
        let code = resp.code();
        let unexpected = |state| ProtocolError::UnexpectedResponse { code, state };
        let stage = match self.awaiting {
            Awaiting::Nothing => return Err(unexpected("when no reply is awaited")),
            Awaiting::Negotiation => {
                let Response::Optneg(a) = resp else {
                    return Err(Incompatible::NotOptneg { code }.into());
                };
                let agreement =
                    Agreement::from_reply(&self.offer, a.version, a.actions, a.protocol, a.macros)?;
                self.agreement = Some(agreement.clone());
                self.awaiting = Awaiting::Nothing;
                self.phase = Phase::Negotiated;
                self.events.push_back(MtaEvent::Negotiated(agreement));
                return Ok(());
            }
            Awaiting::Reply(stage) => stage,
        };
        let agreement = self.agreement.as_ref().ok_or(ProtocolError::Closed)?;
        match resp {
            Response::Progress => self.events.push_back(MtaEvent::Progress),
            Response::Modification(m) => {
                if stage != Stage::Eom {
                    return Err(unexpected("outside end of message"));
                }
                if !agreement.actions.contains(m.action()) {
                    return Err(unexpected("without its action negotiated"));
                }
                if !self.body_run.admits(&m) {
                    return Err(unexpected("after the replacement body run ended"));
                }
                self.body_run = self.body_run.after(&m);
                self.events.push_back(MtaEvent::Modification(m));
            }
            Response::Decision(decision) => {
                if !decision.allowed_at(stage, agreement) {
                    return Err(unexpected("at this stage"));
                }
                if decision == Decision::Skip {
                    self.skipping_body = true;
                }
                let ends = ends_message(stage, &decision);
                if matches!(stage, Stage::Connect | Stage::Helo) && decision == Decision::Accept {
                    self.session_accepted = true;
                }
                self.phase = self.phase.after_decision(stage, ends);
                if stage == Stage::Eom {
                    self.end_message();
                } else if ends {
                    self.message_decided = true;
                }
                self.awaiting = Awaiting::Nothing;
                self.events
                    .push_back(MtaEvent::Decision { stage, decision });
            }
            Response::Optneg(_) | Response::ConnFail => {
                return Err(unexpected("after negotiation"))
            }
        }
        Ok(())
    }

    /// Moves every queued byte into `dst`; true if there was any. Write `dst` in one write.
    pub fn poll_transmit(&mut self, dst: &mut BytesMut) -> bool {
        crate::frame::transmit(&mut self.out, dst)
    }

    /// The agreement, once the milter answered OPTNEG.
    pub fn agreement(&self) -> Option<&Agreement> {
        self.agreement.as_ref()
    }

    /// The stage whose reply is awaited, if any.
    pub fn awaiting(&self) -> Option<Stage> {
        match self.awaiting {
            Awaiting::Reply(s) => Some(s),
            _ => None,
        }
    }

    /// True while the OPTNEG reply is awaited.
    pub fn negotiating(&self) -> bool {
        self.awaiting == Awaiting::Negotiation
    }

    /// True while a message is open.
    pub fn in_message(&self) -> bool {
        self.phase.in_message()
    }

    /// True when the milter accepted the whole session at CONNECT or HELO: it wants nothing more
    /// (Postfix then closes the connection; Sendmail sends QUIT).
    pub fn session_accepted(&self) -> bool {
        self.session_accepted
    }

    /// True once QUIT was sent or the milter broke the protocol.
    pub fn is_closed(&self) -> bool {
        self.phase == Phase::Closed || self.error.is_some()
    }
}

/// True if `decision` at `stage` ends the open message: everything at EOM; accept and discard at
/// RCPT (reject and tempfail there refuse one recipient); anything but continue and skip at the
/// other message stages.
fn ends_message(stage: Stage, decision: &Decision) -> bool {
    match stage {
        Stage::Eom => true,
        Stage::Rcpt => matches!(decision, Decision::Accept | Decision::Discard),
        Stage::Mail | Stage::Data | Stage::Header | Stage::Eoh | Stage::Body => {
            !matches!(decision, Decision::Continue | Decision::Skip)
        }
        Stage::Connect | Stage::Helo | Stage::Unknown => false,
    }
}
