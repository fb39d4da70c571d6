//! What the milter side hands up: one [`Event`] per command.

use bytes::Bytes;

use crate::command::{Connect, Envelope};
use crate::negotiate::Offer;
use crate::stage::Stage;
#[cfg(doc)]
use crate::MilterSession;

/// What the MTA asked of the milter, one per command (macros are not events: they update
/// [`MilterSession::macros`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// OPTNEG: answer with [`MilterSession::negotiate`].
    Negotiate(Offer),
    /// CONNECT (`xxfi_connect`).
    Connect(Connect),
    /// HELO/EHLO (`xxfi_helo`).
    Helo {
        /// The name the client gave.
        name: Bytes,
    },
    /// MAIL FROM (`xxfi_envfrom`): a message starts.
    Mail(Envelope),
    /// RCPT TO (`xxfi_envrcpt`).
    Rcpt(Envelope),
    /// DATA (`xxfi_data`).
    Data,
    /// One header (`xxfi_header`).
    Header {
        /// Field name.
        name: Bytes,
        /// Value (folded lines joined with LF).
        value: Bytes,
    },
    /// End of headers (`xxfi_eoh`).
    Eoh,
    /// A body chunk (`xxfi_body`).
    Body(Bytes),
    /// End of message (`xxfi_eom`): modify, then decide.
    Eom,
    /// An SMTP command the MTA did not know (`xxfi_unknown`).
    Unknown {
        /// The command line.
        line: Bytes,
    },
    /// The open message is over without end of message (`xxfi_abort`): the MTA sent ABORT, a new
    /// MAIL or HELO came inside the message, or the connection ended. Never answered.
    Abort,
    /// QUIT: the session is over (`xxfi_close` follows). Never answered.
    Quit,
    /// QUIT_NC: this session is over (`xxfi_close`), a new one starts on the same connection with
    /// CONNECT, keeping the agreement. Never answered.
    QuitNc,
}

impl Event {
    /// The reply-bearing stage of this event; `None` for OPTNEG, ABORT, QUIT and QUIT_NC.
    ///
    /// ```
    /// # use milterkit_proto::{Event, Stage};
    /// assert_eq!(Event::Eoh.stage(), Some(Stage::Eoh));
    /// assert_eq!(Event::Abort.stage(), None);
    /// ```
    pub fn stage(&self) -> Option<Stage> {
        Some(match self {
            Event::Connect(_) => Stage::Connect,
            Event::Helo { .. } => Stage::Helo,
            Event::Mail(_) => Stage::Mail,
            Event::Rcpt(_) => Stage::Rcpt,
            Event::Data => Stage::Data,
            Event::Header { .. } => Stage::Header,
            Event::Eoh => Stage::Eoh,
            Event::Body(_) => Stage::Body,
            Event::Eom => Stage::Eom,
            Event::Unknown { .. } => Stage::Unknown,
            Event::Negotiate(_) | Event::Abort | Event::Quit | Event::QuitNc => return None,
        })
    }
}
