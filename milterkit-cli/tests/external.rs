//! The MTA side and the `milterkit` command against milters no one here wrote: a C milter on
//! Debian's libmilter (source in testdata/c) and OpenDKIM. The test command installs them; a
//! missing one is a failure under `CI=true` and a loud skip elsewhere.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use milterkit::mta::{Client, Connection, Profile, Transaction, Verdict};
use milterkit::{Decision, Modification, Stage};
use serde_json::Value;
use testkit::free_port;

mod support;

use support::c_milter::{c_milter, on_path, require, wait_for_port, Running};
use support::milterkit;

const MESSAGE: &str = "From: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: hello\r\nX-Remove: please\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\n\r\nOriginal body.\r\n";

fn expected_result() -> String {
    // The modification rules (Postfix profile): insert at 0 goes on top, the Subject changes in
    // place, X-Remove goes, the added header goes last, the body is replaced.
    "X-C-Top: inserted at 0\r\nFrom: Alice <alice@example.org>\r\nTo: Bob <bob@example.net>\r\nSubject: [C] changed subject\r\nDate: Mon, 30 Nov 2026 10:00:00 +0000\r\nMessage-ID: <m1@example.org>\r\nX-C-Added: added by libmilter\r\n\r\nBody replaced by the C milter.\r\n".into()
}

/// Writes `text` to the file `name` in the tests' scratch folder; its path.
fn scratch_file(name: &str, text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).unwrap();
    path
}

#[test]
fn milterkit_run_shows_every_modification_of_a_libmilter_milter() {
    let Some((spec, _milter)) = c_milter() else {
        return;
    };
    let msg = scratch_file("c-message.eml", MESSAGE);
    let result = Path::new(env!("CARGO_TARGET_TMPDIR")).join("c-result.eml");
    let common = [
        "run",
        &spec,
        msg.to_str().unwrap(),
        "--from",
        "<alice@example.org>",
        "--rcpt",
        "<bob@example.net>",
        "--rcpt",
        "<drop@example.net>",
        "--rcpt",
        "<reject@example.net>",
    ];
    let mut text_args = common.to_vec();
    text_args.extend(["--output", result.to_str().unwrap()]);
    let (code, out, err) = milterkit(&text_args);
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        "progress: 1",
        "add header X-C-Added: \"added by libmilter\"",
        "insert header at 0 X-C-Top: \"inserted at 0\"",
        "change header Subject #1 to \"[C] changed subject\"",
        "delete header X-Remove #1",
        "change sender to <c-bounce@example.org> RET=HDRS",
        "add recipient <c-added@example.org>",
        "add recipient <c-par@example.org> NOTIFY=NEVER",
        "delete recipient <drop@example.net>",
        "replace body (32 bytes in 1 chunk(s))",
        "quarantine: \"quarantined by the C milter\"",
        "refused: <reject@example.net> (reply 550 5.7.1 C milter says no)",
        "verdict: accept",
        "delivery: from <c-bounce@example.org> to <bob@example.net>, <c-added@example.org>, <c-par@example.org>",
    ] {
        assert!(out.contains(line), "missing {line:?} in:\n{out}");
    }
    assert_eq!(std::fs::read_to_string(&result).unwrap(), expected_result());

    let mut json_args = common.to_vec();
    json_args.push("--json");
    let (code, out, err) = milterkit(&json_args);
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    // libmilter sends them in call order: each kind with the field that tells it apart.
    let mods = &v["modifications"];
    for (i, (kind, field, value)) in [
        ("add_header", "name", "X-C-Added"),
        ("insert_header", "name", "X-C-Top"),
        ("change_header", "name", "Subject"),
        ("change_header", "name", "X-Remove"),
        ("change_from", "sender", "<c-bounce@example.org>"),
        ("add_rcpt", "rcpt", "<c-added@example.org>"),
        ("add_rcpt_par", "rcpt", "<c-par@example.org>"),
        ("delete_rcpt", "rcpt", "<drop@example.net>"),
        (
            "replace_body",
            "chunk",
            "Body replaced by the C milter.\r\n",
        ),
        ("quarantine", "reason", "quarantined by the C milter"),
    ]
    .into_iter()
    .enumerate()
    {
        assert_eq!(mods[i]["kind"], kind, "modification {i}: {}", mods[i]);
        assert_eq!(mods[i][field], value, "modification {i}: {}", mods[i]);
    }
    assert_eq!(mods.as_array().unwrap().len(), 10, "{mods}");
    assert_eq!(mods[3]["value"], "", "an empty value deletes");
    assert_eq!(mods[6]["args"], "NOTIFY=NEVER");
    assert_eq!(v["progress"], 1);
    assert_eq!(v["refused"][0]["rcpt"], "<reject@example.net>");
    assert_eq!(v["refused"][0]["decision"]["code"], 550);
    assert_eq!(v["verdict"]["kind"], "accept");
    assert_eq!(v["agreement"]["version"], 6);
    assert_eq!(
        v["steps"][0]["sent"],
        serde_json::json!({"kind": "skipped"}),
        "the C milter has no connect callback"
    );
    let mail = v["steps"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["stage"] == "MAIL")
        .unwrap();
    assert_eq!(mail["argument"], "<alice@example.org>");
    assert_eq!(
        mail["sent"],
        serde_json::json!({"kind": "awaiting_reply", "stage": "MAIL"})
    );
    assert_eq!(mail["decision"], serde_json::json!({"kind": "continue"}));
    assert_eq!(v["delivery"]["sender"]["address"], "<c-bounce@example.org>");
    assert_eq!(v["delivery"]["sender"]["args"][0], "RET=HDRS");
    assert_eq!(v["delivery"]["recipients"][2]["args"][0], "NOTIFY=NEVER");
    assert_eq!(v["delivery"]["quarantine"], "quarantined by the C milter");
    assert_eq!(v["delivery"]["message"], expected_result());
}

