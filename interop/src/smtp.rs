//! A tiny SMTP client that keeps every reply: [`send`] one message, or a [`Session`] for
//! several on one connection.

use std::fmt;
use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// How long the client waits for any reply. Above the milter timeouts the MTAs are given
/// (Sendmail `T=R:60s`, Postfix `milter_command_timeout = 30s`), so a slow milter shows up
/// as the MTA's reply, not as a client timeout.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(90);

/// One SMTP reply: its code and the text of each line (after `250-` / `250 `).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    /// The three-digit code.
    pub code: u16,
    /// The text of each line, without the code and the separator.
    pub lines: Vec<String>,
}

impl Reply {
    /// The text of all lines joined with `\n`.
    pub fn text(&self) -> String {
        self.lines.join("\n")
    }

    /// 2xx or 3xx.
    pub fn is_positive(&self) -> bool {
        (200..400).contains(&self.code)
    }

    /// 4xx.
    pub fn is_transient(&self) -> bool {
        (400..500).contains(&self.code)
    }

    /// 5xx.
    pub fn is_permanent(&self) -> bool {
        self.code >= 500
    }
}

impl fmt::Display for Reply {
    /// As it was on the wire, lines separated by `\n`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, line) in self.lines.iter().enumerate() {
            let sep = if i + 1 == self.lines.len() { ' ' } else { '-' };
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}{sep}{line}", self.code)?;
        }
        Ok(())
    }
}

/// Every reply the client saw for one message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmtpResult {
    /// The reply to MAIL.
    pub mail: Reply,
    /// The reply to each RCPT, in order (empty if MAIL failed).
    pub rcpts: Vec<Reply>,
    /// The reply to DATA (354 when it may go on); `None` if no recipient was accepted.
    pub data: Option<Reply>,
    /// The reply after the final dot: the verdict on the message; `None` if DATA was refused or
    /// never sent.
    pub end: Option<Reply>,
}

impl SmtpResult {
    /// The reply to the final dot, if there was one, or the first refusal that stopped the
    /// transaction.
    pub fn last(&self) -> &Reply {
        self.end
            .as_ref()
            .or(self.data.as_ref())
            .or(self.rcpts.last())
            .unwrap_or(&self.mail)
    }

    /// True if the message was accepted at the final dot (2xx).
    pub fn accepted(&self) -> bool {
        self.end.as_ref().is_some_and(|r| r.code / 100 == 2)
    }
}

impl fmt::Display for SmtpResult {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "MAIL -> {}", self.mail)?;
        for r in &self.rcpts {
            writeln!(f, "RCPT -> {r}")?;
        }
        if let Some(d) = &self.data {
            writeln!(f, "DATA -> {d}")?;
        }
        if let Some(e) = &self.end {
            writeln!(f, ".    -> {e}")?;
        }
        Ok(())
    }
}

/// An envelope address with optional ESMTP parameters, as written after `MAIL FROM:` or
/// `RCPT TO:`; angle brackets are added when missing: `"a@example.org"`,
/// `"<a@example.org> RET=HDRS"`.
fn envelope_arg(arg: &str) -> String {
    let arg = arg.trim();
    if arg.starts_with('<') {
        arg.to_owned()
    } else {
        match arg.split_once(' ') {
            Some((addr, params)) => format!("<{addr}> {params}"),
            None => format!("<{arg}>"),
        }
    }
}

/// The message, dot-stuffed, with CRLF line ends (bare LF becomes CRLF), ending in CRLF, and
/// the final dot line.
pub fn dot_stuff(message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(message.len() + message.len() / 50 + 5);
    let mut at_line_start = true;
    for (i, &c) in message.iter().enumerate() {
        if at_line_start && c == b'.' {
            out.push(b'.');
        }
        if c == b'\n' && (i == 0 || message[i - 1] != b'\r') {
            out.push(b'\r');
        }
        out.push(c);
        at_line_start = c == b'\n';
    }
    if !out.is_empty() && !out.ends_with(b"\r\n") {
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b".\r\n");
    out
}

/// One SMTP connection.
#[derive(Debug)]
pub struct Session {
    reader: BufReader<TcpStream>,
    writer: TcpStream,
    /// The greeting.
    pub greeting: Reply,
    /// Every line sent and received, for failure reports.
    pub transcript: Vec<String>,
}

impl Session {
    /// Connects to 127.0.0.1:`port` and reads the greeting.
    pub fn connect(port: u16) -> io::Result<Session> {
        let stream = TcpStream::connect(("127.0.0.1", port))?;
        stream.set_read_timeout(Some(REPLY_TIMEOUT))?;
        stream.set_write_timeout(Some(REPLY_TIMEOUT))?;
        let writer = stream.try_clone()?;
        let mut s = Session {
            reader: BufReader::new(stream),
            writer,
            greeting: Reply {
                code: 0,
                lines: Vec::new(),
            },
            transcript: Vec::new(),
        };
        s.greeting = s.read_reply()?;
        Ok(s)
    }

