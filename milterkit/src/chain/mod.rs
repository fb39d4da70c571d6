//! A milter that drives other milters: one socket in front of several filters, each with its
//! own timeouts, fail-safe, evaluation mode and conditions (feature `chain`). What
//! `milterkit chain --config FILE` serves.
//!
//! ```text
//!   MTA ──► Chain (a Milter, served by milterkit) ──► child 1 (mta::Connection) ─► DKIM signer
//!                                                 ──► child 2                    ─► spam filter
//!                                                 ──► child 3                    ─► …
//! ```
//!
//! For each MTA connection the chain opens one connection per child and negotiates with it
//! from what the MTA offered; it then asks the MTA for what its children want together (the
//! union of their stages and actions, no-reply where none of them replies, their macro lists
//! plus the MTA's defaults). Every command goes to each child in order, with the macros the MTA
//! sent for it. Decisions merge as Postfix merges several milters:
//! - the first reject, tempfail, custom reply or discard of an enforcing child is the chain's,
//!   and later children do not see that command (at RCPT it refuses that recipient only);
//! - accept ends that child's part in the message (at CONNECT or HELO, in the connection); when
//!   every child is out, the chain accepts;
//! - at end of message the modifications of every enforcing child are sent up in child order
//!   (each child saw the original message; of two replacement bodies the later child's wins);
//! - header values travel with or without their leading space as each child negotiated.
//!
//! A child that is down, slower than its timeout, or broken gets its own [`FailSafe`]
//! (tempfail, reject, or skip it) at the stage where that shows, and sits out the rest of the
//! message; the next message on the connection tries to connect to it again (CONNECT and HELO
//! replayed). A child in [`Mode::Evaluate`] is driven the same way, but its decisions and
//! modifications are only logged and counted. [`When`] limits a child to some clients, senders
//! or recipient domains.
//!
//! ```no_run
//! use std::sync::Arc;
//! use milterkit::chain::{Chain, Settings};
//!
//! # async fn f() -> Result<(), Box<dyn std::error::Error>> {
//! let settings = Arc::new(Settings::load("/etc/milterkit/chain.toml")?);
//! let listener = milterkit::bind("inet:7357@127.0.0.1").await?;
//! milterkit::serve(listener, move || Chain::new(settings.clone())).await?;
//! # Ok(()) }
//! ```
//!
//! docs/chain.md is the configuration reference, with an example for OpenDKIM and a spam
//! filter.

mod metrics;
mod settings;

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use milterkit_proto::command::{Connect as ConnectCmd, Envelope};
use milterkit_proto::{
    Actions, Agreement, Command, Decision, MacroStage, Macros, Modification, Offer,
    ProtocolFlags, Request, Stage, Stages,
};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::meter::ModificationCounts;
use crate::milter::{Abort, Body, Connect, Data, Eoh, Header, Helo, Mail, Rcpt, Unknown};
use crate::mta::{Connection, Profile};
use crate::{Eom, Error, Milter, Result};

pub use metrics::ChainMetrics;
pub use settings::{Child, FailSafe, Mode, MtaName, Net, Settings, SettingsError, When};

/// Macro pairs as sent before one command.
type Pairs = Vec<(Bytes, Bytes)>;

/// One MTA connection's chain: a [`Milter`] that forwards every command to its children (see
/// the [module](self)). Made per connection by the factory given to [`serve`](crate::serve).
///
/// ```
/// use std::sync::Arc;
/// use milterkit::chain::{Chain, Child, Settings};
/// let settings = Arc::new(Settings::new(vec![Child::new("dkim", "inet:8891@127.0.0.1")]).unwrap());
/// let factory = move || Chain::new(settings.clone());
/// # let _ = factory();
/// ```
#[derive(Debug)]
pub struct Chain {
    settings: Arc<Settings>,
    metrics: Option<ChainMetrics>,
    children: Vec<Running>,
    /// What the chain agreed with the MTA.
    agreement: Option<Agreement>,
    /// The MTA's offer, made to every child.
    offer: Offer,
    /// CONNECT and HELO with their macros, replayed to a child connected again at MAIL.
    connect: Option<(ConnectCmd, Pairs)>,
    helo: Option<(Bytes, Pairs)>,
    /// MAIL with its macros, sent to a child waiting for a matching recipient.
    mail: Option<(Envelope, Pairs)>,
    /// A decision made at a stage the MTA does not wait for, sent at the next one it does.
    pending: Option<Decision>,
}

