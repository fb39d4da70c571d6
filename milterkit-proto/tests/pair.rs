//! Property test of both sessions: random transactions through an `MtaSession` and a
//! `MilterSession` joined in memory deliver exactly what a scripted milter decided.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod strategies;

use std::collections::HashMap;
use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use milterkit_proto::frame::MILTER_CHUNK_SIZE;
use milterkit_proto::{
    Actions, Command, Connect, Decision, Envelope, Event, FrameDecoder, MilterConfig,
    MilterSession, Modification, MtaConfig, MtaEvent, MtaSession, Offer, ProtocolFlags, Request,
    Sent, Stage, Stages,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::test_runner::TestCaseError;

use strategies::*;

// ---------------------------------------------------------------------------------------------
// Property 4: random transactions through MtaSession ⇄ MilterSession
// ---------------------------------------------------------------------------------------------

/// A large byte string described by its length and a seed, so failures print short.
#[derive(Debug, Clone, Copy)]
struct Blob {
    len: usize,
    seed: u64,
}

impl Blob {
    fn bytes(self) -> Bytes {
        let mut x = self.seed | 1;
        let mut out = Vec::with_capacity(self.len + 8);
        while out.len() < self.len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            out.extend_from_slice(&x.to_le_bytes());
        }
        out.truncate(self.len);
        Bytes::from(out)
    }
}

fn blob(max: usize) -> impl Strategy<Value = Blob> {
    (0..=max, any::<u64>()).prop_map(|(len, seed)| Blob { len, seed })
}

/// One thing the milter does at end of message before deciding.
#[derive(Debug, Clone)]
enum EomStep {
    Modify(Modification),
    ReplaceBody(Blob),
    Progress,
}

#[derive(Debug, Clone)]
struct Transaction {
    /// An SMTP command the MTA does not know, before MAIL.
    unknown: Option<(Bytes, Decision)>,
    sender: (Envelope, Decision),
    rcpts: Vec<(Envelope, Decision)>,
    data: Decision,
    headers: Vec<(Bytes, Bytes, Decision)>,
    eoh: Decision,
    body: Blob,
    /// One decision per body chunk (more than enough).
    body_decisions: Vec<Decision>,
    eom: Vec<EomStep>,
    eom_decision: Decision,
    queue_id: Bytes,
}

#[derive(Debug, Clone)]
struct Plan {
    /// What the MTA offers.
    offer: Offer,
    /// What the milter asks for.
    stages: Stages,
    no_reply: Stages,
    connect: (Connect, Decision),
    helo: (Bytes, Decision),
    transactions: Vec<Transaction>,
    /// The size of the pieces the bytes travel in, each way.
    piece: usize,
}

/// Largest body the MTA sends.
const MAX_BODY: usize = 200 * 1024;

/// Stages that have a no-reply bit (every one but EOM).
fn no_reply_able() -> Stages {
    Stages::all() - Stages::EOM
}

fn connection_decision() -> impl Strategy<Value = Decision> {
    prop_oneof![19 => Just(Decision::Continue), 1 => Just(Decision::Accept)]
}

fn unknown_decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        6 => Just(Decision::Continue),
        1 => Just(Decision::Reject),
        1 => Just(Decision::Tempfail),
        1 => reply().prop_map(Decision::Reply),
    ]
}

/// A decision at MAIL, DATA, HEADER, EOH or EOM: continue `weight` times as often as each other.
fn message_decision(weight: u32) -> impl Strategy<Value = Decision> {
    prop_oneof![
        weight => Just(Decision::Continue),
        5 => verdict(),
    ]
}

/// ACCEPT, REJECT, DISCARD, TEMPFAIL or a custom reply, equally often.
fn verdict() -> impl Strategy<Value = Decision> {
    prop_oneof![
        Just(Decision::Accept),
        Just(Decision::Reject),
        Just(Decision::Discard),
        Just(Decision::Tempfail),
        reply().prop_map(Decision::Reply),
    ]
}

fn rcpt_decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        30 => Just(Decision::Continue),
        3 => Just(Decision::Reject),
        3 => Just(Decision::Tempfail),
        1 => reply().prop_map(Decision::Reply),
        1 => Just(Decision::Accept),
        1 => Just(Decision::Discard),
    ]
}

fn body_decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        30 => Just(Decision::Continue),
        4 => Just(Decision::Skip),
        5 => verdict(),
    ]
}

