//! DISCARD in reply to UNKNOWN, behind real Postfix and Sendmail: both discard the open message
//! and go on with the session (the evidence for `Decision::allowed_at`, which refuses DISCARD at
//! CONNECT and HELO only). A later message on a new session is delivered.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::future::IntoFuture;
use std::time::Duration;

use interop::{Mta, Postfix, RunDir, Sendmail, Session, Sink, DELIVERY_TIMEOUT};
use milterkit::{Decision, Milter, Unknown};

/// Discards at an unknown command whose line says so; continues everywhere else.
#[derive(Default)]
struct DiscardsAtUnknown;

impl Milter for DiscardsAtUnknown {
    type Message = ();

    async fn unknown(&mut self, u: Unknown<'_>) -> milterkit::Result<Decision> {
        Ok(if u.line().to_string_lossy().contains("discard") {
            Decision::Discard
        } else {
            Decision::Continue
        })
    }
}

fn discard_at_unknown(mta: Mta) {
    if !interop::require(interop::tools_of(mta)) {
        return;
    }
    let dir = RunDir::new("discard-unknown").unwrap();
    let socket = dir.join("milter.sock");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let listener = rt
        .block_on(milterkit::bind(&format!("unix:{}", socket.display())))
        .unwrap();
    std::fs::set_permissions(&socket, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = std::thread::spawn(move || {
        rt.block_on(
            milterkit::serve(listener, DiscardsAtUnknown::default)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .into_future(),
        )
    });
    let sink = Sink::start().unwrap();
    let spec = socket.display().to_string();
    let (port, log): (u16, Box<dyn Fn() -> String>) = match mta {
        Mta::Postfix => {
            let p = Postfix::start(&format!("unix:{spec}"), sink.port()).unwrap();
            (p.port(), Box::new(move || p.log()))
        }
        Mta::Sendmail => {
            let s = Sendmail::start(&format!("local:{spec}"), sink.port()).unwrap();
            (s.port(), Box::new(move || s.log()))
        }
    };

    // An unknown command inside a transaction, answered DISCARD: the message is taken (250)
    // and thrown away.
    let mut s = Session::connect(port).unwrap();
    s.ehlo("client.test.invalid").unwrap();
    assert!(s
        .command("MAIL FROM:<a@example.org>")
        .unwrap()
        .is_positive());
    assert!(s.command("RCPT TO:<b@example.net>").unwrap().is_positive());
    let refused = s.command("xdiscard now").unwrap();
    assert!(refused.is_permanent(), "{refused}");
    assert_eq!(s.command("DATA").unwrap().code, 354);
    let end = s
        .command("From: <a@example.org>\r\nSubject: discarded\r\n\r\nhello\r\n.")
        .unwrap();
    assert!(end.is_positive(), "{end}");
    s.quit().unwrap();

    // A session without it: delivered.
    let r = interop::send(
        port,
        "<a@example.org>",
        &["<b@example.net>"],
        b"From: <a@example.org>\r\nSubject: kept\r\n\r\nhello\r\n",
    )
    .unwrap();
    assert!(r.accepted(), "{r}");
    let delivered = sink.wait_for(1, DELIVERY_TIMEOUT).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let delivered_now = sink.wait_for(1, DELIVERY_TIMEOUT).unwrap();
    assert_eq!(delivered.len(), 1);
    assert_eq!(delivered_now.len(), 1, "the discarded message arrived");
    assert_eq!(delivered[0].header("Subject").as_deref(), Some("kept"));
    let log = log();
    let seen = match mta {
        Mta::Postfix => "milter-discard: UNKNOWN",
        Mta::Sendmail => "action=unknown, discard",
    };
    assert!(log.contains(seen), "{seen:?} not in the MTA's log:\n{log}");
    let _ = stop.send(());
    server.join().unwrap().unwrap();
}

interop::tests_on_each_mta! { discard_at_unknown: discards_the_message_when_the_milter_discards_at_unknown }
