//! Criterion benchmarks of `milterkit-proto`.
//!
//! - `decode_encode`: bytes per second through [`FrameDecoder`] and [`Command::decode`] /
//!   [`Response::decode`] and back through `encode`, on a real Postfix capture (both directions),
//!   and decoding a 1 MiB body sent as 65,535-byte BODY chunks.
//! - `transaction`: one whole Postfix-like session through an [`MtaSession`] and a
//!   [`MilterSession`] joined by in-memory byte buffers, from OPTNEG to QUIT.
//!
//! Run with `cargo bench -p milterkit-proto --bench proto`.
#![allow(clippy::expect_used)]

use std::fmt;
use std::hint::black_box;
use std::path::PathBuf;

use bytes::{Bytes, BytesMut};
use criterion::{BatchSize, Criterion, Throughput};
use milterkit_proto::frame::MILTER_CHUNK_SIZE;
use milterkit_proto::{
    Actions, Agreement, Command, Connect, Decision, Envelope, Event, Family, FrameDecoder,
    MacroLists, MilterConfig, MilterSession, Modification, MtaConfig, MtaEvent, MtaSession, Offer,
    ProtocolFlags, Request, Response, Sent, Stage, Stages,
};

/// The capture both `decode_encode` stream benchmarks replay, relative to `testdata/captures/`.
const CAPTURE: &str = "postfix/01-accept-plain";

/// Size of the body of the `body_1mib` benchmark.
const BODY_SIZE: usize = 1 << 20;

/// Size of the single body chunk of the `transaction` benchmark.
const TRANSACTION_BODY_SIZE: usize = 1024;

// ---------------------------------------------------------------------------------------------
// Streams
// ---------------------------------------------------------------------------------------------

/// Reads one side of the capture (`mta` or `milter`), or `None` when the file is not there.
fn read_capture(side: &str) -> Option<Vec<u8>> {
    let path: PathBuf = [
        env!("CARGO_MANIFEST_DIR"),
        "testdata",
        "captures",
        &format!("{CAPTURE}.{side}.bin"),
    ]
    .iter()
    .collect();
    match std::fs::read(&path) {
        Ok(bytes) => {
            eprintln!("using capture {} ({} bytes)", path.display(), bytes.len());
            Some(bytes)
        }
        Err(e) => {
            eprintln!(
                "capture {} not readable ({e}); using the built-in equivalent",
                path.display()
            );
            None
        }
    }
}

/// A `{name}`/value pair of a macro packet.
fn pair(name: &'static str, value: &'static str) -> (Bytes, Bytes) {
    (
        Bytes::from_static(name.as_bytes()),
        Bytes::from_static(value.as_bytes()),
    )
}

/// A macro packet for the command `stage` carrying `i`, the queue id, as Postfix sends it from
/// DATA on.
fn queue_id_macro(stage: u8) -> Command {
    Command::Macro {
        stage,
        pairs: vec![pair("i", "CAFED514072")],
    }
}

/// The seven headers of the Postfix capture (the transaction uses the first five).
fn headers() -> Vec<Command> {
    [
        ("From", "Sender <sender@example.org>"),
        ("To", "User <user@example.net>"),
        ("Subject", "Case 01 plain accept"),
        ("Date", "Thu, 01 Jan 2026 00:00:00 +0000"),
        ("Message-ID", "<01-accept-plain@rig.test>"),
        ("MIME-Version", "1.0"),
        ("Content-Type", "text/plain; charset=us-ascii"),
    ]
    .into_iter()
    .map(|(name, value)| Command::Header {
        name: Bytes::from_static(name.as_bytes()),
        value: Bytes::from_static(value.as_bytes()),
    })
    .collect()
}

/// The macros Postfix sends before CONNECT in the capture.
fn connect_macros() -> Command {
    Command::Macro {
        stage: b'C',
        pairs: vec![
            pair("j", "postfix.rig.test"),
            pair("{daemon_name}", "postfix.rig.test"),
            pair("{daemon_addr}", "127.0.0.1"),
            pair("v", "Postfix 3.7.11"),
            pair("_", "unknown [127.0.0.1]"),
        ],
    }
}

