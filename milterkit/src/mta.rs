//! The MTA side: what an MTA sends a milter for one message ([`Transaction`]), how a given MTA
//! sends it ([`Profile`]), and what came back ([`Outcome`]).

use std::future::Future;
use std::net::IpAddr;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milterkit_proto::command::{Connect, Envelope, Family};
use milterkit_proto::message::{Delivery, Message, Rules};
use milterkit_proto::{
    Agreement, Command, Decision, MacroStage, Modification, MtaConfig, MtaEvent, MtaSession, Offer,
    Reply, Sent, Stage,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::listener::{SocketSpec, Stream};
use crate::Error;

/// Which MTA a [`Profile`] imitates: what it sends and when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Flavor {
    /// Postfix 3.x: a macro packet before every event (also before each header, each body chunk
    /// and UNKNOWN, empty when no macro has a value), ABORT after every transaction and once more
    /// before QUIT, the queue id `i` only after the first accepted recipient.
    Postfix,
    /// Sendmail 8.17: macro packets only for CONNECT, HELO, MAIL, RCPT, DATA, EOH and EOM and only
    /// when that stage has a list, ABORT only inside an open transaction, `IPv6:` before IPv6
    /// addresses, the queue id at MAIL.
    Sendmail,
}

/// How an MTA talks to a milter: what it offers, which macros it sends at which stage, and its
/// habits ([`Flavor`]). `Profile::postfix()` and `Profile::sendmail()` reproduce the captures in
/// the project's fixtures.
#[derive(Debug, Clone)]
pub struct Profile {
    /// Whose habits.
    pub flavor: Flavor,
    /// The OPTNEG offer.
    pub offer: Offer,
    /// The macro names sent at each stage (by command code: `C H M R T N E`, and for Postfix `L`
    /// before headers, `B` before body chunks, `U` before UNKNOWN); a milter's own list replaces
    /// its stage's.
    pub macros: Vec<(u8, Vec<&'static str>)>,
    /// Fixed macro values: the MTA's name, version and the like.
    pub values: Vec<(&'static str, Bytes)>,
}

impl Profile {
    /// Postfix 3.7 with its default macro lists (`postconf milter_*_macros`).
    pub fn postfix() -> Profile {
        Profile {
            flavor: Flavor::Postfix,
            offer: Offer::default(),
            macros: vec![
                (b'C', vec!["j", "{daemon_name}", "{daemon_addr}", "v", "_"]),
                (
                    b'H',
                    vec![
                        "{tls_version}",
                        "{cipher}",
                        "{cipher_bits}",
                        "{cert_subject}",
                        "{cert_issuer}",
                    ],
                ),
                (
                    b'M',
                    vec![
                        "i",
                        "{auth_type}",
                        "{auth_authen}",
                        "{auth_author}",
                        "{mail_addr}",
                        "{mail_host}",
                        "{mail_mailer}",
                    ],
                ),
                (
                    b'R',
                    vec!["i", "{rcpt_addr}", "{rcpt_host}", "{rcpt_mailer}"],
                ),
                (b'T', vec!["i"]),
                (b'L', vec!["i"]),
                (b'N', vec!["i"]),
                (b'B', vec!["i"]),
                (b'E', vec!["i"]),
                (b'U', vec![]),
            ],
            values: vec![
                ("j", Bytes::from_static(b"mx.example.org")),
                ("{daemon_name}", Bytes::from_static(b"mx.example.org")),
                ("{daemon_addr}", Bytes::from_static(b"127.0.0.1")),
                ("v", Bytes::from_static(b"Postfix 3.7.11")),
                ("{mail_mailer}", Bytes::from_static(b"smtp")),
                ("{rcpt_mailer}", Bytes::from_static(b"smtp")),
            ],
        }
    }

    /// Sendmail 8.17 with the default lists of `cf/m4/cfhead.m4`.
    pub fn sendmail() -> Profile {
        Profile {
            flavor: Flavor::Sendmail,
            offer: Offer::default(),
            macros: vec![
                (
                    b'C',
                    vec!["j", "_", "{daemon_name}", "{if_name}", "{if_addr}"],
                ),
                (
                    b'H',
                    vec![
                        "{tls_version}",
                        "{cipher}",
                        "{cipher_bits}",
                        "{cert_subject}",
                        "{cert_issuer}",
                    ],
                ),
                (
                    b'M',
                    vec![
                        "i",
                        "{auth_type}",
                        "{auth_authen}",
                        "{auth_ssf}",
                        "{auth_author}",
                        "{mail_mailer}",
                        "{mail_host}",
                        "{mail_addr}",
                    ],
                ),
                (b'R', vec!["{rcpt_mailer}", "{rcpt_host}", "{rcpt_addr}"]),
                (b'E', vec!["{msg_id}"]),
            ],
            values: vec![
                ("j", Bytes::from_static(b"mx.example.org")),
                ("{daemon_name}", Bytes::from_static(b"MTA")),
                ("{if_name}", Bytes::from_static(b"localhost")),
                ("v", Bytes::from_static(b"8.17.1.9")),
                ("{mail_mailer}", Bytes::from_static(b"esmtp")),
                ("{rcpt_mailer}", Bytes::from_static(b"esmtp")),
            ],
        }
    }

    /// The names this profile sends at `stage` under `agreement` (the milter's list wins).
    fn names(&self, stage: u8, agreement: &Agreement) -> Option<Vec<Bytes>> {
        let own = Stage::from_code(stage)
            .and_then(MacroStage::of)
            .and_then(|s| agreement.macros.get(s));
        // Sendmail honours an EOM list only if an EOH list came too.
        let own = match (self.flavor, stage, own) {
            (Flavor::Sendmail, b'E', Some(_))
                if agreement.macros.get(MacroStage::EOH).is_none() =>
            {
                None
            }
            (_, _, own) => own,
        };
        if let Some(list) = own {
            if !list.is_empty() || self.flavor == Flavor::Sendmail {
                return Some(
                    list.split(|&c| c == b' ')
                        .filter(|n| !n.is_empty())
                        .map(Bytes::copy_from_slice)
                        .collect(),
                );
            }
        }
        self.macros
            .iter()
            .find(|(s, _)| *s == stage)
            .map(|(_, names)| {
                names
                    .iter()
                    .map(|n| Bytes::from_static(n.as_bytes()))
                    .collect()
            })
    }
}

/// The SMTP client of a [`Transaction`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Client {
    /// Its host name; `None` when the reverse lookup failed (the MTA then sends the address in
    /// brackets).
    pub hostname: Option<Bytes>,
    /// Its IP address; `None` for an unknown family.
    pub address: Option<IpAddr>,
    /// Its port.
    pub port: u16,
}

impl Default for Client {
    /// `client.example.com` at 192.0.2.1, port 50000.
    fn default() -> Self {
        Client {
            hostname: Some(Bytes::from_static(b"client.example.com")),
            address: Some(IpAddr::from([192, 0, 2, 1])),
            port: 50_000,
        }
    }
}

/// One message as an MTA hands it to a milter: who connected, HELO, envelope, extra macros, and
/// the raw RFC 5322 content.
///
/// ```
/// # use milterkit::mta::Transaction;
/// let t = Transaction::new()
///     .from("<alice@example.org>")
///     .to("<bob@example.net>")
///     .message("Subject: hi\r\n\r\nhello\r\n");
/// assert_eq!(t.recipients.len(), 1);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transaction {
    /// The SMTP client.
    pub client: Client,
    /// The HELO/EHLO name.
    pub helo: Bytes,
    /// SMTP commands the MTA did not know, sent as UNKNOWN after HELO.
    pub unknown: Vec<Bytes>,
    /// MAIL FROM with its ESMTP parameters.
    pub sender: Envelope,
    /// RCPT TO, each with its ESMTP parameters.
    pub recipients: Vec<Envelope>,
    /// Macro values to send besides the profile's (stage code, name, value); they win over
    /// computed ones.
    pub macros: Vec<(u8, Bytes, Bytes)>,
    /// The queue id sent as macro `i`; `None` makes one up.
    pub queue_id: Option<Bytes>,
    /// The message, headers and body, as received (LF or CRLF line ends).
    pub message: Bytes,
}

