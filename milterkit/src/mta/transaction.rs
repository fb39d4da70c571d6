//! One message as an MTA hands it to a milter ([`Transaction`]) and what came back
//! ([`Outcome`]).

use std::net::IpAddr;

use bytes::Bytes;
use milterkit_proto::command::Envelope;
use milterkit_proto::message::Delivery;
use milterkit_proto::{Agreement, Decision, Modification, MtaEvent, Reply, Sent, Stage};

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
    pub macros: Vec<(Stage, Bytes, Bytes)>,
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

    /// Adds a macro value for a stage (the command it is sent before).
    pub fn with_macro(
        mut self,
        stage: Stage,
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
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Step {
    /// The stage.
    pub stage: Stage,
    /// What the command carried, for people: the address of MAIL and RCPT, the HELO name, the
    /// header name, the unknown command, the size of a body chunk.
    #[cfg_attr(
        feature = "serde",
        serde(serialize_with = "milterkit_proto::serde_text::option")
    )]
    pub argument: Option<Bytes>,
    /// Whether it was sent, skipped, or sent without a reply.
    pub sent: Sent,
    /// The milter's decision, for a command that got one.
    pub decision: Option<Decision>,
}

/// What the MTA would do with the message, after every decision.
///
/// With the `serde` feature: `{"kind": "accept"}`, `{"kind": "discard"}`, or `{"kind": "reject"}`
/// and `{"kind": "tempfail"}` with `"reply"`: the milter's [`Reply`] or null.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "kind", content = "reply", rename_all = "snake_case")
)]
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
///
/// With the `serde` feature it serialises field by field; `refused` as a list of
/// `{"rcpt": ..., "decision": ...}`, byte strings as text when UTF-8, else as bytes
/// ([`milterkit_proto::serde_text`]).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Outcome {
    /// Every command of the transaction, in order, with its answer.
    pub steps: Vec<Step>,
    /// Every modification, in the order received.
    pub modifications: Vec<Modification>,
    /// `SMFIR_PROGRESS` packets received.
    pub progress: u32,
    /// Recipients the milter refused (reject, tempfail or reply at RCPT).
    #[cfg_attr(feature = "serde", serde(serialize_with = "refused"))]
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

/// `Outcome::refused` as `[{"rcpt": ..., "decision": ...}]`.
#[cfg(feature = "serde")]
fn refused<S: serde::Serializer>(v: &[(Bytes, Decision)], s: S) -> Result<S::Ok, S::Error> {
    #[derive(serde::Serialize)]
    struct Refused<'a> {
        rcpt: milterkit_proto::serde_text::Text<'a>,
        decision: &'a Decision,
    }
    s.collect_seq(v.iter().map(|(rcpt, decision)| Refused {
        rcpt: milterkit_proto::serde_text::Text(rcpt),
        decision,
    }))
}

impl Outcome {
    /// The decision at the first step of `stage` that got one.
    pub fn decision(&self, stage: Stage) -> Option<&Decision> {
        self.steps
            .iter()
            .find(|s| s.stage == stage && s.decision.is_some())
            .and_then(|s| s.decision.as_ref())
    }

    pub(super) fn step(
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
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
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

#[cfg(all(test, feature = "serde"))]
mod serde_tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use milterkit_proto::Actions;
    use serde_json::json;

    #[test]
    fn an_outcome_serialises_as_text_where_utf8_and_bytes_elsewhere() {
        let reply = Reply::new(550, "5.7.1", "no").unwrap();
        let out = Outcome {
            steps: vec![
                Step {
                    stage: Stage::Rcpt,
                    argument: Some(Bytes::from_static(b"<r@example.net>")),
                    sent: Sent::AwaitingReply(Stage::Rcpt),
                    decision: Some(Decision::Reply(reply.clone())),
                },
                Step {
                    stage: Stage::Body,
                    argument: None,
                    sent: Sent::Skipped,
                    decision: None,
                },
            ],
            modifications: vec![
                Modification::ChangeFrom {
                    sender: Bytes::from_static(b"<b@example.org>"),
                    args: Some(Bytes::from_static(b"RET=HDRS")),
                },
                Modification::AddHeader {
                    name: Bytes::from_static(b"X-Bin"),
                    value: Bytes::from_static(b"\xff\x00"),
                },
            ],
            refused: vec![(Bytes::from_static(b"<r@example.net>"), Decision::Tempfail)],
            verdict: Some(Verdict::Reject(Some(reply))),
            agreement: Some(Agreement {
                version: 6,
                actions: Actions::ADD_HEADER | Actions::QUARANTINE,
                protocol: milterkit_proto::ProtocolFlags::NOCONNECT,
                macros: Default::default(),
            }),
            ..Outcome::default()
        };
        let v = serde_json::to_value(&out).unwrap();
        assert_eq!(
            v["steps"],
            json!([
                {"stage": "RCPT", "argument": "<r@example.net>",
                 "sent": {"kind": "awaiting_reply", "stage": "RCPT"},
                 "decision": {"kind": "reply", "code": 550, "text": "550 5.7.1 no"}},
                {"stage": "BODY", "argument": null, "sent": {"kind": "skipped"}, "decision": null},
            ])
        );
        assert_eq!(
            v["modifications"],
            json!([
                {"kind": "change_from", "sender": "<b@example.org>", "args": "RET=HDRS"},
                {"kind": "add_header", "name": "X-Bin", "value": [255, 0]},
            ])
        );
        assert_eq!(
            v["refused"],
            json!([{"rcpt": "<r@example.net>", "decision": {"kind": "tempfail"}}])
        );
        assert_eq!(
            v["verdict"],
            json!({"kind": "reject", "reply": {"code": 550, "text": "550 5.7.1 no"}})
        );
        assert_eq!(
            v["agreement"],
            json!({"version": 6, "actions": "ADD_HEADER | QUARANTINE", "protocol": "NOCONNECT", "macros": []})
        );
        assert_eq!(v["delivery"], json!(null));
        assert_eq!(
            serde_json::to_value(Verdict::Tempfail(None)).unwrap(),
            json!({"kind": "tempfail", "reply": null})
        );
        assert_eq!(
            serde_json::to_value(Verdict::Accept).unwrap(),
            json!({"kind": "accept"})
        );
    }
}
