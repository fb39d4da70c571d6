//! SMTP replies a milter sends with `SMFIR_REPLYCODE`.

use std::fmt;

use bytes::Bytes;

use crate::error::ReplyError;

/// Most lines in one reply (`smfi_setmlreply` accepts 32).
pub const MAX_REPLY_LINES: usize = 32;

/// Longest text of one reply line (libmilter's `MAXREPLYLEN`, 980 bytes).
pub const MAX_REPLY_LINE: usize = 980;

/// A validated SMTP reply: a 4xx or 5xx code, an optional enhanced status code of the same class,
/// and 1 to 32 lines of text, in the exact wire form libmilter writes.
///
/// Text given to [`Reply::new`] and [`Reply::multiline`] is literal: every `%` is doubled on the
/// wire, as Sendmail and Postfix require.
///
/// ```
/// # use milterkit_proto::Reply;
/// let r = Reply::new(550, "5.7.1", "100% spam")?;
/// assert_eq!(r.as_bytes(), b"550 5.7.1 100%% spam");
///
/// let r = Reply::multiline(451, "4.7.1", ["Greylisted", "Try again in 5 minutes"])?;
/// assert_eq!(r.as_bytes(), &b"451-4.7.1 Greylisted\r\n451 4.7.1 Try again in 5 minutes"[..]);
///
/// assert!(Reply::new(250, "", "ok").is_err()); // a milter can only refuse
/// assert!(Reply::new(550, "4.7.1", "no").is_err()); // classes must match
/// # Ok::<(), milterkit_proto::ReplyError>(())
/// ```
///
/// With the `serde` feature it is serialised as `code` and `text` (the wire form).
#[derive(Clone, PartialEq, Eq, Hash)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[doc(alias = "smfi_setreply")]
#[doc(alias = "smfi_setmlreply")]
pub struct Reply {
    code: u16,
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
    text: Bytes,
}

impl Reply {
    /// A one-line reply (`smfi_setreply`). `enhanced` may be empty for none; `text` may be empty.
    /// Without an enhanced code, a text that starts with a digit is refused unless it is itself a
    /// valid enhanced code of the reply's class: Postfix reads it as one.
    pub fn new(code: u16, enhanced: &str, text: impl AsRef<[u8]>) -> Result<Reply, ReplyError> {
        check_code(code)?;
        if !enhanced.is_empty() {
            check_enhanced(code, enhanced.as_bytes())?;
        }
        let mut out = Vec::new();
        push_line(&mut out, code, b' ', enhanced.as_bytes(), text.as_ref())?;
        // A text that starts with a digit would be read as an enhanced code by Postfix.
        Reply::parse(out.into())
    }

    /// A reply of 1 to 32 lines (`smfi_setmlreply`). An empty `enhanced` defaults to `4.0.0` or
    /// `5.0.0` by the code's class, as libmilter does.
    pub fn multiline<I, L>(code: u16, enhanced: &str, lines: I) -> Result<Reply, ReplyError>
    where
        I: IntoIterator<Item = L>,
        L: AsRef<[u8]>,
    {
        check_code(code)?;
        let default = if code >= 500 { "5.0.0" } else { "4.0.0" };
        let enhanced = if enhanced.is_empty() {
            default
        } else {
            enhanced
        };
        check_enhanced(code, enhanced.as_bytes())?;
        let lines: Vec<L> = lines.into_iter().collect();
        if lines.is_empty() || lines.len() > MAX_REPLY_LINES {
            return Err(ReplyError::LineCount(lines.len()));
        }
        let mut out = Vec::new();
        for (i, line) in lines.iter().enumerate() {
            let last = i + 1 == lines.len();
            push_line(
                &mut out,
                code,
                if last { b' ' } else { b'-' },
                enhanced.as_bytes(),
                line.as_ref(),
            )?;
            if !last {
                out.extend_from_slice(b"\r\n");
            }
        }
        Reply::parse(out.into())
    }

