//! Everything the milter sends (`SMFIR_*`): the OPTNEG reply, decisions, modifications, progress.

use bytes::{Bytes, BytesMut};

use crate::error::{MisuseError, ProtocolError};
use crate::frame::{Frame, FrameWriter, Reader};
use crate::macros::{MacroLists, MacroStage};
use crate::negotiate::{Actions, Agreement, ProtocolFlags};
use crate::reply::Reply;
use crate::stage::Stage;

/// `SMFIR_*` codes.
pub mod code {
    /// `SMFIR_ADDRCPT`
    pub const ADDRCPT: u8 = b'+';
    /// `SMFIR_DELRCPT`
    pub const DELRCPT: u8 = b'-';
    /// `SMFIR_ADDRCPT_PAR`
    pub const ADDRCPT_PAR: u8 = b'2';
    /// `SMFIR_SHUTDOWN`
    pub const SHUTDOWN: u8 = b'4';
    /// `SMFIR_ACCEPT`
    pub const ACCEPT: u8 = b'a';
    /// `SMFIR_REPLBODY`
    pub const REPLBODY: u8 = b'b';
    /// `SMFIR_CONTINUE`
    pub const CONTINUE: u8 = b'c';
    /// `SMFIR_DISCARD`
    pub const DISCARD: u8 = b'd';
    /// `SMFIR_CHGFROM`
    pub const CHGFROM: u8 = b'e';
    /// `SMFIR_CONN_FAIL`
    pub const CONN_FAIL: u8 = b'f';
    /// `SMFIR_ADDHEADER`
    pub const ADDHEADER: u8 = b'h';
    /// `SMFIR_INSHEADER`
    pub const INSHEADER: u8 = b'i';
    /// `SMFIR_SETSYMLIST` (never sent as a packet)
    pub const SETSYMLIST: u8 = b'l';
    /// `SMFIR_CHGHEADER`
    pub const CHGHEADER: u8 = b'm';
    /// `SMFIR_PROGRESS`
    pub const PROGRESS: u8 = b'p';
    /// `SMFIR_QUARANTINE`
    pub const QUARANTINE: u8 = b'q';
    /// `SMFIR_REJECT`
    pub const REJECT: u8 = b'r';
    /// `SMFIR_SKIP`
    pub const SKIP: u8 = b's';
    /// `SMFIR_TEMPFAIL`
    pub const TEMPFAIL: u8 = b't';
    /// `SMFIR_REPLYCODE`
    pub const REPLYCODE: u8 = b'y';
    /// The OPTNEG reply (same code as `SMFIC_OPTNEG`)
    pub const OPTNEG: u8 = b'O';
}

/// A packet from the milter to the MTA.
///
/// ```
/// # use milterkit_proto::{Decision, Response};
/// let mut wire = bytes::BytesMut::new();
/// Response::Decision(Decision::Continue).encode(&mut wire);
/// assert_eq!(&wire[..], b"\0\0\0\x01c");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Response {
    /// The OPTNEG reply: version, actions, protocol and macro lists.
    Optneg(Agreement),
    /// A decision: ends the MTA's wait for a reply.
    Decision(Decision),
    /// A modification: only before the decision at end of message.
    Modification(Modification),
    /// `SMFIR_PROGRESS`: still working; restarts the MTA's reply timer.
    #[doc(alias = "SMFIR_PROGRESS")]
    #[doc(alias = "smfi_progress")]
    Progress,
    /// `SMFIR_CONN_FAIL`: defined in `mfdef.h`, accepted by no MTA. Decoded so it can be reported;
    /// never send it.
    #[doc(alias = "SMFIR_CONN_FAIL")]
    ConnFail,
}

