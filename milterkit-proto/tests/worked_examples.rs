//! Every worked byte-level example of the protocol reference's section 11 (worked examples), encoded
//! from values built by name and decoded back, byte for byte.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use bytes::{Bytes, BytesMut};
use milterkit_proto::{
    Actions, Agreement, Command, Connect, Decision, Envelope, Family, FrameDecoder, MacroLists,
    MacroStage, Modification, Offer, ProtocolFlags, Reply, Response,
};

// ---------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------

/// Parses a space-separated hex string such as `"00 00 00 01 63"`.
fn hex(s: &str) -> Vec<u8> {
    s.split_whitespace()
        .map(|b| u8::from_str_radix(b, 16).unwrap())
        .collect()
}

/// Concatenates pieces of a packet (hex parts and quoted strings from the document).
fn cat(parts: &[&[u8]]) -> Vec<u8> {
    parts.concat()
}

fn b(s: &'static str) -> Bytes {
    Bytes::from_static(s.as_bytes())
}

fn encode_command(cmd: &Command) -> Vec<u8> {
    let mut out = BytesMut::new();
    cmd.encode(&mut out);
    out.to_vec()
}

fn encode_response(resp: &Response) -> Vec<u8> {
    let mut out = BytesMut::new();
    resp.encode(&mut out);
    out.to_vec()
}

/// Splits exactly one frame off `wire`, checking nothing is left over.
fn one_frame(wire: &[u8]) -> milterkit_proto::Frame {
    let mut buf = BytesMut::from(wire);
    let frame = FrameDecoder::default().decode(&mut buf).unwrap().unwrap();
    assert!(
        buf.is_empty(),
        "bytes left after the frame: {:02x?}",
        &buf[..]
    );
    frame
}

/// Encodes `cmd`, compares with `expected`, then decodes `expected` and compares with `cmd`.
fn check_command(cmd: Command, expected: &[u8]) {
    assert_eq!(
        encode_command(&cmd),
        expected,
        "encoding of {cmd:?}\n got      {:02x?}\n expected {expected:02x?}",
        encode_command(&cmd),
    );
    let decoded = Command::decode(one_frame(expected)).unwrap();
    assert_eq!(decoded, cmd);
}

/// Encodes `resp`, compares with `expected`, then decodes `expected` and compares with `resp`.
fn check_response(resp: Response, expected: &[u8]) {
    assert_eq!(
        encode_response(&resp),
        expected,
        "encoding of {resp:?}\n got      {:02x?}\n expected {expected:02x?}",
        encode_response(&resp),
    );
    let decoded = Response::decode(one_frame(expected)).unwrap();
    assert_eq!(decoded, resp);
}

// ---------------------------------------------------------------------------------------------
// The bytes of the document, one function per example
// ---------------------------------------------------------------------------------------------

// 11.1 A complete minimal session

fn ex_11_1_step_1() -> Vec<u8> {
    hex("00 00 00 0d  4f  00 00 00 06  00 00 01 ff  00 1f ff ff")
}

fn ex_11_1_step_2() -> Vec<u8> {
    hex("00 00 00 0d  4f  00 00 00 06  00 00 00 01  00 00 03 00")
}

