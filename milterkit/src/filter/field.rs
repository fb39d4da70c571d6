//! What the filter reads of the client and the headers, and the header edits.

use std::net::IpAddr;

use bytes::Bytes;
use milterkit_proto::command::Family;
use milterkit_proto::{Actions, MisuseError};

use super::Transaction;
use crate::eom::header_value;
use crate::milter::Text;

/// Who is connected to the MTA; kept for the connection's life.
#[derive(Debug, Clone, Default)]
pub struct Client {
    pub(super) hostname: Bytes,
    pub(super) address: Option<IpAddr>,
    pub(super) family: Option<Family>,
    pub(super) port: u16,
    pub(super) helo: Option<Bytes>,
}

impl Client {
    /// The client's host name, or its address in brackets when it did not resolve.
    pub fn hostname(&self) -> Text<'_> {
        Text::new(&self.hostname)
    }

    /// Its IP address (none for a Unix socket or an unknown family).
    pub fn address(&self) -> Option<IpAddr> {
        self.address
    }

    /// The address family, once CONNECT came.
    pub fn family(&self) -> Option<Family> {
        self.family
    }

    /// Its TCP port (0 when there is none).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The last HELO or EHLO name, if one came yet.
    pub fn helo(&self) -> Option<Text<'_>> {
        self.helo.as_deref().map(Text::new)
    }
}

/// One header field: name and value as the milter sees them (the value without the space after
/// the colon, folded lines joined with LF).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Field {
    pub(super) name: Bytes,
    pub(super) value: Bytes,
    /// The field of the message this one is, if it is one.
    pub(super) origin: Option<usize>,
}

impl Field {
    /// The field name.
    pub fn name(&self) -> Text<'_> {
        Text::new(&self.name)
    }

    /// The value as it came (RFC 2047 words still encoded).
    pub fn value(&self) -> Text<'_> {
        Text::new(&self.value)
    }

    /// The value as text: RFC 2047 encoded words decoded (by `mail-parser`), folding undone.
    ///
    /// ```
    /// # use milterkit::filter::Field;
    /// let f = Field::new("Subject", "=?UTF-8?Q?Gr=C3=BC=C3=9Fe?=\n\tfrom home");
    /// assert_eq!(f.text(), "Grüße from home");
    /// ```
    pub fn text(&self) -> String {
        decode(&self.value)
    }

    /// True if the filter added this field (it was not in the message).
    pub fn is_new(&self) -> bool {
        self.origin.is_none()
    }

    /// A new field (as the edits on [`Transaction`] make them); a `"\r\n"` in the value becomes
    /// `"\n"`, as the MTA wants.
    pub fn new(name: impl AsRef<[u8]>, value: impl AsRef<[u8]>) -> Field {
        Field {
            name: Bytes::copy_from_slice(name.as_ref()),
            value: header_value(value.as_ref()),
            origin: None,
        }
    }

    pub(super) fn is(&self, name: &[u8]) -> bool {
        self.name.eq_ignore_ascii_case(name)
    }
}

/// Decodes a header value to text with `mail-parser`: RFC 2047 words, folding.
fn decode(value: &[u8]) -> String {
    let mut raw = Vec::with_capacity(value.len() + 2);
    raw.extend_from_slice(value);
    raw.extend_from_slice(b"\r\n");
    match mail_parser::parsers::MessageStream::new(&raw).parse_unstructured() {
        mail_parser::HeaderValue::Text(t) => t.into_owned(),
        _ => String::new(),
    }
}

