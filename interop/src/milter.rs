//! [`TestMilter`], a milterkit milter whose behaviour each message selects, and
//! [`MilterServer`], which serves it with [`milterkit::serve`] on TCP or a Unix socket.
//!
//! What the milter does:
//! - at MAIL, refuses a sender whose local part starts with `reject-mail` with the multi-line
//!   reply [`MAIL_REJECT_CODE`] [`MAIL_REJECT_LINES`], and tempfails one whose local part starts
//!   with `tempfail-mail` with [`MAIL_TEMPFAIL_CODE`] [`MAIL_TEMPFAIL_LINES`];
//! - at RCPT, refuses every recipient whose local part starts with `reject` with the custom reply
//!   [`REJECT_CODE`] [`REJECT_ENHANCED`] [`REJECT_TEXT`], and tempfails (no custom reply) every
//!   recipient whose local part starts with `tempfail`, and never answers the RCPT of one whose
//!   local part starts with `hang`;
//! - fails on purpose (panics, returns an error or stalls) at the stage a [`Failure`] word of
//!   the control header names;
//! - at end of message, performs the actions listed in the message's [`CONTROL_HEADER`]
//!   (`X-Test: add-header change-header`), in that order; see [`Action`];
//! - records what it saw of every message that reached end of message in its [`Journal`].

use std::future::IntoFuture;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use milterkit::{
    Actions, Config, Decision, Eom, Header, Mail, Milter, Rcpt, Reply, Result as MilterResult,
    Stages,
};

use crate::util::{set_mode, Context, Error, Result, RunDir};

/// The header that lists the actions the milter performs at end of message.
pub const CONTROL_HEADER: &str = "X-Test";
/// Added by [`Action::AddHeader`].
pub const ADDED_HEADER: (&str, &str) = ("X-Interop-Added", "added by the interop milter");
/// [`Action::ChangeHeader`] sets the first `Subject` to this.
pub const CHANGED_SUBJECT: &str = "[interop] changed subject";
/// [`Action::DeleteHeader`] deletes the first header of this name.
pub const DELETED_HEADER: &str = "X-Interop-Remove";
/// Added by [`Action::AddRcpt`], with [`ADDED_RCPT_ARGS`].
pub const ADDED_RCPT: &str = "<added@example.net>";
/// The ESMTP arguments of [`ADDED_RCPT`].
pub const ADDED_RCPT_ARGS: &str = "NOTIFY=NEVER";
/// The new sender of [`Action::ChangeFrom`], with [`NEW_SENDER_ARGS`].
pub const NEW_SENDER: &str = "<changed@example.org>";
/// The ESMTP arguments of [`NEW_SENDER`].
pub const NEW_SENDER_ARGS: &str = "RET=HDRS ENVID=milterkit-interop";
/// The reply code for recipients starting with `reject`.
pub const REJECT_CODE: u16 = 550;
/// The enhanced status code for recipients starting with `reject`.
pub const REJECT_ENHANCED: &str = "5.7.1";
/// The reply text for recipients starting with `reject`.
pub const REJECT_TEXT: &str = "Refused by the interop milter";
/// The code of the multi-line reply to a `reject-mail…` sender.
pub const MAIL_REJECT_CODE: u16 = 550;
/// The enhanced code of the multi-line reply to a `reject-mail…` sender.
pub const MAIL_REJECT_ENHANCED: &str = "5.7.26";
/// The lines of the multi-line reply to a `reject-mail…` sender.
pub const MAIL_REJECT_LINES: [&str; 3] = [
    "Sender refused by the interop milter",
    "second line of the reply",
    "third and last line",
];
/// The code of the multi-line reply to a `tempfail-mail…` sender.
pub const MAIL_TEMPFAIL_CODE: u16 = 450;
/// The enhanced code of the multi-line reply to a `tempfail-mail…` sender.
pub const MAIL_TEMPFAIL_ENHANCED: &str = "4.7.0";
/// The lines of the multi-line reply to a `tempfail-mail…` sender.
pub const MAIL_TEMPFAIL_LINES: [&str; 2] =
    ["Sender deferred by the interop milter", "try again later"];
