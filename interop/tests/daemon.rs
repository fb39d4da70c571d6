//! The deployment path of docs/deployment.md behind a real Postfix: Postfix's smtpd (user
//! `postfix`) talks to `interop-daemon` (milterkit's daemon example, whose `main` is
//! `milterkit::run`), started as a separate process the way a service manager starts it:
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

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use interop::{Postfix, RunDir, Sink, Tool, DELIVERY_TIMEOUT};

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
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
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

/// A daemon process with its standard error collected line by line (and echoed, so that libtest
/// shows it when a test fails). Killed when dropped if it is still there.
struct Daemon {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    fn start(mut cmd: Command) -> Daemon {
        // Nothing of this process's environment that the daemon would take for its settings.
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("MILTERKIT_") {
                cmd.env_remove(name);
            }
        }
        for name in [
            "LISTEN_FDS",
            "LISTEN_PID",
            "LISTEN_FDNAMES",
            "NOTIFY_SOCKET",
        ] {
            cmd.env_remove(name);
        }
        cmd.stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let lines = stderr.clone();
        let pipe = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(pipe).lines() {
                let Ok(line) = line else { break };
                eprintln!("  daemon: {line}");
                lines.lock().unwrap().push(line);
            }
        });
        Daemon { child, stderr }
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }

    fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a line of standard error contains `what`; fails if the process exits first.
    fn wait_for_log(&mut self, what: &str) -> String {
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(what)) {
                return line;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "the daemon exited ({status}) before logging {what:?}:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not log {what:?} within {START_TIMEOUT:?}:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// `/proc/PID/status` of the daemon.
    fn status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap()
    }

    /// Sends SIGTERM (by pid, with kill(1)).
    fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}: {status}", self.pid());
    }

    /// Waits for the exit, at most `limit`; returns the status, how long it took and the lines.
    fn wait(&mut self, limit: Duration) -> (ExitStatus, Duration, Vec<String>) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = start.elapsed();
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return (status, took, self.lines());
            }
            assert!(
                start.elapsed() < limit,
                "the daemon did not exit within {limit:?} of SIGTERM:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
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
    let mut daemon = Daemon::start(cmd);
    let dropped = daemon.wait_for_log("privileges dropped");
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
    notify.set_read_timeout(Some(START_TIMEOUT)).unwrap();
    let port = interop::free_port().unwrap();
    let mut cmd = Command::new("systemd-socket-activate");
    cmd.args(["-l", &format!("127.0.0.1:{port}")])
        .arg("-E")
        .arg(format!("NOTIFY_SOCKET={}", notify_path.display()))
        .args(["-E", "MILTERKIT_LOG=debug"])
        .arg(DAEMON);
    let mut daemon = Daemon::start(cmd);
    daemon.wait_for_log(&format!("Listening on 127.0.0.1:{port}"));
    assert!(
        !daemon.lines().iter().any(|l| l.starts_with("Execing")),
        "nothing connected yet, so nothing was execed: {:?}",
        daemon.lines()
    );

    let sink = Sink::start().unwrap();
    let postfix = Postfix::start(&format!("inet:127.0.0.1:{port}"), sink.port()).unwrap();
    send_and_check(&postfix, &sink, "through a socket activated daemon");
    daemon.wait_for_log("Execing");

    // The daemon replaced systemd-socket-activate in its process (exec, not fork).
    let exe = std::fs::read_link(format!("/proc/{}/exe", daemon.pid())).unwrap();
    assert_eq!(
        exe,
        PathBuf::from(DAEMON).canonicalize().unwrap(),
        "the process is the daemon"
    );
    let ready = expect_notification(&notify, "READY=1");
    assert!(
        ready
            .lines()
            .any(|l| l == format!("STATUS=serving on inet:{port}@[127.0.0.1]")),
        "the passed socket, and only it, is served: {ready}"
    );

    daemon.terminate();
    expect_notification(&notify, "STOPPING=1");
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

/// Reads notifications until one has the line `what`; returns that notification.
fn expect_notification(sock: &UnixDatagram, what: &str) -> String {
    let mut buf = [0u8; 4096];
    loop {
        let n = sock
            .recv(&mut buf)
            .unwrap_or_else(|e| panic!("no notification {what:?}: {e}"));
        let got = String::from_utf8_lossy(&buf[..n]).into_owned();
        if got.lines().any(|l| l == what) {
            return got;
        }
    }
}
