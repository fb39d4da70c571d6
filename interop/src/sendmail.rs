//! [`Sendmail`]: a private Sendmail daemon on loopback, relaying everything to a sink.

use std::ops::Deref;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

use crate::instance::Instance;
use crate::tools::sendmail_root;
use crate::util::{
    namespaced, run, run_daemon, set_mode, tail, wait_for_smtp, write_file, Context, Error, Result,
};

/// The host name the private Sendmail runs under.
pub const SENDMAIL_HOSTNAME: &str = "sendmail.test.invalid";

/// The environment variable the syslog shim reads (at load time) for its log file.
pub const SYSLOG_FILE_ENV: &str = "MILTERKIT_SYSLOG_FILE";

/// The C source of the `LD_PRELOAD` syslog replacement (`interop/c/syslog_shim.c`).
pub const SYSLOG_SHIM_SOURCE: &str = include_str!("../c/syslog_shim.c");

/// Builds the syslog shim with gcc, once per process and source text: into
/// `syslog_shim-HASH.so` in [`base_dir`](crate::util::base_dir), reused when it is already
/// there.
pub fn syslog_shim() -> Result<PathBuf> {
    static BUILT: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    BUILT
        .get_or_init(|| build_shim().map_err(|e| e.to_string()))
        .clone()
        .map_err(Error::new)
}

fn build_shim() -> Result<PathBuf> {
    // FNV-1a: a stable name for this source text.
    let hash = SYSLOG_SHIM_SOURCE
        .bytes()
        .fold(0xcbf2_9ce4_8422_2325_u64, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
        });
    let base = crate::util::base_dir();
    std::fs::create_dir_all(&base).context(format!("creating {}", base.display()))?;
    let so = base.join(format!("syslog_shim-{hash:016x}.so"));
    if so.is_file() {
        return Ok(so);
    }
    let pid = std::process::id();
    let src = base.join(format!("syslog_shim-{pid}.c"));
    let tmp = base.join(format!("syslog_shim-{pid}.so.tmp"));
    write_file(&src, SYSLOG_SHIM_SOURCE)?;
    let built = run(Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-Wall", "-Werror", "-o"])
        .arg(&tmp)
        .arg(&src));
    let _ = std::fs::remove_file(&src);
    built.map_err(|e| e.context("building the syslog shim"))?;
    std::fs::rename(&tmp, &so).context("installing the syslog shim")?;
    Ok(so)
}

/// A private Sendmail 8.17 daemon, from the `sendmail-bin` and `sendmail-cf` packages extracted
/// under [`sendmail_root`]: `sendmail.cf` built with m4 in a [`RunDir`](crate::RunDir),
/// the daemon on 127.0.0.1 on a free port, every message relayed to `[127.0.0.1]:SINK_PORT`,
/// the milter as `INPUT_MAIL_FILTER(test, …, F=T)` (several milters: `test`, `test2`, … in
/// the order given, see [`Sendmail::start_milters`]). It runs in private mount and UTS
/// namespaces (its own `/etc/hosts`, `/etc/resolv.conf` and fully qualified host name) with the
/// syslog shim preloaded, so its log lands in a file. Its port, directory and log are its
/// [`Instance`]'s; stopped through its pid file when dropped; a failing test (panicking thread)
/// gets the tail of the log printed and the directory kept.
///
/// Needs root and [`Tool::Sendmail`](crate::Tool::Sendmail),
/// [`Tool::SendmailCf`](crate::Tool::SendmailCf), [`Tool::M4`](crate::Tool::M4),
/// [`Tool::Gcc`](crate::Tool::Gcc), [`Tool::Unshare`](crate::Tool::Unshare).
#[derive(Debug)]
pub struct Sendmail {
    instance: Instance,
}

impl Sendmail {
    /// Configures and starts a daemon. `milter` is spelled as Sendmail wants it
    /// (`inet:PORT@127.0.0.1` or `local:/path`); see
    /// [`MilterServer::sendmail_spec`](crate::MilterServer::sendmail_spec).
    pub fn start(milter: &str, sink_port: u16) -> Result<Sendmail> {
        Sendmail::start_with(milter, sink_port, "")
    }

    /// Like [`Sendmail::start`], with extra lines for the `.mc` file (before the `MAILER`
    /// lines), such as ``define(`confMILTER_MACROS_ENVFROM', `i')dnl``.
    pub fn start_with(milter: &str, sink_port: u16, extra_mc: &str) -> Result<Sendmail> {
        Sendmail::start_milters(&[milter], sink_port, extra_mc)
    }

    /// Like [`Sendmail::start_with`], with several milters, called in the order given: one
    /// `INPUT_MAIL_FILTER` line each (named `test`, `test2`, `test3`, …, all `F=T` with the
    /// same timeouts) and `confINPUT_MAIL_FILTERS` listing them in that order.
    pub fn start_milters(milters: &[&str], sink_port: u16, extra_mc: &str) -> Result<Sendmail> {
        if milters.is_empty() {
            return Err(Error::new("Sendmail::start_milters: no milter given"));
        }
        let mut sm = Sendmail {
            instance: Instance::new("Sendmail", "Sendmail daemon", "sendmail.pid")?,
        };
        sm.configure(milters, sink_port, extra_mc)
            .map_err(|e| e.context("configuring Sendmail"))?;
        sm.launch().map_err(|e| sm.explain(e))?;
        Ok(sm)
    }

