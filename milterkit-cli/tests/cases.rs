//! `milterkit test` on the case files shipped in milterkit-cli/cases: against the example policy
//! milter served in this process and against the C milter on libmilter (testdata/c), which the
//! test command installs (a missing gcc or libmilter-dev fails under `CI=true`, and is a loud skip
//! elsewhere).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use serde_json::Value;

mod support;

use support::c_milter::c_milter;
use support::{milterkit, milterkit_off_runtime, serve_policy};

fn case(name: &str) -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("cases")
        .join(name)
        .to_str()
        .unwrap()
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_policy_cases_pass_against_the_example_policy_milter() {
    let served = serve_policy().await;
    let policy = case("policy.toml");
    let (code, out, err) =
        milterkit_off_runtime(&["test", "--socket", &served.spec, &policy]).await;
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        format!("{policy} (postfix, {})", served.spec),
        "  PASS  a newsletter is stamped and delivered unchanged otherwise (line 10)".into(),
        "  PASS  a recipient at the retired domain is refused, the others get the message (line 38)"
            .into(),
        "  PASS  a message to retired recipients only is rejected (line 57)".into(),
        "  PASS  the lottery sample goes to quarantine (line 72)".into(),
        "4 message(s): 4 passed, 0 failed".into(),
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
    }

    let (code, out, err) =
        milterkit_off_runtime(&["test", "--socket", &served.spec, "--json", &policy]).await;
    assert_eq!(code, 0, "{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (v["passed"].as_u64(), v["failed"].as_u64()),
        (Some(4), Some(0))
    );
    let messages = &v["files"][0]["messages"];
    assert_eq!(messages.as_array().unwrap().len(), 4);
    let retired = &messages[1];
    assert_eq!(retired["passed"], true);
    assert_eq!(retired["failures"], serde_json::json!([]));
    assert_eq!(
        retired["outcome"]["refused"][0]["rcpt"],
        "<carol@old.example>"
    );
    assert_eq!(
        retired["outcome"]["refused"][0]["decision"]["text"],
        "550 5.1.6 recipient has moved"
    );
    assert_eq!(messages[2]["outcome"]["verdict"]["kind"], "reject");
    served.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_expectation_fails_with_a_readable_diff() {
    let served = serve_policy().await;
    let wrong = case("wrong-expectation.toml");
    let (code, out, err) = milterkit_off_runtime(&["test", "--socket", &served.spec, &wrong]).await;
    assert_eq!(code, 1, "a failed case exits 1: {out}\n{err}");
    let expected = format!(
        "{wrong} (postfix, {spec})
  FAIL  deliberately wrong expectations (line 7)
        modifications (- expected, + actual):
          - add header X-Policy: checked; 1 recipient(s) refused
          - add header X-Scanned: yes
          + add header X-Policy: checked; 0 recipient(s) refused
        header X-Policy: expected \"checked; 1 recipient(s) refused\", got \"checked; 0 recipient(s) refused\"
        body (- expected, + actual):
          - Hi Carol.
          + Hi Bob.
1 message(s): 0 passed, 1 failed
",
        spec = served.spec
    );
    assert_eq!(out, expected);

    let (code, out, _) =
        milterkit_off_runtime(&["test", "--socket", &served.spec, "--json", &wrong]).await;
    assert_eq!(code, 1);
    let v: Value = serde_json::from_str(&out).unwrap();
    let failures = &v["files"][0]["messages"][0]["failures"];
    let checks: Vec<&str> = failures
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["check"].as_str().unwrap())
        .collect();
    assert_eq!(checks, ["modifications", "header X-Policy", "body"]);
    assert_eq!(failures[1]["actual"], "\"checked; 0 recipient(s) refused\"");
    assert_eq!(failures[2]["diff"][1], "+ Hi Bob.");
    served.stop().await.unwrap();
}

