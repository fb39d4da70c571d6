//! Every API item of the seed libraries (libmilter, node-milter, milterjs, phalaaxx/milter,
//! cwedgwood/milter) exercised through its milterkit home; the rows of the crate's mapping table.

use std::sync::{Arc, Mutex};

use milterkit::mta::{Profile, Transaction, Verdict};
use milterkit::testing::Harness;
use milterkit::{
    Abort, Actions, Body, Connect, Data, Decision, Eoh, Eom, Header, Helo, MacroStage, Mail,
    Milter, Modification, Offer, ProtocolFlags, Rcpt, Request, Result, Stage, Stages, Unknown,
};

/// Records every callback with its arguments and one macro, like the reference C milter's log.
#[derive(Default, Clone)]
struct Recorder {
    log: Arc<Mutex<Vec<String>>>,
    messages: u32,
}

impl Recorder {
    fn push(&self, line: String) {
        self.log.lock().unwrap().push(line);
    }
    fn lines(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }
}

/// Per-message state: what the recorder saw of this message.
#[derive(Default)]
struct Seen {
    rcpts: u32,
    headers: u32,
    body: usize,
}

impl Milter for Recorder {
    type Message = Seen;
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn negotiate(&mut self, offer: &Offer, request: &mut Request) -> Result<()> {
        self.push(format!("negotiate v{}", offer.version));
        request.macros.set(MacroStage::MAIL, ["{mail_addr}", "i"]);
        Ok(())
    }
    async fn connect(&mut self, c: Connect<'_>) -> Result<Decision> {
        self.push(format!(
            "connect {} {} {:?}",
            c.hostname(),
            c.port(),
            c.ip()
        ));
        Ok(Decision::Continue)
    }
    async fn helo(&mut self, h: Helo<'_>) -> Result<Decision> {
        self.push(format!("helo {}", h.name()));
        Ok(Decision::Continue)
    }
    async fn mail(&mut self, _: &mut Seen, m: Mail<'_>) -> Result<Decision> {
        let args: Vec<String> = m.args().map(|a| a.to_string()).collect();
        let addr = m
            .macro_value("mail_addr")
            .map(|v| v.to_string())
            .unwrap_or_default();
        self.push(format!("mail {} {args:?} mail_addr={addr}", m.address()));
        Ok(Decision::Continue)
    }
    async fn rcpt(&mut self, s: &mut Seen, r: Rcpt<'_>) -> Result<Decision> {
        s.rcpts += 1;
        self.push(format!("rcpt {}", r.address()));
        Ok(Decision::Continue)
    }
    async fn data(&mut self, s: &mut Seen, d: Data<'_>) -> Result<Decision> {
        let i = d
            .macro_value("i")
            .map(|v| v.to_string())
            .unwrap_or_default();
        self.push(format!("data rcpts={} i={}", s.rcpts, !i.is_empty()));
        Ok(Decision::Continue)
    }
    async fn header(&mut self, s: &mut Seen, h: Header<'_>) -> Result<Decision> {
        s.headers += 1;
        self.push(format!("header {}: {:?}", h.name(), h.value()));
        Ok(Decision::Continue)
    }
    async fn eoh(&mut self, s: &mut Seen, _: Eoh<'_>) -> Result<Decision> {
        self.push(format!("eoh {}", s.headers));
        Ok(Decision::Continue)
    }
    async fn body(&mut self, s: &mut Seen, b: Body<'_>) -> Result<Decision> {
        s.body += b.chunk().len();
        self.push(format!("body {}", b.chunk().len()));
        Ok(Decision::Continue)
    }
    async fn eom(&mut self, s: &mut Seen, eom: &mut Eom<'_>) -> Result<Decision> {
        self.messages += 1;
        eom.progress().await;
        eom.add_header("X-Seen", format!("{} bytes", s.body))?;
        self.push(format!("eom {} message {}", s.body, self.messages));
        Ok(Decision::Continue)
    }
    async fn abort(&mut self, s: Seen, _: Abort<'_>) -> Result<()> {
        self.push(format!("abort after {} rcpts", s.rcpts));
        Ok(())
    }
    async fn unknown(&mut self, u: Unknown<'_>) -> Result<Decision> {
        self.push(format!("unknown {}", u.line()));
        Ok(Decision::Reject)
    }
    async fn close(&mut self) {
        self.push("close".into());
    }
}

