//! A raw RFC 5322 message split the way an MTA shows it to a milter: header fields with their
//! values as `SMFIC_HEADER` carries them, and the body with CRLF line ends.

use bytes::Bytes;

mod diff;
pub use diff::{header_modifications, Field};

/// One header field of a raw message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeaderField {
    /// The field name, without the colon and the white space before it.
    pub name: Bytes,
    /// Everything after the colon up to the end of the field, folded lines joined with a bare LF
    /// (CRs removed), leading white space kept: what `SMFIC_HEADER` carries with
    /// `SMFIP_HDR_LEADSPC`.
    pub value: Bytes,
    /// The field exactly as it stood in the message, line ends included.
    pub raw: Bytes,
}

impl HeaderField {
    /// The value as the MTA sends it: without `SMFIP_HDR_LEADSPC` one leading space (0x20, not a
    /// tab) is removed, as both Postfix and Sendmail do.
    pub fn value_for_milter(&self, leading_space: bool) -> Bytes {
        if !leading_space && self.value.first() == Some(&b' ') {
            self.value.slice(1..)
        } else {
            self.value.clone()
        }
    }
}

/// A message split into header fields and body, keeping every byte so that it can be put back
/// together unchanged.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The header fields, in order.
    pub headers: Vec<HeaderField>,
    /// The separator line between headers and body (`\r\n` or `\n`), empty when there is none.
    pub separator: Bytes,
    /// The body exactly as it stood.
    pub body: Bytes,
}

impl Message {
    /// Splits `raw`. A line that is neither a field nor a continuation ends the headers (as a
    /// line without a colon does for both MTAs; it then starts the body).
    ///
    /// ```
    /// # use milterkit_proto::message::Message;
    /// let m = Message::parse(b"Subject: Hi\r\n there\r\nTo:  b@x\r\n\r\nbody\n"[..].into());
    /// assert_eq!(m.headers[0].value, " Hi\n there");
    /// assert_eq!(m.headers[1].value_for_milter(false), " b@x");
    /// assert_eq!(m.body_crlf(), "body\r\n");
    /// assert_eq!(m.to_bytes(), &b"Subject: Hi\r\n there\r\nTo:  b@x\r\n\r\nbody\n"[..]);
    /// ```
    pub fn parse(raw: Bytes) -> Message {
        let mut headers: Vec<HeaderField> = Vec::new();
        let mut pos = 0;
        let mut separator = Bytes::new();
        while pos < raw.len() {
            let end = line_end(&raw, pos);
            let line = &raw[pos..end];
            let content = trim_eol(line);
            if content.is_empty() {
                separator = raw.slice(pos..end);
                pos = end;
                break;
            }
            if matches!(line[0], b' ' | b'\t') {
                if let Some(last) = headers.last_mut() {
                    let start = pos - last.raw.len();
                    last.raw = raw.slice(start..end);
                    let mut v = last.value.to_vec();
                    v.push(b'\n');
                    v.extend_from_slice(content);
                    last.value = v.into();
                    pos = end;
                    continue;
                }
                break;
            }
            let Some(colon) = content.iter().position(|&c| c == b':') else {
                break;
            };
            let name = trim_end_ws(&content[..colon]);
            if name.is_empty() {
                break;
            }
            headers.push(HeaderField {
                name: Bytes::copy_from_slice(name),
                value: Bytes::copy_from_slice(&content[colon + 1..]),
                raw: raw.slice(pos..end),
            });
            pos = end;
        }
        Message {
            headers,
            separator,
            body: raw.slice(pos..),
        }
    }

    /// The body as the MTA sends it: every line ending in CRLF (a bare LF becomes CRLF).
    pub fn body_crlf(&self) -> Bytes {
        if bare_lfs(&self.body) == 0 {
            // Already CRLF throughout: shared, not copied (a 1 MiB body is sent many times by
            // `milterkit bench`).
            return self.body.clone();
        }
        to_crlf(&self.body)
    }

    /// The message put back together.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = Vec::with_capacity(self.body.len() + 1024);
        for h in &self.headers {
            out.extend_from_slice(&h.raw);
        }
        out.extend_from_slice(&self.separator);
        out.extend_from_slice(&self.body);
        out.into()
    }
}