/// A modification the MTAs accept (no NUL inside, no empty name, address or reason).
fn valid_modification() -> impl Strategy<Value = Modification> {
    modification_but_body(word, text)
}

/// Modifications and progress, with the replacement body (if any) in one contiguous run.
fn eom_steps() -> impl Strategy<Value = Vec<EomStep>> {
    (
        vec(
            prop_oneof![
                6 => valid_modification().prop_map(EomStep::Modify),
                1 => Just(EomStep::Progress),
            ],
            0..7,
        ),
        vec(prop_oneof![3 => blob(600), 1 => blob(150_000)], 0..3),
        any::<Index>(),
    )
        .prop_map(|(mut steps, bodies, at)| {
            let at = at.index(steps.len() + 1);
            steps.splice(at..at, bodies.into_iter().map(EomStep::ReplaceBody));
            steps
        })
}

fn header_name() -> impl Strategy<Value = Bytes> {
    "[A-Za-z][A-Za-z0-9-]{0,15}".prop_map(Bytes::from)
}

fn transaction() -> impl Strategy<Value = Transaction> {
    (
        (
            option::weighted(0.2, (text(40), unknown_decision())),
            (envelope(), message_decision(30)),
            vec((envelope(), rcpt_decision()), 1..=5),
            message_decision(30),
            vec((header_name(), text(100), message_decision(60)), 0..=5),
            message_decision(30),
        ),
        (
            prop_oneof![
                1 => Just(Blob { len: 0, seed: 0 }),
                2 => blob(2_000),
                2 => blob(MAX_BODY),
            ],
            vec(body_decision(), MAX_BODY.div_ceil(MILTER_CHUNK_SIZE)),
            eom_steps(),
            message_decision(5),
            "[0-9A-F]{10}".prop_map(Bytes::from),
        ),
    )
        .prop_map(
            |(
                (unknown, sender, rcpts, data, headers, eoh),
                (body, body_decisions, eom, eom_decision, queue_id),
            )| Transaction {
                unknown,
                sender,
                rcpts,
                data,
                headers,
                eoh,
                body,
                body_decisions,
                eom,
                eom_decision,
                queue_id,
            },
        )
}

fn piece_size() -> impl Strategy<Value = usize> {
    prop_oneof![
        4 => Just(usize::MAX),
        1 => 1usize..=16,
        3 => 17usize..=70_000,
    ]
}

/// A random set of stages, and a random set of those with a no-reply bit.
fn some_stages() -> impl Strategy<Value = (Stages, Stages)> {
    (any::<u16>(), any::<u16>()).prop_map(|(s, n)| {
        (
            Stages::from_bits_truncate(s),
            Stages::from_bits_truncate(n) & no_reply_able(),
        )
    })
}

/// What an old or restricted MTA offers: any version the milter accepts, any protocol bits of
/// version 6 (none means the version-1 set), every action.
fn some_offer() -> impl Strategy<Value = Offer> {
    (
        prop_oneof![Just(6u32), 2u32..=7],
        prop_oneof![1 => Just(0u32), 8 => 0u32..=ProtocolFlags::CURRENT.bits()],
    )
        .prop_map(|(version, protocol)| Offer {
            version,
            actions: Actions::CURRENT,
            protocol: ProtocolFlags::from_bits_retain(protocol),
        })
}

/// A plan where Postfix's offer meets a milter that asks for every stage and answers every one.
fn full_plan() -> impl Strategy<Value = Plan> {
    plan(
        Just(Offer::default()),
        Just((Stages::all(), Stages::empty())),
    )
}

/// A plan where Postfix's offer meets a milter that asks for a random set of stages and leaves
/// some unanswered.
fn partial_plan() -> impl Strategy<Value = Plan> {
    plan(Just(Offer::default()), some_stages())
}

/// A plan where an MTA that may not suppress stages, leave them unanswered, or understand SKIP
/// meets a milter that asks for a random set of stages and leaves some unanswered.
fn restricted_plan() -> impl Strategy<Value = Plan> {
    plan(some_offer(), some_stages())
}

fn plan(
    offer: impl Strategy<Value = Offer>,
    stages: impl Strategy<Value = (Stages, Stages)>,
) -> impl Strategy<Value = Plan> {
    (
        offer,
        stages,
        (connect(), connection_decision()),
        (text(40), connection_decision()),
        vec(transaction(), 2),
        piece_size(),
    )
        .prop_map(
            |(offer, (stages, no_reply), connect, helo, transactions, piece)| Plan {
                offer,
                stages,
                no_reply,
                connect,
                helo,
                transactions,
                piece,
            },
        )
}

