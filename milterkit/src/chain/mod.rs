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
//! union of their stages and actions, no reply where none of them replies, their macro lists
//! plus the MTA's defaults). It then does what Postfix and Sendmail do with several milters
//! (seen with both in interop/tests/chain.rs):
//! - the envelope (CONNECT, HELO, MAIL, RCPT, DATA, UNKNOWN) goes command by command to each
//!   child in order, with the macros the MTA sent for it;
//! - the content (header fields, end of headers, body) is kept until end of message and then
//!   handed to one child after the other, each seeing the message as the children before it
//!   left it (a signer listed last signs the headers the others added); their modifications go
//!   to the MTA in child order, one replacement body at most;
//! - the first reject, tempfail, custom reply or discard of an enforcing child is the chain's,
//!   and later children do not see that command (at RCPT it refuses that recipient only);
//! - accept ends that child's part in the message (at CONNECT or HELO, in the connection); when
//!   every child is out, the chain accepts;
//! - header values travel with or without their leading space as each child negotiated.
//!
//! A child that is down, slower than its timeout, or broken gets its own [`FailSafe`]
//! (tempfail, reject, or skip it) at the stage where that shows. Tempfail and reject then also
//! answer every later recipient the child filters, and the message once one of those was
//! accepted, as the MTA's default action does for a milter listed directly; with skip the child
//! sits out the rest of the message. The next message on the connection tries to connect to it
//! again (CONNECT and HELO replayed), at most once a message. A child in [`Mode::Evaluate`] is
//! driven the same way, but its decisions and modifications are only logged and counted.
//! [`When`] limits a child to some clients, senders or recipient domains; a child that is down
//! matters only for what its conditions let in.
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
use std::time::{Duration, Instant};

use bytes::Bytes;
use milterkit_proto::command::{Connect as ConnectCmd, Envelope};
use milterkit_proto::message::{Message, Mta};
use milterkit_proto::{
    Actions, Agreement, Command, Decision, MacroStage, Macros, Modification, Offer, ProtocolFlags,
    Reply, Request, Sent, Stage, Stages,
};
use tokio::task::JoinSet;
use tracing::{debug, info, warn};

use crate::meter::ModificationCounts;
use crate::milter::{Abort, Body, Connect, Data, Eoh, Header, Helo, Mail, Rcpt, Unknown};
use crate::mta::{Connection, Profile};
use crate::{Eom, Error, Milter, Result};
use milterkit_proto::frame::MILTER_CHUNK_SIZE;

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
    /// The message's header fields and body, as the MTA sent them, replayed to each child at
    /// end of message.
    content: Content,
    /// The chain's own deadlines for a stage and for end of message (those of the milter
    /// serving it), of which the children of one stage share nine tenths.
    deadlines: (Duration, Duration),
    /// When the current stage's share runs out.
    deadline: Instant,
    /// Messages begun on this connection (MAIL commands).
    messages: u64,
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
    /// Its fail-safe after it failed in this message, or its refusal of a MAIL sent before its
    /// first recipient: the answer to every later recipient it filters, and to the message
    /// itself if one of those was accepted before.
    refusing: Option<Decision>,
    /// A recipient it filters was accepted in this message.
    holds_rcpt: bool,
    /// The first message (counted as [`Chain::messages`]) at which connecting to it again is
    /// tried: one attempt a message at most, none in the message right after a failed
    /// negotiation.
    next_try: u64,
    /// Its metrics, when the chain counts.
    meter: Option<Arc<metrics::ChildMetrics>>,
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
    /// DATA, EOM: children that got MAIL and are still in the message.
    Message,
}

/// The message as the MTA sent it: header fields put back as lines, and the body.
#[derive(Debug, Default)]
struct Content {
    /// `Name:value` lines (CRLF).
    headers: Vec<u8>,
    /// The body chunks, one after the other.
    body: Vec<u8>,
    /// The EOH macros.
    eoh: Pairs,
    /// Bigger than the settings allow: no more is kept.
    too_large: bool,
}

