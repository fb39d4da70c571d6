//! The rate limit as a daemon ([`daemon`]): the binary's `main`.

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use milterkit::daemon::{Daemon, Options};
use milterkit::metrics::Metrics;
use prometheus_client::registry::Registry;

use crate::{Counters, OnRedisDown, RateLimit, Settings};

/// The limiter's own flags, beside milterkit's.
#[derive(Debug, Args)]
pub struct Limits {
    /// Redis' URL.
    #[arg(
        long,
        env = "RATELIMIT_REDIS",
        default_value = "redis://127.0.0.1:6379/"
    )]
    pub redis: String,
    /// Messages a sender may send per window.
    #[arg(long, env = "RATELIMIT_LIMIT", default_value_t = 100)]
    pub limit: u64,
    /// The window's length, in seconds.
    #[arg(long, env = "RATELIMIT_WINDOW", default_value_t = 3600)]
    pub window: u64,
    /// What the Redis keys start with.
    #[arg(long, env = "RATELIMIT_KEY_PREFIX", default_value = "milterkit")]
    pub key_prefix: String,
    /// What mail gets while Redis cannot be asked.
    #[arg(long, env = "RATELIMIT_ON_REDIS_DOWN", value_enum, default_value_t)]
    pub on_redis_down: OnRedisDown,
    /// Stamp each message let through with `X-Rate-Count: N/LIMIT`.
    #[arg(long, env = "RATELIMIT_STAMP")]
    pub stamp: bool,
}

/// The daemon: milterkit's flags with `RATELIMIT_` variables, and the limiter's own
/// ([`Limits`]); the metrics endpoint shows [`Counters`] beside milterkit's metrics.
pub fn daemon() -> ExitCode {
    let daemon = Daemon::new("milterkit-ratelimit")
        .version(env!("CARGO_PKG_VERSION"))
        .about("Per-sender rate limiting, the counts in Redis shared by every instance")
        .env_prefix("RATELIMIT");
    let matches = Limits::augment_args(daemon.command()).get_matches();
    let (options, limits) = match (
        Options::from_matches(&matches),
        Limits::from_arg_matches(&matches),
    ) {
        (Ok(o), Ok(l)) => (o, l),
        (Err(e), _) | (_, Err(e)) => e.exit(),
    };
    let settings = Settings {
        redis_url: limits.redis,
        limit: limits.limit,
        window: Duration::from_secs(limits.window),
        prefix: limits.key_prefix,
        on_redis_down: limits.on_redis_down,
        stamp: limits.stamp,
        ..Settings::default()
    };
    let counters = Counters::default();
    let mut registry = Registry::default();
    counters.register(&mut registry);
    let milter = RateLimit::new(settings, counters).milter();
    options
        .with_metrics(Metrics::with_registry(registry))
        .run(move || milter.clone())
}
