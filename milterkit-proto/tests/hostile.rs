//! Hostile input: each case names what it sends and the error it must give, with no panic and no
//! allocation beyond the limit.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{BufMut, BytesMut};
use common::*;
use milterkit_proto::{
    Command, Decision, FrameDecoder, FrameError, MilterConfig, MilterSession, MtaConfig,
    MtaSession, Offer, ProtocolError, Request, Sent,
};

/// A milter session that has negotiated and then receives `raw` (hand-written bytes: malformed
/// input is the point here). Returns the first error.
fn milter_error(raw: &[u8]) -> (ProtocolError, MilterSession) {
    let mut s = MilterSession::new(MilterConfig::default());
    s.handle_input(&wire(&[optneg()]));
    s.poll_event().unwrap();
    s.negotiate(&Request::default()).unwrap();
    s.handle_input(raw);
    loop {
        match s.poll_event() {
            Ok(Some(_)) => {
                if s.awaiting().is_some() {
                    s.decide(Decision::Continue).unwrap();
                }
            }
            Ok(None) => panic!("no error for {raw:02x?}"),
            Err(e) => return (e, s),
        }
    }
}

fn frame(code: u8, payload: &[u8]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_u32(u32::try_from(payload.len() + 1).unwrap());
    b.put_u8(code);
    b.put_slice(payload);
    b.to_vec()
}

#[test]
fn rejects_a_zero_length_frame() {
    let (e, _) = milter_error(&[0, 0, 0, 0, b'c']);
    assert_eq!(e, ProtocolError::Frame(FrameError::ZeroLength));
}

#[test]
fn rejects_length_0xffffffff_before_allocating_anything() {
    let (e, mut s) = milter_error(&[0xff, 0xff, 0xff, 0xff, b'B', 1, 2, 3]);
    assert_eq!(
        e,
        ProtocolError::Frame(FrameError::TooLarge {
            len: 0xFFFF_FFFE,
            max: milterkit_proto::frame::DEFAULT_MAX_PAYLOAD
        })
    );
    assert!(
        s.input_mut().capacity() < 4096,
        "buffer grew for a refused frame"
    );
}

#[test]
fn rejects_length_2_pow_31_and_a_frame_one_byte_over_the_limit() {
    for len in [0x8000_0000u32, 65_537 + 1] {
        let dec = FrameDecoder::new(65_536);
        let mut buf = BytesMut::new();
        buf.put_u32(len);
        buf.put_u8(b'B');
        assert!(
            matches!(dec.decode(&mut buf), Err(FrameError::TooLarge { .. })),
            "{len}"
        );
        assert!(buf.capacity() < 4096);
    }
}

#[test]
fn accepts_a_frame_exactly_at_the_limit() {
    let dec = FrameDecoder::new(10);
    let mut buf = BytesMut::from(&frame(b'B', &[7; 10])[..]);
    assert_eq!(dec.decode(&mut buf).unwrap().unwrap().payload.len(), 10);
}

#[test]
fn rejects_an_unknown_command_code() {
    let (e, _) = milter_error(&frame(b'Z', b""));
    assert_eq!(e, ProtocolError::UnknownCode { code: b'Z' });
}

#[test]
fn rejects_a_helo_without_its_nul() {
    let (e, _) = milter_error(&frame(b'H', b"client.example.com"));
    assert!(
        matches!(e, ProtocolError::Malformed { code: b'H', .. }),
        "{e:?}"
    );
}

#[test]
fn rejects_a_truncated_connect() {
    for payload in [
        &b"host\x004"[..],
        b"host\x004\x00",
        b"host\x004\x00\x19127.0.0.1",
        b"host",
    ] {
        let (e, _) = milter_error(&frame(b'C', payload));
        assert!(
            matches!(e, ProtocolError::Malformed { code: b'C', .. }),
            "{payload:?}: {e:?}"
        );
    }
}

#[test]
fn rejects_a_connect_with_an_unknown_family() {
    let (e, _) = milter_error(&frame(b'C', b"host\0S\x00\x19/tmp/x\0"));
    assert!(
        matches!(e, ProtocolError::Malformed { code: b'C', reason } if reason.contains("family"))
    );
}

