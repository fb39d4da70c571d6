//! The deployment path of docs/deployment.md behind a real Postfix: Postfix's smtpd (user
//! `postfix`) talks to `interop-daemon` (milterkit's daemon example, whose `main` is
//! `milterkit::run!`), started as a separate process the way a service manager starts it:
//!
//! - as root, binding its Unix socket in a directory of root and group postfix (0750), making the
//!   socket root:postfix 0660, then switching to nobody/nogroup before it serves;
//! - under `systemd-socket-activate`, which holds the TCP socket and execs the daemon at the first
//!   connection, passing the socket (`LISTEN_FDS`) and a notify socket.
//!
//! Each sends a message through Postfix, finds the daemon's header in the sink, then stops the
//! daemon with SIGTERM and wants exit status 0. Both need root and Postfix; the second also
//! `systemd-socket-activate` (package systemd). Without them: a loud SKIPPED line, or a failure
//! under `CI=true`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use interop::{Postfix, RunDir, Sink, Tool, DELIVERY_TIMEOUT};
use testkit::{expect_notification, Daemon};

/// The daemon binary: milterkit's daemon example (`milterkit/examples/daemon.rs`).
const DAEMON: &str = env!("CARGO_BIN_EXE_interop-daemon");

/// The header the daemon adds, and its value.
const HEADER: &str = "X-Milterkit";
const VALUE: &str = "checked";

/// How long the daemon may take to start (and log) on a slow, shared machine.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// How long the daemon may take to exit after SIGTERM (its grace period is 30 s).
const STOP_TIMEOUT: Duration = Duration::from_secs(45);

/// The uid of nobody and gid of nogroup on Debian.
const NOBODY: u32 = 65534;

/// Prints past libtest's output capture (a SKIPPED line must be seen even when the test passes).
fn shout(text: &str) {
    let _ = writeln!(std::io::stderr().lock(), "{text}");
}

/// True under `CI=true`, where nothing may be skipped.
fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// Fails under `CI=true`, otherwise prints a loud SKIPPED line; the test returns after it.
fn skip(test: &str, why: &str) {
    assert!(
        !under_ci(),
        "{test} cannot run under CI=true: {why}. scripts/test.sh must run it as root with the packages installed."
    );
    shout(&format!("!!!!!! SKIPPED {test}: {why}"));
}

/// The effective uid of this process (from `/proc/self/status`).
fn euid() -> u32 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status_ids(&status, "Uid:")[1]
}

/// The numbers of a line of `/proc/PID/status` (`Uid:`, `Gid:`, `Groups:`).
fn status_ids(status: &str, field: &str) -> Vec<u32> {
    testkit::status_field(status, field)
        .unwrap_or_else(|| panic!("no {field} in {status}"))
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect()
}

