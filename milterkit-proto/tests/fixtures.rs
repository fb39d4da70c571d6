//! Golden tests: every real capture of Postfix 3.7 and Sendmail 8.17 talking to a libmilter milter
//! (testdata/captures, recorded by `cargo run -p interop --bin capture`) decodes, re-encodes byte for byte, matches its transcript, and drives
//! both sessions exactly as the real peers did.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod logline;

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::{Path, PathBuf};

use bytes::BytesMut;
use milterkit_proto::{
    Agreement, Command, Event, Frame, FrameDecoder, MilterConfig, MilterSession, MtaConfig,
    MtaEvent, MtaSession, ProtocolFlags, Request, Response, Sent, Stage, Stages,
};

/// One scenario: both byte streams and the annotated transcript.
struct Capture {
    folder: String,
    name: String,
    mta: Vec<u8>,
    milter: Vec<u8>,
    transcript: String,
}

impl Capture {
    fn id(&self) -> String {
        format!("{}/{}", self.folder, self.name)
    }

    /// The proxy's connection number, which the reference milter's log calls `c=`.
    fn conn(&self) -> u32 {
        let line = self
            .transcript
            .lines()
            .find(|l| l.starts_with("# conn "))
            .expect("transcript names its connection");
        line.split_whitespace().nth(2).unwrap().parse().unwrap()
    }
}

fn captures_dir() -> PathBuf {
    if let Ok(dir) = std::env::var("MILTERKIT_FIXTURES") {
        return PathBuf::from(dir);
    }
    Path::new(env!("CARGO_MANIFEST_DIR")).join("testdata/captures")
}

/// Every scenario with both streams, sorted; fails the test when there are none.
fn captures() -> Vec<Capture> {
    let dir = captures_dir();
    let mut out = Vec::new();
    let folders =
        fs::read_dir(&dir).unwrap_or_else(|e| panic!("no captures at {}: {e}", dir.display()));
    for folder in folders {
        let folder = folder.unwrap().path();
        if !folder.is_dir() {
            continue;
        }
        for entry in fs::read_dir(&folder).unwrap() {
            let path = entry.unwrap().path();
            let file = path.file_name().unwrap().to_str().unwrap().to_owned();
            let Some(name) = file.strip_suffix(".mta.bin") else {
                continue;
            };
            out.push(Capture {
                folder: folder.file_name().unwrap().to_str().unwrap().to_owned(),
                name: name.to_owned(),
                mta: fs::read(&path).unwrap(),
                milter: fs::read(folder.join(format!("{name}.milter.bin"))).unwrap(),
                transcript: fs::read_to_string(folder.join(format!("{name}.txt"))).unwrap(),
            });
        }
    }
    out.sort_by_key(Capture::id);
    assert!(
        !out.is_empty(),
        "found no captures under {}: the golden tests need testdata/captures (`cargo run -p interop --bin capture` records them)",
        dir.display()
    );
    out
}

fn frames(stream: &[u8]) -> Vec<Frame> {
    let dec = FrameDecoder::default();
    let mut buf = BytesMut::from(stream);
    let mut out = Vec::new();
    while let Some(f) = dec.decode(&mut buf).expect("capture frames are valid") {
        out.push(f);
    }
    assert!(buf.is_empty(), "stream parses exactly to its end");
    out
}

fn encoded(f: impl FnOnce(&mut BytesMut)) -> BytesMut {
    let mut b = BytesMut::new();
    f(&mut b);
    b
}