/// A child within one MTA connection.
#[derive(Debug, Default)]
struct Running {
    /// Its place in the settings.
    index: usize,
    /// `None`: down (never connected, or failed and dropped).
    conn: Option<Connection>,
    /// Out of the SMTP session: its client condition failed, or it accepted the session.
    out_of_session: bool,
    /// Out of the message: it decided it, failed in it, or its conditions leave it out.
    out_of_message: bool,
    /// MAIL was sent to it for this message.
    in_message: bool,
    /// Its MAIL waits for a recipient in its domains.
    mail_deferred: bool,
    /// It answered SKIP: no more body chunks for it in this message.
    skipping_body: bool,
    /// An exchange with it began and did not end (the chain's own handler was cut off at its
    /// deadline): what its connection holds is unknown, so it is dropped.
    busy: bool,
}

/// Why an exchange with a child failed.
#[derive(Debug)]
struct Failure {
    /// `connect`, `timeout`, `closed`, `protocol`, `interrupted`.
    kind: &'static str,
    detail: String,
}

/// What the children said to one command, merged.
enum Merged {
    /// Sent to the MTA (or held for the next stage it waits at).
    Decided(Decision),
    /// Every child went on.
    Continue,
}

/// Which children a command goes to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Scope {
    /// CONNECT, HELO, UNKNOWN: every child still in the session.
    Session,
    /// DATA … EOM: children that got MAIL and are still in the message.
    Message,
    /// BODY: as `Message`, less those that answered SKIP.
    Body,
}

fn pairs(macros: &Macros, code: u8) -> Pairs {
    macros
        .sent_at(code)
        .map(|(n, v)| (Bytes::copy_from_slice(n), Bytes::copy_from_slice(v)))
        .collect()
}

fn failure(e: &Error) -> Failure {
    let kind = match e {
        Error::Timeout(_) => "timeout",
        Error::Io(_) => "closed",
        _ => "protocol",
    };
    Failure {
        kind,
        detail: e.to_string(),
    }
}

/// A header value for a child, from the MTA's, where the two sides agreed leading spaces
/// differently: without `SMFIP_HDR_LEADSPC` the MTA drops one leading space.
fn header_for_child(value: &[u8], chain_space: bool, child_space: bool) -> Bytes {
    match (chain_space, child_space) {
        (true, false) => Bytes::copy_from_slice(value.strip_prefix(b" ").unwrap_or(value)),
        (false, true) => [b" ", value].concat().into(),
        _ => Bytes::copy_from_slice(value),
    }
}

/// A child's header modification for the MTA: without `SMFIP_HDR_LEADSPC` the MTA puts a space
/// after the colon, with it the value is taken as it is.
fn header_for_mta(m: Modification, chain_space: bool, child_space: bool) -> Modification {
    let fix = |value: Bytes| -> Bytes {
        match (chain_space, child_space) {
            (true, false) => [b" ", &value[..]].concat().into(),
            (false, true) if value.starts_with(b" ") => value.slice(1..),
            _ => value,
        }
    };
    match m {
        Modification::AddHeader { name, value } => Modification::AddHeader {
            name,
            value: fix(value),
        },
        Modification::InsertHeader { index, name, value } => Modification::InsertHeader {
            index,
            name,
            value: fix(value),
        },
        Modification::ChangeHeader { index, name, value } if !value.is_empty() => {
            Modification::ChangeHeader {
                index,
                name,
                value: fix(value),
            }
        }
        other => other,
    }
}

impl Chain {
    /// A chain for one MTA connection, driving the children of `settings`.
    pub fn new(settings: Arc<Settings>) -> Chain {
        let children = (0..settings.milters.len())
            .map(|index| Running {
                index,
                ..Running::default()
            })
            .collect();
        Chain {
            settings,
            metrics: None,
            children,
            agreement: None,
            offer: Offer::default(),
            connect: None,
            helo: None,
            mail: None,
            pending: None,
        }
    }

    /// Counts into `metrics` (see [`ChainMetrics`]).
    pub fn with_metrics(mut self, metrics: ChainMetrics) -> Chain {
        self.metrics = Some(metrics);
        self
    }

    fn child(&self, i: usize) -> &Child {
        &self.settings.milters[self.children[i].index]
    }