    /// Checks reply text as it came off the wire (without its NUL) the way Postfix 3.12 does: every
    /// line `DDD-` but the last `DDD `, one code, 4xx or 5xx, enhanced code of the same class.
    /// `%` signs are kept as sent. Text right after the code that starts with a digit is taken as
    /// an enhanced code and must be one, as Postfix requires.
    pub fn parse(text: Bytes) -> Result<Reply, ReplyError> {
        let mut code = None;
        let mut lines = text.split(|&b| b == b'\n').peekable();
        let mut count = 0;
        while let Some(line) = lines.next() {
            count += 1;
            let last = lines.peek().is_none();
            let line = if last {
                line
            } else {
                line.strip_suffix(b"\r").ok_or(ReplyError::Malformed)?
            };
            if line.len() < 4 || line.contains(&b'\r') || line.contains(&0) {
                return Err(ReplyError::Malformed);
            }
            let this = parse_code(&line[..3]).ok_or(ReplyError::Malformed)?;
            check_code(this)?;
            if *code.get_or_insert(this) != this {
                return Err(ReplyError::Malformed);
            }
            if line[3] != if last { b' ' } else { b'-' } {
                return Err(ReplyError::Malformed);
            }
            let rest = &line[4..];
            if rest.first().is_some_and(u8::is_ascii_digit) {
                let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                check_enhanced(this, &rest[..end])?;
            }
        }
        if count > MAX_REPLY_LINES {
            return Err(ReplyError::LineCount(count));
        }
        Ok(Reply {
            code: code.ok_or(ReplyError::Malformed)?,
            text,
        })
    }

    /// The three-digit reply code.
    pub fn code(&self) -> u16 {
        self.code
    }

    /// True for a 4xx (temporary) reply, false for 5xx.
    pub fn is_temporary(&self) -> bool {
        self.code < 500
    }

    /// The wire form, without the terminating NUL.
    pub fn as_bytes(&self) -> &[u8] {
        &self.text
    }

    /// The wire form as shared bytes.
    pub fn to_bytes(&self) -> Bytes {
        self.text.clone()
    }

    /// The enhanced status code of the first line, if any.
    pub fn enhanced(&self) -> Option<&[u8]> {
        let rest = self.text.get(4..)?;
        if !rest.first()?.is_ascii_digit() {
            return None;
        }
        let end = rest
            .iter()
            .position(|&b| b == b' ' || b == b'\r')
            .unwrap_or(rest.len());
        Some(&rest[..end])
    }

    /// The text of each line after the code and enhanced code, with `%%` turned back into `%`.
    pub fn lines(&self) -> Vec<Vec<u8>> {
        self.text
            .split(|&b| b == b'\n')
            .map(|line| {
                let line = line.strip_suffix(b"\r").unwrap_or(line);
                let mut rest = line.get(4..).unwrap_or_default();
                if rest.first().is_some_and(u8::is_ascii_digit) {
                    let end = rest.iter().position(|&b| b == b' ').unwrap_or(rest.len());
                    rest = rest.get(end + 1..).unwrap_or_default();
                }
                undouble(rest)
            })
            .collect()
    }
}

impl fmt::Debug for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Reply({:?})", String::from_utf8_lossy(&self.text))
    }
}

impl fmt::Display for Reply {
    /// The wire text, for people: invalid UTF-8 shown as U+FFFD.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&String::from_utf8_lossy(&self.text))
    }
}

fn check_code(code: u16) -> Result<(), ReplyError> {
    if (400..600).contains(&code) {
        Ok(())
    } else {
        Err(ReplyError::Code(code))
    }
}

fn parse_code(d: &[u8]) -> Option<u16> {
    if d.len() == 3 && d.iter().all(u8::is_ascii_digit) {
        Some(d.iter().fold(0u16, |n, &c| n * 10 + u16::from(c - b'0')))
    } else {
        None
    }
}

/// `X.Y.Z`: X one digit of the reply's class, Y and Z one to three digits.
fn check_enhanced(code: u16, e: &[u8]) -> Result<(), ReplyError> {
    let mut parts = e.split(|&b| b == b'.');
    let (Some(x), Some(y), Some(z), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(ReplyError::Enhanced);
    };
    let digits =
        |p: &[u8], max: usize| !p.is_empty() && p.len() <= max && p.iter().all(u8::is_ascii_digit);
    if !(digits(x, 1) && digits(y, 3) && digits(z, 3)) {
        return Err(ReplyError::Enhanced);
    }
    let class = x[0] - b'0';
    if u16::from(class) != code / 100 {
        return Err(ReplyError::ClassMismatch {
            code,
            enhanced: class,
        });
    }
    Ok(())
}

fn push_line(
    out: &mut Vec<u8>,
    code: u16,
    sep: u8,
    enhanced: &[u8],
    text: &[u8],
) -> Result<(), ReplyError> {
    if text.len() > MAX_REPLY_LINE {
        return Err(ReplyError::LineTooLong(text.len()));
    }
    if text.iter().any(|&b| b == b'\r' || b == b'\n' || b == 0) {
        return Err(ReplyError::ControlCharacter);
    }
    out.extend_from_slice(code.to_string().as_bytes());
    out.push(sep);
    if !enhanced.is_empty() {
        out.extend_from_slice(enhanced);
        if !text.is_empty() {
            out.push(b' ');
        }
    }
    for &b in text {
        out.push(b);
        if b == b'%' {
            out.push(b'%');
        }
    }
    Ok(())
}

