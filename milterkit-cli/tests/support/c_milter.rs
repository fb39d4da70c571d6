//! The C milter of testdata/c/allactions.c on Debian's libmilter, and what starting it needs.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use testkit::free_port;

/// True if `what` is there; otherwise fails under CI and says loudly that the test is skipped.
pub(crate) fn require(what: &str, present: bool) -> bool {
    if present {
        return true;
    }
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("{what} is missing: the test command must install it (scripts/test.sh)");
    }
    eprintln!("\n!!!!!! SKIPPED: {what} is missing; run scripts/test.sh to install it !!!!!!\n");
    false
}

/// True if the program `bin` is on the `PATH` or in /usr/sbin.
pub(crate) fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
        || Path::new("/usr/sbin").join(bin).is_file()
}

/// The repository's root.
fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// A child process killed when the test ends, however it ends.
pub(crate) struct Running(pub(crate) Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Waits until `child` listens on `port` on 127.0.0.1 (at most 20 s); panics if it exits first.
pub(crate) fn wait_for_port(port: u16, child: &mut Child) {
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!("the milter exited early: {status}");
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the milter did not listen on {port}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Builds (once per test binary) and starts the C milter of testdata/c/allactions.c; returns its
/// socket spec. None, after [`require`], when gcc or libmilter-dev is missing.
pub(crate) fn c_milter() -> Option<(String, Running)> {
    let ok = require("gcc", on_path("gcc"))
        && require(
            "libmilter-dev",
            Path::new("/usr/include/libmilter/mfapi.h").is_file(),
        );
    if !ok {
        return None;
    }
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    let bin = BUILT.get_or_init(|| {
        let bin = Path::new(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("allactions-{}", std::process::id()));
        let status = Command::new("gcc")
            .args(["-Wall", "-O2", "-o"])
            .arg(&bin)
            .arg(repo().join("testdata/c/allactions.c"))
            .args(["-lmilter", "-lpthread"])
            .status()
            .unwrap();
        assert!(status.success(), "the C milter does not build");
        bin
    });
    let port = free_port();
    let spec = format!("inet:{port}@127.0.0.1");
    let mut child = Command::new(bin)
        .arg(&spec)
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    wait_for_port(port, &mut child);
    Some((spec, Running(child)))
}