    /// The profile children are driven with: the MTA's habits, the MTA's offer less the bits
    /// only a build of libmilter's own MTA may use.
    fn profile(&self) -> Profile {
        let mut profile = self.settings.mta.profile();
        profile.offer = Offer {
            protocol: self.offer.protocol.difference(ProtocolFlags::INTERNAL),
            ..self.offer
        };
        profile
    }

    /// Connects to child `i` and negotiates, within its connect timeout.
    async fn open(child: Child, profile: Profile) -> std::result::Result<Connection, Error> {
        Connection::open_with_timeout(&child.socket, profile, child.connect_timeout)
            .await
            .map(|c| c.with_reply_timeout(child.command_timeout))
    }

    fn note_error(&self, i: usize, f: &Failure) {
        let child = self.child(i);
        warn!(child = %child.name, kind = f.kind, error = %f.detail, "child milter failed");
        if let Some(m) = &self.metrics {
            m.error(&child.name, f.kind);
        }
    }

    /// Sends `macros` and `cmd` to child `i` and waits for its answer; a failure drops its
    /// connection.
    async fn exchange(
        &mut self,
        i: usize,
        stage: Stage,
        macros: &Pairs,
        cmd: Command,
    ) -> std::result::Result<Option<Decision>, Failure> {
        let started = Instant::now();
        let result = self.exchange_inner(i, stage, macros, cmd).await;
        let name = &self.settings.milters[self.children[i].index].name;
        if let Some(m) = &self.metrics {
            m.duration(name, stage.name(), started.elapsed());
        }
        match result {
            Ok(answer) => Ok(answer),
            Err(f) => {
                self.children[i].conn = None;
                self.note_error(i, &f);
                Err(f)
            }
        }
    }

    async fn exchange_inner(
        &mut self,
        i: usize,
        stage: Stage,
        macros: &Pairs,
        cmd: Command,
    ) -> std::result::Result<Option<Decision>, Failure> {
        let running = &mut self.children[i];
        if running.busy {
            running.busy = false;
            return Err(Failure {
                kind: "interrupted",
                detail: "an earlier exchange was cut off by the chain's handler deadline".into(),
            });
        }
        let Some(conn) = running.conn.as_mut() else {
            return Err(Failure {
                kind: "connect",
                detail: "not connected".into(),
            });
        };
        running.busy = true;
        if !macros.is_empty() {
            conn.macros(stage, macros.clone())
                .await
                .map_err(|e| failure(&e))?;
        }
        let answer = conn.send(cmd).await.map_err(|e| failure(&e))?;
        running.busy = false;
        match (answer.decision, answer.closed) {
            (None, Some(reason)) => Err(Failure {
                kind: "closed",
                detail: reason,
            }),
            (decision, closed) => {
                if closed.is_some() {
                    // It answered, then hung up: the answer stands, the connection does not.
                    running.conn = None;
                }
                debug!(child = %self.settings.milters[running.index].name, %stage, decision = decision.as_ref().map(Decision::name), "child answered");
                Ok(decision)
            }
        }
    }

    /// Child `i` failed at `stage`: its fail-safe, if it is enforced, as the chain's decision.
    fn fail_safe(&mut self, i: usize, stage: Stage) -> Option<Decision> {
        let child = self.child(i);
        if child.mode == Mode::Evaluate {
            return None;
        }
        let (name, decision) = match child.fail_safe {
            FailSafe::Skip => ("skip", None),
            FailSafe::Tempfail => ("tempfail", Some(Decision::Tempfail)),
            FailSafe::Reject => ("reject", Some(Decision::Reject)),
        };
        info!(child = %child.name, %stage, fail_safe = name, "fail-safe for a child milter");
        if let Some(m) = &self.metrics {
            m.fail_safe(&child.name, name);
        }
        decision
    }

    /// Marks child `i` out of the session (`CONNECT`, `HELO`) or of the message.
    fn leave(&mut self, i: usize, stage: Stage) {
        let r = &mut self.children[i];
        if matches!(stage, Stage::Connect | Stage::Helo) {
            r.out_of_session = true;
        } else if stage != Stage::Unknown {
            r.out_of_message = true;
        }
    }

