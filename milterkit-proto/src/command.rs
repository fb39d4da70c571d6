//! Everything the MTA sends (`SMFIC_*`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::Utf8Error;

use bytes::{Bytes, BytesMut};

use crate::error::ProtocolError;
use crate::frame::{Frame, FrameWriter, Reader};
use crate::negotiate::{Actions, Offer, ProtocolFlags};
use crate::stage::Stage;

/// `SMFIC_*` codes.
pub mod code {
    /// `SMFIC_ABORT`
    pub const ABORT: u8 = b'A';
    /// `SMFIC_BODY`
    pub const BODY: u8 = b'B';
    /// `SMFIC_CONNECT`
    pub const CONNECT: u8 = b'C';
    /// `SMFIC_MACRO`
    pub const MACRO: u8 = b'D';
    /// `SMFIC_BODYEOB`
    pub const BODYEOB: u8 = b'E';
    /// `SMFIC_HELO`
    pub const HELO: u8 = b'H';
    /// `SMFIC_QUIT_NC`
    pub const QUIT_NC: u8 = b'K';
    /// `SMFIC_HEADER`
    pub const HEADER: u8 = b'L';
    /// `SMFIC_MAIL`
    pub const MAIL: u8 = b'M';
    /// `SMFIC_EOH`
    pub const EOH: u8 = b'N';
    /// `SMFIC_OPTNEG`
    pub const OPTNEG: u8 = b'O';
    /// `SMFIC_QUIT`
    pub const QUIT: u8 = b'Q';
    /// `SMFIC_RCPT`
    pub const RCPT: u8 = b'R';
    /// `SMFIC_DATA`
    pub const DATA: u8 = b'T';
    /// `SMFIC_UNKNOWN`
    pub const UNKNOWN: u8 = b'U';
}

/// A command from the MTA to the milter. Strings are bytes, as on the wire (without their NUL).
///
/// ```
/// # use milterkit_proto::Command;
/// # use bytes::Bytes;
/// let cmd = Command::Helo { name: Bytes::from("client.example.com") };
/// let mut wire = bytes::BytesMut::new();
/// cmd.encode(&mut wire);
/// assert_eq!(&wire[..], b"\0\0\0\x14Hclient.example.com\0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Command {
    /// `SMFIC_OPTNEG`: the MTA's offer; always first.
    #[doc(alias = "SMFIC_OPTNEG")]
    Optneg(Offer),
    /// `SMFIC_MACRO`: macro values for the command `stage` (a command code) that follows.
    #[doc(alias = "SMFIC_MACRO")]
    Macro {
        /// The command code the macros belong to (`C`, `H`, `M`, … and Postfix's `L`, `B`, `U`).
        stage: u8,
        /// Name and value pairs, names as the MTA spells them (`j`, `{daemon_name}`).
        pairs: Vec<(Bytes, Bytes)>,
    },
    /// `SMFIC_CONNECT`: the SMTP client.
    #[doc(alias = "SMFIC_CONNECT")]
    Connect(Connect),
    /// `SMFIC_HELO`: the HELO or EHLO argument.
    #[doc(alias = "SMFIC_HELO")]
    Helo {
        /// The name the client gave.
        name: Bytes,
    },
    /// `SMFIC_MAIL`: MAIL FROM with its ESMTP arguments.
    #[doc(alias = "SMFIC_MAIL")]
    Mail(Envelope),
    /// `SMFIC_RCPT`: RCPT TO with its ESMTP arguments.
    #[doc(alias = "SMFIC_RCPT")]
    Rcpt(Envelope),
    /// `SMFIC_DATA`: the DATA command.
    #[doc(alias = "SMFIC_DATA")]
    Data,
    /// `SMFIC_HEADER`: one header field.
    #[doc(alias = "SMFIC_HEADER")]
    Header {
        /// The field name, without the colon.
        name: Bytes,
        /// The value: continuation lines joined with a bare LF; one leading space removed unless
        /// `SMFIP_HDR_LEADSPC` was agreed.
        value: Bytes,
    },
    /// `SMFIC_EOH`: end of headers.
    #[doc(alias = "SMFIC_EOH")]
    Eoh,
    /// `SMFIC_BODY`: a chunk of the body (at most 65,535 bytes, CRLF line ends).
    #[doc(alias = "SMFIC_BODY")]
    Body(Bytes),
    /// `SMFIC_BODYEOB`: end of message. Both MTAs send it empty; libmilter accepts a final body
    /// chunk in it, which is kept here.
    #[doc(alias = "SMFIC_BODYEOB")]
    Eom {
        /// Body bytes carried in the packet itself (normally empty).
        chunk: Bytes,
    },
    /// `SMFIC_ABORT`: forget the current message; never answered.
    #[doc(alias = "SMFIC_ABORT")]
    Abort,
    /// `SMFIC_QUIT`: the session is over; never answered.
    #[doc(alias = "SMFIC_QUIT")]
    Quit,
    /// `SMFIC_QUIT_NC`: the session is over, a new one follows on this connection; never answered.
    #[doc(alias = "SMFIC_QUIT_NC")]
    QuitNc,
    /// `SMFIC_UNKNOWN`: an SMTP command line the MTA does not know.
    #[doc(alias = "SMFIC_UNKNOWN")]
    Unknown {
        /// The command line, without CRLF.
        line: Bytes,
    },
}