/// Header edits.
impl Transaction<'_> {
    /// Checks a header field an edit makes: a name the MTAs take, no NUL in the value, and a
    /// message to edit.
    fn field(&self, what: &'static str, name: &[u8], value: &[u8]) -> Result<(), MisuseError> {
        let reason = if name.is_empty() {
            Some("empty header name")
        } else if name.iter().any(|&c| c == b':' || c <= b' ' || c == 0x7f) {
            Some("a header name has no colon, white space or control character")
        } else if value.contains(&0) {
            Some("contains a NUL byte")
        } else {
            None
        };
        match reason {
            Some(reason) => Err(MisuseError::Invalid { what, reason }),
            None => self.may(what, Actions::empty(), None),
        }
    }

    /// Appends a header field at the end (needs [`Actions::ADD_HEADER`]).
    pub fn add_header(
        &mut self,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), MisuseError> {
        let len = self.state.headers.len();
        self.insert_header(len, name, value)
    }

    /// Inserts a header field at `position` (0: above every field; the length of
    /// [`Transaction::headers`]: at the end; past it: refused). Needs [`Actions::ADD_HEADER`].
    /// A field inserted at 0 lands above the MTA's own `Received:` too.
    pub fn insert_header(
        &mut self,
        position: usize,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), MisuseError> {
        let field = Field::new(name, value);
        self.field("insert header", &field.name, &field.value)?;
        self.may("insert header", Actions::ADD_HEADER, None)?;
        if position > self.state.headers.len() {
            return Err(MisuseError::Invalid {
                what: "insert header",
                reason: "position past the end of the header list",
            });
        }
        self.state.headers.insert(position, field);
        Ok(())
    }

    /// Sets header `name`: the first field of that name gets `value` and any others are removed;
    /// with none, the field is added at the end. Needs [`Actions::CHANGE_HEADER`] to change or
    /// remove a field of the message, [`Actions::ADD_HEADER`] to add one.
    pub fn set_header(
        &mut self,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), MisuseError> {
        let name = name.as_ref();
        match self.state.headers.iter().position(|f| f.is(name)) {
            None => self.add_header(name, value),
            Some(first) => {
                let value = header_value(value.as_ref());
                self.field("set header", name, &value)?;
                let others: Vec<usize> = (first + 1..self.state.headers.len())
                    .filter(|&i| self.state.headers[i].is(name))
                    .collect();
                if others.iter().any(|&i| !self.state.headers[i].is_new()) {
                    self.may("set header", Actions::CHANGE_HEADER, None)?;
                }
                self.set_header_at(first, value)?;
                for i in others.into_iter().rev() {
                    self.state.headers.remove(i);
                }
                Ok(())
            }
        }
    }

    /// Gives the field at `position` a new value (needs [`Actions::CHANGE_HEADER`] for a field
    /// of the message; an empty value also needs [`Actions::ADD_HEADER`], as the MTA reads an
    /// empty change as a delete).
    pub fn set_header_at(
        &mut self,
        position: usize,
        value: impl AsRef<[u8]>,
    ) -> Result<(), MisuseError> {
        let value = header_value(value.as_ref());
        let Some(f) = self.state.headers.get(position) else {
            return Err(MisuseError::Invalid {
                what: "set header",
                reason: "no header field at that position",
            });
        };
        self.field("set header", &f.name.clone(), &value)?;
        if !f.is_new() {
            self.may("set header", Actions::CHANGE_HEADER, None)?;
            if value.is_empty() {
                self.may("set header", Actions::ADD_HEADER, None)?;
            }
        }
        let f = &mut self.state.headers[position];
        if value.is_empty() {
            // CHGHEADER with an empty value deletes: the field goes and comes back new.
            f.origin = None;
        }
        f.value = value;
        Ok(())
    }

    /// Removes every field called `name`; says how many went (needs
    /// [`Actions::CHANGE_HEADER`] when one of them was in the message).
    pub fn remove_header(&mut self, name: impl AsRef<[u8]>) -> Result<usize, MisuseError> {
        let name = name.as_ref();
        let mut removed = 0;
        while let Some(i) = self.state.headers.iter().rposition(|f| f.is(name)) {
            self.remove_header_at(i)?;
            removed += 1;
        }
        Ok(removed)
    }

    /// Removes the field at `position` (needs [`Actions::CHANGE_HEADER`] when it was in the
    /// message).
    pub fn remove_header_at(&mut self, position: usize) -> Result<(), MisuseError> {
        let Some(f) = self.state.headers.get(position) else {
            return Err(MisuseError::Invalid {
                what: "remove header",
                reason: "no header field at that position",
            });
        };
        if !f.is_new() {
            self.may("remove header", Actions::CHANGE_HEADER, None)?;
        }
        self.state.headers.remove(position);
        Ok(())
    }
}
