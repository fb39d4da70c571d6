//! The chain driving milterkit children served on loopback, tested in process through the
//! harness: merging, macros, leading spaces, evaluation mode, fail-safes, conditions, reconnects
//! and metrics.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::future::IntoFuture;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use milterkit::chain::{Chain, ChainMetrics, Child, FailSafe, Mode, Settings};
use milterkit::mta::{Transaction, Verdict};
use milterkit::testing::Harness;
use milterkit::{
    Actions, Body, Connect, Decision, Eom, Header, Helo, Mail, Milter, Modification, Offer,
    ProtocolFlags, Rcpt, Reply, Request, Result, Stage,
};
use tokio::sync::oneshot;

/// A child milter that writes down what it sees and decides as told.
#[derive(Clone, Default)]
struct Kid {
    seen: Arc<Mutex<Vec<String>>>,
    /// Decisions by stage; at RCPT, by recipient as sent.
    at: HashMap<Stage, Decision>,
    rcpt: HashMap<&'static str, Decision>,
    /// A header added at end of message.
    add: Option<(&'static str, &'static str)>,
    /// A replacement body.
    body: Option<&'static str>,
    leading_space: bool,
    /// How long CONNECT, MAIL and end of message take.
    slow: HashMap<Stage, Duration>,
    /// How long RCPT takes for one recipient.
    slow_rcpt: Option<(&'static str, Duration)>,
    /// Asks for the recipients the MTA rejected (`SMFIP_RCPT_REJ`).
    rcpt_rej: bool,
    /// Header changes at end of message: name, index, value (empty: delete).
    changes: Vec<(&'static str, u32, &'static str)>,
}

impl Kid {
    /// A child that adds `name: value` at end of message.
    fn adding(name: &'static str, value: &'static str) -> Kid {
        Kid {
            add: Some((name, value)),
            ..Kid::default()
        }
    }
    /// This child deciding `decision` at `stage`.
    fn at(mut self, stage: Stage, decision: Decision) -> Kid {
        self.at.insert(stage, decision);
        self
    }
    /// This child taking `how_long` at `stage` (CONNECT, MAIL or EOM).
    fn slow_at(mut self, stage: Stage, how_long: Duration) -> Kid {
        self.slow.insert(stage, how_long);
        self
    }
    async fn wait(&self, stage: Stage) {
        if let Some(d) = self.slow.get(&stage) {
            tokio::time::sleep(*d).await;
        }
    }
    fn note(&self, what: String) {
        self.seen.lock().unwrap().push(what);
    }
    fn seen(&self) -> Vec<String> {
        self.seen.lock().unwrap().clone()
    }
    fn decide(&self, stage: Stage) -> Decision {
        self.at.get(&stage).cloned().unwrap_or(Decision::Continue)
    }
}

impl Milter for Kid {
    type Message = ();
    const ACTIONS: Actions = Actions::ADD_HEADER
        .union(Actions::CHANGE_BODY)
        .union(Actions::CHANGE_HEADER);

    async fn negotiate(&mut self, _: &Offer, request: &mut Request) -> Result<()> {
        request.options |= ProtocolFlags::SKIP;
        if self.leading_space {
            request.options |= ProtocolFlags::HDR_LEADSPC;
        }
        if self.rcpt_rej {
            request.options |= ProtocolFlags::RCPT_REJ;
        }
        Ok(())
    }
    async fn connect(&mut self, c: Connect<'_>) -> Result<Decision> {
        self.wait(Stage::Connect).await;
        self.note(format!(
            "connect {} j={:?}",
            c.address(),
            c.macro_value("j")
        ));
        Ok(self.decide(Stage::Connect))
    }
    async fn helo(&mut self, h: Helo<'_>) -> Result<Decision> {
        self.note(format!("helo {}", h.name()));
        Ok(self.decide(Stage::Helo))
    }
    async fn mail(&mut self, _: &mut (), m: Mail<'_>) -> Result<Decision> {
        self.wait(Stage::Mail).await;
        let auth = m.macro_value("{auth_authen}");
        self.note(format!("mail {} auth={auth:?}", m.address()));
        Ok(self.decide(Stage::Mail))
    }
    async fn rcpt(&mut self, _: &mut (), r: Rcpt<'_>) -> Result<Decision> {
        let addr = r.address().to_string();
        self.note(format!(
            "rcpt {addr} rcpt_addr={:?}",
            r.macro_value("{rcpt_addr}")
        ));
        if let Some((slow, how_long)) = self.slow_rcpt {
            if addr == slow {
                tokio::time::sleep(how_long).await;
            }
        }
        let d = self.rcpt.get(addr.as_str()).cloned();
        Ok(d.unwrap_or_else(|| self.decide(Stage::Rcpt)))
    }
    async fn header(&mut self, _: &mut (), h: Header<'_>) -> Result<Decision> {
        self.note(format!("header {}:{}", h.name(), h.value()));
        Ok(self.decide(Stage::Header))
    }
    async fn body(&mut self, _: &mut (), b: Body<'_>) -> Result<Decision> {
        self.note(format!("body {}", b.chunk().len()));
        Ok(self.decide(Stage::Body))
    }
    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        self.note("eom".into());
        self.wait(Stage::Eom).await;
        if let Some((name, value)) = self.add {
            eom.add_header(name, value)?;
        }
        if let Some(body) = self.body {
            eom.replace_body(body)?;
        }
        for (name, index, value) in &self.changes {
            match *value {
                "" => eom.delete_header(name, *index)?,
                value => eom.change_header(name, *index, value)?,
            }
        }
        Ok(self.decide(Stage::Eom))
    }
    async fn abort(&mut self, _: (), _: milterkit::Abort<'_>) -> Result<()> {
        self.note("abort".into());
        Ok(())
    }
}

