//! Property tests of the codec: round trips of every command and response, framing under
//! arbitrary splits, arbitrary bytes against the decoders and the fuzzing entry points.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod strategies;

use bytes::{Bytes, BytesMut};
use milterkit_proto::{
    fuzzing, Actions, Agreement, Command, Decision, Frame, FrameDecoder, FrameError, MacroLists,
    Offer, ProtocolFlags, Reply, Response,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;
use proptest::sample::Index;

use strategies::*;

// ---------------------------------------------------------------------------------------------
// Strategies: byte streams for the decoders and the fuzzing entry points
// ---------------------------------------------------------------------------------------------

/// The wire bytes of `items` (commands or responses), each written by `encode`.
fn encode_all<T>(items: &[T], encode: impl Fn(&T, &mut BytesMut)) -> Vec<u8> {
    let mut wire = BytesMut::new();
    for item in items {
        encode(item, &mut wire);
    }
    wire.to_vec()
}

/// What an MTA sends in one session, some commands left out.
fn session_commands() -> impl Strategy<Value = Vec<u8>> {
    (
        connect(),
        text(32),
        envelope(),
        vec(envelope(), 1..3),
        vec((text(16), text(32)), 0..3),
        raw(256),
        (any::<u32>(), any::<u32>()),
    )
        .prop_map(|(conn, helo, mail, rcpts, headers, body, (a, b))| {
            let drop = a & b;
            let mut cmds = vec![
                Command::Optneg(Offer::default()),
                Command::Macro {
                    stage: b'C',
                    pairs: vec![(Bytes::from("j"), Bytes::from("mx"))],
                },
                Command::Connect(conn),
                Command::Helo { name: helo },
                Command::Mail(mail),
            ];
            cmds.extend(rcpts.into_iter().map(Command::Rcpt));
            cmds.push(Command::Data);
            cmds.extend(
                headers
                    .into_iter()
                    .map(|(name, value)| Command::Header { name, value }),
            );
            cmds.extend([
                Command::Eoh,
                Command::Body(body),
                Command::Eom {
                    chunk: Bytes::new(),
                },
                Command::Abort,
                Command::Quit,
            ]);
            // Keep OPTNEG; drop each later command when its bit of `drop` is set (one in four).
            let kept: Vec<Command> = cmds
                .into_iter()
                .enumerate()
                .filter(|(i, _)| *i == 0 || drop & (1 << (i % 32)) == 0)
                .map(|(_, c)| c)
                .collect();
            encode_all(&kept, Command::encode)
        })
}

/// What a milter answers in one session: OPTNEG, then mostly CONTINUE.
fn session_responses() -> impl Strategy<Value = Vec<u8>> {
    (
        0u32..0x200,
        0u32..0x20_0000,
        vec(
            prop_oneof![6 => Just(Response::Decision(Decision::Continue)), 1 => response()],
            0..12,
        ),
    )
        .prop_map(|(actions, protocol, rest)| {
            let mut resps = vec![Response::Optneg(Agreement {
                version: 6,
                actions: Actions::from_bits_retain(actions),
                protocol: ProtocolFlags::from_bits_retain(protocol),
                macros: MacroLists::default(),
            })];
            resps.extend(rest);
            encode_all(&resps, Response::encode)
        })
}

/// Overwrites a few bytes and maybe cuts the end off.
fn mutated(stream: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    (
        stream,
        vec((any::<Index>(), any::<u8>()), 0..4),
        option::of(any::<Index>()),
    )
        .prop_map(|(mut data, flips, cut)| {
            if !data.is_empty() {
                for (at, byte) in flips {
                    let i = at.index(data.len());
                    data[i] = byte;
                }
            }
            if let Some(cut) = cut {
                data.truncate(cut.index(data.len() + 1));
            }
            data
        })
}

/// Arbitrary bytes, and streams close enough to real ones to get past the first frame.
fn fuzz_input() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        vec(any::<u8>(), 0..2048),
        mutated(session_commands()),
        mutated(session_responses()),
        mutated(vec(command(), 0..8).prop_map(|c| encode_all(&c, Command::encode))),
        mutated(vec(response(), 0..8).prop_map(|r| encode_all(&r, Response::encode))),
    ]
}

/// Frames whose length prefixes sit around a limit of 1024, some of them cut short.
fn frames_near_the_limit() -> impl Strategy<Value = Vec<u8>> {
    let one = (
        prop_oneof![
            2 => 0u32..=8,
            4 => 1000u32..=1025,
            1 => 1026u32..=1100,
            1 => any::<u32>(),
        ],
        any::<u8>(),
        any::<u8>(),
        any::<Index>(),
        any::<bool>(),
    )
        .prop_map(|(len, code, fill, cut, whole)| {
            let mut f = len.to_be_bytes().to_vec();
            f.push(code);
            f.extend(vec![fill; (len.saturating_sub(1) as usize).min(1100)]);
            if !whole {
                f.truncate(cut.index(f.len() + 1));
            }
            f
        });
    prop_oneof![
        vec(one, 0..6).prop_map(|fs| fs.concat()),
        vec(any::<u8>(), 0..4096),
    ]
}

