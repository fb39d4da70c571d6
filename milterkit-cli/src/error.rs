//! The command's errors: each names what it was about (a file, a flag, the milter's socket, the
//! stage) and keeps its cause, which `main` prints as `caused by:` lines.

use std::io;
use std::path::PathBuf;

/// Why `milterkit run` or `milterkit bench` stopped.
#[derive(Debug, thiserror::Error)]
pub(crate) enum CliError {
    /// The message file could not be read.
    #[error("cannot read the message {}", path.display())]
    ReadMessage {
        /// The file given.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// The bytes given are not an RFC 5322 message.
    #[error("the message {what} is not an RFC 5322 message (header fields, an empty line, the body): {reason}")]
    NotAMessage {
        /// The file, or standard input.
        what: String,
        /// What is wrong, and where.
        reason: String,
    },
    /// Standard input could not be read.
    #[error("cannot read the message from standard input")]
    ReadStdin(#[source] io::Error),
    /// The resulting message could not be written.
    #[error("cannot write the resulting message to {}", path.display())]
    WriteOutput {
        /// The file given with `--output`.
        path: PathBuf,
        /// Why.
        #[source]
        source: io::Error,
    },
    /// A flag's value or the message does not make a transaction; the text names which.
    #[error("{0}")]
    Input(String),
    /// Connecting or negotiating failed (the error names the socket).
    #[error(transparent)]
    Open(milterkit::Error),
    /// The milter failed while the message went through it.
    #[error("the milter at {spec} failed while the message went through it")]
    Run {
        /// The socket given.
        spec: String,
        /// What went wrong (it names the stage when a reply did not come in time).
        #[source]
        source: milterkit::Error,
    },
    /// The session could not be ended cleanly.
    #[error("the milter at {spec} failed at the end of the session")]
    Quit {
        /// The socket given.
        spec: String,
        /// What went wrong.
        #[source]
        source: milterkit::Error,
    },
    /// Standard output could not be written (not a reader that has gone: see [`print`]).
    #[error("cannot write to standard output")]
    WriteStdout(#[source] io::Error),
}

/// Writes `text` to standard output and flushes it. A reader that has gone (`milterkit run … |
/// head`) ends the output, not the command: the rest is dropped, and the exit status still tells
/// the verdict. `print!` would panic there.
pub(crate) fn print(text: &str) -> Result<(), CliError> {
    use std::io::Write;
    let mut out = io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != io::ErrorKind::BrokenPipe => Err(CliError::WriteStdout(e)),
        _ => Ok(()),
    }
}

/// An error and its causes on one line, joined by `: `.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(c) = source {
        s.push_str(": ");
        s.push_str(&c.to_string());
        source = c.source();
    }
    s
}
