//! Behaviour of `MilterSession`: what it hands up, what it sends, what it refuses.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::{Bytes, BytesMut};
use common::*;
use milterkit_proto::{
    Actions, Command, Decision, Event, MacroLists, MacroStage, MilterConfig, MilterSession,
    MisuseError, Modification, NegotiateError, Offer, ProtocolError, ProtocolFlags, Reply, Request,
    Response, Stage, Stages,
};

fn all() -> Request {
    Request {
        actions: Actions::CURRENT - Actions::SET_SYMLIST,
        options: ProtocolFlags::SKIP,
        ..Request::default()
    }
}

fn transaction() -> Vec<Command> {
    vec![
        optneg(),
        macros(b'C', &[("j", "mx.example.org")]),
        connect(),
        helo(),
        macros(b'M', &[("{mail_addr}", "alice@example.org")]),
        mail("<alice@example.org>"),
        rcpt("<bob@example.net>"),
        Command::Data,
        header("Subject", "Hello"),
        Command::Eoh,
        body(b"Hi\r\n"),
        eom(),
    ]
}

#[test]
fn hands_up_every_stage_and_answers_each_decision_in_order() {
    let mut s = milter_with(&all(), &transaction());
    let events = drain(&mut s, |_| Decision::Continue);
    let names: Vec<&str> = events
        .iter()
        .map(|e| match e {
            Event::Connect(_) => "connect",
            Event::Helo { .. } => "helo",
            Event::Mail(_) => "mail",
            Event::Rcpt(_) => "rcpt",
            Event::Data => "data",
            Event::Header { .. } => "header",
            Event::Eoh => "eoh",
            Event::Body(_) => "body",
            Event::Eom => "eom",
            other => panic!("{other:?}"),
        })
        .collect();
    assert_eq!(
        names,
        ["connect", "helo", "mail", "rcpt", "data", "header", "eoh", "body", "eom"]
    );
    assert_eq!(sent_codes(&mut s), "Occccccccc");
}

#[test]
fn waits_for_a_decision_before_handing_up_the_next_event_so_macros_stay_put() {
    let mut s = milter_with(&all(), &transaction());
    assert!(matches!(s.poll_event().unwrap(), Some(Event::Connect(_))));
    assert_eq!(s.poll_event().unwrap(), None);
    assert_eq!(s.macros().get("j"), Some(&b"mx.example.org"[..]));
    s.decide(Decision::Continue).unwrap();
    assert!(matches!(s.poll_event().unwrap(), Some(Event::Helo { .. })));
}

#[test]
fn refuses_a_second_decision_for_one_event() {
    let mut s = milter_with(&all(), &transaction());
    s.poll_event().unwrap();
    s.decide(Decision::Continue).unwrap();
    assert_eq!(s.decide(Decision::Continue), Err(MisuseError::NotAwaiting));
}

#[test]
fn answers_continue_itself_for_stages_the_milter_did_not_ask_for_but_the_mta_sent() {
    // An MTA that offers no suppress bits at all (protocol version 2 style).
    let offer = Offer {
        version: 2,
        actions: Actions::V1,
        protocol: ProtocolFlags::empty(),
    };
    let request = Request {
        stages: Stages::RCPT,
        ..Request::default()
    };
    let mut cmds = transaction();
    cmds[0] = Command::Optneg(offer);
    let mut s = MilterSession::new(MilterConfig::default());
    s.handle_input(&wire(&cmds));
    s.poll_event().unwrap();
    let agreement = s.negotiate(&request).unwrap().clone();
    assert_eq!(agreement.version, 2);
    let events = drain(&mut s, |_| Decision::Continue);
    assert!(
        matches!(events[..], [Event::Rcpt(_), Event::Eom]),
        "{events:?}"
    );
    // OPTNEG reply, then one 'c' for every command sent.
    assert_eq!(sent_codes(&mut s), "Occccccccc");
}