fn undouble(s: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(s.len());
    let mut i = 0;
    while i < s.len() {
        out.push(s[i]);
        i += if s[i] == b'%' && s.get(i + 1) == Some(&b'%') {
            2
        } else {
            1
        };
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn builds_the_forms_smfi_setreply_builds() {
        let r = |code, x, t: &str| Reply::new(code, x, t).unwrap().as_bytes().to_vec();
        assert_eq!(r(550, "5.7.1", "go away"), b"550 5.7.1 go away");
        assert_eq!(r(451, "", "later"), b"451 later");
        assert_eq!(r(554, "5.7.0", ""), b"554 5.7.0");
        assert_eq!(r(421, "", ""), b"421 ");
    }

    #[test]
    fn refuses_text_that_postfix_would_read_as_a_wrong_enhanced_code() {
        assert_eq!(Reply::new(400, "", "0 items"), Err(ReplyError::Enhanced));
        assert!(Reply::new(450, "", "4.2.0 busy").is_ok());
        assert!(Reply::new(450, "", "5.2.0 busy").is_err());
    }

    #[test]
    fn multiline_defaults_the_enhanced_code_by_class_and_uses_a_space_on_the_last_line() {
        let r = Reply::multiline(550, "", ["a", "b", "c"]).unwrap();
        assert_eq!(r.as_bytes(), b"550-5.0.0 a\r\n550-5.0.0 b\r\n550 5.0.0 c");
        let one = Reply::multiline(421, "", ["bye"]).unwrap();
        assert_eq!(one.as_bytes(), b"421 4.0.0 bye");
    }

    #[test]
    fn refuses_what_the_mtas_refuse() {
        assert_eq!(Reply::new(250, "", "ok"), Err(ReplyError::Code(250)));
        assert_eq!(Reply::new(600, "", "x"), Err(ReplyError::Code(600)));
        assert_eq!(
            Reply::new(550, "4.7.1", "x"),
            Err(ReplyError::ClassMismatch {
                code: 550,
                enhanced: 4
            })
        );
        assert_eq!(Reply::new(550, "5.7", "x"), Err(ReplyError::Enhanced));
        assert_eq!(Reply::new(550, "5.7.1000", "x"), Err(ReplyError::Enhanced));
        assert_eq!(
            Reply::new(550, "", "a\r\nb"),
            Err(ReplyError::ControlCharacter)
        );
        assert_eq!(
            Reply::new(550, "", "a\0"),
            Err(ReplyError::ControlCharacter)
        );
        assert_eq!(
            Reply::new(550, "", [b'x'; 981]),
            Err(ReplyError::LineTooLong(981))
        );
        assert_eq!(
            Reply::multiline(550, "", Vec::<&str>::new()),
            Err(ReplyError::LineCount(0))
        );
        assert_eq!(
            Reply::multiline(550, "", vec!["x"; 33]),
            Err(ReplyError::LineCount(33))
        );
        assert!(Reply::multiline(550, "", vec!["x"; 32]).is_ok());
    }

    #[test]
    fn doubles_percent_signs_and_lines_undoubles_them() {
        let r = Reply::new(550, "5.7.1", "100% sure, 50%% off").unwrap();
        assert_eq!(r.as_bytes(), b"550 5.7.1 100%% sure, 50%%%% off");
        assert_eq!(r.lines(), [b"100% sure, 50%% off".to_vec()]);
    }

    #[test]
    fn parses_wire_text_like_postfix_3_12() {
        let ok = |t: &'static [u8]| Reply::parse(Bytes::from_static(t));
        assert_eq!(ok(b"451-4.7.1 a\r\n451 4.7.1 b").unwrap().code(), 451);
        assert_eq!(ok(b"550 5.7.1 x").unwrap().enhanced(), Some(&b"5.7.1"[..]));
        assert_eq!(ok(b"550 no code").unwrap().enhanced(), None);
        for bad in [
            &b"550"[..],
            b"550-x",
            b"550 x\r\n551 y",
            b"550-x\n550 y",
            b"550 4.7.1 x",
            b"250 ok",
            b"550-a\r\n550-b",
        ] {
            assert!(ok(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
    }
}
