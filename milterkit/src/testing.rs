//! Test a milter in process: no MTA, no socket, no spawned task.
//!
//! [`Harness`] drives a [`Milter`] through the core's MTA side exactly as the connection loop
//! would over a socket, imitating Postfix or Sendmail (their commands, macros and extra aborts).
//!
//! ```
//! use milterkit::testing::Harness;
//! use milterkit::mta::{Transaction, Verdict};
//! use milterkit::{Decision, Milter, Rcpt, Result, Stages, Stage};
//!
//! #[derive(Default)]
//! struct NoOld;
//! impl Milter for NoOld {
//!     type Message = ();
//!     const STAGES: Stages = Stages::RCPT;
//!     async fn rcpt(&mut self, _: &mut (), rcpt: Rcpt<'_>) -> Result<Decision> {
//!         Ok(if rcpt.address().ends_with(b"@old.example>") { Decision::Reject } else { Decision::Continue })
//!     }
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
//! let mut h = Harness::postfix(NoOld);
//! let outcome = h.run(&Transaction::new().to("<a@old.example>").to("<b@new.example>")).await?;
//! assert_eq!(outcome.refused.len(), 1);
//! assert_eq!(outcome.verdict, Some(Verdict::Accept)); // delivered to the other recipient
//! // The MTA skipped every stage the milter did not declare, but end of message.
//! let answered: Vec<Stage> = outcome.steps.iter().filter(|s| s.decision.is_some()).map(|s| s.stage).collect();
//! assert_eq!(answered, [Stage::Rcpt, Stage::Rcpt, Stage::Eom]);
//! # Ok::<(), milterkit::Error>(()) }).unwrap();
//! ```

use bytes::BytesMut;
use milterkit_proto::{Agreement, MilterConfig, MilterSession, MtaConfig, MtaSession, Sent};

use crate::dispatch::{Dispatcher, JustWait};
use crate::mta::{Answer, Driver, Link, LinkEnd, Outcome, Profile, Transaction};
use crate::{Config, Error, Milter};

/// A milter and an imitated MTA, wired together in memory.
pub struct Harness<M: Milter> {
    profile: Profile,
    end: LinkEnd,
    session: MilterSession,
    dispatcher: Dispatcher<M>,
    config: Config,
    driver: Driver,
    strict: bool,
    /// The close handler ran (it runs once).
    close_ran: bool,
    wire: BytesMut,
}

impl<M: Milter> std::fmt::Debug for Harness<M> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Harness")
            .field("profile", &self.profile.mta)
            .field("strict", &self.strict)
            .field("closed", &self.end.closed)
            .finish_non_exhaustive()
    }
}

impl<M: Milter> Harness<M> {
    /// A harness imitating Postfix 3.7 ([`Profile::postfix`]).
    pub fn postfix(milter: M) -> Self {
        Self::new(milter, Profile::postfix())
    }

    /// A harness imitating Sendmail 8.17 ([`Profile::sendmail`]).
    pub fn sendmail(milter: M) -> Self {
        Self::new(milter, Profile::sendmail())
    }

    /// A harness with any profile. Strict: protocol misuse by the milter (a decision not allowed
    /// at its stage, a modification not negotiated) fails [`run`](Self::run) with
    /// [`Error::Misuse`] instead of becoming the fail-safe reply.
    pub fn new(milter: M, profile: Profile) -> Self {
        Self::with_config(milter, profile, Config::default())
    }

    /// A harness with a server [`Config`] (fail-safe decision, deadlines).
    pub fn with_config(milter: M, profile: Profile, config: Config) -> Self {
        Harness {
            end: LinkEnd::new(MtaSession::new(profile.offer, MtaConfig::default())),
            session: MilterSession::new(MilterConfig {
                max_payload: config.max_frame,
            }),
            dispatcher: Dispatcher::new(milter, &config),
            config,
            profile,
            driver: Driver::default(),
            strict: true,
            close_ran: false,
            wire: BytesMut::new(),
        }
    }

    /// Lets misuse through as production does: the fail-safe decision is sent, the connection
    /// closes, and the outcome says so.
    pub fn lenient(mut self) -> Self {
        self.strict = false;
        self
    }

    /// Runs one transaction (several may run on one harness: the connection stays open, as
    /// several messages in one SMTP session). The first one negotiates and connects.
    pub async fn run(&mut self, tx: &Transaction) -> Result<Outcome, Error> {
        if self.end.session.agreement().is_none() && self.end.closed.is_none() {
            self.negotiate().await?;
        }
        let mut driver = std::mem::take(&mut self.driver);
        let profile = self.profile.clone();
        let result = driver.run(self, &profile, tx).await;
        self.driver = driver;
        result
    }

    /// Ends the session as the profile's MTA does (Postfix: ABORT, QUIT; Sendmail: QUIT) and
    /// runs the milter's close handler.
    pub async fn quit(mut self) -> Result<M, Error> {
        if self.end.closed.is_none() {
            let mut driver = std::mem::take(&mut self.driver);
            let profile = self.profile.clone();
            driver.quit(&mut self, &profile).await?;
        }
        if !self.close_ran {
            self.dispatcher.close(&self.config).await;
        }
        Ok(self.dispatcher.milter)
    }

    /// The milter, to inspect its state.
    pub fn milter(&self) -> &M {
        &self.dispatcher.milter
    }

    /// What was negotiated.
    pub fn agreement(&self) -> Option<&Agreement> {
        self.end.session.agreement()
    }

    async fn negotiate(&mut self) -> Result<(), Error> {
        let answer = self.pump().await?;
        if let Some(c) = answer.closed {
            self.end.closed = Some(c.clone());
            return Err(Error::Protocol(milterkit_proto::ProtocolError::Closed));
        }
        Ok(())
    }

    /// Moves the MTA's bytes to the milter, runs the milter on them, and brings its bytes back.
    async fn pump(&mut self) -> Result<Answer, Error> {
        let mut answer = Answer::default();
        let progress_before = self.dispatcher.progress_requests();
        self.end.session.poll_transmit(&mut self.wire);
        self.session.handle_input(&self.wire.split());
        match self
            .dispatcher
            .turn(&mut self.session, &self.config, &mut JustWait)
            .await
        {
            None => {}
            Some(Err(e @ Error::Misuse { .. })) if self.strict => return Err(e),
            Some(end) => {
                answer.closed = Some(end.map_or_else(|e| e.to_string(), |()| "quit".into()));
                self.dispatcher
                    .finish(&self.session, &self.config, &mut JustWait)
                    .await;
                self.close_ran = true;
            }
        }
        answer.progress = self.dispatcher.progress_requests() - progress_before;
        self.session.poll_transmit(&mut self.wire);
        self.end.session.handle_input(&self.wire.split());
        while let Some(event) = self.end.session.poll_event()? {
            answer.absorb(event);
        }
        if let Some(c) = &answer.closed {
            self.end.closed = Some(c.clone());
        }
        Ok(answer)
    }
}

impl<M: Milter> Link for Harness<M> {
    fn end(&mut self) -> &mut LinkEnd {
        &mut self.end
    }

    async fn carry(&mut self, sent: &Sent) -> Result<Answer, Error> {
        match sent {
            Sent::Skipped => Ok(Answer::default()),
            _ => self.pump().await,
        }
    }
}
