//! The Redis rate-limit example (ratelimit/) behind real Postfix: two Postfix instances, each
//! with its own instance of the milter, both counting in one redis-server. A sender's messages
//! through either MTA count together: past the limit, Postfix refuses the sender with the
//! milter's 451 at MAIL and nothing more is delivered (issue #19: state shared across instances).
//! Needs root; the packages come from scripts/test.sh.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use interop::milter::MilterServer;
use interop::{Mta, Postfix, Sink, Transport, DELIVERY_TIMEOUT};
use milterkit_ratelimit::{Counters, OnRedisDown, RateLimit, Settings};
use testkit::Redis;

const BOB: &str = "bob@example.net";

#[test]
fn two_instances_behind_two_postfixes_count_one_sender_together() {
    if !interop::require(interop::tools_of(Mta::Postfix)) {
        return;
    }
    let Some(redis) = Redis::start() else { return };
    let counters = Counters::default();
    let settings = Settings {
        redis_url: redis.url(),
        limit: 3,
        window: Duration::from_secs(300),
        prefix: "interop".into(),
        on_redis_down: OnRedisDown::Tempfail,
        redis_timeout: Duration::from_secs(2),
        stamp: true,
    };
    let sink = Sink::start().unwrap();
    let mut postfixes = Vec::new();
    let mut milters = Vec::new();
    for transport in [Transport::Unix, Transport::Tcp] {
        let milter = RateLimit::new(settings.clone(), counters.clone()).milter();
        let server = MilterServer::serving(transport, move || milter.clone()).unwrap();
        postfixes.push(Postfix::start(&server.postfix_spec(), sink.port()).unwrap());
        milters.push(server);
    }
    let mut mail_codes = Vec::new();
    for n in 0..5 {
        let port = postfixes[n % 2].port();
        let msg = interop::numbered_message("rate", n);
        let r = interop::send(port, "alice@example.org", &[BOB], &msg).expect("SMTP dialogue");
        mail_codes.push(r.mail.code);
        if n >= 3 {
            assert_eq!(
                r.mail.text(),
                "4.7.1 alice@example.org sent more than 3 messages; try again later",
                "{r}"
            );
        }
    }
    assert_eq!(mail_codes, [250, 250, 250, 451, 451]);
    // Another sender is not held back by alice's count.
    let r = interop::send(
        postfixes[1].port(),
        "carol@example.org",
        &[BOB],
        &interop::numbered_message("rate", 9),
    )
    .expect("SMTP dialogue");
    assert!(r.accepted(), "{r}");
    let delivered = sink.wait_for(4, DELIVERY_TIMEOUT).unwrap();
    assert_eq!(
        sink.settle(Duration::from_millis(500)).len(),
        4,
        "exactly four delivered"
    );
    let sorted = |name: &str| {
        let mut v: Vec<String> = delivered.iter().filter_map(|m| m.header(name)).collect();
        v.sort();
        v
    };
    assert_eq!(sorted("Subject"), ["rate 0", "rate 1", "rate 2", "rate 9"]);
    // Each stamped with its sender's count, taken across both instances.
    assert_eq!(sorted("X-Rate-Count"), ["1/3", "1/3", "2/3", "3/3"]);
    assert_eq!(counters.limited.get(), 2);
    assert_eq!(counters.redis_failures.get(), 0);
}