#[test]
fn unusable_case_files_exit_2_naming_the_file_and_line() {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"));
    let write = |name: &str, text: &str| {
        let p = dir.join(name);
        std::fs::write(&p, text).unwrap();
        p.to_str().unwrap().to_owned()
    };
    // Not TOML: toml's message with the line and column.
    let bad = write(
        "case-bad.toml",
        "socket = \"inet:1@127.0.0.1\"\n[[message]]\nname = \n",
    );
    let (code, _, err) = milterkit(&["test", &bad]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains(&bad) && err.contains("line 3"), "{err}");
    // TOML, but an unknown key.
    let unknown = write(
        "case-unknown.toml",
        "socket = \"inet:1@127.0.0.1\"\n\n[[message]]\nname = \"x\"\nrcpt = [\"<a@b>\"]\nmessage = \"\"\nverdikt = \"accept\"\n",
    );
    let (code, _, err) = milterkit(&["test", &unknown]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("line 7") && err.contains("verdikt"), "{err}");
    // A modification naming two kinds: the line of its table.
    let two = write(
        "case-two.toml",
        "socket = \"inet:1@127.0.0.1\"\n[[message]]\nname = \"x\"\nrcpt = [\"<a@b>\"]\nmessage = \"\"\n[message.expect]\nmodifications = [\n  { add_header = \"X\", value = \"v\" },\n  { add_header = \"X\", quarantine = \"q\" },\n]\n",
    );
    let (code, _, err) = milterkit(&["test", &two]);
    assert_eq!(code, 2, "{err}");
    assert!(
        err.contains(&format!(
            "{two}, line 9: message \"x\": a modification names exactly one of"
        )),
        "{err}"
    );
    // No socket anywhere; a missing file.
    let nosocket = write(
        "case-nosocket.toml",
        "[[message]]\nname = \"x\"\nrcpt = [\"<a@b>\"]\nmessage = \"\"\n",
    );
    let (code, _, err) = milterkit(&["test", &nosocket]);
    assert_eq!(code, 2);
    assert!(err.contains("no socket"), "{err}");
    let (code, _, err) = milterkit(&["test", "/nonexistent/case.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("/nonexistent/case.toml"), "{err}");
    // An unreachable milter is a failed message, not a file error.
    let (code, out, _) = milterkit(&["test", "--socket", "inet:1@127.0.0.1", &nosocket]);
    assert_eq!(code, 1, "{out}");
    assert!(
        out.contains("error: cannot connect to inet:1@127.0.0.1"),
        "{out}"
    );
}

#[test]
fn the_libmilter_cases_pass_against_the_c_milter() {
    let Some((spec, _milter)) = c_milter() else {
        return;
    };
    let (all, sendmail) = (case("allactions.toml"), case("sendmail.toml"));
    let (code, out, err) = milterkit(&["test", "--socket", &spec, &all, &sendmail]);
    assert_eq!(code, 0, "{out}\n{err}");
    for line in [
        format!("{all} (postfix, {spec})"),
        "  PASS  every modification, applied as Postfix applies them (line 12)".into(),
        "  PASS  a tempfailed recipient is refused, the message still goes through (line 39)"
            .into(),
        "  PASS  a subject saying discard is discarded at end of message (line 50)".into(),
        format!("{sendmail} (sendmail, {spec})"),
        "  PASS  Sendmail delivers the same edits (line 7)".into(),
        "4 message(s): 4 passed, 0 failed".into(),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "no line {line:?} in:\n{out}"
        );
    }
    let (code, out, _) = milterkit(&["test", "--socket", &spec, "--json", &all]);
    assert_eq!(code, 0);
    let v: Value = serde_json::from_str(&out).unwrap();
    let first = &v["files"][0]["messages"][0]["outcome"];
    assert_eq!(first["modifications"].as_array().unwrap().len(), 10);
    assert_eq!(first["delivery"]["sender"]["args"][0], "RET=HDRS");
    assert_eq!(
        v["files"][0]["messages"][2]["outcome"]["verdict"]["kind"],
        "discard"
    );
}

#[test]
fn the_help_shows_the_case_format_and_exit_statuses() {
    let (code, out, _) = milterkit(&["test", "--help"]);
    assert_eq!(code, 0);
    for line in [
        "  macros.MAIL = { auth_type = \"LOGIN\" }",
        "  [message.expect]",
        "    { add_header = \"X-Policy\", value = \"checked\" },   #  each of these, among others)",
        "Exit status: 0 every message passed, 1 a message failed (or its milter could not be reached),",
    ] {
        assert!(out.lines().any(|l| l == line), "no line {line:?} in:\n{out}");
    }
    let (code, _, err) = milterkit(&["test"]);
    assert_eq!(code, 2, "no file is a usage error: {err}");
}
