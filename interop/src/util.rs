//! Small pieces shared by the MTAs, the sink and the milter: errors, run directories, ports,
//! processes by pid, log tails.

use std::collections::HashSet;
use std::fmt;
use std::io::{self, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Mutex, Once};
use std::time::{Duration, Instant};

/// What went wrong while setting up or driving the test infrastructure.
#[derive(Debug)]
pub struct Error(String);

impl Error {
    /// An error with this message.
    pub fn new(message: impl Into<String>) -> Error {
        Error(message.into())
    }

    /// Adds what was being done in front of the message.
    pub fn context(self, what: impl fmt::Display) -> Error {
        Error(format!("{what}: {}", self.0))
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Error {}

impl From<io::Error> for Error {
    fn from(e: io::Error) -> Error {
        Error(e.to_string())
    }
}

/// `Result` with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Adds context to an `io::Result`.
pub(crate) trait Context<T> {
    fn context(self, what: impl fmt::Display) -> Result<T>;
}

impl<T, E: fmt::Display> Context<T> for std::result::Result<T, E> {
    fn context(self, what: impl fmt::Display) -> Result<T> {
        self.map_err(|e| Error(format!("{what}: {e}")))
    }
}

/// Set to `1` to keep every run directory (they are kept anyway when a test fails).
pub const KEEP_ENV: &str = "MILTERKIT_INTEROP_KEEP";

/// Set to a folder to put the run directories there instead of [`base_dir`]'s default.
pub const DIR_ENV: &str = "MILTERKIT_INTEROP_DIR";

/// Where run directories go: [`DIR_ENV`] if set; else `/run/milterkit-interop` when `/run` is
/// writable (root); else `$TMPDIR/milterkit-interop`. Sendmail refuses a Unix milter socket
/// below a world-writable directory such as `/tmp` ("unsafe: World writable directory"), even
/// a sticky one, so the default avoids `/tmp` when it can.
pub fn base_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(DIR_ENV) {
        return PathBuf::from(dir);
    }
    let run = Path::new("/run");
    let writable = run.is_dir()
        && std::fs::metadata(run).is_ok_and(|m| !m.permissions().readonly())
        && std::fs::create_dir_all(run.join("milterkit-interop")).is_ok();
    if writable {
        run.join("milterkit-interop")
    } else {
        std::env::temp_dir().join("milterkit-interop")
    }
}

/// A private directory for one MTA or milter: `BASE/NAME-PID-N` below [`base_dir`], mode 0755
/// (Postfix's unprivileged processes must traverse it). Removed when dropped, unless the thread
/// is panicking (a failing test) or [`KEEP_ENV`] is set: then its path is printed.
#[derive(Debug)]
pub struct RunDir {
    path: PathBuf,
}

impl RunDir {
    /// Creates a new, empty directory whose name starts with `name`.
    pub fn new(name: &str) -> Result<RunDir> {
        static NEXT: AtomicU32 = AtomicU32::new(0);
        static REAPED: Once = Once::new();
        let base = base_dir();
        std::fs::create_dir_all(&base).context(format!("creating {}", base.display()))?;
        set_mode(&base, 0o755)?;
        REAPED.call_once(|| reap_stale(&base));
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("{name}-{}-{n}", std::process::id()));
        if path.exists() {
            // Left over from an earlier process with the same pid.
            std::fs::remove_dir_all(&path).context(format!("removing {}", path.display()))?;
        }
        std::fs::create_dir(&path).context(format!("creating {}", path.display()))?;
        set_mode(&path, 0o755)?;
        Ok(RunDir { path })
    }