    /// Reads one reply, multi-line or not.
    pub fn read_reply(&mut self) -> io::Result<Reply> {
        let mut lines = Vec::new();
        let mut line = String::new();
        loop {
            line.clear();
            if self.reader.read_line(&mut line)? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!(
                        "connection closed while waiting for a reply; transcript:\n{}",
                        self.transcript.join("\n")
                    ),
                ));
            }
            let l = line.trim_end_matches(['\r', '\n']);
            self.transcript.push(format!("S: {l}"));
            let code = l.get(..3).and_then(|c| c.parse::<u16>().ok());
            let (Some(code), sep) = (code, l.as_bytes().get(3).copied()) else {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("not an SMTP reply: {l:?}"),
                ));
            };
            lines.push(l.get(4..).unwrap_or_default().to_owned());
            if sep != Some(b'-') {
                return Ok(Reply { code, lines });
            }
        }
    }

    /// Sends one command line (CRLF added) and reads its reply.
    pub fn command(&mut self, line: &str) -> io::Result<Reply> {
        self.transcript.push(format!("C: {line}"));
        self.writer.write_all(format!("{line}\r\n").as_bytes())?;
        self.read_reply()
    }

    /// EHLO with this name; fails unless the reply is 250.
    pub fn ehlo(&mut self, name: &str) -> io::Result<Reply> {
        let r = self.command(&format!("EHLO {name}"))?;
        if r.code != 250 {
            return Err(io::Error::other(format!("EHLO refused: {r}")));
        }
        Ok(r)
    }

    /// One transaction: MAIL, each RCPT, and DATA with the message if any recipient was
    /// accepted (RSET otherwise, or after a refused MAIL or DATA). `message` is sent with CRLF
    /// line ends, dot-stuffed.
    pub fn send(&mut self, from: &str, rcpts: &[&str], message: &[u8]) -> io::Result<SmtpResult> {
        let mail = self.command(&format!("MAIL FROM:{}", envelope_arg(from)))?;
        let mut result = SmtpResult {
            mail,
            rcpts: Vec::new(),
            data: None,
            end: None,
        };
        if result.mail.code / 100 != 2 {
            self.command("RSET")?;
            return Ok(result);
        }
        for rcpt in rcpts {
            let r = self.command(&format!("RCPT TO:{}", envelope_arg(rcpt)))?;
            result.rcpts.push(r);
        }
        if !result.rcpts.iter().any(|r| r.code / 100 == 2) {
            self.command("RSET")?;
            return Ok(result);
        }
        let data = self.command("DATA")?;
        let go_on = data.code == 354;
        result.data = Some(data);
        if !go_on {
            self.command("RSET")?;
            return Ok(result);
        }
        self.transcript
            .push(format!("C: ({} bytes of message)", message.len()));
        self.writer.write_all(&dot_stuff(message))?;
        result.end = Some(self.read_reply()?);
        Ok(result)
    }

    /// QUIT, and its reply.
    pub fn quit(mut self) -> io::Result<Reply> {
        self.command("QUIT")
    }
}

/// Sends one message to the SMTP server on 127.0.0.1:`port` (EHLO, one transaction, QUIT) and
/// returns each reply the client saw. `from` and each of `rcpts` is an address with optional
/// ESMTP parameters (`"<a@example.org> RET=HDRS"`; brackets are added when missing).
///
/// ```no_run
/// # fn t(port: u16) -> std::io::Result<()> {
/// let r = interop::send(port, "alice@example.org", &["bob@example.net"], b"Subject: hi\r\n\r\nhello\r\n")?;
/// assert!(r.accepted(), "{r}");
/// # Ok(()) }
/// ```
pub fn send(port: u16, from: &str, rcpts: &[&str], message: &[u8]) -> io::Result<SmtpResult> {
    let mut s = Session::connect(port)?;
    s.ehlo("client.test.invalid")?;
    let r = s.send(from, rcpts, message)?;
    s.quit()?;
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_dot_stuffed_with_crlf_ends() {
        assert_eq!(dot_stuff(b".a\r\nb\n..c"), b"..a\r\nb\r\n...c\r\n.\r\n");
        assert_eq!(dot_stuff(b""), b".\r\n");
    }

    #[test]
    fn envelope_arguments_get_brackets_when_missing() {
        assert_eq!(envelope_arg("a@b"), "<a@b>");
        assert_eq!(envelope_arg("a@b NOTIFY=NEVER"), "<a@b> NOTIFY=NEVER");
        assert_eq!(envelope_arg("<a@b> RET=HDRS"), "<a@b> RET=HDRS");
        assert_eq!(envelope_arg("<>"), "<>");
    }
}
