//! A connection to a milter over a socket, driven as a [`Profile`]'s MTA would drive it.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use milterkit_proto::command::{Connect, Envelope};
use milterkit_proto::{Agreement, Command, MtaConfig, MtaSession, Sent, Stage};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::*;
use crate::listener::{SocketSpec, Stream};
use crate::Error;

/// Longest wait for the milter to accept the connection and answer OPTNEG: Postfix's
/// `milter_connect_timeout` (30 s).
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

/// Longest wait for one reply: Postfix's `milter_content_timeout` (300 s), the larger of its two
/// reply timeouts; `SMFIR_PROGRESS` restarts it. It bounds each write too: a milter that stops
/// reading (a full socket buffer under a large body) is given up on as a silent one is.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(300);

/// A connection to a milter, driven as the [`Profile`]'s MTA would drive it.
///
/// ```no_run
/// # async fn f() -> Result<(), milterkit::Error> {
/// use milterkit::mta::{Connection, Profile, Transaction};
/// let mut conn = Connection::open("inet:7357@127.0.0.1", Profile::postfix()).await?;
/// let outcome = conn.run(&Transaction::new().to("<bob@example.net>")).await?;
/// println!("{:?}", outcome.verdict);
/// conn.quit().await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
pub struct Connection<IO = Stream> {
    io: IO,
    end: LinkEnd,
    profile: Profile,
    driver: Driver,
    /// Longest wait for one reply, or for one write to be taken; the chain sets it per command.
    pub(crate) reply_timeout: Duration,
    /// True once the milter's first bytes have been seen (and were not an SMTP or HTTP server's).
    heard: bool,
    buf: BytesMut,
}

impl Connection<Stream> {
    /// Connects to the milter at `spec` (any spelling [`SocketSpec`] reads) and negotiates, each
    /// within [`CONNECT_TIMEOUT`].
    ///
    /// Errors name the socket: [`Error::Spec`] for a spec that does not parse,
    /// [`Error::Connect`] when the socket cannot be reached, [`Error::Negotiate`] (with the cause,
    /// such as [`Error::NotAMilter`] or [`Error::Timeout`]) when the negotiation fails.
    pub async fn open(spec: &str, profile: Profile) -> Result<Self, Error> {
        Connection::open_with_timeout(spec, profile, CONNECT_TIMEOUT).await
    }

    /// [`Connection::open`] with another limit than [`CONNECT_TIMEOUT`], for connecting and for
    /// the negotiation each (Postfix's `milter_connect_timeout`).
    ///
    /// ```no_run
    /// # async fn f() -> Result<(), milterkit::Error> {
    /// use std::time::Duration;
    /// use milterkit::mta::{Connection, Profile};
    /// let five = Duration::from_secs(5);
    /// let conn = Connection::open_with_timeout("inet:7357@127.0.0.1", Profile::postfix(), five)
    ///     .await?
    ///     .with_reply_timeout(five);
    /// # Ok(()) }
    /// ```
    pub async fn open_with_timeout(
        spec: &str,
        profile: Profile,
        limit: Duration,
    ) -> Result<Self, Error> {
        let parsed: SocketSpec = spec.parse()?;
        let io = match tokio::time::timeout(limit, crate::listener::connect(&parsed)).await {
            Ok(connected) => connected,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no connection within {}", seconds(limit)),
            )),
        }
        .map_err(|source| Error::Connect {
            spec: spec.to_owned(),
            source,
        })?;
        Connection::negotiate_with_timeout(io, profile, limit)
            .await
            .map_err(|e| Error::Negotiate {
                spec: spec.to_owned(),
                source: Box::new(e),
            })
    }
}

