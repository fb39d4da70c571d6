//! Strategies for the property tests: every value of the protocol, valid and as the peers send it.
#![allow(dead_code, unreachable_pub)]

use std::fmt::Debug;

use bytes::Bytes;
use milterkit_proto::{
    Actions, Agreement, Command, Connect, Decision, Envelope, Family, MacroLists, MacroStage,
    Modification, Offer, ProtocolFlags, Reply, Response,
};
use proptest::collection::vec;
use proptest::option;
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Strategies: values
// ---------------------------------------------------------------------------------------------

/// Bytes without NUL, up to `max` long: what travels as a NUL-terminated string.
pub(crate) fn text(max: usize) -> impl Strategy<Value = Bytes> {
    vec(1u8..=255, 0..=max).prop_map(Bytes::from)
}

/// Like [`text`], never empty.
pub(crate) fn word(max: usize) -> impl Strategy<Value = Bytes> {
    vec(1u8..=255, 1..=max).prop_map(Bytes::from)
}

/// Arbitrary bytes, NUL included, up to `max` long.
pub(crate) fn raw(max: usize) -> impl Strategy<Value = Bytes> {
    vec(any::<u8>(), 0..=max).prop_map(Bytes::from)
}

pub(crate) fn family() -> impl Strategy<Value = Family> {
    proptest::sample::select(&[Family::Unknown, Family::Inet, Family::Inet6, Family::Unix][..])
}

pub(crate) fn connect() -> impl Strategy<Value = Connect> {
    (text(64), family(), any::<u16>(), text(64)).prop_map(|(hostname, family, port, address)| {
        if family == Family::Unknown {
            // Nothing follows the family byte on the wire, so nothing else can round-trip.
            Connect {
                hostname,
                family,
                port: 0,
                address: Bytes::new(),
            }
        } else {
            Connect {
                hostname,
                family,
                port,
                address,
            }
        }
    })
}

pub(crate) fn envelope() -> impl Strategy<Value = Envelope> {
    (text(64), vec(text(32), 0..4)).prop_map(|(address, args)| Envelope { address, args })
}

pub(crate) fn offer() -> impl Strategy<Value = Offer> {
    (any::<u32>(), any::<u32>(), any::<u32>()).prop_map(|(version, actions, protocol)| Offer {
        version,
        actions: Actions::from_bits_retain(actions),
        protocol: ProtocolFlags::from_bits_retain(protocol),
    })
}

pub(crate) fn macro_pairs() -> impl Strategy<Value = Vec<(Bytes, Bytes)>> {
    vec((text(24), text(64)), 0..6)
}

/// Every command, with every field as free as the wire allows.
pub(crate) fn command() -> impl Strategy<Value = Command> {
    prop_oneof![
        offer().prop_map(Command::Optneg),
        (any::<u8>(), macro_pairs()).prop_map(|(stage, pairs)| Command::Macro { stage, pairs }),
        connect().prop_map(Command::Connect),
        text(64).prop_map(|name| Command::Helo { name }),
        envelope().prop_map(Command::Mail),
        envelope().prop_map(Command::Rcpt),
        Just(Command::Data),
        (text(32), text(128)).prop_map(|(name, value)| Command::Header { name, value }),
        Just(Command::Eoh),
        // libmilter refuses an empty BODY and an empty UNKNOWN line: neither is a valid command.
        raw(512)
            .prop_filter("empty body chunk", |b| !b.is_empty())
            .prop_map(Command::Body),
        raw(64).prop_map(|chunk| Command::Eom { chunk }),
        Just(Command::Abort),
        Just(Command::Quit),
        Just(Command::QuitNc),
        text(128)
            .prop_filter("empty command line", |l| !l.is_empty())
            .prop_map(|line| Command::Unknown { line }),
    ]
}

/// One byte of reply text: anything but CR, LF and NUL.
pub(crate) fn reply_byte() -> impl Strategy<Value = u8> {
    prop_oneof![9 => 1u8..=9, 2 => 11u8..=12, 242 => 14u8..=255]
}

/// The text of one reply line: up to 980 bytes, mostly short, some starting with digits.
pub(crate) fn reply_line() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        4 => vec(reply_byte(), 0..=40),
        1 => vec(reply_byte(), 0..=980),
        1 => "[0-9][0-9.]{0,8}( [ -~]{0,20})?".prop_map(String::into_bytes),
    ]
}

