//! A ready daemon: [`run!`](crate::run!) reads the socket, user, limits, timeouts, fail-safe decision, metrics
//! address and log settings from the command line and the environment, and serves a milter the
//! way a service manager expects (feature `daemon`, on by default).
//!
//! ```no_run
//! # #[derive(Default)] struct MyMilter;
//! # impl milterkit::Milter for MyMilter { type Message = (); }
//! fn main() -> std::process::ExitCode {
//!     milterkit::run!(MyMilter::default)
//! }
//! ```
//!
//! What [`run!`](crate::run!) does, in order:
//! 1. sets up logging on standard error ([`crate::logging::init_logging`]): plain lines (no timestamps when
//!    standard error goes to the journal: journald adds its own) or JSON, levels from
//!    `--log`/`MILTERKIT_LOG`, else `RUST_LOG`, else `info` (`RUST_LOG` syntax);
//! 2. takes the sockets systemd passed (socket activation: `LISTEN_FDS`, `LISTEN_PID`), or binds
//!    `--socket`;
//! 3. sets the Unix socket's mode and owner (`--socket-mode`, `--socket-owner`), binds the metrics
//!    endpoint (`--metrics`), then, if asked, switches to `--user`/`--group` (supplementary
//!    groups dropped), so that the process binds as root and serves as nobody;
//! 4. tells systemd it is ready (`READY=1`, with `Type=notify`), keeps its watchdog fed if one is
//!    set (`WatchdogSec=`);
//! 5. on SIGTERM or SIGINT tells systemd it is stopping (`STOPPING=1`) and shuts down gracefully
//!    (see [`Serve::with_graceful_shutdown`](crate::Serve::with_graceful_shutdown)); exits 0.
//!
//! Every flag has an environment variable (`MILTERKIT_` and the flag's name in capitals), shown
//! by `--help`; a flag given on the command line wins. A milter with flags of its own puts
//! [`Options`] in its clap parser with `#[command(flatten)]` and calls [`Options::run`]:
//!
//! ```no_run
//! use clap::Parser;
//! # #[derive(Default)] struct MyMilter { reject: Vec<String> }
//! # impl milterkit::Milter for MyMilter { type Message = (); }
//!
//! #[derive(Parser)]
//! struct Cli {
//!     /// Sender domains to reject.
//!     #[arg(long)]
//!     reject: Vec<String>,
//!     #[command(flatten)]
//!     milter: milterkit::daemon::Options,
//! }
//!
//! fn main() -> std::process::ExitCode {
//!     let cli = Cli::parse();
//!     let reject = cli.reject.clone();
//!     cli.milter.run(move || MyMilter { reject: reject.clone() })
//! }
//! ```
//!
//! docs/deployment.md walks through running such a milter under systemd next to Postfix.

use std::future::IntoFuture;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use milterkit_proto::Decision;
use tokio::sync::watch;
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::listener::{bind_with_backlog, Listener, DEFAULT_BACKLOG};
use crate::metrics::Metrics;
use crate::{serve, Config, Milter};

mod command;
mod system;

pub use command::Daemon;

use crate::logging::{init_logging, LogFilterError, LogFormat};
use system::{drop_privileges, hangups, notify, owner_ids, terminated};

