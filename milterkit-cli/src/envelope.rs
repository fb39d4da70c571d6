//! The envelope of `milterkit run`: the message checked to be one, the sender and recipients read
//! from its header fields with an RFC 5322 address parser (mail-parser), and addresses given
//! without angle brackets put in them, as an MTA sends them to a milter.

use mail_parser::{HeaderName, MessageParser};

/// Checks that `message` starts as an RFC 5322 message does: header fields (`Name: value`, a
/// name of printable ASCII without colon, folded lines starting with a space or tab), then an
/// empty line or the end. `Err` says what is wrong and on which line.
pub(crate) fn check_message(message: &[u8]) -> Result<(), String> {
    if message.is_empty() {
        return Err("it is empty".into());
    }
    for (i, line) in message.split(|b| *b == b'\n').enumerate() {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        let n = i + 1;
        if line.is_empty() {
            return if i == 0 {
                Err("it starts with an empty line: no header fields".into())
            } else {
                Ok(())
            };
        }
        if line[0] == b' ' || line[0] == b'\t' {
            if i == 0 {
                return Err(format!(
                    "line 1 is a folded continuation without a field: {}",
                    snippet(line)
                ));
            }
            continue;
        }
        let name = line.split(|b| *b == b':').next().unwrap_or_default();
        let is_field = name.len() < line.len()
            && !name.is_empty()
            && name.iter().all(|b| (33..=126).contains(b));
        if !is_field {
            return Err(format!(
                "line {n} is not a header field (Name: value): {}",
                snippet(line)
            ));
        }
    }
    Ok(())
}

/// The message after an mbox separator line (`From sender@example.org Mon Dec  7 10:00:00
/// 2026`), if it starts with one.
pub(crate) fn without_mbox_separator(message: &[u8]) -> Option<&[u8]> {
    let rest = message.strip_prefix(b"From ")?;
    let end = rest.iter().position(|&c| c == b'\n')?;
    Some(&rest[end + 1..])
}

/// The start of a line, for an error message.
fn snippet(line: &[u8]) -> String {
    let text: String = String::from_utf8_lossy(line).chars().take(60).collect();
    format!("{text:?}")
}

/// The addresses of every To: and Cc: field, in angle brackets, in order, each once (groups,
/// comments, quoted and encoded display names as RFC 5322 has them).
pub(crate) fn header_recipients(message: &[u8]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for addr in addresses(message, &[HeaderName::To, HeaderName::Cc]) {
        if !out.contains(&addr) {
            out.push(addr);
        }
    }
    out
}

/// The first address of the From: field, in angle brackets.
pub(crate) fn header_sender(message: &[u8]) -> Option<String> {
    addresses(message, &[HeaderName::From]).into_iter().next()
}

fn addresses(message: &[u8], fields: &[HeaderName<'static>]) -> Vec<String> {
    let Some(parsed) = MessageParser::new().parse_headers(message) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for header in parsed.headers() {
        if !fields.contains(&header.name) {
            continue;
        }
        let Some(list) = header.value.as_address() else {
            continue;
        };
        for a in list.iter() {
            if let Some(addr) = a.address().filter(|a| a.contains('@')) {
                out.push(format!("<{addr}>"));
            }
        }
    }
    out
}

/// An envelope address as given on the command line, in angle brackets: `b@example.net` becomes
/// `<b@example.net>` (ESMTP arguments after a space stay after it); `None` when it already was.
pub(crate) fn bracketed(given: &str) -> Option<String> {
    let given = given.trim();
    if given.starts_with('<') {
        return None;
    }
    Some(match given.split_once(' ') {
        Some((addr, args)) => format!("<{addr}> {}", args.trim_start()),
        None => format!("<{given}>"),
    })
}

/// `<address> ARG ARG`: the address (up to `>` when it starts with `<`), then the arguments.
pub(crate) fn split_envelope(s: &str) -> (String, Vec<String>) {
    let s = s.trim();
    let end = if s.starts_with('<') {
        s.find('>').map_or(s.len(), |i| i + 1)
    } else {
        s.find(char::is_whitespace).unwrap_or(s.len())
    };
    let (address, rest) = s.split_at(end);
    (
        address.to_owned(),
        rest.split_whitespace().map(str::to_owned).collect(),
    )
}

#[cfg(test)]
mod tests {
    #[test]
    fn an_mbox_separator_line_is_left_out() {
        let m = b"From alice@example.org Mon Dec  7 10:00:00 2026\nSubject: x\n\nhi\n";
        assert_eq!(
            super::without_mbox_separator(m),
            Some(&b"Subject: x\n\nhi\n"[..])
        );
        assert_eq!(
            super::without_mbox_separator(b"From: a@example.org\n\n"),
            None
        );
        assert!(super::check_message(super::without_mbox_separator(m).unwrap()).is_ok());
    }

    use super::*;

    #[test]
    fn recipients_are_parsed_as_addresses_not_split_on_commas() {
        let m = b"To: john@example.net (Doe, John), \"Smith, Ann\" <ann@example.net>\r\n\
                  Cc: team: carol@example.org, <dave@example.org>;, john@example.net\r\n\
                  Subject: s\r\n\r\nTo: not@header.example\r\n";
        assert_eq!(
            header_recipients(m),
            [
                "<john@example.net>",
                "<ann@example.net>",
                "<carol@example.org>",
                "<dave@example.org>"
            ]
        );
    }

    #[test]
    fn finds_recipients_in_to_and_cc() {
        let m = b"To: Bob <bob@x.example>, carol@y.example\r\nCc: \"D\" <d@z.example>\r\nSubject: s\r\n\r\n";
        assert_eq!(
            header_recipients(m),
            ["<bob@x.example>", "<carol@y.example>", "<d@z.example>"]
        );
    }

    #[test]
    fn the_sender_is_the_first_from_address() {
        let m = b"From: =?utf-8?q?J=C3=B6rg?= <joerg@example.de>, x@example.org\r\n\r\n";
        assert_eq!(header_sender(m).as_deref(), Some("<joerg@example.de>"));
        assert_eq!(header_sender(b"Subject: none\r\n\r\n"), None);
    }

    #[test]
    fn only_messages_pass_the_check() {
        assert_eq!(
            check_message(b"Subject: x\r\n folded\r\n\r\nbody: \x00\xff\r\n"),
            Ok(())
        );
        assert_eq!(check_message(b"Subject: x\n"), Ok(()));
        assert_eq!(check_message(b""), Err("it is empty".into()));
        assert_eq!(
            check_message(b"\x89PNG\r\n\x1a\n"),
            Err("line 1 is not a header field (Name: value): \"�PNG\"".into())
        );
        assert_eq!(
            check_message(b"Subject: x\r\nhello world\r\n\r\n"),
            Err("line 2 is not a header field (Name: value): \"hello world\"".into())
        );
        assert_eq!(
            check_message(b"\r\nbody\r\n"),
            Err("it starts with an empty line: no header fields".into())
        );
        assert!(check_message(b" x: y\r\n").is_err());
        assert!(check_message(b"Bad Name: y\r\n").is_err());
    }

    #[test]
    fn addresses_without_brackets_are_put_in_them() {
        assert_eq!(
            bracketed("b@example.net").as_deref(),
            Some("<b@example.net>")
        );
        assert_eq!(
            bracketed("b@example.net NOTIFY=NEVER").as_deref(),
            Some("<b@example.net> NOTIFY=NEVER")
        );
        assert_eq!(bracketed("<b@example.net>"), None);
        assert_eq!(bracketed("<>"), None);
    }
}
