//! An example milter with state shared by every instance: per-sender rate limiting, the counts
//! kept in Redis, so that several milter processes (one per MTA host, or behind a load balancer)
//! count together.
//!
//! At MAIL FROM the sender's count for the current window goes up by one in Redis; past the
//! limit the sender is refused with `451 4.7.1` (a temporary refusal: the client retries later,
//! nothing is lost). Written on [`milterkit::filter`] with the decision at MAIL, so the MTA sends
//! the milter nothing else.
//!
//! **Key schema**: `{prefix}:rate:{sender}:{window}`, where `sender` is the envelope sender
//! without angle brackets, in lower case, and `window` the start of the current window in Unix
//! seconds (a multiple of the window's length). `INCR` and `EXPIRE` (twice the window) in one
//! `MULTI`: every key disappears on its own. The null sender (`<>`, bounces) is never limited.
//!
//! **When Redis is down** (or answers with an error, or not within
//! [`Settings::redis_timeout`]): the configured fail-safe, [`OnRedisDown::Tempfail`] by default
//! (no mail passes unchecked) or [`OnRedisDown::Accept`] (mail flows unchecked); either way a
//! warning is logged and `ratelimit_redis_failures_total` counts it on the metrics endpoint.

pub mod daemon;

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use milterkit::filter::{DecideAt, Filter, Options, Transaction};
use milterkit::{Actions, Decision, Reply, Result};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::registry::Registry;
use redis::aio::ConnectionManager;
use tokio::sync::OnceCell;
use tracing::warn;

/// What to do with mail when Redis cannot be asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum OnRedisDown {
    /// Refuse for now with 451: the client retries later (the default).
    #[default]
    Tempfail,
    /// Let the mail through without counting it.
    Accept,
}

/// How the limit is set.
#[derive(Debug, Clone)]
pub struct Settings {
    /// Redis' address, `redis://127.0.0.1:6379/`.
    pub redis_url: String,
    /// Messages a sender may send per window.
    pub limit: u64,
    /// The window's length.
    pub window: Duration,
    /// What keys start with.
    pub prefix: String,
    /// What happens when Redis cannot be asked.
    pub on_redis_down: OnRedisDown,
    /// The longest wait for Redis, connecting included.
    pub redis_timeout: Duration,
    /// Stamp each message it let through with `X-Rate-Count: N/LIMIT` (its sender's count in
    /// the window): shows in the delivered mail that the limit was checked.
    pub stamp: bool,
}

impl Default for Settings {
    fn default() -> Self {
        Settings {
            redis_url: "redis://127.0.0.1:6379/".into(),
            limit: 100,
            window: Duration::from_secs(3600),
            prefix: "milterkit".into(),
            on_redis_down: OnRedisDown::Tempfail,
            redis_timeout: Duration::from_secs(2),
            stamp: false,
        }
    }
}

/// Counters for the metrics endpoint.
#[derive(Debug, Clone, Default)]
pub struct Counters {
    /// Senders refused for going past the limit.
    pub limited: Counter,
    /// Messages decided by the fail-safe because Redis could not be asked.
    pub redis_failures: Counter,
}

impl Counters {
    /// Registers them in `registry` (`ratelimit_limited_total`, `ratelimit_redis_failures_total`).
    pub fn register(&self, registry: &mut Registry) {
        registry.register(
            "ratelimit_limited",
            "Senders refused for going past the limit",
            self.limited.clone(),
        );
        registry.register(
            "ratelimit_redis_failures",
            "Messages decided by the fail-safe because Redis could not be asked",
            self.redis_failures.clone(),
        );
    }
}

/// The rate limit, shared by every connection of the process.
pub struct RateLimit {
    settings: Settings,
    counters: Counters,
    /// Connected at the first message; reconnects by itself after Redis comes back.
    redis: OnceCell<ConnectionManager>,
}

impl RateLimit {
    /// A rate limit with `settings`, counting in `counters`.
    pub fn new(settings: Settings, counters: Counters) -> RateLimit {
        RateLimit {
            settings,
            counters,
            redis: OnceCell::new(),
        }
    }

    /// The milterkit milter that serves it: decides at MAIL.
    pub fn milter(self) -> milterkit::filter::Filtered<RateLimit> {
        milterkit::filter::Filtered::new(self, Options::default().decide_at(DecideAt::Mail))
    }

    /// The key of `sender` in the window of `now`.
    pub fn key(&self, sender: &str, now: SystemTime) -> String {
        let len = self.settings.window.as_secs().max(1);
        let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
        let window = secs - secs % len;
        format!(
            "{}:rate:{}:{window}",
            self.settings.prefix,
            sender.to_lowercase()
        )
    }

    /// Counts one message of `sender`; gives its count in this window.
    async fn count(&self, sender: &str) -> redis::RedisResult<u64> {
        let redis = self
            .redis
            .get_or_try_init(|| async {
                let client = redis::Client::open(self.settings.redis_url.as_str())?;
                let config = redis::aio::ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(self.settings.redis_timeout))
                    .set_response_timeout(Some(self.settings.redis_timeout))
                    .set_number_of_retries(1);
                ConnectionManager::new_with_config(client, config).await
            })
            .await?;
        let key = self.key(sender, SystemTime::now());
        let ttl = i64::try_from(self.settings.window.as_secs().max(1) * 2).unwrap_or(i64::MAX);
        let (count, _): (u64, bool) = redis::pipe()
            .atomic()
            .incr(&key, 1)
            .expire(&key, ttl)
            .query_async(&mut redis.clone())
            .await?;
        Ok(count)
    }
}

impl Filter for RateLimit {
    // For the optional stamp.
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
        let Some(sender) = tx.sender().filter(|s| !s.is_null()) else {
            return Ok(Decision::Continue);
        };
        let sender = sender.addr().to_owned();
        let counted = tokio::time::timeout(self.settings.redis_timeout, self.count(&sender)).await;
        let count = match counted {
            Ok(Ok(n)) => n,
            failed => {
                let why = match failed {
                    Ok(Err(e)) => e.to_string(),
                    _ => format!("no answer within {:?}", self.settings.redis_timeout),
                };
                self.counters.redis_failures.inc();
                warn!(%sender, error = %why, fail_safe = ?self.settings.on_redis_down, "Redis cannot be asked");
                return Ok(match self.settings.on_redis_down {
                    OnRedisDown::Tempfail => Decision::Reply(Reply::new(
                        451,
                        "4.3.0",
                        "rate limit cannot be checked now, try again later",
                    )?),
                    OnRedisDown::Accept => Decision::Continue,
                });
            }
        };
        if count > self.settings.limit {
            self.counters.limited.inc();
            return Ok(Decision::Reply(Reply::new(
                451,
                "4.7.1",
                format!(
                    "{sender} sent more than {} messages; try again later",
                    self.settings.limit
                ),
            )?));
        }
        if self.settings.stamp {
            tx.add_header("X-Rate-Count", format!("{count}/{}", self.settings.limit))?;
        }
        Ok(Decision::Continue)
    }
}