    fn takes(&self, i: usize, scope: Scope) -> bool {
        let r = &self.children[i];
        match scope {
            Scope::Session => !r.out_of_session,
            Scope::Message => r.in_message && !r.out_of_message,
            Scope::Body => r.in_message && !r.out_of_message && !r.skipping_body,
        }
    }

    /// Sends one command to child `i` and merges its answer: `Some` is the chain's decision.
    async fn ask(
        &mut self,
        i: usize,
        stage: Stage,
        macros: &Pairs,
        cmd: Command,
    ) -> Option<Decision> {
        let decision = match self.exchange(i, stage, macros, cmd).await {
            Ok(d) => d.unwrap_or(Decision::Continue),
            Err(_) => {
                self.leave(i, stage);
                return self.fail_safe(i, stage);
            }
        };
        let settings = self.settings.clone();
        let child = &settings.milters[self.children[i].index];
        let mode = child.mode;
        if let Some(m) = &self.metrics {
            m.decision(&child.name, stage.name(), decision.name(), mode.name());
        }
        match decision {
            Decision::Continue => None,
            Decision::Skip => {
                self.children[i].skipping_body = true;
                None
            }
            Decision::Accept => {
                self.leave(i, stage);
                None
            }
            d => {
                // At RCPT (but for discard, which drops the whole message) and UNKNOWN a
                // refusal is of that command only.
                if stage != Stage::Rcpt || d == Decision::Discard {
                    self.leave(i, stage);
                }
                let allowed = self
                    .agreement
                    .as_ref()
                    .is_none_or(|a| d.allowed_at(stage, a));
                if mode == Mode::Evaluate {
                    info!(child = %child.name, %stage, decision = d.name(), "evaluated, not enforced");
                    None
                } else if !allowed {
                    warn!(child = %child.name, %stage, decision = d.name(), "decision not allowed at this stage; ignored");
                    None
                } else {
                    Some(d)
                }
            }
        }
    }

    /// Sends a command to every child of `scope`, in order, and merges their answers.
    async fn forward(
        &mut self,
        stage: Stage,
        scope: Scope,
        macros: &Pairs,
        cmd: impl Fn(&Agreement) -> Command,
    ) -> Merged {
        for i in 0..self.children.len() {
            if !self.takes(i, scope) {
                continue;
            }
            let Some(agreement) = self.children[i]
                .conn
                .as_ref()
                .and_then(Connection::agreement)
            else {
                // Down since the connection began or an earlier stage: MAIL tries again.
                continue;
            };
            let cmd = cmd(agreement);
            if let Some(d) = self.ask(i, stage, macros, cmd).await {
                return Merged::Decided(d);
            }
        }
        Merged::Continue
    }

    /// The chain's answer at `stage` after `merged`: held if the MTA does not wait for it;
    /// accept once no child is left in the session or message; skip once every child still in
    /// the message skips the body.
    fn answer(&mut self, stage: Stage, merged: Merged) -> Decision {
        let decision = match merged {
            Merged::Decided(d) => d,
            Merged::Continue => self.when_all_went_on(stage),
        };
        let waits = self
            .agreement
            .as_ref()
            .is_none_or(|a| a.expects_reply(stage));
        if waits {
            return decision;
        }
        if !matches!(decision, Decision::Continue | Decision::Skip | Decision::Accept) {
            self.pending.get_or_insert(decision);
        }
        Decision::Continue
    }

    /// The chain's answer when no child decided: continue while a child is left.
    fn when_all_went_on(&self, stage: Stage) -> Decision {
        let any = |f: &dyn Fn(usize) -> bool| (0..self.children.len()).any(f);
        match stage {
            Stage::Unknown => Decision::Continue,
            Stage::Connect | Stage::Helo if any(&|i| !self.children[i].out_of_session) => {
                Decision::Continue
            }
            // Before DATA, a child that has not had MAIL yet may still have it.
            Stage::Mail | Stage::Rcpt
                if any(&|i| {
                    let r = &self.children[i];
                    !r.out_of_session && !r.out_of_message
                }) =>
            {
                Decision::Continue
            }
            Stage::Connect | Stage::Helo | Stage::Mail | Stage::Rcpt => Decision::Accept,
            _ if !any(&|i| self.takes(i, Scope::Message)) => Decision::Accept,
            Stage::Body if !any(&|i| self.takes(i, Scope::Body)) => {
                if self.agreement.as_ref().is_some_and(Agreement::skip) {
                    Decision::Skip
                } else {
                    Decision::Continue
                }
            }
            _ => Decision::Continue,
        }
    }

