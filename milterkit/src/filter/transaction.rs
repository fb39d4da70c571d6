//! [`Transaction`]: one message as the filter sees it, and the edits made to it.

use std::io::{self, Read};
use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use milterkit_proto::message::{self, Mta};
use milterkit_proto::{Actions, Agreement, Macros, MisuseError, Modification};

use super::field::{Client, Field};
use super::spool::Body;
use super::Address;
use crate::milter::Text;

/// What the layer knows of the connection: the client, the agreement, whose rules apply.
#[derive(Debug, Clone)]
pub(super) struct Conn {
    pub(super) client: Client,
    pub(super) agreement: Arc<Agreement>,
    pub(super) mta: Mta,
    /// [`Options::memory_limit`](super::Options::memory_limit).
    pub(super) memory_limit: usize,
}

/// A message while the layer collects it, kept between stages: the filter meets it through a
/// [`Transaction`]. This is [`Filtered`](super::Filtered)'s [`Milter::Message`](crate::Milter::Message).
#[derive(Debug, Default)]
pub struct State {
    /// False for the connection-level decision points (no message yet).
    pub(super) in_message: bool,
    pub(super) sender: Option<Address>,
    pub(super) new_sender: Option<Address>,
    /// The recipients that came and those the filter added; removed ones stay, marked.
    pub(super) rcpts: Vec<Rcpt>,
    /// The header fields that came, as (name, value).
    pub(super) original_headers: Vec<(Bytes, Bytes)>,
    /// The header fields now.
    pub(super) headers: Vec<Field>,
    /// Where the header fields' bytes are kept: one buffer shared by all of them, so that the
    /// two lists share each field without a copy or an allocation of its own.
    pub(super) arena: BytesMut,
    pub(super) headers_truncated: bool,
    pub(super) body: Body,
    /// The new body, in parts, if the filter replaced or extended it.
    pub(super) new_body: Option<Vec<Part>>,
    pub(super) quarantine: Option<Bytes>,
    /// A limit was passed with [`Limit::Reject`](super::Limit::Reject): the message is refused.
    pub(super) over_limit: Option<&'static str>,
    /// The decision was made before end of message; edits wait for it.
    pub(super) decided: Option<milterkit_proto::Decision>,
}

/// A recipient of the message.
#[derive(Debug)]
pub(super) struct Rcpt {
    pub(super) address: Address,
    /// It came with the message (not added by the filter).
    pub(super) original: bool,
    /// The filter removed it (only recipients that came are kept so marked).
    pub(super) removed: bool,
}

impl State {
    pub(super) fn add_rcpt(&mut self, address: Address) {
        self.rcpts.push(Rcpt {
            address,
            original: true,
            removed: false,
        });
    }

    pub(super) fn add_header(&mut self, name: &[u8], value: &[u8]) {
        if self.headers.capacity() == 0 {
            // Room for a usual message's fields at once, rather than growing four times.
            self.headers.reserve(16);
            self.original_headers.reserve(16);
        }
        let needed = name.len() + value.len();
        if self.arena.capacity() - self.arena.len() < needed {
            self.arena.reserve(needed.max(4096));
        }
        self.arena.extend_from_slice(name);
        let name = self.arena.split().freeze();
        self.arena.extend_from_slice(value);
        let value = self.arena.split().freeze();
        self.headers.push(Field {
            name: name.clone(),
            value: value.clone(),
            origin: Some(self.original_headers.len()),
        });
        self.original_headers.push((name, value));
    }

    /// True if the filter changed anything.
    pub(super) fn edited(&self) -> bool {
        self.new_sender.is_some()
            || self.new_body.is_some()
            || self.quarantine.is_some()
            || self.rcpts.iter().any(|r| r.removed || !r.original)
            || self.headers.len() != self.original_headers.len()
            || self
                .headers
                .iter()
                .enumerate()
                .any(|(i, f)| f.origin != Some(i) || f.value != self.original_headers[i].1)
    }