/// A child served on a loopback port until dropped.
struct Served {
    spec: String,
    kid: Kid,
    stop: Option<oneshot::Sender<()>>,
}

impl Drop for Served {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
    }
}

async fn serve_on(kid: Kid, spec: &str) -> Served {
    let listener = milterkit::bind(spec).await.unwrap();
    let spec = listener.local_spec().unwrap().to_string();
    let (stop, stopped) = oneshot::channel::<()>();
    let factory = {
        let kid = kid.clone();
        move || kid.clone()
    };
    tokio::spawn(
        milterkit::serve(listener, factory)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .into_future(),
    );
    Served {
        spec,
        kid,
        stop: Some(stop),
    }
}

async fn serve(kid: Kid) -> Served {
    serve_on(kid, "inet:0@127.0.0.1").await
}

/// A socket nothing listens on.
fn nobody() -> String {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("inet:{port}@127.0.0.1")
}

/// [`message`] through a chain of `children`, as Postfix sends it.
async fn once(children: Vec<Child>) -> milterkit::mta::Outcome {
    chain_of(children).run(&message()).await.unwrap()
}

/// The harness (as Postfix) in front of a chain of `children`.
fn chain_of(children: Vec<Child>) -> Harness<Chain> {
    Harness::postfix(Chain::new(settings(children)))
}

fn settings(children: Vec<Child>) -> Arc<Settings> {
    Arc::new(Settings::new(children).unwrap())
}

fn message() -> Transaction {
    Transaction::new()
        .from("<alice@example.org>")
        .to("<bob@example.net>")
        .to("<carol@example.com>")
        .with_macro(Stage::Mail, "{auth_authen}", "alice")
        .message("From: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n")
}

/// `chain` counting into a registry of its own, and the endpoint that shows it.
fn metered(chain: Chain) -> (Chain, milterkit::metrics::Metrics) {
    let mut registry = prometheus_client::registry::Registry::default();
    let metrics = ChainMetrics::register(&mut registry);
    let exposed = milterkit::metrics::Metrics::with_registry(registry);
    (chain.with_metrics(metrics), exposed)
}

/// Asserts that what `exposed` shows has each of `lines`.
fn shows(exposed: &milterkit::metrics::Metrics, lines: &[&str]) {
    let text = exposed.encode();
    for line in lines {
        assert!(text.contains(line), "{line} missing:\n{text}");
    }
}

/// The decision `out` got at `stage`.
fn decision_at(out: &milterkit::mta::Outcome, stage: Stage) -> Decision {
    let decision = out.decision(stage).cloned();
    decision.unwrap_or_else(|| panic!("no decision at {stage}: {out:?}"))
}

fn delivered(out: &milterkit::mta::Outcome) -> String {
    let d = out.delivery.as_ref().expect("delivered");
    String::from_utf8_lossy(&d.message).into_owned()
}

#[tokio::test]
async fn modifications_merge_in_child_order_and_macros_reach_every_child() {
    let a = serve(Kid::adding("X-A", "from a")).await;
    let b = serve(Kid::adding("X-B", "from b")).await;
    let mut h = chain_of(vec![Child::new("a", &a.spec), Child::new("b", &b.spec)]);
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    let msg = delivered(&out);
    let (xa, xb) = (
        msg.find("X-A: from a").unwrap(),
        msg.find("X-B: from b").unwrap(),
    );
    assert!(xa < xb, "child order kept: {msg}");
    for kid in [&a.kid, &b.kid] {
        let seen = kid.seen();
        assert!(
            seen[0].starts_with("connect 192.0.2.1 j=Some(\"mx.example.org\")"),
            "{seen:?}"
        );
        assert!(
            seen.contains(&"mail <alice@example.org> auth=Some(\"alice\")".to_string()),
            "{seen:?}"
        );
        assert!(
            seen.iter().any(
                |s| s.starts_with("rcpt <bob@example.net> rcpt_addr=Some(\"bob@example.net\")")
            ),
            "{seen:?}"
        );
        assert!(seen.contains(&"header Subject:hi".to_string()), "{seen:?}");
        assert_eq!(seen.iter().filter(|s| *s == "eom").count(), 1, "{seen:?}");
    }
    h.quit().await.unwrap();
}

#[tokio::test]
async fn the_first_refusal_wins_and_later_children_do_not_see_that_command() {
    let a = serve(Kid {
        rcpt: HashMap::from([("<bob@example.net>", Decision::Reject)]),
        ..Kid::default()
    })
    .await;
    let b = serve(Kid::default()).await;
    let mut h = chain_of(vec![Child::new("a", &a.spec), Child::new("b", &b.spec)]);
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.refused.len(), 1, "{out:?}");
    assert_eq!(&out.refused[0].0[..], b"<bob@example.net>");
    assert_eq!(
        out.verdict,
        Some(Verdict::Accept),
        "carol still gets it: {out:?}"
    );
    let seen_b = b.kid.seen();
    assert!(!seen_b.iter().any(|s| s.contains("bob@")), "{seen_b:?}");
    assert!(seen_b.iter().any(|s| s.contains("carol@")), "{seen_b:?}");

    // A message-level refusal ends the message for everyone.
    let c = serve(Kid {
        at: HashMap::from([(
            Stage::Mail,
            Decision::Reply(Reply::new(550, "5.7.1", "no").unwrap()),
        )]),
        ..Kid::default()
    })
    .await;
    let d = serve(Kid::default()).await;
    let mut h = chain_of(vec![Child::new("c", &c.spec), Child::new("d", &d.spec)]);
    let out = h.run(&message()).await.unwrap();
    assert!(
        matches!(out.decision(Stage::Mail), Some(Decision::Reply(r)) if r.code() == 550),
        "{out:?}"
    );
    assert!(
        !d.kid.seen().iter().any(|s| s.starts_with("mail")),
        "{:?}",
        d.kid.seen()
    );
}

