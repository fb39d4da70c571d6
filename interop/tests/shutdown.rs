//! Graceful shutdown of a milterkit milter while the MTA has messages in flight: the milter is
//! stopped while five messages sit in its end-of-message handler (`slow:eom`, 3 s); every one is
//! accepted by the MTA and delivered, none lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use interop::{Mta, Rig, Transport, DELIVERY_TIMEOUT};

const IN_FLIGHT: usize = 5;

fn message(n: usize) -> Vec<u8> {
    format!(
        "{}X-Test: slow:eom\r\n\
         \r\n\
         Hello.\r\n",
        interop::message_head(&format!("in flight {n}"), &format!("in-flight-{n}"))
    )
    .into_bytes()
}

fn loses_none(mta: Mta, transport: Transport) {
    let Some(mut rig) =
        Rig::start(mta, transport).unwrap_or_else(|e| panic!("cannot start {mta:?}: {e}"))
    else {
        return;
    };
    let port = rig.port();
    let senders: Vec<_> = (0..IN_FLIGHT)
        .map(|n| {
            std::thread::spawn(move || {
                interop::send(port, "alice@example.org", &["bob@example.net"], &message(n)).unwrap()
            })
        })
        .collect();
    // Every message reaches end of message within a second; each stays there for 3 s.
    std::thread::sleep(Duration::from_millis(1500));
    rig.milter
        .stop()
        .expect("the milter stops gracefully once its messages are done");
    for s in senders {
        let r = s.join().unwrap();
        let end = r
            .end
            .as_ref()
            .unwrap_or_else(|| panic!("no reply to the dot: {r}"));
        assert_eq!(end.code, 250, "{r}");
    }
    let delivered = rig.sink.wait_for(IN_FLIGHT, DELIVERY_TIMEOUT).unwrap();
    assert_eq!(delivered.len(), IN_FLIGHT, "none lost");
}

#[test]
fn postfix_tcp_loses_no_message_in_flight_when_the_milter_shuts_down() {
    loses_none(Mta::Postfix, Transport::Tcp);
}

#[test]
fn postfix_unix_loses_no_message_in_flight_when_the_milter_shuts_down() {
    loses_none(Mta::Postfix, Transport::Unix);
}

#[test]
fn sendmail_tcp_loses_no_message_in_flight_when_the_milter_shuts_down() {
    loses_none(Mta::Sendmail, Transport::Tcp);
}
