//! [`Daemon`]: the command line of a milter's `main`, under the program's own name.

use std::process::ExitCode;

use super::Options;
use crate::metrics::Metrics;
use crate::Milter;

/// A milter's whole `main` under its own name: the program name, version and description
/// `--help` and `--version` show, and the prefix of the environment variables (`MILTERKIT` by
/// default: `MILTERKIT_SOCKET`, `MILTERKIT_USER`, …). [`run!`](crate::run!) is this with the
/// calling crate's name and version.
///
/// ```no_run
/// # #[derive(Default)] struct MyMilter;
/// # impl milterkit::Milter for MyMilter { type Message = (); }
/// use milterkit::daemon::Daemon;
///
/// fn main() -> std::process::ExitCode {
///     Daemon::new("my-milter")
///         .version(env!("CARGO_PKG_VERSION"))
///         .about("Tags mail from outside")
///         .env_prefix("MY_MILTER") // MY_MILTER_SOCKET, MY_MILTER_USER, …
///         .run(MyMilter::default)
/// }
/// ```
#[derive(Debug, Clone)]
pub struct Daemon {
    name: String,
    version: Option<String>,
    about: Option<String>,
    env_prefix: String,
    metrics: Option<Metrics>,
}

impl Daemon {
    /// A daemon called `name`, without a version, with the `MILTERKIT_` variables.
    pub fn new(name: impl Into<String>) -> Daemon {
        Daemon {
            name: name.into(),
            version: None,
            about: None,
            env_prefix: "MILTERKIT".to_owned(),
            metrics: None,
        }
    }

    /// What `--version` prints after the name.
    pub fn version(mut self, version: impl Into<String>) -> Daemon {
        self.version = Some(version.into());
        self
    }

    /// The description `--help` starts with.
    pub fn about(mut self, about: impl Into<String>) -> Daemon {
        self.about = Some(about.into());
        self
    }

    /// The prefix of the environment variables, without the underscore: with `"MY_MILTER"`,
    /// `--socket` is also `MY_MILTER_SOCKET`.
    pub fn env_prefix(mut self, prefix: impl Into<String>) -> Daemon {
        self.env_prefix = prefix.into();
        self
    }

    /// The metrics the `--metrics` endpoint serves ([`Options::with_metrics`]): with counters
    /// of the milter's own in their registry.
    pub fn metrics(mut self, metrics: Metrics) -> Daemon {
        self.metrics = Some(metrics);
        self
    }

    /// The command line parser: [`Options`]' flags under this name, version and prefix. Add
    /// flags of your own to it and read them back with [`Options::from_matches`].
    ///
    /// ```
    /// let cmd = milterkit::daemon::Daemon::new("tagger").env_prefix("TAGGER").command();
    /// let socket = cmd.get_arguments().find(|a| a.get_id() == "socket").unwrap();
    /// assert_eq!(socket.get_env().unwrap(), "TAGGER_SOCKET");
    /// ```
    pub fn command(&self) -> clap::Command {
        use clap::Args;
        let mut cmd = clap::Command::new(self.name.clone());
        if let Some(v) = &self.version {
            cmd = cmd.version(v.clone());
        }
        if let Some(a) = &self.about {
            cmd = cmd.about(a.clone());
        }
        let prefix = format!("{}_", self.env_prefix);
        Options::augment_args(cmd).mut_args(|arg| {
            let renamed = arg
                .get_env()
                .and_then(|e| e.to_str())
                .and_then(|e| e.strip_prefix("MILTERKIT_"))
                .map(|rest| format!("{prefix}{rest}"));
            match renamed {
                Some(env) => arg.env(env),
                None => arg,
            }
        })
    }

    /// Parses the command line and the environment, and serves `factory`'s milters; see
    /// [`Options::run`]. `--help`, `--version` and bad flags end the process as clap does (exit
    /// status 0, or 2 for bad flags).
    pub fn run<M, F>(self, factory: F) -> ExitCode
    where
        M: Milter,
        F: Fn() -> M + Send + Sync + 'static,
    {
        let matches = self.command().get_matches();
        match Options::from_matches(&matches) {
            Ok(options) => match self.metrics {
                Some(metrics) => options.with_metrics(metrics).run(factory),
                None => options.run(factory),
            },
            Err(e) => e.exit(),
        }
    }
}
