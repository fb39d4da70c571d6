//! Helpers shared by the tests of milterkit, milterkit-cli and interop (a dev-dependency of each,
//! never published): a daemon started as a separate process with its standard error collected
//! ([`Daemon`]), a free TCP port ([`free_port`]), a fresh scratch folder ([`scratch_dir`]), and
//! this process's memory and limits as Linux reports them in `/proc` ([`rss_kib`],
//! [`status_kib`], [`status_field`], [`soft_limit`], [`hard_limit`]).
//!
//! Everything here panics on what a test cannot go on without: these are test helpers.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::os::unix::net::UnixDatagram;
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1 (one the system just gave out and took back).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// An empty folder `PREFIX-PID-NAME` in the system's temporary folder (whatever stood there
/// before is removed), for one test of this process.
pub fn scratch_dir(prefix: &str, name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("{prefix}-{}-{name}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The rest of the line of the field `name` (with its colon: `"Uid:"`, `"VmRSS:"`) in the text
/// of a `/proc/PID/status`, trimmed; `None` if there is no such line.
pub fn status_field<'a>(status: &'a str, name: &str) -> Option<&'a str> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(name))
        .map(str::trim)
}

/// A memory field of this process's `/proc/self/status` (`"VmRSS:"`, `"VmHWM:"`), in KiB;
/// `None` if it is not there.
pub fn status_kib(name: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    status_field(&status, name)?
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()
}

/// This process's resident memory now, in KiB (`VmRSS`), or 0 if it cannot be read.
pub fn rss_kib() -> u64 {
    status_kib("VmRSS:").unwrap_or(0)
}

/// The soft limit `name` of this process (a row of `/proc/self/limits`: `"Max open files"`);
/// `None` if there is no such row or it is not a number (`unlimited`).
pub fn soft_limit(name: &str) -> Option<u64> {
    limit(name, 0)
}

/// The hard limit `name` of this process (a row of `/proc/self/limits`: `"Max open files"`);
/// `None` if there is no such row or it is not a number (`unlimited`).
pub fn hard_limit(name: &str) -> Option<u64> {
    limit(name, 1)
}

/// The value in column `column` (0: soft, 1: hard) of the row `name` of `/proc/self/limits`.
fn limit(name: &str, column: usize) -> Option<u64> {
    std::fs::read_to_string("/proc/self/limits")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(name))?
        .split_whitespace()
        .nth(column)?
        .parse()
        .ok()
}

/// Reads service manager notifications (`sd_notify` datagrams, as a daemon sends them to
/// `NOTIFY_SOCKET`) from `sock` until one has the line `what`, waiting at most `limit` for each;
/// returns that notification.
pub fn expect_notification(sock: &UnixDatagram, what: &str, limit: Duration) -> String {
    sock.set_read_timeout(Some(limit)).unwrap();
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

/// The variables of systemd's socket activation and notification, which a daemon takes for its
/// settings as it takes every `MILTERKIT_*` one.
const ACTIVATION: [&str; 4] = [
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    "NOTIFY_SOCKET",
];

/// A daemon started as a separate process, with its standard error collected line by line (and
/// echoed, so that libtest shows it when a test fails). Killed when dropped if it is still there.
pub struct Daemon {
    child: Child,
    stderr: Arc<Mutex<Vec<String>>>,
}

impl Daemon {
    /// Starts `cmd` with standard input and output on `/dev/null` and standard error collected;
    /// its environment as `cmd` has it (this process's, with `cmd`'s changes).
    pub fn start(mut cmd: Command) -> Daemon {
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

    /// As [`Daemon::start`], without anything of this process's environment that the daemon
    /// would take for its settings: every `MILTERKIT_*` variable, `LISTEN_FDS`, `LISTEN_PID`,
    /// `LISTEN_FDNAMES` and `NOTIFY_SOCKET` (also those set on `cmd`).
    pub fn start_clean(mut cmd: Command) -> Daemon {
        for (name, _) in std::env::vars_os() {
            if name.to_string_lossy().starts_with("MILTERKIT_") {
                cmd.env_remove(name);
            }
        }
        for name in ACTIVATION {
            cmd.env_remove(name);
        }
        Daemon::start(cmd)
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The lines of standard error so far.
    pub fn lines(&self) -> Vec<String> {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits until a line of standard error contains `what`, at most `limit`; returns the line.
    /// Fails if the process exits first.
    pub fn wait_for_log(&mut self, what: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| l.contains(what)) {
                return line;
            }
            if let Some(status) = self.child.try_wait().unwrap() {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                panic!(
                    "the daemon exited ({status}) before logging {what:?}:\n{}",
                    self.lines().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "the daemon did not log {what:?} within {limit:?}:\n{}",
                self.lines().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// `/proc/PID/status` of the process.
    pub fn status(&self) -> String {
        std::fs::read_to_string(format!("/proc/{}/status", self.pid())).unwrap()
    }

    /// Sends SIGTERM (by pid, with kill(1)).
    pub fn terminate(&self) {
        let status = Command::new("kill")
            .args(["-TERM", &self.pid().to_string()])
            .status()
            .unwrap();
        assert!(status.success(), "kill -TERM {}: {status}", self.pid());
    }

    /// Waits for the exit, at most `limit` (the process is killed and the test fails if it
    /// overstays); returns the exit status, how long it took and every line of standard error.
    pub fn wait(&mut self, limit: Duration) -> (ExitStatus, Duration, Vec<String>) {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                let took = start.elapsed();
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(200));
                return (status, took, self.lines());
            }
            if start.elapsed() >= limit {
                let _ = self.child.kill();
                panic!(
                    "the daemon did not exit within {limit:?}:\n{}",
                    self.lines().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(20));
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

/// A child process killed (and reaped) when dropped, however the test ends.
#[derive(Debug)]
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits (up to 10 s) until something listens on `port` of 127.0.0.1; `what` names it in the
/// failure.
pub fn wait_for_port(port: u16, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            Instant::now() < deadline,
            "{what} did not listen on port {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A private redis-server (Debian's) on a free port of 127.0.0.1, without persistence; killed
/// when dropped.
pub struct Redis {
    _child: KillOnDrop,
    port: u16,
}

impl Redis {
    /// Starts one and waits until it listens; `None` (after a loud SKIPPED line) when
    /// redis-server is not installed, which fails the test under `CI`.
    pub fn start() -> Option<Redis> {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server"]
            .into_iter()
            .find(|p| std::path::Path::new(p).exists());
        let Some(binary) = binary else {
            assert!(
                std::env::var_os("CI").is_none(),
                "redis-server is missing (scripts/test.sh installs it)"
            );
            eprintln!("SKIPPED: redis-server is not installed (scripts/test.sh installs it)");
            return None;
        };
        let port = free_port();
        let child = Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no", "--protected-mode", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start redis-server");
        let child = KillOnDrop(child);
        wait_for_port(port, "redis-server");
        Some(Redis {
            _child: child,
            port,
        })
    }

    /// Its URL, `redis://127.0.0.1:PORT/`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }
}