impl Default for Transaction {
    fn default() -> Self {
        Transaction::new()
    }
}

impl Transaction {
    /// A small message from `<sender@example.org>` with no recipient yet.
    pub fn new() -> Transaction {
        Transaction {
            client: Client::default(),
            helo: Bytes::from_static(b"client.example.com"),
            unknown: Vec::new(),
            sender: Envelope::new(Bytes::from_static(b"<sender@example.org>")),
            recipients: Vec::new(),
            macros: Vec::new(),
            queue_id: None,
            message: Bytes::from_static(
                b"From: Sender <sender@example.org>\r\nTo: Recipient <rcpt@example.net>\r\nSubject: Test\r\nMessage-ID: <test@example.org>\r\n\r\nHello.\r\n",
            ),
        }
    }

    /// Sets the sender (`<>` for a bounce).
    pub fn from(mut self, sender: impl AsRef<[u8]>) -> Self {
        self.sender = Envelope::new(Bytes::copy_from_slice(sender.as_ref()));
        self
    }

    /// Sets the sender with ESMTP parameters.
    pub fn from_with_args<A: AsRef<[u8]>>(
        mut self,
        sender: impl AsRef<[u8]>,
        args: impl IntoIterator<Item = A>,
    ) -> Self {
        self.sender = envelope(sender, args);
        self
    }

    /// Adds a recipient.
    pub fn to(mut self, rcpt: impl AsRef<[u8]>) -> Self {
        self.recipients
            .push(Envelope::new(Bytes::copy_from_slice(rcpt.as_ref())));
        self
    }

    /// Adds a recipient with ESMTP parameters.
    pub fn to_with_args<A: AsRef<[u8]>>(
        mut self,
        rcpt: impl AsRef<[u8]>,
        args: impl IntoIterator<Item = A>,
    ) -> Self {
        self.recipients.push(envelope(rcpt, args));
        self
    }