#[test]
fn every_capture_packet_decodes_and_reencodes_to_identical_bytes() {
    let caps = captures();
    let (mut commands, mut responses) = (0, 0);
    for c in &caps {
        for frame in frames(&c.mta) {
            let original = encoded(|b| frame.encode(b));
            let cmd = Command::decode(frame)
                .unwrap_or_else(|e| panic!("{}: command does not decode: {e}", c.id()));
            assert_eq!(encoded(|b| cmd.encode(b)), original, "{}: {cmd:?}", c.id());
            commands += 1;
        }
        for frame in frames(&c.milter) {
            let original = encoded(|b| frame.encode(b));
            let resp = Response::decode(frame)
                .unwrap_or_else(|e| panic!("{}: response does not decode: {e}", c.id()));
            assert_eq!(
                encoded(|b| resp.encode(b)),
                original,
                "{}: {resp:?}",
                c.id()
            );
            responses += 1;
        }
    }
    println!(
        "checked {} captures ({} streams): {commands} commands and {responses} responses, {} packets",
        caps.len(),
        caps.len() * 2,
        commands + responses
    );
    assert_eq!(
        caps.len() * 2,
        112,
        "the captures' README promises 112 streams"
    );
    assert_eq!(
        commands + responses,
        2898,
        "the captures' README promises 2,898 packets"
    );
}

/// `(direction, code, len)` of every packet line of a transcript.
fn transcript_packets(t: &str, dir: &str) -> Vec<(u8, usize)> {
    let prefix = format!("packet {dir} #");
    t.lines()
        .map(str::trim_start)
        .filter(|l| l.starts_with(&prefix))
        .map(|l| {
            let len = l.split("len=").nth(1).unwrap().split(' ').next().unwrap();
            let code = l.split("cmd=\"").nth(1).unwrap().as_bytes()[0];
            (code, len.parse::<usize>().unwrap())
        })
        .collect()
}

#[test]
fn every_capture_matches_its_transcript_packet_by_packet() {
    let caps = captures();
    for c in &caps {
        for (stream, dir) in [(&c.mta, "mta>milter"), (&c.milter, "milter>mta")] {
            let ours: Vec<(u8, usize)> = frames(stream)
                .iter()
                .map(|f| (f.code, f.payload.len() + 1))
                .collect();
            assert_eq!(
                ours,
                transcript_packets(&c.transcript, dir),
                "{} {dir}",
                c.id()
            );
        }
    }
}

/// The request that makes our negotiation answer what libmilter answered in the capture.
fn request_like(reply: &Agreement) -> Request {
    let mut stages = Stages::empty();
    let mut no_reply = Stages::empty();
    for s in Stage::ALL {
        if !reply.protocol.intersects(s.suppress_flag()) {
            stages |= s.as_set();
        }
        if reply.protocol.intersects(s.no_reply_flag()) {
            no_reply |= s.as_set();
        }
    }
    Request {
        stages,
        no_reply,
        actions: reply.actions,
        options: reply.protocol & ProtocolFlags::CAPABILITIES,
        required: ProtocolFlags::empty(),
        macros: reply.macros.clone(),
    }
}

/// Replays the MTA stream into a `MilterSession` that answers with the capture's own responses.
/// Returns the bytes it sent and what it handed up, as lines in the reference milter's log format.
fn replay_milter_side(c: &Capture) -> (BytesMut, Vec<String>) {
    let mut script: std::collections::VecDeque<Response> = frames(&c.milter)
        .into_iter()
        .map(|f| Response::decode(f).unwrap())
        .collect();
    let Some(Response::Optneg(reply)) = script.pop_front() else {
        panic!("{}: milter stream does not start with OPTNEG", c.id());
    };
    let request = request_like(&reply);
    let mut s = MilterSession::new(MilterConfig::default());
    let mut log = Vec::new();
    let mut msg = MessageLog::default();
    let mut out = BytesMut::new();
    // Feed in odd-sized pieces: any split must behave the same.
    let pieces: Vec<&[u8]> = c.mta.chunks(97).collect();
    let mut closed = false;
    for (i, piece) in pieces.iter().enumerate() {
        s.handle_input(piece);
        if i + 1 == pieces.len() {
            s.handle_eof();
        }
        while let Some(event) = s
            .poll_event()
            .unwrap_or_else(|e| panic!("{}: protocol error: {e}", c.id()))
        {
            if let Event::Negotiate(_) = event {
                s.negotiate(&request).unwrap();
            }
            closed |= matches!(event, Event::Quit);
            log.extend(msg.lines(&event, &s));
            if let Some(stage) = s.awaiting() {
                loop {
                    let next = script
                        .pop_front()
                        .unwrap_or_else(|| panic!("{}: no reply left for {stage}", c.id()));
                    match next {
                        Response::Modification(m) => s.modify(m).unwrap(),
                        Response::Progress => s.progress().unwrap(),
                        Response::Decision(d) => {
                            s.decide(d).unwrap();
                            break;
                        }
                        other => panic!("{}: unexpected {other:?}", c.id()),
                    }
                }
            }
        }
        s.poll_transmit(&mut out);
    }
    if !closed {
        log.push("close".into());
    }
    assert!(
        script.is_empty(),
        "{}: responses left over: {script:?}\nevents: {log:#?}",
        c.id()
    );
    (out, log)
}