/// The CONNECT of the capture.
fn connect() -> Command {
    Command::Connect(Connect {
        hostname: Bytes::from_static(b"[127.0.0.1]"),
        family: Family::Inet,
        port: 36258,
        address: Bytes::from_static(b"127.0.0.1"),
    })
}

/// The MTA→milter stream of the capture, rebuilt packet by packet with [`Command::encode`]: the
/// stand-in when the capture file is missing.
fn built_mta_stream() -> Vec<u8> {
    let mut cmds = vec![
        Command::Optneg(Offer::default()),
        connect_macros(),
        connect(),
        Command::Macro {
            stage: b'H',
            pairs: Vec::new(),
        },
        Command::Helo {
            name: Bytes::from_static(b"client.rig.test"),
        },
        Command::Macro {
            stage: b'M',
            pairs: vec![
                pair("{mail_addr}", "sender@example.org"),
                pair("{mail_host}", "[127.0.0.1]:35765"),
                pair("{mail_mailer}", "smtp"),
            ],
        },
        Command::Mail(Envelope::new("<sender@example.org>")),
        Command::Macro {
            stage: b'R',
            pairs: vec![
                pair("{rcpt_addr}", "user@example.net"),
                pair("{rcpt_host}", "[127.0.0.1]:35765"),
                pair("{rcpt_mailer}", "smtp"),
            ],
        },
        Command::Rcpt(Envelope::new("<user@example.net>")),
        queue_id_macro(b'T'),
        Command::Data,
    ];
    for header in headers() {
        cmds.push(queue_id_macro(b'L'));
        cmds.push(header);
    }
    cmds.extend([
        queue_id_macro(b'N'),
        Command::Eoh,
        queue_id_macro(b'B'),
        Command::Body(Bytes::from_static(
            b"This is the body of the test message.\r\nSecond line.\r\n",
        )),
        queue_id_macro(b'E'),
        Command::Eom {
            chunk: Bytes::new(),
        },
        Command::Abort,
        Command::Abort,
        Command::Quit,
    ]);
    let mut out = BytesMut::new();
    for cmd in &cmds {
        cmd.encode(&mut out);
    }
    out.to_vec()
}

/// The milter→MTA stream of the capture, rebuilt with [`Response::encode`]: the OPTNEG reply
/// (version 6, actions 0x1FF, SKIP) and fifteen CONTINUEs.
fn built_milter_stream() -> Vec<u8> {
    let mut out = BytesMut::new();
    Response::Optneg(Agreement {
        version: 6,
        actions: Actions::CURRENT,
        protocol: ProtocolFlags::SKIP,
        macros: MacroLists::default(),
    })
    .encode(&mut out);
    for _ in 0..15 {
        Response::Decision(Decision::Continue).encode(&mut out);
    }
    out.to_vec()
}

/// A body of `len` bytes of 76-character lines ending in CRLF.
fn body_bytes(len: usize) -> Bytes {
    let line = b"The quick brown fox jumps over the lazy dog; 0123456789 abcdefghijklmnopqrs\r\n";
    line.iter()
        .copied()
        .cycle()
        .take(len)
        .collect::<Vec<u8>>()
        .into()
}

/// A 1 MiB body as the MTA streams it: BODY packets of [`MILTER_CHUNK_SIZE`] bytes, the last one
/// shorter.
fn body_stream() -> Vec<u8> {
    let body = body_bytes(BODY_SIZE);
    let mut out = BytesMut::with_capacity(BODY_SIZE + 5 * (BODY_SIZE / MILTER_CHUNK_SIZE + 1));
    for chunk in body.chunks(MILTER_CHUNK_SIZE) {
        Command::Body(body.slice_ref(chunk)).encode(&mut out);
    }
    out.to_vec()
}

// ---------------------------------------------------------------------------------------------
// decode_encode
// ---------------------------------------------------------------------------------------------

