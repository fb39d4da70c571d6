//! The smallest useful milter: logs each message's sender and recipients and accepts it.
//!
//! Run: `cargo run -p milterkit --example minimal -- --socket inet:7357@127.0.0.1`, then point Postfix at it
//! (`smtpd_milters = inet:127.0.0.1:7357`).

use milterkit::{Decision, Eom, Mail, Milter, Rcpt, Result};

/// One value per MTA connection; no connection state needed.
#[derive(Default)]
struct Logger;

/// What the logger remembers of a message.
#[derive(Default)]
struct Envelope {
    from: String,
    to: Vec<String>,
}

// STAGES from the handlers below: the MTA sends only what the milter handles.
#[milterkit::milter]
impl Milter for Logger {
    type Message = Envelope;

    async fn mail(&mut self, m: &mut Envelope, mail: Mail<'_>) -> Result<Decision> {
        m.from = mail.address().to_string();
        Ok(Decision::Continue)
    }

    async fn rcpt(&mut self, m: &mut Envelope, rcpt: Rcpt<'_>) -> Result<Decision> {
        m.to.push(rcpt.address().to_string());
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, m: &mut Envelope, eom: &mut Eom<'_>) -> Result<Decision> {
        let id = eom
            .macro_value("i")
            .map(|v| v.to_string())
            .unwrap_or_default();
        println!("message {id}: from {} to {}", m.from, m.to.join(", "));
        Ok(Decision::Accept)
    }
}

/// Serves with `milterkit::run!`: `--socket`, the other flags and their `MILTERKIT_*`
/// variables, logging, SIGTERM and systemd; `--help` lists them.
fn main() -> std::process::ExitCode {
    milterkit::run!(Logger::default)
}
