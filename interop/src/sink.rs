//! [`Sink`]: the SMTP server at the end of the line, where the MTAs deliver.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::util::{Context, Result};

/// Longest command line the sink takes (RFC 5321 allows 512; MTAs may add parameters).
const MAX_LINE: usize = 64 * 1024;

/// One message as delivered to the sink: its envelope as the MTA sent it and the data,
/// dot-unstuffed, with CRLF line ends as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// The argument of the last HELO or EHLO before this message.
    pub helo: String,
    /// The whole MAIL command line, as sent: `MAIL FROM:<a@example.org> SIZE=123 RET=HDRS`.
    pub mail: String,
    /// Every RCPT command line, as sent: `RCPT TO:<b@example.net> NOTIFY=NEVER`.
    pub rcpts: Vec<String>,
    /// The message: headers, empty line, body; without the terminating dot line.
    pub data: Vec<u8>,
}

/// Splits `MAIL FROM:<addr> P1 P2` into the address (without brackets) and the parameters.
fn split_command(line: &str) -> (&str, Vec<&str>) {
    let arg = line.split_once(':').map_or("", |(_, a)| a).trim_start();
    let (addr, rest) = match arg.strip_prefix('<') {
        Some(a) => a.split_once('>').unwrap_or((a, "")),
        None => arg.split_once(' ').unwrap_or((arg, "")),
    };
    (addr, rest.split_whitespace().collect())
}

impl Message {
    /// The sender, without angle brackets (empty for the null sender).
    pub fn sender(&self) -> &str {
        split_command(&self.mail).0
    }

    /// The MAIL parameters (`SIZE=…`, `RET=HDRS`, `ENVID=…`, `BODY=8BITMIME`).
    pub fn mail_params(&self) -> Vec<&str> {
        split_command(&self.mail).1
    }

    /// The recipients, without angle brackets, in RCPT order.
    pub fn recipients(&self) -> Vec<&str> {
        self.rcpts.iter().map(|r| split_command(r).0).collect()
    }

    /// The RCPT parameters of recipient `addr` (without brackets, compared ignoring ASCII case),
    /// or `None` if it is not a recipient.
    pub fn rcpt_params(&self, addr: &str) -> Option<Vec<&str>> {
        self.rcpts
            .iter()
            .map(|r| split_command(r))
            .find(|(a, _)| a.eq_ignore_ascii_case(addr))
            .map(|(_, p)| p)
    }

    /// The header block: every header line up to (not including) the empty line, CRLF ends.
    pub fn header_block(&self) -> &[u8] {
        match find(&self.data, b"\r\n\r\n") {
            Some(i) => &self.data[..i + 2],
            None => &self.data,
        }
    }

    /// The body: everything after the empty line that ends the headers.
    pub fn body(&self) -> &[u8] {
        match find(&self.data, b"\r\n\r\n") {
            Some(i) => &self.data[i + 4..],
            None => b"",
        }
    }

