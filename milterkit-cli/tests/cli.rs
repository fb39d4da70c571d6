//! The `milterkit` command: the demo, help, and bench against a milter served in this process.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use serde_json::Value;

mod support;

use support::{milterkit, milterkit_off_runtime, serve_policy};

#[test]
fn the_demo_shows_decisions_modifications_and_a_diff_for_both_samples() {
    let (code, out, err) = milterkit(&["demo"]);
    assert_eq!(code, 0, "{err}");
    for shown in [
        "=== newsletter.eml ===",
        "=== lottery.eml ===",
        "RCPT     <carol@old.example>",
        "reply 550 5.1.6 recipient has moved",
        "+ X-Policy: checked; 1 recipient(s) refused",
        "held in quarantine: subject mentions lottery",
    ] {
        assert!(out.contains(shown), "no {shown:?} in:\n{out}");
    }
    assert!(!out.contains("\x1b["), "no colour when not a terminal");
}

#[test]
fn a_reader_that_goes_away_ends_the_output_not_the_command() {
    // `milterkit demo | head -1`: the pipe is closed before the demo has written its reports.
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_milterkit"))
        .arg("demo")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let out = child.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.is_empty(), "nothing to say on stderr: {err}");
}

#[test]
fn every_subcommand_has_help_with_examples() {
    for sub in [
        &["--help"][..],
        &["run", "--help"],
        &["bench", "--help"],
        &["demo", "--help"],
    ] {
        let (code, out, _) = milterkit(sub);
        assert_eq!(code, 0);
        assert!(out.contains("Usage:"), "{out}");
    }
    let (_, run, _) = milterkit(&["run", "--help"]);
    assert!(run.contains("Exit status: 0 accepted"), "{run}");
    assert!(run.contains("Examples:"));
    let (code, _, err) = milterkit(&["run"]);
    assert_eq!(code, 2, "usage error: {err}");
}

#[test]
fn help_examples_stay_whole_on_a_narrow_terminal() {
    let run_example = "milterkit run inet:127.0.0.1:8891 message.eml --from '<alice@example.org>' \
                       --rcpt '<bob@example.net>'";
    for (args, example) in [
        (&["--help"][..], run_example),
        (&["run", "--help"], run_example),
        (
            &["run", "-h"],
            "milterkit run unix:/var/run/milter.sock --rcpt '<bob@example.net>' \
             --macro 'M:{auth_authen}=alice' < message.eml",
        ),
        (
            &["bench", "--help"],
            "milterkit bench inet:127.0.0.1:8891 --per-connection 1 --messages 2000   \
             # connection churn",
        ),
    ] {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_milterkit"))
            .args(args)
            .env("COLUMNS", "40")
            .output()
            .unwrap();
        let out = String::from_utf8(out.stdout).unwrap();
        assert!(
            out.lines().any(|l| l == format!("  {example}")),
            "{args:?}: {example:?} is not one line of:\n{out}"
        );
        // The rest is still wrapped to the terminal (clap leaves the usage line whole).
        let whole = ["  milterkit ", "Usage: ", "Socket specifications"];
        assert!(
            out.lines()
                .all(|l| whole.iter().any(|w| l.starts_with(w)) || l.chars().count() <= 40),
            "{out}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bench_reports_throughput_and_latency_of_a_milter() {
    let served = serve_policy().await;
    let spec = &served.spec;
    let (code, out, err) = milterkit_off_runtime(&[
        "bench",
        spec,
        "--connections",
        "4",
        "--messages",
        "300",
        "--json",
    ])
    .await;
    assert_eq!(code, 0, "{out}\n{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["messages"], 300);
    assert_eq!(v["errors"], 0);
    assert_eq!(v["accepted"], 300);
    assert!(v["messages_per_second"].as_f64().unwrap() > 0.0);
    let lat = &v["latency_ms"];
    assert!(lat["p50"].as_f64().unwrap() <= lat["p99"].as_f64().unwrap());
    assert!(lat["p99"].as_f64().unwrap() <= lat["max"].as_f64().unwrap());
    // Connection churn: one message per connection.
    let (code, out, _) = milterkit_off_runtime(&[
        "bench",
        spec,
        "--connections",
        "2",
        "--messages",
        "50",
        "--per-connection",
        "1",
    ])
    .await;
    assert_eq!(code, 0, "{out}");
    assert!(out.starts_with("50 messages in"), "{out}");
    served.stop().await.unwrap();
}