#[tokio::test]
async fn accept_ends_a_childs_part_and_all_accepting_accepts() {
    let a = serve(Kid::adding("X-A", "never").at(Stage::Mail, Decision::Accept)).await;
    let b = serve(Kid::adding("X-B", "b")).await;
    let mut h = chain_of(vec![Child::new("a", &a.spec), Child::new("b", &b.spec)]);
    let out = h.run(&message()).await.unwrap();
    let msg = delivered(&out);
    assert!(msg.contains("X-B: b") && !msg.contains("X-A"), "{msg}");
    assert!(
        !a.kid.seen().iter().any(|s| s.starts_with("header")),
        "{:?}",
        a.kid.seen()
    );

    let c = serve(Kid::default().at(Stage::Connect, Decision::Accept)).await;
    let out = once(vec![Child::new("c", &c.spec)]).await;
    assert_eq!(decision_at(&out, Stage::Connect), Decision::Accept);
}

#[tokio::test]
async fn an_evaluated_child_changes_nothing_and_is_counted() {
    let judge = serve(Kid::adding("X-Spam", "yes").at(Stage::Eom, Decision::Reject)).await;
    let signer = serve(Kid::adding("X-Signed", "1")).await;
    let mut eval = Child::new("judge", &judge.spec);
    eval.mode = Mode::Evaluate;
    let s = settings(vec![eval, Child::new("signer", &signer.spec)]);
    let (chain, exposed) = metered(Chain::new(s));
    let mut h = Harness::postfix(chain);
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    let msg = delivered(&out);
    assert!(
        msg.contains("X-Signed: 1") && !msg.contains("X-Spam"),
        "{msg}"
    );
    shows(
        &exposed,
        &[
            "milter_chain_child_decisions_total{child=\"judge\",stage=\"EOM\",decision=\"reject\",mode=\"evaluate\"} 1",
            "milter_chain_child_modifications_total{child=\"judge\",kind=\"add_header\",mode=\"evaluate\"} 1",
            "milter_chain_child_decisions_total{child=\"signer\",stage=\"EOM\",decision=\"continue\",mode=\"enforce\"} 1",
            "milter_chain_child_duration_seconds_count{child=\"signer\",stage=\"RCPT\"} 2",
        ],
    );
}

#[tokio::test]
async fn a_down_child_gets_its_own_fail_safe() {
    let up = serve(Kid::adding("X-Up", "1")).await;
    // Skip: the message goes on without it.
    let mut down = Child::new("down", nobody());
    down.fail_safe = FailSafe::Skip;
    let s = settings(vec![down, Child::new("up", &up.spec)]);
    let (chain, exposed) = metered(Chain::new(s.clone()));
    let mut h = Harness::postfix(chain);
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    assert!(delivered(&out).contains("X-Up: 1"));
    // Connected to at negotiation only, not again in the same message.
    shows(
        &exposed,
        &[
            "milter_chain_child_fail_safe_total{child=\"down\",fail_safe=\"skip\"} 1",
            "milter_chain_child_errors_total{child=\"down\",kind=\"connect\"} 1",
        ],
    );
    // The next message on the connection tries it once more.
    h.run(&message()).await.unwrap();
    shows(
        &exposed,
        &[
            "milter_chain_child_errors_total{child=\"down\",kind=\"connect\"} 2",
            "milter_chain_child_fail_safe_total{child=\"down\",fail_safe=\"skip\"} 2",
        ],
    );

    // Tempfail (the default): the message is deferred at MAIL.
    let out = once(vec![
        Child::new("down", nobody()),
        Child::new("up", &up.spec),
    ])
    .await;
    assert_eq!(decision_at(&out, Stage::Mail), Decision::Tempfail);

    // Reject.
    let mut down = Child::new("down", nobody());
    down.fail_safe = FailSafe::Reject;
    let out = once(vec![down, Child::new("up", &up.spec)]).await;
    assert_eq!(decision_at(&out, Stage::Mail), Decision::Reject);
}

#[tokio::test]
async fn a_slow_child_times_out_into_its_fail_safe_and_the_rest_go_on() {
    let slow = serve(Kid::adding("X-Slow", "1").slow_at(Stage::Mail, Duration::from_secs(3))).await;
    let quick = serve(Kid::adding("X-Quick", "1")).await;
    let mut child = Child::new("slow", &slow.spec);
    child.command_timeout = Duration::from_millis(200);
    child.fail_safe = FailSafe::Skip;
    let mut h = chain_of(vec![child, Child::new("quick", &quick.spec)]);
    let started = std::time::Instant::now();
    let out = h.run(&message()).await.unwrap();
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "the chain did not wait for the slow child"
    );
    let msg = delivered(&out);
    assert!(
        msg.contains("X-Quick: 1") && !msg.contains("X-Slow"),
        "{msg}"
    );
}

