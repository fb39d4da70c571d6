//! Behaviour of `MtaSession`: what it sends, skips and hands up.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use milterkit_proto::{
    Actions, Command, Decision, FrameDecoder, MisuseError, Modification, MtaConfig, MtaEvent,
    MtaSession, Offer, ProtocolFlags, Response, Sent, Stage,
};

/// An MTA session whose milter answered OPTNEG with `version`, `actions`, `protocol`.
fn negotiated(version: u32, actions: Actions, protocol: ProtocolFlags) -> MtaSession {
    let mut s = MtaSession::new(Offer::default(), MtaConfig::default());
    let mut out = BytesMut::new();
    s.poll_transmit(&mut out);
    let reply = Response::Optneg(milterkit_proto::Agreement {
        version,
        actions,
        protocol,
        macros: Default::default(),
    });
    s.handle_input(&encode(&[reply]));
    assert!(matches!(
        s.poll_event().unwrap(),
        Some(MtaEvent::Negotiated(_))
    ));
    s
}

fn encode(responses: &[Response]) -> BytesMut {
    let mut b = BytesMut::new();
    for r in responses {
        r.encode(&mut b);
    }
    b
}

/// Codes of the commands queued since the last call.
fn sent(s: &mut MtaSession) -> String {
    let mut out = BytesMut::new();
    s.poll_transmit(&mut out);
    let dec = FrameDecoder::default();
    std::iter::from_fn(|| dec.decode(&mut out).unwrap().map(|f| f.code as char)).collect()
}

/// Sends `cmd`, and if a reply is awaited, answers it with `responses`; returns the events.
fn step(s: &mut MtaSession, cmd: Command, responses: &[Response]) -> (Sent, Vec<MtaEvent>) {
    let r = s.send(cmd).unwrap();
    s.handle_input(&encode(responses));
    let events = std::iter::from_fn(|| s.poll_event().unwrap()).collect();
    (r, events)
}

fn cont() -> Response {
    Response::Decision(Decision::Continue)
}

/// A session negotiated (version 6) with `actions` and `protocol`, taken through CONNECT, MAIL,
/// RCPT, DATA and EOH, each continued: the next command is the first BODY chunk or EOM.
fn in_body(actions: Actions, protocol: ProtocolFlags) -> MtaSession {
    let mut s = negotiated(6, actions, protocol);
    for cmd in [
        connect(),
        mail("<a@b>"),
        rcpt("<c@d>"),
        Command::Data,
        Command::Eoh,
    ] {
        step(&mut s, cmd, &[cont()]);
    }
    s
}

#[test]
fn skips_the_stages_the_milter_declined_and_sends_nothing_for_them() {
    let mut s = negotiated(
        6,
        Actions::empty(),
        ProtocolFlags::NOHELO | ProtocolFlags::NOHDRS | ProtocolFlags::NOEOH,
    );
    sent(&mut s);
    assert_eq!(
        step(&mut s, connect(), &[cont()]).0,
        Sent::AwaitingReply(Stage::Connect)
    );
    assert_eq!(step(&mut s, macros(b'H', &[]), &[]).0, Sent::NoReply);
    assert_eq!(step(&mut s, helo(), &[]).0, Sent::Skipped);
    step(&mut s, mail("<a@b>"), &[cont()]);
    step(&mut s, rcpt("<c@d>"), &[cont()]);
    step(&mut s, Command::Data, &[cont()]);
    assert_eq!(
        step(&mut s, macros(b'L', &[("i", "Q")]), &[]).0,
        Sent::Skipped
    );
    assert_eq!(step(&mut s, header("Subject", "x"), &[]).0, Sent::Skipped);
    assert_eq!(step(&mut s, Command::Eoh, &[]).0, Sent::Skipped);
    assert_eq!(
        step(&mut s, body(b"x"), &[cont()]).0,
        Sent::AwaitingReply(Stage::Body)
    );
    // CONNECT, the HELO macros (sent even when HELO is not), MAIL, RCPT, DATA, BODY.
    assert_eq!(sent(&mut s), "CDMRTB");
}

#[test]
fn sends_no_reply_stages_without_waiting() {
    let mut s = negotiated(6, Actions::empty(), ProtocolFlags::NR_HDR);
    for cmd in [connect(), mail("<a@b>"), rcpt("<c@d>"), Command::Data] {
        step(&mut s, cmd, &[cont()]);
    }
    assert_eq!(step(&mut s, header("A", "1"), &[]).0, Sent::NoReply);
    assert_eq!(step(&mut s, header("B", "2"), &[]).0, Sent::NoReply);
    assert_eq!(s.awaiting(), None);
}

#[test]
fn refuses_to_send_while_a_reply_is_awaited() {
    let mut s = negotiated(6, Actions::empty(), ProtocolFlags::empty());
    s.send(connect()).unwrap();
    assert_eq!(
        s.send(helo()),
        Err(MisuseError::ReplyPending(Stage::Connect))
    );
}

#[test]
fn stops_sending_body_after_skip_and_still_sends_end_of_message() {
    let mut s = in_body(Actions::empty(), ProtocolFlags::SKIP);
    sent(&mut s);
    let (_, ev) = step(&mut s, body(b"1"), &[Response::Decision(Decision::Skip)]);
    assert_eq!(
        ev,
        [MtaEvent::Decision {
            stage: Stage::Body,
            decision: Decision::Skip
        }]
    );
    assert_eq!(step(&mut s, body(b"2"), &[]).0, Sent::Skipped);
    assert_eq!(
        step(&mut s, eom(), &[cont()]).0,
        Sent::AwaitingReply(Stage::Eom)
    );
    assert_eq!(sent(&mut s), "BE");
}