/// What the milter answers to one command, if the command reaches it awaiting an answer.
#[derive(Clone, Copy)]
struct Answer<'a> {
    decision: &'a Decision,
    eom: &'a [EomStep],
}

impl<'a> Answer<'a> {
    fn decide(decision: &'a Decision) -> Self {
        Answer { decision, eom: &[] }
    }
}

const CONTINUE: Decision = Decision::Continue;

/// Debug text cut to a readable length (bodies are large).
fn short(value: &impl Debug) -> String {
    let mut s = format!("{value:?}");
    if s.len() > 300 {
        let mut end = 300;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

fn shorts<T: Debug>(values: &[T]) -> Vec<String> {
    values.iter().map(short).collect()
}

fn fail(message: String) -> TestCaseError {
    TestCaseError::fail(message)
}

/// Joins consecutive replacement-body chunks, so that one large body and its 65,535-byte chunks
/// compare equal.
fn join_bodies(events: &[MtaEvent]) -> Vec<MtaEvent> {
    let mut out: Vec<MtaEvent> = Vec::new();
    for e in events {
        if let MtaEvent::Modification(Modification::ReplaceBody { chunk }) = e {
            if let Some(MtaEvent::Modification(Modification::ReplaceBody { chunk: prev })) =
                out.last_mut()
            {
                let mut joined = BytesMut::from(&prev[..]);
                joined.extend_from_slice(chunk);
                *prev = joined.freeze();
                continue;
            }
        }
        out.push(e.clone());
    }
    out
}

/// The event a milter should see for a command it was sent.
fn event_of(cmd: &Command) -> Option<Event> {
    Some(match cmd.clone() {
        Command::Connect(c) => Event::Connect(c),
        Command::Helo { name } => Event::Helo { name },
        Command::Mail(e) => Event::Mail(e),
        Command::Rcpt(e) => Event::Rcpt(e),
        Command::Data => Event::Data,
        Command::Header { name, value } => Event::Header { name, value },
        Command::Eoh => Event::Eoh,
        Command::Body(chunk) => Event::Body(chunk),
        Command::Eom { .. } => Event::Eom,
        Command::Unknown { line } => Event::Unknown { line },
        _ => return None,
    })
}

/// Whether the milter's message is over after `decision` at `stage`: libmilter returns to
/// connection level after ACCEPT anywhere, and after a refusal except at RCPT and UNKNOWN (where
/// only that recipient or command is refused, DISCARD included).
fn milter_message_ends(stage: Stage, decision: &Decision) -> bool {
    match stage {
        Stage::Eom => true,
        Stage::Rcpt | Stage::Unknown => *decision == Decision::Accept,
        _ => !matches!(decision, Decision::Continue | Decision::Skip),
    }
}

/// Whether `decision` at `stage` makes the MTA stop sending the message (the protocol
/// reference, §6.4).
fn ends_message(stage: Stage, decision: &Decision) -> bool {
    match stage {
        Stage::Eom => true,
        Stage::Rcpt => matches!(decision, Decision::Accept | Decision::Discard),
        Stage::Mail | Stage::Data | Stage::Header | Stage::Eoh | Stage::Body => {
            !matches!(decision, Decision::Continue | Decision::Skip)
        }
        _ => false,
    }
}

/// Both sessions, the bytes between them, what each side saw, and a model of what they should.
struct Pair {
    mta: MtaSession,
    milter: MilterSession,
    piece: usize,
    /// The protocol bits the MTA offers, as libmilter reads them (none means the version-1 set).
    offered: ProtocolFlags,
    /// The version both speak.
    version: u32,
    stages: Stages,
    no_reply: Stages,
    // The model.
    session_accepted: bool,
    message_decided: bool,
    skipping_body: bool,
    /// The milter has a message open (it was sent a message command and did not close it).
    message_open: bool,
    /// The latest macro packet sent for each command code.
    macros: HashMap<u8, Vec<(Bytes, Bytes)>>,
    // What happened, and what should have.
    mta_events: Vec<MtaEvent>,
    expected_mta_events: Vec<MtaEvent>,
    milter_events: Vec<Event>,
    expected_milter_events: Vec<Event>,
}

impl Pair {
    fn new(plan: &Plan) -> Self {
        let offered = if plan.offer.protocol.is_empty() {
            ProtocolFlags::V1
        } else {
            plan.offer.protocol
        };
        Pair {
            mta: MtaSession::new(plan.offer, MtaConfig::default()),
            milter: MilterSession::new(MilterConfig::default()),
            piece: plan.piece,
            offered,
            version: plan.offer.version.min(6),
            stages: plan.stages | Stages::EOM,
            no_reply: plan.no_reply,
            session_accepted: false,
            message_decided: false,
            skipping_body: false,
            message_open: false,
            macros: HashMap::new(),
            mta_events: Vec::new(),
            expected_mta_events: Vec::new(),
            milter_events: Vec::new(),
            expected_milter_events: Vec::new(),
        }
    }

    /// The OPTNEG exchange.
    fn negotiate(&mut self, offer: Offer, request: &Request) -> Result<(), TestCaseError> {
        let mut wire = BytesMut::new();
        prop_assert!(self.mta.poll_transmit(&mut wire));
        self.milter.handle_input(&wire);
        let event = self.milter.poll_event().map_err(|e| fail(e.to_string()))?;
        prop_assert_eq!(event, Some(Event::Negotiate(offer)));
        let agreement = self
            .milter
            .negotiate(request)
            .map_err(|e| fail(e.to_string()))?
            .clone();
        prop_assert_eq!(self.milter.poll_event(), Ok(None));
        let mut back = BytesMut::new();
        prop_assert!(self.milter.poll_transmit(&mut back));
        self.mta.handle_input(&back);
        prop_assert_eq!(
            self.mta.poll_event(),
            Ok(Some(MtaEvent::Negotiated(agreement.clone())))
        );
        prop_assert_eq!(self.mta.poll_event(), Ok(None));
        prop_assert_eq!(self.mta.agreement(), Some(&agreement));
        Ok(())
    }

    /// The milter asked to see `stage`.
    fn requested(&self, stage: Stage) -> bool {
        self.stages.has(stage)
    }

    /// The MTA sends `stage`: its version knows it, and the milter asked for it or the MTA cannot
    /// leave it out.
    fn mta_sends(&self, stage: Stage) -> bool {
        self.version >= stage.min_version()
            && (self.requested(stage) || !self.offered.contains(stage.suppress_flag()))
    }

    /// The MTA agreed not to wait for a reply to `stage`.
    fn no_reply_agreed(&self, stage: Stage) -> bool {
        self.requested(stage)
            && self.no_reply.has(stage)
            && self.offered.contains(stage.no_reply_flag())
    }

    /// The milter itself decides `stage` (else the session answers CONTINUE, or nobody does).
    fn milter_decides(&self, stage: Stage) -> bool {
        self.requested(stage) && !self.no_reply.has(stage)
    }

    /// The milter may answer SKIP.
    fn skip_agreed(&self) -> bool {
        self.offered.contains(ProtocolFlags::SKIP)
    }

    /// Commands of `stage` not sent because of an earlier decision.
    fn decided_away(&self, stage: Stage) -> bool {
        if self.session_accepted {
            return true;
        }
        match stage {
            Stage::Connect | Stage::Helo | Stage::Mail | Stage::Unknown => false,
            Stage::Body if self.skipping_body => true,
            _ => self.message_decided,
        }
    }

    /// What `send` should answer for `cmd`.
    fn expected_sent(&self, cmd: &Command) -> Sent {
        match cmd {
            Command::Macro { stage, .. } => {
                let stage = Stage::from_code(*stage).unwrap();
                if self.decided_away(stage) {
                    Sent::Skipped
                } else {
                    Sent::NoReply
                }
            }
            Command::Abort | Command::Quit => Sent::NoReply,
            _ => {
                let stage = cmd.stage().unwrap();
                if self.decided_away(stage) || !self.mta_sends(stage) {
                    Sent::Skipped
                } else if self.no_reply_agreed(stage) {
                    Sent::NoReply
                } else {
                    Sent::AwaitingReply(stage)
                }
            }
        }
    }

    /// Sends one command through the MTA side, lets the milter answer it, and checks every step.
    fn exchange(
        &mut self,
        cmd: Command,
        answer: Option<Answer<'_>>,
    ) -> Result<Sent, TestCaseError> {
        let what = short(&cmd);
        // SKIP is chosen only where the MTA understands it.
        let answer = answer.map(|a| match a.decision {
            Decision::Skip if !self.skip_agreed() => Answer {
                decision: &CONTINUE,
                eom: a.eom,
            },
            _ => a,
        });
        let expected = self.expected_sent(&cmd);
        let sent = self
            .mta
            .send(cmd.clone())
            .map_err(|e| fail(format!("send({what}) refused: {e}")))?;
        prop_assert_eq!(sent, expected, "send({})", what);

        // The bytes on the wire: nothing for a skipped command, else exactly the command.
        let mut wire = BytesMut::new();
        self.mta.poll_transmit(&mut wire);
        if sent == Sent::Skipped {
            prop_assert!(wire.is_empty(), "skipped {} but sent {:?}", what, wire);
            prop_assert_eq!(self.mta.awaiting(), None);
            return Ok(sent);
        }
        let mut copy = wire.clone();
        let frame = FrameDecoder::default().decode(&mut copy).unwrap();
        prop_assert!(copy.is_empty(), "more than {} on the wire", what);
        prop_assert_eq!(
            frame.map(Command::decode),
            Some(Ok(cmd.clone())),
            "on the wire for {}",
            what
        );

        // What the milter should see.
        let mut expected_events = Vec::new();
        match &cmd {
            Command::Macro { stage, pairs } => {
                self.macros.insert(*stage, pairs.clone());
            }
            Command::Abort | Command::Quit => {
                if self.message_open {
                    expected_events.push(Event::Abort);
                }
                if cmd == Command::Quit {
                    expected_events.push(Event::Quit);
                }
                self.message_open = false;
                self.message_decided = false;
                self.skipping_body = false;
                self.session_accepted &= cmd != Command::Quit;
            }
            _ => {
                let stage = cmd.stage().unwrap();
                if stage == Stage::Mail {
                    self.message_decided = false;
                    self.skipping_body = false;
                }
                self.message_open |= stage.in_message();
                if self.requested(stage) {
                    expected_events.extend(event_of(&cmd));
                }
            }
        }

        // The milter side: events, and an answer to the one awaiting it.
        let mut events = Vec::new();
        let mut awaited = Vec::new();
        for piece in wire.chunks(self.piece) {
            self.milter.handle_input(piece);
            while let Some(event) = self
                .milter
                .poll_event()
                .map_err(|e| fail(format!("milter failed on {what}: {e}")))?
            {
                if let Some(stage) = self.milter.awaiting() {
                    awaited.push(stage);
                    let answer = answer.ok_or_else(|| {
                        fail(format!(
                            "milter awaits {stage} after {what}, nothing scripted"
                        ))
                    })?;
                    self.answer(stage, answer)?;
                }
                self.check_macros(&event)?;
                events.push(event);
            }
        }
        prop_assert_eq!(
            shorts(&events),
            shorts(&expected_events),
            "milter events for {}",
            what
        );
        prop_assert_eq!(&events, &expected_events, "milter events for {}", what);
        let expected_awaited: Vec<Stage> = match sent {
            Sent::AwaitingReply(stage) if self.milter_decides(stage) => vec![stage],
            _ => vec![],
        };
        prop_assert_eq!(awaited, expected_awaited, "milter awaited after {}", what);
        self.milter_events.extend(events);
        self.expected_milter_events.extend(expected_events);

        // The milter's bytes back to the MTA side.
        let mut back = BytesMut::new();
        self.milter.poll_transmit(&mut back);
        let mut events = Vec::new();
        for piece in back.chunks(self.piece) {
            self.mta.handle_input(piece);
            while let Some(event) = self
                .mta
                .poll_event()
                .map_err(|e| fail(format!("MTA side failed after {what}: {e}")))?
            {
                events.push(event);
            }
        }
        for event in &events {
            if let MtaEvent::Modification(Modification::ReplaceBody { chunk }) = event {
                prop_assert!(
                    chunk.len() <= MILTER_CHUNK_SIZE,
                    "REPLBODY of {}",
                    chunk.len()
                );
            }
        }
        let mut expected_events = Vec::new();
        if let Sent::AwaitingReply(stage) = sent {
            // The session answers CONTINUE for what the milter did not ask to see or to answer.
            let answer = match answer {
                Some(answer) if self.milter_decides(stage) => answer,
                _ => Answer::decide(&CONTINUE),
            };
            if stage == Stage::Eom {
                for step in answer.eom {
                    expected_events.push(match step {
                        EomStep::Modify(m) => MtaEvent::Modification(m.clone()),
                        EomStep::ReplaceBody(b) => {
                            MtaEvent::Modification(Modification::ReplaceBody { chunk: b.bytes() })
                        }
                        EomStep::Progress => MtaEvent::Progress,
                    });
                }
            }
            expected_events.push(MtaEvent::Decision {
                stage,
                decision: answer.decision.clone(),
            });
            self.decided(stage, answer.decision);
        }
        let (events, expected_events) = (join_bodies(&events), join_bodies(&expected_events));
        prop_assert_eq!(
            shorts(&events),
            shorts(&expected_events),
            "MTA events after {}",
            what
        );
        prop_assert_eq!(&events, &expected_events, "MTA events after {}", what);
        self.mta_events.extend(events);
        self.expected_mta_events.extend(expected_events);

        prop_assert_eq!(self.mta.awaiting(), None, "MTA still waits after {}", what);
        prop_assert_eq!(
            self.milter.awaiting(),
            None,
            "milter still waits after {}",
            what
        );
        prop_assert_eq!(
            self.milter.in_message(),
            self.message_open,
            "after {}",
            what
        );
        Ok(sent)
    }

    /// The scripted milter answers the event awaiting `stage`.
    fn answer(&mut self, stage: Stage, answer: Answer<'_>) -> Result<(), TestCaseError> {
        if stage == Stage::Eom {
            for step in answer.eom {
                let done = match step {
                    EomStep::Modify(m) => self.milter.modify(m.clone()),
                    EomStep::ReplaceBody(b) => self
                        .milter
                        .modify(Modification::ReplaceBody { chunk: b.bytes() }),
                    EomStep::Progress => self.milter.progress(),
                };
                done.map_err(|e| fail(format!("{} refused: {e}", short(step))))?;
            }
        }
        self.milter.decide(answer.decision.clone()).map_err(|e| {
            fail(format!(
                "{} at {stage} refused: {e}",
                short(answer.decision)
            ))
        })
    }

    /// The model after the milter's decision reached the MTA side.
    fn decided(&mut self, stage: Stage, decision: &Decision) {
        if matches!(stage, Stage::Connect | Stage::Helo) && *decision == Decision::Accept {
            self.session_accepted = true;
        }
        if stage == Stage::Eom {
            self.message_decided = false;
            self.skipping_body = false;
        } else if ends_message(stage, decision) {
            self.message_decided = true;
        }
        if milter_message_ends(stage, decision) {
            self.message_open = false;
        }
        if *decision == Decision::Skip {
            self.skipping_body = true;
        }
    }

    /// The milter sees the macros of the latest packet sent for the event's command.
    fn check_macros(&self, event: &Event) -> Result<(), TestCaseError> {
        let code = match event {
            Event::Connect(_) => b'C',
            Event::Mail(_) => b'M',
            Event::Rcpt(_) => b'R',
            Event::Eom => b'E',
            _ => return Ok(()),
        };
        for (name, value) in self.macros.get(&code).into_iter().flatten() {
            prop_assert_eq!(
                self.milter.macros().get(name),
                Some(&value[..]),
                "macro {:?} at {}",
                name,
                short(event)
            );
        }
        Ok(())
    }
}

/// Runs a whole connection: OPTNEG, CONNECT, HELO, two transactions each followed by ABORT, QUIT.
fn run(plan: &Plan) -> Result<(), TestCaseError> {
    let request = Request {
        stages: plan.stages,
        no_reply: plan.no_reply,
        actions: Actions::CURRENT,
        options: ProtocolFlags::SKIP,
        ..Request::default()
    };
    let mut pair = Pair::new(plan);
    pair.negotiate(plan.offer, &request)?;

    let (connect, decision) = &plan.connect;
    pair.exchange(
        Command::Macro {
            stage: b'C',
            pairs: vec![
                (Bytes::from("j"), Bytes::from("mx.example.org")),
                (Bytes::from("{client_addr}"), connect.address.clone()),
            ],
        },
        None,
    )?;
    pair.exchange(
        Command::Connect(connect.clone()),
        Some(Answer::decide(decision)),
    )?;
    let (name, decision) = &plan.helo;
    pair.exchange(
        Command::Helo { name: name.clone() },
        Some(Answer::decide(decision)),
    )?;

    for tx in &plan.transactions {
        if let Some((line, decision)) = &tx.unknown {
            pair.exchange(
                Command::Unknown { line: line.clone() },
                Some(Answer::decide(decision)),
            )?;
        }
        let (sender, decision) = &tx.sender;
        pair.exchange(
            Command::Macro {
                stage: b'M',
                pairs: vec![(Bytes::from("{mail_addr}"), sender.address.clone())],
            },
            None,
        )?;
        pair.exchange(
            Command::Mail(sender.clone()),
            Some(Answer::decide(decision)),
        )?;
        // As an MTA: no content unless some recipient was accepted.
        let mut accepted = false;
        for (rcpt, decision) in &tx.rcpts {
            pair.exchange(
                Command::Macro {
                    stage: b'R',
                    pairs: vec![(Bytes::from("{rcpt_addr}"), rcpt.address.clone())],
                },
                None,
            )?;
            let sent =
                pair.exchange(Command::Rcpt(rcpt.clone()), Some(Answer::decide(decision)))?;
            let refused = matches!(sent, Sent::AwaitingReply(_))
                && pair.milter_decides(Stage::Rcpt)
                && matches!(
                    decision,
                    Decision::Reject | Decision::Tempfail | Decision::Reply(_)
                );
            accepted |= !refused;
        }
        if accepted {
            pair.exchange(Command::Data, Some(Answer::decide(&tx.data)))?;
            for (name, value, decision) in &tx.headers {
                pair.exchange(
                    Command::Header {
                        name: name.clone(),
                        value: value.clone(),
                    },
                    Some(Answer::decide(decision)),
                )?;
            }
            pair.exchange(Command::Eoh, Some(Answer::decide(&tx.eoh)))?;
            let body = tx.body.bytes();
            for (chunk, decision) in body.chunks(MILTER_CHUNK_SIZE).zip(&tx.body_decisions) {
                pair.exchange(
                    Command::Body(body.slice_ref(chunk)),
                    Some(Answer::decide(decision)),
                )?;
            }
            pair.exchange(
                Command::Macro {
                    stage: b'E',
                    pairs: vec![(Bytes::from("i"), tx.queue_id.clone())],
                },
                None,
            )?;
            pair.exchange(
                Command::Eom {
                    chunk: Bytes::new(),
                },
                Some(Answer {
                    decision: &tx.eom_decision,
                    eom: &tx.eom,
                }),
            )?;
        }
        pair.exchange(Command::Abort, None)?;
    }
    pair.exchange(Command::Quit, None)?;

    // Nothing is left over on either side, and both saw the whole conversation in order.
    prop_assert_eq!(pair.milter.poll_event(), Ok(None));
    prop_assert_eq!(pair.mta.poll_event(), Ok(None));
    prop_assert!(pair.milter.is_closed());
    prop_assert!(pair.mta.is_closed());
    let decisions = |events: &[MtaEvent]| -> Vec<(Stage, Decision)> {
        events
            .iter()
            .filter_map(|e| match e {
                MtaEvent::Decision { stage, decision } => Some((*stage, decision.clone())),
                _ => None,
            })
            .collect()
    };
    let modifications = |events: &[MtaEvent]| -> Vec<Modification> {
        events
            .iter()
            .filter_map(|e| match e {
                MtaEvent::Modification(m) => Some(m.clone()),
                _ => None,
            })
            .collect()
    };
    prop_assert_eq!(
        decisions(&pair.mta_events),
        decisions(&pair.expected_mta_events)
    );
    prop_assert!(
        modifications(&pair.mta_events) == modifications(&pair.expected_mta_events),
        "modifications differ"
    );
    prop_assert!(
        pair.milter_events == pair.expected_milter_events,
        "milter events differ"
    );
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 64,
        max_shrink_iters: 4096,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn the_mta_side_receives_exactly_what_the_scripted_milter_decided(plan in full_plan()) {
        run(&plan)?;
    }

    #[test]
    fn unrequested_stages_are_skipped_and_no_reply_stages_stay_unanswered(plan in partial_plan()) {
        run(&plan)?;
    }

    #[test]
    fn the_session_answers_continue_for_what_the_mta_cannot_skip_or_leave_unanswered(
        plan in restricted_plan(),
    ) {
        run(&plan)?;
    }
}