    /// Sets the HELO name.
    pub fn helo(mut self, name: impl AsRef<[u8]>) -> Self {
        self.helo = Bytes::copy_from_slice(name.as_ref());
        self
    }

    /// Sets the client.
    pub fn client(mut self, hostname: Option<&str>, address: Option<IpAddr>, port: u16) -> Self {
        self.client = Client {
            hostname: hostname.map(|h| Bytes::copy_from_slice(h.as_bytes())),
            address,
            port,
        };
        self
    }

    /// Adds an SMTP command the MTA does not know, sent as UNKNOWN after HELO.
    pub fn unknown(mut self, line: impl AsRef<[u8]>) -> Self {
        self.unknown.push(Bytes::copy_from_slice(line.as_ref()));
        self
    }

    /// Adds a macro value for a stage (by command code, such as `b'M'`).
    pub fn with_macro(
        mut self,
        stage: u8,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Self {
        self.macros.push((
            stage,
            Bytes::copy_from_slice(name.as_ref()),
            Bytes::copy_from_slice(value.as_ref()),
        ));
        self
    }

    /// Sets the message (headers, empty line, body).
    pub fn message(mut self, raw: impl Into<Bytes>) -> Self {
        self.message = raw.into();
        self
    }
}

fn envelope<A: AsRef<[u8]>>(addr: impl AsRef<[u8]>, args: impl IntoIterator<Item = A>) -> Envelope {
    Envelope {
        address: Bytes::copy_from_slice(addr.as_ref()),
        args: args
            .into_iter()
            .map(|a| Bytes::copy_from_slice(a.as_ref()))
            .collect(),
    }
}

/// One command of a transaction and what the milter answered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The stage.
    pub stage: Stage,
    /// What the command carried, for people: the address of MAIL and RCPT, the HELO name, the
    /// header name, the unknown command, the size of a body chunk.
    pub argument: Option<Bytes>,
    /// Whether it was sent, skipped, or sent without a reply.
    pub sent: Sent,
    /// The milter's decision, for a command that got one.
    pub decision: Option<Decision>,
}

/// What the MTA would do with the message, after every decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Verdict {
    /// Delivered (with the modifications).
    Accept,
    /// Accepted and thrown away.
    Discard,
    /// Refused with a 5xx; the milter's own reply if it gave one.
    Reject(Option<Reply>),
    /// Refused with a 4xx (the client retries); the milter's own reply if it gave one.
    Tempfail(Option<Reply>),
}

/// What happened to one transaction.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// Every command of the transaction, in order, with its answer.
    pub steps: Vec<Step>,
    /// Every modification, in the order received.
    pub modifications: Vec<Modification>,
    /// `SMFIR_PROGRESS` packets received.
    pub progress: u32,
    /// Recipients the milter refused (reject, tempfail or reply at RCPT).
    pub refused: Vec<(Bytes, Decision)>,
    /// The end result. When the milter's connection ended before it decided the message, this
    /// is tempfail: what Postfix (`milter_default_action`) and Sendmail (`F=T`) do by default.
    pub verdict: Option<Verdict>,
    /// What the MTA would deliver (envelope and message after the modifications, by the
    /// profile's MTA's rules), when the verdict is [`Verdict::Accept`].
    pub delivery: Option<Delivery>,
    /// What was negotiated.
    pub agreement: Option<Agreement>,
    /// Why the milter connection ended early, if it did.
    pub closed: Option<String>,
}

impl Outcome {
    /// The decision at the first step of `stage` that got one.
    pub fn decision(&self, stage: Stage) -> Option<&Decision> {
        self.steps
            .iter()
            .find(|s| s.stage == stage && s.decision.is_some())
            .and_then(|s| s.decision.as_ref())
    }

    fn step(
        &mut self,
        stage: Stage,
        argument: Option<Bytes>,
        sent: Sent,
        decision: Option<Decision>,
    ) {
        self.steps.push(Step {
            stage,
            argument,
            sent,
            decision,
        });
    }
}

/// What one command brought back from the milter.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Answer {
    /// Whether the command was sent (`None`: the connection was already closed).
    pub sent: Option<Sent>,
    /// The decision, for a command that got one.
    pub decision: Option<Decision>,
    /// Modifications received before the decision (end of message only).
    pub modifications: Vec<Modification>,
    /// `SMFIR_PROGRESS` packets received while waiting.
    pub progress: u32,
    /// The milter connection is gone (after this answer, if any), and why.
    pub closed: Option<String>,
}

impl Answer {
    /// Adds what the MTA session handed up.
    pub(crate) fn absorb(&mut self, event: MtaEvent) {
        match event {
            MtaEvent::Decision { decision, .. } => self.decision = Some(decision),
            MtaEvent::Modification(m) => self.modifications.push(m),
            MtaEvent::Progress => self.progress += 1,
            _ => {}
        }
    }
}