/// The numeric id of `name` in `/etc/passwd` or `/etc/group` (third field).
fn id_of(file: &str, name: &str) -> u32 {
    let text = std::fs::read_to_string(file).unwrap();
    text.lines()
        .find_map(|l| {
            let mut f = l.split(':');
            (f.next()? == name).then(|| f.nth(1)?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no {name} in {file}"))
}

fn message(subject: &str) -> Vec<u8> {
    format!(
        "{}\r\n\
         Hello from the deployment test.\r\n",
        interop::message_head(subject, &format!("daemon-{}", subject.replace(' ', "-")))
    )
    .into_bytes()
}

/// Sends one message through Postfix and wants it delivered to the sink with the daemon's
/// header, once, and otherwise as sent.
fn send_and_check(postfix: &Postfix, sink: &Sink, subject: &str) {
    let sent = message(subject);
    let r = interop::send(
        postfix.port(),
        "alice@example.org",
        &["bob@example.net"],
        &sent,
    )
    .unwrap();
    assert!(r.accepted(), "Postfix did not accept the message:\n{r}");
    let delivered = sink
        .wait_for(1, DELIVERY_TIMEOUT)
        .unwrap_or_else(|e| panic!("{e}\nsink transcript:\n{}", sink.transcript().join("\n")));
    assert_eq!(delivered.len(), 1, "{delivered:?}");
    let m = &delivered[0];
    assert_eq!(m.recipients(), ["bob@example.net"]);
    assert_eq!(
        m.header_values(HEADER),
        [VALUE],
        "the daemon's header, once:\n{}",
        m.text()
    );
    // Postfix appends an added header to the header block; the rest is as sent.
    let end = sent.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 2;
    let want = [
        &sent[..end],
        format!("{HEADER}: {VALUE}\r\n").as_bytes(),
        &sent[end..],
    ]
    .concat();
    assert!(
        m.without_leading_received() == want,
        "delivered:\n{}\nwanted below Postfix's Received:\n{}",
        m.text(),
        String::from_utf8_lossy(&want)
    );
}

/// As root: the daemon binds `unix:DIR/milter.sock` in a directory of root and group postfix
/// (0750), makes the socket root:postfix 0660 and switches to nobody/nogroup; Postfix's smtpd,
/// running as postfix, reaches it through the group, and the message comes back with the
/// daemon's header. SIGTERM stops the daemon with status 0.
#[test]
fn postfix_reaches_a_daemon_that_dropped_privileges() {
    let test = "postfix_reaches_a_daemon_that_dropped_privileges";
    if euid() != 0 {
        skip(
            test,
            "not root (binding as root and switching to nobody needs root)",
        );
        return;
    }
    if !interop::require(&[Tool::Postfix, Tool::Unshare]) {
        return;
    }
    let postfix_gid = id_of("/etc/group", "postfix");
    assert_eq!(id_of("/etc/passwd", "nobody"), NOBODY);
    assert_eq!(id_of("/etc/group", "nogroup"), NOBODY);

    let run = RunDir::new("daemon-unix").unwrap();
    let dir = run.join("milter");
    std::fs::create_dir(&dir).unwrap();
    std::os::unix::fs::chown(&dir, Some(0), Some(postfix_gid)).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let sock = dir.join("milter.sock");
    let spec = format!("unix:{}", sock.display());

    let mut cmd = Command::new(DAEMON);
    cmd.args(["--socket", &spec])
        .args(["--socket-owner", "root:postfix", "--socket-mode", "660"])
        .args(["--user", "nobody", "--group", "nogroup"])
        .args(["--log-format", "plain", "--log", "info"]);
    let mut daemon = Daemon::start_clean(cmd);
    let dropped = daemon.wait_for_log("privileges dropped", START_TIMEOUT);
    assert!(
        dropped.contains("uid=65534") && dropped.contains("gid=65534"),
        "{dropped}"
    );

    // The socket: root:postfix 0660, in the untouched root:postfix 0750 directory.
    let meta = std::fs::symlink_metadata(&sock).unwrap();
    assert!(
        std::os::unix::fs::FileTypeExt::is_socket(&meta.file_type()),
        "{} is a socket",
        sock.display()
    );
    assert_eq!((meta.uid(), meta.gid()), (0, postfix_gid), "socket owner");
    assert_eq!(format!("{:o}", meta.mode() & 0o7777), "660", "socket mode");
    let dmeta = std::fs::metadata(&dir).unwrap();
    assert_eq!(
        (dmeta.uid(), dmeta.gid()),
        (0, postfix_gid),
        "directory owner"
    );
    assert_eq!(
        format!("{:o}", dmeta.mode() & 0o7777),
        "750",
        "directory mode"
    );

    // Who may connect (write permission on the socket and search permission on the directory,
    // as the kernel checks them, through access(2) in `test -w`): group postfix, not nobody, nor
    // user postfix without its group.
    let postfix_uid = id_of("/etc/passwd", "postfix");
    for (uid, gid, may) in [
        (postfix_uid, postfix_gid, true),
        (NOBODY, NOBODY, false),
        (postfix_uid, NOBODY, false),
    ] {
        let out = Command::new("setpriv")
            .args([&format!("--reuid={uid}"), &format!("--regid={gid}")])
            .args(["--clear-groups", "test", "-w"])
            .arg(&sock)
            .output()
            .expect("setpriv (util-linux)");
        assert_eq!(
            out.status.code(),
            Some(if may { 0 } else { 1 }),
            "uid {uid} gid {gid} {} connect: {out:?}",
            if may { "may" } else { "may not" }
        );
    }

    // The process serves as nobody/nogroup, every id and no supplementary group but nogroup.
    let status = daemon.status();
    assert_eq!(status_ids(&status, "Uid:"), [NOBODY; 4], "{status}");
    assert_eq!(status_ids(&status, "Gid:"), [NOBODY; 4], "{status}");
    assert_eq!(status_ids(&status, "Groups:"), [NOBODY], "{status}");

    let sink = Sink::start().unwrap();
    let postfix = Postfix::start(&spec, sink.port()).unwrap();
    send_and_check(&postfix, &sink, "through a daemon that dropped privileges");
    // smtpd (user postfix, group postfix) connected without a complaint.
    let log = postfix.log();
    assert!(
        !log.contains("Milter"),
        "Postfix complains about the milter:\n{log}"
    );

    // Still nobody after serving (nothing regained root).
    let status = daemon.status();
    assert_eq!(status_ids(&status, "Uid:"), [NOBODY; 4], "{status}");

    daemon.terminate();
    let (exit, took, lines) = daemon.wait(STOP_TIMEOUT);
    eprintln!("the daemon stopped {took:?} after SIGTERM: {exit}");
    assert!(exit.success(), "exit status {exit}:\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("SIGTERM")), "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("stopped")), "{lines:?}");
    assert!(
        !lines.iter().any(|l| l.contains("ERROR")),
        "no errors logged: {lines:?}"
    );
}

/// Under `systemd-socket-activate` (systemd's own tool): it listens on 127.0.0.1:PORT and execs
/// the daemon at the first connection, passing the socket (`LISTEN_FDS=1`) and, through `-E`, a
/// notify socket and `MILTERKIT_LOG=debug`; the daemon has no `--socket` at all, so only the
/// passed socket can serve. Postfix reaches it over `inet:127.0.0.1:PORT`, the message comes back
/// with the daemon's header; the daemon said READY=1, and on SIGTERM STOPPING=1, and exits 0.
#[test]
fn postfix_reaches_a_socket_activated_daemon() {
    let test = "postfix_reaches_a_socket_activated_daemon";
    if !interop::require(&[Tool::Postfix, Tool::Unshare]) {
        return;
    }
    let activate = Command::new("systemd-socket-activate")
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
    if !activate.is_ok_and(|s| s.success()) {
        skip(test, "systemd-socket-activate (package systemd) cannot run");
        return;
    }

    let run = RunDir::new("daemon-activated").unwrap();
    let notify_path = run.join("notify");
    let notify = UnixDatagram::bind(&notify_path).unwrap();
    let port = interop::free_port().unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &format!("127.0.0.1:{port}")])
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .args(["-E", "MILTERKIT_LOG=debug"])
        .arg(DAEMON);
    let mut daemon = Daemon::start_clean(cmd);
    daemon.wait_for_log(&format!("Listening on 127.0.0.1:{port}"), START_TIMEOUT);
    assert!(
        !daemon.lines().iter().any(|l| l.starts_with("Execing")),
        "nothing connected yet, so nothing was execed: {:?}",
        daemon.lines()
    );

    let sink = Sink::start().unwrap();
    let postfix = Postfix::start(&format!("inet:127.0.0.1:{port}"), sink.port()).unwrap();
    send_and_check(&postfix, &sink, "through a socket activated daemon");
    daemon.wait_for_log("Execing", START_TIMEOUT);

    // The daemon replaced systemd-socket-activate in its process (exec, not fork).
    let exe = std::fs::read_link(format!("/proc/{}/exe", daemon.pid())).unwrap();
    assert_eq!(
        exe,
        PathBuf::from(DAEMON).canonicalize().unwrap(),
        "the process is the daemon"
    );
    let ready = expect_notification(&notify, "READY=1", START_TIMEOUT);
    assert!(
        ready
            .lines()
            .any(|l| l == format!("STATUS=serving on inet:{port}@[127.0.0.1]")),
        "the passed socket, and only it, is served: {ready}"
    );

    daemon.terminate();
    expect_notification(&notify, "STOPPING=1", START_TIMEOUT);
    let (exit, took, lines) = daemon.wait(STOP_TIMEOUT);
    eprintln!("the daemon stopped {took:?} after SIGTERM: {exit}");
    assert!(exit.success(), "exit status {exit}:\n{}", lines.join("\n"));
    assert!(lines.iter().any(|l| l.contains("SIGTERM")), "{lines:?}");
    // MILTERKIT_LOG=debug came through -E: the decision is logged.
    assert!(
        lines
            .iter()
            .any(|l| l.contains("decided") && l.contains("stage=EOM")),
        "{lines:?}"
    );
    assert!(
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err(),
        "nothing listens on {port} once the daemon is gone"
    );
}