#[tokio::test]
async fn a_child_that_comes_back_is_used_again_with_connect_and_helo_replayed() {
    let spec = nobody();
    let mut down = Child::new("late", &spec);
    down.fail_safe = FailSafe::Skip;
    let mut h = chain_of(vec![down]);
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    let late = serve_on(
        Kid {
            add: Some(("X-Late", "1")),
            ..Kid::default()
        },
        &spec,
    )
    .await;
    let out = h.run(&message()).await.unwrap();
    assert!(delivered(&out).contains("X-Late: 1"), "{out:?}");
    let seen = late.kid.seen();
    assert!(seen[0].starts_with("connect 192.0.2.1"), "{seen:?}");
    assert!(seen[1].starts_with("helo "), "{seen:?}");
}

#[tokio::test]
async fn conditions_choose_clients_senders_and_recipients() {
    let local = serve(Kid::default()).await;
    let outside = serve(Kid::default()).await;
    let authed = serve(Kid::default()).await;
    let net = serve(Kid::default()).await;
    let mut only_local = Child::new("local", &local.spec);
    only_local.when = toml_when("client = [\"10.0.0.0/8\"]");
    let mut not_local = Child::new("outside", &outside.spec);
    not_local.when = toml_when("not_client = [\"10.0.0.0/8\"], authenticated = false");
    let mut only_authed = Child::new("authed", &authed.spec);
    only_authed.when = toml_when("authenticated = true");
    let mut only_net = Child::new("net", &net.spec);
    only_net.when = toml_when("rcpt_domain = [\"example.net\"]");
    let mut h = chain_of(vec![only_local, not_local, only_authed, only_net]);
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");

    assert!(
        local.kid.seen().is_empty(),
        "client 192.0.2.1 is not in 10/8: {:?}",
        local.kid.seen()
    );
    let seen = outside.kid.seen();
    assert!(
        seen[0].starts_with("connect") && !seen.iter().any(|s| s.starts_with("mail")),
        "alice authenticated: {seen:?}"
    );
    assert!(
        authed.kid.seen().iter().any(|s| s.starts_with("header")),
        "{:?}",
        authed.kid.seen()
    );
    let seen = net.kid.seen();
    assert!(
        seen.iter()
            .any(|s| s.starts_with("mail <alice@example.org>")),
        "{seen:?}"
    );
    assert!(
        seen.iter().any(|s| s.contains("bob@example.net")),
        "{seen:?}"
    );
    assert!(
        !seen.iter().any(|s| s.contains("carol@example.com")),
        "{seen:?}"
    );

    // A message with no recipient in its domains: not at all.
    net.kid.seen.lock().unwrap().clear();
    let tx = Transaction::new()
        .from("<a@example.org>")
        .to("<c@example.com>")
        .message("S: x\r\n\r\nb\r\n");
    let out = h.run(&tx).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    let seen = net.kid.seen();
    assert!(
        !seen.iter().any(|s| s.starts_with("mail") || s == "eom"),
        "{seen:?}"
    );
}

fn toml_when(fields: &str) -> milterkit::chain::When {
    let text =
        format!("[[milter]]\nname = \"x\"\nsocket = \"inet:1@127.0.0.1\"\nwhen = {{ {fields} }}\n");
    Settings::from_toml(&text).unwrap().milters[0].when.clone()
}

#[tokio::test]
async fn leading_spaces_follow_each_childs_agreement() {
    let spaced = serve(Kid {
        leading_space: true,
        add: Some(("X-Spaced", "  two")),
        ..Kid::default()
    })
    .await;
    let plain = serve(Kid::adding("X-Plain", "one")).await;
    let mut h = chain_of(vec![
        Child::new("spaced", &spaced.spec),
        Child::new("plain", &plain.spec),
    ]);
    let out = h.run(&message()).await.unwrap();
    assert!(h.agreement().unwrap().leading_space(), "one child wants it");
    assert!(
        spaced
            .kid
            .seen()
            .contains(&"header Subject: hi".to_string()),
        "{:?}",
        spaced.kid.seen()
    );
    assert!(
        plain.kid.seen().contains(&"header Subject:hi".to_string()),
        "{:?}",
        plain.kid.seen()
    );
    let msg = delivered(&out);
    assert!(
        msg.contains("X-Spaced:  two\r\n") && msg.contains("X-Plain: one\r\n"),
        "{msg}"
    );
}