/// Carries commands to a milter and brings back its answer: in memory (the harness) or over a
/// socket.
pub(crate) trait Link: Send {
    /// Sends `cmd` through the MTA session and waits for the milter's answer, if one is owed.
    fn exchange(&mut self, cmd: Command) -> impl Future<Output = Result<Answer, Error>> + Send;

    /// The agreement, once negotiated.
    fn agreement(&self) -> Option<&Agreement>;

    /// True while the milter considers a message open (Sendmail sends ABORT only then).
    fn in_message(&self) -> bool;
}

/// Per-connection memory of the driver: what the MTA already did on this connection.
#[derive(Debug, Default)]
pub(crate) struct Driver {
    connected: bool,
    /// The milter accepted or refused the whole session at CONNECT/HELO.
    session_decided: bool,
    pub(crate) queue_ids: u32,
    /// Messages that reached end of message on this connection.
    completed: u32,
}

enum Flow {
    Go,
    Stop,
}

impl Driver {
    /// Runs one transaction as the profile's MTA would.
    pub(crate) async fn run<L: Link>(
        &mut self,
        link: &mut L,
        profile: &Profile,
        tx: &Transaction,
    ) -> Result<Outcome, Error> {
        let mut out = Outcome::default();
        self.queue_ids += 1;
        let mut ctx = Values::new(profile, tx, self.queue_ids);
        let result = self.steps(link, profile, tx, &mut ctx, &mut out).await;
        if out.verdict.is_none() {
            out.verdict = Some(if out.closed.is_some() {
                // The milter went away before deciding: the MTA's failure policy applies,
                // tempfail by default (Postfix `milter_default_action`, Sendmail `F=T`).
                Verdict::Tempfail(None)
            } else {
                Verdict::Accept
            });
        }
        out.agreement = link.agreement().cloned();
        if out.verdict == Some(Verdict::Accept) {
            let rules = match profile.flavor {
                Flavor::Postfix => Rules::Postfix,
                Flavor::Sendmail => Rules::Sendmail,
            };
            let recipients: Vec<Envelope> = tx
                .recipients
                .iter()
                .filter(|r| !out.refused.iter().any(|(a, _)| *a == r.address))
                .cloned()
                .collect();
            let leading_space = out.agreement.as_ref().is_some_and(Agreement::leading_space);
            out.delivery = Some(Message::parse(tx.message.clone()).apply(
                &tx.sender,
                &recipients,
                &out.modifications,
                rules,
                leading_space,
            ));
        }
        result.map(|()| out)
    }