/// The reason [`Action::Quarantine`] gives.
pub const QUARANTINE_REASON: &str = "held by the interop milter";
/// The body of [`Action::ReplaceBody`].
pub const SMALL_BODY: &str = "This body was replaced by the interop milter.\r\n";
/// The header [`Action::Stamp`] adds: the message's number on its milter connection.
pub const STAMP_HEADER: &str = "X-Interop-Seq";

/// The body of [`Action::ReplaceBodyLarge`]: 1,600 lines of 76 characters (124,800 bytes, more
/// than one 65,535-byte chunk; lines short enough for Sendmail's 990-byte line limit).
pub fn large_body() -> Vec<u8> {
    let mut out = Vec::with_capacity(1600 * 78);
    for i in 0..1600 {
        let line = format!("line {i:05} of the large body replaced by the interop milter ");
        out.extend_from_slice(format!("{line:=<76}\r\n").as_bytes());
    }
    out
}

/// What the milter does at end of message, by the words of [`CONTROL_HEADER`]. Words with
/// arguments separate them with `:` (`insert-header:2`, `change:X-Dup:2`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// `add-header`: adds [`ADDED_HEADER`] at the end of the headers.
    AddHeader,
    /// `change-header`: sets the first `Subject` to [`CHANGED_SUBJECT`].
    ChangeHeader,
    /// `delete-header`: deletes the first [`DELETED_HEADER`].
    DeleteHeader,
    /// `add-rcpt`: adds [`ADDED_RCPT`] with [`ADDED_RCPT_ARGS`].
    AddRcpt,
    /// `delete-rcpt`: deletes every recipient whose local part starts with `delete`, as its RCPT
    /// named it.
    DeleteRcpt,
    /// `change-from`: changes the sender to [`NEW_SENDER`] with [`NEW_SENDER_ARGS`].
    ChangeFrom,
    /// `replace-body`: replaces the body with [`SMALL_BODY`].
    ReplaceBody,
    /// `replace-body-large`: replaces the body with [`large_body`].
    ReplaceBodyLarge,
    /// `replace-body-empty`: replaces the body with nothing.
    ReplaceBodyEmpty,
    /// `stamp`: adds [`STAMP_HEADER`] with the message's number on its milter connection.
    Stamp,
    /// `tempfail`: answers tempfail at end of message.
    Tempfail,
    /// `discard`: answers discard at end of message.
    Discard,
    /// `insert-header:N`: inserts `X-Interop-Ins-N: inserted at N` at index N.
    InsertHeader(u32),
    /// `change:NAME:N`: sets the N-th (1-based) header NAME to `changed NAME N`.
    Change(String, u32),
    /// `delete:NAME:N`: deletes the N-th (1-based) header NAME.
    Delete(String, u32),
    /// `add:NAME`: adds `NAME: added NAME` (`smfi_addheader`).
    Add(String),
    /// `add-folded`: adds `X-Interop-Folded` with a value folded over two lines.
    AddFolded,
    /// `add-spaced`: adds `X-Interop-Spaced` with a value that starts with two spaces.
    AddSpaced,
    /// `add-utf8`: adds `X-Interop-Utf8` with [`UTF8_VALUE`], 8-bit UTF-8.
    AddUtf8,
    /// `add-rcpt:ADDR`: adds ADDR, without ESMTP arguments.
    AddRcptExact(String),
    /// `delete-rcpt:ADDR`: deletes ADDR, spelled exactly so.
    DeleteRcptExact(String),
    /// `change-from:ADDR`: changes the sender to ADDR, without ESMTP arguments.
    ChangeFromExact(String),
    /// `quarantine`: quarantines the message with [`QUARANTINE_REASON`].
    Quarantine,
    /// `panic:STAGE`, `error:STAGE`, `stall:STAGE`: fails on purpose at STAGE (`header`,
    /// `body` or `eom`); see [`Failure`].
    Fail(Failure, FailStage),
}

/// How [`Action::Fail`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failure {
    /// The handler panics.
    Panic,
    /// The handler returns an error.
    Error,
    /// The handler sleeps for [`STALL`], far past any deadline.
    Stall,
    /// The handler sleeps for [`SLOW`], then goes on: a message in flight for a while.
    Slow,
}