#[tokio::test]
async fn each_child_sees_the_message_as_the_children_before_it_left_it() {
    let a = serve(Kid {
        body: Some("from a\r\n"),
        add: Some(("X-A", "first")),
        at: HashMap::from([(Stage::Body, Decision::Skip)]),
        ..Kid::default()
    })
    .await;
    let b = serve(Kid::adding("X-B", "second")).await;
    let c = serve(Kid {
        body: Some("from c\r\n"),
        ..Kid::default()
    })
    .await;
    let mut h = chain_of(vec![
        Child::new("a", &a.spec),
        Child::new("b", &b.spec),
        Child::new("c", &c.spec),
    ]);
    let big = format!("Subject: big\r\n\r\n{}", "x".repeat(70_000) + "\r\n");
    let tx = Transaction::new()
        .from("<a@example.org>")
        .to("<b@example.net>")
        .message(big);
    let out = h.run(&tx).await.unwrap();
    let msg = delivered(&out);
    assert_eq!(
        msg,
        "Subject: big\r\nX-A: first\r\nX-B: second\r\n\r\nfrom c\r\n"
    );
    let body_of = |kid: &Kid| -> Vec<String> {
        kid.seen()
            .into_iter()
            .filter(|s| s.starts_with("body"))
            .collect()
    };
    assert_eq!(
        body_of(&a.kid),
        ["body 65535"],
        "a skipped after its first chunk"
    );
    assert_eq!(body_of(&b.kid), ["body 8"], "b got a's body");
    assert!(
        b.kid.seen().contains(&"header X-A:first".to_string()),
        "{:?}",
        b.kid.seen()
    );
    let seen_c = c.kid.seen();
    assert!(
        seen_c.contains(&"header X-B:second".to_string()),
        "{seen_c:?}"
    );
    // One replacement body went to the MTA, not a's and c's one after the other.
    let bodies = out
        .modifications
        .iter()
        .filter(|m| matches!(m, milterkit::Modification::ReplaceBody { .. }))
        .count();
    assert_eq!(bodies, 1, "{:?}", out.modifications);
}

/// A child that wants only end of message, as a signer may.
#[derive(Clone, Default)]
struct Stamp;

impl Milter for Stamp {
    type Message = ();
    const STAGES: milterkit::Stages = milterkit::Stages::EOM;
    const ACTIONS: Actions = Actions::ADD_HEADER;
    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        eom.add_header("X-Stamp", "yes")?;
        Ok(Decision::Continue)
    }
}

#[tokio::test]
async fn children_that_want_only_end_of_message_get_it() {
    let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
    let spec = listener.local_spec().unwrap().to_string();
    tokio::spawn(milterkit::serve(listener, || Stamp).into_future());
    let s = settings(vec![Child::new("one", &spec), Child::new("two", &spec)]);
    let mut h = Harness::sendmail(Chain::new(s.clone()));
    let out = h.run(&message()).await.unwrap();
    assert_eq!(
        delivered(&out).matches("X-Stamp: yes").count(),
        2,
        "{out:?}"
    );
    // Only what a child answered is timed and counted: each answered EOM alone.
    let (chain, exposed) = metered(Chain::new(s.clone()));
    let mut counted = Harness::sendmail(chain);
    counted.run(&message()).await.unwrap();
    let text = exposed.encode();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let stage_eom = line.contains("stage=\"EOM\"") || line.contains("stage=\"NEGOTIATE\"");
        let counted = !line.ends_with(" 0") && !line.ends_with(" 0.0");
        let decisions = line.starts_with("milter_chain_child_decisions_total");
        let durations = line.starts_with("milter_chain_child_duration_seconds_count");
        assert!(
            !(decisions || durations) || stage_eom || !counted,
            "nothing was sent at that stage: {line}"
        );
    }
    assert!(
        text.contains("milter_chain_child_decisions_total{child=\"one\",stage=\"EOM\",decision=\"continue\",mode=\"enforce\"} 1"),
        "{text}"
    );
    let agreed = h.agreement().unwrap();
    assert!(
        agreed.sends(Stage::Mail),
        "the chain needs MAIL to start a message"
    );
    assert!(
        !agreed.expects_reply(Stage::Mail),
        "but no child wants to answer it"
    );
    assert!(
        !agreed.sends(Stage::Rcpt) && !agreed.sends(Stage::Unknown),
        "{agreed:?}"
    );
}

#[tokio::test]
async fn end_of_message_waits_for_the_eom_timeout_not_the_command_timeout() {
    let slow =
        serve(Kid::adding("X-Slow", "done").slow_at(Stage::Eom, Duration::from_millis(500))).await;
    let mut child = Child::new("slow", &slow.spec);
    child.command_timeout = Duration::from_millis(100);
    child.eom_timeout = Duration::from_secs(5);
    let out = once(vec![child.clone()]).await;
    assert!(delivered(&out).contains("X-Slow: done"), "{out:?}");

    // Past its eom timeout: its fail-safe (tempfail), and the chain answers in time.
    child.eom_timeout = Duration::from_millis(200);
    let out = once(vec![child]).await;
    assert_eq!(decision_at(&out, Stage::Eom), Decision::Tempfail);
}

#[tokio::test]
async fn a_child_past_the_chains_own_deadline_gets_its_fail_safe_in_time() {
    let slow = serve(Kid::default().slow_at(Stage::Mail, Duration::from_secs(3))).await;
    // A socket whose connections the kernel completes and nobody answers.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent_spec = format!("inet:{}@127.0.0.1", silent.local_addr().unwrap().port());
    for spec in [slow.spec.as_str(), silent_spec.as_str()] {
        let mut child = Child::new("late", spec);
        child.connect_timeout = Duration::from_secs(30);
        child.command_timeout = Duration::from_secs(30);
        child.fail_safe = FailSafe::Reject;
        let chain = Chain::new(settings(vec![child]))
            .with_deadlines(Duration::from_millis(500), Duration::from_secs(5));
        let config = milterkit::Config {
            handler_timeout: Duration::from_millis(500),
            ..milterkit::Config::default()
        };
        let mut h = Harness::with_config(chain, milterkit::mta::Profile::postfix(), config);
        let started = std::time::Instant::now();
        let out = h.run(&message()).await.unwrap();
        assert_eq!(
            out.decision(Stage::Mail),
            Some(&Decision::Reject),
            "{spec}: the child's fail-safe, not the chain's (tempfail): {out:?}"
        );
        assert!(started.elapsed() < Duration::from_secs(3), "{spec}");
    }
}