/// `5 s`, `0.5 s`.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    /// Negotiates over an already open stream, waiting at most [`CONNECT_TIMEOUT`] for the
    /// milter's answer.
    ///
    /// A peer whose first bytes are an SMTP greeting or an HTTP response is
    /// [`Error::NotAMilter`].
    pub async fn negotiate(io: IO, profile: Profile) -> Result<Self, Error> {
        Connection::negotiate_with_timeout(io, profile, CONNECT_TIMEOUT).await
    }

    /// [`Connection::negotiate`] waiting at most `limit` for the milter's answer.
    pub async fn negotiate_with_timeout(
        io: IO,
        profile: Profile,
        limit: Duration,
    ) -> Result<Self, Error> {
        let mut conn = Connection {
            io,
            end: LinkEnd::new(MtaSession::new(profile.offer, MtaConfig::default())),
            profile,
            driver: Driver::default(),
            reply_timeout: REPLY_TIMEOUT,
            heard: false,
            buf: BytesMut::new(),
        };
        conn.flush().await?;
        tokio::time::timeout(limit, conn.read_until(|s| !s.negotiating()))
            .await
            .map_err(|_| Error::Timeout("waiting for the milter's OPTNEG reply"))??;
        if let Some(c) = &conn.end.closed {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the milter closed during negotiation: {c}"),
            )));
        }
        Ok(conn)
    }

    /// Sets the longest wait for one reply, and for the milter to take what is written (default
    /// [`REPLY_TIMEOUT`]).
    pub fn with_reply_timeout(mut self, limit: Duration) -> Self {
        self.reply_timeout = limit;
        self
    }

    /// Leaves [`Outcome::delivery`] empty: the resulting message is not put together after each
    /// transaction (a copy of the whole message), which a load test does not look at.
    pub fn without_delivery(mut self) -> Self {
        self.driver.no_delivery = true;
        self
    }

    /// Runs one transaction; several may run on one connection.
    pub async fn run(&mut self, tx: &Transaction) -> Result<Outcome, Error> {
        let mut driver = std::mem::take(&mut self.driver);
        let profile = self.profile.clone();
        let result = driver.run(self, &profile, tx).await;
        self.driver = driver;
        result
    }

    /// Ends the session as the profile's MTA does (Postfix: ABORT then QUIT) and closes.
    pub async fn quit(mut self) -> Result<(), Error> {
        let mut driver = std::mem::take(&mut self.driver);
        let profile = self.profile.clone();
        driver.quit(&mut self, &profile).await?;
        let _ = self.io.shutdown().await;
        Ok(())
    }

    /// What was negotiated.
    pub fn agreement(&self) -> Option<&Agreement> {
        self.end.session.agreement()
    }

    /// Sends one command and waits for the milter's answer if one is owed (skipped stages are not
    /// sent; no-reply stages are not waited for; progress restarts the wait). The per-stage
    /// methods below are this with the command built for you; macros are sent only when you send
    /// them ([`Connection::macros`]), unlike [`Connection::run`], which sends the profile's.
    pub async fn send(&mut self, cmd: Command) -> Result<Answer, Error> {
        self.exchange(cmd).await
    }

    /// `SMFIC_MACRO` for the command of `stage`; it goes out with the next command, in the same
    /// write.
    pub async fn macros(
        &mut self,
        stage: Stage,
        pairs: Vec<(Bytes, Bytes)>,
    ) -> Result<Answer, Error> {
        self.exchange(Command::Macro {
            stage: stage.code(),
            pairs,
        })
        .await
    }

    /// `SMFIC_CONNECT`.
    pub async fn connect(&mut self, connect: Connect) -> Result<Answer, Error> {
        self.exchange(Command::Connect(connect)).await
    }

    /// `SMFIC_HELO`.
    pub async fn helo(&mut self, name: impl AsRef<[u8]>) -> Result<Answer, Error> {
        let name = Bytes::copy_from_slice(name.as_ref());
        self.exchange(Command::Helo { name }).await
    }

    /// `SMFIC_MAIL`.
    pub async fn mail(&mut self, sender: Envelope) -> Result<Answer, Error> {
        self.exchange(Command::Mail(sender)).await
    }

    /// `SMFIC_RCPT`.
    pub async fn rcpt(&mut self, rcpt: Envelope) -> Result<Answer, Error> {
        self.exchange(Command::Rcpt(rcpt)).await
    }

    /// `SMFIC_DATA`.
    pub async fn data(&mut self) -> Result<Answer, Error> {
        self.exchange(Command::Data).await
    }

    /// `SMFIC_HEADER` (the value as the milter should see it: no leading space unless
    /// leading-space headers were agreed, folded lines joined with LF).
    pub async fn header(
        &mut self,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<Answer, Error> {
        self.exchange(Command::Header {
            name: Bytes::copy_from_slice(name.as_ref()),
            value: Bytes::copy_from_slice(value.as_ref()),
        })
        .await
    }

    /// `SMFIC_EOH`.
    pub async fn eoh(&mut self) -> Result<Answer, Error> {
        self.exchange(Command::Eoh).await
    }

    /// `SMFIC_BODY`: one chunk of at most 65,535 bytes with CRLF line ends.
    pub async fn body(&mut self, chunk: impl Into<Bytes>) -> Result<Answer, Error> {
        self.exchange(Command::Body(chunk.into())).await
    }

    /// `SMFIC_BODYEOB`: end of message; the answer holds the modifications.
    pub async fn eom(&mut self) -> Result<Answer, Error> {
        self.exchange(Command::Eom {
            chunk: Bytes::new(),
        })
        .await
    }

    /// `SMFIC_ABORT`: forget the current message.
    pub async fn abort(&mut self) -> Result<Answer, Error> {
        self.exchange(Command::Abort).await
    }

    /// `SMFIC_UNKNOWN`.
    pub async fn unknown(&mut self, line: impl AsRef<[u8]>) -> Result<Answer, Error> {
        let line = Bytes::copy_from_slice(line.as_ref());
        self.exchange(Command::Unknown { line }).await
    }

    /// `SMFIC_QUIT_NC`: ends this SMTP session but keeps the connection and the agreement; the
    /// next [`run`](Self::run) starts with CONNECT. Only for milters known to support it
    /// (libmilter ignores it in most states).
    pub async fn quit_nc(&mut self) -> Result<Answer, Error> {
        let answer = self.exchange(Command::QuitNc).await?;
        self.driver.new_session();
        Ok(answer)
    }

    async fn flush(&mut self) -> Result<(), Error> {
        if self.end.session.poll_transmit(&mut self.buf) {
            tokio::time::timeout(self.reply_timeout, self.io.write_all(&self.buf))
                .await
                .map_err(|_| Error::Timeout("writing to the milter: it is not reading"))??;
            self.buf.clear();
        }
        Ok(())
    }

    /// Reads until `done` holds, collecting what the milter said.
    async fn read_until(&mut self, done: impl Fn(&MtaSession) -> bool) -> Result<Answer, Error> {
        let mut answer = Answer::default();
        loop {
            while let Some(event) = self.end.session.poll_event()? {
                answer.absorb(event);
            }
            if done(&self.end.session) {
                return Ok(answer);
            }
            let input = self.end.session.input_mut();
            input.reserve(4096);
            let n = tokio::time::timeout(self.reply_timeout, self.io.read_buf(input))
                .await
                .map_err(|_| Error::Timeout(waiting_for(&self.end.session)))??;
            if !self.heard {
                let first = self.end.session.input_mut();
                if first.len() >= 4 {
                    self.heard = true;
                    if let Some(e) = impostor(first) {
                        return Err(e);
                    }
                }
            }
            if n == 0 {
                let reason = "the milter closed the connection".to_owned();
                self.end.closed = Some(reason.clone());
                answer.closed = Some(reason);
                return Ok(answer);
            }
        }
    }
}

