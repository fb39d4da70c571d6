//! Option negotiation (`SMFIC_OPTNEG`): what the MTA offers, what the milter requests, and what
//! both then agree on.

use crate::error::Incompatible;
use crate::macros::MacroLists;
use crate::stage::{Stage, Stages};

/// The protocol version this crate speaks (`SMFI_PROT_VERSION`).
pub const PROTOCOL_VERSION: u32 = 6;

/// The lowest MTA version libmilter (and this crate) accepts.
pub const MIN_VERSION: u32 = 2;

bitflags::bitflags! {
    /// `SMFIF_*`: what the milter may do at end of message. Unknown bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[cfg_attr(feature = "serde", derive(serde::Serialize))]
    pub struct Actions: u32 {
        /// `SMFIF_ADDHDRS`: add and insert headers.
        #[doc(alias = "SMFIF_ADDHDRS")]
        const ADD_HEADER = 0x0000_0001;
        /// `SMFIF_CHGBODY` (`SMFIF_MODBODY`): replace the body.
        #[doc(alias = "SMFIF_CHGBODY")]
        const CHANGE_BODY = 0x0000_0002;
        /// `SMFIF_ADDRCPT`: add recipients.
        #[doc(alias = "SMFIF_ADDRCPT")]
        const ADD_RCPT = 0x0000_0004;
        /// `SMFIF_DELRCPT`: delete recipients.
        #[doc(alias = "SMFIF_DELRCPT")]
        const DELETE_RCPT = 0x0000_0008;
        /// `SMFIF_CHGHDRS`: change and delete headers.
        #[doc(alias = "SMFIF_CHGHDRS")]
        const CHANGE_HEADER = 0x0000_0010;
        /// `SMFIF_QUARANTINE`: quarantine the message.
        #[doc(alias = "SMFIF_QUARANTINE")]
        const QUARANTINE = 0x0000_0020;
        /// `SMFIF_CHGFROM`: change the envelope sender.
        #[doc(alias = "SMFIF_CHGFROM")]
        const CHANGE_FROM = 0x0000_0040;
        /// `SMFIF_ADDRCPT_PAR`: add recipients with ESMTP arguments.
        #[doc(alias = "SMFIF_ADDRCPT_PAR")]
        const ADD_RCPT_PAR = 0x0000_0080;
        /// `SMFIF_SETSYMLIST`: send macro lists in the OPTNEG reply.
        #[doc(alias = "SMFIF_SETSYMLIST")]
        const SET_SYMLIST = 0x0000_0100;
        /// Bits this crate does not know, kept as they came.
        const _ = !0;
    }
}

impl Actions {
    /// `SMFI_V1_ACTS`: what a version-1 MTA allows when it offers nothing.
    pub const V1: Actions = Actions::from_bits_retain(0x0F);
    /// `SMFI_CURR_ACTS`: every action of protocol version 6; what Postfix and Sendmail offer.
    pub const CURRENT: Actions = Actions::from_bits_retain(0x1FF);
}