/// A child that wants header fields and the body but not end of headers.
#[derive(Clone, Default)]
struct NoEoh(Arc<Mutex<Vec<String>>>);

impl Milter for NoEoh {
    type Message = ();
    const STAGES: milterkit::Stages = milterkit::Stages::HEADER
        .union(milterkit::Stages::BODY)
        .union(milterkit::Stages::EOM);
    async fn header(&mut self, _: &mut (), h: Header<'_>) -> Result<Decision> {
        self.0
            .lock()
            .unwrap()
            .push(format!("{}={}", h.name(), h.value()));
        Ok(Decision::Continue)
    }
    async fn body(&mut self, _: &mut (), b: Body<'_>) -> Result<Decision> {
        self.0
            .lock()
            .unwrap()
            .push(String::from_utf8_lossy(b.chunk()).into_owned());
        Ok(Decision::Continue)
    }
}

#[tokio::test]
async fn the_body_stays_apart_from_the_headers_without_end_of_headers() {
    let seen = NoEoh::default();
    let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
    let spec = listener.local_spec().unwrap().to_string();
    let factory = {
        let seen = seen.clone();
        move || seen.clone()
    };
    tokio::spawn(milterkit::serve(listener, factory).into_future());
    let mut h = chain_of(vec![Child::new("n", &spec)]);
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    assert!(!h.agreement().unwrap().sends(Stage::Eoh));
    assert_eq!(
        *seen.0.lock().unwrap(),
        ["From=alice@example.org", "Subject=hi", "hello\r\n"]
    );
}

#[tokio::test]
async fn a_message_past_max_message_size_is_tempfailed() {
    let kid = serve(Kid::default()).await;
    let text = format!(
        "max_message_size = 1024\n[[milter]]\nname = \"k\"\nsocket = \"{}\"\n",
        kid.spec
    );
    let s = Arc::new(Settings::from_toml(&text).unwrap());
    let mut h = Harness::postfix(Chain::new(s));
    let big = Transaction::new()
        .from("<a@example.org>")
        .to("<b@example.net>")
        .message(format!("Subject: x\r\n\r\n{}\r\n", "y".repeat(2000)));
    let out = h.run(&big).await.unwrap();
    assert!(
        matches!(out.decision(Stage::Eom), Some(Decision::Reply(r)) if r.code() == 452),
        "{out:?}"
    );
    assert!(
        !kid.kid.seen().contains(&"eom".to_string()),
        "{:?}",
        kid.kid.seen()
    );
    let out = h.run(&message()).await.unwrap();
    assert_eq!(
        out.verdict,
        Some(Verdict::Accept),
        "the next message is small: {out:?}"
    );
}

#[tokio::test]
async fn a_child_that_is_not_a_milter_gets_its_fail_safe() {
    // An SMTP server where the milter should be.
    let smtp = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let spec = format!("inet:{}@127.0.0.1", smtp.local_addr().unwrap().port());
    tokio::spawn(async move {
        use tokio::io::AsyncWriteExt;
        while let Ok((mut s, _)) = smtp.accept().await {
            tokio::spawn(async move {
                let _ = s.write_all(b"220 mail.example.net ESMTP\r\n").await;
                tokio::time::sleep(Duration::from_secs(5)).await;
            });
        }
    });
    let (chain, exposed) = metered(Chain::new(settings(vec![Child::new("smtp", &spec)])));
    let out = Harness::postfix(chain).run(&message()).await.unwrap();
    assert_eq!(decision_at(&out, Stage::Mail), Decision::Tempfail);
    shows(
        &exposed,
        &["milter_chain_child_errors_total{child=\"smtp\",kind=\"connect\"} 1"],
    );
}

#[tokio::test]
async fn a_child_that_fails_at_a_recipient_refuses_the_later_ones_and_the_message() {
    // It times out on carol's RCPT; its fail-safe is tempfail (the default).
    let flaky = serve(Kid {
        slow_rcpt: Some(("<carol@example.com>", Duration::from_secs(3))),
        ..Kid::default()
    })
    .await;
    let stamp = serve(Kid::adding("X-Stamp", "1")).await;
    let children = || {
        let mut flaky = Child::new("flaky", &flaky.spec);
        flaky.command_timeout = Duration::from_millis(300);
        vec![flaky, Child::new("stamp", &stamp.spec)]
    };
    let tempfail = |rcpt: &str| (bytes::Bytes::from(rcpt.to_owned()), Decision::Tempfail);

    // bob first (accepted), then carol (its failure): bob's message must not pass unfiltered,
    // as with the child listed directly in Postfix (its default action at every later stage).
    let out = once(children()).await;
    assert_eq!(
        out.refused,
        vec![tempfail("<carol@example.com>")],
        "{out:?}"
    );
    assert_eq!(
        decision_at(&out, Stage::Data),
        Decision::Tempfail,
        "{out:?}"
    );
    assert!(out.delivery.is_none(), "{out:?}");

    // carol first: every later recipient gets the fail-safe too.
    let tx = Transaction::new()
        .from("<alice@example.org>")
        .to("<carol@example.com>")
        .to("<bob@example.net>")
        .message("From: alice@example.org\r\nSubject: hi\r\n\r\nhello\r\n");
    let out = chain_of(children()).run(&tx).await.unwrap();
    assert_eq!(
        out.refused,
        vec![
            tempfail("<carol@example.com>"),
            tempfail("<bob@example.net>")
        ],
        "{out:?}"
    );
    assert!(out.delivery.is_none(), "{out:?}");

    // With skip, the message goes on without it.
    let mut skipping = children();
    skipping[0].fail_safe = FailSafe::Skip;
    let out = once(skipping).await;
    assert!(out.refused.is_empty(), "{out:?}");
    assert!(delivered(&out).contains("X-Stamp: 1"), "{out:?}");
}

