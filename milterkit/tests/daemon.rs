//! `milterkit::run!` as a real process: started by `systemd-socket-activate` with passed sockets
//! and a notify socket, stopped by SIGTERM; as root with a user switch; configured by flags and
//! environment; logging JSON and journal-style lines; metrics scraped over HTTP.
//!
//! This test binary is its own milter: run with `MILTERKIT_TEST_CHILD=1` it is the daemon
//! (`milterkit::run!`), so the tests start it as a separate process the way systemd would.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};
use std::time::{Duration, Instant};

use milterkit::mta::{Connection, Outcome, Profile, Transaction, Verdict};
use milterkit::{Actions, Body, Decision, Eom, Milter, Result, Stages};
use testkit::{free_port, Daemon};

/// The daemon's milter: adds `X-Milterkit: checked`; takes 1.5 s at end of message when the body
/// says "slow"; fails when it says "fail".
#[derive(Default)]
struct Tagger;

#[derive(Default)]
struct Seen {
    slow: bool,
    fail: bool,
}

impl Milter for Tagger {
    type Message = Seen;
    const STAGES: Stages = Stages::BODY.union(Stages::EOM);
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn body(&mut self, m: &mut Seen, body: Body<'_>) -> Result<Decision> {
        let text = String::from_utf8_lossy(body.chunk());
        m.slow |= text.contains("slow");
        m.fail |= text.contains("fail");
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, m: &mut Seen, eom: &mut Eom<'_>) -> Result<Decision> {
        if m.fail {
            return Err("asked to fail".into());
        }
        if m.slow {
            tokio::time::sleep(Duration::from_millis(1500)).await;
        }
        eom.add_header("X-Milterkit", "checked")?;
        Ok(Decision::Accept)
    }
}

