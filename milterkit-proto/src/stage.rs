//! Stages of an SMTP session as a milter sees them, and the order in which the MTA side sends
//! them. (The order a milter accepts is libmilter's, in [`crate::order`].)

use std::fmt;

use crate::negotiate::ProtocolFlags;

/// A reply-bearing step of a session: one per command that the milter answers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(rename_all = "UPPERCASE")
)]
#[non_exhaustive]
pub enum Stage {
    /// `SMFIC_CONNECT`: a client connected (`xxfi_connect`).
    #[doc(alias = "xxfi_connect")]
    Connect,
    /// `SMFIC_HELO`: HELO or EHLO (`xxfi_helo`).
    #[doc(alias = "xxfi_helo")]
    Helo,
    /// `SMFIC_MAIL`: MAIL FROM, the start of a message (`xxfi_envfrom`).
    #[doc(alias = "xxfi_envfrom")]
    Mail,
    /// `SMFIC_RCPT`: one RCPT TO (`xxfi_envrcpt`).
    #[doc(alias = "xxfi_envrcpt")]
    Rcpt,
    /// `SMFIC_DATA`: the DATA command (`xxfi_data`).
    #[doc(alias = "xxfi_data")]
    Data,
    /// `SMFIC_HEADER`: one header field (`xxfi_header`).
    #[doc(alias = "xxfi_header")]
    Header,
    /// `SMFIC_EOH`: end of headers (`xxfi_eoh`).
    #[doc(alias = "xxfi_eoh")]
    Eoh,
    /// `SMFIC_BODY`: one chunk of the body (`xxfi_body`).
    #[doc(alias = "xxfi_body")]
    Body,
    /// `SMFIC_BODYEOB`: end of message, where modifications are made (`xxfi_eom`).
    #[doc(alias = "xxfi_eom")]
    Eom,
    /// `SMFIC_UNKNOWN`: an SMTP command the MTA does not know (`xxfi_unknown`).
    #[doc(alias = "xxfi_unknown")]
    Unknown,
}

bitflags::bitflags! {
    /// A set of [`Stage`]s: the stages a milter wants to see, or will not answer.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[cfg_attr(feature = "serde", derive(serde::Serialize))]
    pub struct Stages: u16 {
        /// [`Stage::Connect`].
        const CONNECT = 1 << 0;
        /// [`Stage::Helo`].
        const HELO = 1 << 1;
        /// [`Stage::Mail`].
        const MAIL = 1 << 2;
        /// [`Stage::Rcpt`].
        const RCPT = 1 << 3;
        /// [`Stage::Data`].
        const DATA = 1 << 4;
        /// [`Stage::Header`].
        const HEADER = 1 << 5;
        /// [`Stage::Eoh`].
        const EOH = 1 << 6;
        /// [`Stage::Body`].
        const BODY = 1 << 7;
        /// [`Stage::Eom`].
        const EOM = 1 << 8;
        /// [`Stage::Unknown`].
        const UNKNOWN = 1 << 9;
    }
}

impl Stage {
    /// Every stage, in session order (UNKNOWN last).
    pub const ALL: [Stage; 10] = [
        Stage::Connect,
        Stage::Helo,
        Stage::Mail,
        Stage::Rcpt,
        Stage::Data,
        Stage::Header,
        Stage::Eoh,
        Stage::Body,
        Stage::Eom,
        Stage::Unknown,
    ];

    /// The command code (`SMFIC_*`) of this stage.
    pub const fn code(self) -> u8 {
        match self {
            Stage::Connect => b'C',
            Stage::Helo => b'H',
            Stage::Mail => b'M',
            Stage::Rcpt => b'R',
            Stage::Data => b'T',
            Stage::Header => b'L',
            Stage::Eoh => b'N',
            Stage::Body => b'B',
            Stage::Eom => b'E',
            Stage::Unknown => b'U',
        }
    }