#[test]
fn sends_nothing_for_no_reply_stages_the_mta_offered() {
    let request = Request {
        no_reply: Stages::HEADER | Stages::CONNECT,
        ..all()
    };
    let mut s = milter_with(&request, &transaction());
    let agreement = s.agreement().unwrap();
    assert!(agreement
        .protocol
        .contains(ProtocolFlags::NR_HDR | ProtocolFlags::NR_CONN));
    let mut awaited = Vec::new();
    while let Some(e) = s.poll_event().unwrap() {
        awaited.push((e, s.awaiting()));
        if s.awaiting().is_some() {
            s.decide(Decision::Continue).unwrap();
        }
    }
    assert!(matches!(awaited[0], (Event::Connect(_), None)));
    assert!(matches!(awaited[5], (Event::Header { .. }, None)));
    assert_eq!(sent_codes(&mut s), "Occccccc");
}

#[test]
fn answers_continue_for_no_reply_stages_the_mta_did_not_offer() {
    let offer = Offer {
        protocol: ProtocolFlags::CURRENT - ProtocolFlags::ALL_NO_REPLY,
        ..Offer::default()
    };
    let request = Request {
        no_reply: Stages::HEADER,
        ..all()
    };
    let mut cmds = transaction();
    cmds[0] = Command::Optneg(offer);
    let mut s = milter_with(&request, &cmds);
    let mut header_awaited = None;
    while let Some(e) = s.poll_event().unwrap() {
        if let Event::Header { .. } = e {
            header_awaited = Some(s.awaiting());
        }
        if s.awaiting().is_some() {
            s.decide(Decision::Continue).unwrap();
        }
    }
    assert_eq!(header_awaited, Some(None));
    assert_eq!(sent_codes(&mut s), "Occccccccc");
}

#[test]
fn refuses_skip_outside_body_and_when_not_negotiated() {
    let mut s = milter_with(&all(), &transaction());
    s.poll_event().unwrap();
    assert!(matches!(
        s.decide(Decision::Skip),
        Err(MisuseError::DecisionNotAllowed {
            stage: Stage::Connect,
            ..
        })
    ));
    let request = Request {
        options: ProtocolFlags::empty(),
        ..all()
    };
    let mut s = milter_with(&request, &transaction());
    while let Some(e) = s.poll_event().unwrap() {
        if let Event::Body(_) = e {
            assert!(s.decide(Decision::Skip).is_err());
        }
        s.decide(Decision::Continue).unwrap();
    }
}

#[test]
fn refuses_discard_at_connect_and_helo() {
    let mut s = milter_with(&all(), &transaction());
    s.poll_event().unwrap();
    assert!(s.decide(Decision::Discard).is_err());
    s.decide(Decision::Continue).unwrap();
    s.poll_event().unwrap();
    assert!(s.decide(Decision::Discard).is_err());
}

#[test]
fn refuses_modifications_and_progress_outside_end_of_message() {
    let mut s = milter_with(&all(), &transaction());
    s.poll_event().unwrap();
    let add = Modification::AddHeader {
        name: "X-A".into(),
        value: "1".into(),
    };
    assert_eq!(s.modify(add), Err(MisuseError::OutsideEom("add header")));
    assert_eq!(s.progress(), Err(MisuseError::OutsideEom("progress")));
}

#[test]
fn refuses_a_modification_whose_action_was_not_negotiated() {
    let request = Request {
        actions: Actions::ADD_HEADER,
        ..Request::default()
    };
    let mut s = milter_with(&request, &transaction());
    while let Some(e) = s.poll_event().unwrap() {
        if e == Event::Eom {
            let r = s.modify(Modification::DeleteRcpt {
                rcpt: "<bob@example.net>".into(),
            });
            assert!(matches!(r, Err(MisuseError::NotNegotiated { .. })), "{r:?}");
        }
        s.decide(Decision::Continue).unwrap();
    }
}