/// The client address family of `SMFIC_CONNECT` (`SMFIA_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Family {
    /// `SMFIA_UNKNOWN` `'U'`: no port and no address follow.
    Unknown,
    /// `SMFIA_INET` `'4'`.
    Inet,
    /// `SMFIA_INET6` `'6'`.
    Inet6,
    /// `SMFIA_UNIX` `'L'`.
    Unix,
}

impl Family {
    /// The wire byte.
    pub const fn code(self) -> u8 {
        match self {
            Family::Unknown => b'U',
            Family::Inet => b'4',
            Family::Inet6 => b'6',
            Family::Unix => b'L',
        }
    }
}

/// The payload of `SMFIC_CONNECT`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// The client's host name, or its address in brackets when it did not resolve.
    pub hostname: Bytes,
    /// The address family.
    pub family: Family,
    /// The client port (0 for Unix sockets and unknown families).
    pub port: u16,
    /// The address text as sent: a dotted quad, an IPv6 address (Sendmail prefixes `IPv6:`), or a
    /// socket path. Empty for [`Family::Unknown`].
    pub address: Bytes,
}

impl Connect {
    /// The client's IP address, parsed from the address text (an `IPv6:` prefix, in any case, is
    /// allowed, as libmilter allows it). `None` for Unix sockets, unknown families, or text that
    /// does not parse.
    pub fn ip(&self) -> Option<IpAddr> {
        let text = std::str::from_utf8(&self.address).ok()?;
        match self.family {
            Family::Inet => text.parse::<Ipv4Addr>().ok().map(IpAddr::V4),
            Family::Inet6 => {
                let text = match text.get(..5) {
                    Some(p) if p.eq_ignore_ascii_case("ipv6:") => &text[5..],
                    _ => text,
                };
                text.parse::<Ipv6Addr>().ok().map(IpAddr::V6)
            }
            _ => None,
        }
    }
}

/// The argument vector of `SMFIC_MAIL` and `SMFIC_RCPT`: the address as the client wrote it
/// (normally in angle brackets; empty for Postfix's non-SMTP null sender), then each ESMTP
/// parameter.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
pub struct Envelope {
    /// `args[0]`: the address as given.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::bytes"))]
    pub address: Bytes,
    /// `args[1..]`: ESMTP parameters such as `SIZE=1024`.
    #[cfg_attr(feature = "serde", serde(serialize_with = "crate::serde_text::list"))]
    pub args: Vec<Bytes>,
}

impl Envelope {
    /// An envelope with no ESMTP parameters.
    pub fn new(address: impl Into<Bytes>) -> Envelope {
        Envelope {
            address: address.into(),
            args: Vec::new(),
        }
    }

    /// The address as text; fails on invalid UTF-8.
    pub fn address_str(&self) -> Result<&str, Utf8Error> {
        std::str::from_utf8(&self.address)
    }
}