#[test]
fn rejects_data_after_the_last_field() {
    let (e, _) = milter_error(&frame(b'H', b"name\0extra"));
    assert!(matches!(e, ProtocolError::Malformed { code: b'H', .. }));
}

#[test]
fn rejects_mail_with_an_empty_payload() {
    let (e, _) = milter_error(&frame(b'M', b""));
    assert!(matches!(e, ProtocolError::Malformed { code: b'M', .. }));
}

#[test]
fn rejects_a_macro_packet_without_a_stage_but_ignores_other_malformed_macro_packets() {
    // libmilter ignores macro packets with an odd number of strings or without NULs, and drops
    // the connection for one with no stage byte.
    let mut raw = frame(b'D', b"Cj\0");
    raw.extend(frame(b'D', b"Cj"));
    raw.extend(wire(&[connect()]));
    raw.extend(frame(b'D', b""));
    let (e, s) = milter_error(&raw);
    assert!(matches!(e, ProtocolError::Malformed { code: b'D', .. }));
    assert!(s.macros().is_empty());
}

#[test]
fn rejects_body_before_data_when_the_mta_sends_data() {
    let raw = wire(&[connect(), helo(), mail("<a@b>"), rcpt("<c@d>"), body(b"x")]);
    let (e, _) = milter_error(&raw);
    assert!(
        matches!(e, ProtocolError::OutOfOrder { code: b'B', .. }),
        "{e:?}"
    );
}

#[test]
fn rejects_end_of_message_with_no_message() {
    let (e, _) = milter_error(&wire(&[connect(), helo(), eom()]));
    assert!(
        matches!(e, ProtocolError::OutOfOrder { code: b'E', .. }),
        "{e:?}"
    );
}

#[test]
fn rejects_rcpt_before_mail() {
    let (e, _) = milter_error(&wire(&[connect(), rcpt("<c@d>")]));
    assert!(matches!(e, ProtocolError::OutOfOrder { code: b'R', .. }));
}

#[test]
fn rejects_header_after_end_of_headers() {
    let raw = wire(&[
        connect(),
        mail("<a@b>"),
        rcpt("<c@d>"),
        Command::Data,
        Command::Eoh,
        header("X", "y"),
    ]);
    let (e, _) = milter_error(&raw);
    assert!(matches!(e, ProtocolError::OutOfOrder { code: b'L', .. }));
}

#[test]
fn rejects_a_second_connect_and_a_second_optneg() {
    let (e, _) = milter_error(&wire(&[connect(), connect()]));
    assert!(matches!(e, ProtocolError::OutOfOrder { code: b'C', .. }));
    let (e, _) = milter_error(&wire(&[connect(), optneg()]));
    assert!(matches!(e, ProtocolError::OutOfOrder { code: b'O', .. }));
}

#[test]
fn rejects_commands_before_negotiation() {
    let mut s = MilterSession::new(MilterConfig::default());
    s.handle_input(&wire(&[helo()]));
    assert!(matches!(
        s.poll_event(),
        Err(ProtocolError::OutOfOrder { code: b'H', .. })
    ));
}

#[test]
fn rejects_an_optneg_shorter_than_12_bytes() {
    let mut s = MilterSession::new(MilterConfig::default());
    s.handle_input(&frame(b'O', &[0, 0, 0, 6, 0, 0, 1]));
    assert!(matches!(
        s.poll_event(),
        Err(ProtocolError::Malformed { code: b'O', .. })
    ));
}

#[test]
fn refuses_an_mta_below_protocol_version_2() {
    let mut s = MilterSession::new(MilterConfig::default());
    s.handle_input(&wire(&[Command::Optneg(Offer {
        version: 1,
        ..Offer::default()
    })]));
    s.poll_event().unwrap();
    assert!(s.negotiate(&Request::default()).is_err());
    assert!(matches!(
        s.poll_event(),
        Err(ProtocolError::Incompatible(_))
    ));
}

