//! [`CMilter`]: one of the libmilter milters of `interop/c/` (`refmilter`, `logmilter`, …),
//! built with gcc and run as a child process on a TCP port of 127.0.0.1, killed when dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::util::{free_port, poll, tail, write_file, Context, Error, Result, RunDir};

/// How long [`CMilter::start`] and [`OpenDkim::start`](crate::OpenDkim::start) wait for the milter's socket to answer.
const READY: Duration = Duration::from_secs(15);

/// A C milter of `interop/c/` that takes `SOCKET LOGFILE [ARGS…]` (as `refmilter` and
/// `logmilter` do), built into its own [`RunDir`] and listening on `inet:PORT@127.0.0.1`.
/// It works in the run directory, where its log file and `milter.pid` are (a test process
/// that dies without dropping it leaves it to the next one's clean-up of stale run
/// directories). Killed (and reaped) when dropped; a failing test
/// (panicking thread) gets the tail of its log printed and the directory kept.
///
/// Needs [`Tool::Gcc`](crate::Tool::Gcc) and `libmilter-dev`.
#[derive(Debug)]
pub struct CMilter {
    name: String,
    port: u16,
    child: Child,
    log: PathBuf,
    dir: RunDir,
}

impl CMilter {
    /// Builds `interop/c/NAME.c` and runs it as `NAME inet:PORT@127.0.0.1 DIR/NAME.log ARGS…`;
    /// returns once a TCP connection to the port succeeds (the milter's first connection,
    /// closed at once: libmilter may count it, and call its close callback, before the MTA's).
    pub fn start(name: &str, args: &[&str]) -> Result<CMilter> {
        let dir = RunDir::new(name)?;
        let binary = crate::build_c_milter(name, dir.path())?;
        let port = free_port()?;
        let log = dir.join(format!("{name}.log"));
        let out = std::fs::File::create(dir.join("stderr.log")).context("creating stderr.log")?;
        let err = out.try_clone().context("cloning a file handle")?;
        let child = Command::new(&binary)
            .current_dir(dir.path())
            .arg(format!("inet:{port}@127.0.0.1"))
            .arg(&log)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .spawn()
            .context(format!("starting {}", binary.display()))?;
        // For a later test process to stop it, should this one die before dropping it (the
        // child works in the run directory, which the reaper checks).
        let pid_file = dir.join("milter.pid");
        let written = write_file(&pid_file, format!("{}\n", child.id()));
        let mut milter = CMilter {
            name: name.to_owned(),
            port,
            child,
            log,
            dir,
        };
        written?;
        let output = milter.dir.join("stderr.log");
        wait_listening(&mut milter.child, port, name, &output)?;
        Ok(milter)
    }

    /// Kills it now (SIGKILL), as a crash would, and reaps it.
    pub fn kill(&mut self) {
        stop(&mut self.child);
    }

    /// The TCP port it listens on, on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Its run directory (the binary, its log, its standard output and error).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Its log file (`DIR/NAME.log`).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Its whole log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(&self.log).unwrap_or_default()).into_owned()
    }
}

/// Kills `child` (SIGKILL) and reaps it; nothing if it is gone already.
pub(crate) fn stop(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

/// Waits until a TCP connection to 127.0.0.1:`port` succeeds, for at most 15 s; fails early,
/// with the tail of `output`, if `child` (called `what`) exits first.
pub(crate) fn wait_listening(
    child: &mut Child,
    port: u16,
    what: &str,
    output: &Path,
) -> Result<()> {
    let mut exited = None;
    let ready = poll(READY, || {
        if let Ok(Some(status)) = child.try_wait() {
            exited = Some(status);
            return Some(false);
        }
        std::net::TcpStream::connect(("127.0.0.1", port))
            .is_ok()
            .then_some(true)
    });
    match (ready, exited) {
        (Some(true), _) => Ok(()),
        (_, Some(status)) => Err(Error::new(format!(
            "{what} exited ({status}) before listening; its output:\n{}",
            tail(output, 20)
        ))),
        _ => Err(Error::new(format!(
            "{what} does not listen on 127.0.0.1:{port} after {READY:?}"
        ))),
    }
}

impl crate::OnLoopback for CMilter {
    fn port(&self) -> u16 {
        CMilter::port(self)
    }
}

impl Drop for CMilter {
    fn drop(&mut self) {
        crate::cmilter::stop(&mut self.child);
        if std::thread::panicking() {
            let name = &self.name;
            eprintln!(
                "---- {name} log ({}), last 60 lines ----\n{}\n---- end of {name} log ----",
                self.log.display(),
                tail(&self.log, 60)
            );
        }
    }
}