#[test]
fn splits_a_large_replacement_body_into_65535_byte_chunks() {
    let mut s = milter_with(&all(), &transaction());
    let new_body = Bytes::from(vec![b'x'; 150_000]);
    while let Some(e) = s.poll_event().unwrap() {
        if e == Event::Eom {
            s.modify(Modification::ReplaceBody {
                chunk: new_body.clone(),
            })
            .unwrap();
        }
        s.decide(Decision::Continue).unwrap();
    }
    let mut out = BytesMut::new();
    s.poll_transmit(&mut out);
    let dec = milterkit_proto::FrameDecoder::default();
    let sizes: Vec<usize> = std::iter::from_fn(|| dec.decode(&mut out).unwrap())
        .filter(|f| f.code == b'b')
        .map(|f| f.payload.len())
        .collect();
    assert_eq!(sizes, [65_535, 65_535, 18_930]);
}

#[test]
fn refuses_a_replacement_body_interrupted_by_another_modification() {
    let mut s = milter_with(&all(), &transaction());
    while let Some(e) = s.poll_event().unwrap() {
        if e == Event::Eom {
            s.modify(Modification::ReplaceBody { chunk: "a".into() })
                .unwrap();
            s.modify(Modification::ReplaceBody { chunk: "b".into() })
                .unwrap();
            s.modify(Modification::Quarantine { reason: "q".into() })
                .unwrap();
            assert_eq!(
                s.modify(Modification::ReplaceBody { chunk: "c".into() }),
                Err(MisuseError::BodyNotContiguous)
            );
        }
        s.decide(Decision::Continue).unwrap();
    }
}

#[test]
fn refuses_modifications_the_mtas_would_refuse() {
    let mut s = milter_with(&all(), &transaction());
    while let Some(e) = s.poll_event().unwrap() {
        if e == Event::Eom {
            for bad in [
                Modification::AddHeader {
                    name: "".into(),
                    value: "v".into(),
                },
                Modification::AddHeader {
                    name: "X".into(),
                    value: Bytes::from_static(b"a\0b"),
                },
                Modification::Quarantine { reason: "".into() },
                Modification::ChangeFrom {
                    sender: "".into(),
                    args: None,
                },
                Modification::AddHeader {
                    name: "X".into(),
                    value: Bytes::from(vec![b'v'; 70_000]),
                },
            ] {
                assert!(s.modify(bad.clone()).is_err(), "{bad:?} accepted");
            }
        }
        s.decide(Decision::Continue).unwrap();
    }
    assert_eq!(sent_codes(&mut s), "Occccccccc");
}

#[test]
fn sends_modifications_and_progress_before_the_decision_at_end_of_message() {
    let mut s = milter_with(&all(), &transaction());
    while let Some(e) = s.poll_event().unwrap() {
        if e == Event::Eom {
            s.progress().unwrap();
            s.modify(Modification::ChangeFrom {
                sender: "<b@example.org>".into(),
                args: Some("RET=HDRS".into()),
            })
            .unwrap();
            s.modify(Modification::AddRcptPar {
                rcpt: "<c@example.org>".into(),
                args: None,
            })
            .unwrap();
            s.modify(Modification::InsertHeader {
                index: 0,
                name: "X-Top".into(),
                value: "1".into(),
            })
            .unwrap();
            s.decide(Decision::Reply(Reply::new(550, "5.7.1", "no").unwrap()))
                .unwrap();
        } else {
            s.decide(Decision::Continue).unwrap();
        }
    }
    assert_eq!(sent_codes(&mut s), "Occccccccpe2iy");
}

#[test]
fn a_message_level_decision_ends_the_message_and_a_new_one_may_follow() {
    let mut cmds = transaction();
    cmds.truncate(6); // up to MAIL
    cmds.extend([
        macros(b'M', &[("i", "Q2")]),
        mail("<second@example.org>"),
        rcpt("<x@example.org>"),
    ]);
    let mut s = milter_with(&all(), &cmds);
    let mut seen = Vec::new();
    while let Some(e) = s.poll_event().unwrap() {
        let d = match &e {
            Event::Mail(env) if env.address == "<alice@example.org>" => Decision::Reject,
            _ => Decision::Continue,
        };
        seen.push(e);
        s.decide(d).unwrap();
        if seen.len() == 3 {
            assert!(!s.in_message());
        }
    }
    assert!(matches!(
        seen[..],
        [
            Event::Connect(_),
            Event::Helo { .. },
            Event::Mail(_),
            Event::Mail(_),
            Event::Rcpt(_)
        ]
    ));
    assert!(s.in_message());
}