impl Command {
    /// The command code.
    pub fn code(&self) -> u8 {
        match self {
            Command::Optneg(_) => code::OPTNEG,
            Command::Macro { .. } => code::MACRO,
            Command::Connect(_) => code::CONNECT,
            Command::Helo { .. } => code::HELO,
            Command::Mail(_) => code::MAIL,
            Command::Rcpt(_) => code::RCPT,
            Command::Data => code::DATA,
            Command::Header { .. } => code::HEADER,
            Command::Eoh => code::EOH,
            Command::Body(_) => code::BODY,
            Command::Eom { .. } => code::BODYEOB,
            Command::Abort => code::ABORT,
            Command::Quit => code::QUIT,
            Command::QuitNc => code::QUIT_NC,
            Command::Unknown { .. } => code::UNKNOWN,
        }
    }

    /// The spec name of the command (`OPTNEG`, `MACRO`, `HELO`, `QUIT_NC`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Command::Optneg(_) => "OPTNEG",
            Command::Macro { .. } => "MACRO",
            Command::Abort => "ABORT",
            Command::Quit => "QUIT",
            Command::QuitNc => "QUIT_NC",
            other => other.stage().map_or("command", Stage::name),
        }
    }

    /// The reply-bearing stage of this command; `None` for OPTNEG, MACRO, ABORT, QUIT, QUIT_NC.
    pub fn stage(&self) -> Option<Stage> {
        Stage::from_code(self.code()).filter(|_| !matches!(self, Command::Macro { .. }))
    }

    /// Parses one frame sent by an MTA. Unknown codes and malformed payloads are errors.
    ///
    /// What libmilter tolerates is tolerated, and what it ignores is dropped: a payload on DATA,
    /// EOH, ABORT, QUIT and QUIT_NC; bytes after the last field of HELO, CONNECT and HEADER when
    /// the payload still ends in a NUL; an unterminated last argument of MAIL and RCPT; an
    /// UNKNOWN line without its NUL. What libmilter refuses (a string without its NUL, an empty
    /// payload where one is needed, an unknown address family) is an error.
    pub fn decode(frame: Frame) -> Result<Command, ProtocolError> {
        let code = frame.code;
        // libmilter checks that these payloads end in a NUL and reads its fields as C strings,
        // so anything between the last field and that NUL is ignored.
        let nul_ended = frame.payload.last() == Some(&0);
        let mut r = Reader::new(frame);
        let cmd = match code {
            code::OPTNEG => {
                let version = r.u32("OPTNEG shorter than 12 bytes")?;
                let actions = Actions::from_bits_retain(r.u32("OPTNEG shorter than 12 bytes")?);
                let protocol =
                    ProtocolFlags::from_bits_retain(r.u32("OPTNEG shorter than 12 bytes")?);
                // libmilter reads the first 12 bytes only; so do we.
                r.rest();
                Command::Optneg(Offer {
                    version,
                    actions,
                    protocol,
                })
            }
            code::MACRO => {
                let stage = r.u8("macro packet without a stage")?;
                let mut pairs = Vec::with_capacity(r.nul_count() / 2);
                while !r.is_empty() {
                    let name = r.str("macro string without NUL")?;
                    if r.is_empty() {
                        return Err(ProtocolError::Malformed {
                            code,
                            reason: "macro name without a value",
                        });
                    }
                    pairs.push((name, r.str("macro string without NUL")?));
                }
                Command::Macro { stage, pairs }
            }
            code::CONNECT => {
                let hostname = r.str("hostname without NUL")?;
                let family = match r.u8("missing address family")? {
                    b'U' => Family::Unknown,
                    b'4' => Family::Inet,
                    b'6' => Family::Inet6,
                    b'L' => Family::Unix,
                    _ => {
                        return Err(ProtocolError::Malformed {
                            code,
                            reason: "unknown address family",
                        })
                    }
                };
                let (port, address) = if family == Family::Unknown {
                    (0, Bytes::new())
                } else if !nul_ended {
                    return Err(ProtocolError::Malformed {
                        code,
                        reason: "address without NUL",
                    });
                } else {
                    (r.u16("missing port")?, r.str("address without NUL")?)
                };
                Command::Connect(Connect {
                    hostname,
                    family,
                    port,
                    address,
                })
            }
            code::HELO if nul_ended => Command::Helo {
                name: r.str("HELO name without NUL")?,
            },
            code::HELO => {
                return Err(ProtocolError::Malformed {
                    code,
                    reason: "HELO name without NUL",
                })
            }
            code::MAIL | code::RCPT => {
                let mut args = r.strs_terminated().into_iter();
                let address = args.next().ok_or(ProtocolError::Malformed {
                    code,
                    reason: "no address",
                })?;
                let env = Envelope {
                    address,
                    args: args.collect(),
                };
                if code == code::MAIL {
                    Command::Mail(env)
                } else {
                    Command::Rcpt(env)
                }
            }
            code::DATA => Command::Data,
            code::HEADER if nul_ended => Command::Header {
                name: r.str("header name without NUL")?,
                value: r.str("header value without NUL")?,
            },
            code::HEADER => {
                return Err(ProtocolError::Malformed {
                    code,
                    reason: "header value without NUL",
                })
            }
            code::EOH => Command::Eoh,
            // libmilter's reader gives no buffer for an empty payload, and BODY needs one.
            code::BODY if r.is_empty() => {
                return Err(ProtocolError::Malformed {
                    code,
                    reason: "empty body chunk",
                })
            }
            code::BODY => Command::Body(r.rest()),
            code::BODYEOB => Command::Eom { chunk: r.rest() },
            code::ABORT => Command::Abort,
            code::QUIT => Command::Quit,
            code::QUIT_NC => Command::QuitNc,
            code::UNKNOWN if r.is_empty() => {
                return Err(ProtocolError::Malformed {
                    code,
                    reason: "empty command line",
                })
            }
            // libmilter adds a NUL after every payload and hands the line over as a C string.
            code::UNKNOWN => Command::Unknown {
                line: r.str("").unwrap_or_else(|_| r.rest()),
            },
            _ => return Err(ProtocolError::UnknownCode { code }),
        };
        Ok(cmd)
    }

    /// The payload's length in wire form.
    fn payload_len(&self) -> usize {
        match self {
            Command::Optneg(_) => 12,
            Command::Macro { pairs, .. } => {
                1 + pairs
                    .iter()
                    .map(|(n, v)| n.len() + v.len() + 2)
                    .sum::<usize>()
            }
            Command::Connect(c) => {
                c.hostname.len()
                    + 2
                    + if c.family == Family::Unknown {
                        0
                    } else {
                        3 + c.address.len()
                    }
            }
            Command::Helo { name: s } | Command::Unknown { line: s } => s.len() + 1,
            Command::Mail(e) | Command::Rcpt(e) => {
                e.address.len() + 1 + e.args.iter().map(|a| a.len() + 1).sum::<usize>()
            }
            Command::Header { name, value } => name.len() + value.len() + 2,
            Command::Body(chunk) | Command::Eom { chunk } => chunk.len(),
            Command::Data | Command::Eoh | Command::Abort | Command::Quit | Command::QuitNc => 0,
        }
    }

    /// Appends this command in wire form to `dst`.
    pub fn encode(&self, dst: &mut BytesMut) {
        // One reservation for the whole frame instead of growing with each field.
        let len = crate::frame::LEN_BYTES + 1 + self.payload_len();
        dst.reserve(len);
        let start = dst.len();
        let mut w = FrameWriter::start(dst, self.code());
        match self {
            Command::Optneg(o) => {
                w.put_u32(o.version);
                w.put_u32(o.actions.bits());
                w.put_u32(o.protocol.bits());
            }
            Command::Macro { stage, pairs } => {
                w.put_u8(*stage);
                for (n, v) in pairs {
                    w.put_str(n);
                    w.put_str(v);
                }
            }
            Command::Connect(c) => {
                w.put_str(&c.hostname);
                w.put_u8(c.family.code());
                if c.family != Family::Unknown {
                    w.put_u16(c.port);
                    w.put_str(&c.address);
                }
            }
            Command::Helo { name } => w.put_str(name),
            Command::Mail(e) | Command::Rcpt(e) => {
                w.put_str(&e.address);
                for a in &e.args {
                    w.put_str(a);
                }
            }
            Command::Header { name, value } => {
                w.put_str(name);
                w.put_str(value);
            }
            Command::Body(chunk) | Command::Eom { chunk } => w.put(chunk),
            Command::Unknown { line } => w.put_str(line),
            Command::Data | Command::Eoh | Command::Abort | Command::Quit | Command::QuitNc => {}
        }
        w.finish();
        debug_assert_eq!(dst.len() - start, len, "payload_len of {self:?}");
    }
}
