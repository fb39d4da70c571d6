//! `milterkit chain`: the configuration check, serving two example milters through one socket,
//! the metrics, and SIGHUP reloads (open connections keep their settings; a broken file changes
//! nothing).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use milterkit::mta::{Connection, Profile, Transaction, Verdict};
use testkit::{free_port, Daemon};

mod support;

use support::{milterkit, serve_policy};

fn config(name: &str, text: &str) -> PathBuf {
    let path = Path::new(env!("CARGO_TARGET_TMPDIR")).join(name);
    std::fs::write(&path, text).unwrap();
    path
}

fn child(name: &str, spec: &str) -> String {
    format!("[[milter]]\nname = \"{name}\"\nsocket = \"{spec}\"\n")
}

#[test]
fn check_describes_a_good_file_and_names_the_line_of_a_bad_one() {
    let good = config(
        "chain-good.toml",
        &(child("dkim", "inet:8891@127.0.0.1")
            + "fail_safe = \"skip\"\n"
            + &child("spam", "unix:/run/spam.sock")
            + "mode = \"evaluate\"\ncommand_timeout = \"5s\"\n"
            + "when = { rcpt_domain = [\"example.org\"], not_client = [\"10.0.0.0/8\", \"::1\"], \
               authenticated = false }\n"),
    );
    let (code, out, err) = milterkit(&["chain", "--check", "--config", good.to_str().unwrap()]);
    assert_eq!(code, 0, "{out}{err}");
    // In the file's own words: its keys and values.
    assert_eq!(
        out,
        "2 child milters behind Postfix, messages up to 67108864 bytes:\n  \
         1. dkim at inet:8891@127.0.0.1: mode enforce, fail_safe skip, connect_timeout 5s, \
         command_timeout 5s, eom_timeout 60s\n  \
         2. spam at unix:/run/spam.sock: mode evaluate, fail_safe tempfail, connect_timeout 5s, \
         command_timeout 5s, eom_timeout 60s\n     \
         when not_client 10.0.0.0/8, ::1/128; authenticated false; rcpt_domain example.org\n"
    );

    let bad = config(
        "chain-bad.toml",
        &(child("a", "inet:1@127.0.0.1") + "mode = \"enforced\"\n"),
    );
    let (code, out, err) = milterkit(&["chain", "--check", "--config", bad.to_str().unwrap()]);
    assert_eq!(code, 2, "{out}{err}");
    assert!(
        err.contains("chain-bad.toml") && err.contains("line 4") && err.contains("enforced"),
        "{err}"
    );
    let (code, _, err) = milterkit(&["chain", "--check", "--config", "/nonexistent/chain.toml"]);
    assert_eq!(code, 2);
    assert!(err.contains("cannot read /nonexistent/chain.toml"), "{err}");
}

fn tx() -> Transaction {
    Transaction::new()
        .from("<alice@example.org>")
        .to("<bob@example.net>")
        .message("Subject: hi\r\n\r\nhello\r\n")
}

/// The X-Policy headers of the message `conn` delivers.
async fn policy_headers(conn: &mut Connection) -> usize {
    let out = conn.run(&tx()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    let msg = out.delivery.unwrap().message;
    String::from_utf8_lossy(&msg).matches("X-Policy:").count()
}

fn hangup(daemon: &Daemon) {
    let status = Command::new("kill")
        .args(["-HUP", &daemon.pid().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_milters_behind_one_socket_with_metrics_and_reloads() {
    let a = serve_policy().await;
    let b = serve_policy().await;
    let path = config(
        "chain-serve.toml",
        &(child("a", &a.spec) + &child("b", &b.spec)),
    );
    let port = free_port();
    let metrics_port = free_port();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_milterkit"));
    cmd.args(["chain", "--config", path.to_str().unwrap()])
        .args(["--socket", &format!("inet:{port}@127.0.0.1")])
        .args(["--metrics", &format!("127.0.0.1:{metrics_port}")]);
    let mut daemon = Daemon::start_clean(cmd);
    daemon.wait_for_log("serving", Duration::from_secs(20));
    let spec = format!("inet:{port}@127.0.0.1");

    let mut before = Connection::open(&spec, Profile::postfix()).await.unwrap();
    assert_eq!(
        policy_headers(&mut before).await,
        2,
        "both children added theirs"
    );

    // One child left: new connections see it, the open one keeps both.
    std::fs::write(&path, child("a", &a.spec)).unwrap();
    hangup(&daemon);
    daemon.wait_for_log("configuration reloaded", Duration::from_secs(10));
    let mut after = Connection::open(&spec, Profile::postfix()).await.unwrap();
    assert_eq!(policy_headers(&mut after).await, 1);
    assert_eq!(
        policy_headers(&mut before).await,
        2,
        "an open connection keeps its settings"
    );

    // A broken file: logged, and the last good settings stay.
    std::fs::write(&path, "[[milter]]\nname = \"a\"\n").unwrap();
    hangup(&daemon);
    daemon.wait_for_log("configuration not reloaded", Duration::from_secs(10));
    let mut third = Connection::open(&spec, Profile::postfix()).await.unwrap();
    assert_eq!(policy_headers(&mut third).await, 1);

    let text = tokio::task::spawn_blocking(move || scrape(metrics_port))
        .await
        .unwrap();
    for line in [
        "milter_chain_reloads_total{result=\"ok\"} 1",
        "milter_chain_reloads_total{result=\"failed\"} 1",
        // b: the two messages of the connection opened before the reload; each time it was
        // sent the Subject and the X-Policy header a had added.
        "milter_chain_child_decisions_total{child=\"b\",stage=\"EOM\",decision=\"continue\",mode=\"enforce\"} 2",
        "milter_chain_child_decisions_total{child=\"b\",stage=\"HEADER\",decision=\"continue\",mode=\"enforce\"} 4",
        "milter_chain_child_decisions_total{child=\"a\",stage=\"EOM\",decision=\"continue\",mode=\"enforce\"} 4",
        "milter_chain_child_modifications_total{child=\"a\",kind=\"add_header\",mode=\"enforce\"} 4",
        "milter_messages_total 4",
    ] {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
    for conn in [before, after, third] {
        conn.quit().await.unwrap();
    }
    daemon.terminate();
    let (status, _, _) = daemon.wait(Duration::from_secs(30));
    assert!(status.success(), "{status}");
}

/// The metrics endpoint's page.
fn scrape(port: u16) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text
}