    /// Connects again to children that are down (or never came up) and not out of the session,
    /// replaying CONNECT and HELO; a child that still fails gets its fail-safe.
    async fn reconnect(&mut self) -> Option<Decision> {
        for i in 0..self.children.len() {
            let r = &self.children[i];
            if r.conn.is_some() || r.out_of_session {
                continue;
            }
            let child = self.child(i).clone();
            match Chain::open(child.clone(), self.profile()).await {
                Ok(conn) => {
                    info!(child = %child.name, "child milter connected again");
                    self.children[i].conn = Some(conn);
                    self.children[i].busy = false;
                }
                Err(e) => {
                    let f = Failure {
                        kind: "connect",
                        detail: e.to_string(),
                    };
                    self.note_error(i, &f);
                    self.children[i].out_of_message = true;
                    if let Some(d) = self.fail_safe(i, Stage::Mail) {
                        return Some(d);
                    }
                    continue;
                }
            }
            if let Some((connect, macros)) = self.connect.clone() {
                if let Some(d) = self.ask(i, Stage::Connect, &macros, Command::Connect(connect)).await {
                    return Some(d);
                }
            }
            if let Some((name, macros)) = self.helo.clone() {
                if !self.children[i].out_of_session {
                    if let Some(d) = self.ask(i, Stage::Helo, &macros, Command::Helo { name }).await {
                        return Some(d);
                    }
                }
            }
        }
        None
    }

    /// Sends the waiting MAIL to child `i` before its first recipient.
    async fn send_deferred_mail(&mut self, i: usize) -> Option<Decision> {
        let r = &mut self.children[i];
        r.mail_deferred = false;
        r.in_message = true;
        let (envelope, macros) = self.mail.clone()?;
        self.ask(i, Stage::Mail, &macros, Command::Mail(envelope)).await
    }

    fn end_message(&mut self) {
        for r in &mut self.children {
            r.in_message = false;
            r.out_of_message = false;
            r.mail_deferred = false;
            r.skipping_body = false;
        }
        self.mail = None;
        self.pending = None;
    }

    /// The request to the MTA: what the children want together.
    fn request(&self, offer: &Offer) -> Request {
        let agreements: Vec<&Agreement> = self
            .children
            .iter()
            .filter_map(|r| r.conn.as_ref().and_then(Connection::agreement))
            .collect();
        // A child that is down may connect again at MAIL: keep everything open for it.
        let any_down = agreements.len() < self.children.len();
        let mut request = Request {
            // CONNECT and HELO are always asked for: conditions on the client and replays to a
            // child connected again need them.
            stages: Stages::CONNECT | Stages::HELO,
            no_reply: Stages::empty(),
            actions: Actions::empty(),
            options: ProtocolFlags::SKIP,
            ..Request::default()
        };
        for a in &agreements {
            request.stages |= a.sent_stages();
            request.actions |= a.actions;
        }
        if any_down {
            request.stages = Stages::all();
            request.actions = offer.actions;
        }
        request.actions.remove(Actions::SET_SYMLIST);
        if !any_down {
            for stage in Stage::ALL {
                if agreements
                    .iter()
                    .all(|a| !a.sends(stage) || !a.expects_reply(stage))
                {
                    request.no_reply |= stage.as_set();
                }
            }
            if agreements
                .iter()
                .all(|a| a.protocol.contains(ProtocolFlags::RCPT_REJ))
            {
                request.options |= ProtocolFlags::RCPT_REJ;
            }
        }
        if agreements.iter().any(|a| a.leading_space()) {
            request.options |= ProtocolFlags::HDR_LEADSPC;
        }
        // Macro lists: where any child asked for one, its names and the MTA's defaults for the
        // stage (a list replaces the defaults for every milter behind the chain).
        let profile = self.settings.mta.profile();
        for code in 0..7 {
            let stage = MacroStage(code);
            let lists: Vec<&[u8]> = agreements.iter().filter_map(|a| a.macros.get(stage)).collect();
            if lists.is_empty() {
                continue;
            }
            let mut names: Vec<&[u8]> = Vec::new();
            let defaults = stage
                .stage()
                .and_then(|s| profile.macros.iter().find(|(p, _)| *p == s))
                .map(|(_, names)| names.iter().map(|n| n.as_bytes()).collect::<Vec<_>>())
                .unwrap_or_default();
            for name in defaults
                .into_iter()
                .chain(lists.iter().flat_map(|l| l.split(|&c| c == b' ')))
            {
                if !name.is_empty() && !names.contains(&name) {
                    names.push(name);
                }
            }
            request.macros.set_raw(stage, Bytes::from(names.join(&b' ')));
        }
        request
    }
}

