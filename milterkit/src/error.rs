//! Errors of the async layer, and what each puts on the wire.

use std::{fmt, io};

use milterkit_proto::{MisuseError, ProtocolError, Stage};
use tracing::{debug, info, warn};

/// What a handler returns on failure: any error, boxed. `?` works on every error type.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// `Result` with [`BoxError`] as the default error, for handlers and `main`.
pub type Result<T, E = BoxError> = std::result::Result<T, E>;

/// Why a connection, a bind or a serve loop ended in error.
///
/// Nothing from one connection reaches [`serve`](crate::serve): connection errors are logged
/// there and returned only by [`serve_connection`](crate::serve_connection) and the test harness.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// Reading from or writing to the MTA failed.
    #[error("i/o error")]
    Io(#[from] io::Error),
    /// The MTA broke the protocol (or cannot give what the milter needs).
    #[error("protocol error")]
    Protocol(#[from] ProtocolError),
    /// The milter did something the protocol or the agreement forbids (a decision not allowed at
    /// the stage, a modification not negotiated).
    #[error("milter misuse at {stage}")]
    Misuse {
        /// The stage being handled.
        stage: Stage,
        /// What was refused.
        #[source]
        source: MisuseError,
    },
    /// The MTA sent nothing within the read timeout, or did not take our bytes within the
    /// write timeout.
    #[error("timed out {0}")]
    Timeout(&'static str),
    /// A handler ran past its deadline.
    #[error("handler at {stage} ran past its deadline")]
    HandlerTimeout {
        /// The stage being handled.
        stage: Stage,
    },
    /// A handler returned an error.
    #[error("handler failed at {stage}")]
    Handler {
        /// The stage being handled.
        stage: Stage,
        /// The handler's error.
        #[source]
        source: BoxError,
    },
    /// A handler panicked.
    #[error("handler panicked at {stage}")]
    Panicked {
        /// The stage being handled.
        stage: Stage,
    },
    /// The server is shutting down and the grace period is over.
    #[error("shutting down")]
    Shutdown,
    /// A socket specification that does not parse, or a socket that cannot be bound.
    #[error("cannot bind {spec}: {reason}")]
    Bind {
        /// The specification given.
        spec: String,
        /// What went wrong.
        reason: String,
    },
    /// A socket specification that does not parse ([`SocketSpec`](crate::SocketSpec)'s
    /// `FromStr`); [`bind`](crate::bind) reports it as [`Error::Bind`].
    #[error("invalid socket specification {spec:?}: {reason}")]
    Spec {
        /// The specification given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The MTA side could not reach the milter: nothing listens there, the socket file does not
    /// exist, the host name does not resolve, or no connection within the connect timeout
    /// ([`mta::Connection::open`](crate::mta::Connection::open)).
    #[error("cannot connect to the milter at {spec}")]
    Connect {
        /// The specification given.
        spec: String,
        /// Why (a timeout is [`io::ErrorKind::TimedOut`]).
        #[source]
        source: io::Error,
    },
    /// The MTA side reached the socket, but the option negotiation (`SMFIC_OPTNEG`) failed: the
    /// peer closed, sent something else than a milter's reply, or did not answer in time.
    #[error("cannot negotiate with the milter at {spec}")]
    Negotiate {
        /// The specification given.
        spec: String,
        /// Why.
        #[source]
        source: Box<Error>,
    },
    /// The peer's first bytes are an SMTP server's greeting (`220 `, `220-`, `554 `: three digits
    /// from 2 to 5 and a space or hyphen) or an HTTP response (`HTTP/`), not a milter's reply:
    /// the MTA side was pointed at the wrong port or socket. (Read as a milter frame's length,
    /// such bytes would be over 800 MB: no milter sends that.)
    #[error("this looks like an {protocol} server, not a milter: it said {greeting:?}")]
    NotAMilter {
        /// `"SMTP"` or `"HTTP"`.
        protocol: &'static str,
        /// The start of the peer's first line (at most 100 characters; invalid UTF-8 replaced).
        greeting: String,
    },
}

/// What an error puts on the wire when it happens while the MTA waits for a reply
/// ([`Error::on_wire`]). Either way the connection then closes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum OnWire {
    /// The configured fail-safe decision ([`Config::fail_safe`](crate::Config::fail_safe)): the
    /// milter failed, and the MTA must not wait or guess.
    FailSafe,
    /// Nothing: the MTA broke the protocol, the transport failed, or nothing can be sent.
    Nothing,
}

impl Error {
    /// What this error puts on the wire while the MTA waits for a reply: the fail-safe decision
    /// for errors of the milter (its handler failed, panicked or ran past its deadline, it misused
    /// the protocol) and at the end of a graceful shutdown's grace period; nothing for errors of
    /// the MTA or the transport, where the connection is just closed. The one place this is
    /// decided; the dispatcher follows it.
    ///
    /// ```
    /// use milterkit::{Error, OnWire, Stage};
    /// assert_eq!(Error::Panicked { stage: Stage::Rcpt }.on_wire(), OnWire::FailSafe);
    /// assert_eq!(Error::Timeout("waiting for the MTA").on_wire(), OnWire::Nothing);
    /// ```
    pub fn on_wire(&self) -> OnWire {
        match self {
            Error::Handler { .. }
            | Error::Panicked { .. }
            | Error::Misuse { .. }
            | Error::HandlerTimeout { .. }
            | Error::Shutdown => OnWire::FailSafe,
            Error::Io(_)
            | Error::Protocol(_)
            | Error::Timeout(_)
            | Error::Bind { .. }
            | Error::Spec { .. }
            | Error::Connect { .. }
            | Error::Negotiate { .. }
            | Error::NotAMilter { .. } => OnWire::Nothing,
        }
    }

    /// Logs why a connection ended, once, in the connection's span, with every cause: warn for
    /// what the MTA sent or failed to send in time (protocol errors, timeouts), info for the rest
    /// (a handler's failure was logged with its stage where it happened).
    pub(crate) fn log_close(&self) {
        let reason = Causes(self);
        match self {
            Error::Protocol(_) | Error::Timeout(_) => warn!(error = %reason, "connection closed"),
            // A peer that hangs up or resets: routine for an MTA, not worth more than debug.
            Error::Io(_) => debug!(error = %reason, "connection ended"),
            _ => info!(error = %reason, "connection closed"),
        }
    }

    /// A short name of the kind of error, for logs and the `milter_errors` metric: `io`,
    /// `protocol`, `misuse`, `timeout`, `handler_timeout`, `handler`, `panic`, `shutdown`, `bind`;
    /// on the MTA side also `spec`, `connect`, `negotiate` and `not_a_milter`.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::Io(_) => "io",
            Error::Protocol(_) => "protocol",
            Error::Misuse { .. } => "misuse",
            Error::Timeout(_) => "timeout",
            Error::HandlerTimeout { .. } => "handler_timeout",
            Error::Handler { .. } => "handler",
            Error::Panicked { .. } => "panic",
            Error::Shutdown => "shutdown",
            Error::Bind { .. } => "bind",
            Error::Spec { .. } => "spec",
            Error::Connect { .. } => "connect",
            Error::Negotiate { .. } => "negotiate",
            Error::NotAMilter { .. } => "not_a_milter",
        }
    }
}

