//! The driver: sends a [`Transaction`] command by command as a [`Profile`]'s MTA would, over any
//! [`Link`] (a socket or the in-process harness).

use std::future::Future;
use std::net::IpAddr;
use std::sync::Arc;

use bytes::Bytes;
use milterkit_proto::command::{Connect, Envelope, Family};
use milterkit_proto::message::Message;
use milterkit_proto::{Agreement, Command, Decision, MtaSession, Sent, Stage};

use super::*;
use crate::Error;

/// Carries commands to a milter and brings back its answer: in memory (the harness) or over a
/// socket.
pub(crate) trait Link: Send {
    /// The MTA session this link carries, and why the link closed, once it has.
    fn end(&mut self) -> &mut LinkEnd;

    /// Carries what the MTA session just queued (`sent`) to the milter and brings back its
    /// answer, if one is owed.
    fn carry(&mut self, sent: &Sent) -> impl Future<Output = Result<Answer, Error>> + Send;

    /// Sends `cmd` through the MTA session and waits for the milter's answer, if one is owed.
    fn exchange(&mut self, cmd: Command) -> impl Future<Output = Result<Answer, Error>> + Send {
        async move {
            if let Some(c) = &self.end().closed {
                return Ok(Answer {
                    closed: Some(c.clone()),
                    ..Answer::default()
                });
            }
            let stage = cmd.stage().unwrap_or(Stage::Connect);
            let macros = matches!(cmd, Command::Macro { .. });
            let sent = self
                .end()
                .session
                .send(cmd)
                .map_err(|source| Error::Misuse { stage, source })?;
            if macros {
                // Macros go out with the command they are for, in one write: one system call
                // fewer on each side for each command that has macros.
                return Ok(Answer {
                    sent: Some(sent),
                    ..Answer::default()
                });
            }
            let mut answer = self.carry(&sent).await?;
            answer.sent = Some(sent);
            Ok(answer)
        }
    }

    /// The agreement, once negotiated.
    fn agreement(&mut self) -> Option<&Agreement> {
        self.end().session.agreement()
    }

    /// True while the milter considers a message open (Sendmail sends ABORT only then).
    fn in_message(&mut self) -> bool {
        self.end().session.in_message()
    }
}

/// The MTA end of a [`Link`]: its session, and why the link closed, once it has.
#[derive(Debug)]
pub(crate) struct LinkEnd {
    pub(crate) session: MtaSession,
    pub(crate) closed: Option<String>,
}

impl LinkEnd {
    pub(crate) fn new(session: MtaSession) -> LinkEnd {
        LinkEnd {
            session,
            closed: None,
        }
    }
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
    /// Leave [`Outcome::delivery`] empty ([`Connection::without_delivery`]).
    pub(crate) no_delivery: bool,
    /// The last message sent, split, and its body with CRLF line ends: a load test sends the
    /// same `Bytes` again and again. `Bytes` never change, so the same storage and length are
    /// the same message.
    parsed: Option<(Bytes, Arc<Message>, Bytes)>,
}

/// Whether a transaction goes on after a command.
enum Next {
    Go,
    Stop,
}

impl Driver {
    /// `raw` split into headers and body, and the body with CRLF line ends: from the last
    /// transaction when it sent the same bytes.
    fn parsed(&mut self, raw: &Bytes) -> (Arc<Message>, Bytes) {
        match &self.parsed {
            Some((last, message, body))
                if last.as_ptr() == raw.as_ptr() && last.len() == raw.len() =>
            {
                (message.clone(), body.clone())
            }
            _ => {
                let message = Arc::new(Message::parse(raw.clone()));
                let body = message.body_crlf();
                self.parsed = Some((raw.clone(), message.clone(), body.clone()));
                (message, body)
            }
        }
    }