#[test]
fn stays_closed_after_an_error() {
    let (e, mut s) = milter_error(&[0, 0, 0, 0]);
    s.handle_input(&wire(&[helo()]));
    assert_eq!(s.poll_event(), Err(e));
    assert!(s.is_closed());
}

#[test]
fn survives_every_truncation_of_a_valid_stream() {
    let stream = wire(&[
        optneg(),
        macros(b'C', &[("j", "x")]),
        connect(),
        helo(),
        mail("<a@b>"),
        rcpt("<c@d>"),
        Command::Data,
        header("Subject", "x"),
        Command::Eoh,
        body(b"hello\r\n"),
        eom(),
        Command::Quit,
    ]);
    for cut in 0..stream.len() {
        milterkit_proto::fuzzing::milter_session(&stream[..cut]);
    }
}

/// MTA side: responses from a misbehaving milter.
fn mta_after_negotiation() -> MtaSession {
    let mut s = MtaSession::new(Offer::default(), MtaConfig::default());
    s.handle_input(&frame(b'O', &[0, 0, 0, 6, 0, 0, 1, 0xff, 0, 0, 4, 0]));
    assert!(s.poll_event().unwrap().is_some());
    s
}

#[test]
fn mta_side_rejects_a_response_nobody_asked_for() {
    let mut s = mta_after_negotiation();
    s.handle_input(&frame(b'c', b""));
    assert!(matches!(
        s.poll_event(),
        Err(ProtocolError::UnexpectedResponse { code: b'c', .. })
    ));
}

#[test]
fn mta_side_rejects_a_modification_outside_end_of_message() {
    let mut s = mta_after_negotiation();
    assert!(matches!(s.send(connect()), Ok(Sent::AwaitingReply(_))));
    s.handle_input(&frame(b'h', b"X\0y\0"));
    assert!(matches!(
        s.poll_event(),
        Err(ProtocolError::UnexpectedResponse { code: b'h', .. })
    ));
}

#[test]
fn mta_side_rejects_data_after_a_bare_decision() {
    let mut s = mta_after_negotiation();
    s.send(connect()).unwrap();
    s.handle_input(&frame(b'c', b"x"));
    assert!(matches!(
        s.poll_event(),
        Err(ProtocolError::Malformed { code: b'c', .. })
    ));
}

#[test]
fn mta_side_rejects_a_malformed_reply_text() {
    for text in [
        &b"250 ok\0"[..],
        b"550\0",
        b"550 4.7.1 class mismatch\0",
        b"55x oops\0",
    ] {
        let mut s = mta_after_negotiation();
        s.send(connect()).unwrap();
        s.handle_input(&frame(b'y', text));
        assert!(
            matches!(
                s.poll_event(),
                Err(ProtocolError::Malformed { code: b'y', .. })
            ),
            "{text:?}"
        );
    }
}

#[test]
fn mta_side_rejects_a_reply_to_optneg_that_asks_for_more_than_offered() {
    let mut s = MtaSession::new(
        Offer {
            actions: milterkit_proto::Actions::ADD_HEADER,
            ..Offer::default()
        },
        MtaConfig::default(),
    );
    s.handle_input(&frame(b'O', &[0, 0, 0, 6, 0, 0, 0, 3, 0, 0, 0, 0]));
    assert!(matches!(
        s.poll_event(),
        Err(ProtocolError::Incompatible(_))
    ));
}

#[test]
fn mta_side_rejects_skip_when_not_negotiated() {
    let mut s = MtaSession::new(Offer::default(), MtaConfig::default());
    s.handle_input(&frame(b'O', &[0, 0, 0, 6, 0, 0, 0, 0, 0, 0, 0, 0]));
    s.poll_event().unwrap();
    for cmd in [
        connect(),
        helo(),
        mail("<a@b>"),
        rcpt("<c@d>"),
        Command::Data,
        Command::Eoh,
    ] {
        s.send(cmd).unwrap();
        s.handle_input(&frame(b'c', b""));
        s.poll_event().unwrap();
    }
    s.send(body(b"x")).unwrap();
    s.handle_input(&frame(b's', b""));
    assert!(matches!(
        s.poll_event(),
        Err(ProtocolError::UnexpectedResponse { code: b's', .. })
    ));
}
