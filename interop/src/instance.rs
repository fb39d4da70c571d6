//! [`Instance`]: what a private [`Postfix`](crate::Postfix) and a private
//! [`Sendmail`](crate::Sendmail) have alike: a run directory, an SMTP port, a log file, and a
//! daemon stopped through its pid file.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::util::{free_port, read_pid, stop_pid, tail, Result, RunDir};

/// The run directory, port and daemon of a private MTA (both [`Postfix`](crate::Postfix) and
/// [`Sendmail`](crate::Sendmail) dereference to theirs). Stops the daemon when dropped; a failing
/// test (panicking thread) gets the tail of the log printed and the directory kept.
#[derive(Debug)]
pub struct Instance {
    /// `Postfix`, `Sendmail`: names the MTA in its log's banner.
    name: &'static str,
    /// The process the pid file names (`Postfix master`), for the messages about stopping it.
    daemon: &'static str,
    /// The daemon's pid file, relative to the run directory.
    pid_file: &'static str,
    port: u16,
    pub(crate) dir: RunDir,
    /// Whether the daemon was launched (and not stopped yet).
    pub(crate) started: bool,
}

impl Instance {
    /// A fresh run directory (named after `name` in lower case) and a free port, nothing
    /// started.
    pub(crate) fn new(
        name: &'static str,
        daemon: &'static str,
        pid_file: &'static str,
    ) -> Result<Instance> {
        Ok(Instance {
            name,
            daemon,
            pid_file,
            dir: RunDir::new(&name.to_lowercase())?,
            port: free_port()?,
            started: false,
        })
    }

    /// The SMTP port of the MTA on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The run directory (configuration in `etc/`; the queue in `spool/` for Postfix, in
    /// `mqueue/` for Sendmail).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// The log file (Postfix's `maillog_file`; the one Sendmail's syslog shim writes).
    pub fn log_path(&self) -> PathBuf {
        self.dir.join("maillog")
    }

    /// The whole log so far.
    pub fn log(&self) -> String {
        String::from_utf8_lossy(&std::fs::read(self.log_path()).unwrap_or_default()).into_owned()
    }

    /// Stops the daemon through its pid file (never by process name).
    pub fn stop(&mut self) {
        if !std::mem::take(&mut self.started) {
            return;
        }
        match read_pid(&self.dir.join(self.pid_file)) {
            Some(pid) => {
                if !stop_pid(pid, Duration::from_secs(10)) {
                    eprintln!("{} {pid} did not stop", self.daemon);
                }
            }
            None => eprintln!(
                "no {} pid file in {}",
                self.daemon,
                self.dir.path().display()
            ),
        }
    }
}

impl Drop for Instance {
    fn drop(&mut self) {
        self.stop();
        if std::thread::panicking() {
            let name = self.name;
            eprintln!(
                "---- {name} log ({}), last 60 lines ----\n{}\n---- end of {name} log ----",
                self.log_path().display(),
                tail(&self.log_path(), 60)
            );
        }
    }
}
