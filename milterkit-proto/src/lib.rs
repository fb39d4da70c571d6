//! # milterkit-proto
//!
//! The sendmail milter protocol, version 6, without I/O: framing, every command and response,
//! option negotiation, macros with libmilter's lifetimes, and the session state machines of both
//! ends. It never reads a clock, never logs and never blocks; an async runtime (the `milterkit`
//! crate), a test harness or a fuzzer drives it.
//!
//! ```text
//!            MTA side                                     milter side
//!  ┌──────────────────────────┐                 ┌──────────────────────────────┐
//!  │ MtaSession               │  Command bytes  │ MilterSession                │
//!  │  send(Command) ─► poll_transmit ─────────► handle_input ─► poll_event ──► Event
//!  │                          │                 │                              │   │
//!  │  MtaEvent ◄─ poll_event ◄─ handle_input ◄── poll_transmit ◄─ decide/modify ◄─┘
//!  └──────────────────────────┘ Response bytes  └──────────────────────────────┘
//!        FrameDecoder: 4-byte length · code · payload, checked against a limit first
//! ```
//!
//! A milter that adds a header to every message, driven by hand:
//!
//! ```
//! use bytes::{Bytes, BytesMut};
//! use milterkit_proto::*;
//!
//! let mut milter = MilterSession::new(MilterConfig::default());
//! // What an MTA sends for a message, as milterkit's own MTA side writes it.
//! let mut wire = BytesMut::new();
//! Command::Optneg(Offer::default()).encode(&mut wire);
//! Command::Mail(Envelope::new("<alice@example.org>")).encode(&mut wire);
//! Command::Eom { chunk: Bytes::new() }.encode(&mut wire);
//! milter.handle_input(&wire);
//!
//! let request = Request {
//!     stages: Stages::MAIL | Stages::EOM,
//!     actions: Actions::ADD_HEADER,
//!     ..Request::default()
//! };
//! let mut sender = Bytes::new();
//! while let Some(event) = milter.poll_event()? {
//!     match event {
//!         Event::Negotiate(_) => { milter.negotiate(&request).expect("MTA offers ADD_HEADER"); }
//!         Event::Mail(envelope) => {
//!             sender = envelope.address;
//!             milter.decide(Decision::Continue).expect("awaited");
//!         }
//!         Event::Eom => {
//!             milter.modify(Modification::AddHeader { name: "X-Sender".into(), value: sender.clone() })
//!                 .expect("negotiated");
//!             milter.decide(Decision::Continue).expect("awaited");
//!         }
//!         _ => {}
//!     }
//! }
//! let mut out = BytesMut::new();
//! milter.poll_transmit(&mut out); // OPTNEG reply, 'c' for MAIL, 'h' X-Sender, 'c' for EOM
//! assert!(out.ends_with(b"X-Sender\0<alice@example.org>\0\0\0\0\x01c"));
//! # Ok::<(), ProtocolError>(())
//! ```
//!
//! The tests replay real captures of Postfix 3.7 and Sendmail 8.17 talking to libmilter, recorded
//! by the project (`testdata/captures` in this crate).
//!
//! It depends on `bytes`, `bitflags` and `thiserror` only. One feature, off by default: `serde`
//! derives `serde::Serialize` for the types an MTA side reports (stages, decisions, replies,
//! modifications, envelopes, the negotiated agreement, the delivered message); byte strings are
//! serialised as text when they are UTF-8, else as bytes ([`serde_text`]).

#![cfg_attr(docsrs, feature(doc_cfg))]

pub mod command;
pub mod error;
mod event;
pub mod frame;
#[doc(hidden)]
pub mod fuzzing;
pub mod macros;
pub mod message;
pub mod milter;
pub mod mta;
pub mod negotiate;
pub mod order;
pub mod reply;
pub mod response;
#[cfg(feature = "serde")]
#[cfg_attr(docsrs, doc(cfg(feature = "serde")))]
pub mod serde_text;
pub mod stage;

pub use command::{Command, Connect, Envelope, Family};
pub use error::{FrameError, Incompatible, MisuseError, ProtocolError, ReplyError};
pub use frame::{Frame, FrameDecoder};
pub use macros::{MacroLists, MacroStage, Macros};
pub use message::Mta;
pub use milter::{Event, MilterConfig, MilterSession, NegotiateError};
pub use mta::{MtaConfig, MtaEvent, MtaSession, Sent};
pub use negotiate::{negotiate, Actions, Agreement, Offer, ProtocolFlags, Request};
pub use reply::Reply;
pub use response::{Decision, Modification, Response};
pub use stage::{Stage, Stages};
