//! `milterkit test`: scripted test cases for a milter, read from TOML files (the format is in
//! milterkit-cli's README.md and in [`FORMAT`], shown by `milterkit test --help`).
//!
//! Every file is read and checked before any message is sent, so that a mistake in the last file
//! does not come after minutes of runs. Each message is one SMTP session, as Postfix and Sendmail
//! give each SMTP session its own milter connection: one connection per message, opened, run
//! (CONNECT to end of message) and closed as the profile's MTA closes it. A milter that keeps
//! state across messages of one connection is therefore not tested here.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::envelope::split_envelope;
use crate::error::print;
use bytes::Bytes;
use milterkit::mta::{Connection, Outcome, Profile, Transaction, Verdict};
use milterkit::proto::message::Message;
use milterkit::proto::Sent;
use milterkit::{Decision, Modification, Stage};
use serde::{Deserialize, Serialize};
use toml::Spanned;

/// The case file format, for `milterkit test --help`.
pub(crate) const FORMAT: &str = r#"Examples:
  milterkit test cases/policy.toml
  milterkit test --socket unix:/run/opendkim/opendkim.sock cases/*.toml --json

Case file (TOML); every key but `name`, `rcpt` and one of `message`/`message_file` is optional:

  socket = "inet:7357@127.0.0.1"      # --socket overrides it
  profile = "postfix"                 # or "sendmail"

  [[message]]                         # one table per message; each is one SMTP session
  name = "a retired recipient is refused"
  from = "<alice@example.org> BODY=8BITMIME"          # address, then ESMTP arguments
  rcpt = ["<bob@example.net>", "<carol@old.example> NOTIFY=NEVER"]
  client = "mx.example.com[192.0.2.7]"                # NAME[IP], IP or NAME
  client_port = 40000
  helo = "mx.example.com"
  macros.CONNECT = { j = "mail.example.org" }         # CONNECT HELO MAIL RCPT DATA EOH EOM
  macros.MAIL = { auth_type = "LOGIN" }
  # The message, inline, or message_file = "mail.eml" (relative to the case file).
  message = """
  Subject: hello

  Hi.
  """

  [message.expect]
  verdict = "accept"                  # accept, reject, tempfail, discard
  reply = "550 5.1.6 recipient has moved"             # the milter's reply, as on the wire
  reply_code = 550
  decisions = { RCPT = ["continue", "reply 550 5.1.6 recipient has moved"], EOM = "continue" }
      # one word for every step of that stage, or a list step by step; words: continue accept
      # reject tempfail discard skip shutdown, "reply TEXT", "skipped" (not sent), "no reply"
  refused = ["<carol@old.example>"]   # recipients the milter refused, in order
  sender = "<alice@example.org> BODY=8BITMIME"        # the delivered envelope
  recipients = ["<bob@example.net>"]
  modifications = [                   # exactly these, in order (or `modifications_include`:
    { add_header = "X-Policy", value = "checked" },   #  each of these, among others)
    { insert_header = "X-Top", index = 0, value = "v" },
    { change_header = "Subject", index = 1, value = "new" },    # index: 1 when left out
    { delete_header = "X-Remove", index = 1 },
    { change_from = "<b@example.org>", args = "RET=HDRS" },
    { add_rcpt = "<c@example.org>", args = "NOTIFY=NEVER" },
    { delete_rcpt = "<d@example.org>" },
    { replace_body = "New body.\r\n" },     # the replacement body chunks joined
    { quarantine = "reason" },
  ]
  headers = { X-Policy = "checked", X-Remove = false, Date = true }
      # in the delivered message: a field with this value (white space around it ignored),
      # false: no such field, true: at least one
  body = "Hi.\n"                      # the delivered body; CR before LF ignored

Exit status: 0 every message passed, 1 a message failed (or its milter could not be reached),
2 a usage error or a case file that cannot be read or understood."#;

/// `milterkit test` arguments.
#[derive(Debug, clap::Args)]
pub(crate) struct TestArgs {
    /// Case files (TOML); each names its milter socket, MTA profile and messages.
    #[arg(required = true)]
    files: Vec<PathBuf>,
    /// The milter's socket, for every file (instead of the files' `socket`).
    #[arg(long)]
    socket: Option<String>,
    /// Print a JSON report (with each message's whole outcome) instead of text.
    #[arg(long)]
    json: bool,
    /// Longest wait for one reply, in seconds (progress restarts it).
    #[arg(long, default_value_t = 300)]
    timeout: u64,
}

/// Why a case file cannot be used (exit status 2).
#[derive(Debug, thiserror::Error)]
pub(crate) enum CaseError {
    /// The file (or a message file it names) cannot be read.
    #[error("{}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// Not TOML, or not the case format; the error names the line and column.
    #[error("{}: {source}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml says, with the line.
        source: toml::de::Error,
    },
    /// Valid TOML that says something the format does not allow.
    #[error("{}, line {line}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The line of the table at fault.
        line: usize,
        /// What is wrong.
        message: String,
    },
    /// Neither the file nor the command line names a socket.
    #[error("{}: no socket: give `socket = \"...\"` in the file or --socket", path.display())]
    NoSocket {
        /// The file.
        path: PathBuf,
    },
}

// ---------------------------------------------------------------------------------------------
// The file as written.

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawFile {
    socket: Option<String>,
    #[serde(default)]
    profile: ProfileKind,
    #[serde(rename = "message", default)]
    messages: Vec<Spanned<RawMessage>>,
}

#[derive(Debug, Deserialize, Serialize, Default, Clone, Copy)]
#[serde(rename_all = "lowercase")]
enum ProfileKind {
    #[default]
    Postfix,
    Sendmail,
}

impl ProfileKind {
    fn profile(self) -> Profile {
        match self {
            ProfileKind::Postfix => Profile::postfix(),
            ProfileKind::Sendmail => Profile::sendmail(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMessage {
    name: String,
    from: Option<String>,
    rcpt: Vec<String>,
    client: Option<String>,
    client_port: Option<u16>,
    helo: Option<String>,
    #[serde(default)]
    macros: BTreeMap<String, BTreeMap<String, String>>,
    message: Option<String>,
    message_file: Option<PathBuf>,
    #[serde(default)]
    expect: RawExpect,
}

#[derive(Debug, Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawExpect {
    verdict: Option<VerdictKind>,
    reply: Option<String>,
    reply_code: Option<u16>,
    #[serde(default)]
    decisions: BTreeMap<String, OneOrMany>,
    modifications: Option<Vec<Spanned<RawModification>>>,
    modifications_include: Option<Vec<Spanned<RawModification>>>,
    refused: Option<Vec<String>>,
    sender: Option<String>,
    recipients: Option<Vec<String>>,
    #[serde(default)]
    headers: BTreeMap<String, HeaderExpect>,
    body: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(untagged, expecting = "a decision (text) or a list of decisions")]
enum OneOrMany {
    One(String),
    Many(Vec<String>),
}

#[derive(Debug, Deserialize, Clone)]
#[serde(
    untagged,
    expecting = "a header value (text), true (present) or false (absent)"
)]
enum HeaderExpect {
    Present(bool),
    Value(String),
}

#[derive(Debug, Deserialize, Serialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum VerdictKind {
    Accept,
    Reject,
    Tempfail,
    Discard,
}

impl VerdictKind {
    fn name(self) -> &'static str {
        match self {
            VerdictKind::Accept => "accept",
            VerdictKind::Reject => "reject",
            VerdictKind::Tempfail => "tempfail",
            VerdictKind::Discard => "discard",
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModification {
    add_header: Option<String>,
    insert_header: Option<String>,
    change_header: Option<String>,
    delete_header: Option<String>,
    change_from: Option<String>,
    add_rcpt: Option<String>,
    delete_rcpt: Option<String>,
    replace_body: Option<String>,
    quarantine: Option<String>,
    value: Option<String>,
    index: Option<u32>,
    args: Option<String>,
}

// ---------------------------------------------------------------------------------------------
// The file as understood.

/// One case file, checked.
#[derive(Debug)]
struct CaseFile {
    path: PathBuf,
    socket: String,
    profile: ProfileKind,
    messages: Vec<Case>,
}

/// One message of a case file and what is expected of it.
#[derive(Debug)]
struct Case {
    name: String,
    line: usize,
    tx: Transaction,
    expect: Expect,
}

#[derive(Debug)]
enum StageExpect {
    /// Every step of the stage (at least one).
    Every(String),
    /// Step by step.
    Steps(Vec<String>),
}

#[derive(Debug, Default)]
struct Expect {
    verdict: Option<VerdictKind>,
    reply: Option<String>,
    reply_code: Option<u16>,
    decisions: Vec<(Stage, StageExpect)>,
    /// `true`: exactly these; `false`: each of these among others.
    modifications: Option<(bool, Vec<String>)>,
    refused: Option<Vec<String>>,
    sender: Option<String>,
    recipients: Option<Vec<String>>,
    headers: Vec<(String, HeaderExpect)>,
    body: Option<String>,
}

/// The stages a macro may be sent with.
const MACRO_STAGES: [Stage; 7] = [
    Stage::Connect,
    Stage::Helo,
    Stage::Mail,
    Stage::Rcpt,
    Stage::Data,
    Stage::Eoh,
    Stage::Eom,
];

const DECISION_WORDS: [&str; 10] = [
    "continue", "accept", "reject", "tempfail", "discard", "skip", "shutdown", "reply", "skipped",
    "no reply",
];

/// The 1-based line of byte `offset` in `text`.
fn line_of(text: &str, offset: usize) -> usize {
    text.get(..offset)
        .map_or(1, |t| t.bytes().filter(|&b| b == b'\n').count() + 1)
}

fn stage_named(name: &str) -> Option<Stage> {
    Stage::ALL.into_iter().find(|s| s.name() == name)
}

/// Reads and checks one case file.
fn load(path: &Path, socket: Option<&str>) -> Result<CaseFile, CaseError> {
    let text = std::fs::read_to_string(path).map_err(|source| CaseError::Read {
        path: path.to_owned(),
        source,
    })?;
    let raw: RawFile = toml::from_str(&text).map_err(|source| CaseError::Parse {
        path: path.to_owned(),
        source,
    })?;
    let socket = socket
        .map(str::to_owned)
        .or(raw.socket)
        .ok_or_else(|| CaseError::NoSocket {
            path: path.to_owned(),
        })?;
    let invalid = |line: usize, message: String| CaseError::Invalid {
        path: path.to_owned(),
        line,
        message,
    };
    if raw.messages.is_empty() {
        return Err(invalid(1, "no [[message]]".into()));
    }
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut messages = Vec::new();
    for spanned in raw.messages {
        let line = line_of(&text, spanned.span().start);
        let m = spanned.into_inner();
        let name = m.name.clone();
        let at = |message: String| invalid(line, format!("message {name:?}: {message}"));
        let content = match (&m.message, &m.message_file) {
            (Some(t), None) => Bytes::from(t.clone()),
            (None, Some(f)) => {
                let file = dir.join(f);
                Bytes::from(
                    std::fs::read(&file)
                        .map_err(|e| at(format!("message_file {}: {e}", file.display())))?,
                )
            }
            _ => return Err(at("give one of `message` and `message_file`".into())),
        };
        if m.rcpt.is_empty() {
            return Err(at("`rcpt` lists no recipient".into()));
        }
        let (from, from_args) = split_envelope(m.from.as_deref().unwrap_or("<sender@example.org>"));
        let mut tx = Transaction::new()
            .from_with_args(from, from_args)
            .message(content);
        for r in &m.rcpt {
            let (address, args) = split_envelope(r);
            tx = tx.to_with_args(address, args);
        }
        if let Some(c) = &m.client {
            let (name, ip) = crate::parse_client(c);
            let port = tx.client.port;
            tx = tx.client(name.as_deref(), ip, port);
        }
        if let Some(port) = m.client_port {
            tx.client.port = port;
        }
        if let Some(h) = &m.helo {
            tx = tx.helo(h);
        }
        for (stage, pairs) in &m.macros {
            let Some(s) = stage_named(stage).filter(|s| MACRO_STAGES.contains(s)) else {
                return Err(at(format!(
                    "macros.{stage}: the stage must be one of CONNECT HELO MAIL RCPT DATA EOH EOM"
                )));
            };
            for (name, value) in pairs {
                tx = tx.with_macro(s, name, value);
            }
        }
        let expect = expectations(m.expect, &text)
            .map_err(|(l, e)| invalid(l.unwrap_or(line), format!("message {name:?}: {e}")))?;
        messages.push(Case {
            name: m.name,
            line,
            tx,
            expect,
        });
    }
    Ok(CaseFile {
        path: path.to_owned(),
        socket,
        profile: raw.profile,
        messages,
    })
}

/// Checks `[message.expect]`; an error carries the line of the item at fault when it has one.
fn expectations(raw: RawExpect, text: &str) -> Result<Expect, (Option<usize>, String)> {
    let mut decisions = Vec::new();
    for (stage, e) in raw.decisions {
        let s = stage_named(&stage).ok_or_else(|| {
            (
                None,
                format!("decisions.{stage}: not a stage (CONNECT HELO MAIL RCPT DATA HEADER EOH BODY EOM UNKNOWN)"),
            )
        })?;
        let words = match &e {
            OneOrMany::One(w) => std::slice::from_ref(w),
            OneOrMany::Many(v) => v.as_slice(),
        };
        for w in words {
            let known = DECISION_WORDS
                .iter()
                .any(|k| w == k || (*k == "reply" && w.starts_with("reply ")));
            if !known {
                return Err((
                    None,
                    format!(
                        "decisions.{stage}: {w:?} is not a decision ({})",
                        DECISION_WORDS.join(", ")
                    ),
                ));
            }
        }
        decisions.push((
            s,
            match e {
                OneOrMany::One(w) => StageExpect::Every(w),
                OneOrMany::Many(v) => StageExpect::Steps(v),
            },
        ));
    }
    decisions.sort_by_key(|(s, _)| *s);
    let modifications = match (raw.modifications, raw.modifications_include) {
        (Some(_), Some(_)) => {
            return Err((
                None,
                "give `modifications` (exact) or `modifications_include`, not both".into(),
            ))
        }
        (Some(v), None) => Some((true, modification_lines(v, text)?)),
        (None, Some(v)) => Some((false, modification_lines(v, text)?)),
        (None, None) => None,
    };
    Ok(Expect {
        verdict: raw.verdict,
        reply: raw.reply,
        reply_code: raw.reply_code,
        decisions,
        modifications,
        refused: raw.refused,
        sender: raw.sender.map(|s| envelope_text(&s)),
        recipients: raw
            .recipients
            .map(|v| v.iter().map(|r| envelope_text(r)).collect()),
        headers: raw.headers.into_iter().collect(),
        body: raw.body,
    })
}

/// An envelope as written in a case file, spaces normalised.
fn envelope_text(s: &str) -> String {
    let (a, args) = split_envelope(s);
    std::iter::once(a).chain(args).collect::<Vec<_>>().join(" ")
}

/// Each expected modification as the line the report shows.
fn modification_lines(
    v: Vec<Spanned<RawModification>>,
    text: &str,
) -> Result<Vec<String>, (Option<usize>, String)> {
    let mut out = Vec::new();
    for spanned in v {
        let line = line_of(text, spanned.span().start);
        let m = modification(spanned.into_inner()).map_err(|e| (Some(line), e))?;
        out.push(modification_line(&m));
    }
    Ok(out)
}

/// The modification a table describes.
fn modification(r: RawModification) -> Result<Modification, String> {
    let b = |s: &str| Bytes::copy_from_slice(s.as_bytes());
    let kinds = [
        ("add_header", &r.add_header),
        ("insert_header", &r.insert_header),
        ("change_header", &r.change_header),
        ("delete_header", &r.delete_header),
        ("change_from", &r.change_from),
        ("add_rcpt", &r.add_rcpt),
        ("delete_rcpt", &r.delete_rcpt),
        ("replace_body", &r.replace_body),
        ("quarantine", &r.quarantine),
    ];
    let given: Vec<(&str, &String)> = kinds
        .iter()
        .filter_map(|(k, v)| v.as_ref().map(|v| (*k, v)))
        .collect();
    let [(kind, what)] = given[..] else {
        let names: Vec<&str> = kinds.iter().map(|(k, _)| *k).collect();
        return Err(format!(
            "a modification names exactly one of {}",
            names.join(", ")
        ));
    };
    let allowed: &[&str] = match kind {
        "add_header" => &["value"],
        "insert_header" | "change_header" => &["value", "index"],
        "delete_header" => &["index"],
        "change_from" | "add_rcpt" => &["args"],
        _ => &[],
    };
    for (extra, present) in [
        ("value", r.value.is_some()),
        ("index", r.index.is_some()),
        ("args", r.args.is_some()),
    ] {
        if present && !allowed.contains(&extra) {
            return Err(format!("{kind} takes no `{extra}`"));
        }
    }
    let value = || {
        r.value
            .as_deref()
            .map(b)
            .ok_or_else(|| format!("{kind} needs a `value`"))
    };
    let args = r.args.as_deref().map(b);
    Ok(match kind {
        "add_header" => Modification::AddHeader {
            name: b(what),
            value: value()?,
        },
        "insert_header" => Modification::InsertHeader {
            index: r
                .index
                .ok_or_else(|| "insert_header needs an `index` (0: on top)".to_owned())?,
            name: b(what),
            value: value()?,
        },
        "change_header" => Modification::ChangeHeader {
            index: r.index.unwrap_or(1),
            name: b(what),
            value: value()?,
        },
        "delete_header" => Modification::ChangeHeader {
            index: r.index.unwrap_or(1),
            name: b(what),
            value: Bytes::new(),
        },
        "change_from" => Modification::ChangeFrom {
            sender: b(what),
            args,
        },
        "add_rcpt" => Modification::AddRcptPar {
            rcpt: b(what),
            args,
        },
        "delete_rcpt" => Modification::DeleteRcpt { rcpt: b(what) },
        "replace_body" => Modification::ReplaceBody { chunk: b(what) },
        _ => Modification::Quarantine { reason: b(what) },
    })
}

/// Bytes for a report line: lossy UTF-8, CR, LF, tab and other controls escaped.
fn escaped(b: &[u8]) -> String {
    let mut s = String::new();
    for c in String::from_utf8_lossy(b).chars() {
        match c {
            '\r' => s.push_str("\\r"),
            '\n' => s.push_str("\\n"),
            '\t' => s.push_str("\\t"),
            '\\' => s.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(s, "\\u{{{:x}}}", u32::from(c));
            }
            c => s.push(c),
        }
    }
    s
}

/// One modification as one line (the same for expected and actual ones).
fn modification_line(m: &Modification) -> String {
    let args = |a: &Option<Bytes>| {
        a.as_ref()
            .filter(|a| !a.is_empty())
            .map(|a| format!(" {}", escaped(a)))
            .unwrap_or_default()
    };
    match m {
        Modification::AddHeader { name, value } => {
            format!("add header {}: {}", escaped(name), escaped(value))
        }
        Modification::InsertHeader { index, name, value } => format!(
            "insert header at {index} {}: {}",
            escaped(name),
            escaped(value)
        ),
        Modification::ChangeHeader { index, name, value } if value.is_empty() => {
            format!("delete header {} #{}", escaped(name), (*index).max(1))
        }
        Modification::ChangeHeader { index, name, value } => format!(
            "change header {} #{}: {}",
            escaped(name),
            (*index).max(1),
            escaped(value)
        ),
        Modification::ChangeFrom { sender, args: a } => {
            format!("change sender {}{}", escaped(sender), args(a))
        }
        Modification::AddRcpt { rcpt } => format!("add recipient {}", escaped(rcpt)),
        Modification::AddRcptPar { rcpt, args: a } => {
            format!("add recipient {}{}", escaped(rcpt), args(a))
        }
        Modification::DeleteRcpt { rcpt } => format!("delete recipient {}", escaped(rcpt)),
        Modification::ReplaceBody { chunk } => format!("replace body: {}", escaped(chunk)),
        Modification::Quarantine { reason } => format!("quarantine: {}", escaped(reason)),
        other => format!("{other:?}"),
    }
}

/// The milter's modifications as lines, consecutive body chunks joined into one.
fn actual_modifications(mods: &[Modification]) -> Vec<String> {
    let mut merged: Vec<Modification> = Vec::new();
    for m in mods {
        if let (
            Modification::ReplaceBody { chunk },
            Some(Modification::ReplaceBody { chunk: last }),
        ) = (m, merged.last_mut())
        {
            let mut joined = last.to_vec();
            joined.extend_from_slice(chunk);
            *last = Bytes::from(joined);
            continue;
        }
        merged.push(m.clone());
    }
    merged.iter().map(modification_line).collect()
}

// ---------------------------------------------------------------------------------------------
// Checking an outcome.

/// One expectation not met.
#[derive(Debug, Serialize)]
struct Failure {
    /// What was checked: `verdict`, `decisions at RCPT`, `header X-Policy`, ...
    check: String,
    expected: String,
    actual: String,
    /// For lists and the body: a line diff, `- ` expected only, `+ ` actual only, `  ` both.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    diff: Vec<String>,
}

/// A line diff of `expected` and `actual`.
fn line_diff<S: AsRef<str> + Eq + std::hash::Hash>(expected: &[S], actual: &[S]) -> Vec<String> {
    let mut out = Vec::new();
    for op in similar::capture_diff_slices(similar::Algorithm::Myers, expected, actual) {
        let (tag, old, new) = op.as_tag_tuple();
        match tag {
            similar::DiffTag::Equal => {
                out.extend(expected[old].iter().map(|l| format!("  {}", l.as_ref())));
            }
            similar::DiffTag::Delete => {
                out.extend(expected[old].iter().map(|l| format!("- {}", l.as_ref())));
            }
            similar::DiffTag::Insert => {
                out.extend(actual[new].iter().map(|l| format!("+ {}", l.as_ref())));
            }
            similar::DiffTag::Replace => {
                out.extend(expected[old].iter().map(|l| format!("- {}", l.as_ref())));
                out.extend(actual[new].iter().map(|l| format!("+ {}", l.as_ref())));
            }
        }
    }
    out
}

fn list_text(v: &[String]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join("; ")
    }
}

fn verdict_name(v: Option<&Verdict>) -> &'static str {
    match v {
        Some(Verdict::Accept) => "accept",
        Some(Verdict::Discard) => "discard",
        Some(Verdict::Reject(_)) => "reject",
        Some(Verdict::Tempfail(_)) => "tempfail",
        Some(_) => "other",
        None => "none",
    }
}

fn step_words(decision: Option<&Decision>, sent: Sent) -> String {
    match (decision, sent) {
        (Some(d), _) => crate::report::decision_text(d),
        (None, Sent::Skipped) => "skipped".into(),
        (None, Sent::NoReply) => "no reply".into(),
        (None, _) => "none".into(),
    }
}

/// The failures found so far.
#[derive(Default)]
struct Failures(Vec<Failure>);

impl Failures {
    fn fail(&mut self, check: String, expected: String, actual: String, diff: Vec<String>) {
        self.0.push(Failure {
            check,
            expected,
            actual,
            diff,
        });
    }

    /// A failure of `check`, with a line diff, if the lists `want` and `actual` differ.
    fn lists(&mut self, check: &str, want: &[String], actual: &[String]) {
        if want != actual {
            self.fail(
                check.into(),
                list_text(want),
                list_text(actual),
                line_diff(want, actual),
            );
        }
    }
}

/// Every expectation `e` has that `out` does not meet.
fn check(e: &Expect, out: &Outcome) -> Vec<Failure> {
    let mut f = Failures::default();
    let verdict = verdict_name(out.verdict.as_ref());
    if let Some(v) = e.verdict {
        if v.name() != verdict {
            f.fail("verdict".into(), v.name().into(), verdict.into(), vec![]);
        }
    }
    let reply = match &out.verdict {
        Some(Verdict::Reject(Some(r)) | Verdict::Tempfail(Some(r))) => Some(r),
        _ => None,
    };
    let reply_text = reply.map_or_else(
        || "none (no reply from the milter)".to_owned(),
        |r| r.to_string().replace("\r\n", " / "),
    );
    if let Some(want) = &e.reply {
        if reply.is_none() || *want != reply_text {
            f.fail("reply".into(), want.clone(), reply_text.clone(), vec![]);
        }
    }
    if let Some(code) = e.reply_code {
        if reply.map(|r| r.code()) != Some(code) {
            f.fail("reply code".into(), code.to_string(), reply_text, vec![]);
        }
    }
    for (stage, want) in &e.decisions {
        let actual: Vec<String> = out
            .steps
            .iter()
            .filter(|s| s.stage == *stage)
            .map(|s| step_words(s.decision.as_ref(), s.sent))
            .collect();
        let expected = match want {
            StageExpect::Every(w) => vec![w.clone(); actual.len().max(1)],
            StageExpect::Steps(v) => v.clone(),
        };
        if expected != actual {
            let actual_text = if actual.is_empty() {
                "no such step".into()
            } else {
                list_text(&actual)
            };
            let diff = if expected.len() > 1 || actual.len() > 1 {
                line_diff(&expected, &actual)
            } else {
                vec![]
            };
            f.fail(
                format!("decisions at {stage}"),
                list_text(&expected),
                actual_text,
                diff,
            );
        }
    }
    if let Some((exact, want)) = &e.modifications {
        let actual = actual_modifications(&out.modifications);
        if *exact {
            f.lists("modifications", want, &actual);
        } else {
            let missing: Vec<String> = want
                .iter()
                .filter(|m| !actual.contains(m))
                .cloned()
                .collect();
            if !missing.is_empty() {
                let mut diff: Vec<String> = actual.iter().map(|l| format!("  {l}")).collect();
                diff.extend(missing.iter().map(|l| format!("- {l}")));
                f.fail(
                    "modifications (include)".into(),
                    list_text(&missing),
                    list_text(&actual),
                    diff,
                );
            }
        }
    }
    if let Some(want) = &e.refused {
        let actual: Vec<String> = out.refused.iter().map(|(r, _)| escaped(r)).collect();
        f.lists("refused recipients", want, &actual);
    }
    let not_delivered = || format!("not delivered (verdict {verdict})");
    let envelope = |env: &milterkit::proto::Envelope| {
        std::iter::once(&env.address)
            .chain(&env.args)
            .map(|b| escaped(b))
            .collect::<Vec<_>>()
            .join(" ")
    };
    if let Some(want) = &e.sender {
        let actual = out
            .delivery
            .as_ref()
            .map_or_else(not_delivered, |d| envelope(&d.sender));
        if *want != actual {
            f.fail("delivered sender".into(), want.clone(), actual, vec![]);
        }
    }
    if let Some(want) = &e.recipients {
        match &out.delivery {
            None => f.fail(
                "delivered recipients".into(),
                list_text(want),
                not_delivered(),
                vec![],
            ),
            Some(d) => {
                let actual: Vec<String> = d.recipients.iter().map(envelope).collect();
                f.lists("delivered recipients", want, &actual);
            }
        }
    }
    let delivered = out
        .delivery
        .as_ref()
        .map(|d| Message::parse(d.message.clone()));
    for (name, want) in &e.headers {
        let expected = match want {
            HeaderExpect::Present(true) => "present".to_owned(),
            HeaderExpect::Present(false) => "absent".to_owned(),
            HeaderExpect::Value(v) => format!("{:?}", v.trim()),
        };
        let Some(m) = &delivered else {
            f.fail(format!("header {name}"), expected, not_delivered(), vec![]);
            continue;
        };
        let values: Vec<String> = m
            .headers
            .iter()
            .filter(|h| h.name.eq_ignore_ascii_case(name.as_bytes()))
            .map(|h| String::from_utf8_lossy(&h.value).trim().to_owned())
            .collect();
        let ok = match want {
            HeaderExpect::Present(present) => values.is_empty() != *present,
            HeaderExpect::Value(v) => values.iter().any(|x| x == v.trim()),
        };
        if !ok {
            let actual = if values.is_empty() {
                "absent".to_owned()
            } else {
                values
                    .iter()
                    .map(|v| format!("{v:?}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            f.fail(format!("header {name}"), expected, actual, vec![]);
        }
    }
    if let Some(want) = &e.body {
        match &delivered {
            None => f.fail(
                "body".into(),
                escaped(want.as_bytes()),
                not_delivered(),
                vec![],
            ),
            Some(m) => {
                let actual = String::from_utf8_lossy(&m.body).replace("\r\n", "\n");
                let want = want.replace("\r\n", "\n");
                if actual != want {
                    let a: Vec<&str> = want.lines().collect();
                    let b: Vec<&str> = actual.lines().collect();
                    f.fail(
                        "body".into(),
                        escaped(want.as_bytes()),
                        escaped(actual.as_bytes()),
                        line_diff(&a, &b),
                    );
                }
            }
        }
    }
    f.0
}

// ---------------------------------------------------------------------------------------------
// Running and reporting.

/// What happened to one message.
#[derive(Debug, Serialize)]
struct MessageReport {
    name: String,
    /// The line of its `[[message]]` in the case file.
    line: usize,
    passed: bool,
    /// Why it could not run (cannot connect, protocol error), if it could not.
    error: Option<String>,
    failures: Vec<Failure>,
    outcome: Option<Outcome>,
}

#[derive(Debug, Serialize)]
struct FileReport {
    file: String,
    socket: String,
    profile: ProfileKind,
    messages: Vec<MessageReport>,
}

#[derive(Debug, Serialize)]
struct Report {
    passed: usize,
    failed: usize,
    files: Vec<FileReport>,
}

/// An error and its causes in one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        let _ = write!(s, ": {c}");
        source = c.source();
    }
    s
}

/// Runs one message on a connection of its own.
async fn run_one(file: &CaseFile, case: &Case, timeout: Duration) -> Result<Outcome, String> {
    let conn = Connection::open(&file.socket, file.profile.profile())
        .await
        .map_err(|e| format!("cannot connect to {}: {}", file.socket, chain(&e)))?;
    let mut conn = conn.with_reply_timeout(timeout);
    let out = conn
        .run(&case.tx)
        .await
        .map_err(|e| format!("the session with {} failed: {}", file.socket, chain(&e)))?;
    conn.quit()
        .await
        .map_err(|e| format!("closing the connection to {}: {}", file.socket, chain(&e)))?;
    Ok(out)
}

fn human(report: &Report) -> String {
    let mut s = String::new();
    for file in &report.files {
        let _ = writeln!(
            s,
            "{} ({}, {})",
            file.file,
            match file.profile {
                ProfileKind::Postfix => "postfix",
                ProfileKind::Sendmail => "sendmail",
            },
            file.socket
        );
        for m in &file.messages {
            let _ = writeln!(
                s,
                "  {}  {} (line {})",
                if m.passed { "PASS" } else { "FAIL" },
                m.name,
                m.line
            );
            if let Some(e) = &m.error {
                let _ = writeln!(s, "        error: {e}");
            }
            for f in &m.failures {
                if f.diff.is_empty() {
                    let _ = writeln!(
                        s,
                        "        {}: expected {}, got {}",
                        f.check, f.expected, f.actual
                    );
                } else {
                    let _ = writeln!(s, "        {} (- expected, + actual):", f.check);
                    for line in &f.diff {
                        let _ = writeln!(s, "          {line}");
                    }
                }
            }
        }
    }
    let _ = writeln!(
        s,
        "{} message(s): {} passed, {} failed",
        report.passed + report.failed,
        report.passed,
        report.failed
    );
    s
}

/// `milterkit test`: exit status 0 all passed, 1 one failed, 2 a case file is unusable.
pub(crate) async fn test(args: TestArgs) -> Result<u8, milterkit::BoxError> {
    let mut files = Vec::new();
    for path in &args.files {
        match load(path, args.socket.as_deref()) {
            Ok(f) => files.push(f),
            Err(e) => {
                eprintln!("milterkit test: {e}");
                return Ok(2);
            }
        }
    }
    let timeout = Duration::from_secs(args.timeout);
    let mut report = Report {
        passed: 0,
        failed: 0,
        files: Vec::new(),
    };
    for file in &files {
        let mut messages = Vec::new();
        for case in &file.messages {
            let (error, failures, outcome) = match run_one(file, case, timeout).await {
                Ok(out) => (None, check(&case.expect, &out), Some(out)),
                Err(e) => (Some(e), Vec::new(), None),
            };
            let passed = error.is_none() && failures.is_empty();
            if passed {
                report.passed += 1;
            } else {
                report.failed += 1;
            }
            messages.push(MessageReport {
                name: case.name.clone(),
                line: case.line,
                passed,
                error,
                failures,
                outcome,
            });
        }
        report.files.push(FileReport {
            file: file.path.display().to_string(),
            socket: file.socket.clone(),
            profile: file.profile,
            messages,
        });
    }
    if args.json {
        print(&(serde_json::to_string_pretty(&report)? + "\n"))?;
    } else {
        print(&human(&report))?;
    }
    Ok(u8::from(report.failed > 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn envelopes_split_into_address_and_arguments() {
        assert_eq!(
            split_envelope(" <a b@x.example>  BODY=8BITMIME SIZE=10 "),
            (
                "<a b@x.example>".to_owned(),
                vec!["BODY=8BITMIME".to_owned(), "SIZE=10".to_owned()]
            )
        );
        assert_eq!(split_envelope("<>"), ("<>".to_owned(), vec![]));
        assert_eq!(
            split_envelope("bare@x.example NOTIFY=NEVER"),
            ("bare@x.example".to_owned(), vec!["NOTIFY=NEVER".to_owned()])
        );
    }

    #[test]
    fn body_chunks_are_joined_and_headers_deletions_named() {
        let mods = [
            Modification::ReplaceBody {
                chunk: Bytes::from_static(b"a\r\n"),
            },
            Modification::ReplaceBody {
                chunk: Bytes::from_static(b"b\r\n"),
            },
            Modification::ChangeHeader {
                index: 0,
                name: Bytes::from_static(b"X-Old"),
                value: Bytes::new(),
            },
        ];
        assert_eq!(
            actual_modifications(&mods),
            ["replace body: a\\r\\nb\\r\\n", "delete header X-Old #1"]
        );
    }

    #[test]
    fn a_table_names_exactly_one_modification() {
        let raw: RawExpect = toml::from_str(
            "modifications = [{ add_header = \"X\", delete_rcpt = \"<a@b>\", value = \"v\" }]",
        )
        .unwrap_or_default();
        let e = expectations(raw, "").map(|_| ()).unwrap_err();
        assert!(e.1.contains("exactly one of"), "{e:?}");
    }

    #[test]
    fn the_line_diff_marks_both_sides() {
        assert_eq!(
            line_diff(&["a", "b", "c"], &["a", "x", "c", "d"]),
            ["  a", "- b", "+ x", "  c", "+ d"]
        );
    }
}
