//! A small vocabulary for building commands by name in tests.
#![allow(dead_code, unreachable_pub, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use milterkit_proto::{
    Command, Connect, Decision, Envelope, Event, Family, MilterConfig, MilterSession, Offer,
    Request,
};

pub fn optneg() -> Command {
    Command::Optneg(Offer::default())
}

pub fn macros(stage: u8, pairs: &[(&str, &str)]) -> Command {
    Command::Macro {
        stage,
        pairs: pairs
            .iter()
            .map(|(n, v)| {
                (
                    Bytes::copy_from_slice(n.as_bytes()),
                    Bytes::copy_from_slice(v.as_bytes()),
                )
            })
            .collect(),
    }
}

pub fn connect() -> Command {
    Command::Connect(Connect {
        hostname: Bytes::from_static(b"client.example.com"),
        family: Family::Inet,
        port: 50000,
        address: Bytes::from_static(b"198.51.100.7"),
    })
}

pub fn helo() -> Command {
    Command::Helo {
        name: Bytes::from_static(b"client.example.com"),
    }
}

pub fn mail(addr: &str) -> Command {
    Command::Mail(Envelope::new(Bytes::copy_from_slice(addr.as_bytes())))
}

pub fn rcpt(addr: &str) -> Command {
    Command::Rcpt(Envelope::new(Bytes::copy_from_slice(addr.as_bytes())))
}

pub fn header(name: &str, value: &str) -> Command {
    Command::Header {
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

pub fn body(b: &[u8]) -> Command {
    Command::Body(Bytes::copy_from_slice(b))
}

pub fn eom() -> Command {
    Command::Eom {
        chunk: Bytes::new(),
    }
}

pub fn unknown(line: &str) -> Command {
    Command::Unknown {
        line: Bytes::copy_from_slice(line.as_bytes()),
    }
}

/// The wire bytes of `cmds`.
pub fn wire(cmds: &[Command]) -> BytesMut {
    let mut b = BytesMut::new();
    for c in cmds {
        c.encode(&mut b);
    }
    b
}

/// A milter session fed `cmds`, negotiating with `request` when asked.
pub fn milter_with(request: &Request, cmds: &[Command]) -> MilterSession {
    let mut s = MilterSession::new(MilterConfig::default());
    s.handle_input(&wire(cmds));
    s.poll_event().expect("OPTNEG decodes");
    s.negotiate(request).expect("compatible");
    s
}

/// Polls every event, answering each awaited one with `decide`; returns the events.
pub fn drain(s: &mut MilterSession, mut decide: impl FnMut(&Event) -> Decision) -> Vec<Event> {
    let mut out = Vec::new();
    while let Some(e) = s.poll_event().expect("no protocol error") {
        if s.awaiting().is_some() {
            s.decide(decide(&e)).expect("decision allowed");
        }
        out.push(e);
    }
    out
}

/// The response codes in the session's output.
pub fn sent_codes(s: &mut MilterSession) -> String {
    let mut out = BytesMut::new();
    s.poll_transmit(&mut out);
    let dec = milterkit_proto::FrameDecoder::default();
    std::iter::from_fn(|| dec.decode(&mut out).expect("valid").map(|f| f.code as char)).collect()
}