impl Milter for Chain {
    type Message = ();

    async fn negotiate(&mut self, offer: &Offer, request: &mut Request) -> Result<()> {
        self.offer = *offer;
        let profile = self.profile();
        let mut opening = JoinSet::new();
        for (i, r) in self.children.iter().enumerate() {
            let child = self.settings.milters[r.index].clone();
            let profile = profile.clone();
            opening.spawn(async move {
                let started = Instant::now();
                (i, Chain::open(child, profile).await, started.elapsed())
            });
        }
        while let Some(joined) = opening.join_next().await {
            let Ok((i, opened, took)) = joined else {
                continue;
            };
            if let Some(m) = &self.metrics {
                m.duration(&self.child(i).name, "NEGOTIATE", took);
            }
            match opened {
                Ok(conn) => self.children[i].conn = Some(conn),
                Err(e) => self.note_error(
                    i,
                    &Failure {
                        kind: "connect",
                        detail: e.to_string(),
                    },
                ),
            }
        }
        *request = self.request(offer);
        self.agreement = milterkit_proto::negotiate(offer, request).ok();
        Ok(())
    }

    async fn connect(&mut self, connect: Connect<'_>) -> Result<Decision> {
        let macros = pairs(connect.macros(), b'C');
        let cmd = connect.connect.clone();
        let ip = cmd.ip();
        self.connect = Some((cmd.clone(), macros.clone()));
        for i in 0..self.children.len() {
            if !self.child(i).when.admits_client(ip) {
                debug!(child = %self.child(i).name, client = ?ip, "client condition not met");
                self.children[i].out_of_session = true;
                if let Some(conn) = self.children[i].conn.take() {
                    tokio::spawn(async move {
                        let _ = conn.quit().await;
                    });
                }
            }
        }
        let merged = self
            .forward(Stage::Connect, Scope::Session, &macros, |_| {
                Command::Connect(cmd.clone())
            })
            .await;
        Ok(self.answer(Stage::Connect, merged))
    }

    async fn helo(&mut self, helo: Helo<'_>) -> Result<Decision> {
        let macros = pairs(helo.macros(), b'H');
        let name = Bytes::copy_from_slice(helo.name);
        self.helo = Some((name.clone(), macros.clone()));
        let merged = self
            .forward(Stage::Helo, Scope::Session, &macros, |_| Command::Helo {
                name: name.clone(),
            })
            .await;
        Ok(self.answer(Stage::Helo, merged))
    }

    async fn mail(&mut self, _: &mut (), mail: Mail<'_>) -> Result<Decision> {
        self.end_message();
        let macros = pairs(mail.macros(), b'M');
        let envelope = mail.envelope.clone();
        self.mail = Some((envelope.clone(), macros.clone()));
        if let Some(d) = self.reconnect().await {
            return Ok(self.answer(Stage::Mail, Merged::Decided(d)));
        }
        let authenticated = mail
            .macro_value("{auth_authen}")
            .is_some_and(|v| !v.is_empty());
        for i in 0..self.children.len() {
            let settings = self.settings.clone();
            let r = &mut self.children[i];
            let when = &settings.milters[r.index].when;
            if r.out_of_session || r.out_of_message || r.conn.is_none() {
                continue;
            }
            if !when.admits_sender(authenticated) {
                r.out_of_message = true;
            } else if when.by_rcpt() {
                r.mail_deferred = true;
            } else {
                r.in_message = true;
            }
        }
        let merged = self
            .forward(Stage::Mail, Scope::Message, &macros, |_| {
                Command::Mail(envelope.clone())
            })
            .await;
        Ok(self.answer(Stage::Mail, merged))
    }