bitflags::bitflags! {
    /// `SMFIP_*`: the protocol word: stages to suppress, stages not answered, and capabilities.
    /// Unknown bits are kept.
    #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
    #[cfg_attr(feature = "serde", derive(serde::Serialize))]
    pub struct ProtocolFlags: u32 {
        /// `SMFIP_NOCONNECT`: do not send CONNECT.
        const NOCONNECT = 0x0000_0001;
        /// `SMFIP_NOHELO`: do not send HELO.
        const NOHELO = 0x0000_0002;
        /// `SMFIP_NOMAIL`: do not send MAIL.
        const NOMAIL = 0x0000_0004;
        /// `SMFIP_NORCPT`: do not send RCPT.
        const NORCPT = 0x0000_0008;
        /// `SMFIP_NOBODY`: do not send BODY.
        const NOBODY = 0x0000_0010;
        /// `SMFIP_NOHDRS`: do not send HEADER.
        const NOHDRS = 0x0000_0020;
        /// `SMFIP_NOEOH`: do not send EOH.
        const NOEOH = 0x0000_0040;
        /// `SMFIP_NR_HDR` (old name `SMFIP_NOHREPL`): HEADER is not answered.
        const NR_HDR = 0x0000_0080;
        /// `SMFIP_NOUNKNOWN`: do not send UNKNOWN.
        const NOUNKNOWN = 0x0000_0100;
        /// `SMFIP_NODATA`: do not send DATA.
        const NODATA = 0x0000_0200;
        /// `SMFIP_SKIP`: the MTA understands `SMFIR_SKIP`.
        const SKIP = 0x0000_0400;
        /// `SMFIP_RCPT_REJ`: also send recipients the MTA rejected itself.
        const RCPT_REJ = 0x0000_0800;
        /// `SMFIP_NR_CONN`: CONNECT is not answered.
        const NR_CONN = 0x0000_1000;
        /// `SMFIP_NR_HELO`: HELO is not answered.
        const NR_HELO = 0x0000_2000;
        /// `SMFIP_NR_MAIL`: MAIL is not answered.
        const NR_MAIL = 0x0000_4000;
        /// `SMFIP_NR_RCPT`: RCPT is not answered.
        const NR_RCPT = 0x0000_8000;
        /// `SMFIP_NR_DATA`: DATA is not answered.
        const NR_DATA = 0x0001_0000;
        /// `SMFIP_NR_UNKN`: UNKNOWN is not answered.
        const NR_UNKN = 0x0002_0000;
        /// `SMFIP_NR_EOH`: EOH is not answered.
        const NR_EOH = 0x0004_0000;
        /// `SMFIP_NR_BODY`: BODY is not answered.
        const NR_BODY = 0x0008_0000;
        /// `SMFIP_HDR_LEADSPC`: header values keep their leading space, both ways.
        const HDR_LEADSPC = 0x0010_0000;
        /// `SMFIP_MDS_256K`: payloads up to 256 KiB − 1 (only `_FFR_MDS_NEGOTIATE` builds).
        const MDS_256K = 0x1000_0000;
        /// `SMFIP_MDS_1M`: payloads up to 1 MiB − 1 (only `_FFR_MDS_NEGOTIATE` builds).
        const MDS_1M = 0x2000_0000;
        /// Bits this crate does not know, kept as they came.
        const _ = !0;
    }
}

impl ProtocolFlags {
    /// `SMFI_V1_PROT`: what a version-1 MTA supports when it offers nothing.
    pub const V1: ProtocolFlags = ProtocolFlags::from_bits_retain(0x3F);
    /// `SMFI_CURR_PROT`: every non-internal bit of version 6; what Postfix and Sendmail offer.
    pub const CURRENT: ProtocolFlags = ProtocolFlags::from_bits_retain(0x1F_FFFF);
    /// `SMFI_INTERNAL`: bits reserved for MDS negotiation and the like.
    pub const INTERNAL: ProtocolFlags = ProtocolFlags::from_bits_retain(0x7000_0000);

    /// Every suppress bit (`SMFIP_NO*`).
    pub const ALL_SUPPRESS: ProtocolFlags = ProtocolFlags::from_bits_retain(0x37F);
    /// Every no-reply bit (`SMFIP_NR_*`).
    pub const ALL_NO_REPLY: ProtocolFlags = ProtocolFlags::from_bits_retain(0xF_F080);
    /// The capability bits a milter may ask for: SKIP, RCPT_REJ, HDR_LEADSPC.
    pub const CAPABILITIES: ProtocolFlags = ProtocolFlags::SKIP
        .union(ProtocolFlags::RCPT_REJ)
        .union(ProtocolFlags::HDR_LEADSPC);
}

/// What the MTA offers in its `SMFIC_OPTNEG`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[doc(alias = "SMFIC_OPTNEG")]
pub struct Offer {
    /// The MTA's protocol version (6 for Sendmail and Postfix by default).
    pub version: u32,
    /// The actions the MTA allows.
    pub actions: Actions,
    /// The protocol bits the MTA supports.
    pub protocol: ProtocolFlags,
}

