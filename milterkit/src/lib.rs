//! # milterkit
//!
//! Write sendmail/Postfix mail filters (milters) in Rust on tokio, test them in process, and
//! drive any milter from Rust. Built on the sans-I/O core [`milterkit_proto`].
//!
//! ```text
//!   Postfix / Sendmail ──socket──► serve() ─► one task per connection:
//!                                   read ─► MilterSession ─► Event ─► your Milter's async fn
//!                                   write ◄─ one write per turn ◄─ Decision + Eom modifications
//!   tests ─► testing::Harness ─► MtaSession ⇄ MilterSession in memory ─► Outcome
//! ```
//!
//! A milter that refuses recipients of a retired domain and stamps every message:
//!
//! ```no_run
//! use milterkit::{Actions, Decision, Eom, Milter, Rcpt, Reply, Result};
//!
//! #[derive(Default)]
//! struct Guard { messages: u32 }              // one value per MTA connection
//!
//! #[milterkit::milter]                        // STAGES from the handlers: the MTA skips every other stage
//! impl Milter for Guard {
//!     type Message = Vec<String>;             // per-message state: created at MAIL, dropped at EOM/ABORT
//!     const ACTIONS: Actions = Actions::ADD_HEADER;
//!
//!     async fn rcpt(&mut self, refused: &mut Vec<String>, rcpt: Rcpt<'_>) -> Result<Decision> {
//!         let addr = rcpt.address().to_str()?;
//!         if addr.ends_with("@old.example>") {
//!             refused.push(addr.to_owned());
//!             return Ok(Decision::Reply(Reply::new(550, "5.1.6", "mailbox has moved")?));
//!         }
//!         Ok(Decision::Continue)
//!     }
//!
//!     async fn eom(&mut self, refused: &mut Vec<String>, eom: &mut Eom<'_>) -> Result<Decision> {
//!         self.messages += 1;
//!         eom.add_header("X-Guard", format!("msg={} refused={}", self.messages, refused.len()))?;
//!         Ok(Decision::Continue)
//!     }
//! }
//!
//! #[tokio::main]
//! async fn main() -> Result<()> {
//!     let listener = milterkit::bind("inet:7357@127.0.0.1").await?;
//!     milterkit::serve(listener, Guard::default)
//!         .with_graceful_shutdown(async { tokio::signal::ctrl_c().await.ok(); })
//!         .await?;
//!     Ok(())
//! }
//! ```
//!
//! The same milter, tested without an MTA or a socket:
//!
//! ```
//! # use milterkit::{Actions, Decision, Eom, Milter, Rcpt, Reply, Result, Stages};
//! # #[derive(Default)] struct Guard { messages: u32 }
//! # impl Milter for Guard {
//! #     type Message = Vec<String>;
//! #     const STAGES: Stages = Stages::RCPT.union(Stages::EOM);
//! #     const ACTIONS: Actions = Actions::ADD_HEADER;
//! #     async fn rcpt(&mut self, refused: &mut Vec<String>, rcpt: Rcpt<'_>) -> Result<Decision> {
//! #         let addr = rcpt.address().to_str()?;
//! #         if addr.ends_with("@old.example>") {
//! #             refused.push(addr.to_owned());
//! #             return Ok(Decision::Reply(Reply::new(550, "5.1.6", "mailbox has moved")?));
//! #         }
//! #         Ok(Decision::Continue)
//! #     }
//! #     async fn eom(&mut self, refused: &mut Vec<String>, eom: &mut Eom<'_>) -> Result<Decision> {
//! #         self.messages += 1;
//! #         eom.add_header("X-Guard", format!("msg={} refused={}", self.messages, refused.len()))?;
//! #         Ok(Decision::Continue)
//! #     }
//! # }
//! use milterkit::{mta::Transaction, testing::Harness, Modification, Stage};
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mut h = Harness::postfix(Guard::default());
//! let tx = Transaction::new().to("<bob@old.example>").to("<carol@new.example>");
//! let outcome = h.run(&tx).await?;
//! assert!(matches!(outcome.decision(Stage::Rcpt), Some(Decision::Reply(r)) if r.code() == 550));
//! assert_eq!(
//!     outcome.modifications,
//!     [Modification::AddHeader { name: "X-Guard".into(), value: "msg=1 refused=1".into() }]
//! );
//! # Ok::<(), milterkit::Error>(()) }).unwrap();
//! ```
//!
//! Filters that need the whole message (signing, disclaimers, content checks) are simpler on
//! [`filter`]: one async function over a [`filter::Transaction`] holding the envelope, the
//! headers and the body (spooled to a file past a memory limit); the edits made to it become
//! milter modifications, with the right header indexes for Postfix or Sendmail:
//!
//! ```
//! use milterkit::filter::{Filter, Filtered, Options, Transaction};
//! use milterkit::{mta, testing::Harness, Actions, Decision, Result};
//!
//! struct Tag;
//! impl Filter for Tag {
//!     const ACTIONS: Actions = Actions::CHANGE_HEADER.union(Actions::CHANGE_BODY);
//!     async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
//!         if tx.body().to_bytes()?.windows(7).any(|w| w == b"LOTTERY") {
//!             tx.set_header("Subject", "[SPAM?] Win")?;
//!             tx.append_body("-- \r\nchecked\r\n")?;
//!         }
//!         Ok(Decision::Continue)
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mut h = Harness::sendmail(Filtered::new(Tag, Options::default()));
//! let tx = mta::Transaction::new()
//!     .from("<eve@elsewhere.example>")
//!     .to("<bob@example.org>")
//!     .message("Subject: Win\r\n\r\nthe LOTTERY\r\n");
//! let delivered = h.run(&tx).await?.delivery.unwrap().message;
//! assert_eq!(delivered, "Subject: [SPAM?] Win\r\n\r\nthe LOTTERY\r\n-- \r\nchecked\r\n");
//! # Ok::<(), milterkit::Error>(()) }).unwrap();
//! ```
//!
//! The [`manual`] explains the protocol and how milterkit follows it: the [lifecycle of a
//! connection](manual::lifecycle), [negotiation](manual::negotiation), [macros](manual::macros),
//! [Postfix and Sendmail](manual::mtas), [errors and the fail-safe decision](manual::errors), and
//! [why the connection loop is shaped as it is](manual::performance).
//!
//! ## Features
//!
//! Without any feature, milterkit is the milter side ([`serve`], [`bind`], [`serve_connection`],
//! [`Config`]), the MTA side ([`mta`]) and the in-process harness ([`testing`]), on tokio and
//! tracing only. Library users who write their own `main` can turn the default off:
//! `milterkit = { version = "0.1", default-features = false }`.
//!
//! | feature | default | what it adds | dependencies it brings |
//! |---|---|---|---|
//! | `daemon` | yes | [`run!`], [`daemon::Daemon`] and [`daemon::Options`]: a milter's whole `main` (flags and `MILTERKIT_*` variables or a prefix of your own, systemd socket activation and notifications, privilege drop, SIGTERM, a metrics endpoint). Enables `metrics` and `logging` | clap, listenfd, sd-notify, nix, tokio's `signal` and `rt-multi-thread` |
//! | `filter` | yes | [`filter`]: a filter as one function over the whole message, the edits turned into modifications; the body spooled past a memory limit, a MIME view, RFC 2047 decoding, IDNA-aware domains | tempfile, mail-parser, idna |
//! | `logging` | with `daemon` | [`logging::init_logging`]: the log subscriber of [`run!`] (plain lines, journald-aware, or JSON) for a `main` of your own | tracing-subscriber |
//! | `chain` | no | [`chain`]: a milter that drives other milters, each with its own timeouts, fail-safe, evaluation mode, conditions and metrics, configured from TOML (what `milterkit chain` serves). Enables `daemon` | serde, toml |
//! | `serde` | no | `serde::Serialize` for [`mta::Outcome`] and all it holds (byte strings as text where they are UTF-8, else as bytes: see [`proto::serde_text`]) | serde |
//! | `metrics` | with `daemon` | [`metrics::Metrics`] and [`Config::metrics`]: Prometheus counters and histograms of a served milter and an HTTP endpoint to scrape them. Without it nothing is counted or timed | prometheus-client |
//!
//! ## Where everything of libmilter and the other milter libraries lives
//!
//! | libmilter | node-milter | milterjs | phalaaxx/milter (Go) | cwedgwood/milter (Go) | milterkit |
//! |---|---|---|---|---|---|
//! | `smfi_register` flags, `xxfi_*` presence | `milter.start(…, flags, …)` | `on(event)` | `OptAction`, `OptProtocol` | same | [`Milter::ACTIONS`], [`Milter::STAGES`] |
//! | `xxfi_negotiate`, `SMFIS_ALL_OPTS` | `negotiate`, `env.negotiate(f0…f3)` | – | – | – | [`Milter::negotiate`] editing a [`Request`] |
//! | `smfi_setsymlist` | `env.setsymlist` | – | – | – | [`Request::macros`], [`MacroLists::set`] |
//! | `xxfi_connect` | `connect` | `connect` | `Milter.Connect` | `Connect` | [`Milter::connect`], [`Connect`] |
//! | `xxfi_helo` | `helo` | `helo` | `Helo` | `Helo` | [`Milter::helo`] |
//! | `xxfi_envfrom` | `mailfrom` | `envfrom` | `MailFrom` | `NewMessage` + `MailFrom` | [`Milter::mail`]; per-message state [`Milter::Message`] |
//! | `xxfi_envrcpt` | `rcptto` | `envrcpt` | `RcptTo` | `RcptTo` | [`Milter::rcpt`] |
//! | `xxfi_data` | `data` | `data` | – | – | [`Milter::data`] |
//! | `xxfi_header` | `header` | `header` | `Header` | `Header` | [`Milter::header`] |
//! | `xxfi_eoh` | `eoh` | `eoh` | `Headers` | `Headers` | [`Milter::eoh`] |
//! | `xxfi_body` | `segment` | `body` | `BodyChunk` | `BodyChunk` | [`Milter::body`] |
//! | `xxfi_eom` | `eom` | `eom` | `Body` | `Body` | [`Milter::eom`] with [`Eom`] |
//! | `xxfi_abort` | `abort` | `abort` | – | `Reset` | [`Milter::abort`] (gets the message state) |
//! | `xxfi_close` | `close` | `close` | – | `EndSession` | [`Milter::close`] |
//! | `xxfi_unknown` | `unknown` | `unknown` | – | – | [`Milter::unknown`] |
//! | – | – | – | `NewMilter` factory | `NewSession` | the factory given to [`serve`] |
//! | `SMFIS_CONTINUE` / `ACCEPT` / `REJECT` / `TEMPFAIL` / `DISCARD` / `SKIP` | `env.done(SMFIS_*)` | `ctx.continue()`… | `RespContinue`… | same | [`Decision`] |
//! | `SMFIS_NOREPLY` | `SMFIS_NOREPLY` | – | – | – | [`Request::no_reply`] (the session answers for you where the MTA cannot skip the reply) |
//! | `smfi_setreply`, `smfi_setmlreply` | `env.setreply`, `env.setmlreply` | `ctx.replycode` | `NewResponse` | same | [`Decision::Reply`] with [`Reply::new`], [`Reply::multiline`] |
//! | `smfi_addheader` | `env.addheader` | `ctx.addheader` | `Modifier.AddHeader` | same | [`Eom::add_header`] |
//! | `smfi_insheader` | `env.insheader` | – | – | – | [`Eom::insert_header`] |
//! | `smfi_chgheader` | `env.chgheader` | `ctx.chgheader` | `ChangeHeader` | same | [`Eom::change_header`], [`Eom::delete_header`] |
//! | `smfi_chgfrom` | `env.chgfrom` | `ctx.setsender` | – | – | [`Eom::change_from`], [`Eom::change_from_with_args`] |
//! | `smfi_addrcpt`, `smfi_addrcpt_par` | `env.addrcpt`, `env.addrcpt_par` | `ctx.addrcpt` | `AddRecipient` | same | [`Eom::add_rcpt`], [`Eom::add_rcpt_with_args`] |
//! | `smfi_delrcpt` | `env.delrcpt` | `ctx.delrcpt` | `DeleteRecipient` | same | [`Eom::delete_rcpt`] |
//! | `smfi_replacebody` | `env.replacebody` | `ctx.replacebody` | `ReplaceBody` | same | [`Eom::replace_body`] |
//! | `smfi_quarantine` | `env.quarantine` | `ctx.quarantine` | `Quarantine` | same | [`Eom::quarantine`] |
//! | `smfi_progress` | `env.progress` | `ctx.progress` | – | – | [`Eom::progress`], and automatic every [`Config::progress_interval`] |
//! | `smfi_getsymval` | `env.getsymval` | `ctx.macros` | `Modifier.Macros` | accumulating `Macros` | `macro_value` on every stage's arguments; [`Macros`] |
//! | `smfi_getpriv` / `smfi_setpriv` | – | – | – | – | `self` (connection) and [`Milter::Message`] (message) |
//! | `smfi_setconn`, `smfi_opensocket` | `milter.start` description | `listen(port, host)` | `net.Listen` | same | [`bind`] with a [`SocketSpec`] |
//! | `smfi_main` | `milter.start` | `listen` | `RunServer` | `Server.Serve` | [`serve`] |
//! | `smfi_stop` | – | – | `Server.Shutdown` | `Server.Close` | [`Serve::with_graceful_shutdown`] |
//! | `smfi_settimeout`, `smfi_setmaxdatasize` | – | – | – | – | [`Config::read_timeout`], [`Config::max_frame`] |
//! | `smfi_setbacklog` | – | – | – | – | [`bind_with_backlog`] |
//! | `smfi_version`, MTA protocol version | – | `ctx.version` | – | – | [`Offer::version`] in [`Milter::negotiate`], [`Eom::agreement`] |
//! | – | – | `ctx.uniqueID`, `error` event | – | – | tracing span `milter_conn{id, peer}`; connection errors logged |
//! | – | – | – | – | `TestMilter` | [`testing::Harness`] |
//! | a `main` with flags, daemon, user switch | – | – | – | – | [`run!`] and [`daemon::Options`] (feature `daemon`): socket activation, `sd_notify`, SIGTERM, privilege drop, logs; docs/deployment.md |
//! | – | – | – | – | – | [`metrics::Metrics`] in [`Config::metrics`] (feature `metrics`): Prometheus counters and histograms, HTTP endpoint |
//!
//! ## Where milterkit differs from libmilter, on purpose
//! - Per-connection negotiation (libmilter's suppress bits leak across connections).
//! - QUIT and QUIT_NC are honoured in any state; out-of-order commands close the connection with
//!   a named error instead of being ignored while the MTA waits.
//! - A failing, panicking or slow handler gives the configured fail-safe reply; libmilter sends
//!   nothing (the MTA waits for its own timeout).
//! - Graceful shutdown waits for open messages; payloads up to 1 MiB are accepted by default.