/// Where [`Action::Fail`] fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailStage {
    /// In the header handler, at the control header itself.
    Header,
    /// In the body handler, at the first chunk.
    Body,
    /// In the end-of-message handler.
    Eom,
}

/// How long a [`Failure::Stall`] sleeps.
pub const STALL: Duration = Duration::from_secs(600);

/// How long a [`Failure::Slow`] sleeps before going on.
pub const SLOW: Duration = Duration::from_secs(3);

/// The value [`Action::AddFolded`] adds.
pub const FOLDED_VALUE: &str = "first line\n\tsecond line";
/// The value [`Action::AddUtf8`] adds.
pub const UTF8_VALUE: &str = "Grüße aus Zürich, 東京";
/// The value [`Action::AddSpaced`] adds.
pub const SPACED_VALUE: &str = "  two leading spaces";

impl Action {
    /// The action a word of [`CONTROL_HEADER`] names.
    pub fn from_word(word: &str) -> Option<Action> {
        let mut parts = word.splitn(3, ':');
        let verb = parts.next()?;
        let (a, b) = (parts.next(), parts.next());
        let number = |s: Option<&str>| s.and_then(|s| s.parse::<u32>().ok());
        Some(match (verb, a, b) {
            ("add-header", None, None) => Action::AddHeader,
            ("change-header", None, None) => Action::ChangeHeader,
            ("delete-header", None, None) => Action::DeleteHeader,
            ("add-rcpt", None, None) => Action::AddRcpt,
            ("delete-rcpt", None, None) => Action::DeleteRcpt,
            ("change-from", None, None) => Action::ChangeFrom,
            ("replace-body", None, None) => Action::ReplaceBody,
            ("replace-body-large", None, None) => Action::ReplaceBodyLarge,
            ("replace-body-empty", None, None) => Action::ReplaceBodyEmpty,
            ("stamp", None, None) => Action::Stamp,
            ("tempfail", None, None) => Action::Tempfail,
            ("discard", None, None) => Action::Discard,
            ("add-folded", None, None) => Action::AddFolded,
            ("add-spaced", None, None) => Action::AddSpaced,
            ("add-utf8", None, None) => Action::AddUtf8,
            ("quarantine", None, None) => Action::Quarantine,
            ("panic" | "error" | "stall" | "slow", Some(stage), None) => {
                let how = match verb {
                    "panic" => Failure::Panic,
                    "error" => Failure::Error,
                    "slow" => Failure::Slow,
                    _ => Failure::Stall,
                };
                let stage = match stage {
                    "header" => FailStage::Header,
                    "body" => FailStage::Body,
                    "eom" => FailStage::Eom,
                    _ => return None,
                };
                Action::Fail(how, stage)
            }
            ("insert-header", n, None) => Action::InsertHeader(number(n)?),
            ("add", Some(name), None) => Action::Add(name.to_owned()),
            ("change", Some(name), n) => Action::Change(name.to_owned(), number(n)?),
            ("delete", Some(name), n) => Action::Delete(name.to_owned(), number(n)?),
            // An address may contain ':' only in exotic forms; keep the rest whole.
            ("add-rcpt", Some(_), _) => Action::AddRcptExact(word["add-rcpt:".len()..].to_owned()),
            ("delete-rcpt", Some(_), _) => {
                Action::DeleteRcptExact(word["delete-rcpt:".len()..].to_owned())
            }
            ("change-from", Some(_), _) => {
                Action::ChangeFromExact(word["change-from:".len()..].to_owned())
            }
            _ => return None,
        })
    }
}

/// The 64-bit FNV-1a hash of `bytes`: a cheap fingerprint to compare bodies with.
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv1a_continue(FNV_OFFSET, bytes)
}

const FNV_OFFSET: u64 = 0xcbf2_9ce4_8422_2325;

