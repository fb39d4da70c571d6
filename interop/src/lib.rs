//! # interop
//!
//! End-to-end tests of milterkit behind **real** Postfix 3.7 and Sendmail 8.17 (Debian 12
//! packages), each run privately on loopback by the test itself, and the pieces to build more:
//!
//! ```text
//!   send() ──SMTP──► Postfix / Sendmail ──milter protocol──► MilterServer (TestMilter on milterkit::serve)
//!                         │ relay
//!                         ▼
//!                       Sink ──► Message (envelope lines with parameters + data) ──► asserts
//! ```
//!
//! - [`Sink`]: an SMTP server that accepts everything and keeps each message.
//! - [`Postfix`], [`Sendmail`]: private instances in their own [`RunDir`], on free ports, in
//!   private mount and UTS namespaces, stopped through their pid files when dropped, their log
//!   tail printed when a test fails. Sendmail is never installed (`sendmail-bin` conflicts with
//!   `postfix`): `scripts/test.sh` extracts its packages under [`sendmail_root`], and an
//!   `LD_PRELOAD` shim written in C ([`sendmail::SYSLOG_SHIM_SOURCE`]) puts its syslog lines in
//!   a file.
//! - [`send`] / [`Session`]: an SMTP client that returns every reply it saw.
//! - [`TestMilter`] / [`MilterServer`]: a milter whose behaviour each message selects (see the
//!   [`milter`] module), served over TCP or a Unix socket.
//! - [`OpenDkim`]: a private OpenDKIM signing for `example.org` with a key made for the test,
//!   and [`opendkim::verify`], which checks a delivered signature without DNS (dkimpy).
//! - [`CMilter`]: one of the libmilter milters of `interop/c/` (such as `refmilter`) built and
//!   run on a TCP port; [`MilterSocket`] and [`Running::start_milters`] list several milters
//!   in one MTA (`tests/chain.rs`).
//! - [`require`] / [`Tool`]: are the packages there? Under `CI=true` a missing one fails the
//!   test; elsewhere the test prints `SKIPPED` and returns.
//! - [`Rig`]: all of it for one test: sink, milter, MTA.
//!
//! The tests: `tests/mta.rs` runs every scenario through Postfix and Sendmail over TCP and a Unix
//! socket (`postfix_tcp::…`, `sendmail_unix::…`); `tests/prediction.rs` checks the delivery
//! that `milterkit::testing::Harness` predicts against what the real MTA delivers (its ignored
//! tests are known Sendmail disagreements: `-- --ignored` shows them failing);
//! `tests/swaks.rs` has swaks, not our client, see a custom reply; `tests/chain.rs` lists
//! OpenDKIM, the C refmilter and the milterkit milter directly in each MTA (the baseline of a
//! `milterkit chain` test) and records what each milter sees of the others' edits.
//!
//! Everything needs root (the MTAs and the namespaces). `bash scripts/test.sh` installs the
//! packages and runs the suite; `cargo test -p interop` runs just these tests. Run directories
//! go to `/run/milterkit-interop` ([`util::base_dir`]); `MILTERKIT_INTEROP_KEEP=1` keeps them,
//! and a failing test keeps its own and prints the MTA's log tail, the sink's transcript and
//! the milter's journal.
//!
//! ```no_run
//! use interop::{Mta, Rig, Transport};
//! # fn t() -> interop::Result<()> {
//! let Some(rig) = Rig::start(Mta::Postfix, Transport::Unix)? else { return Ok(()) };
//! let r = interop::send(rig.port(), "alice@example.org", &["bob@example.net"],
//!     b"From: <alice@example.org>\r\nX-Test: add-header\r\n\r\nhello\r\n")?;
//! assert!(r.accepted(), "{r}");
//! let delivered = rig.sink.wait_for(1, interop::DELIVERY_TIMEOUT)?;
//! assert!(delivered[0].header("X-Interop-Added").is_some());
//! # Ok(()) }
//! ```

pub mod capture;
pub mod chain;
pub mod cmilter;
pub mod instance;
pub mod milter;
pub mod opendkim;
pub mod postfix;
pub mod sendmail;
pub mod sink;
pub mod smtp;
pub mod tools;
pub mod util;

use std::time::Duration;

pub use chain::ChainServer;
pub use cmilter::CMilter;
pub use instance::Instance;
pub use milter::{Action, Journal, MilterServer, Seen, TestMilter, Transport};
pub use opendkim::OpenDkim;
pub use postfix::Postfix;
pub use sendmail::Sendmail;
pub use sink::{Message, Sink};
pub use smtp::{send, Reply, Session, SmtpResult};
pub use tools::{build_c_milter, require, sendmail_root, Tool};
pub use util::{free_port, Error, Result, RunDir};

/// How long a test waits for a delivery to reach the sink (Postfix's queue manager may take a
/// moment; Sendmail delivers in the background at once).
pub const DELIVERY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long a test waits to be sure that nothing (more) is delivered.
pub const QUIET_PERIOD: Duration = Duration::from_millis(1500);