#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "chain")]
#[cfg_attr(docsrs, doc(cfg(feature = "chain")))]
pub mod chain;
mod conn;

/// The manual: how the protocol works and how milterkit follows it, a page a module (written in
/// `milterkit/manual/*.md`).
pub mod manual {
    pub mod lifecycle {
        #![doc = include_str!("../manual/lifecycle.md")]
        #[allow(unused_imports)]
        use crate::*;
    }
    pub mod negotiation {
        #![doc = include_str!("../manual/negotiation.md")]
        #[allow(unused_imports)]
        use crate::*;
    }
    pub mod macros {
        #![doc = include_str!("../manual/macros.md")]
        #[allow(unused_imports)]
        use crate::*;
    }
    pub mod mtas {
        #![doc = include_str!("../manual/mtas.md")]
        #[allow(unused_imports)]
        use crate::*;
    }
    pub mod errors {
        #![doc = include_str!("../manual/errors.md")]
        #[allow(unused_imports)]
        use crate::*;
    }
    pub mod performance {
        #![doc = include_str!("../manual/performance.md")]
    }
}
#[cfg(feature = "daemon")]
#[cfg_attr(docsrs, doc(cfg(feature = "daemon")))]
pub mod daemon;
mod deadline;
mod dispatch;
mod eom;
mod error;
#[cfg(feature = "filter")]
#[cfg_attr(docsrs, doc(cfg(feature = "filter")))]
pub mod filter;
#[doc(hidden)]
pub mod fuzzing;
mod listener;
#[cfg(feature = "logging")]
#[cfg_attr(docsrs, doc(cfg(feature = "logging")))]
pub mod logging;
mod meter;
#[cfg(feature = "metrics")]
#[cfg_attr(docsrs, doc(cfg(feature = "metrics")))]
pub mod metrics;
mod milter;
pub mod mta;
mod serve;
mod shutdown;
pub mod testing;

