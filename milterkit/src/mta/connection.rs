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
/// reply timeouts; `SMFIR_PROGRESS` restarts it.
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
    reply_timeout: Duration,
    buf: BytesMut,
}

impl Connection<Stream> {
    /// Connects to the milter at `spec` (any spelling [`SocketSpec`] reads) and negotiates.
    pub async fn open(spec: &str, profile: Profile) -> Result<Self, Error> {
        let spec: SocketSpec = spec.parse()?;
        let io = tokio::time::timeout(CONNECT_TIMEOUT, crate::listener::connect(&spec))
            .await
            .map_err(|_| Error::Timeout("connecting to the milter"))??;
        Connection::negotiate(io, profile).await
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin + Send> Connection<IO> {
    /// Negotiates over an already open stream.
    pub async fn negotiate(io: IO, profile: Profile) -> Result<Self, Error> {
        let mut conn = Connection {
            io,
            end: LinkEnd::new(MtaSession::new(profile.offer, MtaConfig::default())),
            profile,
            driver: Driver::default(),
            reply_timeout: REPLY_TIMEOUT,
            buf: BytesMut::new(),
        };
        conn.flush().await?;
        tokio::time::timeout(CONNECT_TIMEOUT, conn.read_until(|s| !s.negotiating()))
            .await
            .map_err(|_| Error::Timeout("waiting for the OPTNEG reply"))??;
        if let Some(c) = &conn.end.closed {
            return Err(Error::Io(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                format!("the milter closed during negotiation: {c}"),
            )));
        }
        Ok(conn)
    }

    /// Sets the longest wait for one reply (default [`REPLY_TIMEOUT`]).
    pub fn with_reply_timeout(mut self, limit: Duration) -> Self {
        self.reply_timeout = limit;
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

    /// `SMFIC_MACRO` for the command of `stage`.
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
        self.driver = Driver::default();
        Ok(answer)
    }

    async fn flush(&mut self) -> Result<(), Error> {
        if self.end.session.poll_transmit(&mut self.buf) {
            self.io.write_all(&self.buf).await?;
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
                .map_err(|_| Error::Timeout("waiting for the milter's reply"))??;
            if n == 0 {
                let reason = "the milter closed the connection".to_owned();
                self.end.closed = Some(reason.clone());
                answer.closed = Some(reason);
                return Ok(answer);
            }
        }
    }
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