/// Cuts `data` at the given points (taken modulo its length).
fn cut<'a>(data: &'a [u8], points: &[Index]) -> Vec<&'a [u8]> {
    let mut at: Vec<usize> = points.iter().map(|p| p.index(data.len() + 1)).collect();
    at.push(0);
    at.push(data.len());
    at.sort_unstable();
    at.dedup();
    at.windows(2).map(|w| &data[w[0]..w[1]]).collect()
}

/// Feeds `pieces` one by one, decoding after each; the frames and whether it ended in an error.
fn decode_pieces(dec: &FrameDecoder, pieces: &[&[u8]]) -> (Vec<Frame>, Option<FrameError>) {
    let mut buf = BytesMut::new();
    let mut frames = Vec::new();
    for piece in pieces {
        buf.extend_from_slice(piece);
        loop {
            match dec.decode(&mut buf) {
                Ok(Some(f)) => frames.push(f),
                Ok(None) => break,
                Err(e) => return (frames, Some(e)),
            }
        }
    }
    (frames, None)
}

/// Decodes `stream` whole and cut at `points`: both without an error and to the same frames,
/// which it returns.
fn frames_whole_and_cut(stream: &[u8], points: &[Index]) -> Result<Vec<Frame>, TestCaseError> {
    let dec = FrameDecoder::default();
    let (whole, err) = decode_pieces(&dec, &[stream]);
    prop_assert_eq!(err, None);
    let (split, err) = decode_pieces(&dec, &cut(stream, points));
    prop_assert_eq!(err, None);
    prop_assert_eq!(&split, &whole);
    Ok(whole)
}

/// The one frame `encode` writes, checked to have `code` and to leave no bytes behind it.
fn one_frame(encode: impl FnOnce(&mut BytesMut), code: u8) -> Result<Frame, TestCaseError> {
    let mut wire = BytesMut::new();
    encode(&mut wire);
    let frame = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
    prop_assert!(wire.is_empty(), "{} bytes left after the frame", wire.len());
    prop_assert_eq!(frame.code, code);
    Ok(frame)
}

