//! A policy milter: refuses recipients in a retired domain, quarantines messages whose subject
//! carries a keyword, and stamps every accepted message with a header.
//!
//! Run: `cargo run -p milterkit --example policy -- --socket inet:7357@127.0.0.1`.

use milterkit::{Actions, Decision, Eom, Header, Milter, Rcpt, Reply, Result};

/// The policy; one value per MTA connection.
#[derive(Debug, Clone)]
pub struct Policy {
    /// Recipients in this domain are refused with 550 5.1.6.
    pub retired_domain: String,
    /// A subject containing this word (any case) sends the message to quarantine.
    pub keyword: String,
    /// Messages seen on this connection.
    pub messages: u32,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retired_domain: "old.example".into(),
            keyword: "lottery".into(),
            messages: 0,
        }
    }
}

/// What the policy learns about one message.
#[derive(Debug, Default)]
pub struct Verdicts {
    refused: u32,
    suspicious: bool,
}

// STAGES from the handlers below: the MTA sends only what the milter handles.
#[milterkit::milter]
impl Milter for Policy {
    type Message = Verdicts;
    const ACTIONS: Actions = Actions::ADD_HEADER.union(Actions::QUARANTINE);

    async fn rcpt(&mut self, m: &mut Verdicts, rcpt: Rcpt<'_>) -> Result<Decision> {
        let addr = rcpt.address().to_str()?.to_ascii_lowercase();
        // `<bob@old.example.>` is the same domain: Postfix and Sendmail drop the final dot.
        let domain = addr
            .trim_end_matches('>')
            .rsplit('@')
            .next()
            .unwrap_or_default()
            .trim_end_matches('.');
        if domain == self.retired_domain {
            m.refused += 1;
            return Ok(Decision::Reply(Reply::new(
                550,
                "5.1.6",
                "recipient has moved",
            )?));
        }
        Ok(Decision::Continue)
    }

    async fn header(&mut self, m: &mut Verdicts, h: Header<'_>) -> Result<Decision> {
        if h.name().eq_ignore_ascii_case(b"subject") {
            let subject = h.value().to_string_lossy().to_lowercase();
            m.suspicious |= subject.contains(&self.keyword);
        }
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, m: &mut Verdicts, eom: &mut Eom<'_>) -> Result<Decision> {
        self.messages += 1;
        if m.suspicious {
            eom.quarantine(format!("subject mentions {}", self.keyword))?;
        }
        eom.add_header(
            "X-Policy",
            format!("checked; {} recipient(s) refused", m.refused),
        )?;
        Ok(Decision::Continue)
    }
}

/// Serves with `milterkit::run!`: `--socket`, the other flags and their `MILTERKIT_*`
/// variables, logging, SIGTERM and systemd; `--help` lists them.
#[allow(dead_code)]
fn main() -> std::process::ExitCode {
    milterkit::run!(Policy::default)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use milterkit::mta::{Transaction, Verdict};
    use milterkit::testing::Harness;
    use milterkit::{Modification, Stage};

    #[tokio::test]
    async fn refuses_retired_recipients_and_stamps_the_message() {
        let mut h = Harness::postfix(Policy::default());
        let tx = Transaction::new()
            .to("<alice@old.example>")
            .to("<carol@OLD.example.>")
            .to("<bob@new.example>");
        let out = h.run(&tx).await.unwrap();
        assert_eq!(out.refused.len(), 2, "{out:?}");
        assert!(matches!(out.decision(Stage::Rcpt), Some(Decision::Reply(r)) if r.code() == 550));
        assert_eq!(out.verdict, Some(Verdict::Accept));
        assert_eq!(
            out.modifications,
            [Modification::AddHeader {
                name: "X-Policy".into(),
                value: "checked; 2 recipient(s) refused".into()
            }]
        );
    }

    #[tokio::test]
    async fn quarantines_a_subject_with_the_keyword_on_sendmail_too() {
        let mut h = Harness::sendmail(Policy::default());
        let tx = Transaction::new()
            .to("<bob@new.example>")
            .message("Subject: Win the LOTTERY now\r\n\r\nhi\r\n");
        let out = h.run(&tx).await.unwrap();
        assert!(matches!(
            &out.modifications[0],
            Modification::Quarantine { reason } if reason == "subject mentions lottery"
        ));
        assert_eq!(h.quit().await.unwrap().messages, 1);
    }
}