impl Default for Offer {
    /// What Postfix 3.x and Sendmail 8.17 offer: version 6, actions 0x1FF, protocol 0x1FFFFF.
    fn default() -> Self {
        Offer {
            version: PROTOCOL_VERSION,
            actions: Actions::CURRENT,
            protocol: ProtocolFlags::CURRENT,
        }
    }
}

impl Offer {
    /// libmilter's compatibility rule: an MTA that offers no actions means `SMFI_V1_ACTS`, no
    /// protocol bits means `SMFI_V1_PROT`.
    fn effective(self) -> Offer {
        Offer {
            version: self.version,
            actions: if self.actions.is_empty() {
                Actions::V1
            } else {
                self.actions
            },
            protocol: if self.protocol.is_empty() {
                ProtocolFlags::V1
            } else {
                self.protocol
            },
        }
    }
}

/// What a milter wants from the connection, before it has seen the offer.
///
/// ```
/// use milterkit_proto::{negotiate, Actions, Offer, Request, Stage, Stages};
/// let request = Request {
///     stages: Stages::RCPT | Stages::EOM,
///     actions: Actions::ADD_HEADER,
///     ..Request::default()
/// };
/// let agreement = negotiate(&Offer::default(), &request).unwrap();
/// assert!(agreement.sends(Stage::Rcpt));
/// assert!(!agreement.sends(Stage::Helo)); // the MTA skips what the milter does not want
/// assert_eq!(agreement.actions, Actions::ADD_HEADER);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    /// The stages the milter wants to see; the MTA is asked to skip the others (EOM is always sent).
    pub stages: Stages,
    /// Stages the milter will not answer. Where the MTA offers the matching `SMFIP_NR_*` bit it is
    /// requested; where it does not, the session answers CONTINUE on the milter's behalf.
    pub no_reply: Stages,
    /// The actions the milter needs. All must be offered, or negotiation fails.
    pub actions: Actions,
    /// Capabilities wanted when offered: `SKIP`, `RCPT_REJ`, `HDR_LEADSPC`.
    pub options: ProtocolFlags,
    /// Capabilities that must be offered, or negotiation fails.
    pub required: ProtocolFlags,
    /// Macro lists to send in the reply (`smfi_setsymlist`); needs [`Actions::SET_SYMLIST`],
    /// which is requested automatically when the MTA offers it.
    #[doc(alias = "smfi_setsymlist")]
    pub macros: MacroLists,
}

impl Default for Request {
    /// Every stage, answered; no actions; no options; no macro lists.
    fn default() -> Self {
        Request {
            stages: Stages::all(),
            no_reply: Stages::empty(),
            actions: Actions::empty(),
            options: ProtocolFlags::empty(),
            required: ProtocolFlags::empty(),
            macros: MacroLists::default(),
        }
    }
}

/// What both sides agreed on: the OPTNEG reply, and what follows from it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Agreement {
    /// The protocol version both speak.
    pub version: u32,
    /// The actions the milter may take.
    pub actions: Actions,
    /// The protocol word of the reply.
    pub protocol: ProtocolFlags,
    /// Macro lists the milter asked for.
    pub macros: MacroLists,
}

impl Agreement {
    /// True if the MTA sends `stage` (not suppressed, and known to the agreed version).
    pub fn sends(&self, stage: Stage) -> bool {
        !self.protocol.intersects(stage.suppress_flag()) && self.version >= stage.min_version()
    }

    /// The stages the MTA sends.
    pub fn sent_stages(&self) -> Stages {
        Stage::ALL
            .into_iter()
            .filter(|s| self.sends(*s))
            .fold(Stages::empty(), |acc, s| acc | s.as_set())
    }

    /// True if the MTA waits for a reply to `stage` (no `SMFIP_NR_*` bit for it).
    pub fn expects_reply(&self, stage: Stage) -> bool {
        !self.protocol.intersects(stage.no_reply_flag())
    }

    /// True if the milter may send `SMFIR_SKIP` (in reply to BODY).
    pub fn skip(&self) -> bool {
        self.protocol.contains(ProtocolFlags::SKIP)
    }