    async fn rcpt(&mut self, _: &mut (), rcpt: Rcpt<'_>) -> Result<Decision> {
        let macros = pairs(rcpt.macros(), b'R');
        let envelope = rcpt.envelope.clone();
        for i in 0..self.children.len() {
            let r = &self.children[i];
            if r.out_of_session || r.out_of_message || r.conn.is_none() {
                continue;
            }
            if !self.child(i).when.admits_rcpt(&envelope.address) {
                continue;
            }
            if r.mail_deferred {
                if let Some(d) = self.send_deferred_mail(i).await {
                    return Ok(self.answer(Stage::Rcpt, Merged::Decided(d)));
                }
            }
            if !self.takes(i, Scope::Message) {
                continue;
            }
            let cmd = Command::Rcpt(envelope.clone());
            if let Some(d) = self.ask(i, Stage::Rcpt, &macros, cmd).await {
                return Ok(self.answer(Stage::Rcpt, Merged::Decided(d)));
            }
        }
        Ok(self.answer(Stage::Rcpt, Merged::Continue))
    }

    async fn data(&mut self, _: &mut (), data: Data<'_>) -> Result<Decision> {
        if let Some(d) = self.take_pending(Stage::Data) {
            return Ok(d);
        }
        for r in &mut self.children {
            if r.mail_deferred {
                // No recipient of its domains came.
                r.mail_deferred = false;
                r.out_of_message = true;
            }
        }
        let macros = pairs(data.macros(), b'T');
        let merged = self
            .forward(Stage::Data, Scope::Message, &macros, |_| Command::Data)
            .await;
        Ok(self.answer(Stage::Data, merged))
    }

    async fn header(&mut self, _: &mut (), header: Header<'_>) -> Result<Decision> {
        if let Some(d) = self.take_pending(Stage::Header) {
            return Ok(d);
        }
        let chain_space = self.agreement.as_ref().is_some_and(Agreement::leading_space);
        let name = Bytes::copy_from_slice(header.name);
        let value = header.value;
        let merged = self
            .forward(Stage::Header, Scope::Message, &Pairs::new(), |a| Command::Header {
                name: name.clone(),
                value: header_for_child(value, chain_space, a.leading_space()),
            })
            .await;
        Ok(self.answer(Stage::Header, merged))
    }

    async fn eoh(&mut self, _: &mut (), eoh: Eoh<'_>) -> Result<Decision> {
        if let Some(d) = self.take_pending(Stage::Eoh) {
            return Ok(d);
        }
        let macros = pairs(eoh.macros(), b'N');
        let merged = self
            .forward(Stage::Eoh, Scope::Message, &macros, |_| Command::Eoh)
            .await;
        Ok(self.answer(Stage::Eoh, merged))
    }