    /// Forgets the session (after QUIT_NC), keeping the settings.
    pub(crate) fn new_session(&mut self) {
        *self = Driver {
            no_delivery: self.no_delivery,
            parsed: self.parsed.take(),
            ..Driver::default()
        };
    }

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
        if out.verdict == Some(Verdict::Accept) && !self.no_delivery {
            let rules = profile.mta;
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
        let postfix = profile.mta == Mta::Postfix;
        if self.session_decided {
            out.closed = Some("the milter decided the whole session".into());
            return Ok(());
        }
        if !self.connected {
            self.connected = true;
            let connect = v.connect();
            if let Next::Stop = self
                .command(link, v, out, Command::Connect(connect))
                .await?
            {
                self.session_decided = true;
                return Ok(());
            }
            let helo = Command::Helo {
                name: tx.helo.clone(),
            };
            if let Next::Stop = self.command(link, v, out, helo).await? {
                self.session_decided = true;
                return Ok(());
            }
        }
        // Sendmail stops reporting unknown commands once a message completed on the connection.
        let unknown = if profile.mta == Mta::Sendmail && self.completed > 0 {
            &[][..]
        } else {
            &tx.unknown[..]
        };
        for line in unknown {
            let cmd = Command::Unknown { line: line.clone() };
            if let Next::Stop = self.command(link, v, out, cmd).await? {
                return Ok(());
            }
        }
        let mail = Command::Mail(tx.sender.clone());
        if let Next::Stop = self.command(link, v, out, mail).await? {
            return self.end(link, profile, out).await;
        }
        let mut accepted = 0;
        for rcpt in &tx.recipients {
            v.rcpt = Some(rcpt.address.clone());
            let before = out.refused.len();
            if let Next::Stop = self
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
        let (message, body) = self.parsed(&tx.message);
        v.msg_id = message
            .headers
            .iter()
            .find(|h| h.name.eq_ignore_ascii_case(b"message-id"))
            .map(|h| trim(&h.value));
        for cmd in std::iter::once(Command::Data) {
            if let Next::Stop = self.command(link, v, out, cmd).await? {
                return self.end(link, profile, out).await;
            }
        }
        let leading_space = link.agreement().is_some_and(Agreement::leading_space);
        for h in &message.headers {
            let cmd = Command::Header {
                name: h.name.clone(),
                value: h.value_for_milter(leading_space),
            };
            if let Next::Stop = self.command(link, v, out, cmd).await? {
                return self.end(link, profile, out).await;
            }
        }
        if let Next::Stop = self.command(link, v, out, Command::Eoh).await? {
            return self.end(link, profile, out).await;
        }
        let mut body = body;
        while !body.is_empty() {
            let chunk = body.split_to(body.len().min(milterkit_proto::frame::MILTER_CHUNK_SIZE));
            if let Next::Stop = self.command(link, v, out, Command::Body(chunk)).await? {
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
        if out.closed.is_none() && (profile.mta == Mta::Postfix || link.in_message()) {
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
        if profile.mta == Mta::Postfix && self.connected && !self.session_decided {
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
    ) -> Result<Next, Error> {
        if out.closed.is_some() {
            return Ok(Next::Stop);
        }
        let Some(stage) = cmd.stage() else {
            return Ok(Next::Go);
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
                    return Ok(Next::Stop);
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
            None | Some(Decision::Continue) | Some(Decision::Skip) => Next::Go,
            Some(d) => verdict(stage, d, rcpt, out),
        };
        if answer.closed.is_some() {
            out.closed = answer.closed;
            return Ok(Next::Stop);
        }
        Ok(flow)
    }
}

/// Records what a decision means for the message; says whether the transaction goes on.
fn verdict(stage: Stage, d: Decision, rcpt: Option<Bytes>, out: &mut Outcome) -> Next {
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
            Next::Go
        }
        (Stage::Unknown, Some(_)) => Next::Go,
        (_, Some(v)) => {
            out.verdict = Some(v);
            Next::Stop
        }
        (Stage::Eom, None) | (_, None) if d == Decision::Discard => {
            out.verdict = Some(Verdict::Discard);
            Next::Stop
        }
        _ => {
            out.verdict = Some(Verdict::Accept);
            Next::Stop
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
        self.profile.mta == Mta::Sendmail
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
    fn value(&self, stage: Stage, name: &[u8]) -> Option<Bytes> {
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
                let known = self.sendmail()
                    || self.accepted_rcpts > 0
                    || !matches!(stage, Stage::Mail | Stage::Rcpt);
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
        let sendmail = self.sendmail();
        if sendmail && matches!(stage, Stage::Header | Stage::Body | Stage::Unknown) {
            return None;
        }
        // Nothing at all is sent for content stages the milter suppressed.
        if matches!(stage, Stage::Header | Stage::Eoh | Stage::Body) && !agreement.sends(stage) {
            return None;
        }
        let names = match self.profile.names(stage, agreement) {
            Some(n) => n,
            None if sendmail => return None,
            None => Vec::new(),
        };
        if sendmail && names.is_empty() {
            return None;
        }
        let mut pairs: Vec<(Bytes, Bytes)> = names
            .into_iter()
            .filter_map(|n| self.value(stage, &n).map(|v| (n, v)))
            .collect();
        for (s, n, v) in &self.tx.macros {
            if *s == stage && !pairs.iter().any(|(m, _)| m == n) {
                pairs.push((n.clone(), v.clone()));
            }
        }
        Some(pairs)
    }
}
