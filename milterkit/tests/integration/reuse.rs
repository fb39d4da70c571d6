//! The MTA side sends the same transaction again without splitting it again, never confuses two
//! messages of the same size, and leaves the delivery out when asked (what `milterkit bench`
//! does).

use std::future::IntoFuture;

use milterkit::mta::{Connection, Profile, Transaction};
use milterkit::{Actions, Decision, Eom, Milter, Result, Stages};

#[derive(Default)]
struct Stamp;

impl Milter for Stamp {
    type Message = ();
    const STAGES: Stages = Stages::EOM;
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        eom.add_header("X-Stamp", "1")?;
        Ok(Decision::Continue)
    }
}

#[tokio::test(flavor = "current_thread")]
async fn a_transaction_sent_again_or_another_of_the_same_size_is_delivered_as_it_is() {
    let listener = milterkit::bind("inet:0@127.0.0.1").await.unwrap();
    let spec = listener.local_spec().unwrap().to_string();
    tokio::spawn(milterkit::serve(listener, Stamp::default).into_future());
    let a = Transaction::new()
        .to("<b@example.net>")
        .message("Subject: a\r\n\r\nbody one\n");
    let b = Transaction::new()
        .to("<b@example.net>")
        .message("Subject: b\r\n\r\nbody two\n");
    let mut conn = Connection::open(&spec, Profile::postfix()).await.unwrap();
    let mut delivered = Vec::new();
    for tx in [&a, &a, &b, &a] {
        let out = conn.run(tx).await.unwrap();
        delivered.push(out.delivery.unwrap().message);
    }
    assert_eq!(delivered[0], "Subject: a\r\nX-Stamp: 1\r\n\r\nbody one\n");
    assert_eq!(delivered[1], delivered[0]);
    assert_eq!(delivered[2], "Subject: b\r\nX-Stamp: 1\r\n\r\nbody two\n");
    assert_eq!(delivered[3], delivered[0]);
    let mut lean = Connection::open(&spec, Profile::postfix())
        .await
        .unwrap()
        .without_delivery();
    let out = lean.run(&a).await.unwrap();
    assert!(out.delivery.is_none());
    assert_eq!(out.modifications.len(), 1);
}