/// The milter's answer to a reply-bearing command.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "kind", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Decision {
    /// `SMFIR_CONTINUE` (`SMFIS_CONTINUE`): no objection; at end of message, accept.
    #[doc(alias = "SMFIR_CONTINUE")]
    #[doc(alias = "SMFIS_CONTINUE")]
    Continue,
    /// `SMFIR_ACCEPT` (`SMFIS_ACCEPT`): accept the message (the session at CONNECT/HELO) and stop
    /// filtering it.
    #[doc(alias = "SMFIR_ACCEPT")]
    #[doc(alias = "SMFIS_ACCEPT")]
    Accept,
    /// `SMFIR_REJECT` (`SMFIS_REJECT`): reject with the MTA's own 5xx text; at RCPT only that
    /// recipient.
    #[doc(alias = "SMFIR_REJECT")]
    #[doc(alias = "SMFIS_REJECT")]
    Reject,
    /// `SMFIR_TEMPFAIL` (`SMFIS_TEMPFAIL`): like reject, with a 4xx.
    #[doc(alias = "SMFIR_TEMPFAIL")]
    #[doc(alias = "SMFIS_TEMPFAIL")]
    Tempfail,
    /// `SMFIR_DISCARD` (`SMFIS_DISCARD`): accept the message and throw it away (at RCPT, the whole
    /// message). Not at CONNECT or HELO.
    #[doc(alias = "SMFIR_DISCARD")]
    #[doc(alias = "SMFIS_DISCARD")]
    Discard,
    /// `SMFIR_SKIP` (`SMFIS_SKIP`): send no more body chunks; only in reply to BODY, and only when
    /// `SMFIP_SKIP` was agreed.
    #[doc(alias = "SMFIR_SKIP")]
    #[doc(alias = "SMFIS_SKIP")]
    Skip,
    /// `SMFIR_REPLYCODE`: reject or tempfail with this SMTP reply (its class decides which).
    #[doc(alias = "SMFIR_REPLYCODE")]
    Reply(Reply),
    /// `SMFIR_SHUTDOWN`: Postfix only (421 and disconnect); Sendmail treats it as an error.
    #[doc(alias = "SMFIR_SHUTDOWN")]
    Shutdown,
}

impl Decision {
    /// The response code.
    pub fn code(&self) -> u8 {
        match self {
            Decision::Continue => code::CONTINUE,
            Decision::Accept => code::ACCEPT,
            Decision::Reject => code::REJECT,
            Decision::Tempfail => code::TEMPFAIL,
            Decision::Discard => code::DISCARD,
            Decision::Skip => code::SKIP,
            Decision::Reply(_) => code::REPLYCODE,
            Decision::Shutdown => code::SHUTDOWN,
        }
    }

    /// True if this decision may answer `stage` under `agreement`: SKIP only at BODY and only when
    /// `SMFIP_SKIP` was agreed; DISCARD anywhere but CONNECT and HELO (Postfix logs "DISCARD action
    /// is not allowed for connect or helo" and applies its default action; at UNKNOWN both Postfix
    /// and Sendmail discard the open or the next message, as `interop/tests/discard_at_unknown.rs`
    /// shows); everything else everywhere. The one rule of both sessions: the milter side refuses
    /// to send what this refuses, the MTA side refuses to receive it.
    ///
    /// ```
    /// # use milterkit_proto::{negotiate::negotiate, Decision, Offer, Request, Stage};
    /// let agreement = negotiate(&Offer::default(), &Request::default()).unwrap();
    /// assert!(Decision::Discard.allowed_at(Stage::Unknown, &agreement));
    /// assert!(!Decision::Discard.allowed_at(Stage::Helo, &agreement));
    /// assert!(!Decision::Skip.allowed_at(Stage::Eom, &agreement));
    /// ```
    pub fn allowed_at(&self, stage: Stage, agreement: &Agreement) -> bool {
        match self {
            Decision::Skip => stage == Stage::Body && agreement.skip(),
            Decision::Discard => !matches!(stage, Stage::Connect | Stage::Helo),
            _ => true,
        }
    }

    /// A short lower-case name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Decision::Continue => "continue",
            Decision::Accept => "accept",
            Decision::Reject => "reject",
            Decision::Tempfail => "tempfail",
            Decision::Discard => "discard",
            Decision::Skip => "skip",
            Decision::Reply(_) => "reply",
            Decision::Shutdown => "shutdown",
        }
    }
}

/// Where the replacement body stands at end of message. Postfix takes REPLBODY packets only as
/// one contiguous run, so a body chunk after another modification that followed body chunks is
/// refused: by the milter side before sending it, by the MTA side on receiving it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) enum BodyRun {
    /// No body chunk yet.
    #[default]
    NotStarted,
    /// Body chunks are being sent.
    Open,
    /// Body chunks were sent, then another modification.
    Ended,
}

impl BodyRun {
    /// Whether `m` may come now.
    pub(crate) fn admits(self, m: &Modification) -> bool {
        !(matches!(m, Modification::ReplaceBody { .. }) && self == BodyRun::Ended)
    }

    /// The run after `m`.
    pub(crate) fn after(self, m: &Modification) -> BodyRun {
        match (m, self) {
            (Modification::ReplaceBody { .. }, _) => BodyRun::Open,
            (_, BodyRun::Open) => BodyRun::Ended,
            (_, run) => run,
        }
    }
}