fn fnv1a_continue(hash: u64, bytes: &[u8]) -> u64 {
    let hash = if hash == 0 { FNV_OFFSET } else { hash };
    bytes.iter().fold(hash, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// What the milter saw of one message that reached end of message.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Seen {
    /// The milter connection it came on (1 = the first the server accepted).
    pub connection: u32,
    /// Its number on that connection (1 = the first).
    pub seq: u32,
    /// The sender, as in MAIL.
    pub sender: String,
    /// The recipients the milter did not refuse, as in RCPT.
    pub rcpts: Vec<String>,
    /// Every header, as sent to the milter.
    pub headers: Vec<(String, String)>,
    /// Body bytes received.
    pub body_len: usize,
    /// Body chunks received.
    pub body_chunks: usize,
    /// [`fnv1a`] of the body bytes received, in order.
    pub body_hash: u64,
    /// The queue id macro `i` at end of message, if the MTA sent it.
    pub queue_id: Option<String>,
    /// The actions performed.
    pub actions: Vec<Action>,
    /// The words of the control header that named no action.
    pub unknown_words: Vec<String>,
}

/// The shared record of every [`Seen`] message of a [`MilterServer`].
#[derive(Debug, Clone, Default)]
pub struct Journal(Arc<Mutex<Vec<Seen>>>);

impl Journal {
    /// Everything recorded so far, in order.
    pub fn seen(&self) -> Vec<Seen> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    fn push(&self, seen: Seen) {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).push(seen);
    }
}

/// The test milter; one value per MTA connection.
#[derive(Debug)]
pub struct TestMilter {
    journal: Journal,
    connection: u32,
    messages: u32,
}

impl TestMilter {
    /// A milter for connection number `connection`, recording into `journal`.
    pub fn new(journal: Journal, connection: u32) -> TestMilter {
        TestMilter {
            journal,
            connection,
            messages: 0,
        }
    }
}

/// The per-message state of [`TestMilter`].
#[derive(Debug, Default)]
pub struct MessageState {
    seen: Seen,
}

fn local_part(addr: &str) -> &str {
    addr.trim_start_matches('<')
        .split('@')
        .next()
        .unwrap_or_default()
}

impl Milter for TestMilter {
    type Message = MessageState;
    const STAGES: Stages = Stages::MAIL
        .union(Stages::RCPT)
        .union(Stages::HEADER)
        .union(Stages::BODY)
        .union(Stages::EOM);
    const ACTIONS: Actions = Actions::ADD_HEADER
        .union(Actions::CHANGE_HEADER)
        .union(Actions::ADD_RCPT)
        .union(Actions::ADD_RCPT_PAR)
        .union(Actions::DELETE_RCPT)
        .union(Actions::CHANGE_FROM)
        .union(Actions::CHANGE_BODY)
        .union(Actions::QUARANTINE);

    async fn mail(&mut self, m: &mut MessageState, mail: Mail<'_>) -> MilterResult<Decision> {
        m.seen.sender = mail.address().to_string_lossy().into_owned();
        let local = local_part(&m.seen.sender);
        let refusals: [(&str, u16, &str, &[&str]); 2] = [
            (
                "reject-mail",
                MAIL_REJECT_CODE,
                MAIL_REJECT_ENHANCED,
                &MAIL_REJECT_LINES,
            ),
            (
                "tempfail-mail",
                MAIL_TEMPFAIL_CODE,
                MAIL_TEMPFAIL_ENHANCED,
                &MAIL_TEMPFAIL_LINES,
            ),
        ];
        for (prefix, code, enhanced, lines) in refusals {
            if local.starts_with(prefix) {
                return Ok(Decision::Reply(Reply::multiline(code, enhanced, lines)?));
            }
        }
        Ok(Decision::Continue)
    }

    async fn rcpt(&mut self, m: &mut MessageState, rcpt: Rcpt<'_>) -> MilterResult<Decision> {
        let addr = rcpt.address().to_string_lossy().into_owned();
        if local_part(&addr).starts_with("reject") {
            return Ok(Decision::Reply(Reply::new(
                REJECT_CODE,
                REJECT_ENHANCED,
                REJECT_TEXT,
            )?));
        }
        if local_part(&addr).starts_with("tempfail") {
            return Ok(Decision::Tempfail);
        }
        if local_part(&addr).starts_with("hang") {
            // Never answers: whoever drives it gives up at its own timeout.
            std::future::pending::<()>().await;
        }
        m.seen.rcpts.push(addr);
        Ok(Decision::Continue)
    }

