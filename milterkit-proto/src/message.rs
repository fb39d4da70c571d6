//! A raw RFC 5322 message split the way an MTA shows it to a milter: header fields with their
//! values as `SMFIC_HEADER` carries them, and the body with CRLF line ends.

use bytes::Bytes;

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
pub fn to_crlf(b: &[u8]) -> Bytes {
    let bare = b
        .iter()
        .enumerate()
        .filter(|&(i, &c)| c == b'\n' && (i == 0 || b[i - 1] != b'\r'))
        .count();
    if bare == 0 {
        return Bytes::copy_from_slice(b);
    }
    let mut out = Vec::with_capacity(b.len() + bare);
    for (i, &c) in b.iter().enumerate() {
        if c == b'\n' && (i == 0 || b[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(c);
    }
    out.into()
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
