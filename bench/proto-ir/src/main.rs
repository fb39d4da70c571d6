//! Runs N whole Postfix-like transactions through an [`MtaSession`] and a [`MilterSession`] joined
//! by in-memory buffers, so that `valgrind --tool=callgrind` can count the core's instructions per
//! transaction (`bench/run.sh` runs it with two values of N and divides the difference).
//!
//! One transaction is one connection: OPTNEG, then as Postfix sends them (a macro packet before
//! every command) CONNECT, HELO, MAIL, RCPT, DATA, the six headers `milterkit bench` sends, EOH, one
//! 1 KiB BODY, EOM (the milter adds `X-Bench: 1`), ABORT, ABORT, QUIT. The milter asks for every
//! stage and `ADD_HEADER`, and answers CONTINUE everywhere: the benchmark milter's behaviour.
//!
//! Usage: `milterkit-proto-ir [N]` (default 1000). Prints one line of counts; exits 1 if a
//! transaction went wrong.

use bytes::{Bytes, BytesMut};
use milterkit_proto::{
    Actions, Command, Connect, Decision, Envelope, Event, Family, MilterConfig, MilterSession,
    Modification, MtaConfig, MtaEvent, MtaSession, Offer, Request, Sent, Stages,
};

/// What one transaction did, checked after the first run.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
struct Counts {
    /// Events the milter side saw.
    events: usize,
    /// Decisions the MTA side received.
    decisions: usize,
    /// Modifications the MTA side received.
    modifications: usize,
}

/// A macro packet for the command `stage`.
fn macros(stage: u8, pairs: &[(&'static str, &'static str)]) -> Command {
    Command::Macro {
        stage,
        pairs: pairs
            .iter()
            .map(|(n, v)| {
                (
                    Bytes::from_static(n.as_bytes()),
                    Bytes::from_static(v.as_bytes()),
                )
            })
            .collect(),
    }
}

/// The commands after OPTNEG, with the macro values `milterkit bench` (Postfix profile) sends.
fn script() -> Vec<Command> {
    let queue_id = [("i", "4Q00000001")];
    let mut s = vec![
        macros(
            b'C',
            &[
                ("j", "mx.example.org"),
                ("{daemon_name}", "mx.example.org"),
                ("{daemon_addr}", "127.0.0.1"),
                ("v", "Postfix 3.7.11"),
                ("_", "client.example.com [192.0.2.1]"),
            ],
        ),
        Command::Connect(Connect {
            hostname: Bytes::from_static(b"client.example.com"),
            family: Family::Inet,
            port: 50000,
            address: Bytes::from_static(b"192.0.2.1"),
        }),
        macros(b'H', &[]),
        Command::Helo {
            name: Bytes::from_static(b"client.example.com"),
        },
        macros(
            b'M',
            &[
                ("{mail_addr}", "bench@example.org"),
                ("{mail_host}", "[192.0.2.1]"),
                ("{mail_mailer}", "smtp"),
            ],
        ),
        Command::Mail(Envelope::new("<bench@example.org>")),
        macros(
            b'R',
            &[
                ("{rcpt_addr}", "rcpt@example.net"),
                ("{rcpt_host}", "[192.0.2.1]"),
                ("{rcpt_mailer}", "smtp"),
            ],
        ),
        Command::Rcpt(Envelope::new("<rcpt@example.net>")),
        macros(b'T', &queue_id),
        Command::Data,
    ];
    for (name, value) in [
        ("From", "Bench <bench@example.org>"),
        ("To", "<rcpt@example.net>"),
        ("Subject", "load test"),
        ("Message-ID", "<bench@example.org>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain"),
    ] {
        s.push(macros(b'L', &queue_id));
        s.push(Command::Header {
            name: Bytes::from_static(name.as_bytes()),
            value: Bytes::from_static(value.as_bytes()),
        });
    }
    let line = b"The quick brown fox jumps over the lazy dog. 0123456789 abcdefghijklmnopq\r\n";
    let body: Vec<u8> = line.iter().copied().cycle().take(1024).collect();
    s.extend([
        macros(b'N', &queue_id),
        Command::Eoh,
        macros(b'B', &queue_id),
        Command::Body(Bytes::from(body)),
        macros(b'E', &queue_id),
        Command::Eom {
            chunk: Bytes::new(),
        },
        Command::Abort,
        Command::Abort,
        Command::Quit,
    ]);
    s
}

