//! The milter `milterkit demo` serves: the same policy as milterkit's example
//! (`milterkit/examples/policy.rs`), kept here so that this package builds on its own. It refuses
//! recipients in a retired domain, quarantines messages whose subject carries a keyword, and
//! stamps every accepted message with a header.

use std::future::IntoFuture;

use milterkit::{
    Actions, BoxError, Decision, Eom, Header, Listener, Milter, Rcpt, Reply, Result, Stages,
};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// The policy; one value per MTA connection.
#[derive(Debug, Clone)]
pub(crate) struct Policy {
    /// Recipients in this domain are refused with 550 5.1.6.
    retired_domain: String,
    /// A subject containing this word (any case) sends the message to quarantine.
    keyword: String,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            retired_domain: "old.example".into(),
            keyword: "lottery".into(),
        }
    }
}

/// What the policy learns about one message.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    refused: u32,
    suspicious: bool,
}

impl Milter for Policy {
    type Message = Verdicts;
    const STAGES: Stages = Stages::RCPT.union(Stages::HEADER).union(Stages::EOM);
    const ACTIONS: Actions = Actions::ADD_HEADER.union(Actions::QUARANTINE);

    async fn rcpt(&mut self, m: &mut Verdicts, rcpt: Rcpt<'_>) -> Result<Decision> {
        let addr = rcpt.address().to_str()?.to_ascii_lowercase();
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

/// The policy served on a listener in the background, until [`Served::stop`].
pub(crate) struct Served {
    /// The listener's socket spec, for clients.
    pub(crate) spec: String,
    stop: oneshot::Sender<()>,
    server: JoinHandle<std::result::Result<(), milterkit::Error>>,
}

impl Served {
    /// Serves [`Policy`] on `listener` in a task of the current Tokio runtime.
    pub(crate) fn start(listener: Listener) -> std::io::Result<Served> {
        let spec = listener.local_spec()?.to_string();
        let (stop, stopped) = oneshot::channel::<()>();
        let server = tokio::spawn(
            milterkit::serve(listener, Policy::default)
                .with_graceful_shutdown(async {
                    stopped.await.ok();
                })
                .into_future(),
        );
        Ok(Served { spec, stop, server })
    }

    /// Shuts the server down gracefully and waits for it: its error if it failed, an error too if
    /// it had stopped on its own before.
    pub(crate) async fn stop(self) -> std::result::Result<(), BoxError> {
        let sent = self.stop.send(());
        self.server.await??;
        sent.map_err(|()| "the server had stopped on its own")?;
        Ok(())
    }
}
