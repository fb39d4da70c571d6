//! A milter whose behaviour each test chooses.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use milterkit::{
    Abort, Actions, Body, Connect, Data, Decision, Eoh, Eom, Header, Helo, Mail, Milter, Rcpt,
    Result, Stage, Stages, Unknown,
};

/// What to do at end of message.
#[derive(Clone, Debug)]
pub(crate) enum Edit {
    AddHeader(&'static str, &'static str),
    InsertHeader(u32, &'static str, &'static str),
    ChangeHeader(&'static str, u32, &'static str),
    DeleteHeader(&'static str, u32),
    ChangeFrom(&'static str, Option<&'static str>),
    AddRcpt(&'static str, Option<&'static str>),
    DeleteRcpt(&'static str),
    ReplaceBody(Vec<u8>),
    Quarantine(&'static str),
}

/// The script: decisions per stage, failures per stage, changes at EOM.
#[derive(Default, Debug)]
pub(crate) struct Script {
    pub(crate) decisions: HashMap<Stage, Decision>,
    /// Decisions for particular recipients (by address as sent).
    pub(crate) rcpt: HashMap<&'static str, Decision>,
    pub(crate) panic_at: Option<Stage>,
    pub(crate) error_at: Option<Stage>,
    pub(crate) sleep_at: Option<(Stage, Duration)>,
    pub(crate) changes: Vec<Edit>,
    /// Counts calls: connections closed, aborts, messages at EOM.
    pub(crate) closes: AtomicU32,
    pub(crate) aborts: AtomicU32,
    pub(crate) eoms: AtomicU32,
}

/// The milter: shares the script between connections.
#[derive(Clone)]
pub(crate) struct Scripted(pub(crate) Arc<Script>);

impl Script {
    /// Asserts that the milter's connection closed once, and that its message was aborted
    /// when `aborted` (else not); `what` names the case in the failure messages.
    pub(crate) fn assert_ended(&self, aborted: bool, what: &str) {
        assert_eq!(self.closes.load(Ordering::SeqCst), 1, "{what}: close once");
        assert_eq!(
            self.aborts.load(Ordering::SeqCst),
            u32::from(aborted),
            "{what}: abort"
        );
    }
}

impl Scripted {
    pub(crate) fn new(script: Script) -> Self {
        Scripted(Arc::new(script))
    }

    async fn act(&self, stage: Stage) -> Result<Decision> {
        let s = &self.0;
        if s.panic_at == Some(stage) {
            panic!("scripted panic at {stage}");
        }
        if s.error_at == Some(stage) {
            return Err(format!("scripted error at {stage}").into());
        }
        if let Some((at, how_long)) = s.sleep_at {
            if at == stage {
                tokio::time::sleep(how_long).await;
            }
        }
        Ok(s.decisions
            .get(&stage)
            .cloned()
            .unwrap_or(Decision::Continue))
    }
}

impl Milter for Scripted {
    type Message = ();
    const ACTIONS: Actions = Actions::CURRENT.difference(Actions::SET_SYMLIST);
    const STAGES: Stages = Stages::all();

    async fn negotiate(
        &mut self,
        _: &milterkit::Offer,
        request: &mut milterkit::Request,
    ) -> Result<()> {
        request.options |= milterkit::ProtocolFlags::SKIP;
        Ok(())
    }

    async fn connect(&mut self, _: Connect<'_>) -> Result<Decision> {
        self.act(Stage::Connect).await
    }
    async fn helo(&mut self, _: Helo<'_>) -> Result<Decision> {
        self.act(Stage::Helo).await
    }
    async fn mail(&mut self, _: &mut (), _: Mail<'_>) -> Result<Decision> {
        self.act(Stage::Mail).await
    }
    async fn rcpt(&mut self, _: &mut (), r: Rcpt<'_>) -> Result<Decision> {
        let d = self.act(Stage::Rcpt).await?;
        let addr = r.address().to_str()?;
        Ok(self.0.rcpt.get(addr).cloned().unwrap_or(d))
    }
    async fn data(&mut self, _: &mut (), _: Data<'_>) -> Result<Decision> {
        self.act(Stage::Data).await
    }
    async fn header(&mut self, _: &mut (), _: Header<'_>) -> Result<Decision> {
        self.act(Stage::Header).await
    }
    async fn eoh(&mut self, _: &mut (), _: Eoh<'_>) -> Result<Decision> {
        self.act(Stage::Eoh).await
    }
    async fn body(&mut self, _: &mut (), _: Body<'_>) -> Result<Decision> {
        self.act(Stage::Body).await
    }
    async fn eom(&mut self, _: &mut (), eom: &mut Eom<'_>) -> Result<Decision> {
        self.0.eoms.fetch_add(1, Ordering::SeqCst);
        for c in &self.0.changes {
            match c.clone() {
                Edit::AddHeader(n, v) => eom.add_header(n, v)?,
                Edit::InsertHeader(i, n, v) => eom.insert_header(i, n, v)?,
                Edit::ChangeHeader(n, i, v) => eom.change_header(n, i, v)?,
                Edit::DeleteHeader(n, i) => eom.delete_header(n, i)?,
                Edit::ChangeFrom(f, None) => eom.change_from(f)?,
                Edit::ChangeFrom(f, Some(a)) => eom.change_from_with_args(f, a)?,
                Edit::AddRcpt(r, None) => eom.add_rcpt(r)?,
                Edit::AddRcpt(r, Some(a)) => eom.add_rcpt_with_args(r, a)?,
                Edit::DeleteRcpt(r) => eom.delete_rcpt(r)?,
                Edit::ReplaceBody(b) => eom.replace_body(b)?,
                Edit::Quarantine(r) => eom.quarantine(r)?,
            }
        }
        self.act(Stage::Eom).await
    }
    async fn abort(&mut self, _: (), _: Abort<'_>) -> Result<()> {
        self.0.aborts.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
    async fn unknown(&mut self, _: Unknown<'_>) -> Result<Decision> {
        self.act(Stage::Unknown).await
    }
    async fn close(&mut self) {
        self.0.closes.fetch_add(1, Ordering::SeqCst);
    }
}