    /// The modifications that turn the message as it came into the edited one, body last.
    pub(super) fn modifications(&self, mta: Mta) -> Vec<Modification> {
        let edited: Vec<message::Field> = self
            .headers
            .iter()
            .map(|f| message::Field {
                name: f.name.clone(),
                value: f.value.clone(),
                origin: f.origin,
            })
            .collect();
        let mut mods = message::header_modifications(&self.original_headers, &edited, mta);
        if let Some(s) = &self.new_sender {
            mods.push(Modification::ChangeFrom {
                sender: s.raw.clone(),
                args: joined_args(s),
            });
        }
        for r in self.rcpts.iter().filter(|r| r.removed) {
            mods.push(Modification::DeleteRcpt {
                rcpt: r.address.raw.clone(),
            });
        }
        for r in self
            .rcpts
            .iter()
            .filter(|r| !r.original)
            .map(|r| &r.address)
        {
            mods.push(match joined_args(r) {
                None => Modification::AddRcpt {
                    rcpt: r.raw.clone(),
                },
                Some(args) => Modification::AddRcptPar {
                    rcpt: r.raw.clone(),
                    args: Some(args),
                },
            });
        }
        if let Some(reason) = &self.quarantine {
            mods.push(Modification::Quarantine {
                reason: reason.clone(),
            });
        }
        mods
    }
}

/// A part of a new body.
#[derive(Debug)]
pub(super) enum Part {
    /// The body that came.
    Original,
    /// Bytes given by the filter.
    Bytes(Bytes),
    /// A body read from a reader, spooled.
    Spooled(Body),
}

/// ESMTP arguments joined with spaces, as CHGFROM and ADDRCPT_PAR carry them.
fn joined_args(a: &Address) -> Option<Bytes> {
    (!a.args.is_empty()).then(|| Bytes::from(a.args.join(" ")))
}

/// One message (or, at the connect and HELO decision points, the connection) as the filter sees
/// it: the client, the envelope, the headers, the body and the macros; and the edits the filter
/// makes, which the layer turns into the fewest milter modifications at end of message.
///
/// Every edit is checked when it is made: against the actions the MTA agreed to (a refused edit
/// is an `Err` at the call, with `?` the fail-safe answer, never a dropped connection), against
/// values the MTAs refuse, and against the decision point (no edits before there is a message).
///
/// Header positions count the fields the filter sees, 0 being the first; names compare without
/// regard to case.
pub struct Transaction<'a> {
    pub(super) state: &'a mut State,
    pub(super) conn: &'a Conn,
    pub(super) macros: &'a Macros,
}