/// A change to the message, sent at end of message before the decision.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(
    feature = "serde",
    derive(serde::Serialize),
    serde(tag = "kind", rename_all = "snake_case")
)]
#[non_exhaustive]
pub enum Modification {
    /// `SMFIR_ADDHEADER`: append a header (`smfi_addheader`).
    #[doc(alias = "SMFIR_ADDHEADER")]
    #[doc(alias = "smfi_addheader")]
    AddHeader {
        /// Field name.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        name: Bytes,
        /// Value; fold with `"\n\t"`, never CRLF.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        value: Bytes,
    },
    /// `SMFIR_INSHEADER`: insert a header at `index` among all headers, 0 = top
    /// (`smfi_insheader`).
    #[doc(alias = "SMFIR_INSHEADER")]
    #[doc(alias = "smfi_insheader")]
    InsertHeader {
        /// Position among all headers the MTA stores.
        index: u32,
        /// Field name.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        name: Bytes,
        /// Value.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        value: Bytes,
    },
    /// `SMFIR_CHGHEADER`: change the `index`-th (1-based) header called `name`; an empty value
    /// deletes it (`smfi_chgheader`).
    #[doc(alias = "SMFIR_CHGHEADER")]
    #[doc(alias = "smfi_chgheader")]
    ChangeHeader {
        /// 1-based among headers of that name (0 acts as 1).
        index: u32,
        /// Field name.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        name: Bytes,
        /// New value; empty to delete.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        value: Bytes,
    },
    /// `SMFIR_CHGFROM`: change the envelope sender (`smfi_chgfrom`).
    #[doc(alias = "SMFIR_CHGFROM")]
    #[doc(alias = "smfi_chgfrom")]
    ChangeFrom {
        /// The new sender.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        sender: Bytes,
        /// ESMTP parameters in one space-separated string.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::option"))]
        args: Option<Bytes>,
    },
    /// `SMFIR_ADDRCPT`: add a recipient (`smfi_addrcpt`).
    #[doc(alias = "SMFIR_ADDRCPT")]
    #[doc(alias = "smfi_addrcpt")]
    AddRcpt {
        /// The recipient.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        rcpt: Bytes,
    },
    /// `SMFIR_ADDRCPT_PAR`: add a recipient with ESMTP parameters (`smfi_addrcpt_par`).
    #[doc(alias = "SMFIR_ADDRCPT_PAR")]
    #[doc(alias = "smfi_addrcpt_par")]
    AddRcptPar {
        /// The recipient.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        rcpt: Bytes,
        /// ESMTP parameters in one space-separated string.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::option"))]
        args: Option<Bytes>,
    },
    /// `SMFIR_DELRCPT`: remove a recipient, named as in its RCPT (`smfi_delrcpt`).
    #[doc(alias = "SMFIR_DELRCPT")]
    #[doc(alias = "smfi_delrcpt")]
    DeleteRcpt {
        /// The recipient as it arrived.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        rcpt: Bytes,
    },
    /// `SMFIR_REPLBODY`: one chunk of the new body; the first truncates, the rest append
    /// (`smfi_replacebody`).
    #[doc(alias = "SMFIR_REPLBODY")]
    #[doc(alias = "smfi_replacebody")]
    ReplaceBody {
        /// Body bytes, CRLF line ends.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        chunk: Bytes,
    },
    /// `SMFIR_QUARANTINE`: quarantine (Sendmail) or hold (Postfix) the message
    /// (`smfi_quarantine`).
    #[doc(alias = "SMFIR_QUARANTINE")]
    #[doc(alias = "smfi_quarantine")]
    Quarantine {
        /// Why; non-empty.
        #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
        reason: Bytes,
    },
}

impl Modification {
    /// The response code.
    pub fn code(&self) -> u8 {
        match self {
            Modification::AddHeader { .. } => code::ADDHEADER,
            Modification::InsertHeader { .. } => code::INSHEADER,
            Modification::ChangeHeader { .. } => code::CHGHEADER,
            Modification::ChangeFrom { .. } => code::CHGFROM,
            Modification::AddRcpt { .. } => code::ADDRCPT,
            Modification::AddRcptPar { .. } => code::ADDRCPT_PAR,
            Modification::DeleteRcpt { .. } => code::DELRCPT,
            Modification::ReplaceBody { .. } => code::REPLBODY,
            Modification::Quarantine { .. } => code::QUARANTINE,
        }
    }