    /// The directory.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside the directory.
    pub fn join(&self, rel: impl AsRef<Path>) -> PathBuf {
        self.path.join(rel)
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if std::thread::panicking() || std::env::var_os(KEEP_ENV).is_some_and(|v| v != "0") {
            eprintln!("(kept {})", self.path.display());
            return;
        }
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Pid files of the daemons a run directory may hold, relative to it: Postfix's master,
/// Sendmail, [`OpenDkim`](crate::OpenDkim) and a [`CMilter`](crate::CMilter) (the last two
/// written by the test, the processes started in their run directory).
const PID_FILES: [&str; 4] = [
    "spool/pid/master.pid",
    "sendmail.pid",
    "opendkim.pid",
    "milter.pid",
];

/// Cleans up after test processes that died before their `Drop` ran (killed by a timeout, say):
/// in run directories `NAME-PID-N` whose PID is gone, stops the daemons of the pid files, but
/// only a daemon whose working directory lies inside that run directory (Postfix's master and
/// Sendmail's daemon both work in their queue directory, OpenDKIM and the C milters are
/// started in theirs), so a recycled pid is never hit; and
/// removes such directories once they are a day old (failed tests keep theirs for inspection).
fn reap_stale(base: &Path) {
    let Ok(entries) = std::fs::read_dir(base) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let name = entry.file_name().to_string_lossy().into_owned();
        let mut parts = name.rsplitn(3, '-');
        let (Some(_), Some(owner), Some(_)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        let Ok(owner) = owner.parse::<u32>() else {
            continue;
        };
        if owner == std::process::id() || alive(owner) || !path.is_dir() {
            continue;
        }
        for rel in PID_FILES {
            let Some(daemon) = read_pid(&path.join(rel)) else {
                continue;
            };
            let works_here = std::fs::read_link(format!("/proc/{daemon}/cwd"))
                .is_ok_and(|cwd| cwd.starts_with(&path));
            if alive(daemon) && works_here {
                shout(&format!(
                    "stopping daemon {daemon} left running in {}",
                    path.display()
                ));
                stop_pid(daemon, Duration::from_secs(5));
            }
        }
        let day_old = entry
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age > Duration::from_secs(86_400));
        if day_old {
            let _ = std::fs::remove_dir_all(&path);
        }
    }
}

/// Sets the permission bits of `path`.
pub(crate) fn set_mode(path: &Path, mode: u32) -> Result<()> {
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .context(format!("chmod {mode:o} {}", path.display()))
}

/// Writes a file, with the path in the error.
pub(crate) fn write_file(path: &Path, contents: impl AsRef<[u8]>) -> Result<()> {
    std::fs::write(path, contents).context(format!("writing {}", path.display()))
}

/// A TCP port on 127.0.0.1 that nothing listens on now and that this process has not handed out
/// before (so tests running in parallel never get the same one).
pub fn free_port() -> Result<u16> {
    static GIVEN: Mutex<Option<HashSet<u16>>> = Mutex::new(None);
    for _ in 0..100 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("finding a free port")?
            .port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if given.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    Err(Error::new("no free port after 100 tries"))
}

/// Waits until an SMTP server on 127.0.0.1:`port` greets with 220, then says QUIT (a clean
/// session, so the MTA's log shows no "lost connection" for the probe).
pub fn wait_for_smtp(port: u16, budget: Duration) -> Result<()> {
    let start = Instant::now();
    loop {
        if let Ok(stream) = TcpStream::connect(("127.0.0.1", port)) {
            return smtp_probe(stream).context(format!("probing 127.0.0.1:{port}"));
        }
        if start.elapsed() > budget {
            return Err(Error::new(format!(
                "nothing listens on 127.0.0.1:{port} after {budget:?}"
            )));
        }
        std::thread::sleep(Duration::from_millis(25));
    }
}

fn smtp_probe(stream: TcpStream) -> io::Result<()> {
    stream.set_read_timeout(Some(Duration::from_secs(20)))?;
    let mut reader = io::BufReader::new(stream.try_clone()?);
    let mut greeting = String::new();
    loop {
        let mut line = String::new();
        if io::BufRead::read_line(&mut reader, &mut line)? == 0 {
            return Err(io::Error::other(format!(
                "closed after greeting {greeting:?}"
            )));
        }
        greeting.push_str(&line);
        if line.as_bytes().get(3) != Some(&b'-') {
            break;
        }
    }
    if !greeting.starts_with("220") {
        return Err(io::Error::other(format!("greeting {greeting:?}")));
    }
    (&stream).write_all(b"QUIT\r\n")?;
    let mut bye = String::new();
    io::BufRead::read_line(&mut reader, &mut bye)?;
    Ok(())
}

/// Runs a command to its end; fails with its output unless it exits with status 0.
pub(crate) fn run(cmd: &mut Command) -> Result<Output> {
    let shown = format!("{cmd:?}");
    let out = cmd.output().context(format!("running {shown}"))?;
    if !out.status.success() {
        return Err(Error::new(format!(
            "{shown} failed ({}):\n{}{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(out)
}

/// Runs a command that starts a daemon, with its output going to the file `log` rather than to
/// pipes: a daemon that keeps an inherited pipe open would make the wait for the pipe's end last
/// as long as the daemon does (Postfix's master holds it for seconds). Fails with the log's
/// contents unless the command exits with status 0.
pub(crate) fn run_daemon(cmd: &mut Command, log: &Path) -> Result<()> {
    let shown = format!("{cmd:?}");
    let out = std::fs::File::create(log).context(format!("creating {}", log.display()))?;
    let err = out.try_clone().context("cloning a file handle")?;
    let status = cmd
        .stdin(std::process::Stdio::null())
        .stdout(out)
        .stderr(err)
        .status()
        .context(format!("running {shown}"))?;
    if !status.success() {
        return Err(Error::new(format!(
            "{shown} failed ({status}):\n{}",
            tail(log, 30)
        )));
    }
    Ok(())
}

/// Reads a pid file (first word of its first line).
pub(crate) fn read_pid(path: &Path) -> Option<u32> {
    std::fs::read_to_string(path)
        .ok()?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// True while process `pid` exists and is not a zombie.
pub(crate) fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state follows the parenthesised command name, which may contain anything.
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Stops process `pid` (a daemon we started, found by its pid file): SIGTERM, then SIGKILL if
/// it is still there after `grace`. Returns whether it is gone.
pub(crate) fn stop_pid(pid: u32, grace: Duration) -> bool {
    if pid <= 1 {
        return false;
    }
    for (signal, wait) in [("-TERM", grace), ("-KILL", Duration::from_secs(5))] {
        let _ = Command::new("kill")
            .args([signal, &pid.to_string()])
            .stderr(std::process::Stdio::null())
            .status();
        let start = Instant::now();
        while start.elapsed() < wait {
            if !alive(pid) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    !alive(pid)
}

/// The last `lines` lines of a file, for failure reports.
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(e) => format!("({}: {e})", path.display()),
    }
}

/// Prints a report to stderr in a way libtest does not capture (for SKIPPED lines, which must be
/// seen even when the test passes).
pub(crate) fn shout(text: &str) {
    let mut err = io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Waits until `check` returns `Some`, polling every 50 ms, or `budget` runs out.
pub fn poll<T>(budget: Duration, mut check: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    loop {
        if let Some(t) = check() {
            return Some(t);
        }
        if start.elapsed() > budget {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// The shell script that sets up the private namespaces: bind-mounts the private hosts and
/// resolv.conf files, sets the host name, then runs the command.
const NAMESPACE_SCRIPT: &str = r#"set -e
mount --bind "$1" /etc/hosts
if [ -e /etc/resolv.conf ]; then mount --bind "$2" /etc/resolv.conf; fi
hostname "$3"
shift 3
exec "$@"
"#;

/// A command that runs `program` in private mount and UTS namespaces (`unshare -m -u`), where
/// the host name is `hostname`, `/etc/hosts` maps it (and `localhost`) to 127.0.0.1 and
/// `/etc/resolv.conf` points at 127.0.0.1, so nothing tries to leave loopback. The two files
/// are written into `etc`. A daemon started this way keeps the namespaces after the command
/// returns.
pub(crate) fn namespaced(etc: &Path, hostname: &str, program: &Path) -> Result<Command> {
    let short = hostname.split('.').next().unwrap_or(hostname);
    let hosts = etc.join("hosts");
    let resolv = etc.join("resolv.conf");
    write_file(
        &hosts,
        format!("127.0.0.1\t{hostname} {short} localhost\n::1\tlocalhost ip6-localhost\n"),
    )?;
    write_file(
        &resolv,
        "nameserver 127.0.0.1\noptions timeout:1 attempts:1\n",
    )?;
    let mut cmd = Command::new("unshare");
    cmd.args(["-m", "-u", "--propagation", "private", "sh", "-c"])
        .arg(NAMESPACE_SCRIPT)
        .arg("sh")
        .arg(&hosts)
        .arg(&resolv)
        .arg(hostname)
        .arg(program);
    Ok(cmd)
}