    async fn steps<L: Link>(
        &mut self,
        link: &mut L,
        profile: &Profile,
        tx: &Transaction,
        v: &mut Values<'_>,
        out: &mut Outcome,
    ) -> Result<(), Error> {
        let postfix = profile.flavor == Flavor::Postfix;
        if self.session_decided {
            out.closed = Some("the milter decided the whole session".into());
            return Ok(());
        }
        if !self.connected {
            self.connected = true;
            let connect = v.connect();
            if let Flow::Stop = self
                .command(link, v, out, Command::Connect(connect))
                .await?
            {
                self.session_decided = true;
                return Ok(());
            }
            let helo = Command::Helo {
                name: tx.helo.clone(),
            };
            if let Flow::Stop = self.command(link, v, out, helo).await? {
                self.session_decided = true;
                return Ok(());
            }
        }
        // Sendmail stops reporting unknown commands once a message completed on the connection.
        let unknown = if profile.flavor == Flavor::Sendmail && self.completed > 0 {
            &[][..]
        } else {
            &tx.unknown[..]
        };
        for line in unknown {
            let cmd = Command::Unknown { line: line.clone() };
            if let Flow::Stop = self.command(link, v, out, cmd).await? {
                return Ok(());
            }
        }
        let mail = Command::Mail(tx.sender.clone());
        if let Flow::Stop = self.command(link, v, out, mail).await? {
            return self.end(link, profile, out).await;
        }
        let mut accepted = 0;
        for rcpt in &tx.recipients {
            v.rcpt = Some(rcpt.address.clone());
            let before = out.refused.len();
            if let Flow::Stop = self
                .command(link, v, out, Command::Rcpt(rcpt.clone()))
                .await?
            {
                return self.end(link, profile, out).await;
            }
            if out.refused.len() == before {
                accepted += 1;
                v.accepted_rcpts += 1;
            }
        }
        if accepted == 0 {
            // No recipient left: the MTA answers DATA with 554 and resets.
            let last = out.refused.last().map(|(_, d)| d.clone());
            out.verdict = Some(match last {
                Some(Decision::Tempfail) => Verdict::Tempfail(None),
                Some(Decision::Reply(r)) if r.is_temporary() => Verdict::Tempfail(Some(r)),
                Some(Decision::Reply(r)) => Verdict::Reject(Some(r)),
                _ => Verdict::Reject(None),
            });
            return self.end(link, profile, out).await;
        }
        let message = Message::parse(tx.message.clone());
        v.msg_id = message
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(b"message-id"))
            .map(|h| trim(&h.value));
        for cmd in std::iter::once(Command::Data) {
            if let Flow::Stop = self.command(link, v, out, cmd).await? {
                return self.end(link, profile, out).await;
            }
        }
        let leading_space = link.agreement().is_some_and(Agreement::leading_space);
        for h in &message.headers {
            let cmd = Command::Header {
                name: h.name.clone(),
                value: h.value_for_milter(leading_space),
            };
            if let Flow::Stop = self.command(link, v, out, cmd).await? {
                return self.end(link, profile, out).await;
            }
        }
        if let Flow::Stop = self.command(link, v, out, Command::Eoh).await? {
            return self.end(link, profile, out).await;
        }
        let mut body = message.body_crlf();
        while !body.is_empty() {
            let chunk = body.split_to(body.len().min(milterkit_proto::frame::MILTER_CHUNK_SIZE));
            if let Flow::Stop = self.command(link, v, out, Command::Body(chunk)).await? {
                return self.end(link, profile, out).await;
            }
        }
        let eom = Command::Eom {
            chunk: Bytes::new(),
        };
        self.command(link, v, out, eom).await?;
        if postfix {
            self.send(link, out, Command::Abort).await?;
        }
        Ok(())
    }

    /// After a transaction that ended before end of message: Postfix sends ABORT always,
    /// Sendmail only if the milter still had the message open.
    async fn end<L: Link>(
        &mut self,
        link: &mut L,
        profile: &Profile,
        out: &mut Outcome,
    ) -> Result<(), Error> {
        if out.closed.is_none() && (profile.flavor == Flavor::Postfix || link.in_message()) {
            self.send(link, out, Command::Abort).await?;
        }
        Ok(())
    }

    /// Ends the session: Postfix sends one more ABORT, then QUIT.
    pub(crate) async fn quit<L: Link>(
        &mut self,
        link: &mut L,
        profile: &Profile,
    ) -> Result<(), Error> {
        let mut out = Outcome::default();
        if profile.flavor == Flavor::Postfix && self.connected && !self.session_decided {
            self.send(link, &mut out, Command::Abort).await?;
        }
        self.send(link, &mut out, Command::Quit).await
    }

    async fn send<L: Link>(
        &mut self,
        link: &mut L,
        out: &mut Outcome,
        cmd: Command,
    ) -> Result<(), Error> {
        if out.closed.is_some() {
            return Ok(());
        }
        let answer = link.exchange(cmd).await?;
        if let Some(c) = answer.closed {
            out.closed = Some(c);
        }
        Ok(())
    }

    /// Sends the macros of `cmd`'s stage, then `cmd`; records the answer; says whether the
    /// transaction goes on.
    async fn command<L: Link>(
        &mut self,
        link: &mut L,
        v: &mut Values<'_>,
        out: &mut Outcome,
        cmd: Command,
    ) -> Result<Flow, Error> {
        if out.closed.is_some() {
            return Ok(Flow::Stop);
        }
        let Some(stage) = cmd.stage() else {
            return Ok(Flow::Go);
        };
        if let Some(agreement) = link.agreement() {
            if let Some(pairs) = v.macros(stage, agreement) {
                let answer = link
                    .exchange(Command::Macro {
                        stage: stage.code(),
                        pairs,
                    })
                    .await?;
                if answer.closed.is_some() {
                    out.closed = answer.closed;
                    return Ok(Flow::Stop);
                }
            }
        }
        let argument = match &cmd {
            Command::Mail(e) | Command::Rcpt(e) => Some(e.address.clone()),
            Command::Helo { name } => Some(name.clone()),
            Command::Header { name, .. } => Some(name.clone()),
            Command::Unknown { line } => Some(line.clone()),
            Command::Connect(c) => Some(c.hostname.clone()),
            Command::Body(chunk) => Some(Bytes::from(format!("{} bytes", chunk.len()))),
            _ => None,
        };
        let rcpt = match &cmd {
            Command::Rcpt(e) => Some(e.address.clone()),
            _ => None,
        };
        let answer = link.exchange(cmd).await?;
        out.modifications.extend(answer.modifications);
        out.progress += answer.progress;
        let sent = answer.sent.unwrap_or(Sent::Skipped);
        out.step(stage, argument, sent, answer.decision.clone());
        let flow = match answer.decision {
            None | Some(Decision::Continue) | Some(Decision::Skip) => Flow::Go,
            Some(d) => verdict(stage, d, rcpt, out),
        };
        if answer.closed.is_some() {
            out.closed = answer.closed;
            return Ok(Flow::Stop);
        }
        Ok(flow)
    }
}