/// Why the daemon could not start or stopped in error.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// Neither `--socket` nor sockets from systemd.
    #[error("no socket to serve on: pass --socket (or set its environment variable, MILTERKIT_SOCKET unless the prefix was changed), or start under systemd socket activation")]
    NoSocket,
    /// The sockets systemd passed could not be taken.
    #[error("socket {index} passed by systemd: {source}")]
    Passed {
        /// Its index among the passed sockets.
        index: usize,
        /// What went wrong.
        #[source]
        source: std::io::Error,
    },
    /// Binding the socket failed.
    #[error(transparent)]
    Bind(#[from] crate::Error),
    /// A user or group that does not exist, or cannot be looked up.
    #[error("unknown {what} {name:?}")]
    UnknownId {
        /// `user` or `group`.
        what: &'static str,
        /// The name given.
        name: String,
    },
    /// Setting the socket's mode or owner, or switching user, failed.
    #[error("{what}: {source}")]
    System {
        /// What was being done.
        what: String,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The metrics endpoint could not be bound.
    #[error("cannot bind the metrics endpoint {addr}: {source}")]
    Metrics {
        /// The address given.
        addr: SocketAddr,
        /// The system's error.
        #[source]
        source: std::io::Error,
    },
    /// The log filter does not parse.
    #[error(transparent)]
    LogFilter(#[from] LogFilterError),
}

/// The decision [`Options::fail_safe`] names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum FailSafe {
    /// 4xx: the client retries later (the default: no mail is lost or wrongly accepted).
    #[default]
    Tempfail,
    /// 5xx: the client gives up.
    Reject,
    /// Let the mail through unfiltered.
    Accept,
    /// Like accept, for this stage only.
    Continue,
}

impl From<FailSafe> for Decision {
    fn from(f: FailSafe) -> Decision {
        match f {
            FailSafe::Tempfail => Decision::Tempfail,
            FailSafe::Reject => Decision::Reject,
            FailSafe::Accept => Decision::Accept,
            FailSafe::Continue => Decision::Continue,
        }
    }
}

/// The daemon's settings, from flags and environment (clap). Defaults are [`Config`]'s.
#[derive(Debug, Clone, clap::Args)]
#[non_exhaustive]
pub struct Options {
    /// Where to listen: `unix:/path`, `inet:PORT@HOST`, `inet6:PORT@HOST`, `inet:HOST:PORT`.
    /// Not needed (and ignored) when systemd passes the sockets.
    #[arg(long, short = 's', env = "MILTERKIT_SOCKET", value_name = "SPEC", value_parser = parse_spec)]
    pub socket: Option<String>,
    /// Listen backlog of a socket bound here.
    #[arg(long, env = "MILTERKIT_BACKLOG", default_value_t = DEFAULT_BACKLOG)]
    pub backlog: u32,
    /// Mode of the Unix socket, octal (e.g. 660 so that the MTA's group can connect).
    #[arg(long, env = "MILTERKIT_SOCKET_MODE", value_name = "OCTAL", value_parser = parse_mode)]
    pub socket_mode: Option<u32>,
    /// Owner of the Unix socket, `USER` or `USER:GROUP` or `:GROUP` (needs root).
    #[arg(long, env = "MILTERKIT_SOCKET_OWNER", value_name = "USER[:GROUP]")]
    pub socket_owner: Option<String>,
    /// After binding, switch to this user (needs root). Its primary group is used unless --group
    /// says otherwise; supplementary groups are dropped.
    #[arg(long, short = 'u', env = "MILTERKIT_USER")]
    pub user: Option<String>,
    /// After binding, switch to this group (needs root).
    #[arg(long, short = 'g', env = "MILTERKIT_GROUP")]
    pub group: Option<String>,
    /// Most connections served at once.
    #[arg(long, env = "MILTERKIT_MAX_CONNECTIONS", default_value_t = Config::default().max_connections)]
    pub max_connections: usize,
    /// Largest payload accepted from the MTA, in bytes.
    #[arg(long, env = "MILTERKIT_MAX_FRAME", default_value_t = Config::default().max_frame)]
    pub max_frame: usize,
    /// Longest wait for the MTA's next command (`90s`, `5m`, `2h`, `500ms`; a bare number is
    /// seconds).
    #[arg(long, env = "MILTERKIT_READ_TIMEOUT", value_parser = parse_duration, default_value = "7210s")]
    pub read_timeout: Duration,
    /// Longest wait for the MTA to take a reply.
    #[arg(long, env = "MILTERKIT_WRITE_TIMEOUT", value_parser = parse_duration, default_value = "60s")]
    pub write_timeout: Duration,
    /// Deadline of every handler but end of message.
    #[arg(long, env = "MILTERKIT_HANDLER_TIMEOUT", value_parser = parse_duration, default_value = "8s")]
    pub handler_timeout: Duration,
    /// Deadline of the end-of-message handler.
    #[arg(long, env = "MILTERKIT_EOM_TIMEOUT", value_parser = parse_duration, default_value = "240s")]
    pub eom_timeout: Duration,
    /// How often progress goes out while the end-of-message handler runs.
    #[arg(long, env = "MILTERKIT_PROGRESS_INTERVAL", value_parser = parse_duration, default_value = "5s")]
    pub progress_interval: Duration,
    /// On shutdown, how long open messages may take to finish.
    #[arg(long, env = "MILTERKIT_GRACE_PERIOD", value_parser = parse_duration, default_value = "30s")]
    pub grace_period: Duration,
    /// The decision sent when a handler fails, panics or runs past its deadline.
    #[arg(long, env = "MILTERKIT_FAIL_SAFE", value_enum, default_value_t)]
    pub fail_safe: FailSafe,
    /// Serve Prometheus metrics over HTTP on this address (e.g. 127.0.0.1:9100).
    #[arg(long, env = "MILTERKIT_METRICS", value_name = "ADDR")]
    pub metrics: Option<SocketAddr>,
    /// Log line format.
    #[arg(long, env = "MILTERKIT_LOG_FORMAT", value_enum, default_value_t)]
    pub log_format: LogFormat,
    /// What to log, in `RUST_LOG` syntax (`info`, `debug`, `milterkit=debug,warn`). Default:
    /// `RUST_LOG` if set, else `info`.
    #[arg(long, env = "MILTERKIT_LOG", value_name = "FILTER")]
    pub log: Option<String>,
    /// Worker threads of the runtime (default: one per core). 1 runs everything on one thread (a
    /// `current_thread` runtime): the least CPU per message, for milters whose handlers do not
    /// compute much.
    #[arg(long, env = "MILTERKIT_THREADS")]
    pub threads: Option<usize>,
    /// The metrics the endpoint serves: [`Options::with_metrics`].
    #[arg(skip)]
    own_metrics: Option<Metrics>,
    /// What SIGHUP does: [`Options::on_hangup`].
    #[arg(skip)]
    hangup: Option<Hangup>,
}

/// The function [`Options::on_hangup`] runs at each SIGHUP.
#[derive(Clone)]
struct Hangup(std::sync::Arc<dyn Fn() + Send + Sync>);

impl std::fmt::Debug for Hangup {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Hangup")
    }
}