/// Turns bare LFs into CRLF.
///
/// ```
/// use milterkit_proto::message::to_crlf;
/// assert_eq!(to_crlf(b"a\nb\r\n\nc"), &b"a\r\nb\r\n\r\nc"[..]);
/// assert_eq!(to_crlf(b"\n\r"), &b"\r\n\r"[..]);
/// ```
pub fn to_crlf(b: &[u8]) -> Bytes {
    let bare = bare_lfs(b);
    if bare == 0 {
        return Bytes::copy_from_slice(b);
    }
    let mut out = Vec::with_capacity(b.len() + bare);
    // Line by line, each copied whole: a bare LF gets its CR.
    for line in b.split_inclusive(|&c| c == b'\n') {
        match line.strip_suffix(b"\n") {
            Some(text) if !text.ends_with(b"\r") => {
                out.extend_from_slice(text);
                out.extend_from_slice(b"\r\n");
            }
            _ => out.extend_from_slice(line),
        }
    }
    out.into()
}

/// How many LFs of `b` have no CR before them. Eight bytes at a time while none of them is an
/// LF (the usual case inside a line): a 1 MiB body is checked every time `milterkit bench` sends
/// it.
fn bare_lfs(b: &[u8]) -> usize {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    const LFS: u64 = u64::from_ne_bytes([b'\n'; 8]);
    let mut bare = 0;
    let mut i = 0;
    while i < b.len() {
        if let Some(word) = b.get(i..i + 8) {
            let mut w = [0; 8];
            w.copy_from_slice(word);
            let x = u64::from_ne_bytes(w) ^ LFS;
            // A zero byte in x is an LF in the word.
            if x.wrapping_sub(ONES) & !x & HIGHS == 0 {
                i += 8;
                continue;
            }
        }
        if b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r') {
            bare += 1;
        }
        i += 1;
    }
    bare
}

fn line_end(b: &[u8], from: usize) -> usize {
    b[from..]
        .iter()
        .position(|&c| c == b'\n')
        .map_or(b.len(), |i| from + i + 1)
}

fn trim_eol(line: &[u8]) -> &[u8] {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    line.strip_suffix(b"\r").unwrap_or(line)
}

fn trim_end_ws(b: &[u8]) -> &[u8] {
    let end = b
        .iter()
        .rposition(|&c| c != b' ' && c != b'\t')
        .map_or(0, |i| i + 1);
    &b[..end]
}

/// Which MTA: where Postfix and Sendmail differ, in what they send a milter and in how they apply
/// its modifications. One enum for the whole toolkit: [`Message::apply`] follows its rules, the
/// `milterkit` crate's MTA-side `Profile` its habits, and the interop tests start it. Exhaustive on
/// purpose: a third MTA would change every place that tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mta {
    /// Postfix 3.x. Sends a macro packet before every event (also before each header, each body
    /// chunk and UNKNOWN, empty when no macro has a value), ABORT after every transaction and once
    /// more before QUIT, the queue id `i` only after the first accepted recipient. Applies: a
    /// deleted header is unlinked, so later indexes shift; INSHEADER counts the MTA's own
    /// `Received:` (index 0 above it, index N becomes header N+1).
    Postfix,
    /// Sendmail 8.17. Sends macro packets only for CONNECT, HELO, MAIL, RCPT, DATA, EOH and EOM
    /// and only when that stage has a list, ABORT only inside an open transaction, `IPv6:` before
    /// IPv6 addresses, the queue id at MAIL. Applies: a deleted header is only marked, so it still
    /// counts for later CHGHEADER indexes; INSHEADER counts entries of its internal list the
    /// milter never saw.
    Sendmail,
}

/// Sendmail: headers its cf defines as defaults. An ADDHEADER of one of these changes the default
/// entry, which stays conditional and is not written when the message has its own or when relaying
/// (`Return-Path`), so nothing is added (seen with real Sendmail 8.17).
const SENDMAIL_DEFAULTS: &[&str] = &[
    "Return-Path",
    "Resent-Date",
    "Date",
    "Resent-From",
    "From",
    "Full-Name",
    "Resent-Message-Id",
    "Message-Id",
];

impl Mta {
    /// How many entries stand ahead of the message's own headers that INSHEADER indexes count but
    /// the milter never saw and the result does not show: Postfix's own `Received:`; Sendmail's
    /// `Received:` and its default headers but `Return-Path`, kept in its list ahead of the message's
    /// own and written only when the message lacks them (seen with real Sendmail 8.17 in
    /// interop/tests/prediction.rs: indexes 1 to 8 all land below `Received:`, index 0 above it).
    ///
    /// ```
    /// use milterkit_proto::message::Mta;
    /// assert_eq!(Mta::Postfix.hidden_fields(), 1);
    /// assert_eq!(Mta::Sendmail.hidden_fields(), 8);
    /// ```
    pub fn hidden_fields(self) -> usize {
        match self {
            Mta::Postfix => 1,
            Mta::Sendmail => {
                1 + SENDMAIL_DEFAULTS
                    .iter()
                    .filter(|h| **h != "Return-Path")
                    .count()
            }
        }
    }
}

