//! `milterkit-ratelimit`: the rate-limit milter as a daemon: milterkit's flags (`--socket`,
//! `--metrics`, …, see `--help`) and its own, each with a `RATELIMIT_` variable too.
//!
//! ```text
//! milterkit-ratelimit --socket inet:7361@127.0.0.1 --redis redis://10.0.0.5/ --limit 200 --window 3600
//! ```

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, FromArgMatches};
use milterkit::daemon::{Daemon, Options};
use milterkit::metrics::Metrics;
use milterkit_ratelimit::{Counters, OnRedisDown, RateLimit, Settings};
use prometheus_client::registry::Registry;

/// The limiter's own flags, beside milterkit's.
#[derive(Debug, Args)]
struct Limits {
    /// Redis' URL.
    #[arg(
        long,
        env = "RATELIMIT_REDIS",
        default_value = "redis://127.0.0.1:6379/"
    )]
    redis: String,
    /// Messages a sender may send per window.
    #[arg(long, env = "RATELIMIT_LIMIT", default_value_t = 100)]
    limit: u64,
    /// The window's length, in seconds.
    #[arg(long, env = "RATELIMIT_WINDOW", default_value_t = 3600)]
    window: u64,
    /// What the Redis keys start with.
    #[arg(long, env = "RATELIMIT_KEY_PREFIX", default_value = "milterkit")]
    key_prefix: String,
    /// What mail gets while Redis cannot be asked.
    #[arg(long, env = "RATELIMIT_ON_REDIS_DOWN", value_enum, default_value_t)]
    on_redis_down: OnRedisDown,
}

fn main() -> ExitCode {
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