    /// The stage of a command code, if it is a reply-bearing stage.
    pub const fn from_code(code: u8) -> Option<Stage> {
        Some(match code {
            b'C' => Stage::Connect,
            b'H' => Stage::Helo,
            b'M' => Stage::Mail,
            b'R' => Stage::Rcpt,
            b'T' => Stage::Data,
            b'L' => Stage::Header,
            b'N' => Stage::Eoh,
            b'B' => Stage::Body,
            b'E' => Stage::Eom,
            b'U' => Stage::Unknown,
            _ => return None,
        })
    }

    /// This stage as a one-element [`Stages`].
    pub const fn as_set(self) -> Stages {
        match self {
            Stage::Connect => Stages::CONNECT,
            Stage::Helo => Stages::HELO,
            Stage::Mail => Stages::MAIL,
            Stage::Rcpt => Stages::RCPT,
            Stage::Data => Stages::DATA,
            Stage::Header => Stages::HEADER,
            Stage::Eoh => Stages::EOH,
            Stage::Body => Stages::BODY,
            Stage::Eom => Stages::EOM,
            Stage::Unknown => Stages::UNKNOWN,
        }
    }

    /// The protocol bit that asks the MTA not to send this stage (`SMFIP_NO*`); none for EOM.
    pub const fn suppress_flag(self) -> ProtocolFlags {
        match self {
            Stage::Connect => ProtocolFlags::NOCONNECT,
            Stage::Helo => ProtocolFlags::NOHELO,
            Stage::Mail => ProtocolFlags::NOMAIL,
            Stage::Rcpt => ProtocolFlags::NORCPT,
            Stage::Data => ProtocolFlags::NODATA,
            Stage::Header => ProtocolFlags::NOHDRS,
            Stage::Eoh => ProtocolFlags::NOEOH,
            Stage::Body => ProtocolFlags::NOBODY,
            Stage::Eom => ProtocolFlags::empty(),
            Stage::Unknown => ProtocolFlags::NOUNKNOWN,
        }
    }

    /// The protocol bit by which the milter declares it will not answer (`SMFIP_NR_*`); none for EOM.
    pub const fn no_reply_flag(self) -> ProtocolFlags {
        match self {
            Stage::Connect => ProtocolFlags::NR_CONN,
            Stage::Helo => ProtocolFlags::NR_HELO,
            Stage::Mail => ProtocolFlags::NR_MAIL,
            Stage::Rcpt => ProtocolFlags::NR_RCPT,
            Stage::Data => ProtocolFlags::NR_DATA,
            Stage::Header => ProtocolFlags::NR_HDR,
            Stage::Eoh => ProtocolFlags::NR_EOH,
            Stage::Body => ProtocolFlags::NR_BODY,
            Stage::Eom => ProtocolFlags::empty(),
            Stage::Unknown => ProtocolFlags::NR_UNKN,
        }
    }

    /// The lowest protocol version in which an MTA sends this stage (DATA needs 4, UNKNOWN 3).
    pub const fn min_version(self) -> u32 {
        match self {
            Stage::Data => 4,
            Stage::Unknown => 3,
            _ => 2,
        }
    }

    /// True for the stages that belong to a message (MAIL up to EOM).
    pub const fn in_message(self) -> bool {
        matches!(
            self,
            Stage::Mail
                | Stage::Rcpt
                | Stage::Data
                | Stage::Header
                | Stage::Eoh
                | Stage::Body
                | Stage::Eom
        )
    }