impl Options {
    /// Serves `metrics` on the `--metrics` endpoint instead of a fresh set: made with
    /// [`Metrics::with_registry`] from a registry holding the milter's own counters, the
    /// endpoint shows them beside milterkit's.
    pub fn with_metrics(mut self, metrics: Metrics) -> Options {
        self.own_metrics = Some(metrics);
        self
    }

    /// Runs `reload` at each SIGHUP while serving (to read a configuration again; connections
    /// open go on). Without it SIGHUP is left alone, and its default action ends the process.
    ///
    /// ```no_run
    /// # #[derive(Default)] struct MyMilter;
    /// # impl milterkit::Milter for MyMilter { type Message = (); }
    /// use clap::Parser;
    /// #[derive(Parser)]
    /// struct Cli {
    ///     #[command(flatten)]
    ///     milter: milterkit::daemon::Options,
    /// }
    /// let options = Cli::parse().milter.on_hangup(|| tracing::info!("reloading"));
    /// options.run(MyMilter::default);
    /// ```
    pub fn on_hangup(mut self, reload: impl Fn() + Send + Sync + 'static) -> Options {
        self.hangup = Some(Hangup(std::sync::Arc::new(reload)));
        self
    }

    /// The options in `matches` of a [`Daemon::command`] (or of a parser with [`Options`]
    /// flattened in).
    pub fn from_matches(matches: &clap::ArgMatches) -> Result<Options, clap::Error> {
        <Options as clap::FromArgMatches>::from_arg_matches(matches)
    }