/// Both ends of one connection and the bytes between them.
struct Link<'a> {
    mta: MtaSession,
    milter: MilterSession,
    wire: BytesMut,
    request: &'a Request,
    counts: Counts,
}

impl Link<'_> {
    /// Carries the MTA's bytes to the milter, answers every event as the benchmark milter does,
    /// carries the answers back and takes the MTA's events.
    fn pump(&mut self) -> Result<(), String> {
        self.wire.clear();
        self.mta.poll_transmit(&mut self.wire);
        self.milter.handle_input(&self.wire);
        while let Some(event) = self.milter.poll_event().map_err(|e| e.to_string())? {
            self.counts.events += 1;
            match event {
                Event::Negotiate(_) => {
                    self.milter
                        .negotiate(self.request)
                        .map_err(|e| e.to_string())?;
                }
                Event::Eom => self
                    .milter
                    .modify(Modification::AddHeader {
                        name: Bytes::from_static(b"X-Bench"),
                        value: Bytes::from_static(b"1"),
                    })
                    .map_err(|e| e.to_string())?,
                _ => {}
            }
            if self.milter.awaiting().is_some() {
                self.milter
                    .decide(Decision::Continue)
                    .map_err(|e| e.to_string())?;
            }
        }
        self.wire.clear();
        self.milter.poll_transmit(&mut self.wire);
        self.mta.handle_input(&self.wire);
        while let Some(event) = self.mta.poll_event().map_err(|e| e.to_string())? {
            match event {
                MtaEvent::Decision {
                    decision: Decision::Continue,
                    ..
                } => {
                    self.counts.decisions += 1;
                }
                MtaEvent::Modification(_) => self.counts.modifications += 1,
                MtaEvent::Negotiated(_) => {}
                other => return Err(format!("unexpected {other:?}")),
            }
        }
        Ok(())
    }
}

/// One whole connection: OPTNEG, then every command of `script`.
fn transaction(script: &[Command], request: &Request) -> Result<Counts, String> {
    let mut link = Link {
        mta: MtaSession::new(Offer::default(), MtaConfig::default()),
        milter: MilterSession::new(MilterConfig::default()),
        wire: BytesMut::new(),
        request,
        counts: Counts::default(),
    };
    link.pump()?;
    for cmd in script {
        match link.mta.send(cmd.clone()).map_err(|e| e.to_string())? {
            Sent::AwaitingReply(_) | Sent::NoReply => link.pump()?,
            Sent::Skipped => return Err(format!("{cmd:?} was skipped")),
        }
        if link.mta.awaiting().is_some() {
            return Err(format!("no reply to {cmd:?}"));
        }
    }
    Ok(link.counts)
}

fn main() {
    let n: u64 = match std::env::args().nth(1).map(|a| a.parse()) {
        None => 1000,
        Some(Ok(n)) => n,
        Some(Err(_)) => {
            eprintln!("usage: milterkit-proto-ir [N]");
            std::process::exit(2);
        }
    };
    let script = script();
    let request = Request {
        stages: Stages::all(),
        actions: Actions::ADD_HEADER,
        ..Request::default()
    };
    // OPTNEG, CONNECT, HELO, MAIL, RCPT, DATA, 6 headers, EOH, BODY, EOM, QUIT (the ABORTs come
    // after the message and are no events); the 14 between OPTNEG and QUIT are answered.
    let expected = Counts {
        events: 16,
        decisions: 14,
        modifications: 1,
    };
    let mut total = Counts::default();
    for i in 0..n {
        match transaction(&script, &request) {
            Ok(c) if i > 0 || c == expected => {
                total.events += c.events;
                total.decisions += c.decisions;
                total.modifications += c.modifications;
            }
            Ok(c) => {
                eprintln!("unexpected counts {c:?}, expected {expected:?}");
                std::process::exit(1);
            }
            Err(e) => {
                eprintln!("transaction {i} failed: {e}");
                std::process::exit(1);
            }
        }
    }
    println!(
        "{n} transactions: {} events, {} decisions, {} modifications",
        total.events, total.decisions, total.modifications
    );
}