    /// The spec name of the stage's command.
    pub const fn name(self) -> &'static str {
        match self {
            Stage::Connect => "CONNECT",
            Stage::Helo => "HELO",
            Stage::Mail => "MAIL",
            Stage::Rcpt => "RCPT",
            Stage::Data => "DATA",
            Stage::Header => "HEADER",
            Stage::Eoh => "EOH",
            Stage::Body => "BODY",
            Stage::Eom => "EOM",
            Stage::Unknown => "UNKNOWN",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Stages {
    /// The stages in this set, in session order.
    pub fn iter_stages(self) -> impl Iterator<Item = Stage> {
        Stage::ALL
            .into_iter()
            .filter(move |s| self.contains(s.as_set()))
    }

    /// True if `stage` is in the set.
    pub const fn has(self, stage: Stage) -> bool {
        self.contains(stage.as_set())
    }
}

impl From<Stage> for Stages {
    fn from(s: Stage) -> Stages {
        s.as_set()
    }
}

/// Where the MTA side stands: what a well-behaved MTA sends next. The milter side accepts more
/// (libmilter's table, [`crate::order`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Phase {
    /// Before OPTNEG.
    Init,
    /// Negotiated; no CONNECT yet (or a new one expected after QUIT_NC).
    Negotiated,
    /// Connection level: between messages.
    Connected,
    /// Inside a message; the last message command was this stage.
    Message(Stage),
    /// QUIT received or sent, or a protocol error: nothing more.
    Closed,
}

/// What to do with a command that arrives in a given phase.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Order {
    /// Allowed as it is.
    Ok,
    /// Allowed after the open message is aborted (a new MAIL or HELO inside a message, as
    /// libmilter's fallback and go-milter do).
    AbortFirst,
    /// Not allowed here.
    Refuse(&'static str),
}

impl Phase {
    /// Decides whether `stage` may come now, given the stages the MTA sends under the agreement.
    /// When MAIL is not sent, the first message command opens the message. Inside a message the
    /// stages that always come when sent (RCPT, DATA, EOH) may not be jumped over: BODY before
    /// DATA, or DATA before any RCPT, is out of order.
    pub(crate) fn admit(self, stage: Stage, sent: Stages) -> Order {
        use Stage::*;
        let mail_sent = sent.has(Mail);
        let skipped = |last: Stage| {
            [Rcpt, Data, Eoh]
                .into_iter()
                .any(|m| last < m && m < stage && sent.has(m))
        };
        match self {
            Phase::Init => Order::Refuse("before negotiation"),
            Phase::Closed => Order::Refuse("after the session ended"),
            Phase::Negotiated | Phase::Connected => match stage {
                Connect if self == Phase::Connected => Order::Refuse("after CONNECT"),
                Connect | Helo | Mail | Unknown => Order::Ok,
                _ if mail_sent => Order::Refuse("outside a message"),
                _ if skipped(Mail) => Order::Refuse("before a stage the MTA always sends"),
                _ => Order::Ok,
            },
            Phase::Message(last) => match stage {
                Connect => Order::Refuse("inside a message"),
                Helo | Mail => Order::AbortFirst,
                Unknown if matches!(last, Mail | Rcpt) => Order::Ok,
                Unknown => Order::Refuse("during message content"),
                _ if skipped(last) => Order::Refuse("before a stage the MTA always sends"),
                Eom => Order::Ok,
                Rcpt | Header | Body if last == stage => Order::Ok,
                _ if stage > last => Order::Ok,
                _ => Order::Refuse("after a later stage of the message"),
            },
        }
    }

    /// The phase after `stage` was admitted (before any decision).
    pub(crate) fn after(self, stage: Stage) -> Phase {
        match stage {
            Stage::Connect | Stage::Helo => Phase::Connected,
            Stage::Unknown => self,
            s => Phase::Message(s),
        }
    }

    /// The phase after the milter decided `decision_ends` at `stage`: a message-level decision
    /// closes the message.
    pub(crate) fn after_decision(self, stage: Stage, ends_message: bool) -> Phase {
        match self {
            Phase::Message(_) if ends_message || stage == Stage::Eom => Phase::Connected,
            other => other,
        }
    }

    pub(crate) fn in_message(self) -> bool {
        matches!(self, Phase::Message(_))
    }
}