/// Sendmail's list of header fields as the chain's modifications reach it, all as one milter's.
/// Sendmail only marks a deleted field: it still counts for later CHGHEADER indexes of the same
/// milter, but not for a later milter's (seen with Sendmail 8.17 and two milters listed
/// directly: the second one's index 1 is the first field left). A later child's index, counted on
/// the fields it was sent, is turned into the one Sendmail counts for the chain.
struct SendmailFields {
    /// The message's own fields in Sendmail's order: name, and the child that deleted it.
    fields: Vec<(Bytes, Option<usize>)>,
}

impl SendmailFields {
    fn new(message: &Message) -> SendmailFields {
        let fields = message.headers.iter().map(|h| (h.name.clone(), None));
        SendmailFields {
            fields: fields.collect(),
        }
    }

    /// Child `child`'s modification `m` for Sendmail, noted in the list.
    fn translate(&mut self, child: usize, m: Modification) -> Modification {
        match m {
            Modification::ChangeHeader { index, name, value } => {
                let wanted = index.max(1) as usize;
                let same = |f: &(Bytes, Option<usize>)| f.0.eq_ignore_ascii_case(&name);
                // Counted as the child counts (not the fields earlier children deleted), and as
                // Sendmail counts (all).
                let (mut seen, mut all) = (0, 0);
                let mut found = None;
                for (at, f) in self.fields.iter().enumerate() {
                    if !same(f) {
                        continue;
                    }
                    all += 1;
                    if f.1.is_none_or(|by| by == child) {
                        seen += 1;
                        if seen == wanted {
                            found = Some(at);
                            break;
                        }
                    }
                }
                let index = match found {
                    Some(at) => {
                        if value.is_empty() {
                            self.fields[at].1 = Some(child);
                        }
                        all
                    }
                    // None of that index: Sendmail adds the field (unless deleting).
                    None => {
                        if !value.is_empty() {
                            self.fields.push((name.clone(), None));
                        }
                        all + (wanted - seen)
                    }
                };
                Modification::ChangeHeader {
                    index: u32::try_from(index).unwrap_or(u32::MAX),
                    name,
                    value,
                }
            }
            Modification::AddHeader { ref name, .. } => {
                // A trace field goes on top, as Sendmail puts it.
                let at = if name.eq_ignore_ascii_case(b"Received") {
                    0
                } else {
                    self.fields.len()
                };
                self.fields.insert(at, (name.clone(), None));
                m
            }
            Modification::InsertHeader {
                index, ref name, ..
            } => {
                let at = (index as usize).saturating_sub(Mta::Sendmail.hidden_fields());
                self.fields
                    .insert(at.min(self.fields.len()), (name.clone(), None));
                m
            }
            other => other,
        }
    }
}

/// What a child made of the message replayed to it.
enum Replayed {
    /// Its end-of-message decision and modifications.
    Eom(Decision, Vec<Modification>),
    /// It decided before end of message (accept, reject, tempfail, discard, a reply).
    Early(Decision),
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
        detail: crate::error::Causes(e).to_string(),
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

/// One exchange with a child: `macros`, then `cmd`, then its answer (none for a command it
/// skips or does not answer).
async fn converse(
    running: &mut Running,
    stage: Stage,
    macros: &Pairs,
    cmd: Command,
) -> std::result::Result<(Option<Decision>, Vec<Modification>), Failure> {
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
    let waited = matches!(answer.sent, Some(Sent::AwaitingReply(_)));
    match (answer.decision, answer.closed) {
        (None, Some(reason)) if waited || stage == Stage::Eom => Err(Failure {
            kind: "closed",
            detail: reason,
        }),
        (decision, closed) => {
            if closed.is_some() {
                // It answered (or owed no answer), then hung up: the connection is gone.
                running.conn = None;
            }
            Ok((decision, answer.modifications))
        }
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
            content: Content::default(),
            deadlines: {
                let config = crate::Config::default();
                (config.handler_timeout, config.eom_timeout)
            },
            deadline: Instant::now(),
            messages: 0,
        }
    }

    /// Shares out the deadlines of the milter serving the chain ([`Config::handler_timeout`]
    /// and [`Config::eom_timeout`](crate::Config::eom_timeout); the defaults are
    /// [`Config`]'s): the children asked at one stage get nine tenths of it together, so that a
    /// child running past the rest gets its own fail-safe, not the chain's.
    ///
    /// [`Config`]: crate::Config
    /// [`Config::handler_timeout`]: crate::Config::handler_timeout
    pub fn with_deadlines(mut self, handler: Duration, eom: Duration) -> Chain {
        self.deadlines = (handler, eom);
        self
    }