    /// The action bit that must have been agreed for this modification.
    pub fn action(&self) -> Actions {
        match self {
            Modification::AddHeader { .. } | Modification::InsertHeader { .. } => {
                Actions::ADD_HEADER
            }
            Modification::ChangeHeader { .. } => Actions::CHANGE_HEADER,
            Modification::ChangeFrom { .. } => Actions::CHANGE_FROM,
            Modification::AddRcpt { .. } => Actions::ADD_RCPT,
            Modification::AddRcptPar { .. } => Actions::ADD_RCPT_PAR,
            Modification::DeleteRcpt { .. } => Actions::DELETE_RCPT,
            Modification::ReplaceBody { .. } => Actions::CHANGE_BODY,
            Modification::Quarantine { .. } => Actions::QUARANTINE,
        }
    }

    /// A short lower-case name for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Modification::AddHeader { .. } => "add header",
            Modification::InsertHeader { .. } => "insert header",
            Modification::ChangeHeader { .. } => "change header",
            Modification::ChangeFrom { .. } => "change from",
            Modification::AddRcpt { .. } => "add recipient",
            Modification::AddRcptPar { .. } => "add recipient with parameters",
            Modification::DeleteRcpt { .. } => "delete recipient",
            Modification::ReplaceBody { .. } => "replace body",
            Modification::Quarantine { .. } => "quarantine",
        }
    }

    /// The length of this modification's payload on the wire.
    pub fn payload_len(&self) -> usize {
        let strings: usize = self.strings().iter().map(|s| s.len() + 1).sum();
        match self {
            Modification::InsertHeader { .. } | Modification::ChangeHeader { .. } => 4 + strings,
            Modification::ReplaceBody { chunk } => chunk.len(),
            _ => strings,
        }
    }

    /// The strings that travel NUL-terminated, for validation.
    pub(crate) fn strings(&self) -> Vec<&[u8]> {
        match self {
            Modification::AddHeader { name, value }
            | Modification::InsertHeader { name, value, .. }
            | Modification::ChangeHeader { name, value, .. } => vec![name, value],
            Modification::ChangeFrom { sender: a, args }
            | Modification::AddRcptPar { rcpt: a, args } => {
                let mut v: Vec<&[u8]> = vec![a];
                v.extend(args.as_deref());
                v
            }
            Modification::AddRcpt { rcpt } | Modification::DeleteRcpt { rcpt } => vec![rcpt],
            Modification::Quarantine { reason } => vec![reason],
            Modification::ReplaceBody { .. } => vec![],
        }
    }
}

impl Response {
    /// The response code.
    pub fn code(&self) -> u8 {
        match self {
            Response::Optneg(_) => code::OPTNEG,
            Response::Decision(d) => d.code(),
            Response::Modification(m) => m.code(),
            Response::Progress => code::PROGRESS,
            Response::ConnFail => code::CONN_FAIL,
        }
    }

    /// Parses one frame sent by a milter. Unknown codes, malformed payloads, data after a bare
    /// decision (Postfix refuses it) and invalid reply text are errors.
    pub fn decode(frame: Frame) -> Result<Response, ProtocolError> {
        let code = frame.code;
        let mut r = Reader::new(frame);
        let bare = |d: Decision| Response::Decision(d);
        let resp = match code {
            code::OPTNEG => {
                let version = r.u32("OPTNEG reply shorter than 12 bytes")?;
                let actions =
                    Actions::from_bits_retain(r.u32("OPTNEG reply shorter than 12 bytes")?);
                let protocol =
                    ProtocolFlags::from_bits_retain(r.u32("OPTNEG reply shorter than 12 bytes")?);
                let mut macros = MacroLists::default();
                while !r.is_empty() {
                    let stage = MacroStage(r.u32("truncated macro list")?);
                    macros.push(stage, r.str("macro list without NUL")?);
                }
                Response::Optneg(Agreement {
                    version,
                    actions,
                    protocol,
                    macros,
                })
            }
            code::CONTINUE => bare(Decision::Continue),
            code::ACCEPT => bare(Decision::Accept),
            code::REJECT => bare(Decision::Reject),
            code::TEMPFAIL => bare(Decision::Tempfail),
            code::DISCARD => bare(Decision::Discard),
            code::SKIP => bare(Decision::Skip),
            code::SHUTDOWN => bare(Decision::Shutdown),
            code::REPLYCODE => {
                let text = r.str("reply without NUL")?;
                let reply = Reply::parse(text).map_err(|_| ProtocolError::Malformed {
                    code,
                    reason: "reply text is not a valid 4xx/5xx reply",
                })?;
                bare(Decision::Reply(reply))
            }
            code::PROGRESS => Response::Progress,
            code::CONN_FAIL => Response::ConnFail,
            code::ADDHEADER => Response::Modification(Modification::AddHeader {
                name: r.str("header name without NUL")?,
                value: r.str("header value without NUL")?,
            }),
            code::INSHEADER | code::CHGHEADER => {
                let index = r.u32("missing header index")?;
                let name = r.str("header name without NUL")?;
                let value = r.str("header value without NUL")?;
                Response::Modification(if code == code::INSHEADER {
                    Modification::InsertHeader { index, name, value }
                } else {
                    Modification::ChangeHeader { index, name, value }
                })
            }
            code::CHGFROM | code::ADDRCPT_PAR => {
                let a = r.str("address without NUL")?;
                let args = if r.is_empty() {
                    None
                } else {
                    Some(r.str("arguments without NUL")?)
                };
                Response::Modification(if code == code::CHGFROM {
                    Modification::ChangeFrom { sender: a, args }
                } else {
                    Modification::AddRcptPar { rcpt: a, args }
                })
            }
            code::ADDRCPT => Response::Modification(Modification::AddRcpt {
                rcpt: r.str("recipient without NUL")?,
            }),
            code::DELRCPT => Response::Modification(Modification::DeleteRcpt {
                rcpt: r.str("recipient without NUL")?,
            }),
            code::REPLBODY => Response::Modification(Modification::ReplaceBody { chunk: r.rest() }),
            code::QUARANTINE => Response::Modification(Modification::Quarantine {
                reason: r.str("reason without NUL")?,
            }),
            _ => return Err(ProtocolError::UnknownCode { code }),
        };
        r.end()?;
        Ok(resp)
    }