#[test]
fn milter_session_replays_every_mta_stream_and_answers_byte_for_byte_as_libmilter() {
    let caps = captures();
    for c in &caps {
        let (out, _) = replay_milter_side(c);
        assert_eq!(&out[..], &c.milter[..], "{}: milter bytes differ", c.id());
    }
    println!("{} MTA streams replayed through MilterSession", caps.len());
}

/// Per-message counters the reference milter prints (header index, body chunk count, CRC).
#[derive(Default)]
struct MessageLog {
    headers: usize,
    chunks: usize,
    body: Vec<u8>,
}

impl MessageLog {
    fn lines(&mut self, event: &Event, s: &MilterSession) -> Vec<String> {
        let (line, stage) = match event {
            Event::Negotiate(o) => (
                format!(
                    "negotiate actions={:#x} proto={:#x}",
                    o.actions.bits(),
                    o.protocol.bits()
                ),
                None,
            ),
            Event::Connect(c) => {
                let family = match c.family {
                    milterkit_proto::Family::Inet => "inet",
                    milterkit_proto::Family::Inet6 => "inet6",
                    milterkit_proto::Family::Unix => "unix",
                    milterkit_proto::Family::Unknown => "unknown",
                };
                let addr = c.ip().map(|ip| ip.to_string()).unwrap_or_default();
                (
                    format!(
                        "connect hostname=\"{}\" family={family} addr=\"{addr}\" port={}",
                        logline::esc(&c.hostname),
                        c.port
                    ),
                    Some("connect"),
                )
            }
            Event::Helo { name } => (
                format!("helo name=\"{}\"", logline::esc(name)),
                Some("helo"),
            ),
            Event::Mail(e) => {
                *self = MessageLog::default();
                (
                    format!(
                        "envfrom sender=\"{}\" nargs={}",
                        logline::esc(&e.address),
                        e.args.len()
                    ),
                    Some("envfrom"),
                )
            }
            Event::Rcpt(e) => (
                format!("envrcpt rcpt=\"{}\"", logline::esc(&e.address)),
                Some("envrcpt"),
            ),
            Event::Data => ("data".into(), Some("data")),
            Event::Header { name, value } => {
                self.headers += 1;
                (
                    format!(
                        "header index={} name=\"{}\" value=\"{}\"",
                        self.headers,
                        logline::esc(name),
                        logline::esc(value)
                    ),
                    None,
                )
            }
            Event::Eoh => (format!("eoh headers={}", self.headers), Some("eoh")),
            Event::Body(chunk) => {
                self.chunks += 1;
                self.body.extend_from_slice(chunk);
                (
                    format!(
                        "body chunk={} len={} head=\"{}\"",
                        self.chunks,
                        chunk.len(),
                        logline::esc(&chunk[..chunk.len().min(32)])
                    ),
                    None,
                )
            }
            Event::Eom => (
                format!(
                    "eom body_chunks={} body_bytes={} body_crc32={:#010x}",
                    self.chunks,
                    self.body.len(),
                    crc32(&self.body)
                ),
                Some("eom"),
            ),
            Event::Unknown { line } => (
                format!("unknown cmd=\"{}\"", logline::esc(line)),
                Some("unknown"),
            ),
            Event::Abort => ("abort".into(), None),
            Event::Quit | Event::QuitNc => ("close".into(), None),
            other => panic!("unexpected event {other:?}"),
        };
        let mut lines = vec![line];
        if let Some(stage) = stage {
            let mut macros: Vec<String> = logline::MACROS
                .iter()
                .filter_map(|name| {
                    s.macros().get(name).map(|v| {
                        format!(
                            "macro stage={stage} name={name} value=\"{}\"",
                            logline::esc(v)
                        )
                    })
                })
                .collect();
            macros.sort();
            lines.extend(macros);
        }
        lines
    }
}