#[test]
fn reject_at_rcpt_refuses_one_recipient_and_keeps_the_message_open() {
    let mut cmds = transaction();
    cmds.insert(7, rcpt("<carol@example.net>"));
    let mut s = milter_with(&all(), &cmds);
    let events = drain(&mut s, |e| match e {
        Event::Rcpt(env) if env.address == "<bob@example.net>" => Decision::Tempfail,
        _ => Decision::Continue,
    });
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Rcpt(_)))
            .count(),
        2
    );
    assert_eq!(events.last(), Some(&Event::Eom));
}

#[test]
fn abort_inside_a_message_is_handed_up_once_and_clears_message_macros() {
    let mut cmds = transaction();
    cmds.truncate(7); // up to RCPT
    cmds.extend([Command::Abort, Command::Abort, unknown("XFOO")]);
    let mut s = milter_with(&all(), &cmds);
    let mut events = Vec::new();
    while let Some(e) = s.poll_event().unwrap() {
        if e == Event::Abort {
            // The abort handler still sees the message's macros.
            assert_eq!(s.macros().get("mail_addr"), Some(&b"alice@example.org"[..]));
        }
        if matches!(e, Event::Unknown { .. }) {
            assert_eq!(s.macros().get("mail_addr"), None);
            assert_eq!(s.macros().get("j"), Some(&b"mx.example.org"[..]));
        }
        events.push(e.clone());
        if s.awaiting().is_some() {
            s.decide(Decision::Continue).unwrap();
        }
    }
    assert_eq!(events.iter().filter(|e| **e == Event::Abort).count(), 1);
    assert!(matches!(events.last(), Some(Event::Unknown { .. })));
}

#[test]
fn a_new_mail_inside_a_message_aborts_the_open_one_first() {
    let mut cmds = transaction();
    cmds.truncate(7);
    cmds.push(mail("<again@example.org>"));
    let mut s = milter_with(&all(), &cmds);
    let events = drain(&mut s, |_| Decision::Continue);
    assert!(
        matches!(events[events.len() - 2..], [Event::Abort, Event::Mail(_)]),
        "{events:?}"
    );
}

#[test]
fn quit_inside_a_message_aborts_it_then_ends_the_session() {
    let mut cmds = transaction();
    cmds.truncate(7);
    cmds.push(Command::Quit);
    cmds.push(helo()); // ignored: the session is over
    let mut s = milter_with(&all(), &cmds);
    let events = drain(&mut s, |_| Decision::Continue);
    assert!(matches!(
        events[events.len() - 2..],
        [Event::Abort, Event::Quit]
    ));
    assert!(s.is_closed());
}

#[test]
fn quit_nc_ends_the_session_and_a_new_connect_reuses_the_agreement() {
    let mut cmds = transaction();
    cmds.extend([
        Command::QuitNc,
        macros(b'C', &[("j", "second")]),
        connect(),
        helo(),
    ]);
    let mut s = milter_with(&all(), &cmds);
    let mut saw_j = None;
    let mut events = Vec::new();
    while let Some(e) = s.poll_event().unwrap() {
        if matches!(e, Event::Connect(_)) {
            saw_j = s.macros().get("j").map(<[u8]>::to_vec);
        }
        events.push(e);
        if s.awaiting().is_some() {
            s.decide(Decision::Continue).unwrap();
        }
    }
    assert!(events.contains(&Event::QuitNc));
    assert_eq!(saw_j.as_deref(), Some(&b"second"[..]));
    assert!(matches!(events.last(), Some(Event::Helo { .. })));
}

#[test]
fn end_of_stream_inside_a_message_aborts_it() {
    let mut cmds = transaction();
    cmds.truncate(7);
    let mut s = milter_with(&all(), &cmds);
    s.handle_eof();
    let events = drain(&mut s, |_| Decision::Continue);
    assert_eq!(events.last(), Some(&Event::Abort));
    assert!(s.is_closed());
}