/// Records what a decision means for the message; says whether the transaction goes on.
fn verdict(stage: Stage, d: Decision, rcpt: Option<Bytes>, out: &mut Outcome) -> Flow {
    let refusal = match &d {
        Decision::Reject => Some(Verdict::Reject(None)),
        Decision::Tempfail | Decision::Shutdown => Some(Verdict::Tempfail(None)),
        Decision::Reply(r) if r.is_temporary() => Some(Verdict::Tempfail(Some(r.clone()))),
        Decision::Reply(r) => Some(Verdict::Reject(Some(r.clone()))),
        _ => None,
    };
    match (stage, refusal) {
        (Stage::Rcpt, Some(_)) if d != Decision::Shutdown => {
            out.refused.push((rcpt.unwrap_or_default(), d));
            Flow::Go
        }
        (Stage::Unknown, Some(_)) => Flow::Go,
        (_, Some(v)) => {
            out.verdict = Some(v);
            Flow::Stop
        }
        (Stage::Eom, None) | (_, None) if d == Decision::Discard => {
            out.verdict = Some(Verdict::Discard);
            Flow::Stop
        }
        _ => {
            out.verdict = Some(Verdict::Accept);
            Flow::Stop
        }
    }
}

fn trim(b: &[u8]) -> Bytes {
    let s = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let e = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(s, |i| i + 1);
    Bytes::copy_from_slice(&b[s..e])
}

/// Macro values of one transaction.
struct Values<'a> {
    profile: &'a Profile,
    tx: &'a Transaction,
    queue_id: Bytes,
    rcpt: Option<Bytes>,
    accepted_rcpts: u32,
    msg_id: Option<Bytes>,
}

impl<'a> Values<'a> {
    fn new(profile: &'a Profile, tx: &'a Transaction, n: u32) -> Self {
        Values {
            profile,
            tx,
            queue_id: tx
                .queue_id
                .clone()
                .unwrap_or_else(|| Bytes::from(format!("4Q{n:08X}"))),
            rcpt: None,
            accepted_rcpts: 0,
            msg_id: None,
        }
    }

    fn sendmail(&self) -> bool {
        self.profile.flavor == Flavor::Sendmail
    }

    /// The CONNECT packet as the profile's MTA writes it.
    fn connect(&self) -> Connect {
        let c = &self.tx.client;
        let (family, text) = match c.address {
            Some(IpAddr::V4(a)) => (Family::Inet, a.to_string()),
            Some(IpAddr::V6(a)) if self.sendmail() => (Family::Inet6, format!("IPv6:{a}")),
            Some(IpAddr::V6(a)) => (Family::Inet6, a.to_string()),
            None => (Family::Unknown, String::new()),
        };
        let hostname = match (&c.hostname, c.address) {
            (Some(h), _) => h.clone(),
            (None, Some(_)) => Bytes::from(format!("[{text}]")),
            (None, None) => Bytes::from_static(b"unknown"),
        };
        Connect {
            hostname,
            family,
            port: if family == Family::Unknown { 0 } else { c.port },
            address: Bytes::from(text),
        }
    }

    /// The value of `name` now, if it has one.
    fn value(&self, stage: u8, name: &[u8]) -> Option<Bytes> {
        let bare = name
            .strip_prefix(b"{")
            .and_then(|n| n.strip_suffix(b"}"))
            .unwrap_or(name);
        let same = |n: &[u8]| {
            n.strip_prefix(b"{")
                .and_then(|n| n.strip_suffix(b"}"))
                .unwrap_or(n)
                == bare
        };
        if let Some((_, _, v)) = self
            .tx
            .macros
            .iter()
            .rev()
            .find(|(s, n, _)| *s == stage && same(n))
        {
            return Some(v.clone());
        }
        if let Some((_, v)) = self.profile.values.iter().find(|(n, _)| same(n.as_bytes())) {
            return Some(v.clone());
        }
        let unbracket = |a: &Bytes| {
            Bytes::copy_from_slice(
                a.strip_prefix(b"<")
                    .and_then(|a| a.strip_suffix(b">"))
                    .unwrap_or(a),
            )
        };
        let host = match self.tx.client.address {
            Some(a) => format!("[{a}]"),
            None => "unknown".into(),
        };
        match bare {
            b"i" => {
                // Postfix knows the queue id only once a recipient was accepted.
                let known =
                    self.sendmail() || self.accepted_rcpts > 0 || !matches!(stage, b'M' | b'R');
                known.then(|| self.queue_id.clone())
            }
            b"_" => Some(Bytes::from(format!(
                "{} {host}",
                self.tx
                    .client
                    .hostname
                    .as_ref()
                    .map_or("unknown".into(), |h| String::from_utf8_lossy(h)
                        .into_owned())
            ))),
            b"client_addr" => self.tx.client.address.map(|a| Bytes::from(a.to_string())),
            b"client_port" => Some(Bytes::from(self.tx.client.port.to_string())),
            b"client_name" => self.tx.client.hostname.clone(),
            b"mail_addr" => Some(unbracket(&self.tx.sender.address)),
            b"mail_host" => Some(Bytes::from(host)),
            b"rcpt_addr" => self.rcpt.as_ref().map(unbracket),
            b"rcpt_host" => Some(Bytes::from(host)),
            b"msg_id" if self.sendmail() => self.msg_id.clone(),
            _ => None,
        }
    }

