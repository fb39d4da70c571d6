//! The daemon's logging on standard error: plain lines or JSON, journald-aware.

use std::io::IsTerminal;

use super::*;

/// Sets up a global `tracing` subscriber writing to standard error: `format` as described by
/// [`LogFormat`], `filter` in `RUST_LOG` syntax. Fails if the filter does not parse; does
/// nothing if a subscriber is already set.
///
/// ```
/// milterkit::daemon::init_logging(milterkit::daemon::LogFormat::Json, "milterkit=debug,warn").unwrap();
/// ```
pub fn init_logging(format: LogFormat, filter: &str) -> Result<(), DaemonError> {
    use tracing_subscriber::fmt;
    let filter_layer =
        tracing_subscriber::EnvFilter::try_new(filter).map_err(|e| DaemonError::LogFilter {
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