fn message() -> Transaction {
    Transaction::new()
        .from_with_args("<alice@example.org>", ["SIZE=100", "BODY=8BITMIME"])
        .to("<bob@example.net>")
        .unknown("XFOO bar")
        .message("Subject: Hi\r\nX-Folded: a\r\n\tb\r\n\r\nline\nline\n")
}

#[tokio::test]
async fn every_callback_runs_in_order_with_its_arguments_and_macros() {
    let r = Recorder::default();
    let mut h = Harness::postfix(r.clone());
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept));
    assert_eq!(out.progress, 1, "smfi_progress");
    assert_eq!(
        out.modifications,
        [Modification::AddHeader {
            name: "X-Seen".into(),
            value: "12 bytes".into()
        }]
    );
    h.quit().await.unwrap();
    assert_eq!(
        r.lines(),
        [
            "negotiate v6",
            "connect client.example.com 50000 Some(192.0.2.1)",
            "helo client.example.com",
            "unknown XFOO bar",
            "mail <alice@example.org> [\"SIZE=100\", \"BODY=8BITMIME\"] mail_addr=alice@example.org",
            "rcpt <bob@example.net>",
            "data rcpts=1 i=true",
            "header Subject: \"Hi\"",
            "header X-Folded: \"a\\n\\tb\"",
            "eoh 2",
            "body 12",
            "eom 12 message 1",
            "close",
        ]
    );
}

#[tokio::test]
async fn connection_state_lives_across_messages_and_message_state_does_not() {
    let r = Recorder::default();
    let mut h = Harness::sendmail(r.clone());
    for _ in 0..3 {
        h.run(&message()).await.unwrap();
    }
    assert_eq!(h.milter().messages, 3);
    let eoms: Vec<String> = r
        .lines()
        .into_iter()
        .filter(|l| l.starts_with("eom"))
        .collect();
    assert_eq!(
        eoms,
        ["eom 12 message 1", "eom 12 message 2", "eom 12 message 3"]
    );
}

#[tokio::test]
async fn abort_gets_the_message_state_when_the_mta_drops_a_message() {
    // A message whose only recipient another milter refused: Postfix aborts it at DATA time.
    /// Refuses every recipient.
    #[derive(Default)]
    struct RefuseAll;
    impl Milter for RefuseAll {
        type Message = ();
        async fn rcpt(&mut self, _: &mut (), _: Rcpt<'_>) -> Result<Decision> {
            Ok(Decision::Tempfail)
        }
    }
    let mut h = Harness::postfix(RefuseAll);
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Tempfail(None)));

    let r = Recorder::default();
    let mut h = Harness::postfix(r.clone());
    let tx = Transaction::new()
        .to("<x@example.net>")
        .to("<y@example.net>");
    let mut tx_aborted = tx.clone();
    tx_aborted.recipients.clear(); // nothing accepted: the MTA resets before DATA
    h.run(&tx_aborted).await.unwrap();
    assert!(
        r.lines().contains(&"abort after 0 rcpts".to_owned()),
        "{:?}",
        r.lines()
    );
}

#[tokio::test]
async fn registration_flags_become_the_negotiated_protocol() {
    /// Declares only RCPT and EOM, and the change-body action.
    #[derive(Default)]
    struct Narrow;
    impl Milter for Narrow {
        type Message = ();
        const STAGES: Stages = Stages::RCPT.union(Stages::EOM);
        const ACTIONS: Actions = Actions::CHANGE_BODY;
    }
    let mut h = Harness::postfix(Narrow);
    let out = h.run(&message()).await.unwrap();
    let a = h.agreement().unwrap();
    assert_eq!(a.actions, Actions::CHANGE_BODY);
    assert_eq!(a.sent_stages(), Stages::RCPT | Stages::EOM);
    let sent = crate::support::sent_stages(&out);
    assert_eq!(sent, [Stage::Rcpt, Stage::Eom]);
}