fn ex_11_1_step_3() -> Vec<u8> {
    hex("00 00 00 30  44
         43
         6a 00
         6d 78 2e 65 78 61 6d 70 6c 65 2e 6f 72 67 00
         7b 64 61 65 6d 6f 6e 5f 6e 61 6d 65 7d 00
         6d 78 2e 65 78 61 6d 70 6c 65 2e 6f 72 67 00")
}

fn ex_11_1_step_4() -> Vec<u8> {
    hex("00 00 00 24  43
         63 6c 69 65 6e 74 2e 65 78 61 6d 70 6c 65 2e 63 6f 6d 00
         34
         c3 50
         31 39 38 2e 35 31 2e 31 30 30 2e 37 00")
}

fn ex_11_1_step_5() -> Vec<u8> {
    hex("00 00 00 01  63")
}

fn ex_11_1_step_6() -> Vec<u8> {
    hex("00 00 00 14  48  63 6c 69 65 6e 74 2e 65 78 61 6d 70 6c 65 2e 63 6f 6d 00")
}

fn ex_11_1_step_7() -> Vec<u8> {
    hex("00 00 00 2d  4d
         3c 61 6c 69 63 65 40 65 78 61 6d 70 6c 65 2e 63 6f 6d 3e 00
         53 49 5a 45 3d 31 30 32 34 00
         42 4f 44 59 3d 38 42 49 54 4d 49 4d 45 00")
}

fn ex_11_1_step_8() -> Vec<u8> {
    hex("00 00 00 13  52  3c 62 6f 62 40 65 78 61 6d 70 6c 65 2e 6e 65 74 3e 00")
}

fn ex_11_1_step_9() -> Vec<u8> {
    hex("00 00 00 20  4c
         46 72 6f 6d 00
         41 6c 69 63 65 20 3c 61 6c 69 63 65 40 65 78 61 6d 70 6c 65 2e 63 6f 6d 3e 00")
}

fn ex_11_1_step_10() -> Vec<u8> {
    hex("00 00 00 0f  4c  53 75 62 6a 65 63 74 00  48 65 6c 6c 6f 00")
}

fn ex_11_1_step_11() -> Vec<u8> {
    hex("00 00 00 01  4e")
}

fn ex_11_1_step_12() -> Vec<u8> {
    hex("00 00 00 14  42  48 69 20 42 6f 62 2c 0d 0a 73 65 65 20 79 6f 75 2e 0d 0a")
}

fn ex_11_1_step_13() -> Vec<u8> {
    hex("00 00 00 01  45")
}

fn ex_11_1_step_14() -> Vec<u8> {
    hex("00 00 00 10  68  58 2d 46 69 6c 74 65 72 65 64 00  79 65 73 00")
}

fn ex_11_1_step_15() -> Vec<u8> {
    hex("00 00 00 01  63")
}

fn ex_11_1_step_16() -> Vec<u8> {
    hex("00 00 00 01  41")
}

fn ex_11_1_step_17() -> Vec<u8> {
    hex("00 00 00 01  51")
}

/// The reply the document writes after steps 6 to 12.
fn ex_11_1_step_reply() -> Vec<u8> {
    hex("00 00 00 01 63")
}

fn ex_11_1_macro_eom() -> Vec<u8> {
    cat(&[&hex("00 00 00 0f 44 45 69 00"), b"E6FF541A5C\0"])
}

// 11.2 OPTNEG reply with macro lists

fn ex_11_2() -> Vec<u8> {
    hex("00 00 00 35  4f
         00 00 00 06  00 00 01 01  00 00 03 00
         00 00 00 00  7b 63 6c 69 65 6e 74 5f 61 64 64 72 7d 20 6a 00
         00 00 00 05  69 20 7b 61 75 74 68 5f 61 75 74 68 65 6e 7d 00")
}

// 11.3 Other CONNECT forms

fn ex_11_3_ipv6_postfix() -> Vec<u8> {
    cat(&[
        &hex("00 00 00 20 43"),
        b"[2001:db8::25]\0",
        &hex("36 00 19"),
        b"2001:db8::25\0",
    ])
}

fn ex_11_3_ipv6_sendmail() -> Vec<u8> {
    cat(&[
        &hex("00 00 00 2a 43"),
        b"[IPv6:2001:db8::25]\0",
        &hex("36 00 19"),
        b"IPv6:2001:db8::25\0",
    ])
}

fn ex_11_3_unix() -> Vec<u8> {
    cat(&[
        &hex("00 00 00 1d 43"),
        b"localhost\0",
        &hex("4c 00 00"),
        b"/run/smtp.sock\0",
    ])
}

fn ex_11_3_unknown() -> Vec<u8> {
    hex("00 00 00 0c  43  6c 6f 63 61 6c 68 6f 73 74 00  55")
}

// 11.4 Miscellaneous packets

fn ex_11_4_empty_macro_unknown() -> Vec<u8> {
    hex("00 00 00 02 44 55")
}

fn ex_11_4_unknown() -> Vec<u8> {
    cat(&[&hex("00 00 00 0a 55"), b"XFOO bar\0"])
}

fn ex_11_4_data() -> Vec<u8> {
    hex("00 00 00 01 54")
}

fn ex_11_4_skip() -> Vec<u8> {
    hex("00 00 00 01 73")
}

fn ex_11_4_progress() -> Vec<u8> {
    hex("00 00 00 01 70")
}

fn ex_11_4_replycode_single() -> Vec<u8> {
    cat(&[&hex("00 00 00 19 79"), b"550 5.7.1 Spam rejected\0"])
}

fn ex_11_4_replycode_two_lines() -> Vec<u8> {
    cat(&[
        &hex("00 00 00 38 79"),
        b"451-4.7.1 Greylisted\r\n451 4.7.1 Try again in 5 minutes\0",
    ])
}

/// The two-line REPLYCODE "in detail", all hex.
fn ex_11_4_replycode_two_lines_detail() -> Vec<u8> {
    hex("00 00 00 38  79
         34 35 31 2d 34 2e 37 2e 31 20 47 72 65 79 6c 69 73 74 65 64
         0d 0a
         34 35 31 20 34 2e 37 2e 31 20 54 72 79 20 61 67 61 69 6e 20
         69 6e 20 35 20 6d 69 6e 75 74 65 73
         00")
}

fn ex_11_4_chgheader_delete() -> Vec<u8> {
    cat(&[&hex("00 00 00 0f 6d 00 00 00 02"), b"Received\0", b"\0"])
}

fn ex_11_4_chgheader_replace() -> Vec<u8> {
    cat(&[
        &hex("00 00 00 1a 6d 00 00 00 01"),
        b"Subject\0",
        b"[SPAM] Hello\0",
    ])
}

fn ex_11_4_insheader_top() -> Vec<u8> {
    cat(&[
        &hex("00 00 00 35 69 00 00 00 00"),
        b"Authentication-Results\0",
        b"mx.example.org; spf=pass\0",
    ])
}

fn ex_11_4_chgfrom_with_args() -> Vec<u8> {
    cat(&[
        &hex("00 00 00 29 65"),
        b"<bounce@example.com>\0",
        b"RET=HDRS ENVID=abc\0",
    ])
}

fn ex_11_4_addrcpt_par() -> Vec<u8> {
    cat(&[
        &hex("00 00 00 24 32"),
        b"<archive@example.com>\0",
        b"NOTIFY=NEVER\0",
    ])
}

fn ex_11_4_addrcpt() -> Vec<u8> {
    cat(&[&hex("00 00 00 17 2b"), b"<archive@example.com>\0"])
}

fn ex_11_4_delrcpt() -> Vec<u8> {
    cat(&[&hex("00 00 00 13 2d"), b"<bob@example.net>\0"])
}

fn ex_11_4_quarantine() -> Vec<u8> {
    cat(&[&hex("00 00 00 0d 71"), b"virus found\0"])
}

fn ex_11_4_replbody() -> Vec<u8> {
    cat(&[&hex("00 00 00 0b 62"), b"New body\r\n"])
}

/// Every example with the length the document states next to it.
fn all_examples() -> Vec<(&'static str, Vec<u8>, u32)> {
    vec![
        ("11.1 step 1", ex_11_1_step_1(), 13),
        ("11.1 step 2", ex_11_1_step_2(), 13),
        ("11.1 step 3", ex_11_1_step_3(), 48),
        ("11.1 step 4", ex_11_1_step_4(), 36),
        ("11.1 step 5", ex_11_1_step_5(), 1),
        ("11.1 step 6", ex_11_1_step_6(), 20),
        ("11.1 step 7", ex_11_1_step_7(), 45),
        ("11.1 step 8", ex_11_1_step_8(), 19),
        ("11.1 step 9", ex_11_1_step_9(), 32),
        ("11.1 step 10", ex_11_1_step_10(), 15),
        ("11.1 step 11", ex_11_1_step_11(), 1),
        ("11.1 step 12", ex_11_1_step_12(), 20),
        ("11.1 step 13", ex_11_1_step_13(), 1),
        ("11.1 step 14", ex_11_1_step_14(), 16),
        ("11.1 step 15", ex_11_1_step_15(), 1),
        ("11.1 step 16", ex_11_1_step_16(), 1),
        ("11.1 step 17", ex_11_1_step_17(), 1),
        ("11.1 replies to steps 6-12", ex_11_1_step_reply(), 1),
        ("11.1 D E macro", ex_11_1_macro_eom(), 15),
        ("11.2", ex_11_2(), 53),
        ("11.3 IPv6 Postfix", ex_11_3_ipv6_postfix(), 32),
        ("11.3 IPv6 Sendmail", ex_11_3_ipv6_sendmail(), 42),
        ("11.3 Unix", ex_11_3_unix(), 29),
        ("11.3 unknown family", ex_11_3_unknown(), 12),
        ("11.4 empty macro", ex_11_4_empty_macro_unknown(), 2),
        ("11.4 UNKNOWN", ex_11_4_unknown(), 10),
        ("11.4 DATA", ex_11_4_data(), 1),
        ("11.4 SKIP", ex_11_4_skip(), 1),
        ("11.4 PROGRESS", ex_11_4_progress(), 1),
        ("11.4 REPLYCODE single", ex_11_4_replycode_single(), 25),
        (
            "11.4 REPLYCODE two lines",
            ex_11_4_replycode_two_lines(),
            56,
        ),
        (
            "11.4 REPLYCODE two lines detail",
            ex_11_4_replycode_two_lines_detail(),
            56,
        ),
        ("11.4 CHGHEADER delete", ex_11_4_chgheader_delete(), 15),
        ("11.4 CHGHEADER replace", ex_11_4_chgheader_replace(), 26),
        ("11.4 INSHEADER", ex_11_4_insheader_top(), 53),
        ("11.4 CHGFROM", ex_11_4_chgfrom_with_args(), 41),
        ("11.4 ADDRCPT_PAR", ex_11_4_addrcpt_par(), 36),
        ("11.4 ADDRCPT", ex_11_4_addrcpt(), 23),
        ("11.4 DELRCPT", ex_11_4_delrcpt(), 19),
        ("11.4 QUARANTINE", ex_11_4_quarantine(), 13),
        ("11.4 REPLBODY", ex_11_4_replbody(), 11),
    ]
}

// ---------------------------------------------------------------------------------------------
// The document itself
// ---------------------------------------------------------------------------------------------

#[test]
fn every_length_prefix_in_section_11_equals_one_plus_the_payload_length_and_the_stated_length() {
    for (name, bytes, stated) in all_examples() {
        let prefix = u32::from_be_bytes(bytes[..4].try_into().unwrap());
        let counted = u32::try_from(bytes.len() - 4).unwrap();
        assert_eq!(prefix, counted, "{name}: prefix vs 1 + payload length");
        assert_eq!(
            prefix, stated,
            "{name}: prefix vs the length the document states"
        );
    }
}

#[test]
fn the_two_line_replycode_in_detail_matches_the_table_row_of_section_11_4() {
    assert_eq!(
        ex_11_4_replycode_two_lines_detail(),
        ex_11_4_replycode_two_lines()
    );
}

// ---------------------------------------------------------------------------------------------
// 11.1 A complete minimal session
// ---------------------------------------------------------------------------------------------

#[test]
fn encodes_optneg_offer_of_worked_example_11_1_step_1() {
    let offer = Offer {
        version: 6,
        actions: Actions::CURRENT,
        protocol: ProtocolFlags::CURRENT,
    };
    assert_eq!(offer, Offer::default());
    assert_eq!(offer.actions.bits(), 0x1FF);
    assert_eq!(offer.protocol.bits(), 0x1F_FFFF);
    check_command(Command::Optneg(offer), &ex_11_1_step_1());
}

#[test]
fn encodes_optneg_reply_of_worked_example_11_1_step_2() {
    let agreement = Agreement {
        version: 6,
        actions: Actions::ADD_HEADER,
        protocol: ProtocolFlags::NOUNKNOWN | ProtocolFlags::NODATA,
        macros: MacroLists::default(),
    };
    assert_eq!(agreement.protocol.bits(), 0x300);
    check_response(Response::Optneg(agreement), &ex_11_1_step_2());
}

#[test]
fn encodes_connect_macros_of_worked_example_11_1_step_3() {
    let cmd = Command::Macro {
        stage: b'C',
        pairs: vec![
            (b("j"), b("mx.example.org")),
            (b("{daemon_name}"), b("mx.example.org")),
        ],
    };
    check_command(cmd, &ex_11_1_step_3());
}

#[test]
fn encodes_ipv4_connect_of_worked_example_11_1_step_4() {
    let cmd = Command::Connect(Connect {
        hostname: b("client.example.com"),
        family: Family::Inet,
        port: 50000,
        address: b("198.51.100.7"),
    });
    check_command(cmd, &ex_11_1_step_4());
}

#[test]
fn encodes_continue_of_worked_example_11_1_step_5() {
    check_response(Response::Decision(Decision::Continue), &ex_11_1_step_5());
}

#[test]
fn encodes_helo_of_worked_example_11_1_step_6() {
    let cmd = Command::Helo {
        name: b("client.example.com"),
    };
    check_command(cmd, &ex_11_1_step_6());
}

#[test]
fn encodes_mail_with_esmtp_arguments_of_worked_example_11_1_step_7() {
    let cmd = Command::Mail(Envelope {
        address: b("<alice@example.com>"),
        args: vec![b("SIZE=1024"), b("BODY=8BITMIME")],
    });
    check_command(cmd, &ex_11_1_step_7());
}

#[test]
fn encodes_rcpt_of_worked_example_11_1_step_8() {
    let cmd = Command::Rcpt(Envelope::new("<bob@example.net>"));
    check_command(cmd, &ex_11_1_step_8());
}

#[test]
fn encodes_from_header_without_leading_space_of_worked_example_11_1_step_9() {
    let cmd = Command::Header {
        name: b("From"),
        value: b("Alice <alice@example.com>"),
    };
    check_command(cmd, &ex_11_1_step_9());
}

#[test]
fn encodes_subject_header_of_worked_example_11_1_step_10() {
    let cmd = Command::Header {
        name: b("Subject"),
        value: b("Hello"),
    };
    check_command(cmd, &ex_11_1_step_10());
}

#[test]
fn encodes_eoh_of_worked_example_11_1_step_11() {
    check_command(Command::Eoh, &ex_11_1_step_11());
}

#[test]
fn encodes_body_chunk_of_worked_example_11_1_step_12() {
    let cmd = Command::Body(b("Hi Bob,\r\nsee you.\r\n"));
    check_command(cmd, &ex_11_1_step_12());
}

#[test]
fn encodes_empty_bodyeob_of_worked_example_11_1_step_13() {
    let cmd = Command::Eom {
        chunk: Bytes::new(),
    };
    check_command(cmd, &ex_11_1_step_13());
}

#[test]
fn encodes_addheader_of_worked_example_11_1_step_14() {
    let resp = Response::Modification(Modification::AddHeader {
        name: b("X-Filtered"),
        value: b("yes"),
    });
    check_response(resp, &ex_11_1_step_14());
}

#[test]
fn encodes_final_continue_at_end_of_message_of_worked_example_11_1_step_15() {
    check_response(Response::Decision(Decision::Continue), &ex_11_1_step_15());
}

#[test]
fn encodes_abort_of_worked_example_11_1_step_16() {
    check_command(Command::Abort, &ex_11_1_step_16());
}

#[test]
fn encodes_quit_of_worked_example_11_1_step_17() {
    check_command(Command::Quit, &ex_11_1_step_17());
}

#[test]
fn encodes_the_continue_reply_to_steps_6_to_12_of_worked_example_11_1() {
    check_response(
        Response::Decision(Decision::Continue),
        &ex_11_1_step_reply(),
    );
}

#[test]
fn encodes_end_of_data_macro_i_of_worked_example_11_1() {
    let cmd = Command::Macro {
        stage: b'E',
        pairs: vec![(b("i"), b("E6FF541A5C"))],
    };
    check_command(cmd, &ex_11_1_macro_eom());
}

#[test]
fn decodes_the_whole_session_of_worked_example_11_1_as_one_stream_of_each_direction() {
    // MTA → milter, in order, through one decoder.
    let mta: Vec<Vec<u8>> = vec![
        ex_11_1_step_1(),
        ex_11_1_step_3(),
        ex_11_1_step_4(),
        ex_11_1_step_6(),
        ex_11_1_step_7(),
        ex_11_1_step_8(),
        ex_11_1_step_9(),
        ex_11_1_step_10(),
        ex_11_1_step_11(),
        ex_11_1_step_12(),
        ex_11_1_step_13(),
        ex_11_1_step_16(),
        ex_11_1_step_17(),
    ];
    let mut buf = BytesMut::from(&mta.concat()[..]);
    let dec = FrameDecoder::default();
    let mut codes = Vec::new();
    while let Some(frame) = dec.decode(&mut buf).unwrap() {
        codes.push(Command::decode(frame).unwrap().code());
    }
    assert!(buf.is_empty());
    assert_eq!(codes, b"ODCHMRLLNBEAQ");

    // milter → MTA: OPTNEG reply, a CONTINUE for each of CONNECT, HELO, MAIL, RCPT, 2×HEADER,
    // EOH, BODY, then ADDHEADER and the final CONTINUE.
    let mut milter = vec![ex_11_1_step_2(), ex_11_1_step_5()];
    milter.extend(std::iter::repeat_with(ex_11_1_step_reply).take(7));
    milter.push(ex_11_1_step_14());
    milter.push(ex_11_1_step_15());
    let mut buf = BytesMut::from(&milter.concat()[..]);
    let mut codes = Vec::new();
    while let Some(frame) = dec.decode(&mut buf).unwrap() {
        codes.push(Response::decode(frame).unwrap().code());
    }
    assert!(buf.is_empty());
    let mut expected = vec![b'O'];
    expected.extend([b'c'; 8]);
    expected.extend(*b"hc");
    assert_eq!(codes, expected);
}

// ---------------------------------------------------------------------------------------------
// 11.2 OPTNEG reply with macro lists
// ---------------------------------------------------------------------------------------------

#[test]
fn encodes_optneg_reply_with_macro_lists_of_worked_example_11_2() {
    let mut macros = MacroLists::default();
    macros.set(MacroStage::CONNECT, ["{client_addr}", "j"]);
    macros.set(MacroStage::EOM, ["i", "{auth_authen}"]);
    let agreement = Agreement {
        version: 6,
        actions: Actions::ADD_HEADER | Actions::SET_SYMLIST,
        protocol: ProtocolFlags::NOUNKNOWN | ProtocolFlags::NODATA,
        macros,
    };
    assert_eq!(agreement.actions.bits(), 0x101);
    check_response(Response::Optneg(agreement), &ex_11_2());
}

// ---------------------------------------------------------------------------------------------
// 11.3 Other CONNECT forms
// ---------------------------------------------------------------------------------------------

#[test]
fn encodes_postfix_style_ipv6_connect_of_worked_example_11_3() {
    let cmd = Command::Connect(Connect {
        hostname: b("[2001:db8::25]"),
        family: Family::Inet6,
        port: 25,
        address: b("2001:db8::25"),
    });
    check_command(cmd, &ex_11_3_ipv6_postfix());
}

#[test]
fn encodes_sendmail_style_ipv6_connect_of_worked_example_11_3() {
    let cmd = Command::Connect(Connect {
        hostname: b("[IPv6:2001:db8::25]"),
        family: Family::Inet6,
        port: 25,
        address: b("IPv6:2001:db8::25"),
    });
    check_command(cmd, &ex_11_3_ipv6_sendmail());
}

#[test]
fn encodes_unix_socket_connect_of_worked_example_11_3() {
    let cmd = Command::Connect(Connect {
        hostname: b("localhost"),
        family: Family::Unix,
        port: 0,
        address: b("/run/smtp.sock"),
    });
    check_command(cmd, &ex_11_3_unix());
}

#[test]
fn encodes_unknown_family_connect_without_port_or_address_of_worked_example_11_3() {
    let cmd = Command::Connect(Connect {
        hostname: b("localhost"),
        family: Family::Unknown,
        port: 0,
        address: Bytes::new(),
    });
    check_command(cmd, &ex_11_3_unknown());
}

// ---------------------------------------------------------------------------------------------
// 11.4 Miscellaneous packets
// ---------------------------------------------------------------------------------------------

#[test]
fn encodes_empty_macro_packet_for_unknown_of_worked_example_11_4() {
    let cmd = Command::Macro {
        stage: b'U',
        pairs: vec![],
    };
    check_command(cmd, &ex_11_4_empty_macro_unknown());
}

#[test]
fn encodes_unknown_command_line_of_worked_example_11_4() {
    let cmd = Command::Unknown {
        line: b("XFOO bar"),
    };
    check_command(cmd, &ex_11_4_unknown());
}

#[test]
fn encodes_data_of_worked_example_11_4() {
    check_command(Command::Data, &ex_11_4_data());
}

#[test]
fn encodes_skip_of_worked_example_11_4() {
    check_response(Response::Decision(Decision::Skip), &ex_11_4_skip());
}

#[test]
fn encodes_progress_of_worked_example_11_4() {
    check_response(Response::Progress, &ex_11_4_progress());
}

#[test]
fn encodes_single_line_replycode_of_worked_example_11_4() {
    let reply = Reply::new(550, "5.7.1", "Spam rejected").unwrap();
    check_response(
        Response::Decision(Decision::Reply(reply)),
        &ex_11_4_replycode_single(),
    );
}

#[test]
fn encodes_two_line_replycode_of_worked_example_11_4() {
    let reply = Reply::multiline(451, "4.7.1", ["Greylisted", "Try again in 5 minutes"]).unwrap();
    check_response(
        Response::Decision(Decision::Reply(reply)),
        &ex_11_4_replycode_two_lines(),
    );
}

#[test]
fn encodes_two_line_replycode_byte_for_byte_as_in_the_detail_of_worked_example_11_4() {
    let reply = Reply::multiline(451, "4.7.1", ["Greylisted", "Try again in 5 minutes"]).unwrap();
    check_response(
        Response::Decision(Decision::Reply(reply)),
        &ex_11_4_replycode_two_lines_detail(),
    );
}

#[test]
fn encodes_chgheader_deleting_the_second_received_of_worked_example_11_4() {
    let resp = Response::Modification(Modification::ChangeHeader {
        index: 2,
        name: b("Received"),
        value: Bytes::new(),
    });
    check_response(resp, &ex_11_4_chgheader_delete());
}

#[test]
fn encodes_chgheader_replacing_the_first_subject_of_worked_example_11_4() {
    let resp = Response::Modification(Modification::ChangeHeader {
        index: 1,
        name: b("Subject"),
        value: b("[SPAM] Hello"),
    });
    check_response(resp, &ex_11_4_chgheader_replace());
}

#[test]
fn encodes_insheader_at_the_top_of_worked_example_11_4() {
    let resp = Response::Modification(Modification::InsertHeader {
        index: 0,
        name: b("Authentication-Results"),
        value: b("mx.example.org; spf=pass"),
    });
    check_response(resp, &ex_11_4_insheader_top());
}

#[test]
fn encodes_chgfrom_with_arguments_of_worked_example_11_4() {
    let resp = Response::Modification(Modification::ChangeFrom {
        sender: b("<bounce@example.com>"),
        args: Some(b("RET=HDRS ENVID=abc")),
    });
    check_response(resp, &ex_11_4_chgfrom_with_args());
}

#[test]
fn encodes_addrcpt_par_of_worked_example_11_4() {
    let resp = Response::Modification(Modification::AddRcptPar {
        rcpt: b("<archive@example.com>"),
        args: Some(b("NOTIFY=NEVER")),
    });
    check_response(resp, &ex_11_4_addrcpt_par());
}

#[test]
fn encodes_addrcpt_of_worked_example_11_4() {
    let resp = Response::Modification(Modification::AddRcpt {
        rcpt: b("<archive@example.com>"),
    });
    check_response(resp, &ex_11_4_addrcpt());
}

#[test]
fn encodes_delrcpt_of_worked_example_11_4() {
    let resp = Response::Modification(Modification::DeleteRcpt {
        rcpt: b("<bob@example.net>"),
    });
    check_response(resp, &ex_11_4_delrcpt());
}

#[test]
fn encodes_quarantine_of_worked_example_11_4() {
    let resp = Response::Modification(Modification::Quarantine {
        reason: b("virus found"),
    });
    check_response(resp, &ex_11_4_quarantine());
}

#[test]
fn encodes_replbody_without_nul_of_worked_example_11_4() {
    let resp = Response::Modification(Modification::ReplaceBody {
        chunk: b("New body\r\n"),
    });
    check_response(resp, &ex_11_4_replbody());
}