    /// The [`Config`] these options describe (without metrics).
    pub fn config(&self) -> Config {
        Config {
            max_connections: self.max_connections,
            read_timeout: self.read_timeout,
            write_timeout: self.write_timeout,
            handler_timeout: self.handler_timeout,
            eom_timeout: self.eom_timeout,
            progress_interval: self.progress_interval,
            max_frame: self.max_frame,
            fail_safe: self.fail_safe.into(),
            grace_period: self.grace_period,
            metrics: None,
        }
    }

    /// Runs `factory`'s milters with these options; see [`run!`](crate::run!).
    pub fn run<M, F>(self, factory: F) -> ExitCode
    where
        M: Milter,
        F: Fn() -> M + Send + Sync + 'static,
    {
        let filter = self
            .log
            .clone()
            .or_else(|| std::env::var("RUST_LOG").ok())
            .unwrap_or_else(|| "info".to_owned());
        if let Err(e) = init_logging(self.log_format, &filter) {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
        // Before any thread exists: listenfd clears LISTEN_FDS and LISTEN_PID from the
        // environment, so that children do not take the sockets for theirs.
        let mut passed = listenfd::ListenFd::from_env();
        let mut builder = match self.threads {
            Some(1) => tokio::runtime::Builder::new_current_thread(),
            Some(n) => {
                let mut b = tokio::runtime::Builder::new_multi_thread();
                b.worker_threads(n.max(1));
                b
            }
            None => tokio::runtime::Builder::new_multi_thread(),
        };
        let runtime = match builder.enable_all().build() {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "cannot start the runtime");
                eprintln!("error: cannot start the runtime: {e}");
                return ExitCode::FAILURE;
            }
        };
        match runtime.block_on(self.serve(&mut passed, factory)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                let _ = sd_notify::notify(false, &[sd_notify::NotifyState::Status(&e.to_string())]);
                error!(error = %e, "stopped");
                eprintln!("error: {e}");
                ExitCode::FAILURE
            }
        }
    }

    async fn serve<M, F>(
        self,
        passed: &mut listenfd::ListenFd,
        factory: F,
    ) -> Result<(), DaemonError>
    where
        M: Milter,
        F: Fn() -> M + Send + Sync + 'static,
    {
        let listeners = self.listeners(passed).await?;
        let owner = match &self.socket_owner {
            Some(o) => Some(owner_ids(o)?),
            None => None,
        };
        for l in &listeners {
            let at = l.local_spec().map(|s| s.to_string()).unwrap_or_default();
            let system = |what: &str| {
                let what = format!("{what} of {at}");
                move |source| DaemonError::System { what, source }
            };
            if let Some((uid, gid)) = owner {
                l.set_owner(uid, gid).map_err(system("setting the owner"))?;
            }
            if let Some(mode) = self.socket_mode {
                l.set_permissions(mode)
                    .map_err(system("setting the mode"))?;
            }
        }
        let mut config = self.config();
        if let Some(addr) = self.metrics {
            let http = tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| DaemonError::Metrics { addr, source })?;
            let metrics = self.own_metrics.clone().unwrap_or_default();
            info!(addr = %http.local_addr().unwrap_or(addr), "metrics endpoint");
            tokio::spawn(metrics.clone().serve(http));
            config.metrics = Some(metrics);
        }
        drop_privileges(self.user.as_deref(), self.group.as_deref())?;

        let (stop, stopped) = watch::channel(false);
        let factory = std::sync::Arc::new(factory);
        let mut serving = JoinSet::new();
        let mut names = Vec::new();
        for listener in listeners {
            names.push(
                listener
                    .local_spec()
                    .map(|s| s.to_string())
                    .unwrap_or_default(),
            );
            let mut stopped = stopped.clone();
            let factory = factory.clone();
            let serve = serve(listener, move || factory())
                .with_config(config.clone())
                .with_graceful_shutdown(async move {
                    let _ = stopped.wait_for(|s| *s).await;
                });
            serving.spawn(serve.into_future());
        }
        // Listening for SIGTERM (and SIGHUP, if asked) before telling systemd we are ready: a
        // stop or reload right after start is handled too.
        if let Some(Hangup(reload)) = self.hangup.clone() {
            match hangups() {
                Ok(mut hup) => {
                    tokio::spawn(async move {
                        while hup.recv().await.is_some() {
                            info!(signal = "SIGHUP", "reloading");
                            reload();
                        }
                    });
                }
                Err(e) => warn!(error = %e, "cannot listen for SIGHUP; reloads are off"),
            }
        }
        let signal = terminated();
        tokio::pin!(signal);
        let status = format!("serving on {}", names.join(", "));
        notify(&[
            sd_notify::NotifyState::Ready,
            sd_notify::NotifyState::Status(&status),
        ]);
        let mut usec = 0;
        if sd_notify::watchdog_enabled(false, &mut usec) {
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(
                    Duration::from_micros(usec / 2).max(Duration::from_millis(1)),
                );
                loop {
                    tick.tick().await;
                    notify(&[sd_notify::NotifyState::Watchdog]);
                }
            });
        }

        tokio::select! {
            which = &mut signal => {
                info!(signal = which, "stopping");
                notify(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status("stopping")]);
                let _ = stop.send(true);
            }
            Some(done) = serving.join_next() => {
                // A serve loop ends only on shutdown; this is its error.
                let _ = stop.send(true);
                if let Ok(Err(e)) = done {
                    return Err(e.into());
                }
            }
        }
        while let Some(done) = serving.join_next().await {
            if let Ok(Err(e)) = done {
                warn!(error = %e, "serve loop failed while stopping");
            }
        }
        info!("stopped");
        Ok(())
    }

    /// The sockets systemd passed, or the one `--socket` names.
    async fn listeners(
        &self,
        passed: &mut listenfd::ListenFd,
    ) -> Result<Vec<Listener>, DaemonError> {
        let mut listeners = Vec::new();
        for index in 0..passed.len() {
            let fail = |source| DaemonError::Passed { index, source };
            let listener = match passed.take_unix_listener(index) {
                Ok(Some(l)) => Listener::from_std_unix(l).map_err(fail)?,
                _ => match passed.take_tcp_listener(index).map_err(fail)? {
                    Some(l) => Listener::from_std_tcp(l).map_err(fail)?,
                    None => continue,
                },
            };
            listeners.push(listener);
        }
        if !listeners.is_empty() {
            if self.socket.is_some() {
                info!("sockets passed by systemd; --socket ignored");
            }
            return Ok(listeners);
        }
        let spec = self.socket.as_deref().ok_or(DaemonError::NoSocket)?;
        Ok(vec![bind_with_backlog(spec, self.backlog).await?])
    }
}

