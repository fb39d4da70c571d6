//! Logging on standard error for a milter's `main`: plain lines or JSON, journald-aware
//! (feature `logging`, enabled by `daemon`). [`run!`](crate::run!) sets it up from its flags; a
//! milter that writes its own `main` calls [`init_logging`].

use std::io::IsTerminal;

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
#[cfg_attr(feature = "daemon", derive(clap::ValueEnum))]
pub enum LogFormat {
    /// One line per event, spans as `name{field=value}` prefixes; no timestamps when standard
    /// error goes to the journal (`JOURNAL_STREAM` set), colour only on a terminal. The default.
    #[default]
    Plain,
    /// One JSON object per line with `timestamp`, `level`, `fields`, `target`, `span` and `spans`.
    Json,
}

/// A log filter that does not parse.
#[derive(Debug, thiserror::Error)]
#[error("bad log filter {filter:?}: {reason}")]
pub struct LogFilterError {
    /// The filter given.
    pub filter: String,
    /// The parser's complaint.
    pub reason: String,
}

/// Sets up a global `tracing` subscriber writing to standard error: `format` as described by
/// [`LogFormat`], `filter` in `RUST_LOG` syntax. Fails if the filter does not parse; does
/// nothing if a subscriber is already set.
///
/// ```
/// use milterkit::logging::{init_logging, LogFormat};
/// init_logging(LogFormat::Json, "milterkit=debug,warn").unwrap();
/// assert!(init_logging(LogFormat::Plain, "milterkit=loud").is_err());
/// ```
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), LogFilterError> {
    use tracing_subscriber::fmt;
    let filter_layer =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| LogFilterError {
            filter: filter.to_owned(),
            reason: e.to_string(),
        })?;
    let builder = fmt()
        .with_env_filter(filter_layer)
        .with_writer(std::io::stderr);
    let set = match format {
        LogFormat::Json => builder
            .json()
            .with_current_span(true)
            .with_span_list(true)
            .try_init(),
        LogFormat::Plain => {
            let ansi = std::io::stderr().is_terminal();
            if std::env::var_os("JOURNAL_STREAM").is_some() {
                builder.with_ansi(ansi).without_time().try_init()
            } else {
                builder.with_ansi(ansi).try_init()
            }
        }
    };
    // Already set (by the milter's author, or a test): theirs stays.
    let _ = set;
    Ok(())
}