fn main() -> ExitCode {
    if std::env::var_os("MILTERKIT_TEST_CHILD").is_some() {
        return milterkit::run!(Tagger::default);
    }
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let tests: [(&str, fn()); 5] = [
        ("example_units_verify", example_units_verify),
        (
            "socket_activation_notify_sigterm",
            socket_activation_notify_sigterm,
        ),
        ("privilege_drop_as_root", privilege_drop_as_root),
        ("environment_configures", environment_configures),
        ("bad_settings_are_refused", bad_settings_are_refused),
    ];
    if std::env::args().any(|a| a == "--list") {
        for (name, _) in tests {
            println!("{name}: test");
        }
        return ExitCode::SUCCESS;
    }
    let mut failed = 0;
    for (name, test) in tests {
        if !filter.is_empty() && !filter.iter().any(|f| name.contains(f.as_str())) {
            continue;
        }
        println!("test {name} ...");
        match std::panic::catch_unwind(test) {
            Ok(()) => println!("test {name} ... ok"),
            Err(_) => {
                println!("test {name} ... FAILED");
                failed += 1;
            }
        }
    }
    if failed > 0 {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

/// How long the daemon may take to start (and log).
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A scratch directory for one test.
fn scratch(name: &str) -> PathBuf {
    testkit::scratch_dir("milterkit-daemon", name)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

fn message(body: &str) -> Transaction {
    Transaction::new()
        .to("<bob@example.net>")
        .message(format!("Subject: test\r\n\r\n{body}\r\n"))
}

async fn send(spec: &str, tx: &Transaction) -> Outcome {
    let mut conn = Connection::open(spec, Profile::postfix()).await.unwrap();
    let out = conn.run(tx).await.unwrap();
    conn.quit().await.unwrap();
    out
}

fn assert_tagged(out: &Outcome) {
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    let delivered = out.delivery.as_ref().expect("a delivery");
    let text = String::from_utf8_lossy(&delivered.message);
    assert!(text.contains("X-Milterkit: checked"), "{text}");
}

/// Reads notifications until one has the line `what` (each may take 30 s).
fn expect_notification(sock: &UnixDatagram, what: &str) -> String {
    testkit::expect_notification(sock, what, Duration::from_secs(30))
}

fn scrape(addr: &str) -> String {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut r = String::new();
    s.read_to_string(&mut r).unwrap();
    assert!(r.starts_with("HTTP/1.1 200 OK"), "{r}");
    r
}

fn wait_for_path(path: &Path) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !path.exists() {
        assert!(
            Instant::now() < deadline,
            "{} never appeared",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// systemd's own tool passes a Unix and a TCP listening socket (`LISTEN_FDS=2`, `LISTEN_PID`);
/// the daemon serves both, notifies READY=1 and, on SIGTERM, STOPPING=1; a message in flight at
/// SIGTERM still completes; the process exits 0; logs are JSON lines with the connection span.
fn socket_activation_notify_sigterm() {
    let dir = scratch("activation");
    let sock = dir.join("milter.sock");
    let port = free_port();
    let metrics = format!("127.0.0.1:{}", free_port());
    let notify = UnixDatagram::bind(dir.join("notify")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.arg("-l")
        .arg(&sock)
        .arg("-l")
        .arg(format!("127.0.0.1:{port}"))
        .arg("-E")
        .arg("MILTERKIT_TEST_CHILD=1")
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", dir.join("notify").display()))
        .arg("-E")
        .arg("MILTERKIT_LOG_FORMAT=json")
        .arg("-E")
        .arg("MILTERKIT_LOG=debug")
        .arg(&exe)
        .arg("--metrics")
        .arg(&metrics);
    let mut daemon = Daemon::start(cmd);
    wait_for_path(&sock);
    let unix = format!("unix:{}", sock.display());
    let tcp = format!("inet:{port}@127.0.0.1");
    let rt = runtime();

    // The first connection makes systemd-socket-activate exec the daemon with both sockets.
    assert_tagged(&rt.block_on(send(&unix, &message("hello"))));
    let ready = expect_notification(&notify, "READY=1");
    assert!(
        ready.contains(&format!("STATUS=serving on unix:{}", sock.display())),
        "{ready}"
    );
    assert!(ready.contains(&format!(":{port}")), "both sockets: {ready}");
    assert_tagged(&rt.block_on(send(&tcp, &message("hello"))));
    let scraped = scrape(&metrics);
    assert!(scraped.contains("\nmilter_messages_total 2\n"), "{scraped}");
    assert!(
        scraped.contains("\nmilter_connections_total 2\n"),
        "{scraped}"
    );

    // SIGTERM with a slow message in flight: it completes, then the process exits 0.
    let slow = rt.spawn({
        let unix = unix.clone();
        async move { send(&unix, &message("slow")).await }
    });
    std::thread::sleep(Duration::from_millis(400));
    daemon.terminate();
    expect_notification(&notify, "STOPPING=1");
    assert_tagged(&rt.block_on(slow).unwrap());
    let (status, _, lines) = daemon.wait(Duration::from_secs(45));
    assert!(status.success(), "exit status {status}");
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "no longer listening"
    );
    assert!(
        sock.exists(),
        "a passed socket's file is systemd's to remove"
    );

    // Every line is JSON; the decisions carry the connection span with its peer.
    let mut decided = 0;
    let mut eom_decided = 0;
    let execed = lines
        .iter()
        .position(|l| l.starts_with("Execing"))
        .expect("systemd-socket-activate says when it execs");
    for line in &lines[execed + 1..] {
        let v: serde_json::Value =
            serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        assert!(
            v["level"].is_string() && v["timestamp"].is_string(),
            "{line}"
        );
        if v["fields"]["message"] == "decided" {
            let spans = v["spans"].as_array().unwrap();
            assert_eq!(spans[0]["name"], "milter_conn", "{line}");
            assert!(spans[0]["peer"].is_string(), "{line}");
            if v["fields"]["stage"] == "EOM" {
                assert_eq!(spans[1]["name"], "message", "{line}");
                assert!(
                    spans[1]["queue_id"].is_string(),
                    "queue id recorded: {line}"
                );
                eom_decided += 1;
            }
            decided += 1;
        }
    }
    assert!(decided >= 3, "decisions logged at debug: {decided}");
    assert_eq!(eom_decided, 3, "three messages decided at EOM");
    assert!(lines.iter().any(|l| l.contains("SIGTERM")));
}

/// As root: binds a Unix socket in a directory only root may write, sets its owner and mode, then
/// switches to nobody/nogroup before serving.
fn privilege_drop_as_root() {
    if !nix::unistd::geteuid().is_root() {
        assert!(
            std::env::var_os("CI").is_none(),
            "the privilege drop test needs root, and CI runs as root"
        );
        eprintln!("\n!!! SKIPPED privilege_drop_as_root: not root (CI runs it) !!!\n");
        return;
    }
    let dir = scratch("privileges");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let private = dir.join("private");
    std::fs::create_dir(&private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o700)).unwrap();
    let sock = private.join("milter.sock");
    let metrics = format!("127.0.0.1:{}", free_port());
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    cmd.env("MILTERKIT_TEST_CHILD", "1")
        .env("JOURNAL_STREAM", "8:12345")
        .env_remove("NOTIFY_SOCKET")
        .args(["--socket", &format!("unix:{}", sock.display())])
        .args(["--socket-owner", "nobody:nogroup", "--socket-mode", "660"])
        .args(["--user", "nobody", "--group", "nogroup"])
        .args(["--metrics", &metrics, "--log-format", "plain"]);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("privileges dropped", START_TIMEOUT);

    let status = daemon.status();
    let field = |name: &str| {
        testkit::status_field(&status, name)
            .unwrap()
            .split_whitespace()
            .map(str::to_owned)
            .collect::<Vec<_>>()
    };
    let nobody = "65534".to_owned();
    assert_eq!(field("Uid:"), vec![nobody.clone(); 4], "{status}");
    assert_eq!(field("Gid:"), vec![nobody.clone(); 4], "{status}");
    assert_eq!(field("Groups:"), vec![nobody], "{status}");

    let meta = std::fs::metadata(&sock).unwrap();
    assert_eq!((meta.uid(), meta.gid()), (65534, 65534));
    assert_eq!(meta.mode() & 0o7777, 0o660);

    let rt = runtime();
    assert_tagged(&rt.block_on(send(&format!("unix:{}", sock.display()), &message("hi"))));
    let scraped = scrape(&metrics);
    assert!(
        scraped.contains("milter_decisions_total{stage=\"EOM\",decision=\"accept\"} 1"),
        "{scraped}"
    );

    daemon.terminate();
    let (status, _, lines) = daemon.wait(Duration::from_secs(45));
    assert!(status.success(), "exit status {status}");
    // Journal style: no timestamps (journald adds them), the level first.
    for line in &lines {
        let first = line.split_whitespace().next().unwrap_or("");
        assert!(
            ["ERROR", "WARN", "INFO", "DEBUG", "TRACE"].contains(&first),
            "{line}"
        );
    }
    assert!(
        lines.iter().any(|l| l.contains("user=\"nobody\"")),
        "{lines:?}"
    );
}

/// Settings from the environment alone: the socket, and a fail-safe of reject that a failing
/// handler then sends.
///
/// Also the watchdog: with `WATCHDOG_USEC` and `WATCHDOG_PID` set as systemd sets them (the shell
/// puts its own pid, which `exec` hands to the daemon), `WATCHDOG=1` arrives every half period.
fn environment_configures() {
    let dir = scratch("environment");
    let notify = UnixDatagram::bind(dir.join("notify")).unwrap();
    let port = free_port();
    let spec = format!("inet:{port}@127.0.0.1");
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg(r#"WATCHDOG_PID=$$ exec "$0" "$@""#)
        .arg(std::env::current_exe().unwrap())
        .env("MILTERKIT_TEST_CHILD", "1")
        .env("MILTERKIT_SOCKET", &spec)
        .env("MILTERKIT_FAIL_SAFE", "reject")
        .env("MILTERKIT_GRACE_PERIOD", "2s")
        .env("MILTERKIT_THREADS", "1")
        .env("NOTIFY_SOCKET", dir.join("notify"))
        .env("WATCHDOG_USEC", "200000");
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log("serving", START_TIMEOUT);
    expect_notification(&notify, "READY=1");
    let status = daemon.status();
    assert!(
        status.lines().any(|l| l == "Threads:\t1"),
        "MILTERKIT_THREADS=1: one thread: {status}"
    );
    let started = Instant::now();
    for _ in 0..3 {
        expect_notification(&notify, "WATCHDOG=1");
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "three watchdog pings at 100 ms intervals took {:?}",
        started.elapsed()
    );
    let rt = runtime();
    assert_tagged(&rt.block_on(send(&spec, &message("hello"))));
    let out = rt.block_on(async {
        let mut conn = Connection::open(&spec, Profile::postfix()).await.unwrap();
        conn.run(&message("fail")).await.unwrap()
    });
    assert!(
        matches!(out.verdict, Some(Verdict::Reject(_))),
        "fail-safe reject: {out:?}"
    );
    daemon.terminate();
    let (status, _, _) = daemon.wait(Duration::from_secs(30));
    assert!(status.success(), "exit status {status}");
}

/// Settings that cannot work stop the daemon at once with a clear message.
fn bad_settings_are_refused() {
    let exe = std::env::current_exe().unwrap();
    let cases: [(&[&str], i32, &str); 8] = [
        (
            &["--socket", "inet:1@127.0.0.1", "--log", "milterkit=loud"],
            2,
            "bad log filter",
        ),
        (&[], 1, "no socket to serve on"),
        (
            &["--socket", "inet:1@127.0.0.1", "--socket-mode", "999"],
            2,
            "octal mode",
        ),
        (
            &["--socket", "inet:1@127.0.0.1", "--fail-safe", "maybe"],
            2,
            "invalid value",
        ),
        // A spec that does not parse is a usage error; one that parses but cannot be bound
        // (a port in use, a directory that is not there) fails at start.
        (&["--socket", "bogus:1"], 2, "unknown protocol"),
        (
            &["--socket", "inet:99999@127.0.0.1"],
            2,
            "invalid socket specification",
        ),
        (
            &["--socket", "unix:/nonexistent-dir/x.sock"],
            1,
            "cannot bind",
        ),
        (
            &[
                "--socket",
                "inet:0@127.0.0.1",
                "--user",
                "no-such-user-here",
            ],
            1,
            "unknown user",
        ),
    ];
    for (args, code, message) in cases {
        let out = Command::new(&exe)
            .env("MILTERKIT_TEST_CHILD", "1")
            .env_remove("MILTERKIT_SOCKET")
            .env_remove("LISTEN_FDS")
            .args(args)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(code), "{args:?}: {stderr}");
        assert!(stderr.contains(message), "{args:?}: {stderr}");
    }
}

/// The example units of deploy/systemd pass `systemd-analyze verify` (with ExecStart pointed at
/// an executable that exists here).
fn example_units_verify() {
    let dir = scratch("units");
    let units = Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/systemd");
    let exe = std::env::current_exe().unwrap();
    for name in ["milterkit-example.socket", "milterkit-example.service"] {
        let text = std::fs::read_to_string(units.join(name)).unwrap();
        assert!(!text.is_empty());
        let text = text.replace(
            "/usr/local/bin/milterkit-example",
            &exe.display().to_string(),
        );
        std::fs::write(dir.join(name), text).unwrap();
    }
    let service = std::fs::read_to_string(units.join("milterkit-example.service")).unwrap();
    assert!(
        service.contains("Type=notify"),
        "the milter notifies readiness"
    );
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.join("milterkit-example.socket"))
        .arg(dir.join("milterkit-example.service"))
        .output()
        .expect("systemd-analyze (Debian package systemd)");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{said}");
    assert!(said.trim().is_empty(), "systemd-analyze complains: {said}");
}
