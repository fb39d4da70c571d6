//! Errors, split by who is to blame.
//!
//! | error | blame | what goes on the wire |
//! |---|---|---|
//! | [`FrameError`] | the peer sent a length prefix that cannot be right | nothing: close the connection |
//! | [`ProtocolError`] | the peer sent garbage, broke the order, or cannot work with us | nothing: close the connection |
//! | [`MisuseError`] | the caller of a session (a bug in the program, not the peer) | nothing is queued; the session stays usable |
//! | [`ReplyError`] | the caller built an SMTP reply that would break the protocol | nothing |
//! | [`Incompatible`] | negotiation: the peer lacks what we need | nothing: close the connection |

use crate::negotiate::{Actions, ProtocolFlags};
use crate::stage::Stage;

/// A length prefix that cannot be accepted. Checked before any byte of the payload is buffered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum FrameError {
    /// A length of 0: every packet has at least its command byte, so 0 would desynchronise the stream.
    #[error("zero-length frame")]
    ZeroLength,
    /// The payload (length minus the command byte) is larger than the configured maximum.
    #[error("frame payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The payload length the prefix announced.
        len: u64,
        /// The limit in force.
        max: usize,
    },
}

/// The peer broke the protocol; the connection cannot go on.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ProtocolError {
    /// The framing itself was wrong.
    #[error("bad frame")]
    Frame(#[from] FrameError),
    /// A command or response code this protocol does not define.
    #[error("unknown code {code:#04x} ({})", printable(*code))]
    UnknownCode {
        /// The code byte as received.
        code: u8,
    },
    /// A known code whose payload does not parse (missing NUL, truncated, bad family, …).
    #[error("malformed {} packet: {reason}", printable(*code))]
    Malformed {
        /// The code byte of the packet.
        code: u8,
        /// What was wrong, in a few words.
        reason: &'static str,
    },
    /// A command that cannot come at this point of the session (body before data, a second
    /// OPTNEG, RCPT with no message, …).
    #[error("command {} out of order {state}", printable(*code))]
    OutOfOrder {
        /// The command code.
        code: u8,
        /// Where the session was, in words.
        state: &'static str,
    },
    /// A response the MTA side did not ask for or that is not allowed at this point (a decision
    /// when none is awaited, a modification outside end of message, SKIP outside BODY, …).
    #[error("unexpected response {} {state}", printable(*code))]
    UnexpectedResponse {
        /// The response code.
        code: u8,
        /// Where the session was, in words.
        state: &'static str,
    },
    /// Negotiation failed: the peers have no common ground.
    #[error("incompatible peer")]
    Incompatible(#[from] Incompatible),
    /// The session was already closed (by QUIT, an earlier error, or end of input).
    #[error("session is closed")]
    Closed,
}

/// Why negotiation failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum Incompatible {
    /// The MTA speaks a protocol version below 2 (libmilter's minimum).
    #[error("MTA protocol version {0} is below 2")]
    VersionTooOld(u32),
    /// The milter answered with a version the MTA did not offer (above the MTA's, or below 2).
    #[error("milter protocol version {milter} is not between 2 and {offered}")]
    VersionNotOffered {
        /// The version in the milter's reply.
        milter: u32,
        /// The version the MTA offered.
        offered: u32,
    },
    /// The milter needs actions the MTA does not offer (libmilter: "does not fulfill action
    /// requirements").
    #[error("MTA does not offer actions {missing:?}")]
    MissingActions {
        /// The actions requested but not offered.
        missing: Actions,
    },
    /// The milter needs protocol capabilities the MTA does not offer (libmilter: "does not
    /// fulfill protocol requirements").
    #[error("MTA does not offer protocol flags {missing:?}")]
    MissingProtocol {
        /// The flags requested but not offered.
        missing: ProtocolFlags,
    },
    /// The OPTNEG reply was not an OPTNEG packet.
    #[error("expected an OPTNEG reply, got {}", printable(*code))]
    NotOptneg {
        /// The code received instead.
        code: u8,
    },
}

/// The caller asked a session for something the protocol or the agreement does not allow. Nothing
/// was queued; the session is unchanged.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MisuseError {
    /// No event is waiting for a decision (decided twice, or nothing to decide).
    #[error("no decision is awaited")]
    NotAwaiting,
    /// A decision that this stage does not allow (DISCARD at CONNECT, SKIP outside BODY or
    /// without SMFIP_SKIP, …).
    #[error("{decision} is not allowed at {stage}")]
    DecisionNotAllowed {
        /// The stage awaiting a decision.
        stage: Stage,
        /// The decision's name.
        decision: &'static str,
    },
    /// A modification or progress outside end of message.
    #[error("{0} is only allowed at end of message")]
    OutsideEom(&'static str),
    /// A modification whose action bit was not negotiated.
    #[error("{what} was not negotiated (needs {needs:?})")]
    NotNegotiated {
        /// The modification's name.
        what: &'static str,
        /// The action bit it needs.
        needs: Actions,
    },
    /// A modification with a value the MTAs refuse (empty header name, NUL inside a string, empty
    /// quarantine reason, …).
    #[error("invalid {what}: {reason}")]
    Invalid {
        /// The modification's name.
        what: &'static str,
        /// What is wrong.
        reason: &'static str,
    },
    /// A replacement body interrupted by another modification and then continued: Postfix needs
    /// all REPLBODY packets in one run.
    #[error("replacement body must be one contiguous run of chunks")]
    BodyNotContiguous,
    /// A packet whose payload exceeds what the peer accepts.
    #[error("payload of {len} bytes exceeds the limit of {max}")]
    TooLarge {
        /// The payload length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// MTA side: a command sent while a reply to an earlier one is still awaited.
    #[error("a reply to {0} is still awaited")]
    ReplyPending(Stage),
    /// MTA side: a command the session cannot send now (before negotiation, after QUIT, out of
    /// order).
    #[error("cannot send {command} {state}")]
    CannotSend {
        /// The command's name.
        command: &'static str,
        /// Where the session is, in words.
        state: &'static str,
    },
    /// The peer broke the protocol earlier; the session is closed.
    #[error("session is closed")]
    Closed,
}

/// Why a text is not a valid SMTP reply for a milter to send.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ReplyError {
    /// The reply code is not 4xx or 5xx (milters can only refuse).
    #[error("reply code {0} is not 4xx or 5xx")]
    Code(u16),
    /// The enhanced status code is not `X.Y.Z` with class 4 or 5 and 1 to 3 digits in Y and Z.
    #[error("malformed enhanced status code")]
    Enhanced,
    /// The enhanced status code's class differs from the reply code's (Postfix refuses that).
    #[error("enhanced status class {enhanced} does not match reply code {code}")]
    ClassMismatch {
        /// The reply code.
        code: u16,
        /// The class digit of the enhanced code.
        enhanced: u8,
    },
    /// No lines, or more than 32 (libmilter's `smfi_setmlreply` limit).
    #[error("a reply has 1 to 32 lines, not {0}")]
    LineCount(usize),
    /// A line longer than 980 bytes (libmilter's limit).
    #[error("reply line of {0} bytes is longer than 980")]
    LineTooLong(usize),
    /// A line containing CR, LF or NUL.
    #[error("reply line contains CR, LF or NUL")]
    ControlCharacter,
    /// Wire text that is not a well-formed (possibly multi-line) reply.
    #[error("malformed reply text")]
    Malformed,
}

/// Shows a code byte as a character when it is printable ASCII.
pub(crate) fn printable(code: u8) -> String {
    if code.is_ascii_graphic() {
        format!("'{}'", code as char)
    } else {
        format!("{code:#04x}")
    }
}