    /// Appends this response in wire form to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        // Most answers are a code alone (a dozen CONTINUEs per message): their five bytes in one
        // append, rather than a length put, a code put and the length patched by the writer.
        if let Response::Decision(d) = self {
            if !matches!(d, Decision::Reply(_)) {
                dst.extend_from_slice(&[0, 0, 0, 1, d.code()]);
                return;
            }
        }
        let mut w = FrameWriter::start(dst, self.code());
        match self {
            Response::Optneg(a) => {
                w.put_u32(a.version);
                w.put_u32(a.actions.bits());
                w.put_u32(a.protocol.bits());
                for (stage, names) in a.macros.iter() {
                    w.put_u32(stage.0);
                    w.put_str(names);
                }
            }
            Response::Decision(Decision::Reply(reply)) => w.put_str(reply.as_bytes()),
            Response::Decision(_) | Response::Progress | Response::ConnFail => {}
            Response::Modification(m) => match m {
                Modification::AddHeader { name, value } => {
                    w.put_str(name);
                    w.put_str(value);
                }
                Modification::InsertHeader { index, name, value }
                | Modification::ChangeHeader { index, name, value } => {
                    w.put_u32(*index);
                    w.put_str(name);
                    w.put_str(value);
                }
                Modification::ChangeFrom { sender: a, args }
                | Modification::AddRcptPar { rcpt: a, args } => {
                    w.put_str(a);
                    if let Some(args) = args {
                        w.put_str(args);
                    }
                }
                Modification::AddRcpt { rcpt } | Modification::DeleteRcpt { rcpt } => {
                    w.put_str(rcpt)
                }
                Modification::ReplaceBody { chunk } => w.put(chunk),
                Modification::Quarantine { reason } => w.put_str(reason),
            },
        }
        w.finish();
    }
}

impl From<Decision> for Response {
    fn from(d: Decision) -> Self {
        Response::Decision(d)
    }
}

impl From<Modification> for Response {
    fn from(m: Modification) -> Self {
        Response::Modification(m)
    }
}

impl Modification {
    /// Checks what the MTAs refuse or misread: NUL inside a string, an empty header name, empty
    /// sender or recipient, an empty quarantine reason.
    pub fn validate(&self) -> Result<(), MisuseError> {
        let what = self.name();
        if self.strings().iter().any(|s| crate::frame::has_nul(s)) {
            return Err(MisuseError::Invalid {
                what,
                reason: "contains a NUL byte",
            });
        }
        let empty = match self {
            Modification::AddHeader { name, .. }
            | Modification::InsertHeader { name, .. }
            | Modification::ChangeHeader { name, .. } => name.is_empty(),
            Modification::ChangeFrom { sender: a, .. }
            | Modification::AddRcpt { rcpt: a }
            | Modification::AddRcptPar { rcpt: a, .. }
            | Modification::DeleteRcpt { rcpt: a }
            | Modification::Quarantine { reason: a } => a.is_empty(),
            Modification::ReplaceBody { .. } => false,
        };
        if empty {
            return Err(MisuseError::Invalid {
                what,
                reason: "empty name, address or reason",
            });
        }
        Ok(())
    }
}
