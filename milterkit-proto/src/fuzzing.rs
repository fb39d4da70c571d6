//! Entry points for the fuzz targets in `fuzz/` and for the property tests. Each takes arbitrary
//! bytes, must never panic, and checks an invariant with `assert!` (a failed assert is a finding).

use bytes::{Bytes, BytesMut};

use crate::command::{Command, Envelope};
use crate::frame::{Frame, FrameDecoder};
use crate::milter::{Event, MilterConfig, MilterSession};
use crate::mta::{MtaConfig, MtaSession, Sent};
use crate::negotiate::{Actions, Offer, ProtocolFlags, Request};
use crate::response::{Decision, Modification, Response};
use crate::stage::Stages;

/// Limit used by the entry points: small, so that "never allocates past the limit" is visible.
pub const FUZZ_MAX_PAYLOAD: usize = 4096;

/// Decodes `data` whole and in pieces split by its first byte; both must give the same frames,
/// each re-encoding to its own bytes, and no buffer may grow past the limit.
pub fn frames(data: &[u8]) {
    let dec = FrameDecoder::new(FUZZ_MAX_PAYLOAD);
    let whole = decode_all(&dec, &[data]);
    let step = usize::from(data.first().copied().unwrap_or(1)).max(1);
    let pieces: Vec<&[u8]> = data.chunks(step).collect();
    assert_eq!(whole, decode_all(&dec, &pieces));
    let mut re = BytesMut::new();
    for f in &whole.0 {
        f.encode(&mut re);
    }
    assert!(data.starts_with(&re));
}

fn decode_all(dec: &FrameDecoder, pieces: &[&[u8]]) -> (Vec<Frame>, bool) {
    let mut buf = BytesMut::new();
    let mut out = Vec::new();
    for p in pieces {
        buf.extend_from_slice(p);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => out.push(f),
                Ok(None) => break,
                Err(_) => return (out, true),
            }
            assert!(buf.capacity() <= FUZZ_MAX_PAYLOAD + 5 + data_cap(pieces));
        }
    }
    (out, false)
}

fn data_cap(pieces: &[&[u8]]) -> usize {
    pieces.iter().map(|p| p.len()).sum::<usize>() * 2 + 64
}

/// Every frame of `data` that decodes as a [`Command`] re-encodes and decodes to the same command.
pub fn commands(data: &[u8]) {
    for frame in frames_of(data) {
        if let Ok(cmd) = Command::decode(frame) {
            let mut wire = BytesMut::new();
            cmd.encode(&mut wire);
            let again = frames_of(&wire);
            assert_eq!(again.len(), 1);
            let back = Command::decode(again[0].clone());
            assert_eq!(back.as_ref(), Ok(&cmd));
        }
    }
}

/// Every frame of `data` that decodes as a [`Response`] re-encodes to identical bytes.
pub fn responses(data: &[u8]) {
    for frame in frames_of(data) {
        let mut original = BytesMut::new();
        frame.encode(&mut original);
        if let Ok(resp) = Response::decode(frame) {
            let mut wire = BytesMut::new();
            resp.encode(&mut wire);
            assert_eq!(wire, original);
        }
    }
}

fn frames_of(data: &[u8]) -> Vec<Frame> {
    let dec = FrameDecoder::new(FUZZ_MAX_PAYLOAD);
    let mut buf = BytesMut::from(data);
    std::iter::from_fn(|| dec.decode(&mut buf).ok().flatten()).collect()
}

/// Feeds `data` to a [`MilterSession`] as MTA input, in pieces, answering every awaited event
/// with a decision chosen from the data; everything the session sends must decode as responses.
pub fn milter_session(data: &[u8]) {
    let mut s = MilterSession::new(MilterConfig {
        max_payload: FUZZ_MAX_PAYLOAD,
    });
    let request = Request {
        stages: Stages::all() - Stages::DATA,
        no_reply: Stages::HEADER,
        actions: Actions::CURRENT,
        options: ProtocolFlags::SKIP,
        ..Request::default()
    };
    let mut out = BytesMut::new();
    let choice = data.last().copied().unwrap_or(0);
    for piece in data.chunks(7) {
        s.handle_input(piece);
        while let Ok(Some(event)) = s.poll_event() {
            if let Event::Negotiate(_) = event {
                let _ = s.negotiate(&request);
                continue;
            }
            if s.awaiting().is_some() {
                if let Event::Eom = event {
                    let _ = s.modify(Modification::AddHeader {
                        name: Bytes::from_static(b"X-Fuzz"),
                        value: Bytes::from_static(b"1"),
                    });
                    let _ = s.progress();
                }
                let d = match choice % 4 {
                    0 => Decision::Continue,
                    1 => Decision::Skip,
                    2 => Decision::Reject,
                    _ => Decision::Accept,
                };
                if s.decide(d).is_err() {
                    assert!(s.decide(Decision::Continue).is_ok());
                }
                assert!(s.awaiting().is_none());
            }
        }
        s.poll_transmit(&mut out);
    }
    s.handle_eof();
    while let Ok(Some(_)) = s.poll_event() {}
    for frame in frames_of(&out) {
        assert!(Response::decode(frame).is_ok());
    }
}

/// Runs an MTA session through a fixed transaction while `data` plays the milter's replies; it
/// must end in events or a protocol error, never a panic, and never send past a pending reply.
pub fn mta_session(data: &[u8]) {
    let mut s = MtaSession::new(
        Offer::default(),
        MtaConfig {
            max_payload: FUZZ_MAX_PAYLOAD,
        },
    );
    let script = [
        Command::Connect(crate::command::Connect {
            hostname: Bytes::from_static(b"client"),
            family: crate::command::Family::Inet,
            port: 25,
            address: Bytes::from_static(b"192.0.2.1"),
        }),
        Command::Helo {
            name: Bytes::from_static(b"client"),
        },
        Command::Mail(Envelope::new(Bytes::from_static(b"<a@example.org>"))),
        Command::Rcpt(Envelope::new(Bytes::from_static(b"<b@example.org>"))),
        Command::Data,
        Command::Header {
            name: Bytes::from_static(b"Subject"),
            value: Bytes::from_static(b"x"),
        },
        Command::Eoh,
        Command::Body(Bytes::from_static(b"body\r\n")),
        Command::Eom {
            chunk: Bytes::new(),
        },
        Command::Quit,
    ];
    let mut next = script.iter();
    let mut out = BytesMut::new();
    for piece in data.chunks(5) {
        s.handle_input(piece);
        loop {
            match s.poll_event() {
                Ok(Some(_)) => continue,
                Ok(None) => {}
                Err(_) => return,
            }
            if s.negotiating() || s.awaiting().is_some() {
                break;
            }
            let Some(cmd) = next.next() else { return };
            if let Ok(Sent::AwaitingReply(_)) = s.send(cmd.clone()) {
                assert!(s.send(Command::Data).is_err());
                break;
            }
        }
        s.poll_transmit(&mut out);
    }
}