pub use eom::Eom;
pub use error::{BoxError, Error, OnWire, Result};
pub use listener::{
    bind, bind_with_backlog, connect, Listener, SocketSpec, Stream, UnixSocketFile, DEFAULT_BACKLOG,
};
pub use milter::{
    Abort, Body, Connect, Data, Eoh, Header, Helo, Mail, Milter, Rcpt, Text, Unknown,
};
/// On an `impl Milter for …` block: sets [`Milter::STAGES`] to the stages whose handlers the block
/// implements (as libmilter does from the callbacks that are not NULL), so that the MTA sends
/// what the milter handles and skips the rest; where the block writes `STAGES` out, a handler
/// whose stage it leaves out is a compile error, since the MTA would never call it. Feature
/// `macros` (default).
///
/// ```
/// use milterkit::{Decision, Milter, Rcpt, Result, Stages};
///
/// #[derive(Default)]
/// struct NoOld;
///
/// #[milterkit::milter]
/// impl Milter for NoOld {
///     type Message = ();
///     async fn rcpt(&mut self, _: &mut (), rcpt: Rcpt<'_>) -> Result<Decision> {
///         Ok(if rcpt.address().ends_with(b"@old.example>") { Decision::Reject } else { Decision::Continue })
///     }
/// }
///
/// assert_eq!(<NoOld as Milter>::STAGES, Stages::RCPT);
/// ```
///
/// A `header` handler with a `STAGES` that leaves `HEADER` out does not compile ("header() is
/// implemented but STAGES leaves out Stages::HEADER: the MTA would never call it"):
///
/// ```compile_fail
/// use milterkit::{Decision, Header, Milter, Result, Stages};
///
/// #[derive(Default)]
/// struct Forgot;
///
/// #[milterkit::milter]
/// impl Milter for Forgot {
///     type Message = ();
///     const STAGES: Stages = Stages::RCPT;
///     async fn header(&mut self, _: &mut (), _: Header<'_>) -> Result<Decision> {
///         Ok(Decision::Continue)
///     }
/// }
/// ```
#[cfg(feature = "macros")]
#[cfg_attr(docsrs, doc(cfg(feature = "macros")))]
pub use milterkit_macros::milter;
pub use serve::{serve, serve_connection, Config, Serve};

