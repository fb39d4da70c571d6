//! A second opinion on the SMTP side: swaks, not our client, sends a message with one refused
//! recipient through each MTA and sees the milter's custom reply; the other recipient gets the
//! message.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;

use interop::milter::REJECT_TEXT;
use interop::{Mta, Rig, Tool, Transport, DELIVERY_TIMEOUT};

fn swaks_sees_the_custom_rcpt_reply(mta: Mta) {
    if !interop::require(&[Tool::Swaks]) {
        return;
    }
    let Some(rig) = Rig::start(mta, Transport::Tcp).unwrap() else {
        return;
    };
    let data = interop::RunDir::new("swaks").unwrap();
    let file = data.join("message.eml");
    std::fs::write(
        &file,
        "From: <alice@example.org>\r\nTo: <bob@example.net>\r\nSubject: via swaks\r\n\
         Date: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <swaks@example.org>\r\n\r\nhello\r\n",
    )
    .unwrap();
    let out = Command::new("swaks")
        .args(["--server", &format!("127.0.0.1:{}", rig.port())])
        .args(["--helo", "client.test.invalid"])
        .args(["--from", "alice@example.org"])
        .args(["--to", "bob@example.net,reject-me@example.net"])
        .arg("--data")
        .arg(&file)
        .output()
        .unwrap();
    let transcript =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    let want = match mta {
        Mta::Postfix => format!("<** 550 5.7.1 {REJECT_TEXT}"),
        Mta::Sendmail => format!("<** 550 5.7.1 <reject-me@example.net>... {REJECT_TEXT}"),
    };
    assert!(transcript.contains(&want), "{want:?} not in:\n{transcript}");
    assert!(
        transcript.contains("<-  250 2.0.0"),
        "message not accepted:\n{transcript}"
    );
    let delivered = rig.sink.wait_for(1, DELIVERY_TIMEOUT).unwrap();
    assert_eq!(delivered[0].recipients(), ["bob@example.net"]);
    assert_eq!(delivered[0].header("Subject").as_deref(), Some("via swaks"));
}

interop::tests_on_each_mta! { swaks_sees_the_custom_rcpt_reply: passes_the_custom_rcpt_reply_to_swaks }