#[test]
fn unknown_commands_are_handed_up_before_and_inside_the_envelope() {
    let cmds = vec![
        optneg(),
        connect(),
        unknown("XFOO bar"),
        mail("<a@b>"),
        unknown("XBAR"),
        rcpt("<c@d>"),
        unknown("XBAZ"),
    ];
    let mut s = milter_with(&all(), &cmds);
    let events = drain(&mut s, |e| match e {
        Event::Unknown { .. } => Decision::Reject,
        _ => Decision::Continue,
    });
    assert_eq!(
        events
            .iter()
            .filter(|e| matches!(e, Event::Unknown { .. }))
            .count(),
        3
    );
    assert!(
        s.in_message(),
        "a reject at UNKNOWN refuses the command, not the message"
    );
}

#[test]
fn negotiation_fails_when_the_mta_lacks_a_requested_action_and_nothing_is_sent() {
    let offer = Offer {
        actions: Actions::ADD_HEADER,
        ..Offer::default()
    };
    let mut s = MilterSession::new(MilterConfig::default());
    s.handle_input(&wire(&[Command::Optneg(offer)]));
    s.poll_event().unwrap();
    let r = s.negotiate(&Request {
        actions: Actions::CHANGE_BODY,
        ..Request::default()
    });
    assert!(matches!(r, Err(NegotiateError::Incompatible(_))), "{r:?}");
    assert!(matches!(
        s.poll_event(),
        Err(ProtocolError::Incompatible(_))
    ));
    assert_eq!(sent_codes(&mut s), "");
}

#[test]
fn negotiation_sends_macro_lists_and_requests_setsymlist() {
    let mut lists = MacroLists::default();
    lists.set(MacroStage::CONNECT, ["{client_addr}", "j"]);
    let mut s = MilterSession::new(MilterConfig::default());
    s.handle_input(&wire(&[optneg()]));
    s.poll_event().unwrap();
    let a = s
        .negotiate(&Request {
            macros: lists.clone(),
            ..Request::default()
        })
        .unwrap();
    assert!(a.actions.contains(Actions::SET_SYMLIST));
    let mut out = BytesMut::new();
    s.poll_transmit(&mut out);
    let f = milterkit_proto::FrameDecoder::default()
        .decode(&mut out)
        .unwrap()
        .unwrap();
    let Response::Optneg(reply) = Response::decode(f).unwrap() else {
        panic!()
    };
    assert_eq!(reply.macros, lists);
}

#[test]
fn a_body_chunk_inside_eom_is_handed_up_as_body_without_a_reply() {
    let mut cmds = transaction();
    cmds[11] = Command::Eom {
        chunk: Bytes::from_static(b"tail"),
    };
    let mut s = milter_with(&all(), &cmds);
    let events = drain(&mut s, |_| Decision::Continue);
    assert!(matches!(&events[events.len() - 2..], [Event::Body(b), Event::Eom] if b == "tail"));
    assert_eq!(sent_codes(&mut s), "Occccccccc");
}

#[test]
fn a_message_without_data_is_handed_up_whole_as_libmilter_takes_it() {
    // Several MTA-side implementations send no DATA even when it was agreed.
    let mut cmds = transaction();
    cmds.retain(|c| *c != Command::Data);
    let mut s = milter_with(&all(), &cmds);
    let events = drain(&mut s, |_| Decision::Continue);
    assert!(matches!(
        events[..],
        [
            Event::Connect(_),
            Event::Helo { .. },
            Event::Mail(_),
            Event::Rcpt(_),
            Event::Header { .. },
            Event::Eoh,
            Event::Body(_),
            Event::Eom
        ]
    ));
    assert_eq!(sent_codes(&mut s), "Occcccccc");
    assert!(!s.in_message());
}

#[test]
fn headers_body_and_eom_may_follow_rcpt_directly() {
    for skipped in [
        &[Command::Data][..],
        &[Command::Data, header("Subject", "Hello"), Command::Eoh],
        &[
            Command::Data,
            header("Subject", "Hello"),
            Command::Eoh,
            body(b"Hi\r\n"),
        ],
    ] {
        let mut cmds = transaction();
        cmds.retain(|c| !skipped.contains(c));
        let mut s = milter_with(&all(), &cmds);
        let events = drain(&mut s, |_| Decision::Continue);
        assert_eq!(events.last(), Some(&Event::Eom), "without {skipped:?}");
    }
}