// ---------------------------------------------------------------------------------------------
// Properties 1 to 3: round trips, splits, arbitrary bytes
// ---------------------------------------------------------------------------------------------

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 512,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn every_command_decodes_to_what_was_encoded(cmd in command()) {
        let frame = one_frame(|wire| cmd.encode(wire), cmd.code())?;
        prop_assert_eq!(Command::decode(frame), Ok(cmd));
    }

    #[test]
    fn every_response_decodes_to_what_was_encoded(resp in response()) {
        let frame = one_frame(|wire| resp.encode(wire), resp.code())?;
        prop_assert_eq!(Response::decode(frame), Ok(resp));
    }

    #[test]
    fn every_reply_a_milter_can_build_decodes_to_the_same_reply(parts in reply_parts()) {
        let reply = match parts.build() {
            Ok(reply) => reply,
            Err(e) => {
                // Only a single line without an enhanced code whose text starts with a digit
                // may be refused: Postfix would read that digit as the start of an enhanced code.
                prop_assert!(
                    !parts.multiline
                        && parts.enhanced.is_empty()
                        && parts.lines[0].first().is_some_and(u8::is_ascii_digit),
                    "refused: {:?}",
                    e
                );
                return Ok(());
            }
        };
        prop_assert_eq!(reply.code(), parts.code);
        let decision = Response::Decision(Decision::Reply(reply.clone()));
        let mut wire = BytesMut::new();
        decision.encode(&mut wire);
        let frame = FrameDecoder::default().decode(&mut wire).unwrap().unwrap();
        prop_assert_eq!(Reply::parse(reply.to_bytes()), Ok(reply.clone()));
        prop_assert_eq!(Response::decode(frame), Ok(decision));
        // The text of each line comes back, unless a text was itself taken as the enhanced code.
        if parts.multiline {
            prop_assert_eq!(reply.lines(), parts.lines.clone());
        } else if !parts.enhanced.is_empty() || !parts.lines[0].first().is_some_and(u8::is_ascii_digit) {
            prop_assert_eq!(reply.lines(), vec![parts.lines[0].clone()]);
        }
    }

    #[test]
    fn optneg_decodes_its_first_twelve_bytes_and_re_encodes_only_those(
        offer in offer(),
        trailer in raw(32),
    ) {
        let mut payload = BytesMut::new();
        Command::Optneg(offer).encode(&mut payload);
        let exact = payload.clone();
        let _ = payload.split_to(5);
        payload.extend_from_slice(&trailer);
        let decoded = Command::decode(Frame { code: b'O', payload: payload.freeze() });
        prop_assert_eq!(&decoded, &Ok(Command::Optneg(offer)));
        let mut again = BytesMut::new();
        decoded.unwrap().encode(&mut again);
        prop_assert_eq!(again.len(), 5 + 12);
        prop_assert_eq!(again, exact);
    }

    #[test]
    fn a_stream_cut_anywhere_gives_the_frames_of_the_whole_stream(
        cmds in vec(command(), 1..10),
        resps in vec(response(), 1..10),
        points in vec(any::<Index>(), 0..16),
    ) {
        let frames = frames_whole_and_cut(&encode_all(&cmds, Command::encode), &points)?;
        prop_assert_eq!(frames.len(), cmds.len());
        for (frame, cmd) in frames.into_iter().zip(cmds) {
            prop_assert_eq!(Command::decode(frame), Ok(cmd));
        }
        let frames = frames_whole_and_cut(&encode_all(&resps, Response::encode), &points)?;
        prop_assert_eq!(frames.len(), resps.len());
        for (frame, resp) in frames.into_iter().zip(resps) {
            prop_assert_eq!(Response::decode(frame), Ok(resp));
        }
    }

    #[test]
    fn arbitrary_bytes_never_panic_the_fuzzing_entry_points(data in fuzz_input()) {
        fuzzing::frames(&data);
        fuzzing::commands(&data);
        fuzzing::responses(&data);
        fuzzing::milter_session(&data);
        fuzzing::mta_session(&data);
    }

    #[test]
    fn the_decoder_never_holds_more_than_its_input_and_one_frame(
        data in frames_near_the_limit(),
        points in vec(any::<Index>(), 0..16),
    ) {
        const LIMIT: usize = 1024;
        const SLACK: usize = 64;
        let dec = FrameDecoder::new(LIMIT);
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        let mut fed = 0;
        'feed: for piece in cut(&data, &points) {
            buf.extend_from_slice(piece);
            fed += piece.len();
            loop {
                let result = dec.decode(&mut buf);
                prop_assert!(
                    buf.capacity() <= fed + LIMIT + 5 + SLACK,
                    "capacity {} after {} bytes fed ({} buffered)",
                    buf.capacity(),
                    fed,
                    buf.len()
                );
                match result {
                    Ok(Some(frame)) => {
                        prop_assert!(frame.payload.len() <= LIMIT);
                        frames.push(frame);
                    }
                    Ok(None) => break,
                    Err(_) => break 'feed,
                }
            }
        }
        // The frames do not depend on how the input was cut.
        let (whole, _) = decode_pieces(&dec, &[&data]);
        prop_assert_eq!(frames, whole);
    }

    #[test]
    fn a_length_above_the_limit_fails_before_any_payload_arrives(
        len in prop_oneof![Just(1026u32), 1026u32..=0x0100_0000, any::<u32>().prop_map(|l| l | 0x8000_0000)],
        code in option::of(any::<u8>()),
    ) {
        let dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend(code);
        let capacity = buf.capacity();
        prop_assert_eq!(
            dec.decode(&mut buf),
            Err(FrameError::TooLarge { len: u64::from(len) - 1, max: 1024 })
        );
        prop_assert_eq!(buf.capacity(), capacity);
        prop_assert_eq!(buf.len(), 4 + usize::from(code.is_some()));
    }

    #[test]
    fn a_length_at_the_limit_reserves_exactly_one_frame(code in any::<u8>(), len in 1u32..=1025) {
        let dec = FrameDecoder::new(1024);
        let mut buf = BytesMut::new();
        buf.extend_from_slice(&len.to_be_bytes());
        buf.extend_from_slice(&[code]);
        let result = dec.decode(&mut buf);
        if len == 1 {
            prop_assert_eq!(result, Ok(Some(Frame { code, payload: Bytes::new() })));
        } else {
            prop_assert_eq!(result, Ok(None));
            prop_assert!(buf.capacity() >= 4 + len as usize);
            prop_assert!(buf.capacity() <= 4 + len as usize + 64, "capacity {}", buf.capacity());
        }
    }
}

#[test]
fn a_zero_length_prefix_is_an_error() {
    let mut buf = BytesMut::from(&[0u8, 0, 0, 0][..]);
    assert_eq!(
        FrameDecoder::new(1024).decode(&mut buf),
        Err(FrameError::ZeroLength)
    );
}