    /// The macro packet for `stage`, if the profile's MTA sends one.
    fn macros(&self, stage: Stage, agreement: &Agreement) -> Option<Vec<(Bytes, Bytes)>> {
        let code = stage.code();
        let sendmail = self.sendmail();
        if sendmail && matches!(stage, Stage::Header | Stage::Body | Stage::Unknown) {
            return None;
        }
        // Nothing at all is sent for content stages the milter suppressed.
        if matches!(stage, Stage::Header | Stage::Eoh | Stage::Body) && !agreement.sends(stage) {
            return None;
        }
        let names = match self.profile.names(code, agreement) {
            Some(n) => n,
            None if sendmail => return None,
            None => Vec::new(),
        };
        if sendmail && names.is_empty() {
            return None;
        }
        let mut pairs: Vec<(Bytes, Bytes)> = names
            .into_iter()
            .filter_map(|n| self.value(code, &n).map(|v| (n, v)))
            .collect();
        for (s, n, v) in &self.tx.macros {
            if *s == code && !pairs.iter().any(|(m, _)| m == n) {
                pairs.push((n.clone(), v.clone()));
            }
        }
        Some(pairs)
    }
}

/// Longest wait for the milter to accept the connection and answer OPTNEG: Postfix's
/// `milter_connect_timeout` (30 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for one reply: Postfix's `milter_content_timeout` (300 s), the larger of its two
/// reply timeouts; `SMFIR_PROGRESS` restarts it.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// A connection to a milter, driven as the [`Profile`]'s MTA would drive it.
///
/// ```no_run
/// # async fn f() -> Result<(), milterkit::Error> {
/// use milterkit::mta::{Connection, Profile, Transaction};
/// let mut conn = Connection::open("inet:7357@127.0.0.1", Profile::postfix()).await?;
/// let outcome = conn.run(&Transaction::new().to("<bob@example.net>")).await?;
/// println!("{:?}", outcome.verdict);
/// conn.quit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Connection<IO = Stream> {
    io: IO,
    mta: MtaSession,
    profile: Profile,
    driver: Driver,
    closed: Option<String>,
    reply_timeout: Duration,
    buf: BytesMut,
}

