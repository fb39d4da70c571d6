//! Are the Debian packages the tests drive installed? `scripts/test.sh` installs them.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;

use crate::util::shout;

/// Where `scripts/test.sh` extracts the `sendmail-bin` and `sendmail-cf` packages (never
/// installed: `sendmail-bin` conflicts with `postfix`). Override with [`SENDMAIL_ROOT_ENV`].
pub const DEFAULT_SENDMAIL_ROOT: &str = "/var/cache/milterkit/sendmail";

/// Environment variable naming another folder holding the extracted Sendmail packages.
pub const SENDMAIL_ROOT_ENV: &str = "MILTERKIT_SENDMAIL_ROOT";

/// The folder the Sendmail packages were extracted into (`dpkg -x`).
pub fn sendmail_root() -> PathBuf {
    std::env::var_os(SENDMAIL_ROOT_ENV)
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_SENDMAIL_ROOT))
}

/// Builds one of the C milters of `interop/c/` (`name` without `.c`) on Debian's libmilter into
/// `dir`; gives the binary's path.
pub fn build_c_milter(name: &str, dir: &Path) -> crate::Result<PathBuf> {
    let binary = dir.join(name);
    let source = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("c/{name}.c"));
    let out = Command::new("gcc")
        .args(["-O1", "-Wall", "-o"])
        .arg(&binary)
        .arg(&source)
        .args(["-lmilter", "-lpthread"])
        .output()
        .map_err(|e| crate::Error::new(format!("running gcc: {e}")))?;
    if !out.status.success() {
        return Err(crate::Error::new(format!(
            "gcc {}: {}",
            source.display(),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok(binary)
}

/// One outside piece an interop test needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Tool {
    /// Postfix (package `postfix`): `postfix`, `postconf` and the daemons.
    Postfix,
    /// The Sendmail binary, extracted from `sendmail-bin`, with its run-time libraries.
    Sendmail,
    /// Sendmail's m4 configuration files, extracted from `sendmail-cf`.
    SendmailCf,
    /// `gcc` and the C library headers (the syslog shim is built from C).
    Gcc,
    /// `m4` (builds `sendmail.cf`).
    M4,
    /// `swaks`, the SMTP test tool.
    Swaks,
    /// `unshare` and permission to create mount and UTS namespaces (root).
    Unshare,
    /// OpenDKIM's `miltertest` (package `miltertest`), which plays an MTA from a Lua script.
    Miltertest,
    /// HAProxy (package `haproxy`), the TCP balancer of the failover test.
    Haproxy,
    /// OpenDKIM (package `opendkim`) and its key generator `opendkim-genkey` (package
    /// `opendkim-tools`), for [`OpenDkim`](crate::OpenDkim).
    OpenDkim,
    /// Debian's `python3-dkim` (dkimpy) under `/usr/bin/python3`, which
    /// [`opendkim::verify`](crate::opendkim::verify) checks signatures with.
    Dkimpy,
}

impl Tool {
    /// Every tool.
    pub const ALL: [Tool; 11] = [
        Tool::Postfix,
        Tool::Sendmail,
        Tool::SendmailCf,
        Tool::Gcc,
        Tool::M4,
        Tool::Swaks,
        Tool::Unshare,
        Tool::Miltertest,
        Tool::Haproxy,
        Tool::OpenDkim,
        Tool::Dkimpy,
    ];

    /// What provides it, for messages.
    pub fn package(self) -> &'static str {
        match self {
            Tool::Postfix => "postfix (apt-get install postfix)",
            Tool::Sendmail => {
                "sendmail-bin extracted with dpkg -x, plus its libraries (scripts/test.sh)"
            }
            Tool::SendmailCf => "sendmail-cf extracted with dpkg -x (scripts/test.sh)",
            Tool::Gcc => "gcc and libc6-dev",
            Tool::M4 => "m4",
            Tool::Swaks => "swaks",
            Tool::Unshare => "unshare (util-linux) run as root",
            Tool::Miltertest => "miltertest (apt-get install miltertest)",
            Tool::Haproxy => "haproxy (apt-get install haproxy)",
            Tool::OpenDkim => {
                "opendkim and opendkim-tools (apt-get install opendkim opendkim-tools)"
            }
            Tool::Dkimpy => "python3-dkim for /usr/bin/python3 (apt-get install python3-dkim)",
        }
    }

    /// `Ok` if the tool is usable, otherwise why not. Checked once per process.
    pub fn check(self) -> Result<(), String> {
        static CHECKED: OnceLock<Vec<(Tool, Result<(), String>)>> = OnceLock::new();
        let all = CHECKED.get_or_init(|| Tool::ALL.iter().map(|&t| (t, t.probe())).collect());
        all.iter()
            .find(|(t, _)| *t == self)
            .map_or(Ok(()), |(_, r)| r.clone())
    }

    fn probe(self) -> Result<(), String> {
        match self {
            Tool::Postfix => {
                for p in [
                    "/usr/sbin/postfix",
                    "/usr/sbin/postconf",
                    "/usr/lib/postfix/sbin/master",
                    "/usr/lib/postfix/sbin/smtpd",
                    "/etc/postfix/postfix-files",
                ] {
                    file(p)?;
                }
                Ok(())
            }
            Tool::Sendmail => {
                let bin = sendmail_root().join("usr/libexec/sendmail/sendmail");
                file(&bin)?;
                let out = Command::new("ldd")
                    .arg(&bin)
                    .output()
                    .map_err(|e| format!("ldd: {e}"))?;
                let text = String::from_utf8_lossy(&out.stdout);
                let missing: Vec<&str> = text
                    .lines()
                    .filter(|l| l.contains("not found"))
                    .map(str::trim)
                    .collect();
                if !missing.is_empty() {
                    return Err(format!(
                        "{} lacks libraries: {}",
                        bin.display(),
                        missing.join(", ")
                    ));
                }
                Ok(())
            }
            Tool::SendmailCf => file(sendmail_root().join("usr/share/sendmail/cf/m4/cf.m4")),
            Tool::Gcc => {
                runs("gcc", &["--version"])?;
                file("/usr/include/stdio.h")
            }
            Tool::M4 => runs("m4", &["--version"]),
            Tool::Swaks => runs("swaks", &["--version"]),
            Tool::Unshare => runs("unshare", &["-m", "-u", "--propagation", "private", "true"]),
            Tool::Miltertest => file("/usr/bin/miltertest"),
            Tool::Haproxy => file("/usr/sbin/haproxy"),
            Tool::OpenDkim => {
                file("/usr/sbin/opendkim")?;
                file("/usr/sbin/opendkim-genkey")
            }
            Tool::Dkimpy => runs(crate::opendkim::PYTHON, &["-c", "import dkim"]),
        }
    }
}

fn file(p: impl AsRef<Path>) -> Result<(), String> {
    let p = p.as_ref();
    if p.is_file() {
        Ok(())
    } else {
        Err(format!("{} not found", p.display()))
    }
}

fn runs(cmd: &str, args: &[&str]) -> Result<(), String> {
    match Command::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(s) if s.success() => Ok(()),
        Ok(s) => Err(format!("`{cmd} {}` failed: {s}", args.join(" "))),
        Err(e) => Err(format!("`{cmd}` cannot run: {e}")),
    }
}

/// True if every tool is usable. Otherwise: under `CI=true`, panics naming what is missing (CI
/// must run everything); elsewhere prints a loud `SKIPPED` line, past libtest's output capture,
/// and returns false, and the test should return at once.
///
/// ```no_run
/// # fn t() {
/// if !interop::require(&[interop::Tool::Postfix]) {
///     return;
/// }
/// # }
/// ```
pub fn require(tools: &[Tool]) -> bool {
    let missing: Vec<String> = tools
        .iter()
        .filter_map(|t| {
            t.check()
                .err()
                .map(|why| format!("{} [{why}]", t.package()))
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let what = missing.join("; ");
    if std::env::var("CI").is_ok_and(|v| v == "true") {
        panic!("missing under CI=true: {what}. scripts/test.sh must install it (as root).");
    }
    let test = std::thread::current()
        .name()
        .unwrap_or("interop test")
        .to_owned();
    shout(&format!(
        "!!!!!! SKIPPED {test}: missing {what}. Run `bash scripts/test.sh` as root to install."
    ));
    false
}