    async fn header(&mut self, m: &mut MessageState, h: Header<'_>) -> MilterResult<Decision> {
        let (name, value) = (h.name().to_string_lossy(), h.value().to_string_lossy());
        if name.eq_ignore_ascii_case(CONTROL_HEADER) {
            for word in value
                .split([' ', ',', '\t', '\n'])
                .filter(|w| !w.is_empty())
            {
                match Action::from_word(word) {
                    Some(a) => m.seen.actions.push(a),
                    None => m.seen.unknown_words.push(word.to_owned()),
                }
            }
        }
        m.seen.headers.push((name.into_owned(), value.into_owned()));
        fail_at(&m.seen.actions, FailStage::Header).await?;
        Ok(Decision::Continue)
    }

    async fn body(
        &mut self,
        m: &mut MessageState,
        body: milterkit::Body<'_>,
    ) -> MilterResult<Decision> {
        if m.seen.body_chunks == 0 {
            fail_at(&m.seen.actions, FailStage::Body).await?;
        }
        m.seen.body_len += body.chunk().len();
        m.seen.body_chunks += 1;
        m.seen.body_hash = fnv1a_continue(m.seen.body_hash, body.chunk());
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, m: &mut MessageState, eom: &mut Eom<'_>) -> MilterResult<Decision> {
        self.messages += 1;
        let mut seen = std::mem::take(&mut m.seen);
        seen.connection = self.connection;
        seen.seq = self.messages;
        seen.queue_id = eom
            .macro_value("i")
            .map(|v| v.to_string_lossy().into_owned());
        let mut decision = Decision::Continue;
        if let Err(e) = fail_at(&seen.actions, FailStage::Eom).await {
            self.journal.push(seen);
            return Err(e);
        }
        for action in &seen.actions {
            match action {
                Action::AddHeader => eom.add_header(ADDED_HEADER.0, ADDED_HEADER.1)?,
                Action::ChangeHeader => eom.change_header("Subject", 1, CHANGED_SUBJECT)?,
                Action::DeleteHeader => eom.delete_header(DELETED_HEADER, 1)?,
                Action::AddRcpt => eom.add_rcpt_with_args(ADDED_RCPT, ADDED_RCPT_ARGS)?,
                Action::DeleteRcpt => {
                    for r in seen
                        .rcpts
                        .iter()
                        .filter(|r| local_part(r).starts_with("delete"))
                    {
                        eom.delete_rcpt(r)?;
                    }
                }
                Action::ChangeFrom => eom.change_from_with_args(NEW_SENDER, NEW_SENDER_ARGS)?,
                Action::ReplaceBody => eom.replace_body(SMALL_BODY.as_bytes())?,
                Action::ReplaceBodyLarge => eom.replace_body(large_body())?,
                Action::Stamp => eom.add_header(STAMP_HEADER, self.messages.to_string())?,
                Action::ReplaceBodyEmpty => eom.replace_body(&b""[..])?,
                Action::Tempfail => decision = Decision::Tempfail,
                Action::Discard => decision = Decision::Discard,
                Action::InsertHeader(n) => {
                    eom.insert_header(*n, format!("X-Interop-Ins-{n}"), format!("inserted at {n}"))?
                }
                Action::Change(name, n) => {
                    eom.change_header(name, *n, format!("changed {name} {n}"))?
                }
                Action::Delete(name, n) => eom.delete_header(name, *n)?,
                Action::Add(name) => eom.add_header(name, format!("added {name}"))?,
                Action::AddFolded => eom.add_header("X-Interop-Folded", FOLDED_VALUE)?,
                Action::AddSpaced => eom.add_header("X-Interop-Spaced", SPACED_VALUE)?,
                Action::AddUtf8 => eom.add_header("X-Interop-Utf8", UTF8_VALUE)?,
                Action::AddRcptExact(a) => eom.add_rcpt(a)?,
                Action::DeleteRcptExact(a) => eom.delete_rcpt(a)?,
                Action::ChangeFromExact(a) => eom.change_from(a)?,
                Action::Quarantine => eom.quarantine(QUARANTINE_REASON)?,
                Action::Fail(..) => {}
            }
        }
        self.journal.push(seen);
        Ok(decision)
    }
}