impl Connection<Stream> {
    /// Connects to the milter at `spec` (any spelling [`SocketSpec`] reads) and negotiates.
    pub async fn open(spec: &str, profile: Profile) -> Result<Self, Error> {
        let spec: SocketSpec = spec.parse()?;
        let io = tokio::time::timeout(CONNECT_TIMEOUT, crate::listener::connect(&spec))
            .await
            .map_err(|_| Error::Timeout("connecting to the milter"))??;
        Connection::negotiate(io, profile).await
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    /// Negotiates over an already open stream.
    pub async fn negotiate(io: IO, profile: Profile) -> Result<Self, Error> {
        let mut conn = Connection {
            io,
            mta: MtaSession::new(profile.offer, MtaConfig::default()),
            profile,
            driver: Driver::default(),
            closed: None,
            reply_timeout: REPLY_TIMEOUT,
            buf: BytesMut::new(),
        };
        conn.flush().await?;
        tokio::time::timeout(CONNECT_TIMEOUT, conn.read_until(|s| !s.negotiating()))
            .await
            .map_err(|_| Error::Timeout("waiting for the OPTNEG reply"))??;
        if let Some(c) = &conn.closed {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the milter closed during negotiation: {c}"),
            )));
        }
        Ok(conn)
    }

    /// Sets the longest wait for one reply (default [`REPLY_TIMEOUT`]).
    pub fn with_reply_timeout(mut self, limit: Duration) -> Self {
        self.reply_timeout = limit;
        self
    }

    /// Runs one transaction; several may run on one connection.
    pub async fn run(&mut self, tx: &Transaction) -> Result<Outcome, Error> {
        let mut driver = std::mem::take(&mut self.driver);
        let profile = self.profile.clone();
        let result = driver.run(self, &profile, tx).await;
        self.driver = driver;
        result
    }

    /// Ends the session as the profile's MTA does (Postfix: ABORT then QUIT) and closes.
    pub async fn quit(mut self) -> Result<(), Error> {
        let mut driver = std::mem::take(&mut self.driver);
        let profile = self.profile.clone();
        driver.quit(&mut self, &profile).await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    /// What was negotiated.
    pub fn agreement(&self) -> Option<&Agreement> {
        self.mta.agreement()
    }

    /// Sends one command and waits for the milter's answer if one is owed (skipped stages are not
    /// sent; no-reply stages are not waited for; progress restarts the wait). The per-stage
    /// methods below are this with the command built for you; macros are sent only when you send
    /// them ([`Connection::macros`]), unlike [`Connection::run`], which sends the profile's.
    pub async fn send(&mut self, cmd: Command) -> Result<Answer, Error> {
        self.exchange(cmd).await
    }

    /// `SMFIC_MACRO` for the command `stage` (a command code such as `b'M'`).
    pub async fn macros(&mut self, stage: u8, pairs: Vec<(Bytes, Bytes)>) -> Result<Answer, Error> {
        self.exchange(Command::Macro { stage, pairs }).await
    }

    /// `SMFIC_CONNECT`.
    pub async fn connect(&mut self, connect: Connect) -> Result<Answer, Error> {
        self.exchange(Command::Connect(connect)).await
    }

    /// `SMFIC_HELO`.
    pub async fn helo(&mut self, name: impl AsRef<[u8]>) -> Result<Answer, Error> {
        let name = Bytes::copy_from_slice(name.as_ref());
        self.exchange(Command::Helo { name }).await
    }

    /// `SMFIC_MAIL`.
    pub async fn mail(&mut self, sender: Envelope) -> Result<Answer, Error> {
        self.exchange(Command::Mail(sender)).await
    }

    /// `SMFIC_RCPT`.
    pub async fn rcpt(&mut self, rcpt: Envelope) -> Result<Answer, Error> {
        self.exchange(Command::Rcpt(rcpt)).await
    }

    /// `SMFIC_DATA`.
    pub async fn data(&mut self) -> Result<Answer, Error> {
        self.exchange(Command::Data).await
    }

    /// `SMFIC_HEADER` (the value as the milter should see it: no leading space unless
    /// leading-space headers were agreed, folded lines joined with LF).
    pub async fn header(
        &mut self,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Answer, Error> {
        self.exchange(Command::Header {
            name: Bytes::copy_from_slice(name.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
        })
        .await
    }

    /// `SMFIC_EOH`.
    pub async fn eoh(&mut self) -> Result<Answer, Error> {
        self.exchange(Command::Eoh).await
    }

    /// `SMFIC_BODY`: one chunk of at most 65,535 bytes with CRLF line ends.
    pub async fn body(&mut self, chunk: impl Into<Bytes>) -> Result<Answer, Error> {
        self.exchange(Command::Body(chunk.into())).await
    }

    /// `SMFIC_BODYEOB`: end of message; the answer holds the modifications.
    pub async fn eom(&mut self) -> Result<Answer, Error> {
        self.exchange(Command::Eom {
            chunk: Bytes::new(),
        })
        .await
    }

    /// `SMFIC_ABORT`: forget the current message.
    pub async fn abort(&mut self) -> Result<Answer, Error> {
        self.exchange(Command::Abort).await
    }

    /// `SMFIC_UNKNOWN`.
    pub async fn unknown(&mut self, line: impl AsRef<[u8]>) -> Result<Answer, Error> {
        let line = Bytes::copy_from_slice(line.as_ref());
        self.exchange(Command::Unknown { line }).await
    }

    /// `SMFIC_QUIT_NC`: ends this SMTP session but keeps the connection and the agreement; the
    /// next [`run`](Self::run) starts with CONNECT. Only for milters known to support it
    /// (libmilter ignores it in most states).
    pub async fn quit_nc(&mut self) -> Result<Answer, Error> {
        let answer = self.exchange(Command::QuitNc).await?;
        self.driver = Driver::default();
        Ok(answer)
    }

    async fn flush(&mut self) -> Result<(), Error> {
        if self.mta.poll_transmit(&mut self.buf) {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    /// Reads until `done` holds, collecting what the milter said.
    async fn read_until(&mut self, done: impl Fn(&MtaSession) -> bool) -> Result<Answer, Error> {
        let mut answer = Answer::default();
        loop {
            while let Some(event) = self.mta.poll_event()? {
                answer.absorb(event);
            }
            if done(&self.mta) {
                return Ok(answer);
            }
            let input = self.mta.input_mut();
            input.reserve(4096);
            let n = tokio::time::timeout(self.reply_timeout, self.io.read_buf(input))
                .await
                .map_err(|_| Error::Timeout("waiting for the milter's reply"))??;
            if n == 0 {
                let reason = "the milter closed the connection".to_owned();
                self.closed = Some(reason.clone());
                answer.closed = Some(reason);
                return Ok(answer);
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Link for Connection<IO> {
    async fn exchange(&mut self, cmd: Command) -> Result<Answer, Error> {
        if let Some(c) = &self.closed {
            return Ok(Answer {
                closed: Some(c.clone()),
                ..Answer::default()
            });
        }
        let stage = cmd.stage().unwrap_or(Stage::Connect);
        let sent = self
            .mta
            .send(cmd)
            .map_err(|source| Error::Misuse { stage, source })?;
        if let Err(e) = self.flush().await {
            let reason = format!("writing to the milter failed: {e}");
            self.closed = Some(reason.clone());
            return Ok(Answer {
                sent: Some(sent),
                closed: Some(reason),
                ..Answer::default()
            });
        }
        let mut answer = match sent {
            Sent::AwaitingReply(_) => self.read_until(|s| s.awaiting().is_none()).await?,
            _ => Answer::default(),
        };
        answer.sent = Some(sent);
        Ok(answer)
    }

    fn agreement(&self) -> Option<&Agreement> {
        self.mta.agreement()
    }

    fn in_message(&self) -> bool {
        self.mta.in_message()
    }
}