#[tokio::test]
async fn a_child_for_some_domains_refusing_its_mail_refuses_each_of_its_recipients() {
    let org = serve(Kid::default().at(Stage::Mail, Decision::Reject)).await;
    let stamp = serve(Kid::adding("X-Stamp", "1")).await;
    let mut only_org = Child::new("org", &org.spec);
    only_org.when = toml_when("rcpt_domain = [\"example.org\"]");
    let tx = Transaction::new()
        .from("<eve@elsewhere.example>")
        .to("<b@other.test>")
        .to("<a@example.org>")
        .to("<c@example.org>")
        .message("From: eve@elsewhere.example\r\nSubject: hi\r\n\r\nhello\r\n");
    let out = chain_of(vec![only_org, Child::new("stamp", &stamp.spec)])
        .run(&tx)
        .await
        .unwrap();
    let reject = |rcpt: &str| (bytes::Bytes::from(rcpt.to_owned()), Decision::Reject);
    assert_eq!(
        out.refused,
        vec![reject("<a@example.org>"), reject("<c@example.org>")],
        "{out:?}"
    );
    // b@other.test is none of its business.
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    let d = out.delivery.as_ref().unwrap();
    let to: Vec<_> = d.recipients.iter().map(|r| r.address.clone()).collect();
    assert_eq!(to, vec![bytes::Bytes::from("<b@other.test>")]);
    assert!(delivered(&out).contains("X-Stamp: 1"), "{out:?}");
    let seen = org.kid.seen();
    assert_eq!(
        seen[2], "mail <eve@elsewhere.example> auth=None",
        "{seen:?}"
    );
    assert!(!seen.iter().any(|s| s.starts_with("rcpt")), "{seen:?}");
}

#[tokio::test]
async fn a_down_child_matters_only_for_mail_its_conditions_let_in() {
    let stamp = serve(Kid::adding("X-Stamp", "1")).await;
    // Down, refusing by fail-safe, for authenticated senders only.
    let mut authed = Child::new("authed", nobody());
    authed.fail_safe = FailSafe::Reject;
    authed.when = toml_when("authenticated = true");
    // Down, tempfailing by fail-safe, for example.org only.
    let mut org = Child::new("org", nobody());
    org.when = toml_when("rcpt_domain = [\"example.org\"]");
    let children = vec![authed, org, Child::new("stamp", &stamp.spec)];
    let tx = |to: &[&str]| {
        let mut tx = Transaction::new().from("<eve@elsewhere.example>");
        for rcpt in to {
            tx = tx.to(*rcpt);
        }
        tx.message("From: eve@elsewhere.example\r\nSubject: hi\r\n\r\nhello\r\n")
    };
    let mut h = chain_of(children);
    // Not authenticated, no recipient at example.org: neither is needed.
    let out = h.run(&tx(&["<b@other.test>"])).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    assert!(delivered(&out).contains("X-Stamp: 1"), "{out:?}");
    // A recipient at example.org: that one gets org's fail-safe, the other goes through.
    let out = h
        .run(&tx(&["<a@example.org>", "<b@other.test>"]))
        .await
        .unwrap();
    assert_eq!(
        out.refused,
        vec![(bytes::Bytes::from("<a@example.org>"), Decision::Tempfail)],
        "{out:?}"
    );
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    // Authenticated: authed's fail-safe, at MAIL.
    let out = h
        .run(&tx(&["<b@other.test>"]).with_macro(Stage::Mail, "{auth_authen}", "eve"))
        .await
        .unwrap();
    assert_eq!(decision_at(&out, Stage::Mail), Decision::Reject, "{out:?}");

    // With skip, its recipients go through without it; it is tried once a message, its
    // fail-safe used once.
    let mut org = Child::new("org", nobody());
    org.fail_safe = FailSafe::Skip;
    org.when = toml_when("rcpt_domain = [\"example.org\"]");
    let (chain, exposed) = metered(Chain::new(settings(vec![
        org,
        Child::new("stamp", &stamp.spec),
    ])));
    let mut h = Harness::postfix(chain);
    let to = ["<a@example.org>", "<c@example.org>"];
    for _ in 0..2 {
        let out = h.run(&tx(&to)).await.unwrap();
        assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
        assert!(out.refused.is_empty(), "{out:?}");
    }
    // At negotiation, then in the second message (not again in the first).
    shows(
        &exposed,
        &[
            "milter_chain_child_errors_total{child=\"org\",kind=\"connect\"} 2",
            "milter_chain_child_fail_safe_total{child=\"org\",fail_safe=\"skip\"} 2",
        ],
    );
}

