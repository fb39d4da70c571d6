//! `milterkit-ratelimit`: the rate-limit milter as a daemon: milterkit's flags (`--socket`,
//! `--metrics`, …, see `--help`) and its own, each with a `RATELIMIT_` variable too.
//!
//! ```text
//! milterkit-ratelimit --socket inet:7361@127.0.0.1 --redis redis://10.0.0.5/ --limit 200 --window 3600
//! ```

use std::process::ExitCode;

fn main() -> ExitCode {
    milterkit_ratelimit::daemon::daemon()
}
