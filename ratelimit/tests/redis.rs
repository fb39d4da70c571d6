//! The rate limit against a real redis-server (Debian's, installed by scripts/test.sh; a missing
//! one fails under CI=true and is skipped loudly elsewhere), through milterkit's harness: the
//! limit, counts shared by two instances, the key schema and its expiry, the null sender, and the
//! fail-safe when Redis is down.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant, SystemTime};

use milterkit::mta::{Transaction, Verdict};
use milterkit::testing::Harness;
use milterkit_ratelimit::{Counters, OnRedisDown, RateLimit, Settings};
use testkit::Redis;

fn settings(url: String, limit: u64, on_down: OnRedisDown) -> Settings {
    Settings {
        redis_url: url,
        limit,
        window: Duration::from_secs(60),
        prefix: "test".into(),
        on_redis_down: on_down,
        redis_timeout: Duration::from_secs(1),
        stamp: false,
    }
}

fn message(from: &str) -> Transaction {
    Transaction::new().from(from).to("<bob@example.net>")
}

fn block_on<T>(f: impl std::future::Future<Output = T>) -> T {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(f)
}

/// The reply code of a refused message, 0 for one accepted.
fn code(v: &Option<Verdict>) -> u16 {
    match v {
        Some(Verdict::Accept) => 0,
        Some(Verdict::Tempfail(Some(r)) | Verdict::Reject(Some(r))) => r.code(),
        other => panic!("{other:?}"),
    }
}

#[test]
fn a_sender_past_the_limit_is_refused_for_now_and_two_instances_count_together() {
    let Some(redis) = Redis::start() else { return };
    block_on(async {
        let counters = Counters::default();
        let one = RateLimit::new(
            settings(redis.url(), 3, OnRedisDown::Tempfail),
            counters.clone(),
        );
        let two = RateLimit::new(
            settings(redis.url(), 3, OnRedisDown::Tempfail),
            counters.clone(),
        );
        let (mut a, mut b) = (
            Harness::postfix(one.milter()),
            Harness::sendmail(two.milter()),
        );
        let mut codes = Vec::new();
        for i in 0..5 {
            let h = if i % 2 == 0 { &mut a } else { &mut b };
            let out = h.run(&message("<Alice@Example.org>")).await.unwrap();
            codes.push(code(&out.verdict));
        }
        // Three across both instances, then refused: the count is Redis', not a process's.
        assert_eq!(codes, [0, 0, 0, 451, 451]);
        let out = a.run(&message("<carol@example.org>")).await.unwrap();
        assert_eq!(
            code(&out.verdict),
            0,
            "another sender has a count of its own"
        );
        let refused = b.run(&message("<alice@example.org>")).await.unwrap();
        match &refused.verdict {
            Some(Verdict::Tempfail(Some(r))) => {
                assert_eq!(
                    r.to_string(),
                    "451 4.7.1 alice@example.org sent more than 3 messages; try again later"
                )
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(counters.limited.get(), 3);
        assert_eq!(counters.redis_failures.get(), 0);
    });
    // The key schema: prefix, sender in lower case, window start; expiry at twice the window.
    let probe = RateLimit::new(
        settings(redis.url(), 3, OnRedisDown::Tempfail),
        Counters::default(),
    );
    let key = probe.key("alice@example.org", SystemTime::now());
    assert!(key.starts_with("test:rate:alice@example.org:"), "{key}");
    let client = redis::Client::open(redis.url()).unwrap();
    let mut conn = client.get_connection().unwrap();
    let count: u64 = redis::cmd("GET").arg(&key).query(&mut conn).unwrap();
    let ttl: i64 = redis::cmd("TTL").arg(&key).query(&mut conn).unwrap();
    assert_eq!(count, 6);
    assert!((1..=120).contains(&ttl), "ttl {ttl}");
}

#[test]
fn the_null_sender_is_never_limited() {
    let Some(redis) = Redis::start() else { return };
    block_on(async {
        let limit = RateLimit::new(
            settings(redis.url(), 1, OnRedisDown::Tempfail),
            Counters::default(),
        );
        let mut h = Harness::postfix(limit.milter());
        for _ in 0..3 {
            let out = h.run(&message("<>")).await.unwrap();
            assert_eq!(code(&out.verdict), 0);
        }
    });
}

#[test]
fn while_redis_is_down_the_fail_safe_decides_and_is_counted() {
    // Nothing listens here.
    let url = format!("redis://127.0.0.1:{}/", testkit::free_port());
    block_on(async {
        for (on_down, want) in [(OnRedisDown::Tempfail, 451), (OnRedisDown::Accept, 0)] {
            let counters = Counters::default();
            let limit = RateLimit::new(settings(url.clone(), 1, on_down), counters.clone());
            let mut h = Harness::postfix(limit.milter());
            let started = Instant::now();
            for _ in 0..2 {
                let out = h.run(&message("<alice@example.org>")).await.unwrap();
                assert_eq!(code(&out.verdict), want, "{on_down:?}");
            }
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
            assert_eq!(counters.redis_failures.get(), 2, "{on_down:?}");
            assert_eq!(counters.limited.get(), 0);
        }
    });
}