/// Fails as the first [`Action::Fail`] for `stage` in `actions` says, if there is one.
async fn fail_at(actions: &[Action], stage: FailStage) -> MilterResult<()> {
    for action in actions {
        match action {
            Action::Fail(how, at) if *at == stage => match how {
                Failure::Panic => panic!("the interop milter panics at {stage:?} on purpose"),
                Failure::Error => {
                    return Err(format!("the interop milter fails at {stage:?} on purpose").into())
                }
                Failure::Stall => tokio::time::sleep(STALL).await,
                Failure::Slow => tokio::time::sleep(SLOW).await,
            },
            _ => {}
        }
    }
    Ok(())
}

/// How the MTA reaches the milter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// TCP on 127.0.0.1, a free port.
    Tcp,
    /// A Unix-domain socket in a private directory, reachable by the `postfix` user.
    Unix,
}

enum Where {
    Tcp(u16),
    Unix(PathBuf),
}

/// [`TestMilter`] served with [`milterkit::serve`] on its own thread and tokio runtime, until
/// dropped (graceful shutdown).
pub struct MilterServer {
    at: Where,
    journal: Journal,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: mpsc::Receiver<String>,
    thread: Option<JoinHandle<()>>,
    _dir: Option<RunDir>,
}

impl std::fmt::Debug for MilterServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MilterServer")
            .field("postfix_spec", &self.postfix_spec())
            .finish_non_exhaustive()
    }
}

impl MilterServer {
    /// The [`Config`] [`MilterServer::start`] serves with: the defaults, with a 2 s grace
    /// period.
    pub fn default_config() -> Config {
        Config {
            grace_period: Duration::from_secs(2),
            ..Config::default()
        }
    }

    /// Binds the socket and starts serving with [`MilterServer::default_config`].
    pub fn start(transport: Transport) -> Result<MilterServer> {
        MilterServer::start_with(transport, MilterServer::default_config())
    }

    /// Binds the socket and starts serving [`TestMilter`] with `config`.
    pub fn start_with(transport: Transport, config: Config) -> Result<MilterServer> {
        let journal = Journal::default();
        let factory = {
            let journal = journal.clone();
            let connections = Arc::new(AtomicU32::new(0));
            move || {
                let n = connections.fetch_add(1, Ordering::Relaxed) + 1;
                TestMilter::new(journal.clone(), n)
            }
        };
        MilterServer::serve(transport, config, factory, journal)
    }

    /// Binds the socket and serves the milters `factory` makes with
    /// [`MilterServer::default_config`], no journal: for milters other than [`TestMilter`].
    pub fn serving<M, F>(transport: Transport, factory: F) -> Result<MilterServer>
    where
        M: milterkit::Milter,
        F: Fn() -> M + Send + Sync + 'static,
    {
        MilterServer::serve(
            transport,
            MilterServer::default_config(),
            factory,
            Journal::default(),
        )
    }

    /// Binds the socket and starts serving the milters `factory` makes, with `config`, on a
    /// thread and runtime of their own; [`MilterServer::journal`] is `journal`.
    pub fn serve<M, F>(
        transport: Transport,
        config: Config,
        factory: F,
        journal: Journal,
    ) -> Result<MilterServer>
    where
        M: milterkit::Milter,
        F: Fn() -> M + Send + Sync + 'static,
    {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("building the milter's runtime")?;
        let (dir, spec) = match transport {
            Transport::Tcp => (None, "inet:0@127.0.0.1".to_owned()),
            Transport::Unix => {
                let dir = RunDir::new("milter")?;
                let spec = format!("unix:{}", dir.join("milter.sock").display());
                (Some(dir), spec)
            }
        };
        let listener = rt
            .block_on(milterkit::bind(&spec))
            .context(format!("binding the milter on {spec}"))?;
        let at = match listener.local_spec().context("milter address")? {
            milterkit::SocketSpec::Inet { port, .. } => Where::Tcp(port),
            milterkit::SocketSpec::Unix(path) => {
                // Postfix's smtpd runs as `postfix`: connecting needs write permission.
                set_mode(&path, 0o666)?;
                Where::Unix(path)
            }
        };
        let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("interop-milter".into())
            .spawn(move || {
                let serve = milterkit::serve(listener, factory)
                    .with_config(config)
                    .with_graceful_shutdown(async {
                        let _ = stop_rx.await;
                    });
                let outcome = match rt.block_on(serve.into_future()) {
                    Ok(()) => String::new(),
                    Err(e) => format!("the milter server failed: {e}"),
                };
                let _ = done_tx.send(outcome);
            })
            .context("spawning the milter thread")?;
        Ok(MilterServer {
            at,
            journal,
            stop: Some(stop_tx),
            done,
            thread: Some(thread),
            _dir: dir,
        })
    }