/// Decodes every frame of `input` as a [`Command`] and encodes it into `out`; returns the number
/// of commands.
fn recode_commands(decoder: &FrameDecoder, input: &mut BytesMut, out: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Some(frame) = decoder.decode(input).expect("capture frames are valid") {
        Command::decode(frame)
            .expect("capture commands are valid")
            .encode(out);
        n += 1;
    }
    n
}

/// Decodes every frame of `input` as a [`Response`] and encodes it into `out`; returns the number
/// of responses.
fn recode_responses(decoder: &FrameDecoder, input: &mut BytesMut, out: &mut BytesMut) -> usize {
    let mut n = 0;
    while let Some(frame) = decoder.decode(input).expect("capture frames are valid") {
        Response::decode(frame)
            .expect("capture responses are valid")
            .encode(out);
        n += 1;
    }
    n
}

/// Decodes every frame of `input` as a [`Command`], keeping only the count and the body bytes
/// seen (so nothing is optimised away).
fn decode_body(decoder: &FrameDecoder, input: &mut BytesMut) -> (usize, usize) {
    let (mut n, mut bytes) = (0, 0);
    while let Some(frame) = decoder.decode(input).expect("body frames are valid") {
        match Command::decode(frame).expect("body commands are valid") {
            Command::Body(chunk) => bytes += chunk.len(),
            other => panic!("expected BODY, decoded {other:?}"),
        }
        n += 1;
    }
    (n, bytes)
}

/// Checks once, outside the measurement, that `recode` reproduces `stream` byte for byte and
/// consumes all of it.
fn check_round_trip(
    what: &str,
    stream: &[u8],
    recode: fn(&FrameDecoder, &mut BytesMut, &mut BytesMut) -> usize,
) {
    let mut input = BytesMut::from(stream);
    let mut out = BytesMut::new();
    let n = recode(&FrameDecoder::default(), &mut input, &mut out);
    assert!(
        input.is_empty(),
        "{what}: {} bytes left undecoded",
        input.len()
    );
    if &out[..] != stream {
        eprintln!("{what}: re-encoding {n} frames did not reproduce the stream byte for byte");
    }
}

/// The `decode_encode` group.
fn decode_encode(c: &mut Criterion) {
    let mta = read_capture("mta").unwrap_or_else(built_mta_stream);
    let milter = read_capture("milter").unwrap_or_else(built_milter_stream);
    let body = body_stream();
    check_round_trip("mta stream", &mta, recode_commands);
    check_round_trip("milter stream", &milter, recode_responses);
    let decoder = FrameDecoder::default();
    assert_eq!(
        decode_body(&decoder, &mut BytesMut::from(&body[..])),
        (BODY_SIZE.div_ceil(MILTER_CHUNK_SIZE), BODY_SIZE)
    );

    let mut group = c.benchmark_group("decode_encode");

    group.throughput(Throughput::Bytes(mta.len() as u64));
    group.bench_function("mta_commands", |b| {
        let mut out = BytesMut::with_capacity(mta.len());
        b.iter_batched_ref(
            || BytesMut::from(&mta[..]),
            |input| {
                out.clear();
                black_box(recode_commands(&decoder, input, &mut out));
            },
            BatchSize::SmallInput,
        );
    });

    group.throughput(Throughput::Bytes(milter.len() as u64));
    group.bench_function("milter_responses", |b| {
        let mut out = BytesMut::with_capacity(milter.len());
        b.iter_batched_ref(
            || BytesMut::from(&milter[..]),
            |input| {
                out.clear();
                black_box(recode_responses(&decoder, input, &mut out));
            },
            BatchSize::SmallInput,
        );
    });

    group.throughput(Throughput::Bytes(body.len() as u64));
    group.bench_function("body_1mib_decode", |b| {
        b.iter_batched_ref(
            || BytesMut::from(&body[..]),
            |input| black_box(decode_body(&decoder, input)),
            BatchSize::LargeInput,
        );
    });

    group.finish();
}

