//! [`Postfix`]: a private Postfix instance on loopback, relaying everything to a sink.

use std::ops::Deref;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::instance::Instance;
use crate::util::{
    namespaced, run, run_daemon, set_mode, tail, wait_for_smtp, write_file, Context, Error, Result,
};

/// Postfix's list of its files, directories, owners and modes.
const POSTFIX_FILES: &str = "/etc/postfix/postfix-files";

/// The numeric id of `name` in `/etc/passwd` or `/etc/group` (third field).
fn id_of(file: &str, name: &str) -> Result<u32> {
    let text = std::fs::read_to_string(file).context(format!("reading {file}"))?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let id = f.nth(1)?.parse().ok()?;
            (n == name).then_some(id)
        })
        .next()
        .ok_or_else(|| Error::new(format!("no {name} in {file}")))
}

/// Sets the modification time of `path` a minute back.
fn backdate(path: &Path) -> Result<()> {
    let then = std::time::SystemTime::now() - Duration::from_secs(60);
    std::fs::File::options()
        .write(true)
        .open(path)
        .and_then(|f| f.set_modified(then))
        .context(format!("backdating {}", path.display()))
}

/// The host name the private Postfix uses.
pub const POSTFIX_HOSTNAME: &str = "postfix.test.invalid";

/// The stock service list of Postfix 3.7 with chroot off for every service (a chrooted smtpd
/// cannot reach a Unix milter socket outside the chroot); `SMTPD_ADDR` is replaced by the
/// listening address.
const MASTER_CF: &str = "\
# service type  private unpriv  chroot  wakeup  maxproc command + args
SMTPD_ADDR inet n       -       n       -       -       smtpd
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
        -o syslog_name=postfix/$service_name
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
";

/// A private Postfix: its own configuration, queue and log in a [`RunDir`](crate::RunDir), its smtpd on
/// 127.0.0.1 on a free port, every message relayed to `[127.0.0.1]:SINK_PORT`, the milter (or
/// milters, in order: [`Postfix::start_milters`]) in `smtpd_milters`. Runs in private mount and UTS namespaces (its own `/etc/hosts`,
/// `/etc/resolv.conf` and host name). Its port, directory and log are its [`Instance`]'s; stopped
/// through its master's pid file when dropped; a failing test (panicking thread) gets the tail of
/// the log printed and the directory kept.
///
/// Needs root and [`Tool::Postfix`](crate::Tool::Postfix), [`Tool::Unshare`](crate::Tool::Unshare).
#[derive(Debug)]
pub struct Postfix {
    instance: Instance,
}

impl Postfix {
    /// Configures and starts an instance. `milter` is spelled as Postfix wants it
    /// (`inet:127.0.0.1:PORT` or `unix:/path`); see
    /// [`MilterServer::postfix_spec`](crate::MilterServer::postfix_spec).
    pub fn start(milter: &str, sink_port: u16) -> Result<Postfix> {
        Postfix::start_with(milter, sink_port, &[])
    }

    /// Like [`Postfix::start`], with extra `main.cf` settings (`("name", "value")`) applied
    /// last.
    pub fn start_with(milter: &str, sink_port: u16, extra: &[(&str, &str)]) -> Result<Postfix> {
        Postfix::start_milters(&[milter], sink_port, extra)
    }

    /// Like [`Postfix::start_with`], with several milters, called in the order given:
    /// `smtpd_milters = a, b, c`.
    pub fn start_milters(
        milters: &[&str],
        sink_port: u16,
        extra: &[(&str, &str)],
    ) -> Result<Postfix> {
        if milters.is_empty() {
            return Err(Error::new("Postfix::start_milters: no milter given"));
        }
        let milter = milters.join(", ");
        let mut pf = Postfix {
            instance: Instance::new("Postfix", "Postfix master", "spool/pid/master.pid")?,
        };
        pf.configure(&milter, sink_port, extra)
            .map_err(|e| e.context("configuring Postfix"))?;
        pf.launch().map_err(|e| pf.explain(e))?;
        Ok(pf)
    }