/// What a milter gives to `Reply::new` (one line) or `Reply::multiline`: a code in 400..600, an
/// enhanced code of the same class or none, lines without CR, LF or NUL of at most 980 bytes.
#[derive(Debug, Clone)]
pub(crate) struct ReplyParts {
    pub(crate) code: u16,
    pub(crate) enhanced: String,
    pub(crate) multiline: bool,
    pub(crate) lines: Vec<Vec<u8>>,
}

impl ReplyParts {
    pub(crate) fn build(&self) -> Result<Reply, milterkit_proto::ReplyError> {
        if self.multiline {
            Reply::multiline(self.code, &self.enhanced, &self.lines)
        } else {
            Reply::new(self.code, &self.enhanced, &self.lines[0])
        }
    }
}

pub(crate) fn reply_parts() -> impl Strategy<Value = ReplyParts> {
    (
        400u16..600,
        any::<bool>(),
        0u16..1000,
        0u16..1000,
        any::<bool>(),
        prop_oneof![
            4 => vec(reply_line(), 1..=3),
            1 => vec(vec(reply_byte(), 0..=20), 1..=32),
        ],
    )
        .prop_map(|(code, with_enhanced, y, z, multiline, lines)| {
            let enhanced = if with_enhanced {
                format!("{}.{y}.{z}", code / 100)
            } else {
                String::new()
            };
            ReplyParts {
                code,
                enhanced,
                multiline,
                lines,
            }
        })
}

/// A reply a milter can build (`Reply::new` refuses a text that would read as a wrong enhanced
/// code).
pub(crate) fn reply() -> impl Strategy<Value = Reply> {
    reply_parts().prop_filter_map("Reply::new refused the text", |p| p.build().ok())
}

pub(crate) fn decision() -> impl Strategy<Value = Decision> {
    prop_oneof![
        Just(Decision::Continue),
        Just(Decision::Accept),
        Just(Decision::Reject),
        Just(Decision::Tempfail),
        Just(Decision::Discard),
        Just(Decision::Skip),
        Just(Decision::Shutdown),
        reply().prop_map(Decision::Reply),
    ]
}

/// Every modification, with strings as free as the wire allows.
pub(crate) fn any_modification() -> impl Strategy<Value = Modification> {
    prop_oneof![
        8 => modification_but_body(text, text),
        1 => raw(512).prop_map(|chunk| Modification::ReplaceBody { chunk }),
    ]
}

/// Every modification but REPLBODY, equally often: names, addresses and the quarantine reason
/// from `word(max_len)`, header values and ESMTP arguments from `text(max_len)`.
pub(crate) fn modification_but_body<W, T>(
    word: fn(usize) -> W,
    text: fn(usize) -> T,
) -> impl Strategy<Value = Modification>
where
    W: Strategy<Value = Bytes> + 'static,
    T: Strategy<Value = Bytes> + 'static,
{
    prop_oneof![
        (word(32), text(128)).prop_map(|(name, value)| Modification::AddHeader { name, value }),
        (any::<u32>(), word(32), text(128))
            .prop_map(|(index, name, value)| Modification::InsertHeader { index, name, value }),
        (any::<u32>(), word(32), text(128))
            .prop_map(|(index, name, value)| Modification::ChangeHeader { index, name, value }),
        (word(64), option::of(text(64)))
            .prop_map(|(sender, args)| Modification::ChangeFrom { sender, args }),
        word(64).prop_map(|rcpt| Modification::AddRcpt { rcpt }),
        (word(64), option::of(text(64)))
            .prop_map(|(rcpt, args)| Modification::AddRcptPar { rcpt, args }),
        word(64).prop_map(|rcpt| Modification::DeleteRcpt { rcpt }),
        word(64).prop_map(|reason| Modification::Quarantine { reason }),
    ]
}

pub(crate) fn agreement() -> impl Strategy<Value = Agreement> {
    (
        any::<u32>(),
        any::<u32>(),
        any::<u32>(),
        vec((any::<u32>(), text(64)), 0..8),
    )
        .prop_map(|(version, actions, protocol, lists)| {
            let mut macros = MacroLists::default();
            for (stage, names) in lists {
                macros.set_raw(MacroStage(stage), names);
            }
            Agreement {
                version,
                actions: Actions::from_bits_retain(actions),
                protocol: ProtocolFlags::from_bits_retain(protocol),
                macros,
            }
        })
}

pub(crate) fn response() -> impl Strategy<Value = Response> {
    prop_oneof![
        1 => agreement().prop_map(Response::Optneg),
        4 => decision().prop_map(Response::Decision),
        4 => any_modification().prop_map(Response::Modification),
        1 => Just(Response::Progress),
        1 => Just(Response::ConnFail),
    ]
}