#[tokio::test]
async fn no_reply_stages_and_symbol_lists_come_from_the_negotiate_hook() {
    /// Asks for no replies to headers, leading spaces, and its own macro lists.
    #[derive(Default)]
    struct Hook {
        seen: Vec<String>,
    }
    impl Milter for Hook {
        type Message = ();
        async fn negotiate(&mut self, _: &Offer, r: &mut Request) -> Result<()> {
            r.no_reply = Stages::HEADER;
            r.options = ProtocolFlags::HDR_LEADSPC | ProtocolFlags::RCPT_REJ;
            r.macros.set(MacroStage::CONNECT, ["{client_addr}"]);
            Ok(())
        }
        async fn connect(&mut self, c: Connect<'_>) -> Result<Decision> {
            let addr = c.macro_value("client_addr").map(|v| v.to_string());
            self.seen.push(format!(
                "client_addr={addr:?} j={:?}",
                c.macro_value("j").map(|v| v.to_string())
            ));
            Ok(Decision::Continue)
        }
        async fn header(&mut self, _: &mut (), h: Header<'_>) -> Result<Decision> {
            self.seen.push(format!("{}:{}", h.name(), h.value()));
            Ok(Decision::Reject) // ignored: no reply was promised
        }
    }
    let mut h = Harness::sendmail(Hook::default());
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.verdict, Some(Verdict::Accept));
    assert_eq!(out.decision(Stage::Header), None);
    let seen = &h.milter().seen;
    assert_eq!(
        seen[0], "client_addr=Some(\"192.0.2.1\") j=None",
        "the list replaced the MTA's"
    );
    assert_eq!(seen[1], "Subject: Hi", "leading space kept");
    assert!(h
        .agreement()
        .unwrap()
        .protocol
        .contains(ProtocolFlags::NR_HDR | ProtocolFlags::HDR_LEADSPC));
}

#[tokio::test]
async fn every_modification_of_libmilter_is_checked_against_the_negotiated_actions() {
    /// Tries a modification it did not declare.
    #[derive(Default)]
    struct Undeclared;
    impl Milter for Undeclared {
        type Message = ();
        const ACTIONS: Actions = Actions::ADD_HEADER;
        async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
            assert!(eom.delete_rcpt("<bob@example.net>").is_err());
            assert!(eom.replace_body("x").is_err());
            assert!(
                eom.change_header("Subject", 1, "").is_err(),
                "empty value: use delete_header"
            );
            eom.add_header("X-Ok", "1")?;
            Ok(Decision::Accept)
        }
    }
    let mut h = Harness::postfix(Undeclared);
    let out = h.run(&message()).await.unwrap();
    assert_eq!(out.modifications.len(), 1);
    assert_eq!(out.decision(Stage::Eom), Some(&Decision::Accept));
}

#[tokio::test]
async fn discard_and_accept_at_rcpt_end_the_message() {
    for d in [Decision::Discard, Decision::Accept] {
        /// Decides at the first recipient.
        struct AtRcpt(Decision);
        impl Milter for AtRcpt {
            type Message = ();
            async fn rcpt(&mut self, _: &mut (), _: Rcpt<'_>) -> Result<Decision> {
                Ok(self.0.clone())
            }
        }
        let mut h = Harness::new(AtRcpt(d.clone()), Profile::sendmail());
        let out = h.run(&message().to("<second@example.net>")).await.unwrap();
        let rcpts = out.steps.iter().filter(|s| s.stage == Stage::Rcpt).count();
        assert_eq!(rcpts, 1, "{d:?}: nothing more is sent for the message");
        let expected = if d == Decision::Discard {
            Verdict::Discard
        } else {
            Verdict::Accept
        };
        assert_eq!(out.verdict, Some(expected));
    }
}