/// What a timed-out read was waiting for, naming the stage.
fn waiting_for(session: &MtaSession) -> &'static str {
    if session.negotiating() {
        return "waiting for the milter's OPTNEG reply";
    }
    match session.awaiting() {
        Some(Stage::Connect) => "waiting for the milter's reply to CONNECT",
        Some(Stage::Helo) => "waiting for the milter's reply to HELO",
        Some(Stage::Mail) => "waiting for the milter's reply to MAIL",
        Some(Stage::Rcpt) => "waiting for the milter's reply to RCPT",
        Some(Stage::Data) => "waiting for the milter's reply to DATA",
        Some(Stage::Header) => "waiting for the milter's reply to a HEADER",
        Some(Stage::Eoh) => "waiting for the milter's reply to EOH",
        Some(Stage::Body) => "waiting for the milter's reply to a BODY chunk",
        Some(Stage::Eom) => "waiting for the milter's reply to EOM",
        Some(Stage::Unknown) => "waiting for the milter's reply to UNKNOWN",
        _ => "waiting for the milter's reply",
    }
}

/// [`Error::NotAMilter`] if the peer's first bytes (at least 4) are an SMTP greeting or an HTTP
/// response.
fn impostor(first: &[u8]) -> Option<Error> {
    let smtp = matches!(
        first,
        [b'2'..=b'5', b'0'..=b'9', b'0'..=b'9', b' ' | b'-', ..]
    );
    let protocol = if smtp {
        "SMTP"
    } else if first.starts_with(b"HTTP") {
        "HTTP"
    } else {
        return None;
    };
    let line = first.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    Some(Error::NotAMilter {
        protocol,
        greeting: line.trim_end().chars().take(100).collect(),
    })
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Link for Connection<IO> {
    fn end(&mut self) -> &mut LinkEnd {
        &mut self.end
    }

    async fn carry(&mut self, sent: &Sent) -> Result<Answer, Error> {
        if let Err(e) = self.flush().await {
            let reason = format!("writing to the milter failed: {e}");
            self.end.closed = Some(reason.clone());
            return Ok(Answer {
                closed: Some(reason),
                ..Answer::default()
            });
        }
        match sent {
            Sent::AwaitingReply(_) => self.read_until(|s| s.awaiting().is_none()).await,
            _ => Ok(Answer::default()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::error::Error as _;
    use std::io::ErrorKind;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::{Config, Decision, Milter};

    /// Opens `spec` and returns the error.
    async fn open_err(spec: &str) -> Error {
        Connection::open(spec, Profile::postfix())
            .await
            .expect_err("must fail")
    }

    #[tokio::test]
    async fn a_missing_unix_socket_is_named_and_cannot_be_connected_to() {
        let e = open_err("unix:/nonexistent/milter.sock").await;
        assert_eq!(
            e.to_string(),
            "cannot connect to the milter at unix:/nonexistent/milter.sock"
        );
        let Error::Connect { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.kind(), ErrorKind::NotFound);
        assert!(e.source().is_some(), "the cause is kept");
    }

    #[tokio::test]
    async fn a_closed_tcp_port_is_named_and_cannot_be_connected_to() {
        let port = {
            let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            l.local_addr().unwrap().port()
        };
        let spec = format!("inet:{port}@127.0.0.1");
        let e = open_err(&spec).await;
        assert_eq!(
            e.to_string(),
            format!("cannot connect to the milter at {spec}")
        );
        let Error::Connect { source, .. } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(source.kind(), ErrorKind::ConnectionRefused);
    }

    #[tokio::test]
    async fn a_bad_spec_on_the_client_side_is_named_and_says_nothing_of_binding() {
        let e = open_err("inet:localhost").await;
        assert_eq!(
            e.to_string(),
            "invalid socket specification \"inet:localhost\": unknown port \"localhost\" \
             (write inet:PORT@HOST or inet:HOST:PORT)"
        );
        assert!(!e.to_string().contains("bind"), "{e}");
        let e = open_err("tcp:25@mx").await;
        assert!(matches!(e, Error::Spec { .. }), "{e:?}");
        assert!(e.to_string().contains("unknown protocol \"tcp\""), "{e}");
        // The milter side still says it cannot bind.
        let e = crate::bind("inet:localhost").await.expect_err("bad spec");
        assert!(
            e.to_string()
                .starts_with("cannot bind inet:localhost: unknown port"),
            "{e}"
        );
    }

    /// Negotiates with a peer that writes `greeting` whatever it is sent.
    async fn negotiate_with(greeting: &'static [u8]) -> Error {
        let (mta, mut peer) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            let mut optneg = [0; 64];
            let _ = peer.read(&mut optneg).await;
            let _ = peer.write_all(greeting).await;
            // Stays open, as a server waiting for a command would.
            let _ = peer.read(&mut optneg).await;
        });
        Connection::negotiate(mta, Profile::postfix())
            .await
            .expect_err("not a milter")
    }

    #[tokio::test]
    async fn an_smtp_server_is_recognised_by_its_greeting() {
        for (greeting, said) in [
            (
                &b"220 mx.example.net ESMTP Postfix\r\n"[..],
                "220 mx.example.net ESMTP Postfix",
            ),
            (
                b"220-mx.example.net ESMTP\r\n220 ok\r\n",
                "220-mx.example.net ESMTP",
            ),
            (
                b"554 5.7.1 no service for you\r\n",
                "554 5.7.1 no service for you",
            ),
        ] {
            let e = negotiate_with(greeting).await;
            assert_eq!(
                e.to_string(),
                format!("this looks like an SMTP server, not a milter: it said {said:?}")
            );
            assert!(
                matches!(&e, Error::NotAMilter { protocol: "SMTP", greeting } if greeting == said),
                "{e:?}"
            );
        }
    }

    #[tokio::test]
    async fn an_http_server_is_recognised_by_its_response() {
        let e = negotiate_with(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n").await;
        assert_eq!(
            e.to_string(),
            "this looks like an HTTP server, not a milter: it said \"HTTP/1.1 400 Bad Request\""
        );
    }

    #[tokio::test]
    async fn opening_an_smtp_port_says_which_socket_and_why() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let spec = format!("inet:127.0.0.1:{}", listener.local_addr().unwrap().port());
        tokio::spawn(async move {
            let (mut s, _) = listener.accept().await.unwrap();
            s.write_all(b"220 mx.example.net ESMTP\r\n").await.unwrap();
            let mut sink = [0; 256];
            while s.read(&mut sink).await.is_ok_and(|n| n > 0) {}
        });
        let e = open_err(&spec).await;
        assert_eq!(
            crate::error::Causes(&e).to_string(),
            format!(
                "cannot negotiate with the milter at {spec}: this looks like an SMTP server, \
                 not a milter: it said \"220 mx.example.net ESMTP\""
            )
        );
    }

    /// Awaits `attempt` (on paused time), which must fail after exactly five seconds; its error.
    async fn fails_after_five_seconds<T: std::fmt::Debug>(
        attempt: impl std::future::Future<Output = Result<T, Error>>,
    ) -> Error {
        let start = tokio::time::Instant::now();
        let e = attempt.await.expect_err("times out");
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        e
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_peer_is_given_up_on_after_the_negotiation_timeout() {
        let (mta, _silent) = tokio::io::duplex(4096);
        let e = fails_after_five_seconds(Connection::negotiate_with_timeout(
            mta,
            Profile::postfix(),
            Duration::from_secs(5),
        ))
        .await;
        assert_eq!(
            e.to_string(),
            "timed out waiting for the milter's OPTNEG reply"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_unix_socket_is_given_up_on_after_the_timeout() {
        let dir = std::env::temp_dir().join(format!("milterkit-conn-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("silent.sock");
        let _ = std::fs::remove_file(&path);
        // Listening, never accepting: the connection completes in the backlog, nothing answers.
        let _listener = tokio::net::UnixListener::bind(&path).unwrap();
        let spec = format!("unix:{}", path.display());
        let start = tokio::time::Instant::now();
        let e = Connection::open_with_timeout(&spec, Profile::postfix(), Duration::from_secs(5))
            .await
            .expect_err("silent");
        assert_eq!(
            crate::error::Causes(&e).to_string(),
            format!(
                "cannot negotiate with the milter at {spec}: timed out waiting for the milter's \
                 OPTNEG reply"
            )
        );
        assert!(
            start.elapsed() < Duration::from_secs(6),
            "{:?}",
            start.elapsed()
        );
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A milter that takes an hour to answer CONNECT.
    struct Slow;

    impl Milter for Slow {
        type Message = ();

        async fn connect(&mut self, _: crate::Connect<'_>) -> crate::Result<Decision> {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(Decision::Continue)
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_milter_that_stops_reading_is_given_up_on_after_the_reply_timeout() {
        let (mta, mut peer) = tokio::io::duplex(4096);
        tokio::spawn(async move {
            // OPTNEG: the MTA's offer back, asking for nothing to be skipped; then no more reads.
            let mut offer = [0; 17];
            peer.read_exact(&mut offer).await.unwrap();
            offer[13..].fill(0);
            peer.write_all(&offer).await.unwrap();
            std::future::pending::<()>().await;
        });
        let mut conn = Connection::negotiate(mta, Profile::postfix())
            .await
            .unwrap()
            .with_reply_timeout(Duration::from_secs(5));
        // A HELO larger than the pipe's buffer: the write cannot complete. A failed write ends
        // the connection, as the milter closing it would.
        let start = tokio::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_secs(3600), conn.helo(vec![b'h'; 65_000]))
            .await
            .expect("given up on well within the hour")
            .unwrap();
        assert_eq!(start.elapsed(), Duration::from_secs(5));
        assert_eq!(
            answer.closed.as_deref(),
            Some(
                "writing to the milter failed: timed out writing to the milter: it is not reading"
            )
        );
    }

    #[tokio::test(start_paused = true)]
    async fn the_reply_timeout_names_the_stage_waited_for() {
        let (mta, milter) = tokio::io::duplex(65536);
        let config = Config {
            handler_timeout: Duration::from_secs(7200),
            ..Config::default()
        };
        tokio::spawn(async move { crate::serve_connection(milter, Slow, &config).await });
        let mut conn = Connection::negotiate(mta, Profile::postfix())
            .await
            .unwrap()
            .with_reply_timeout(Duration::from_secs(5));
        let e =
            fails_after_five_seconds(conn.run(&Transaction::new().to("<bob@example.net>"))).await;
        assert_eq!(
            e.to_string(),
            "timed out waiting for the milter's reply to CONNECT"
        );
    }
}