    /// Every header as (name, value): the value without the space after the colon, folded
    /// lines joined with their CRLF.
    pub fn headers(&self) -> Vec<(String, String)> {
        let text = String::from_utf8_lossy(self.header_block()).into_owned();
        let mut out: Vec<(String, String)> = Vec::new();
        for line in text.split_terminator("\r\n") {
            if line.starts_with([' ', '\t']) {
                if let Some((_, v)) = out.last_mut() {
                    v.push_str("\r\n");
                    v.push_str(line);
                }
                continue;
            }
            let (name, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            out.push((name.to_owned(), value.to_owned()));
        }
        out
    }

    /// The values of every header called `name` (any case), in order.
    pub fn header_values(&self, name: &str) -> Vec<String> {
        self.headers()
            .into_iter()
            .filter(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|(_, v)| v)
            .collect()
    }

    /// The value of the first header called `name` (any case).
    pub fn header(&self, name: &str) -> Option<String> {
        self.header_values(name).into_iter().next()
    }

    /// The header names, in order.
    pub fn header_names(&self) -> Vec<String> {
        self.headers().into_iter().map(|(n, _)| n).collect()
    }

    /// The data without the `Received:` headers at its top (the ones the MTA added, folded
    /// lines included): what to compare with the message that was sent.
    pub fn without_leading_received(&self) -> Vec<u8> {
        let mut rest: &[u8] = &self.data;
        loop {
            let is_received = rest.len() >= 9 && rest[..9].eq_ignore_ascii_case(b"received:");
            if !is_received {
                return rest.to_vec();
            }
            // Skip this header line and its continuation lines.
            let mut end = 0;
            loop {
                match find(&rest[end..], b"\r\n") {
                    Some(i) => end += i + 2,
                    None => return Vec::new(),
                }
                if !rest[end..].starts_with(b" ") && !rest[end..].starts_with(b"\t") {
                    break;
                }
            }
            rest = &rest[end..];
        }
    }

    /// The data without any header field called `name` (any case), wherever it stands, folded
    /// lines included; the body untouched.
    pub fn without_header(&self, name: &str) -> Vec<u8> {
        self.without_header_where(name, |_| true)
    }

    /// The data without the `Received:` fields that host `by` wrote (their value contains
    /// `by HOST`), wherever they stand: the MTA's own trace header, while a `Received:` a milter
    /// added stays.
    pub fn without_received_by(&self, by: &str) -> Vec<u8> {
        let needle = format!("by {by}");
        self.without_header_where("Received", |field| {
            String::from_utf8_lossy(field).contains(&needle)
        })
    }

    /// The data without the header fields called `name` (any case) for which `drop` returns
    /// true; `drop` sees the whole field, folded lines and line ends included.
    pub fn without_header_where(&self, name: &str, drop: impl Fn(&[u8]) -> bool) -> Vec<u8> {
        let block = self.header_block();
        let mut out = Vec::with_capacity(self.data.len());
        let mut pos = 0;
        while pos < block.len() {
            // One field: its first line and every continuation line.
            let mut end = pos;
            loop {
                end = find(&block[end..], b"\r\n").map_or(block.len(), |i| end + i + 2);
                if end >= block.len() || !matches!(block[end], b' ' | b'\t') {
                    break;
                }
            }
            let field = &block[pos..end];
            let named = field.len() > name.len()
                && field[..name.len()].eq_ignore_ascii_case(name.as_bytes())
                && field[name.len()] == b':';
            if !(named && drop(field)) {
                out.extend_from_slice(field);
            }
            pos = end;
        }
        out.extend_from_slice(&self.data[block.len()..]);
        out
    }

    /// The data as text, invalid UTF-8 shown as U+FFFD.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.data).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[derive(Debug, Default)]
struct Shared {
    messages: Mutex<Vec<Message>>,
    arrived: Condvar,
    transcript: Mutex<Vec<String>>,
}

impl Shared {
    fn messages(&self) -> MutexGuard<'_, Vec<Message>> {
        self.messages.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn note(&self, line: String) {
        let mut t = self.transcript.lock().unwrap_or_else(|e| e.into_inner());
        if t.len() < 10_000 {
            t.push(line);
        }
    }
}

/// A small SMTP server on 127.0.0.1 (a free port) that accepts every command and message and
/// keeps each delivered message. It advertises `PIPELINING`, `8BITMIME`, `DSN`, `SMTPUTF8` and
/// `SIZE`, so the MTAs relay ESMTP parameters (NOTIFY, ORCPT, RET, ENVID) to it.
///
/// One thread accepts, one thread serves each connection; dropping the sink stops accepting.
///
/// ```no_run
/// # fn t() -> interop::Result<()> {
/// let sink = interop::Sink::start()?;
/// // … point an MTA's relay host at 127.0.0.1:sink.port() and send …
/// let messages = sink.wait_for(1, std::time::Duration::from_secs(20))?;
/// assert_eq!(messages[0].recipients(), ["bob@example.net"]);
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Sink {
    port: u16,
    shared: Arc<Shared>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Sink {
    /// Starts listening on 127.0.0.1 on a port chosen by the system.
    pub fn start() -> Result<Sink> {
        let listener = TcpListener::bind("127.0.0.1:0").context("binding the sink")?;
        let port = listener.local_addr().context("sink address")?.port();
        let shared = Arc::new(Shared::default());
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let (shared, stop) = (shared.clone(), stop.clone());
            std::thread::Builder::new()
                .name(format!("sink-{port}"))
                .spawn(move || accept_loop(listener, shared, stop))
                .context("spawning the sink thread")?
        };
        Ok(Sink {
            port,
            shared,
            stop,
            thread: Some(thread),
        })
    }

    /// The port it listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// A copy of every message delivered so far, in arrival order.
    pub fn messages(&self) -> Vec<Message> {
        self.shared.messages().clone()
    }

    /// Waits until at least `n` messages have arrived and returns them all; fails after
    /// `timeout` with what did arrive.
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Result<Vec<Message>> {
        let deadline = Instant::now() + timeout;
        let mut messages = self.shared.messages();
        while messages.len() < n {
            let now = Instant::now();
            if now >= deadline {
                return Err(crate::Error::new(format!(
                    "the sink got {} message(s) within {timeout:?}, expected {n}",
                    messages.len()
                )));
            }
            messages = self
                .shared
                .arrived
                .wait_timeout(messages, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(messages.clone())
    }

    /// Waits `grace` and returns whatever arrived by then: for "nothing (more) is delivered".
    pub fn settle(&self, grace: Duration) -> Vec<Message> {
        std::thread::sleep(grace);
        self.messages()
    }

    /// The SMTP dialogue the sink has seen so far (`C: …` and `S: …` lines, data not included),
    /// for failure reports.
    pub fn transcript(&self) -> Vec<String> {
        self.shared
            .transcript
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop.
        let _ = TcpStream::connect(("127.0.0.1", self.port));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>, stop: Arc<AtomicBool>) {
    for stream in listener.incoming() {
        if stop.load(Ordering::SeqCst) {
            return;
        }
        let Ok(stream) = stream else { continue };
        let shared = shared.clone();
        let _ = std::thread::Builder::new()
            .name("sink-conn".into())
            .spawn(move || {
                if let Err(e) = serve(&stream, &shared) {
                    shared.note(format!("!! {e}"));
                }
                let _ = stream.shutdown(Shutdown::Both);
            });
    }
}

/// Reads one line (up to LF) into `buf`; `Ok(false)` at end of stream.
fn read_line<R: BufRead>(reader: &mut R, buf: &mut Vec<u8>) -> io::Result<bool> {
    buf.clear();
    let n = Read::take(&mut *reader, MAX_LINE as u64).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(false);
    }
    if !buf.ends_with(b"\n") {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            "line too long or cut",
        ));
    }
    Ok(true)
}

fn serve(stream: &TcpStream, shared: &Shared) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(120)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut out = stream.try_clone()?;
    let mut reply = |text: &str, shared: &Shared| -> io::Result<()> {
        for l in text.lines() {
            shared.note(format!("S: {l}"));
        }
        out.write_all(text.as_bytes())?;
        out.flush()
    };
    reply("220 sink.test.invalid ESMTP interop sink\r\n", shared)?;
    let mut helo = String::new();
    let mut mail: Option<String> = None;
    let mut rcpts: Vec<String> = Vec::new();
    let mut buf = Vec::new();
    while read_line(&mut reader, &mut buf)? {
        let line = String::from_utf8_lossy(&buf)
            .trim_end_matches(['\r', '\n'])
            .to_owned();
        shared.note(format!("C: {line}"));
        let verb = line
            .split([' ', ':'])
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        match verb.as_str() {
            "EHLO" => {
                helo = line[4..].trim().to_owned();
                mail = None;
                rcpts.clear();
                reply(
                    "250-sink.test.invalid\r\n250-PIPELINING\r\n250-SIZE 104857600\r\n\
                     250-8BITMIME\r\n250-DSN\r\n250-SMTPUTF8\r\n250 ENHANCEDSTATUSCODES\r\n",
                    shared,
                )?;
            }
            "HELO" => {
                helo = line[4..].trim().to_owned();
                mail = None;
                rcpts.clear();
                reply("250 sink.test.invalid\r\n", shared)?;
            }
            "MAIL" => {
                mail = Some(line);
                rcpts.clear();
                reply("250 2.1.0 Ok\r\n", shared)?;
            }
            "RCPT" if mail.is_some() => {
                rcpts.push(line);
                reply("250 2.1.5 Ok\r\n", shared)?;
            }
            "DATA" if mail.is_some() && !rcpts.is_empty() => {
                reply("354 End data with <CR><LF>.<CR><LF>\r\n", shared)?;
                let mut data = Vec::new();
                loop {
                    if !read_line(&mut reader, &mut buf)? {
                        return Err(io::Error::new(
                            io::ErrorKind::UnexpectedEof,
                            "connection closed in DATA",
                        ));
                    }
                    if buf == b".\r\n" || buf == b".\n" {
                        break;
                    }
                    let unstuffed = buf.strip_prefix(b".").unwrap_or(&buf);
                    data.extend_from_slice(unstuffed);
                }
                let message = Message {
                    helo: helo.clone(),
                    mail: mail.take().unwrap_or_default(),
                    rcpts: std::mem::take(&mut rcpts),
                    data,
                };
                shared.note(format!("(message of {} bytes)", message.data.len()));
                shared.messages().push(message);
                shared.arrived.notify_all();
                reply("250 2.0.0 Ok: queued\r\n", shared)?;
            }
            "RCPT" | "DATA" => reply("503 5.5.1 Error: need MAIL (and RCPT) first\r\n", shared)?,
            "RSET" => {
                mail = None;
                rcpts.clear();
                reply("250 2.0.0 Ok\r\n", shared)?;
            }
            "NOOP" => reply("250 2.0.0 Ok\r\n", shared)?,
            "QUIT" => {
                reply("221 2.0.0 Bye\r\n", shared)?;
                return Ok(());
            }
            _ => reply("502 5.5.2 Error: command not recognized\r\n", shared)?,
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn msg(data: &str) -> Message {
        Message {
            helo: "h".into(),
            mail: "MAIL FROM:<a@example.org> SIZE=10 RET=HDRS ENVID=x".into(),
            rcpts: vec![
                "RCPT TO:<b@example.net> NOTIFY=NEVER".into(),
                "RCPT TO:<c@example.net>".into(),
            ],
            data: data.as_bytes().to_vec(),
        }
    }

    #[test]
    fn envelope_lines_split_into_addresses_and_parameters() {
        let m = msg("");
        assert_eq!(m.sender(), "a@example.org");
        assert_eq!(m.mail_params(), ["SIZE=10", "RET=HDRS", "ENVID=x"]);
        assert_eq!(m.recipients(), ["b@example.net", "c@example.net"]);
        assert_eq!(m.rcpt_params("B@example.net").unwrap(), ["NOTIFY=NEVER"]);
        assert!(m.rcpt_params("c@example.net").unwrap().is_empty());
        assert!(m.rcpt_params("d@example.net").is_none());
    }

    #[test]
    fn leading_received_headers_are_cut_with_their_folded_lines() {
        let m = msg("Received: from x\r\n\tby y;\r\n date\r\nReceived: z\r\nFrom: a\r\nX: y\r\n  z\r\n\r\nbody\r\n");
        assert_eq!(
            m.without_leading_received(),
            b"From: a\r\nX: y\r\n  z\r\n\r\nbody\r\n"
        );
        assert_eq!(m.header_names(), ["Received", "Received", "From", "X"]);
        let m2 = msg("X-Top: 1\r\nReceived: from x\r\n\tby y\r\nFrom: a\r\n\r\nReceived: body\r\n");
        assert_eq!(
            m2.without_header("received"),
            b"X-Top: 1\r\nFrom: a\r\n\r\nReceived: body\r\n"
        );
        let m3 = msg("Received: added\r\nReceived: from x\r\n\tby mta.test;\r\n x\r\nA: b\r\n\r\n");
        assert_eq!(
            m3.without_received_by("mta.test"),
            b"Received: added\r\nA: b\r\n\r\n"
        );
        assert_eq!(m.header("x").unwrap(), "y\r\n  z");
        assert_eq!(m.body(), b"body\r\n");
    }
}