fn crc32(data: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in data {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

/// The callback lines of connection `conn` in a reference log, in our comparable form: timestamps,
/// counters, return/action lines and libmilter's flag names dropped; macro lines of one callback
/// sorted.
fn reference_lines(log: &str, conn: u32) -> Vec<String> {
    let tag = format!(" c={conn} ");
    let mut out: Vec<String> = Vec::new();
    let mut macros: Vec<String> = Vec::new();
    for l in log.lines().filter(|l| l.contains(&tag)) {
        let rest = l.split_once(&tag).unwrap().1;
        let rest = rest.split_once(' ').unwrap().1; // drop m=N
        let word = rest.split(' ').next().unwrap();
        if word != "macro" {
            macros.sort();
            out.append(&mut macros);
        }
        match word {
            "return" | "action" | "negotiate-reply" | "setsymlist" => {}
            "negotiate" => {
                let keep: Vec<&str> = rest
                    .split(' ')
                    .filter(|t| t.starts_with("actions=") || t.starts_with("proto="))
                    .collect();
                out.push(format!("negotiate {}", keep.join(" ")));
            }
            "macro" => macros.push(rest.to_owned()),
            _ => out.push(rest.to_owned()),
        }
    }
    macros.sort();
    out.append(&mut macros);
    out
}

/// Differences from libmilter that we chose, written down. Each entry: (capture, our line or
/// reference line, why). Empty means we hand up exactly what libmilter handed up.
const INTENDED_DIFFERENCES: &[(&str, &str, &str)] = &[];

#[test]
fn milter_session_hands_up_what_libmilter_handed_its_callbacks() {
    let caps = captures();
    let mut logs = BTreeMap::new();
    let mut compared = 0;
    let mut differences = BTreeSet::new();
    for c in &caps {
        let log = logs.entry(c.folder.clone()).or_insert_with(|| {
            fs::read_to_string(captures_dir().join(&c.folder).join("ref-milter.log")).unwrap()
        });
        let reference = reference_lines(log, c.conn());
        let (_, ours) = replay_milter_side(c);
        compared += reference.len();
        if ours != reference {
            for l in ours.iter().filter(|l| !reference.contains(l)) {
                differences.insert(format!("{}: ours only: {l}", c.id()));
            }
            for l in reference.iter().filter(|l| !ours.contains(l)) {
                differences.insert(format!("{}: libmilter only: {l}", c.id()));
            }
            if differences.is_empty() {
                differences.insert(format!("{}: same lines, different order", c.id()));
            }
        }
    }
    let unexplained: Vec<&String> = differences
        .iter()
        .filter(|d| {
            !INTENDED_DIFFERENCES
                .iter()
                .any(|(cap, line, _)| d.starts_with(cap) && d.ends_with(line))
        })
        .collect();
    println!(
        "compared {compared} callback and macro lines of {} captures",
        caps.len()
    );
    assert!(
        unexplained.is_empty(),
        "differences from libmilter:\n{unexplained:#?}"
    );
}

/// Replays the milter stream into an `MtaSession` that sends the capture's own commands; returns
/// the bytes it sent and the codes of what it handed up.
fn replay_mta_side(c: &Capture) -> (BytesMut, Vec<u8>) {
    let commands: Vec<Command> = frames(&c.mta)
        .into_iter()
        .map(|f| Command::decode(f).unwrap())
        .collect();
    let mut replies = frames(&c.milter).into_iter();
    let Some(Command::Optneg(offer)) = commands.first().cloned() else {
        panic!("{}: MTA stream does not start with OPTNEG", c.id());
    };
    let mut s = MtaSession::new(offer, MtaConfig::default());
    let mut seen = Vec::new();
    let mut out = BytesMut::new();
    let mut feed =
        |s: &mut MtaSession, seen: &mut Vec<u8>, until_done: &dyn Fn(&MtaSession) -> bool| {
            while !until_done(s) {
                let f = replies
                    .next()
                    .unwrap_or_else(|| panic!("{}: milter stream ended early", c.id()));
                s.handle_input(&encoded(|b| f.encode(b)));
                while let Some(e) = s
                    .poll_event()
                    .unwrap_or_else(|e| panic!("{}: protocol error: {e}", c.id()))
                {
                    seen.push(match e {
                        MtaEvent::Negotiated(_) => b'O',
                        MtaEvent::Decision { decision, .. } => decision.code(),
                        MtaEvent::Modification(m) => m.code(),
                        MtaEvent::Progress => b'p',
                        other => panic!("unexpected {other:?}"),
                    });
                }
            }
        };
    s.poll_transmit(&mut out);
    feed(&mut s, &mut seen, &|s| !s.negotiating());
    for cmd in commands.into_iter().skip(1) {
        let sent = s
            .send(cmd.clone())
            .unwrap_or_else(|e| panic!("{}: cannot send {cmd:?}: {e}", c.id()));
        s.poll_transmit(&mut out);
        match sent {
            Sent::AwaitingReply(_) => feed(&mut s, &mut seen, &|s| s.awaiting().is_none()),
            Sent::NoReply => {}
            Sent::Skipped => panic!("{}: session skipped {cmd:?}, the MTA sent it", c.id()),
        }
    }
    assert!(replies.next().is_none(), "{}: replies left over", c.id());
    (out, seen)
}

#[test]
fn mta_session_replays_every_milter_stream_and_sends_byte_for_byte_what_the_mta_sent() {
    let caps = captures();
    let mut events = 0;
    for c in &caps {
        let (out, seen) = replay_mta_side(c);
        assert_eq!(&out[..], &c.mta[..], "{}: MTA bytes differ", c.id());
        let expected: Vec<u8> = transcript_packets(&c.transcript, "milter>mta")
            .into_iter()
            .map(|(code, _)| code)
            .collect();
        assert_eq!(
            String::from_utf8_lossy(&seen),
            String::from_utf8_lossy(&expected),
            "{}: decisions and modifications differ from the transcript",
            c.id()
        );
        events += seen.len();
    }
    println!(
        "{} milter streams replayed through MtaSession: {events} decisions, modifications and progress",
        caps.len()
    );
}

#[test]
fn captures_show_what_the_fixtures_readme_says_of_each_mta() {
    let caps = captures();
    let offers: BTreeSet<(u32, u32, u32)> = caps
        .iter()
        .map(
            |c| match Command::decode(frames(&c.mta).remove(0)).unwrap() {
                Command::Optneg(o) => (o.version, o.actions.bits(), o.protocol.bits()),
                other => panic!("{other:?}"),
            },
        )
        .collect();
    assert_eq!(offers, BTreeSet::from([(6, 0x1FF, 0x1F_FFFF)]));
    // Postfix sends `D L` before every header and `D B` before every body chunk; Sendmail never.
    for c in &caps {
        let cmds: Vec<Command> = frames(&c.mta)
            .into_iter()
            .map(|f| Command::decode(f).unwrap())
            .collect();
        let count = |pred: &dyn Fn(&Command) -> bool| cmds.iter().filter(|c| pred(c)).count();
        let content = count(&|c| matches!(c, Command::Header { .. } | Command::Body(_)));
        let content_macros = count(&|c| {
            matches!(
                c,
                Command::Macro {
                    stage: b'L' | b'B',
                    ..
                }
            )
        });
        if c.folder.starts_with("postfix") {
            assert_eq!(content_macros, content, "{}", c.id());
        } else {
            assert_eq!(content_macros, 0, "{}", c.id());
        }
    }
}