    /// A stage begins: the children's share of its deadline starts now.
    fn begin(&mut self, stage: Stage) {
        let whole = if stage == Stage::Eom {
            self.deadlines.1
        } else {
            self.deadlines.0
        };
        self.deadline = Instant::now() + whole.mul_f64(0.9);
    }

    /// Counts into `metrics` (see [`ChainMetrics`]).
    pub fn with_metrics(mut self, metrics: ChainMetrics) -> Chain {
        for r in &mut self.children {
            let child = &self.settings.milters[r.index];
            r.meter = Some(metrics.child(&child.name, child.mode.name()));
        }
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

    /// Connects to `child` and negotiates, each within its connect timeout, all within
    /// `budget` (what is left of the chain's own deadline).
    async fn open(
        child: Child,
        profile: Profile,
        budget: Duration,
    ) -> std::result::Result<Connection, Error> {
        let limit = child.connect_timeout.min(budget);
        let opening = Connection::open_with_timeout(&child.socket, profile, limit);
        match tokio::time::timeout(budget, opening).await {
            Ok(opened) => opened.map(|c| c.with_reply_timeout(child.command_timeout)),
            Err(_) => Err(Error::Timeout("connecting to a child milter")),
        }
    }

    fn note_error(&self, i: usize, f: &Failure) {
        let child = self.child(i);
        warn!(child = %child.name, kind = f.kind, error = %f.detail, "child milter failed");
        if let Some(m) = &self.metrics {
            m.error(&child.name, f.kind);
        }
    }

    /// Sends `macros` and `cmd` to child `i` and waits for its answer: its decision and, at end
    /// of message, its modifications. The wait ends at the child's timeout or at the chain's
    /// own deadline for the stage, whichever comes first; a failure drops the connection.
    async fn exchange(
        &mut self,
        i: usize,
        stage: Stage,
        macros: &Pairs,
        cmd: Command,
    ) -> std::result::Result<(Option<Decision>, Vec<Modification>), Failure> {
        let started = Instant::now();
        let child = &self.settings.milters[self.children[i].index];
        let remaining = self.deadline.saturating_duration_since(started);
        // At end of message the child's own timeout is per reply (its progress restarts it).
        let limit = if stage == Stage::Eom {
            remaining
        } else {
            remaining.min(child.command_timeout)
        };
        let running = &mut self.children[i];
        let result = tokio::time::timeout(limit, converse(running, stage, macros, cmd))
            .await
            .unwrap_or_else(|_| {
                Err(Failure {
                    kind: "timeout",
                    detail: format!("no reply to {stage} within {limit:?}"),
                })
            });
        if let (Some(m), Ok((Some(_), _))) = (&self.children[i].meter, &result) {
            m.duration(Some(stage), started.elapsed());
        }
        if let Ok((decision, _)) = &result {
            let name = &self.settings.milters[self.children[i].index].name;
            debug!(child = %name, %stage, decision = decision.as_ref().map(Decision::name), "child answered");
        }
        if let Err(f) = &result {
            self.children[i].conn = None;
            self.note_error(i, f);
        }
        result
    }

    /// Child `i` failed at `stage`: its fail-safe, if it is enforced, as the chain's decision.
    fn fail_safe(&mut self, i: usize, stage: Stage) -> Option<Decision> {
        let child = self.child(i);
        if child.mode == Mode::Evaluate {
            return None;
        }
        let name = child.fail_safe.name();
        let decision = match child.fail_safe {
            FailSafe::Skip => None,
            FailSafe::Tempfail => Some(Decision::Tempfail),
            FailSafe::Reject => Some(Decision::Reject),
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
            Ok((Some(d), _)) => {
                self.count(i, stage, &d);
                d
            }
            // Not sent (it asked not to see this stage), or sent without a reply owed.
            Ok((None, _)) => Decision::Continue,
            Err(_) if matches!(stage, Stage::Connect | Stage::Helo) => {
                // Before any message, as for a child down from the start: its fail-safe waits
                // for the next MAIL, where its conditions are known, which does not try it
                // again.
                self.children[i].next_try = self.messages + 2;
                return None;
            }
            Err(_) => {
                self.children[i].out_of_message = true;
                let d = self.fail_safe(i, stage);
                self.children[i].refusing.clone_from(&d);
                return d;
            }
        };
        let settings = self.settings.clone();
        let child = &settings.milters[self.children[i].index];
        let mode = child.mode;
        match decision {
            Decision::Continue | Decision::Skip => None,
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
        if !matches!(
            decision,
            Decision::Continue | Decision::Skip | Decision::Accept
        ) {
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
            // Before DATA, a child that has not had MAIL yet may still have it, and a refusing
            // one may have to refuse the message at DATA.
            Stage::Mail | Stage::Rcpt
                if any(&|i| {
                    let r = &self.children[i];
                    !r.out_of_session && (!r.out_of_message || r.refusing.is_some())
                }) =>
            {
                Decision::Continue
            }
            Stage::Connect | Stage::Helo | Stage::Mail | Stage::Rcpt => Decision::Accept,
            _ if !any(&|i| self.takes(i, Scope::Message)) => Decision::Accept,
            _ => Decision::Continue,
        }
    }

    /// Child `i` before its first command of a message (MAIL, or the recipient its MAIL waits
    /// for): connected again if it is down and was not tried in this message, with CONNECT and
    /// HELO replayed. `Some` is the chain's decision: the child's fail-safe if it stays down
    /// (which then stands for the rest of the message), or what it said to the replay.
    async fn ensure(&mut self, i: usize, stage: Stage) -> Option<Decision> {
        if self.children[i].conn.is_some() {
            return None;
        }
        if self.children[i].next_try <= self.messages {
            self.children[i].next_try = self.messages + 1;
            let child = self.child(i).clone();
            let budget = self.deadline.saturating_duration_since(Instant::now());
            match Chain::open(child.clone(), self.profile(), budget).await {
                Ok(conn) => {
                    info!(child = %child.name, "child milter connected again");
                    self.children[i].conn = Some(conn);
                    self.children[i].busy = false;
                    let d = self.replay_session(i).await;
                    self.children[i].next_try = self.messages + 1;
                    if d.is_some() {
                        // It refused the replayed CONNECT or HELO.
                        self.children[i].refusing.clone_from(&d);
                        return d;
                    }
                    if self.children[i].conn.is_some() {
                        return None;
                    }
                    // It failed in the replay: as if still down.
                }
                Err(e) => self.note_error(
                    i,
                    &Failure {
                        kind: "connect",
                        detail: crate::error::Causes(&e).to_string(),
                    },
                ),
            }
        }
        self.children[i].out_of_message = true;
        let d = self.fail_safe(i, stage);
        self.children[i].refusing.clone_from(&d);
        d
    }

    /// CONNECT and HELO again, to child `i` connected again.
    async fn replay_session(&mut self, i: usize) -> Option<Decision> {
        if let Some((connect, macros)) = self.connect.clone() {
            let cmd = Command::Connect(connect);
            if let Some(d) = self.ask(i, Stage::Connect, &macros, cmd).await {
                return Some(d);
            }
        }
        if let Some((name, macros)) = self.helo.clone() {
            if !self.children[i].out_of_session {
                let cmd = Command::Helo { name };
                return self.ask(i, Stage::Helo, &macros, cmd).await;
            }
        }
        None
    }

    /// The answer to the whole message of a child refusing it: one that failed (or refused its
    /// MAIL) after a recipient it filters was accepted.
    fn refusal_of_message(&self) -> Option<Decision> {
        self.children
            .iter()
            .filter(|r| r.holds_rcpt)
            .find_map(|r| r.refusing.clone())
    }

    /// A recipient the MTA rejected itself (`SMFIP_RCPT_REJ`): told to the children in the
    /// message that asked for such recipients, for their information; it decides nothing.
    async fn rejected_rcpt(&mut self, macros: &Pairs, envelope: &Envelope) {
        for i in 0..self.children.len() {
            let wants = self.children[i]
                .conn
                .as_ref()
                .and_then(Connection::agreement)
                .is_some_and(|a| a.protocol.contains(ProtocolFlags::RCPT_REJ));
            let filters = self.child(i).when.admits_rcpt(&envelope.address);
            if wants && filters && self.takes(i, Scope::Message) {
                let cmd = Command::Rcpt(envelope.clone());
                let _ = self.ask(i, Stage::Rcpt, macros, cmd).await;
            }
        }
    }

    /// Sends the waiting MAIL to child `i` before its first recipient.
    async fn send_deferred_mail(&mut self, i: usize) -> Option<Decision> {
        let r = &mut self.children[i];
        r.mail_deferred = false;
        r.in_message = true;
        let (envelope, macros) = self.mail.clone()?;
        let d = self
            .ask(i, Stage::Mail, &macros, Command::Mail(envelope))
            .await;
        if d.is_some() {
            // Refused for this recipient, so for every other one it filters.
            self.children[i].refusing.clone_from(&d);
        }
        d
    }

    fn end_message(&mut self) {
        for r in &mut self.children {
            r.in_message = false;
            r.out_of_message = false;
            r.mail_deferred = false;
            r.refusing = None;
            r.holds_rcpt = false;
        }
        self.mail = None;
        self.pending = None;
        self.content = Content::default();
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
            // CONNECT, HELO and MAIL are always asked for (without a reply where no child wants
            // one): conditions on the client and sender, replays to a child connected again, and
            // the start of each message need them; RCPT where a child has recipient conditions.
            stages: Stages::CONNECT | Stages::HELO | Stages::MAIL,
            // Header fields, EOH and body chunks are only kept until end of message: the MTA
            // need not wait for a reply to them. Header values are kept exact where the MTA can.
            no_reply: Stages::HEADER | Stages::EOH | Stages::BODY,
            actions: Actions::empty(),
            options: ProtocolFlags::HDR_LEADSPC,
            ..Request::default()
        };
        if self.settings.milters.iter().any(|c| c.when.by_rcpt()) {
            request.stages |= Stages::RCPT;
        }
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
        }
        // Recipients the MTA rejected itself, for the children that want them (only they are
        // sent them, see `rcpt`).
        if agreements
            .iter()
            .any(|a| a.protocol.contains(ProtocolFlags::RCPT_REJ))
        {
            request.options |= ProtocolFlags::RCPT_REJ;
        }
        // Macro lists: where any child asked for one, its names and the MTA's defaults for the
        // stage (a list replaces the defaults for every milter behind the chain).
        let profile = self.settings.mta.profile();
        for code in 0..7 {
            let stage = MacroStage(code);
            let lists: Vec<&[u8]> = agreements
                .iter()
                .filter_map(|a| a.macros.get(stage))
                .collect();
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
            request
                .macros
                .set_raw(stage, Bytes::from(names.join(&b' ')));
        }
        request
    }
}