#[test]
fn skips_the_rest_of_a_message_the_milter_decided_and_starts_the_next_with_mail() {
    let mut s = negotiated(6, Actions::empty(), ProtocolFlags::empty());
    step(&mut s, connect(), &[cont()]);
    step(&mut s, mail("<a@b>"), &[cont()]);
    step(
        &mut s,
        rcpt("<c@d>"),
        &[Response::Decision(Decision::Accept)],
    );
    assert_eq!(step(&mut s, rcpt("<e@f>"), &[]).0, Sent::Skipped);
    assert_eq!(step(&mut s, Command::Data, &[]).0, Sent::Skipped);
    assert_eq!(step(&mut s, eom(), &[]).0, Sent::Skipped);
    sent(&mut s);
    assert_eq!(
        step(&mut s, mail("<g@h>"), &[cont()]).0,
        Sent::AwaitingReply(Stage::Mail)
    );
    assert_eq!(sent(&mut s), "M");
}

#[test]
fn skips_everything_after_the_milter_accepted_the_whole_session() {
    let mut s = negotiated(6, Actions::empty(), ProtocolFlags::empty());
    step(&mut s, connect(), &[Response::Decision(Decision::Accept)]);
    assert!(s.session_accepted());
    assert_eq!(step(&mut s, helo(), &[]).0, Sent::Skipped);
    assert_eq!(step(&mut s, mail("<a@b>"), &[]).0, Sent::Skipped);
    assert_eq!(step(&mut s, Command::Quit, &[]).0, Sent::NoReply);
}

#[test]
fn sends_abort_before_a_new_mail_inside_an_open_message() {
    let mut s = negotiated(6, Actions::empty(), ProtocolFlags::empty());
    step(&mut s, connect(), &[cont()]);
    step(&mut s, mail("<a@b>"), &[cont()]);
    sent(&mut s);
    step(&mut s, mail("<c@d>"), &[cont()]);
    assert_eq!(sent(&mut s), "AM");
}

#[test]
fn does_not_send_data_or_unknown_to_an_old_milter() {
    let mut s = negotiated(2, Actions::empty(), ProtocolFlags::empty());
    step(&mut s, connect(), &[cont()]);
    assert_eq!(step(&mut s, unknown("XFOO"), &[]).0, Sent::Skipped);
    step(&mut s, mail("<a@b>"), &[cont()]);
    step(&mut s, rcpt("<c@d>"), &[cont()]);
    assert_eq!(step(&mut s, Command::Data, &[]).0, Sent::Skipped);
    assert_eq!(
        step(&mut s, header("A", "1"), &[cont()]).0,
        Sent::AwaitingReply(Stage::Header)
    );
}

#[test]
fn refuses_oversized_body_chunks_and_body_data_in_end_of_message() {
    let mut s = in_body(Actions::empty(), ProtocolFlags::empty());
    assert!(matches!(
        s.send(Command::Body(Bytes::from(vec![0; 65_536]))),
        Err(MisuseError::TooLarge { .. })
    ));
    assert!(matches!(
        s.send(Command::Eom {
            chunk: Bytes::from_static(b"x")
        }),
        Err(MisuseError::Invalid { .. })
    ));
}

#[test]
fn hands_up_progress_modifications_then_the_decision_at_end_of_message() {
    let mut s = in_body(
        Actions::ADD_HEADER | Actions::CHANGE_BODY,
        ProtocolFlags::empty(),
    );
    let add = Modification::AddHeader {
        name: "X".into(),
        value: "1".into(),
    };
    let body1 = Modification::ReplaceBody { chunk: "a".into() };
    let (_, ev) = step(
        &mut s,
        eom(),
        &[
            Response::Progress,
            body1.clone().into(),
            add.clone().into(),
            Response::Decision(Decision::Tempfail),
        ],
    );
    assert_eq!(
        ev,
        [
            MtaEvent::Progress,
            MtaEvent::Modification(body1),
            MtaEvent::Modification(add),
            MtaEvent::Decision {
                stage: Stage::Eom,
                decision: Decision::Tempfail
            },
        ]
    );
    assert!(!s.in_message());
}

#[test]
fn refuses_a_modification_that_was_not_negotiated() {
    let mut s = in_body(Actions::ADD_HEADER, ProtocolFlags::empty());
    s.send(eom()).unwrap();
    s.handle_input(&encode(&[Modification::DeleteRcpt {
        rcpt: "<c@d>".into(),
    }
    .into()]));
    assert!(s.poll_event().is_err());
}

#[test]
fn refuses_a_replacement_body_split_by_another_modification() {
    let mut s = in_body(Actions::CURRENT, ProtocolFlags::empty());
    s.send(eom()).unwrap();
    s.handle_input(&encode(&[
        Modification::ReplaceBody { chunk: "a".into() }.into(),
        Modification::Quarantine { reason: "q".into() }.into(),
        Modification::ReplaceBody { chunk: "b".into() }.into(),
    ]));
    let mut result = Ok(None);
    for _ in 0..3 {
        result = s.poll_event();
    }
    assert!(result.is_err());
}

#[test]
fn quit_nc_lets_a_new_session_start_with_connect() {
    let mut s = negotiated(6, Actions::empty(), ProtocolFlags::empty());
    step(&mut s, connect(), &[cont()]);
    assert_eq!(step(&mut s, Command::QuitNc, &[]).0, Sent::NoReply);
    assert_eq!(
        step(&mut s, connect(), &[cont()]).0,
        Sent::AwaitingReply(Stage::Connect)
    );
    assert_eq!(step(&mut s, Command::Quit, &[]).0, Sent::NoReply);
    assert!(s.is_closed());
    assert!(s.send(helo()).is_err());
}