fn parse_mode(s: &str) -> Result<u32, String> {
    let digits = s.strip_prefix("0o").unwrap_or(s);
    match u32::from_str_radix(digits, 8) {
        Ok(m) if m <= 0o7777 => Ok(m),
        _ => Err(format!("{s:?} is not an octal mode such as 660")),
    }
}

/// A socket specification that parses (kept as given): a bad one is a usage error (exit 2).
fn parse_spec(s: &str) -> Result<String, String> {
    s.parse::<crate::SocketSpec>()
        .map(|_| s.to_owned())
        .map_err(|e| e.to_string())
}

/// `500ms`, `90s`, `1.5s`, `5m`, `2h`, or a bare number of seconds.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    let bad = || format!("{s:?} is not a duration such as 30s, 5m, 1.5s or 500ms");
    let (ms, secs): (u64, u64) = match unit.trim() {
        "ms" => (1, 0),
        "" | "s" => (1000, 1),
        "m" | "min" => (60_000, 60),
        "h" => (3_600_000, 3600),
        _ if number.is_empty() => return Err(bad()),
        other => return Err(format!("unknown unit {other:?} in {s:?} (ms, s, m, h)")),
    };
    let too_long = || format!("{s:?} is too long");
    if number.contains('.') {
        // A fraction, to the millisecond.
        let n: f64 = number.parse().map_err(|_| bad())?;
        let millis = (n * ms as f64).round();
        if millis >= u64::MAX as f64 {
            return Err(too_long());
        }
        return Ok(Duration::from_millis(millis as u64));
    }
    let n: u64 = number.parse().map_err(|_| bad())?;
    if secs == 0 {
        return Ok(Duration::from_millis(n));
    }
    n.checked_mul(secs)
        .map(Duration::from_secs)
        .ok_or_else(too_long)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("90"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("0.5m"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration(".25s"), Ok(Duration::from_millis(250)));
        assert!(parse_duration("1.2.3s").is_err());
        assert!(parse_duration("-5s").is_err());
        assert!(parse_duration("5 parsecs").is_err());
        assert!(parse_duration("").is_err());
        assert!(parse_duration("99999999999999999999h").is_err());
    }

    #[test]
    fn modes() {
        assert_eq!(parse_mode("660"), Ok(0o660));
        assert_eq!(parse_mode("0o600"), Ok(0o600));
        assert!(parse_mode("999").is_err());
        assert!(parse_mode("77777").is_err());
    }

    /// The tests that read or set the process's environment take turns.
    static ENV: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn defaults_are_configs() {
        let _env = ENV
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let matches = Daemon::new("milter")
            .command()
            .try_get_matches_from(["milter", "--socket", "inet:1@127.0.0.1"])
            .unwrap();
        let config = Options::from_matches(&matches).unwrap().config();
        let default = Config::default();
        assert_eq!(config.read_timeout, default.read_timeout);
        assert_eq!(config.write_timeout, default.write_timeout);
        assert_eq!(config.handler_timeout, default.handler_timeout);
        assert_eq!(config.eom_timeout, default.eom_timeout);
        assert_eq!(config.progress_interval, default.progress_interval);
        assert_eq!(config.grace_period, default.grace_period);
        assert_eq!(config.max_connections, default.max_connections);
        assert_eq!(config.max_frame, default.max_frame);
        assert_eq!(config.fail_safe, default.fail_safe);
    }

    #[test]
    fn the_name_version_and_variable_prefix_are_the_programs() {
        let daemon = Daemon::new("tagger").version("2.1.0").env_prefix("TAGGER");
        let err = daemon
            .command()
            .try_get_matches_from(["tagger", "--version"])
            .unwrap_err();
        assert_eq!(err.kind(), clap::error::ErrorKind::DisplayVersion);
        assert_eq!(err.to_string(), "tagger 2.1.0\n");
        let envs: Vec<String> = daemon
            .command()
            .get_arguments()
            .filter_map(|a| a.get_env().map(|e| e.to_string_lossy().into_owned()))
            .collect();
        assert!(envs.iter().all(|e| e.starts_with("TAGGER_")), "{envs:?}");
        assert!(envs.contains(&"TAGGER_SOCKET".to_owned()));
        // The environment feeds the flags under the chosen prefix only.
        let _env = ENV
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        std::env::set_var("TAGGER_MAX_CONNECTIONS", "7");
        std::env::set_var("MILTERKIT_MAX_CONNECTIONS", "9");
        let matches = daemon.command().try_get_matches_from(["tagger"]).unwrap();
        assert_eq!(Options::from_matches(&matches).unwrap().max_connections, 7);
        let plain = Daemon::new("x")
            .command()
            .try_get_matches_from(["x"])
            .unwrap();
        assert_eq!(Options::from_matches(&plain).unwrap().max_connections, 9);
        std::env::remove_var("TAGGER_MAX_CONNECTIONS");
        std::env::remove_var("MILTERKIT_MAX_CONNECTIONS");
    }

    #[test]
    fn owners() {
        assert_eq!(owner_ids("0:0").unwrap(), (Some(0), Some(0)));
        assert_eq!(owner_ids("root").unwrap(), (Some(0), None));
        assert_eq!(owner_ids(":0").unwrap(), (None, Some(0)));
        assert!(matches!(
            owner_ids("no-such-user-here"),
            Err(DaemonError::UnknownId { what: "user", .. })
        ));
    }
}