/// A milter's whole `main`, named and versioned as the crate it is in: flags and `MILTERKIT_*`
/// variables, logging, systemd socket activation and notifications, privilege drop, metrics,
/// graceful stop on SIGTERM (see [`daemon`]). `milterkit::run!(factory)` is
/// [`daemon::Daemon`] with `CARGO_PKG_NAME` and `CARGO_PKG_VERSION`; returns the process's
/// [`ExitCode`](std::process::ExitCode).
///
/// ```no_run
/// # #[derive(Default)] struct MyMilter;
/// # impl milterkit::Milter for MyMilter { type Message = (); }
/// fn main() -> std::process::ExitCode {
///     milterkit::run!(MyMilter::default)
/// }
/// ```
#[cfg(feature = "daemon")]
#[cfg_attr(docsrs, doc(cfg(feature = "daemon")))]
#[macro_export]
macro_rules! run {
    ($factory:expr $(,)?) => {
        $crate::daemon::Daemon::new(env!("CARGO_PKG_NAME"))
            .version(env!("CARGO_PKG_VERSION"))
            .run($factory)
    };
}

pub use milterkit_proto as proto;
pub use milterkit_proto::{
    Actions, Agreement, Decision, MacroLists, MacroStage, Macros, Modification, Offer,
    ProtocolFlags, Reply, Request, Stage, Stages,
};