    fn configure(&self, milter: &str, sink_port: u16, extra: &[(&str, &str)]) -> Result<()> {
        let etc = self.dir.join("etc");
        std::fs::create_dir(&etc).context("creating etc")?;
        self.create_queue()?;
        let d = self.dir.path().display();
        let mut main_cf = format!(
            "\
compatibility_level = 3.6
config_directory = {d}/etc
queue_directory = {d}/spool
data_directory = {d}/data
command_directory = /usr/sbin
daemon_directory = /usr/lib/postfix/sbin
shlib_directory = /usr/lib/postfix
meta_directory = /etc/postfix
mail_owner = postfix
setgid_group = postdrop
maillog_file = {d}/maillog
maillog_file_prefixes = {d}
myhostname = {POSTFIX_HOSTNAME}
mydomain = test.invalid
myorigin = $myhostname
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mynetworks = 127.0.0.0/8
smtpd_relay_restrictions = permit_mynetworks, reject
relayhost = [127.0.0.1]:{sink_port}
smtp_dns_support_level = disabled
smtp_host_lookup = native
smtpd_peername_lookup = no
smtp_tls_security_level = none
smtpd_tls_security_level = none
smtpd_error_sleep_time = 0
smtpd_soft_error_limit = 100
smtpd_hard_error_limit = 100
in_flow_delay = 0
queue_run_delay = 5s
minimal_backoff_time = 5s
maximal_backoff_time = 10s
biff = no
append_dot_mydomain = no
smtpd_milters = {milter}
milter_protocol = 6
milter_default_action = tempfail
milter_connect_timeout = 10s
milter_command_timeout = 30s
milter_content_timeout = 120s
"
        );
        for (name, value) in extra {
            main_cf.push_str(&format!("{name} = {value}\n"));
        }
        write_file(&etc.join("main.cf"), main_cf)?;
        let master_cf = MASTER_CF.replace("SMTPD_ADDR", &format!("127.0.0.1:{}", self.port()));
        write_file(&etc.join("master.cf"), master_cf)?;
        // Postfix waits (in 300 ms steps, up to 2 s) for a table file younger than a second or
        // two to "settle", main.cf included: make both look old.
        for f in ["main.cf", "master.cf"] {
            backdate(&etc.join(f))?;
        }
        Ok(())
    }

    /// Creates the queue and data directories with the owners and modes Postfix's own
    /// `postfix-files` lists, and a `quick-start` marker so that `postfix start` skips its
    /// integrity checks: `post-install create-missing` and `postfix check` fork a process per
    /// file and take seconds. `postfix check` runs when a start fails, to explain it.
    fn create_queue(&self) -> Result<()> {
        let files =
            std::fs::read_to_string(POSTFIX_FILES).context(format!("reading {POSTFIX_FILES}"))?;
        let postfix = id_of("/etc/passwd", "postfix")?;
        let postdrop = id_of("/etc/group", "postdrop")?;
        for line in files.lines() {
            let fields: Vec<&str> = line.split(':').collect();
            let [path, "d", owner, group, mode, ..] = fields[..] else {
                continue;
            };
            let path = if let Some(rest) = path.strip_prefix("$queue_directory") {
                self.dir.join(format!("spool{rest}"))
            } else if let Some(rest) = path.strip_prefix("$data_directory") {
                self.dir.join(format!("data{rest}"))
            } else {
                continue;
            };
            let uid = match owner {
                "$mail_owner" => postfix,
                "root" => 0,
                other => return Err(Error::new(format!("{POSTFIX_FILES}: owner {other}?"))),
            };
            let gid = match group {
                "$setgid_group" => Some(postdrop),
                _ => None,
            };
            let mode = u32::from_str_radix(mode, 8)
                .map_err(|_| Error::new(format!("{POSTFIX_FILES}: mode {mode}?")))?;
            std::fs::create_dir_all(&path).context(format!("creating {}", path.display()))?;
            std::os::unix::fs::chown(&path, Some(uid), gid)
                .context(format!("chown {}", path.display()))?;
            set_mode(&path, mode)?;
        }
        write_file(&self.dir.join("spool/quick-start"), "")
    }

    /// Stops the instance through its master's pid file (never by process name).
    pub fn stop(&mut self) {
        self.instance.stop();
    }

    fn launch(&mut self) -> Result<()> {
        let mut cmd = namespaced(
            &self.dir.join("etc"),
            POSTFIX_HOSTNAME,
            Path::new("/usr/sbin/postfix"),
        )?;
        cmd.arg("-c").arg(self.dir.join("etc")).arg("start");
        self.instance.started = true;
        run_daemon(&mut cmd, &self.dir.join("start.log"))?;
        wait_for_smtp(self.port(), Duration::from_secs(15))
    }

    /// `postfix -c DIR/etc`, to add a subcommand to.
    fn postfix(&self) -> Command {
        let mut cmd = Command::new("/usr/sbin/postfix");
        cmd.arg("-c").arg(self.dir.join("etc"));
        cmd
    }

    fn explain(&self, e: Error) -> Error {
        let check = match run(self.postfix().arg("check")) {
            Ok(out) => String::from_utf8_lossy(&out.stderr).into_owned(),
            Err(e) => e.to_string(),
        };
        e.context(format!(
            "starting Postfix in {}; `postfix check` says:\n{check}\nlog tail:\n{}",
            self.dir.path().display(),
            tail(&self.log_path(), 30)
        ))
    }

    /// The queue as `postqueue -p` lists it (`Mail queue is empty` when empty).
    pub fn queue(&self) -> Result<String> {
        let out = run(Command::new("/usr/sbin/postqueue")
            .arg("-c")
            .arg(self.dir.join("etc"))
            .arg("-p"))?;
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }
}

impl Deref for Postfix {
    type Target = Instance;

    fn deref(&self) -> &Instance {
        &self.instance
    }
}
