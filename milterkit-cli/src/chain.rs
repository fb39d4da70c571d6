//! `milterkit chain`: serves a chain of milters (milterkit::chain) with the daemon's flags, and
//! reads its configuration again on SIGHUP.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use milterkit::chain::{Chain, ChainMetrics, Settings};
use milterkit::metrics::Metrics;
use tracing::{error, info};

#[derive(Debug, clap::Args)]
pub(crate) struct ChainArgs {
    /// The chain's configuration file (TOML): the child milters, in order, with their timeouts,
    /// fail-safes, modes and conditions. docs/chain.md is the reference.
    #[arg(long, short = 'c', env = "MILTERKIT_CHAIN_CONFIG", value_name = "FILE")]
    config: PathBuf,
    /// Check the configuration, print what it sets, and exit (0 when it is good, 2 when not).
    #[arg(long)]
    check: bool,
    #[command(flatten)]
    daemon: milterkit::daemon::Options,
}

pub(crate) const EXAMPLES: &str = "\
Examples:
  milterkit chain --config /etc/milterkit/chain.toml --socket inet:7357@127.0.0.1
  milterkit chain --config chain.toml --check
  milterkit chain -c chain.toml --socket unix:/run/milterkit/chain.sock --metrics 127.0.0.1:9100

Configuration (TOML), one [[milter]] table per child, in the order commands reach them:
  mta = \"postfix\"                      # or \"sendmail\": whose default macro lists to ask for
  [[milter]]
  name = \"dkim\"
  socket = \"inet:8891@127.0.0.1\"
  fail_safe = \"skip\"                   # tempfail (default) | reject | skip
  [[milter]]
  name = \"spam\"
  socket = \"unix:/run/spamfilter/milter.sock\"
  mode = \"evaluate\"                    # enforce (default) | evaluate: log and count only
  command_timeout = \"2s\"               # also connect_timeout (5s), eom_timeout (60s)
  when = { not_client = [\"10.0.0.0/8\"], rcpt_domain = [\"example.org\"] }

The children are asked one after the other, within nine tenths of the chain's own deadlines
(--handler-timeout, --eom-timeout): a child that would run past them gets its own fail-safe.
kill -HUP reads the file again; open connections keep the settings they started with.";

/// Runs `milterkit chain`: its own runtime and logging (the daemon's), so it is called before
/// the other commands set up theirs.
pub(crate) fn chain(args: ChainArgs) -> ExitCode {
    let settings = match Settings::load(&args.config) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("milterkit chain: {e}");
            return ExitCode::from(2);
        }
    };
    if args.check {
        return match crate::error::print(&describe(&settings)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("milterkit chain: {}", crate::error::chain(&e));
                ExitCode::from(1)
            }
        };
    }
    let deadlines = (args.daemon.handler_timeout, args.daemon.eom_timeout);
    let current = Arc::new(RwLock::new(Arc::new(settings)));
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ChainMetrics::register(&mut registry);
    let options = args
        .daemon
        .with_metrics(Metrics::with_registry(registry))
        .on_hangup({
            let current = current.clone();
            let metrics = metrics.clone();
            let path = args.config.clone();
            move || match Settings::load(&path) {
                Ok(s) => {
                    info!(
                        children = s.milters.len(),
                        "configuration reloaded; new connections use it"
                    );
                    *current.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(s);
                    metrics.reload(true);
                }
                Err(e) => {
                    error!(error = %e, "configuration not reloaded; the old one stays");
                    metrics.reload(false);
                }
            }
        });
    options.run(move || {
        let settings = current.read().unwrap_or_else(|p| p.into_inner()).clone();
        Chain::new(settings)
            .with_deadlines(deadlines.0, deadlines.1)
            .with_metrics(metrics.clone())
    })
}

/// One line per child: what `--check` prints.
fn describe(s: &Settings) -> String {
    let plural = if s.milters.len() == 1 { "" } else { "s" };
    let mut out = format!(
        "{} child milter{plural} behind {:?}, messages up to {} bytes:\n",
        s.milters.len(),
        s.mta,
        s.max_message_size
    );
    for (i, c) in s.milters.iter().enumerate() {
        out += &format!(
            "  {}. {} at {}: mode {}, fail_safe {}, connect_timeout {:?}, command_timeout {:?}, \
             eom_timeout {:?}\n",
            i + 1,
            c.name,
            c.socket,
            c.mode.name(),
            c.fail_safe.name(),
            c.connect_timeout,
            c.command_timeout,
            c.eom_timeout,
        );
        let list = |items: Vec<String>| items.join(", ");
        let w = &c.when;
        let mut when = Vec::new();
        if !w.client.is_empty() {
            when.push(format!(
                "client {}",
                list(w.client.iter().map(|n| n.to_string()).collect())
            ));
        }
        if !w.not_client.is_empty() {
            when.push(format!(
                "not_client {}",
                list(w.not_client.iter().map(|n| n.to_string()).collect())
            ));
        }
        if let Some(a) = w.authenticated {
            when.push(format!("authenticated {a}"));
        }
        if !w.rcpt_domain.is_empty() {
            when.push(format!("rcpt_domain {}", list(w.rcpt_domain.clone())));
        }
        if !when.is_empty() {
            out += &format!("     when {}\n", when.join("; "));
        }
    }
    out
}