    /// The socket as Postfix spells it: `inet:127.0.0.1:PORT` or `unix:/path`.
    pub fn postfix_spec(&self) -> String {
        match &self.at {
            Where::Tcp(port) => format!("inet:127.0.0.1:{port}"),
            Where::Unix(path) => format!("unix:{}", path.display()),
        }
    }

    /// The socket as Sendmail spells it: `inet:PORT@127.0.0.1` or `local:/path`.
    pub fn sendmail_spec(&self) -> String {
        match &self.at {
            Where::Tcp(port) => format!("inet:{port}@127.0.0.1"),
            Where::Unix(path) => format!("local:{}", path.display()),
        }
    }

    /// The Unix socket's path, if it serves on one.
    pub fn socket_path(&self) -> Option<&Path> {
        match &self.at {
            Where::Tcp(_) => None,
            Where::Unix(p) => Some(p),
        }
    }

    /// What the milter saw.
    pub fn journal(&self) -> &Journal {
        &self.journal
    }

    /// Stops serving and waits (a few seconds at most) for the server to end; returns its
    /// error, if it failed.
    pub fn shutdown(mut self) -> Result<()> {
        self.stop_now()
    }

    /// Like [`MilterServer::shutdown`], for a server that stays in place (inside a `Rig`):
    /// graceful, so open messages finish first.
    pub fn stop(&mut self) -> Result<()> {
        self.stop_now()
    }

    fn stop_now(&mut self) -> Result<()> {
        let Some(stop) = self.stop.take() else {
            return Ok(());
        };
        let _ = stop.send(());
        match self.done.recv_timeout(Duration::from_secs(15)) {
            Ok(outcome) => {
                if let Some(t) = self.thread.take() {
                    let _ = t.join();
                }
                if outcome.is_empty() {
                    Ok(())
                } else {
                    Err(Error::new(outcome))
                }
            }
            // Still draining connections: leave the thread behind rather than hang the test.
            Err(_) => Err(Error::new("the milter server did not stop within 15 s")),
        }
    }
}

impl Drop for MilterServer {
    fn drop(&mut self) {
        if let Err(e) = self.stop_now() {
            eprintln!("{e}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn the_large_body_spans_two_chunks_in_short_lines() {
        let b = large_body();
        assert_eq!(b.len(), 124_800);
        assert!(b.len() > 65_535);
        assert!(b.split(|&c| c == b'\n').all(|l| l.len() <= 78));
    }

    #[test]
    fn control_words_name_actions() {
        assert_eq!(Action::from_word("add-rcpt"), Some(Action::AddRcpt));
        assert_eq!(Action::from_word("nonsense"), None);
        assert_eq!(
            Action::from_word("insert-header:2"),
            Some(Action::InsertHeader(2))
        );
        assert_eq!(
            Action::from_word("delete:X-Dup:1"),
            Some(Action::Delete("X-Dup".into(), 1))
        );
        assert_eq!(
            Action::from_word("delete-rcpt:<B@x>"),
            Some(Action::DeleteRcptExact("<B@x>".into()))
        );
        assert_eq!(Action::from_word("change:X-Dup"), None);
        assert_eq!(local_part("<reject-me@example.net>"), "reject-me");
    }
}