#[test]
fn after_unknown_in_a_message_data_goes_on_and_a_new_mail_aborts_the_message() {
    let mut cmds = transaction();
    cmds.insert(7, unknown("XFOO"));
    let mut s = milter_with(&all(), &cmds);
    let events = drain(&mut s, |_| Decision::Continue);
    assert_eq!(events.last(), Some(&Event::Eom));
    assert!(!events.contains(&Event::Abort));

    let mut cmds = transaction();
    cmds.truncate(7);
    cmds.extend([unknown("XFOO"), mail("<again@example.org>")]);
    let mut s = milter_with(&all(), &cmds);
    let events = drain(&mut s, |_| Decision::Continue);
    assert!(matches!(
        events[events.len() - 3..],
        [Event::Unknown { .. }, Event::Abort, Event::Mail(_)]
    ));
}

#[test]
fn payloads_libmilter_ignores_are_ignored() {
    let mut raw = wire(&[optneg(), connect(), helo(), mail("<a@b>"), rcpt("<c@d>")]);
    let frame = |code: u8, payload: &[u8]| {
        let mut b = BytesMut::new();
        b.extend_from_slice(&u32::try_from(payload.len() + 1).unwrap().to_be_bytes());
        b.extend_from_slice(&[code]);
        b.extend_from_slice(payload);
        b
    };
    raw.extend(frame(b'T', b"junk"));
    raw.extend(frame(b'L', b"Subject\0Hello\0junk\0"));
    raw.extend(frame(b'N', b"junk"));
    raw.extend(frame(b'U', b"XFOO without a NUL"));
    raw.extend(frame(b'A', b"junk"));
    raw.extend(frame(b'M', b"<e@f>\0SIZE=1\0unterminated"));
    let mut s = MilterSession::new(MilterConfig::default());
    s.handle_input(&raw);
    s.poll_event().unwrap();
    s.negotiate(&all()).unwrap();
    let events = drain(&mut s, |_| Decision::Continue);
    assert!(events.contains(&Event::Data));
    assert!(events.contains(&Event::Header {
        name: "Subject".into(),
        value: "Hello".into()
    }));
    assert!(events.contains(&Event::Unknown {
        line: "XFOO without a NUL".into()
    }));
    assert!(events.contains(&Event::Abort));
    assert!(matches!(
        events.last(),
        Some(Event::Mail(e)) if e.address == "<e@f>" && e.args == [Bytes::from("SIZE=1")]
    ));
}

#[test]
fn a_dropped_command_that_needs_no_reply_changes_nothing_but_the_state() {
    // QUIT_NC at connection level: libmilter drops it (its state table takes it only after a
    // message); the session goes on.
    let mut s = milter_with(
        &all(),
        &[optneg(), connect(), helo(), Command::QuitNc, helo()],
    );
    let events = drain(&mut s, |_| Decision::Continue);
    assert!(matches!(
        events[..],
        [Event::Connect(_), Event::Helo { .. }, Event::Helo { .. }]
    ));
}

#[test]
fn discard_at_rcpt_keeps_the_message_open_as_libmilter_does() {
    let mut s = milter_with(
        &all(),
        &[
            optneg(),
            connect(),
            mail("<a@b>"),
            rcpt("<c@d>"),
            Command::Abort,
        ],
    );
    let events = drain(&mut s, |e| match e {
        Event::Rcpt(_) => Decision::Discard,
        _ => Decision::Continue,
    });
    assert_eq!(events.last(), Some(&Event::Abort));
}

#[test]
fn discard_at_unknown_is_sent_as_both_mtas_take_it() {
    let mut s = milter_with(
        &all(),
        &[optneg(), connect(), mail("<a@b>"), unknown("XFOO")],
    );
    drain(&mut s, |e| match e {
        Event::Unknown { .. } => Decision::Discard,
        _ => Decision::Continue,
    });
    assert_eq!(sent_codes(&mut s), "Occd");
}