#[tokio::test]
async fn a_child_failing_before_the_message_gets_its_fail_safe_at_mail_once() {
    let slow = serve(Kid::default().slow_at(Stage::Connect, Duration::from_secs(3))).await;
    let stamp = serve(Kid::adding("X-Stamp", "1")).await;
    let run = |when: &str| {
        let mut slow = Child::new("slow", &slow.spec);
        slow.command_timeout = Duration::from_millis(200);
        if !when.is_empty() {
            slow.when = toml_when(when);
        }
        let (chain, exposed) = metered(Chain::new(settings(vec![
            slow,
            Child::new("stamp", &stamp.spec),
        ])));
        (Harness::postfix(chain), exposed)
    };
    // Timed out at CONNECT: the session goes on, the message gets its fail-safe at MAIL.
    let (mut h, exposed) = run("");
    let out = h.run(&message()).await.unwrap();
    assert_eq!(
        decision_at(&out, Stage::Connect),
        Decision::Continue,
        "{out:?}"
    );
    assert_eq!(
        decision_at(&out, Stage::Mail),
        Decision::Tempfail,
        "{out:?}"
    );
    shows(
        &exposed,
        &[
            "milter_chain_child_errors_total{child=\"slow\",kind=\"timeout\"} 1",
            "milter_chain_child_fail_safe_total{child=\"slow\",fail_safe=\"tempfail\"} 1",
        ],
    );
    let text = exposed.encode();
    assert!(
        !text.contains("kind=\"connect\""),
        "not tried again: {text}"
    );
    // For authenticated senders only: a message from anybody else does not need it.
    let (mut h, _) = run("authenticated = true");
    let mut anonymous = message();
    anonymous = anonymous.with_macro(Stage::Mail, "{auth_authen}", "");
    let out = h.run(&anonymous).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept), "{out:?}");
    assert!(delivered(&out).contains("X-Stamp: 1"), "{out:?}");
}

#[tokio::test]
async fn later_childrens_header_indexes_reach_sendmail_as_listed_directly() {
    // Each deletes X-Multi 1 and changes X-Multi 2, as the helper milters of the interop tests
    // can be asked to.
    let edits = Kid {
        changes: vec![("X-Multi", 1, ""), ("X-Multi", 2, "changed")],
        ..Kid::default()
    };
    let a = serve(edits.clone()).await;
    let b = serve(edits).await;
    let original = "X-Multi: 1\r\nSubject: s\r\nX-Multi: 2\r\nX-Multi: 3\r\n\r\nbody\r\n";
    let tx = Transaction::new()
        .from("<a@example.org>")
        .to("<b@example.net>")
        .message(original);
    for (mta, harness) in [
        ("sendmail", Harness::sendmail as fn(Chain) -> Harness<Chain>),
        ("postfix", Harness::postfix),
    ] {
        let text = format!(
            "mta = \"{mta}\"\n[[milter]]\nname = \"a\"\nsocket = \"{}\"\n\
             [[milter]]\nname = \"b\"\nsocket = \"{}\"\n",
            a.spec, b.spec
        );
        let chain = Chain::new(Arc::new(Settings::from_toml(&text).unwrap()));
        let out = harness(chain).run(&tx).await.unwrap();
        // Listed directly: a's edits with the MTA's rules, then b's on what a left.
        let rules = if mta == "sendmail" {
            milterkit::proto::message::Mta::Sendmail
        } else {
            milterkit::proto::message::Mta::Postfix
        };
        let nobody = milterkit::proto::command::Envelope::new(bytes::Bytes::new());
        let mut direct = milterkit::proto::message::Message::parse(original.into());
        for _ in 0..2 {
            let mods = [
                Modification::ChangeHeader {
                    index: 1,
                    name: "X-Multi".into(),
                    value: bytes::Bytes::new(),
                },
                Modification::ChangeHeader {
                    index: 2,
                    name: "X-Multi".into(),
                    value: " changed".into(),
                },
            ];
            let applied = direct.apply(&nobody, &[], &mods, rules, true);
            direct = milterkit::proto::message::Message::parse(applied.message);
        }
        let want = String::from_utf8_lossy(&direct.to_bytes()).into_owned();
        assert_eq!(out.verdict, Some(Verdict::Accept), "{mta}: {out:?}");
        assert_eq!(delivered(&out), want, "{mta}: {out:?}");
    }
}

#[tokio::test]
async fn recipients_the_mta_rejected_go_only_to_children_that_asked() {
    let asks = serve(Kid {
        rcpt_rej: true,
        ..Kid::default()
    })
    .await;
    let plain = serve(Kid::default()).await;
    let mut h = chain_of(vec![
        Child::new("asks", &asks.spec),
        Child::new("plain", &plain.spec),
    ]);
    // As the MTA reports a recipient it rejected itself: `{rcpt_mailer}` is `error`.
    let tx = Transaction::new()
        .from("<a@example.org>")
        .to("<nobody@example.net>")
        .with_macro(Stage::Rcpt, "{rcpt_mailer}", "error")
        .message("Subject: s\r\n\r\nb\r\n");
    let out = h.run(&tx).await.unwrap();
    assert!(
        h.agreement()
            .unwrap()
            .protocol
            .contains(ProtocolFlags::RCPT_REJ),
        "one child asked, so the chain asks"
    );
    assert_eq!(
        decision_at(&out, Stage::Rcpt),
        Decision::Continue,
        "{out:?}"
    );
    let rcpt = |kid: &Kid| kid.seen().iter().any(|s| s.starts_with("rcpt <nobody@"));
    assert!(rcpt(&asks.kid), "{:?}", asks.kid.seen());
    assert!(!rcpt(&plain.kid), "{:?}", plain.kid.seen());
}
