//! A milter that holds every message at end of message until its gate opens.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

use milterkit::{Actions, Decision, Eom, Milter, Result, Stages};
use tokio::sync::watch;

/// Holds every message at end of message until the gate opens, then adds `X-Gate: passed`; counts
/// the messages that arrived at end of message.
#[derive(Clone)]
pub(crate) struct Gate {
    pub(crate) arrived: Arc<AtomicU32>,
    open: watch::Receiver<bool>,
}

impl Gate {
    /// A gate, open or not, and the sender that opens it.
    pub(crate) fn new(open: bool) -> (watch::Sender<bool>, Gate) {
        let (open_gate, open) = watch::channel(open);
        let gate = Gate {
            arrived: Arc::new(AtomicU32::new(0)),
            open,
        };
        (open_gate, gate)
    }

    /// A closed gate, and the sender that opens it.
    pub(crate) fn closed() -> (watch::Sender<bool>, Gate) {
        Gate::new(false)
    }
}

impl Milter for Gate {
    type Message = ();
    const STAGES: Stages = Stages::MAIL.union(Stages::EOM);
    const ACTIONS: Actions = Actions::ADD_HEADER;

    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        self.arrived.fetch_add(1, Ordering::SeqCst);
        let mut open = self.open.clone();
        open.wait_for(|o| *o).await?;
        eom.add_header("X-Gate", "passed")?;
        Ok(Decision::Continue)
    }
}