/// Which MTA: Postfix 3.7 ([`Postfix`]) or Sendmail 8.17 ([`Sendmail`]); the core's one enum
/// for it.
pub use milterkit::proto::Mta;

/// The first headers of a test message from Alice to Bob: From, To, Subject, and the Date and
/// Message-ID (`<id@example.org>`) the MTAs would otherwise add themselves.
pub fn message_head(subject: &str, id: &str) -> String {
    format!(
        "From: Alice <alice@example.org>\r\n\
         To: Bob <bob@example.net>\r\n\
         Subject: {subject}\r\n\
         Date: Mon, 30 Nov 2026 10:00:00 +0000\r\n\
         Message-ID: <{id}@example.org>\r\n"
    )
}

/// Message `n` of a series: Subject `LABEL N`, Message-ID `<LABEL-N@example.org>`, a one-line
/// body (with [`message_head`]'s other fields).
pub fn numbered_message(label: &str, n: usize) -> Vec<u8> {
    format!(
        "{}\r\nMessage {n}.\r\n",
        message_head(&format!("{label} {n}"), &format!("{label}-{n}"))
    )
    .into_bytes()
}

/// Declares the tests of a scenario file once for each MTA and transport, in the modules
/// `postfix_tcp`, `postfix_unix`, `sendmail_tcp` and `sendmail_unix`:
/// `tests_on_each_mta_and_transport! { run: test_name => argument, … }` makes each
/// `#[test] fn test_name()` call `run(mta, transport, argument)`, where `run` is a function of
/// the calling file taking an [`Mta`], a [`Transport`] and the argument.
#[macro_export]
macro_rules! tests_on_each_mta_and_transport {
    ($run:ident: $($test:ident => $arg:expr),* $(,)?) => {
        $crate::tests_on_each_mta_and_transport!(@mod postfix_tcp, Postfix, Tcp, $run: $($test => $arg),*);
        $crate::tests_on_each_mta_and_transport!(@mod postfix_unix, Postfix, Unix, $run: $($test => $arg),*);
        $crate::tests_on_each_mta_and_transport!(@mod sendmail_tcp, Sendmail, Tcp, $run: $($test => $arg),*);
        $crate::tests_on_each_mta_and_transport!(@mod sendmail_unix, Sendmail, Unix, $run: $($test => $arg),*);
    };
    (@mod $module:ident, $mta:ident, $transport:ident, $run:ident: $($test:ident => $arg:expr),*) => {
        mod $module {
            use super::*;
            $(
                #[test]
                fn $test() {
                    $run($crate::Mta::$mta, $crate::Transport::$transport, $arg);
                }
            )*
        }
    };
}

/// Declares a test once for each MTA, in the modules `postfix` and `sendmail`:
/// `tests_on_each_mta! { run: test_name }` makes each `#[test] fn test_name()` call `run(mta)`,
/// where `run` is a function of the calling file taking an [`Mta`].
#[macro_export]
macro_rules! tests_on_each_mta {
    ($run:ident: $test:ident) => {
        $crate::tests_on_each_mta!(@mod postfix, Postfix, $run: $test);
        $crate::tests_on_each_mta!(@mod sendmail, Sendmail, $run: $test);
    };
    (@mod $module:ident, $mta:ident, $run:ident: $test:ident) => {
        mod $module {
            #[test]
            fn $test() {
                super::$run($crate::Mta::$mta);
            }
        }
    };
}

/// A milter an MTA can be pointed at: its socket as each MTA spells it. Implemented by
/// [`MilterServer`], [`OpenDkim`] and [`CMilter`], so that a test can list several of them in
/// one MTA ([`Running::start_milters`]).
pub trait MilterSocket {
    /// The socket as Postfix spells it in `smtpd_milters`: `inet:127.0.0.1:PORT` or
    /// `unix:/path`.
    fn postfix_spec(&self) -> String;

    /// The socket as Sendmail spells it in `INPUT_MAIL_FILTER(…, S=…)`: `inet:PORT@127.0.0.1`
    /// or `local:/path`.
    fn sendmail_spec(&self) -> String;

    /// The socket as `mta` spells it.
    fn spec(&self, mta: Mta) -> String {
        match mta {
            Mta::Postfix => self.postfix_spec(),
            Mta::Sendmail => self.sendmail_spec(),
        }
    }
}

/// A milter on a TCP port of 127.0.0.1: its [`MilterSocket`] spellings follow from the port.
pub trait OnLoopback {
    /// The port.
    fn port(&self) -> u16;
}

impl<T: OnLoopback> MilterSocket for T {
    fn postfix_spec(&self) -> String {
        format!("inet:127.0.0.1:{}", self.port())
    }

    fn sendmail_spec(&self) -> String {
        format!("inet:{}@127.0.0.1", self.port())
    }
}

