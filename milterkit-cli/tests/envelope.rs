//! `milterkit run`'s envelope: recipients and sender read from the message with an address
//! parser, bytes that are not a message refused, addresses without angle brackets put in them.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

mod support;

use support::{milterkit, milterkit_off_runtime, serve_policy};

/// Writes `bytes` to a scratch file.
fn file(name: &str, bytes: &[u8]) -> PathBuf {
    let path = testkit::scratch_dir("milterkit-cli-envelope", name).join("message.eml");
    std::fs::write(&path, bytes).unwrap();
    path
}

/// Runs `milterkit run SPEC FILE MORE…` on a blocking thread (the milter is served on the
/// runtime's).
async fn run(spec: &str, file: &Path, more: &[&str]) -> (i32, String, String) {
    milterkit_off_runtime(&[&["run", spec, file.to_str().unwrap()][..], more].concat()).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn recipients_and_sender_come_from_the_header_fields_as_addresses() {
    let served = serve_policy().await;
    let message = file(
        "comment",
        b"From: \"Roe, Richard\" <richard@example.org>\r\n\
          To: john@example.net (Doe, John)\r\n\
          Cc: team: ann@example.net, \"Smith, Bo\" <bo@example.net>;\r\n\
          Subject: hello\r\n\r\nHi.\r\n",
    );
    let (code, out, err) = run(&served.spec, &message, &[]).await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("MAIL     <richard@example.org>"), "{out}");
    for rcpt in [
        "<john@example.net>",
        "<ann@example.net>",
        "<bo@example.net>",
    ] {
        assert!(out.contains(&format!("RCPT     {rcpt}")), "{rcpt} in {out}");
    }
    assert!(!out.contains("(Doe"), "{out}");
    served.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addresses_without_brackets_are_sent_in_them_with_a_note() {
    let served = serve_policy().await;
    let message = file("brackets", b"Subject: s\r\n\r\nHi.\r\n");
    let (code, out, err) = run(
        &served.spec,
        &message,
        &["--rcpt", "b@example.net", "--from", "a@example.org"],
    )
    .await;
    assert_eq!(code, 0, "{out}{err}");
    assert!(out.contains("RCPT     <b@example.net>"), "{out}");
    assert!(out.contains("MAIL     <a@example.org>"), "{out}");
    assert_eq!(
        err,
        "milterkit: note: --from a@example.org is sent as <a@example.org>\n\
         milterkit: note: --rcpt b@example.net is sent as <b@example.net>\n"
    );
    served.stop().await.unwrap();
}

#[test]
fn bytes_that_are_not_a_message_are_refused_naming_the_file() {
    let random = file("random", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR");
    // Refused before connecting: the socket does not matter.
    let (code, out, err) = milterkit(&[
        "run",
        "unix:/nonexistent",
        random.to_str().unwrap(),
        "--rcpt",
        "<b@example.net>",
    ]);
    assert_eq!(code, 1, "{out}");
    assert_eq!(
        err,
        format!(
            "milterkit: the message {} is not an RFC 5322 message (header fields, an empty \
             line, the body): line 1 is not a header field (Name: value): \"\u{fffd}PNG\"\n",
            random.display()
        )
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn esmtp_arguments_go_apart_from_the_address() {
    let served = serve_policy().await;
    let message = file("esmtp", b"Subject: s\r\n\r\nHi.\r\n");
    // The policy milter refuses recipients at old.example: it must see the address alone.
    let envelope = [
        "--rcpt",
        "<carol@old.example> NOTIFY=NEVER",
        "--rcpt",
        "<bob@example.net> NOTIFY=SUCCESS ORCPT=rfc822;bob@example.net",
        "--from",
        "<a@example.org> BODY=8BITMIME",
        "--json",
    ];
    let (code, out, err) = run(&served.spec, &message, &envelope).await;
    assert_eq!(code, 0, "{out}{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let refused = &json["refused"];
    assert_eq!(refused[0]["rcpt"], "<carol@old.example>", "{json:#}");
    let bob = &json["delivery"]["recipients"][0];
    assert_eq!(bob["address"], "<bob@example.net>", "{json:#}");
    assert_eq!(
        bob["args"],
        serde_json::json!(["NOTIFY=SUCCESS", "ORCPT=rfc822;bob@example.net"]),
        "{json:#}"
    );
    assert_eq!(
        json["delivery"]["sender"]["args"][0], "BODY=8BITMIME",
        "{json:#}"
    );
    for bad in [&["--rcpt", ""][..], &["--macro", "=x"]] {
        let (code, _, err) = run(&served.spec, &message, bad).await;
        assert_ne!(code, 0, "{bad:?}: {err}");
    }
    served.stop().await.unwrap();
}
