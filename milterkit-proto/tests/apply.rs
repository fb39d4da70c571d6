//! Applying modifications as each MTA does: a table of header index cases, each row citing its
//! evidence (a scenario of testdata/captures, or a section of the protocol reference).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::Bytes;
use milterkit_proto::message::{Message, Mta};
use milterkit_proto::{Envelope, Modification};

const BASE: &str = "From: a@example.org\r\nTo: b@example.net\r\nX-Dup: first\r\nX-Other: between\r\nX-Dup: second\r\n\r\nbody\r\n";

fn ins(index: u32, name: &str, value: &str) -> Modification {
    Modification::InsertHeader {
        index,
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn chg(index: u32, name: &str, value: &str) -> Modification {
    Modification::ChangeHeader {
        index,
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

fn add(name: &str, value: &str) -> Modification {
    Modification::AddHeader {
        name: Bytes::copy_from_slice(name.as_bytes()),
        value: Bytes::copy_from_slice(value.as_bytes()),
    }
}

/// The header names of the result, in order.
fn names(rules: Mta, mods: &[Modification]) -> Vec<String> {
    let m = Message::parse(Bytes::from_static(BASE.as_bytes()));
    let d = m.apply(&Envelope::new("<a@x>"), &[], mods, rules, false);
    Message::parse(d.message)
        .headers
        .iter()
        .map(|h| {
            format!(
                "{}={}",
                String::from_utf8_lossy(&h.name),
                String::from_utf8_lossy(&h.value).trim()
            )
        })
        .collect()
}

struct Row {
    case: &'static str,
    evidence: &'static str,
    mods: Vec<Modification>,
    postfix: &'static [&'static str],
    sendmail: &'static [&'static str],
}

#[test]
fn header_index_cases_follow_each_mta() {
    let all = [
        "From=a@example.org",
        "To=b@example.net",
        "X-Dup=first",
        "X-Other=between",
        "X-Dup=second",
    ];
    let rows = [
        Row {
            case: "insert at 0 goes to the top",
            evidence: "fixtures 03-insheader (both MTAs), reference 7.5",
            mods: vec![ins(0, "X-Top", "t")],
            postfix: &["X-Top=t", "From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second"],
            sendmail: &["X-Top=t", "From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second"],
        },
        Row {
            case: "insert at 1 lands right below the MTA's Received, above every header the milter saw",
            evidence: "reference 7.5 (Postfix: index N becomes header N+1); fixtures README, Sendmail manual test",
            mods: vec![ins(1, "X-One", "1")],
            postfix: &["X-One=1", "From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second"],
            sendmail: &["X-One=1", "From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second"],
        },
        Row {
            case: "insert at 0 then at 3: Postfix counts its Received, Sendmail its hidden entries",
            evidence: "fixtures 03-insheader: Postfix X-Ins-Top, Received, From, X-Ins-Mid; Sendmail X-Ins-Top, Received, X-Ins-Mid, From",
            mods: vec![ins(0, "X-Ins-Top", "top"), ins(3, "X-Ins-Mid", "middle")],
            postfix: &["X-Ins-Top=top", "From=a@example.org", "X-Ins-Mid=middle", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second"],
            sendmail: &["X-Ins-Top=top", "X-Ins-Mid=middle", "From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second"],
        },
        Row {
            case: "insert past the end appends",
            evidence: "reference 7.5 (index past the end: appended)",
            mods: vec![ins(1000, "X-End", "e")],
            postfix: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second", "X-End=e"],
            sendmail: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second", "X-End=e"],
        },
        Row {
            case: "change the second of two same-named headers",
            evidence: "fixtures 05-dup-header-change (both MTAs)",
            mods: vec![chg(2, "X-Dup", "second changed")],
            postfix: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second changed"],
            sendmail: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second changed"],
        },
        Row {
            case: "delete index 1 twice: Postfix renumbers, Sendmail does not",
            evidence: "fixtures 06-dup-header-delete-twice; fixtures README 'Modification quirks'",
            mods: vec![chg(1, "X-Dup", ""), chg(1, "X-Dup", "")],
            postfix: &["From=a@example.org", "To=b@example.net", "X-Other=between"],
            sendmail: &["From=a@example.org", "To=b@example.net", "X-Other=between", "X-Dup=second"],
        },
        Row {
            case: "delete from the highest index down works on both",
            evidence: "reference 7.4 (portable rule)",
            mods: vec![chg(2, "X-Dup", ""), chg(1, "X-Dup", "")],
            postfix: &["From=a@example.org", "To=b@example.net", "X-Other=between"],
            sendmail: &["From=a@example.org", "To=b@example.net", "X-Other=between"],
        },
        Row {
            case: "index 0 acts as 1",
            evidence: "reference 7.4",
            mods: vec![chg(0, "x-dup", "one")],
            postfix: &["From=a@example.org", "To=b@example.net", "x-dup=one", "X-Other=between", "X-Dup=second"],
            sendmail: &["From=a@example.org", "To=b@example.net", "x-dup=one", "X-Other=between", "X-Dup=second"],
        },
        Row {
            case: "changing a header that does not exist adds it at the end",
            evidence: "fixtures README: CHGHEADER for a missing header (index 1, non-empty value) adds it on both",
            mods: vec![chg(1, "X-New", "v")],
            postfix: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second", "X-New=v"],
            sendmail: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second", "X-New=v"],
        },
        Row {
            case: "deleting past the last occurrence does nothing",
            evidence: "reference 7.4",
            mods: vec![chg(3, "X-Dup", "")],
            postfix: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second"],
            sendmail: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second"],
        },
        Row {
            case: "a header added in the same end of message counts for a later change",
            evidence: "reference 7.1 (applied in the order received)",
            mods: vec![add("X-Dup", "third"), chg(3, "X-Dup", "third changed")],
            postfix: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second", "X-Dup=third changed"],
            sendmail: &["From=a@example.org", "To=b@example.net", "X-Dup=first", "X-Other=between", "X-Dup=second", "X-Dup=third changed"],
        },
    ];
    for row in &rows {
        assert_eq!(
            names(Mta::Postfix, &row.mods),
            row.postfix,
            "Postfix: {} ({})",
            row.case,
            row.evidence
        );
        assert_eq!(
            names(Mta::Sendmail, &row.mods),
            row.sendmail,
            "Sendmail: {} ({})",
            row.case,
            row.evidence
        );
    }
    assert_eq!(names(Mta::Postfix, &[]), all);
    println!(
        "{} header index cases checked for Postfix and Sendmail",
        rows.len()
    );
}

#[test]
fn a_message_with_no_modifications_comes_out_byte_for_byte() {
    for raw in [
        BASE,
        "Subject: lf only\nX-Folded: a\n\tb\n\nbody\nmore\n",
        "No-Body: here\r\n",
        "Weird :  spaced\r\n\r\n\r\n\r\n",
        "",
    ] {
        let m = Message::parse(Bytes::from_static(raw.as_bytes()));
        let d = m.apply(
            &Envelope::new("<a@x>"),
            &[Envelope::new("<b@y>")],
            &[],
            Mta::Postfix,
            false,
        );
        assert_eq!(d.message, raw.as_bytes(), "{raw:?}");
        assert_eq!(m.to_bytes(), raw.as_bytes());
    }
}

#[test]
fn header_values_are_written_as_the_mtas_write_them() {
    let m = Message::parse(Bytes::from_static(b"Subject: x\r\n\r\nb\r\n"));
    let mods = [
        add("X-Multi", "line one\n\tline two"),
        add("X-Added-Space", " leading space"),
    ];
    // fixtures 07-multiline-header: LF folding comes out as CRLF folding.
    // fixtures 08-leading-space-header: without HDR_LEADSPC the MTA adds a space (two in all for a
    // value that starts with one); with it the value is used verbatim.
    let plain = m.apply(&Envelope::new("<a@x>"), &[], &mods, Mta::Postfix, false);
    assert_eq!(
        plain.message,
        &b"Subject: x\r\nX-Multi: line one\r\n\tline two\r\nX-Added-Space:  leading space\r\n\r\nb\r\n"[..]
    );
    let verbatim = m.apply(&Envelope::new("<a@x>"), &[], &mods, Mta::Sendmail, true);
    assert_eq!(
        verbatim.message,
        &b"Subject: x\r\nX-Multi:line one\r\n\tline two\r\nX-Added-Space: leading space\r\n\r\nb\r\n"[..]
    );
}

#[test]
fn envelope_and_body_changes_are_applied_in_order() {
    let m = Message::parse(Bytes::from_static(b"Subject: x\n\nold body\n"));
    let rcpts = [
        Envelope::new("<bob@example.net>"),
        Envelope::new("<carol@example.net>"),
    ];
    let mods = [
        Modification::ChangeFrom {
            sender: "<bounce@example.org>".into(),
            args: Some("RET=HDRS ENVID=x".into()),
        },
        Modification::DeleteRcpt {
            rcpt: "bob@example.net".into(),
        },
        Modification::AddRcptPar {
            rcpt: "<dave@example.net>".into(),
            args: Some("NOTIFY=NEVER".into()),
        },
        Modification::ReplaceBody {
            chunk: "new\r\n".into(),
        },
        Modification::ReplaceBody {
            chunk: "body\r\n".into(),
        },
        Modification::Quarantine {
            reason: "held".into(),
        },
    ];
    let d = m.apply(
        &Envelope::new("<a@example.org>"),
        &rcpts,
        &mods,
        Mta::Postfix,
        false,
    );
    assert_eq!(d.sender.address, "<bounce@example.org>");
    assert_eq!(d.sender.args, ["RET=HDRS", "ENVID=x"]);
    let to: Vec<&[u8]> = d.recipients.iter().map(|r| &r.address[..]).collect();
    assert_eq!(
        to,
        [&b"<carol@example.net>"[..], b"<dave@example.net>"],
        "Postfix matches with or without brackets"
    );
    assert_eq!(d.recipients[1].args, ["NOTIFY=NEVER"]);
    assert_eq!(
        d.message,
        &b"Subject: x\n\nnew\nbody\n"[..],
        "the body keeps the message's LF line ends"
    );
    assert_eq!(d.quarantine.as_deref(), Some(&b"held"[..]));
}
