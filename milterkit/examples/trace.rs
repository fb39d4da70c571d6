//! Prints every stage and every macro the MTA hands over: a way to see what Postfix or Sendmail
//! really sends. Accepts everything.
//!
//! Run: `cargo run -p milterkit --example trace -- --socket unix:/run/milter/trace.sock`.

use milterkit::{
    Abort, Body, Connect, Data, Decision, Eoh, Eom, Header, Helo, Macros, Mail, Milter, Offer,
    Rcpt, Request, Result, Unknown,
};

/// `println!` that does not panic when standard output has gone (`trace | head`): the milter
/// goes on answering the MTA.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// Counts connections' messages; prints everything.
#[derive(Default)]
struct Trace {
    messages: u32,
}

fn show(stage: &str, what: String, macros: &Macros) {
    say!("{stage} {what}");
    for (name, value) in macros.iter() {
        say!(
            "    {} = {}",
            String::from_utf8_lossy(name),
            String::from_utf8_lossy(value)
        );
    }
}

impl Milter for Trace {
    type Message = ();

    async fn negotiate(&mut self, offer: &Offer, _: &mut Request) -> Result<()> {
        say!(
            "negotiate version={} actions={:#x} protocol={:#x}",
            offer.version,
            offer.actions.bits(),
            offer.protocol.bits()
        );
        Ok(())
    }

    async fn connect(&mut self, c: Connect<'_>) -> Result<Decision> {
        let what = format!(
            "{} {:?} {} port {}",
            c.hostname(),
            c.family(),
            c.address(),
            c.port()
        );
        show("connect", what, c.macros());
        Ok(Decision::Continue)
    }

    async fn helo(&mut self, h: Helo<'_>) -> Result<Decision> {
        show("helo", h.name().to_string(), h.macros());
        Ok(Decision::Continue)
    }

    async fn mail(&mut self, _: &mut (), m: Mail<'_>) -> Result<Decision> {
        self.messages += 1;
        let args: Vec<String> = m.args().map(|a| a.to_string()).collect();
        show(
            "mail",
            format!("{} {}", m.address(), args.join(" ")),
            m.macros(),
        );
        Ok(Decision::Continue)
    }

    async fn rcpt(&mut self, _: &mut (), r: Rcpt<'_>) -> Result<Decision> {
        show("rcpt", r.address().to_string(), r.macros());
        Ok(Decision::Continue)
    }

    async fn data(&mut self, _: &mut (), d: Data<'_>) -> Result<Decision> {
        show("data", String::new(), d.macros());
        Ok(Decision::Continue)
    }

    async fn header(&mut self, _: &mut (), h: Header<'_>) -> Result<Decision> {
        say!("header {}: {:?}", h.name(), h.value());
        Ok(Decision::Continue)
    }

    async fn eoh(&mut self, _: &mut (), e: Eoh<'_>) -> Result<Decision> {
        show("eoh", String::new(), e.macros());
        Ok(Decision::Continue)
    }

    async fn body(&mut self, _: &mut (), b: Body<'_>) -> Result<Decision> {
        say!("body {} bytes", b.chunk().len());
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        show("eom", format!("message {}", self.messages), eom.macros());
        Ok(Decision::Continue)
    }

    async fn abort(&mut self, _: (), a: Abort<'_>) -> Result<()> {
        show("abort", String::new(), a.macros());
        Ok(())
    }

    async fn unknown(&mut self, u: Unknown<'_>) -> Result<Decision> {
        show("unknown", u.line().to_string(), u.macros());
        Ok(Decision::Continue)
    }

    async fn close(&mut self) {
        say!("close after {} messages", self.messages);
    }
}

/// Serves with `milterkit::run!`: `--socket`, the other flags and their `MILTERKIT_*`
/// variables, logging, SIGTERM and systemd; `--help` lists them.
fn main() -> std::process::ExitCode {
    milterkit::run!(Trace::default)
}