impl Transaction<'_> {
    // ---- reading ----

    /// Who is connected.
    pub fn client(&self) -> &Client {
        &self.conn.client
    }

    /// What was negotiated with the MTA.
    pub fn agreement(&self) -> &Agreement {
        &self.conn.agreement
    }

    /// Whose rules the edits follow (detected from the `v` macro, or set in
    /// [`Options::mta`](super::Options::mta)).
    pub fn mta(&self) -> Mta {
        self.conn.mta
    }

    /// Every macro in effect at the decision point.
    pub fn macros(&self) -> &Macros {
        self.macros
    }

    /// The value of macro `name` in effect (`smfi_getsymval`); braces are optional.
    pub fn macro_value(&self, name: &str) -> Option<Text<'_>> {
        crate::milter::macro_value(self.macros, name)
    }

    /// The MTA's name and version as it gives them (macro `v`: `Postfix 3.7.11`; Sendmail
    /// sends its version, `8.17.1.9`, where its configuration lists `v`).
    pub fn mta_version(&self) -> Option<Text<'_>> {
        self.macro_value("v")
    }

    /// The queue id (macro `i`), once the MTA sent it (Postfix: after the first accepted
    /// recipient; Sendmail: at MAIL).
    pub fn queue_id(&self) -> Option<Text<'_>> {
        self.macro_value("i")
    }

    /// The envelope sender, with its ESMTP arguments (as it came, before any edit).
    pub fn sender(&self) -> Option<&Address> {
        self.state.sender.as_ref()
    }

    /// The recipients now: those the MTA and the filter accepted, with the filter's edits.
    pub fn recipients(&self) -> impl Iterator<Item = &Address> {
        self.state
            .rcpts
            .iter()
            .filter(|r| !r.removed)
            .map(|r| &r.address)
    }

    /// The header fields now, in order, with the filter's edits.
    pub fn headers(&self) -> &[Field] {
        &self.state.headers
    }

    /// The first field called `name`.
    pub fn header(&self, name: &str) -> Option<&Field> {
        self.state.headers.iter().find(|f| f.is(name.as_bytes()))
    }

    /// True if the message had more header fields than
    /// [`Options::max_headers`](super::Options::max_headers) and only the first were kept.
    pub fn headers_truncated(&self) -> bool {
        self.state.headers_truncated
    }

    /// The body as it came (CRLF line ends), in memory or spooled to a temporary file.
    pub fn body(&self) -> &Body {
        &self.state.body
    }

    /// The message as it came, parsed by `mail-parser` (MIME parts, attachments, decoded text):
    /// headers and body are read into memory for it. `None` when there is no message yet.
    ///
    /// ```no_run
    /// use milterkit::filter::mail_parser::MimeHeaders;
    /// # async fn f(tx: &milterkit::filter::Transaction<'_>) -> std::io::Result<()> {
    /// if let Some(mime) = tx.mime()? {
    ///     let pdfs = mime.attachments().filter(|a| a.attachment_name().is_some_and(|n| n.ends_with(".pdf")));
    ///     println!("{} PDF attachments", pdfs.count());
    /// }
    /// # Ok(()) }
    /// ```
    pub fn mime(&self) -> io::Result<Option<mail_parser::Message<'static>>> {
        if !self.state.in_message {
            return Ok(None);
        }
        let mut raw =
            Vec::with_capacity(usize::try_from(self.state.body.len()).unwrap_or(0) + 4096);
        for (name, value) in &self.state.original_headers {
            raw.extend_from_slice(name);
            raw.extend_from_slice(b": ");
            for &c in value.iter() {
                if c == b'\n' {
                    raw.push(b'\r');
                }
                raw.push(c);
            }
            raw.extend_from_slice(b"\r\n");
        }
        raw.extend_from_slice(b"\r\n");
        self.state.body.reader().read_to_end(&mut raw)?;
        Ok(mail_parser::MessageParser::default()
            .parse(&raw)
            .map(mail_parser::Message::into_owned))
    }

    // ---- edits ----

    /// Checks that an edit may be made: a message exists, `needs` was agreed, the value is one
    /// the MTAs take.
    pub(super) fn may(
        &self,
        what: &'static str,
        needs: Actions,
        check: Option<Modification>,
    ) -> Result<(), MisuseError> {
        if !self.state.in_message {
            return Err(MisuseError::Invalid {
                what,
                reason: "no message at a connection-level decision point",
            });
        }
        if !self.conn.agreement.actions.contains(needs) {
            return Err(MisuseError::NotNegotiated { what, needs });
        }
        check.map_or(Ok(()), |m| m.validate())
    }

    /// Changes the envelope sender (needs [`Actions::CHANGE_FROM`]): `"<a@example.org>"`, or
    /// with ESMTP arguments `Address::with_args("<a@example.org>", ["RET=HDRS"])`.
    pub fn set_sender(&mut self, sender: impl Into<Address>) -> Result<(), MisuseError> {
        let a = sender.into();
        self.may(
            "change sender",
            Actions::CHANGE_FROM,
            Some(Modification::ChangeFrom {
                sender: a.raw.clone(),
                args: joined_args(&a),
            }),
        )?;
        self.state.new_sender = Some(a);
        Ok(())
    }

    /// The sender as it will be delivered: the new one if [`Transaction::set_sender`] was
    /// called, else the one that came.
    pub fn new_sender(&self) -> Option<&Address> {
        self.state
            .new_sender
            .as_ref()
            .or(self.state.sender.as_ref())
    }

    /// Adds a recipient (needs [`Actions::ADD_RCPT`]; with ESMTP arguments, as in
    /// `Address::with_args("<b@example.org>", ["NOTIFY=NEVER"])`, [`Actions::ADD_RCPT_PAR`]).
    pub fn add_rcpt(&mut self, rcpt: impl Into<Address>) -> Result<(), MisuseError> {
        let a = rcpt.into();
        let (needs, m) = match joined_args(&a) {
            None => (
                Actions::ADD_RCPT,
                Modification::AddRcpt {
                    rcpt: a.raw.clone(),
                },
            ),
            Some(args) => (
                Actions::ADD_RCPT_PAR,
                Modification::AddRcptPar {
                    rcpt: a.raw.clone(),
                    args: Some(args),
                },
            ),
        };
        self.may("add recipient", needs, Some(m))?;
        self.state.rcpts.push(Rcpt {
            address: a,
            original: false,
            removed: false,
        });
        Ok(())
    }

    /// Removes the recipients whose address (without angle brackets) is `rcpt`'s, compared as
    /// the MTA compares them (exactly); says how many went. Needs [`Actions::DELETE_RCPT`] for
    /// a recipient of the message.
    pub fn remove_rcpt(&mut self, rcpt: &str) -> Result<usize, MisuseError> {
        let target = Address::new(rcpt);
        let hit = |r: &Rcpt| !r.removed && r.address.addr() == target.addr();
        if self.state.rcpts.iter().any(|r| r.original && hit(r)) {
            self.may("remove recipient", Actions::DELETE_RCPT, None)?;
        }
        let mut removed = 0;
        for r in self.state.rcpts.iter_mut().filter(|r| hit(r)) {
            r.removed = true;
            removed += 1;
        }
        // Recipients the filter added go for good; those that came stay, marked.
        self.state.rcpts.retain(|r| r.original || !r.removed);
        Ok(removed)
    }

    /// Checks that the body may be replaced or extended.
    fn may_change_body(&self, what: &'static str) -> Result<(), MisuseError> {
        self.may(what, Actions::CHANGE_BODY, None)?;
        if self.state.body.truncated() {
            return Err(MisuseError::Invalid {
                what,
                reason: "the body was truncated at the size limit",
            });
        }
        Ok(())
    }

    /// Replaces the body with `body` (needs [`Actions::CHANGE_BODY`]); CRLF line ends. `Bytes`,
    /// `Vec<u8>` and `String` are taken without a copy. Refused when the body was truncated at
    /// [`Options::max_body`](super::Options::max_body): the new body could only have been made
    /// from part of the old one.
    pub fn replace_body(&mut self, body: impl Into<Bytes>) -> Result<(), MisuseError> {
        self.may_change_body("replace body")?;
        self.state.new_body = Some(vec![Part::Bytes(body.into())]);
        Ok(())
    }

    /// Replaces the body with what `reader` gives (a file, a pipe, a decoder): spooled like the
    /// incoming body, so its size costs no more memory than
    /// [`Options::memory_limit`](super::Options::memory_limit) until it is sent.
    pub fn replace_body_from(&mut self, mut reader: impl Read) -> Result<(), ReplaceError> {
        self.may_change_body("replace body")?;
        let mut body = Body::default();
        let mut chunk = vec![0; 64 * 1024];
        loop {
            let n = match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(ReplaceError::Io(e)),
            };
            body.push(&chunk[..n], self.conn.memory_limit)?;
        }
        body.finish();
        self.state.new_body = Some(vec![Part::Spooled(body)]);
        Ok(())
    }

    /// Appends `tail` to the body: to the new one if it was replaced, else to the one that came
    /// (a footer or a disclaimer, without copying the body). Needs [`Actions::CHANGE_BODY`];
    /// refused for a truncated body, as [`Transaction::replace_body`] is.
    pub fn append_body(&mut self, tail: impl Into<Bytes>) -> Result<(), MisuseError> {
        self.may_change_body("append to body")?;
        self.state
            .new_body
            .get_or_insert_with(|| vec![Part::Original])
            .push(Part::Bytes(tail.into()));
        Ok(())
    }

    /// True if the body was replaced or extended.
    pub fn body_changed(&self) -> bool {
        self.state.new_body.is_some()
    }

    /// Quarantines the message with a reason (needs [`Actions::QUARANTINE`]; Postfix puts it
    /// on hold).
    pub fn quarantine(&mut self, reason: impl AsRef<[u8]>) -> Result<(), MisuseError> {
        let reason = Bytes::copy_from_slice(reason.as_ref());
        self.may(
            "quarantine",
            Actions::QUARANTINE,
            Some(Modification::Quarantine {
                reason: reason.clone(),
            }),
        )?;
        self.state.quarantine = Some(reason);
        Ok(())
    }
}

/// Why a body could not be replaced.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ReplaceError {
    /// The edit is refused (not negotiated, no message, truncated body).
    #[error(transparent)]
    Misuse(#[from] MisuseError),
    /// Reading the new body, or spooling it, failed.
    #[error("reading the new body failed")]
    Io(#[from] io::Error),
}