// ---------------------------------------------------------------------------------------------
// transaction
// ---------------------------------------------------------------------------------------------

/// Something that went wrong in a transaction, with the step it happened at.
#[derive(Debug)]
struct TransactionError {
    /// The command being sent (or `OPTNEG`), as `Debug` text.
    step: String,
    /// What failed.
    error: String,
}

impl fmt::Display for TransactionError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "at {}: {}", self.step, self.error)
    }
}

/// What a transaction produced, to check it once and to keep the work observable.
#[derive(Debug, Default, PartialEq, Eq)]
struct Outcome {
    /// Events the milter saw (including OPTNEG, ABORT and QUIT).
    milter_events: usize,
    /// Decisions the MTA received.
    decisions: usize,
    /// Modifications the MTA received.
    modifications: usize,
    /// Commands [`MtaSession::send`] reported as skipped.
    skipped: usize,
}

/// The two sessions of one connection and the byte buffers between them.
struct Link {
    /// The MTA end.
    mta: MtaSession,
    /// The milter end.
    milter: MilterSession,
    /// Bytes on their way from the MTA to the milter.
    to_milter: BytesMut,
    /// Bytes on their way from the milter to the MTA.
    to_mta: BytesMut,
    /// What the milter asks for in its OPTNEG reply.
    request: Request,
    /// The header the milter adds at end of message.
    added: Modification,
    /// Counters.
    outcome: Outcome,
}

impl Link {
    /// A fresh connection; the MTA's OPTNEG is queued.
    fn new(request: Request, added: Modification) -> Link {
        Link {
            mta: MtaSession::new(Offer::default(), MtaConfig::default()),
            milter: MilterSession::new(MilterConfig::default()),
            to_milter: BytesMut::new(),
            to_mta: BytesMut::new(),
            request,
            added,
            outcome: Outcome::default(),
        }
    }

    /// Moves the MTA's queued bytes to the milter, lets the milter handle every event (negotiate
    /// OPTNEG; at EOM add the header; answer every awaited event with CONTINUE), moves its bytes
    /// back and collects the MTA's events until it waits for nothing (or, with `until`, until the
    /// decision for that stage arrived).
    fn pump(&mut self, until: Option<Stage>) -> Result<(), String> {
        self.mta.poll_transmit(&mut self.to_milter);
        self.milter.handle_input(&self.to_milter);
        self.to_milter.clear();
        while let Some(event) = self
            .milter
            .poll_event()
            .map_err(|e| format!("milter poll_event: {e} ({e:?})"))?
        {
            self.outcome.milter_events += 1;
            match event {
                Event::Negotiate(_) => {
                    self.milter
                        .negotiate(&self.request)
                        .map_err(|e| format!("milter negotiate: {e} ({e:?})"))?;
                }
                Event::Eom => {
                    self.milter
                        .modify(self.added.clone())
                        .map_err(|e| format!("milter modify: {e} ({e:?})"))?;
                }
                _ => {}
            }
            if self.milter.awaiting().is_some() {
                self.milter
                    .decide(Decision::Continue)
                    .map_err(|e| format!("milter decide: {e} ({e:?})"))?;
            }
        }
        self.milter.poll_transmit(&mut self.to_mta);
        self.mta.handle_input(&self.to_mta);
        self.to_mta.clear();
        while let Some(event) = self
            .mta
            .poll_event()
            .map_err(|e| format!("mta poll_event: {e} ({e:?})"))?
        {
            match event {
                MtaEvent::Decision { stage, decision } => {
                    self.outcome.decisions += 1;
                    if decision != Decision::Continue {
                        return Err(format!("mta got {decision:?} for {stage:?}"));
                    }
                }
                MtaEvent::Modification(_) => self.outcome.modifications += 1,
                MtaEvent::Negotiated(_) | MtaEvent::Progress => {}
                other => return Err(format!("mta got unexpected {other:?}")),
            }
        }
        if self.mta.negotiating() {
            return Err("no OPTNEG reply came back".into());
        }
        if let Some(stage) = until.and(self.mta.awaiting()) {
            return Err(format!("the reply for {stage:?} did not come back"));
        }
        Ok(())
    }