impl MilterSocket for MilterServer {
    fn postfix_spec(&self) -> String {
        MilterServer::postfix_spec(self)
    }

    fn sendmail_spec(&self) -> String {
        MilterServer::sendmail_spec(self)
    }
}

/// The tools an MTA needs.
pub fn tools_of(mta: Mta) -> &'static [Tool] {
    match mta {
        Mta::Postfix => &[Tool::Postfix, Tool::Unshare],
        Mta::Sendmail => &[
            Tool::Sendmail,
            Tool::SendmailCf,
            Tool::M4,
            Tool::Gcc,
            Tool::Unshare,
        ],
    }
}

/// A running MTA of either kind.
#[derive(Debug)]
pub enum Running {
    /// A private Postfix.
    Postfix(Postfix),
    /// A private Sendmail.
    Sendmail(Sendmail),
}

impl Running {
    /// Starts `mta` with `milter`, relaying to the sink on `sink_port`.
    pub fn start(mta: Mta, milter: &MilterServer, sink_port: u16) -> Result<Running> {
        Ok(match mta {
            Mta::Postfix => Running::Postfix(Postfix::start(&milter.postfix_spec(), sink_port)?),
            Mta::Sendmail => {
                Running::Sendmail(Sendmail::start(&milter.sendmail_spec(), sink_port)?)
            }
        })
    }

    /// Starts `mta` with several milters, called in the order given (Postfix's
    /// `smtpd_milters = a, b, c`; Sendmail's `INPUT_MAIL_FILTER` lines and
    /// `confINPUT_MAIL_FILTERS`), relaying to the sink on `sink_port`.
    pub fn start_milters(
        mta: Mta,
        milters: &[&dyn MilterSocket],
        sink_port: u16,
    ) -> Result<Running> {
        let specs: Vec<String> = milters.iter().map(|m| m.spec(mta)).collect();
        let specs: Vec<&str> = specs.iter().map(String::as_str).collect();
        Ok(match mta {
            Mta::Postfix => Running::Postfix(Postfix::start_milters(&specs, sink_port, &[])?),
            Mta::Sendmail => Running::Sendmail(Sendmail::start_milters(&specs, sink_port, "")?),
        })
    }

    /// Its SMTP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        match self {
            Running::Postfix(p) => p.port(),
            Running::Sendmail(s) => s.port(),
        }
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        match self {
            Running::Postfix(p) => p.log(),
            Running::Sendmail(s) => s.log(),
        }
    }

    /// The host name it runs under (its `Received:` headers say `by HOST`).
    pub fn hostname(&self) -> &'static str {
        match self {
            Running::Postfix(_) => postfix::POSTFIX_HOSTNAME,
            Running::Sendmail(_) => sendmail::SENDMAIL_HOSTNAME,
        }
    }

    /// Which MTA it is.
    pub fn kind(&self) -> Mta {
        match self {
            Running::Postfix(_) => Mta::Postfix,
            Running::Sendmail(_) => Mta::Sendmail,
        }
    }
}

/// One test's world: a [`Sink`], the [`TestMilter`] served on `transport`, and the MTA between
/// them. Dropped in that order, reversed: the MTA stops first, then the milter, then the sink.
/// When the test fails, the sink's transcript and the milter's journal are printed, and the
/// MTA prints its log tail.
#[derive(Debug)]
pub struct Rig {
    /// The MTA (field order is drop order: it goes first).
    pub mta: Running,
    /// The milter behind it.
    pub milter: MilterServer,
    /// Where it delivers.
    pub sink: Sink,
}

impl Rig {
    /// Starts everything, or returns `Ok(None)` when a needed package is missing outside CI
    /// (after printing `SKIPPED`; see [`require`]).
    pub fn start(mta: Mta, transport: Transport) -> Result<Option<Rig>> {
        Rig::start_with(mta, transport, MilterServer::default_config())
    }

    /// Like [`Rig::start`], the milter served with `config` (shorter deadlines, another
    /// fail-safe).
    pub fn start_with(
        mta: Mta,
        transport: Transport,
        config: milterkit::Config,
    ) -> Result<Option<Rig>> {
        if !require(crate::tools_of(mta)) {
            return Ok(None);
        }
        let sink = Sink::start()?;
        let milter = MilterServer::start_with(transport, config)?;
        let mta = Running::start(mta, &milter, sink.port())?;
        Ok(Some(Rig { mta, milter, sink }))
    }

    /// The MTA's SMTP port.
    pub fn port(&self) -> u16 {
        self.mta.port()
    }
}

impl Drop for Rig {
    fn drop(&mut self) {
        if std::thread::panicking() {
            eprintln!(
                "---- sink transcript ----\n{}\n---- milter journal ----\n{:#?}",
                self.sink.transcript().join("\n"),
                self.milter.journal().seen()
            );
        }
    }
}
