//! `interop-daemon`: the smallest milter run as a service, for `tests/daemon.rs`. Its `main` is
//! [`milterkit::run`], so it takes every flag and `MILTERKIT_*` variable a deployed milter takes
//! (`--socket`, `--socket-owner`, `--socket-mode`, `--user`, `--group`, systemd's sockets, ...).
//! It adds `X-Milterkit-Daemon: checked` to every message at end of message and accepts it:
//! the header shows in the sink that the MTA really went through this process.
//!
//! Run: `cargo run -p interop --bin interop-daemon -- --socket inet:7357@127.0.0.1`

use milterkit::{Actions, Decision, Eom, Milter, Result, Stages};

/// The header added to every message.
const HEADER: &str = "X-Milterkit-Daemon";

/// Its value.
const VALUE: &str = "checked";

/// Adds [`HEADER`]`: `[`VALUE`] at end of message and accepts.
#[derive(Default)]
struct Tagger;

impl Milter for Tagger {
    type Message = ();
    const STAGES: Stages = Stages::EOM;
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        eom.add_header(HEADER, VALUE)?;
        Ok(Decision::Accept)
    }
}

fn main() -> std::process::ExitCode {
    milterkit::run(Tagger::default)
}