/// An error and its sources, joined by `: ` (`protocol error: command 'L' out of order after
/// UNKNOWN`): the errors' own texts do not repeat their sources.
pub(crate) struct Causes<'a>(pub(crate) &'a dyn std::error::Error);

impl fmt::Display for Causes<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)?;
        let mut source = self.0.source();
        while let Some(e) = source {
            write!(f, ": {e}")?;
            source = e.source();
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use milterkit_proto::MisuseError;

    use super::*;

    #[test]
    fn each_error_puts_what_it_should_on_the_wire() {
        let stage = Stage::Eom;
        for (err, wire) in [
            (Error::Io(io::Error::other("reset")), OnWire::Nothing),
            (Error::Protocol(ProtocolError::Closed), OnWire::Nothing),
            (
                Error::Misuse {
                    stage,
                    source: MisuseError::NotAwaiting,
                },
                OnWire::FailSafe,
            ),
            (Error::Timeout("waiting for the MTA"), OnWire::Nothing),
            (Error::HandlerTimeout { stage }, OnWire::FailSafe),
            (
                Error::Handler {
                    stage,
                    source: "failed".into(),
                },
                OnWire::FailSafe,
            ),
            (Error::Panicked { stage }, OnWire::FailSafe),
            (Error::Shutdown, OnWire::FailSafe),
            (
                Error::Bind {
                    spec: "unix:/x".into(),
                    reason: "denied".into(),
                },
                OnWire::Nothing,
            ),
            (
                Error::Spec {
                    spec: "inet:x".into(),
                    reason: "unknown port".into(),
                },
                OnWire::Nothing,
            ),
            (
                Error::Connect {
                    spec: "unix:/x".into(),
                    source: io::Error::other("refused"),
                },
                OnWire::Nothing,
            ),
            (
                Error::Negotiate {
                    spec: "unix:/x".into(),
                    source: Box::new(Error::Timeout("waiting")),
                },
                OnWire::Nothing,
            ),
            (
                Error::NotAMilter {
                    protocol: "SMTP",
                    greeting: "220 mx".into(),
                },
                OnWire::Nothing,
            ),
        ] {
            assert_eq!(err.on_wire(), wire, "{err}");
        }
    }
}