/// What the MTA would deliver after the milter's modifications.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Delivery {
    /// The envelope sender (CHGFROM applied) with its ESMTP parameters.
    pub sender: crate::command::Envelope,
    /// The recipients (ADDRCPT, ADDRCPT_PAR and DELRCPT applied) with their parameters.
    pub recipients: Vec<crate::command::Envelope>,
    /// The message, headers and body, in the original's line-end style.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
    pub message: Bytes,
    /// The quarantine reason (Sendmail's quarantine; Postfix's hold queue), if any.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::option"))]
    pub quarantine: Option<Bytes>,
}

#[derive(Debug, Clone)]
struct Entry {
    name: Bytes,
    raw: Bytes,
    deleted: bool,
    /// The MTA's own entry: counted by INSHEADER, never seen by the milter, not in the result.
    hidden: bool,
}

impl Entry {
    fn new(name: &Bytes, raw: Bytes) -> Entry {
        Entry {
            name: name.clone(),
            raw,
            deleted: false,
            hidden: false,
        }
    }
}

impl Message {
    /// Applies `mods` in order, the way `rules`' MTA does, to this message and the envelope.
    /// With no modifications the message comes out byte for byte as it went in.
    ///
    /// `leading_space` says whether `SMFIP_HDR_LEADSPC` was agreed: without it the MTA puts one
    /// space between the colon and a milter's value, with it the value is used verbatim.
    ///
    /// ```
    /// # use milterkit_proto::message::{Message, Mta};
    /// # use milterkit_proto::{Modification, Envelope};
    /// let m = Message::parse(b"Subject: Hi\r\n\r\nbody\r\n"[..].into());
    /// let mods = [
    ///     Modification::ChangeHeader { index: 1, name: "Subject".into(), value: "[ok] Hi".into() },
    ///     Modification::AddHeader { name: "X-A".into(), value: "1".into() },
    /// ];
    /// let d = m.apply(&Envelope::new("<a@x>"), &[Envelope::new("<b@x>")], &mods, Mta::Postfix, false);
    /// assert_eq!(d.message, &b"Subject: [ok] Hi\r\nX-A: 1\r\n\r\nbody\r\n"[..]);
    /// ```
    pub fn apply(
        &self,
        sender: &crate::command::Envelope,
        recipients: &[crate::command::Envelope],
        mods: &[crate::response::Modification],
        rules: Mta,
        leading_space: bool,
    ) -> Delivery {
        use crate::command::Envelope;
        use crate::response::Modification as M;

        let eol: &[u8] = match self.headers.first() {
            Some(h) if !h.raw.ends_with(b"\r\n") => b"\n",
            None if !self.separator.is_empty() && self.separator[..] == b"\n"[..] => b"\n",
            _ => b"\r\n",
        };
        let format = |name: &Bytes, value: &Bytes| -> Bytes {
            let mut out = name.to_vec();
            out.push(b':');
            if !leading_space {
                out.push(b' ');
            }
            for &c in value.iter() {
                if c == b'\n' {
                    out.extend_from_slice(eol);
                } else {
                    out.push(c);
                }
            }
            out.extend_from_slice(eol);
            out.into()
        };
        let mut headers: Vec<Entry> = (0..rules.hidden_fields())
            .map(|_| Entry {
                name: Bytes::new(),
                raw: Bytes::new(),
                deleted: false,
                hidden: true,
            })
            .chain(
                self.headers
                    .iter()
                    .map(|h| Entry::new(&h.name, h.raw.clone())),
            )
            .collect();
        // Sendmail puts a trace header a milter adds on top, above its own Received.
        let sendmail = rules == Mta::Sendmail;
        let added_at = |headers: &Vec<Entry>, name: &Bytes| {
            if sendmail && name.eq_ignore_ascii_case(b"Received") {
                0
            } else {
                headers.len()
            }
        };
        let mut sender = sender.clone();
        let mut rcpts: Vec<Envelope> = recipients.to_vec();
        let mut body: Option<Vec<u8>> = None;
        let mut quarantine = None;
        let args = |a: &Option<Bytes>| -> Vec<Bytes> {
            a.as_ref().map_or_else(Vec::new, |a| {
                a.split(|&c| c == b' ')
                    .filter(|s| !s.is_empty())
                    .map(Bytes::copy_from_slice)
                    .collect()
            })
        };
        for m in mods {
            match m {
                M::AddHeader { name, .. }
                    if sendmail
                        && SENDMAIL_DEFAULTS
                            .iter()
                            .any(|d| name.eq_ignore_ascii_case(d.as_bytes())) => {}
                M::AddHeader { name, value } => {
                    let at = added_at(&headers, name);
                    headers.insert(at, Entry::new(name, format(name, value)));
                }
                M::InsertHeader { index, name, value } => {
                    let at = (*index as usize).min(headers.len());
                    headers.insert(at, Entry::new(name, format(name, value)));
                }
                M::ChangeHeader { index, name, value } => {
                    let n = (*index).max(1) as usize;
                    let counts = |e: &Entry| {
                        !e.hidden
                            && e.name.eq_ignore_ascii_case(name)
                            && (rules == Mta::Sendmail || !e.deleted)
                    };
                    let found = headers
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| counts(e))
                        .nth(n - 1)
                        .map(|(i, _)| i);
                    match (found, value.is_empty()) {
                        (Some(i), true) => match rules {
                            Mta::Postfix => {
                                headers.remove(i);
                            }
                            Mta::Sendmail => headers[i].deleted = true,
                        },
                        (Some(i), false) => headers[i] = Entry::new(name, format(name, value)),
                        (None, false) => {
                            let at = added_at(&headers, name);
                            headers.insert(at, Entry::new(name, format(name, value)));
                        }
                        (None, true) => {}
                    }
                }
                M::ChangeFrom { sender: s, args: a } => {
                    sender = Envelope {
                        address: s.clone(),
                        args: args(a),
                    }
                }
                M::AddRcpt { rcpt } => rcpts.push(Envelope::new(rcpt.clone())),
                M::AddRcptPar { rcpt, args: a } => rcpts.push(Envelope {
                    address: rcpt.clone(),
                    args: args(a),
                }),
                M::DeleteRcpt { rcpt } => {
                    let target = unbracket(rcpt);
                    rcpts.retain(|r| unbracket(&r.address) != target);
                }
                M::ReplaceBody { chunk } => {
                    body.get_or_insert_with(Vec::new).extend_from_slice(chunk)
                }
                M::Quarantine { reason } => quarantine = Some(reason.clone()),
            }
        }
        let mut out = Vec::with_capacity(self.body.len() + 1024);
        for h in headers.iter().filter(|h| !h.deleted && !h.hidden) {
            out.extend_from_slice(&h.raw);
        }
        let separator: &[u8] = if self.separator.is_empty() && body.is_some() {
            eol
        } else {
            &self.separator
        };
        out.extend_from_slice(separator);
        match body {
            None => out.extend_from_slice(&self.body),
            Some(b) if eol == b"\n" => out.extend_from_slice(&from_crlf(&b)),
            Some(b) => out.extend_from_slice(&b),
        }
        Delivery {
            sender,
            recipients: rcpts,
            message: out.into(),
            quarantine,
        }
    }
}

fn unbracket(a: &[u8]) -> &[u8] {
    a.strip_prefix(b"<")
        .and_then(|a| a.strip_suffix(b">"))
        .unwrap_or(a)
}

/// Turns CRLF into LF (for a message stored with LF line ends).
fn from_crlf(b: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(b.len());
    for (i, &c) in b.iter().enumerate() {
        if !(c == b'\r' && b.get(i + 1) == Some(&b'\n')) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bare_lfs_are_counted_a_word_at_a_time_as_byte_by_byte() {
        let naive = |b: &[u8]| {
            (0..b.len())
                .filter(|&i| b[i] == b'\n' && (i == 0 || b[i - 1] != b'\r'))
                .count()
        };
        // Every mix of CR, LF and text at every offset and length up to 40 bytes.
        let mut seed: u32 = 7;
        for len in 0..40 {
            for _ in 0..200 {
                let b: Vec<u8> = (0..len)
                    .map(|_| {
                        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                        [b'\n', b'\r', b'a', b'b'][(seed >> 16) as usize % 4]
                    })
                    .collect();
                assert_eq!(bare_lfs(&b), naive(&b), "{b:?}");
            }
        }
    }
}
