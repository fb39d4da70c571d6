//! OpenDKIM's `miltertest` plays the MTA from the Lua scripts in interop/lua/ against a milterkit
//! milter served here: decisions at each stage, every end-of-message action, a custom reply, a
//! reject at CONNECT, and negotiation options.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::path::Path;
use std::process::Command;

use milterkit::{Actions, Connect, Decision, Eom, Header, Milter, Rcpt, Reply, Result, Stages};

/// The milter the scripts expect.
#[derive(Default)]
struct Scripted;

/// Whether the subject asked for a tempfail.
#[derive(Default)]
struct Message {
    tempfail: bool,
}

impl Milter for Scripted {
    type Message = Message;
    const STAGES: Stages = Stages::all();
    const ACTIONS: Actions = Actions::ADD_HEADER
        .union(Actions::CHANGE_HEADER)
        .union(Actions::ADD_RCPT)
        .union(Actions::DELETE_RCPT)
        .union(Actions::CHANGE_BODY)
        .union(Actions::QUARANTINE);

    async fn connect(&mut self, c: Connect<'_>) -> Result<Decision> {
        Ok(if c.hostname() == "bad.example" {
            Decision::Reject
        } else {
            Decision::Continue
        })
    }

    async fn rcpt(&mut self, _: &mut Message, r: Rcpt<'_>) -> Result<Decision> {
        if r.address() == "<reject@example.net>" {
            return Ok(Decision::Reply(Reply::new(550, "5.1.1", "no such user")?));
        }
        Ok(Decision::Continue)
    }

    async fn header(&mut self, m: &mut Message, h: Header<'_>) -> Result<Decision> {
        m.tempfail |= h.name() == "Subject" && h.value().ends_with(b"tempfail");
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, m: &mut Message, eom: &mut Eom<'_>) -> Result<Decision> {
        if m.tempfail {
            return Ok(Decision::Reply(Reply::new(451, "4.7.1", "try later")?));
        }
        eom.add_header("X-Lua", "added")?;
        eom.insert_header(0, "X-Lua-Top", "top")?;
        eom.change_header("Subject", 1, "[lua] changed")?;
        eom.delete_header("X-Remove", 1)?;
        eom.add_rcpt("<added@example.net>")?;
        eom.delete_rcpt("<removed@example.net>")?;
        eom.replace_body("new body\r\n")?;
        eom.quarantine("lua quarantine")?;
        Ok(Decision::Continue)
    }
}

async fn run_script(script: &str) {
    let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
    // miltertest reads inet:PORT@HOST with a bare address (no brackets).
    let spec = match listener.local_spec().unwrap() {
        milterkit::SocketSpec::Inet { port, .. } => format!("inet:{port}@127.0.0.1"),
        other => other.to_string(),
    };
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(
        milterkit::serve(listener, Scripted::default)
            .with_graceful_shutdown(async {
                stopped.await.ok();
            })
            .into_future(),
    );
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("lua")
        .join(script);
    let out = tokio::task::spawn_blocking(move || {
        Command::new("miltertest")
            .args(["-v", "-v"])
            .arg("-D")
            .arg(format!("socket={spec}"))
            .arg("-s")
            .arg(path)
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    stop.send(()).unwrap();
    server.await.unwrap().unwrap();
    assert!(
        out.status.success(),
        "{script}: miltertest failed ({})\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn miltertest_sees_every_decision_and_end_of_message_action() {
    if !interop::require(&[interop::Tool::Miltertest]) {
        return;
    }
    run_script("decisions.lua").await;
}

#[tokio::test]
async fn miltertest_sees_a_connect_reject_and_a_custom_reply() {
    if !interop::require(&[interop::Tool::Miltertest]) {
        return;
    }
    run_script("replies.lua").await;
}

#[tokio::test]
async fn miltertest_negotiation_refuses_an_mta_without_the_needed_actions() {
    if !interop::require(&[interop::Tool::Miltertest]) {
        return;
    }
    run_script("negotiate.lua").await;
}