impl Milter for Chain {
    type Message = ();

    async fn negotiate(&mut self, offer: &Offer, request: &mut Request) -> Result<()> {
        self.offer = *offer;
        // The children are connected to at once, within the chain's deadline for a stage.
        self.begin(Stage::Connect);
        let budget = self.deadline.saturating_duration_since(Instant::now());
        let profile = self.profile();
        let mut opening = JoinSet::new();
        for (i, r) in self.children.iter().enumerate() {
            let child = self.settings.milters[r.index].clone();
            let profile = profile.clone();
            opening.spawn(async move {
                let started = Instant::now();
                (
                    i,
                    Chain::open(child, profile, budget).await,
                    started.elapsed(),
                )
            });
        }
        while let Some(joined) = opening.join_next().await {
            let Ok((i, opened, took)) = joined else {
                continue;
            };
            if let (Some(m), Ok(_)) = (&self.children[i].meter, &opened) {
                m.duration(None, took);
            }
            match opened {
                Ok(conn) => self.children[i].conn = Some(conn),
                Err(e) => {
                    // Not tried again before the second message of this connection.
                    self.children[i].next_try = self.messages + 2;
                    self.note_error(
                        i,
                        &Failure {
                            kind: "connect",
                            detail: crate::error::Causes(&e).to_string(),
                        },
                    );
                }
            }
        }
        *request = self.request(offer);
        self.agreement = milterkit_proto::negotiate(offer, request).ok();
        Ok(())
    }