    fn configure(&self, milters: &[&str], sink_port: u16, extra_mc: &str) -> Result<()> {
        let root = sendmail_root();
        let etc = self.dir.join("etc");
        let mqueue = self.dir.join("mqueue");
        std::fs::create_dir(&etc).context("creating etc")?;
        std::fs::create_dir(&mqueue).context("creating mqueue")?;
        set_mode(&mqueue, 0o700)?;
        for f in ["aliases", "local-host-names", "statistics"] {
            write_file(&etc.join(f), "")?;
        }
        write_file(&etc.join("helpfile"), "")?;
        write_file(&etc.join("service.switch"), "hosts files\naliases files\n")?;
        // A copy of the binary without its setgid bit, so the dynamic loader honours
        // LD_PRELOAD.
        let bin = self.dir.join("sendmail");
        std::fs::copy(root.join("usr/libexec/sendmail/sendmail"), &bin)
            .context("copying the sendmail binary")?;
        set_mode(&bin, 0o755)?;
        let d = self.dir.path().display();
        let port = self.port();
        let names = milter_names(milters.len());
        let filters: String = names
            .iter()
            .zip(milters)
            .map(|(name, spec)| {
                format!(
                    "INPUT_MAIL_FILTER(`{name}', `S={spec}, F=T, T=C:10s;S:30s;R:60s;E:5m')dnl\n"
                )
            })
            .collect();
        let order = names.join(", ");
        let mc = format!(
            "\
divert(-1)
# private Sendmail for the milterkit interop tests
divert(0)dnl
OSTYPE(`linux')dnl
define(`confDOMAIN_NAME', `{SENDMAIL_HOSTNAME}')dnl
define(`confDONT_PROBE_INTERFACES', `True')dnl
define(`QUEUE_DIR', `{d}/mqueue')dnl
define(`confPID_FILE', `{d}/sendmail.pid')dnl
define(`ALIAS_FILE', `{d}/etc/aliases')dnl
define(`HELP_FILE', `{d}/etc/helpfile')dnl
define(`STATUS_FILE', `{d}/etc/statistics')dnl
define(`confCW_FILE', `{d}/etc/local-host-names')dnl
define(`confSERVICE_SWITCH_FILE', `{d}/etc/service.switch')dnl
define(`confBIND_OPTS', `-DNSRCH -DEFNAMES')dnl
define(`confTO_IDENT', `0s')dnl
define(`confDELIVERY_MODE', `background')dnl
define(`confREFUSE_LA', `999')dnl
define(`confQUEUE_LA', `999')dnl
define(`confLOG_LEVEL', `14')dnl
define(`confMILTER_LOG_LEVEL', `14')dnl
define(`SMART_HOST', `esmtp:[127.0.0.1]')dnl
define(`ESMTP_MAILER_ARGS', `TCP $h {sink_port}')dnl
define(`SMTP_MAILER_ARGS', `TCP $h {sink_port}')dnl
define(`RELAY_MAILER_ARGS', `TCP $h {sink_port}')dnl
FEATURE(`nocanonify')dnl
FEATURE(`accept_unresolvable_domains')dnl
FEATURE(`accept_unqualified_senders')dnl
FEATURE(`promiscuous_relay')dnl
FEATURE(`no_default_msa')dnl
DAEMON_OPTIONS(`Family=inet, Name=MTA, Port={port}, Addr=127.0.0.1')dnl
{filters}define(`confINPUT_MAIL_FILTERS', `{order}')dnl
{extra_mc}
MAILER(`local')dnl
MAILER(`smtp')dnl
"
        );
        write_file(&etc.join("sendmail.mc"), &mc)?;
        let cf_dir = root.join("usr/share/sendmail/cf");
        let out = run(Command::new("m4")
            .arg(format!("-D_CF_DIR_={}/", cf_dir.display()))
            .arg(cf_dir.join("m4/cf.m4"))
            .arg(etc.join("sendmail.mc")))
        .map_err(|e| e.context("building sendmail.cf with m4"))?;
        write_file(&etc.join("sendmail.cf"), &out.stdout)?;
        set_mode(&etc.join("sendmail.cf"), 0o644)?;
        Ok(())
    }

    /// Stops the daemon through its pid file (never by process name).
    pub fn stop(&mut self) {
        self.instance.stop();
    }

    fn launch(&mut self) -> Result<()> {
        let shim = syslog_shim()?;
        let mut cmd = namespaced(
            &self.dir.join("etc"),
            SENDMAIL_HOSTNAME,
            Path::new("/usr/bin/env"),
        )?;
        cmd.arg(format!("LD_PRELOAD={}", shim.display()))
            .arg(format!("{SYSLOG_FILE_ENV}={}", self.log_path().display()))
            .arg(self.dir.join("sendmail"))
            .arg("-C")
            .arg(self.dir.join("etc/sendmail.cf"))
            .args(["-bd", "-q5m"]);
        self.instance.started = true;
        run_daemon(&mut cmd, &self.dir.join("start.log"))?;
        wait_for_smtp(self.port(), Duration::from_secs(20))
    }

    fn explain(&self, e: Error) -> Error {
        e.context(format!(
            "starting Sendmail in {}; log tail:\n{}",
            self.dir.path().display(),
            tail(&self.log_path(), 30)
        ))
    }

    /// The names of the files in the queue directory (`qf…`, `df…`; `hf…` for held messages).
    pub fn queue_files(&self) -> Vec<String> {
        std::fs::read_dir(self.dir.join("mqueue"))
            .map(|rd| {
                rd.filter_map(|e| e.ok())
                    .map(|e| e.file_name().to_string_lossy().into_owned())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// The `INPUT_MAIL_FILTER` names of `n` milters: `test`, `test2`, `test3`, ….
pub fn milter_names(n: usize) -> Vec<String> {
    (1..=n)
        .map(|i| {
            if i == 1 {
                "test".to_owned()
            } else {
                format!("test{i}")
            }
        })
        .collect()
}

impl Deref for Sendmail {
    type Target = Instance;

    fn deref(&self) -> &Instance {
        &self.instance
    }
}