    async fn body(&mut self, _: &mut (), body: Body<'_>) -> Result<Decision> {
        if let Some(d) = self.take_pending(Stage::Body) {
            return Ok(d);
        }
        let chunk = Bytes::copy_from_slice(body.chunk);
        let merged = self
            .forward(Stage::Body, Scope::Body, &Pairs::new(), |_| {
                Command::Body(chunk.clone())
            })
            .await;
        Ok(self.answer(Stage::Body, merged))
    }

    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        if let Some(d) = self.pending.take() {
            self.finish_message().await;
            return Ok(d);
        }
        let macros = pairs(eom.macros(), b'E');
        let chain_space = eom.agreement().leading_space();
        let mut modifications = Vec::new();
        let mut body: Option<Vec<Bytes>> = None;
        let mut decided = None;
        for i in 0..self.children.len() {
            if !self.takes(i, Scope::Message) {
                continue;
            }
            let Some(conn) = self.children[i].conn.as_mut() else {
                continue;
            };
            let child_space = conn.agreement().is_some_and(Agreement::leading_space);
            let child = self.child(i).clone();
            self.children[i].in_message = false;
            if let Some(conn) = self.children[i].conn.as_mut() {
                conn.reply_timeout = child.eom_timeout;
            }
            let answer = self.eom_exchange(i, &macros).await;
            if let Some(conn) = self.children[i].conn.as_mut() {
                conn.reply_timeout = child.command_timeout;
            }
            let (decision, mods) = match answer {
                Ok(answer) => answer,
                Err(_) => match self.fail_safe(i, Stage::Eom) {
                    Some(d) => {
                        decided = Some(d);
                        break;
                    }
                    None => continue,
                },
            };
            if let Some(m) = &self.metrics {
                m.decision(&child.name, "EOM", decision.name(), child.mode.name());
                for modification in &mods {
                    m.modification(&child.name, ModificationCounts::kind(modification), child.mode.name());
                }
            }
            if child.mode == Mode::Evaluate {
                info!(child = %child.name, decision = decision.name(), modifications = mods.len(), "evaluated, not enforced");
                continue;
            }
            if !matches!(decision, Decision::Continue | Decision::Accept) {
                decided = Some(decision);
                break;
            }
            let mut replacement = Vec::new();
            for m in mods {
                match m {
                    Modification::ReplaceBody { chunk } => replacement.push(chunk),
                    m => modifications.push(header_for_mta(m, chain_space, child_space)),
                }
            }
            if !replacement.is_empty() {
                if body.is_some() {
                    warn!(child = %child.name, "a second child replaced the body: the later replacement wins");
                }
                body = Some(replacement);
            }
        }
        self.finish_message().await;
        if let Some(d) = decided {
            return Ok(d);
        }
        for m in modifications {
            let what = m.name();
            if let Err(e) = eom.modify(m) {
                warn!(modification = what, error = %e, "a child's modification cannot be sent");
            }
        }
        for chunk in body.into_iter().flatten() {
            if let Err(e) = eom.replace_body(chunk) {
                warn!(error = %e, "a child's replacement body cannot be sent");
                break;
            }
        }
        Ok(Decision::Continue)
    }

    async fn abort(&mut self, _: (), _: Abort<'_>) -> Result<()> {
        self.finish_message().await;
        Ok(())
    }

    async fn unknown(&mut self, unknown: Unknown<'_>) -> Result<Decision> {
        let line = Bytes::copy_from_slice(unknown.line);
        let merged = self
            .forward(Stage::Unknown, Scope::Session, &Pairs::new(), |_| {
                Command::Unknown { line: line.clone() }
            })
            .await;
        Ok(self.answer(Stage::Unknown, merged))
    }

    async fn close(&mut self) {
        for r in &mut self.children {
            if let Some(conn) = r.conn.take() {
                let _ = tokio::time::timeout(std::time::Duration::from_secs(1), conn.quit()).await;
            }
        }
    }
}

impl Chain {
    /// A held decision, at a stage the MTA waits at.
    fn take_pending(&mut self, stage: Stage) -> Option<Decision> {
        let waits = self.agreement.as_ref().is_none_or(|a| a.expects_reply(stage));
        if waits {
            self.pending.take()
        } else {
            None
        }
    }

    /// End of message with child `i`: its decision and modifications.
    async fn eom_exchange(
        &mut self,
        i: usize,
        macros: &Pairs,
    ) -> std::result::Result<(Decision, Vec<Modification>), Failure> {
        let started = Instant::now();
        let result = async {
            let running = &mut self.children[i];
            let conn = running.conn.as_mut().ok_or(Failure {
                kind: "connect",
                detail: "not connected".into(),
            })?;
            running.busy = true;
            if !macros.is_empty() {
                conn.macros(Stage::Eom, macros.clone())
                    .await
                    .map_err(|e| failure(&e))?;
            }
            let answer = conn.eom().await.map_err(|e| failure(&e))?;
            running.busy = false;
            match (answer.decision, answer.closed) {
                (Some(d), closed) => {
                    if closed.is_some() {
                        running.conn = None;
                    }
                    Ok((d, answer.modifications))
                }
                (None, reason) => Err(Failure {
                    kind: "closed",
                    detail: reason.unwrap_or_else(|| "no reply to EOM".into()),
                }),
            }
        }
        .await;
        if let Some(m) = &self.metrics {
            m.duration(&self.child(i).name, "EOM", started.elapsed());
        }
        if let Err(f) = &result {
            self.children[i].conn = None;
            self.note_error(i, f);
        }
        result
    }

    /// The message is over: ABORT to children still in it, and every child's message state
    /// cleared.
    async fn finish_message(&mut self) {
        for i in 0..self.children.len() {
            let r = &self.children[i];
            if !r.in_message || r.busy {
                continue;
            }
            if let Some(conn) = self.children[i].conn.as_mut() {
                if let Err(e) = conn.abort().await {
                    let f = failure(&e);
                    self.children[i].conn = None;
                    self.note_error(i, &f);
                }
            }
        }
        self.end_message();
    }
}