    async fn connect(&mut self, connect: Connect<'_>) -> Result<Decision> {
        self.begin(Stage::Connect);
        let macros = pairs(connect.macros(), b'C');
        let cmd = connect.connect.clone();
        let ip = cmd.ip();
        self.connect = Some((cmd.clone(), macros.clone()));
        self.helo = None;
        for i in 0..self.children.len() {
            // A new SMTP session (also after QUIT_NC): what a child decided of the last one
            // is over.
            self.children[i].out_of_session = false;
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
        self.begin(Stage::Helo);
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
        self.begin(Stage::Mail);
        self.end_message();
        self.messages += 1;
        let macros = pairs(mail.macros(), b'M');
        let envelope = mail.envelope.clone();
        self.mail = Some((envelope.clone(), macros.clone()));
        let authenticated = mail
            .macro_value("{auth_authen}")
            .is_some_and(|v| !v.is_empty());
        let settings = self.settings.clone();
        for i in 0..self.children.len() {
            let when = &settings.milters[self.children[i].index].when;
            if self.children[i].out_of_session {
                continue;
            }
            // Conditions first: a child this message is not for is not connected to, and its
            // being down does not matter.
            if !when.admits_sender(authenticated) {
                self.children[i].out_of_message = true;
                continue;
            }
            if when.by_rcpt() {
                self.children[i].mail_deferred = true;
                continue;
            }
            if let Some(d) = self.ensure(i, Stage::Mail).await {
                return Ok(self.answer(Stage::Mail, Merged::Decided(d)));
            }
            let r = &mut self.children[i];
            r.in_message = r.conn.is_some() && !r.out_of_session && !r.out_of_message;
        }
        let merged = self
            .forward(Stage::Mail, Scope::Message, &macros, |_| {
                Command::Mail(envelope.clone())
            })
            .await;
        Ok(self.answer(Stage::Mail, merged))
    }

    async fn rcpt(&mut self, _: &mut (), rcpt: Rcpt<'_>) -> Result<Decision> {
        self.begin(Stage::Rcpt);
        if let Some(d) = self.take_pending(Stage::Rcpt) {
            return Ok(d);
        }
        let macros = pairs(rcpt.macros(), b'R');
        let envelope = rcpt.envelope.clone();
        if rcpt.rejected() {
            self.rejected_rcpt(&macros, &envelope).await;
            return Ok(Decision::Continue);
        }
        let settings = self.settings.clone();
        let filters = |r: &Running| {
            settings.milters[r.index]
                .when
                .admits_rcpt(&envelope.address)
        };
        for i in 0..self.children.len() {
            let r = &self.children[i];
            if r.out_of_session || !filters(r) {
                continue;
            }
            if let Some(d) = r.refusing.clone() {
                return Ok(self.answer(Stage::Rcpt, Merged::Decided(d)));
            }
            if r.out_of_message {
                continue;
            }
            if r.mail_deferred {
                if let Some(d) = self.ensure(i, Stage::Rcpt).await {
                    return Ok(self.answer(Stage::Rcpt, Merged::Decided(d)));
                }
                let r = &self.children[i];
                if r.out_of_session || r.out_of_message {
                    // Down with fail-safe skip, or it accepted the replayed CONNECT or HELO.
                    continue;
                }
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
        // The recipient is accepted: the children that filter it hold one.
        for i in 0..self.children.len() {
            if self.takes(i, Scope::Message) && filters(&self.children[i]) {
                self.children[i].holds_rcpt = true;
            }
        }
        Ok(self.answer(Stage::Rcpt, Merged::Continue))
    }

    async fn data(&mut self, _: &mut (), data: Data<'_>) -> Result<Decision> {
        self.begin(Stage::Data);
        if let Some(d) = self.take_pending(Stage::Data) {
            return Ok(d);
        }
        if let Some(d) = self.refusal_of_message() {
            return Ok(self.answer(Stage::Data, Merged::Decided(d)));
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
        // Kept as a line, as the MTA stores it: with the leading space it dropped, if it did.
        let exact = self
            .agreement
            .as_ref()
            .is_some_and(Agreement::leading_space);
        let mut line = header.name.to_vec();
        line.push(b':');
        if !exact {
            line.push(b' ');
        }
        for &c in header.value {
            match c {
                b'\n' => line.extend_from_slice(b"\r\n"),
                c => line.push(c),
            }
        }
        line.extend_from_slice(b"\r\n");
        self.keep(&line, false);
        Ok(Decision::Continue)
    }

    async fn eoh(&mut self, _: &mut (), eoh: Eoh<'_>) -> Result<Decision> {
        self.content.eoh = pairs(eoh.macros(), b'N');
        Ok(Decision::Continue)
    }

    async fn body(&mut self, _: &mut (), body: Body<'_>) -> Result<Decision> {
        self.keep(body.chunk, true);
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        self.begin(Stage::Eom);
        if let Some(d) = self.pending.take().or_else(|| self.refusal_of_message()) {
            self.finish_message().await;
            return Ok(d);
        }
        if self.content.too_large {
            self.finish_message().await;
            let limit = self.settings.max_message_size;
            warn!(limit, "message larger than max_message_size; tempfailed");
            return Ok(Decision::Reply(Reply::new(
                452,
                "4.3.4",
                "message too large for the milter chain",
            )?));
        }
        let macros = pairs(eom.macros(), b'E');
        let chain_space = eom.agreement().leading_space();
        let mut raw = std::mem::take(&mut self.content.headers);
        raw.extend_from_slice(b"\r\n");
        raw.append(&mut self.content.body);
        let mut message = Message::parse(raw.into());
        let mut sendmail =
            (self.settings.mta == MtaName::Sendmail).then(|| SendmailFields::new(&message));
        let mut upward = Vec::new();
        let mut body_replaced = false;
        let mut decided = None;
        for i in 0..self.children.len() {
            if !self.takes(i, Scope::Message) {
                continue;
            }
            self.children[i].in_message = false;
            let child = self.child(i).clone();
            let child_space = self.children[i]
                .conn
                .as_ref()
                .and_then(Connection::agreement)
                .is_some_and(Agreement::leading_space);
            let (decision, mods) = match self.replay(i, &message, &macros).await {
                Ok(Replayed::Eom(d, mods)) => (d, mods),
                Ok(Replayed::Early(d)) => (d, Vec::new()),
                Err(_) => match self.fail_safe(i, Stage::Eom) {
                    Some(d) => {
                        decided = Some(d);
                        break;
                    }
                    None => continue,
                },
            };
            if let Some(m) = &self.metrics {
                for modification in &mods {
                    m.modification(
                        &child.name,
                        ModificationCounts::kind(modification),
                        child.mode.name(),
                    );
                }
            }
            if child.mode == Mode::Evaluate {
                if decision != Decision::Continue || !mods.is_empty() {
                    info!(child = %child.name, decision = decision.name(), modifications = mods.len(), "evaluated, not enforced");
                }
                continue;
            }
            if !matches!(decision, Decision::Continue | Decision::Accept) {
                decided = Some(decision);
                break;
            }
            if mods.is_empty() {
                continue;
            }
            // The next child sees the message as this one left it, as behind the MTA itself.
            let nobody = Envelope::new(Bytes::new());
            let mta = self.settings.mta.mta();
            let changed = message.apply(&nobody, &[], &mods, mta, child_space);
            message = Message::parse(changed.message);
            for m in mods {
                let m = match &mut sendmail {
                    Some(fields) => fields.translate(i, m),
                    None => m,
                };
                match m {
                    Modification::ReplaceBody { .. } => body_replaced = true,
                    m => upward.push(header_for_mta(m, chain_space, child_space)),
                }
            }
        }
        self.finish_message().await;
        if let Some(d) = decided {
            return Ok(d);
        }
        for m in upward {
            let what = m.name();
            if let Err(e) = eom.modify(m) {
                warn!(modification = what, error = %e, "a child's modification cannot be sent");
            }
        }
        if body_replaced {
            // One replacement: the body as the last child to replace it left it.
            if let Err(e) = eom.replace_body(message.body_crlf()) {
                warn!(error = %e, "a child's replacement body cannot be sent");
            }
        }
        Ok(Decision::Continue)
    }

    async fn abort(&mut self, _: (), _: Abort<'_>) -> Result<()> {
        self.finish_message().await;
        Ok(())
    }

    async fn unknown(&mut self, unknown: Unknown<'_>) -> Result<Decision> {
        self.begin(Stage::Unknown);
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
    /// Adds `bytes` to the header lines or the body kept for end of message, up to the size
    /// the settings allow.
    fn keep(&mut self, bytes: &[u8], body: bool) {
        let c = &mut self.content;
        let size = c.headers.len() + c.body.len() + bytes.len();
        if c.too_large || size > self.settings.max_message_size {
            c.too_large = true;
            c.headers = Vec::new();
            c.body = Vec::new();
            return;
        }
        if body {
            c.body.extend_from_slice(bytes);
        } else {
            c.headers.extend_from_slice(bytes);
        }
    }

    /// Sends child `i` the message as it stands: its header fields, EOH, the body in chunks,
    /// EOM; a decision before EOM ends it early, SKIP ends the body.
    async fn replay(
        &mut self,
        i: usize,
        message: &Message,
        eom: &Pairs,
    ) -> std::result::Result<Replayed, Failure> {
        let space = self.children[i]
            .conn
            .as_ref()
            .and_then(Connection::agreement)
            .is_some_and(Agreement::leading_space);
        let none = Pairs::new();
        for h in &message.headers {
            let cmd = Command::Header {
                name: h.name.clone(),
                value: h.value_for_milter(space),
            };
            if let Some(d) = self.step(i, Stage::Header, &none, cmd).await? {
                return Ok(Replayed::Early(d));
            }
        }
        let eoh = std::mem::take(&mut self.content.eoh);
        let early = self.step(i, Stage::Eoh, &eoh, Command::Eoh).await;
        self.content.eoh = eoh;
        if let Some(d) = early? {
            return Ok(Replayed::Early(d));
        }
        let body = message.body_crlf();
        for start in (0..body.len()).step_by(MILTER_CHUNK_SIZE) {
            let chunk = body.slice(start..body.len().min(start + MILTER_CHUNK_SIZE));
            match self
                .step(i, Stage::Body, &none, Command::Body(chunk))
                .await?
            {
                Some(Decision::Skip) => break,
                Some(d) => return Ok(Replayed::Early(d)),
                None => {}
            }
        }
        let eom_cmd = Command::Eom {
            chunk: Bytes::new(),
        };
        // The child's end-of-message timeout is per reply: progress restarts it.
        let child = &self.settings.milters[self.children[i].index];
        let (wait, then) = (child.eom_timeout, child.command_timeout);
        if let Some(conn) = self.children[i].conn.as_mut() {
            conn.reply_timeout = wait;
        }
        let answer = self.exchange(i, Stage::Eom, eom, eom_cmd).await;
        if let Some(conn) = self.children[i].conn.as_mut() {
            conn.reply_timeout = then;
        }
        let (decision, mods) = answer?;
        let decision = decision.unwrap_or(Decision::Continue);
        self.count(i, Stage::Eom, &decision);
        Ok(Replayed::Eom(decision, mods))
    }

    /// One command of a replay: `Some` when the child decided something other than continue.
    async fn step(
        &mut self,
        i: usize,
        stage: Stage,
        macros: &Pairs,
        cmd: Command,
    ) -> std::result::Result<Option<Decision>, Failure> {
        let (decision, _) = self.exchange(i, stage, macros, cmd).await?;
        if let Some(d) = &decision {
            self.count(i, stage, d);
        }
        Ok(decision.filter(|d| *d != Decision::Continue))
    }

    /// Counts child `i`'s `decision` at `stage`.
    fn count(&self, i: usize, stage: Stage, decision: &Decision) {
        if let Some(m) = &self.children[i].meter {
            m.decision(stage, decision);
        }
    }

    /// A held decision, at a stage the MTA waits at: at RCPT for every recipient, later once.
    fn take_pending(&mut self, stage: Stage) -> Option<Decision> {
        let waits = self
            .agreement
            .as_ref()
            .is_none_or(|a| a.expects_reply(stage));
        match (waits, stage) {
            (false, _) => None,
            (true, Stage::Rcpt) => self.pending.clone(),
            (true, _) => self.pending.take(),
        }
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