    /// True if header values travel with their leading whitespace (`SMFIP_HDR_LEADSPC`).
    pub fn leading_space(&self) -> bool {
        self.protocol.contains(ProtocolFlags::HDR_LEADSPC)
    }

    /// The largest payload either side may send: 64 KiB − 1 unless an MDS bit was agreed.
    pub fn max_payload(&self) -> usize {
        if self.protocol.contains(ProtocolFlags::MDS_1M) {
            crate::frame::MILTER_MDS_1M
        } else if self.protocol.contains(ProtocolFlags::MDS_256K) {
            crate::frame::MILTER_MDS_256K
        } else {
            crate::frame::MILTER_MAX_DATA_SIZE
        }
    }

    /// MTA side: checks the milter's OPTNEG reply against the offer, as Sendmail does (actions and
    /// protocol within the offer), accepting versions 2 up to the offered one, as Postfix does.
    pub fn from_reply(
        offer: &Offer,
        version: u32,
        actions: Actions,
        protocol: ProtocolFlags,
        macros: MacroLists,
    ) -> Result<Agreement, Incompatible> {
        if version < MIN_VERSION || version > offer.version {
            return Err(Incompatible::VersionNotOffered {
                milter: version,
                offered: offer.version,
            });
        }
        let offer = offer.effective();
        let missing = actions.difference(offer.actions);
        if !missing.is_empty() {
            return Err(Incompatible::MissingActions { missing });
        }
        let missing = protocol.difference(offer.protocol);
        if !missing.is_empty() {
            return Err(Incompatible::MissingProtocol { missing });
        }
        Ok(Agreement {
            version,
            actions,
            protocol,
            macros,
        })
    }
}

