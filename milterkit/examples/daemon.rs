//! A milter run as a service: `main` is one line, [`milterkit::run!`] does the rest (flags and
//! environment, systemd socket activation and notifications, privilege drop, metrics, logs,
//! SIGTERM). `--help` lists every setting; docs/deployment.md runs it under systemd beside
//! Postfix.
//!
//! Run: `cargo run -p milterkit --example daemon -- --socket inet:7357@127.0.0.1 --metrics 127.0.0.1:9100`

use milterkit::{Actions, Decision, Eom, Milter, Result};

/// Adds `X-Milterkit: checked` to every message.
#[derive(Default)]
struct Tagger;

// STAGES from the handlers below: the MTA sends only what the milter handles.
#[milterkit::milter]
impl Milter for Tagger {
    type Message = ();
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        eom.add_header("X-Milterkit", "checked")?;
        Ok(Decision::Accept)
    }
}

fn main() -> std::process::ExitCode {
    milterkit::run!(Tagger::default)
}