    /// Sends one command from the MTA and pumps until its reply (if any) is back.
    fn send(&mut self, cmd: Command) -> Result<(), TransactionError> {
        let step = || format!("{cmd:?}");
        let sent = self.mta.send(cmd.clone()).map_err(|e| TransactionError {
            step: step(),
            error: format!("mta send: {e} ({e:?})"),
        })?;
        let until = match sent {
            Sent::AwaitingReply(stage) => Some(stage),
            Sent::NoReply => None,
            Sent::Skipped => {
                self.outcome.skipped += 1;
                return Ok(());
            }
        };
        self.pump(until).map_err(|error| TransactionError {
            step: step(),
            error,
        })
    }
}

/// The commands of one Postfix-like transaction after OPTNEG: macros for CONNECT, CONNECT, HELO,
/// MAIL, RCPT, DATA, five headers, EOH, one 1 KiB body chunk, EOM, ABORT, QUIT.
fn transaction_script() -> Vec<Command> {
    let mut script = vec![
        connect_macros(),
        connect(),
        Command::Helo {
            name: Bytes::from_static(b"client.rig.test"),
        },
        Command::Mail(Envelope::new("<sender@example.org>")),
        Command::Rcpt(Envelope::new("<user@example.net>")),
        Command::Data,
    ];
    script.extend(headers().into_iter().take(5));
    script.extend([
        Command::Eoh,
        Command::Body(body_bytes(TRANSACTION_BODY_SIZE)),
        Command::Eom {
            chunk: Bytes::new(),
        },
        Command::Abort,
        Command::Quit,
    ]);
    script
}

/// Runs one whole transaction: a new connection, OPTNEG, then every command of `script`.
fn run_transaction(
    script: &[Command],
    request: &Request,
    added: &Modification,
) -> Result<Outcome, TransactionError> {
    let mut link = Link::new(request.clone(), added.clone());
    link.pump(None).map_err(|error| TransactionError {
        step: "OPTNEG".into(),
        error,
    })?;
    for cmd in script {
        link.send(cmd.clone())?;
    }
    Ok(link.outcome)
}

/// The `transaction` group.
fn transaction(c: &mut Criterion) {
    let script = transaction_script();
    let request = Request {
        stages: Stages::all(),
        actions: Actions::ADD_HEADER,
        ..Request::default()
    };
    let added = Modification::AddHeader {
        name: Bytes::from_static(b"X-Milter"),
        value: Bytes::from_static(b"checked by milterkit"),
    };

    // One checked run first, so a misbehaving session is reported with its step, not as a panic
    // in the middle of the measurement.
    let outcome = match run_transaction(&script, &request, &added) {
        Ok(outcome) => outcome,
        Err(e) => panic!("transaction failed {e}"),
    };
    // OPTNEG, CONNECT, HELO, MAIL, RCPT, DATA, 5 headers, EOH, BODY, EOM, QUIT (the ABORT after
    // EOM comes outside a message and is no event).
    let expected = Outcome {
        milter_events: 15,
        decisions: 13,
        modifications: 1,
        skipped: 0,
    };
    assert_eq!(outcome, expected, "unexpected transaction outcome");

    let mut group = c.benchmark_group("transaction");
    group.throughput(Throughput::Elements(1));
    group.bench_function("postfix_like", |b| {
        b.iter(|| {
            black_box(
                run_transaction(black_box(&script), &request, &added)
                    .expect("checked before measuring"),
            )
        });
    });
    group.finish();
}

/// Runs both groups, as `criterion_group!` and `criterion_main!` would (their generated `pub fn`
/// cannot carry the doc comment the workspace lints require).
fn main() {
    let mut criterion = Criterion::default().configure_from_args();
    decode_encode(&mut criterion);
    transaction(&mut criterion);
    criterion.final_summary();
}