/// Milter side: computes the OPTNEG reply from the MTA's offer and the milter's request, the way
/// libmilter's `st_optionneg` does, with two improvements: a stage the milter does not want but
/// cannot suppress (old MTA) is answered CONTINUE by the session instead of failing, and a
/// no-reply stage the MTA does not offer is answered CONTINUE on the milter's behalf.
///
/// Fails when the MTA's version is below 2, or it lacks a requested action or required capability.
pub fn negotiate(offer: &Offer, request: &Request) -> Result<Agreement, Incompatible> {
    if offer.version < MIN_VERSION {
        return Err(Incompatible::VersionTooOld(offer.version));
    }
    let offer = offer.effective();
    let mut actions = request.actions;
    if !request.macros.is_empty() && offer.actions.contains(Actions::SET_SYMLIST) {
        actions |= Actions::SET_SYMLIST;
    }
    let missing = actions.difference(offer.actions);
    if !missing.is_empty() {
        return Err(Incompatible::MissingActions { missing });
    }
    let missing = request.required.difference(offer.protocol);
    if !missing.is_empty() {
        return Err(Incompatible::MissingProtocol { missing });
    }
    let mut protocol = (request.options | request.required) & ProtocolFlags::CAPABILITIES;
    for stage in Stage::ALL {
        if !request.stages.has(stage) {
            protocol |= stage.suppress_flag();
        } else if request.no_reply.has(stage) {
            protocol |= stage.no_reply_flag();
        }
    }
    // Ask only for what is offered: what cannot be suppressed or left unanswered is emulated.
    protocol &= offer.protocol;
    Ok(Agreement {
        version: offer.version.min(PROTOCOL_VERSION),
        actions,
        protocol,
        macros: request.macros.clone(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn suppresses_every_stage_not_requested_and_asks_for_offered_no_reply_bits() {
        let request = Request {
            stages: Stages::CONNECT | Stages::HEADER | Stages::EOM,
            no_reply: Stages::HEADER,
            options: ProtocolFlags::SKIP | ProtocolFlags::HDR_LEADSPC,
            ..Request::default()
        };
        let a = negotiate(&Offer::default(), &request).unwrap();
        assert_eq!(
            a.protocol,
            ProtocolFlags::NOHELO
                | ProtocolFlags::NOMAIL
                | ProtocolFlags::NORCPT
                | ProtocolFlags::NODATA
                | ProtocolFlags::NOEOH
                | ProtocolFlags::NOBODY
                | ProtocolFlags::NOUNKNOWN
                | ProtocolFlags::NR_HDR
                | ProtocolFlags::SKIP
                | ProtocolFlags::HDR_LEADSPC
        );
        assert_eq!(
            a.sent_stages(),
            Stages::CONNECT | Stages::HEADER | Stages::EOM
        );
        assert!(!a.expects_reply(Stage::Header));
        assert!(a.skip() && a.leading_space());
    }

    #[test]
    fn replies_with_the_lower_version_and_asks_only_for_what_is_offered() {
        let offer = Offer {
            version: 2,
            actions: Actions::V1,
            protocol: ProtocolFlags::V1 | ProtocolFlags::NR_HDR,
        };
        let request = Request {
            stages: Stages::EOM,
            no_reply: Stages::all(),
            options: ProtocolFlags::SKIP,
            ..Request::default()
        };
        let a = negotiate(&offer, &request).unwrap();
        assert_eq!(a.version, 2);
        assert!(!a
            .protocol
            .intersects(ProtocolFlags::NODATA | ProtocolFlags::SKIP));
        assert!(!a.sends(Stage::Data) && !a.sends(Stage::Unknown));
    }

    #[test]
    fn fails_when_an_action_or_a_required_capability_is_not_offered() {
        let offer = Offer {
            actions: Actions::ADD_HEADER,
            protocol: ProtocolFlags::CURRENT - ProtocolFlags::RCPT_REJ,
            ..Offer::default()
        };
        let need = |actions, required| Request {
            actions,
            required,
            ..Request::default()
        };
        assert_eq!(
            negotiate(&offer, &need(Actions::CHANGE_BODY, ProtocolFlags::empty())),
            Err(Incompatible::MissingActions {
                missing: Actions::CHANGE_BODY
            })
        );
        assert_eq!(
            negotiate(&offer, &need(Actions::empty(), ProtocolFlags::RCPT_REJ)),
            Err(Incompatible::MissingProtocol {
                missing: ProtocolFlags::RCPT_REJ
            })
        );
        assert_eq!(
            negotiate(
                &Offer {
                    version: 1,
                    ..offer
                },
                &Request::default()
            ),
            Err(Incompatible::VersionTooOld(1))
        );
    }

    #[test]
    fn an_mta_offering_nothing_means_version_1_actions_and_steps() {
        let offer = Offer {
            version: 6,
            actions: Actions::empty(),
            protocol: ProtocolFlags::empty(),
        };
        let a = negotiate(
            &offer,
            &Request {
                actions: Actions::ADD_HEADER,
                stages: Stages::EOM,
                ..Request::default()
            },
        )
        .unwrap();
        assert_eq!(a.actions, Actions::ADD_HEADER);
        assert!(a.protocol.contains(ProtocolFlags::NOCONNECT));
    }

    #[test]
    fn the_mta_side_checks_the_reply_against_the_offer() {
        let offer = Offer::default();
        let check = |v, a, p| Agreement::from_reply(&offer, v, a, p, MacroLists::default());
        assert!(check(6, Actions::CURRENT, ProtocolFlags::CURRENT).is_ok());
        assert!(check(2, Actions::empty(), ProtocolFlags::empty()).is_ok());
        assert!(check(7, Actions::empty(), ProtocolFlags::empty()).is_err());
        assert!(check(1, Actions::empty(), ProtocolFlags::empty()).is_err());
        assert!(check(6, Actions::from_bits_retain(0x200), ProtocolFlags::empty()).is_err());
        assert!(check(6, Actions::empty(), ProtocolFlags::MDS_1M).is_err());
    }

    #[test]
    fn flag_sets_keep_unknown_bits() {
        assert_eq!(Actions::from_bits_retain(0x8000_0001).bits(), 0x8000_0001);
        assert_eq!(
            ProtocolFlags::from_bits_retain(0x4000_0000).bits(),
            0x4000_0000
        );
    }
}