#[test]
fn milterkit_run_exits_by_verdict_against_a_libmilter_milter() {
    let Some((spec, _milter)) = c_milter() else {
        return;
    };
    let msg = scratch_file(
        "c-discard.eml",
        &MESSAGE.replace("Subject: hello", "Subject: please discard"),
    );
    let msg = msg.to_str().unwrap();
    // `milterkit run SPEC MESSAGE --rcpt RCPT FLAGS…`
    let run_to = |rcpt: &str, flags: &[&str]| {
        milterkit(&[&["run", spec.as_str(), msg, "--rcpt", rcpt][..], flags].concat())
    };
    let (code, out, _) = run_to("<bob@example.net>", &["--profile", "sendmail"]);
    assert_eq!(code, 5, "discard: {out}");
    let (code, out, _) = run_to("<reject@example.net>", &[]);
    assert_eq!(code, 3, "every recipient rejected: {out}");
    let (code, out, _) = run_to("<tempfail@example.net>", &[]);
    assert_eq!(code, 4, "tempfailed: {out}");
    let (code, _, err) = milterkit(&["run", "inet:1@127.0.0.1", msg]);
    assert_eq!(code, 1, "cannot connect: {err}");
}

#[tokio::test]
async fn the_mta_side_drives_a_libmilter_milter_over_several_messages() {
    let Some((spec, _milter)) = c_milter() else {
        return;
    };
    for profile in [Profile::postfix(), Profile::sendmail()] {
        let mut conn = Connection::open(&spec, profile).await.unwrap();
        let tx = Transaction::new()
            .to("<bob@example.net>")
            .to("<tempfail@example.net>")
            .message(MESSAGE);
        for _ in 0..3 {
            let out = conn.run(&tx).await.unwrap();
            assert_eq!(out.refused.len(), 1);
            assert_eq!(out.refused[0].1, Decision::Tempfail);
            assert_eq!(out.decision(Stage::Eom), Some(&Decision::Continue));
            assert_eq!(out.modifications.len(), 10);
            assert_eq!(out.verdict, Some(Verdict::Accept));
        }
        conn.quit().await.unwrap();
    }
}

#[tokio::test]
async fn opendkim_signs_a_message_through_the_mta_side() {
    let ok = require("opendkim", on_path("opendkim"))
        && require("opendkim-genkey", on_path("opendkim-genkey"));
    if !ok {
        return;
    }
    let dir =
        Path::new(env!("CARGO_TARGET_TMPDIR")).join(format!("opendkim-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let genkey = Command::new("opendkim-genkey")
        .args([
            "-D",
            dir.to_str().unwrap(),
            "-d",
            "example.org",
            "-s",
            "test",
        ])
        .status()
        .unwrap();
    assert!(genkey.success(), "opendkim-genkey failed");
    let port = free_port();
    let conf = dir.join("opendkim.conf");
    std::fs::write(
        &conf,
        format!(
            "Mode s\nDomain example.org\nSelector test\nKeyFile {}\nSocket inet:{port}@127.0.0.1\nBackground no\nSyslog no\nRequireSafeKeys no\nInternalHosts 127.0.0.1\nPidFile {}\n",
            dir.join("test.private").display(),
            dir.join("opendkim.pid").display()
        ),
    )
    .unwrap();
    let mut child = Command::new("opendkim")
        .args(["-f", "-x"])
        .arg(&conf)
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child);
    let _running = Running(child);

    let mut conn = Connection::open(&format!("inet:{port}@127.0.0.1"), Profile::postfix())
        .await
        .unwrap();
    let mut tx = Transaction::new()
        .from("<alice@example.org>")
        .to("<bob@example.net>")
        .message(MESSAGE);
    tx.client = Client {
        hostname: Some("localhost".into()),
        address: Some("127.0.0.1".parse().unwrap()),
        port: 40000,
    };
    let out = conn.run(&tx).await.unwrap();
    conn.quit().await.unwrap();
    let signature = out.modifications.iter().find_map(|m| match m {
        Modification::InsertHeader { name, value, .. }
        | Modification::AddHeader { name, value }
            if name.eq_ignore_ascii_case(b"DKIM-Signature") =>
        {
            Some(String::from_utf8_lossy(value).into_owned())
        }
        _ => None,
    });
    let signature =
        signature.unwrap_or_else(|| panic!("no DKIM-Signature in {:?}", out.modifications));
    assert!(
        signature.contains("d=example.org") && signature.contains("s=test"),
        "{signature}"
    );
    let delivered = String::from_utf8_lossy(&out.delivery.unwrap().message).into_owned();
    assert!(delivered.starts_with("DKIM-Signature:"), "{delivered}");
}
