//! Write a filter as one function over the whole message: [`Filter`].
//!
//! Most filters (DKIM signing and checking, disclaimers, subject tags, attachment policy,
//! archiving, spam scoring) need the whole message, not callbacks. Here you write one async
//! function, [`Filter::decide`], over a [`Transaction`]: the client, the envelope, the headers
//! (raw and decoded), the body (spooled to a temporary file past a memory limit, readable as
//! often as you like), the macros, and a parsed MIME view on demand. You edit the transaction
//! (set, add, insert and remove headers, change the sender, add and remove recipients, replace
//! the body, quarantine); at end of message the layer compares it with what arrived and sends the
//! fewest milter modifications that produce it, with the header indexes of the MTA in front
//! (Postfix and Sendmail count differently). An unchanged transaction sends nothing.
//!
//! [`Filtered`] turns a `Filter` into a [`Milter`] served like any other: it asks the MTA only
//! for the stages its decision point needs, and not to wait for replies where none is needed.
//! Progress goes out by itself while the function runs; an error, a panic or a timeout gets the
//! configured fail-safe reply, as with the raw API.
//!
//! ```no_run
//! use milterkit::filter::{Filter, Filtered, Options, Transaction};
//! use milterkit::{Actions, Decision, Result};
//!
//! /// Tags the subject of mail from outside example.org and adds a footer.
//! struct Tagger;
//!
//! impl Filter for Tagger {
//!     const ACTIONS: Actions = Actions::CHANGE_HEADER
//!         .union(Actions::ADD_HEADER)
//!         .union(Actions::CHANGE_BODY);
//!
//!     async fn decide(&self, tx: &mut Transaction<'_>) -> Result<Decision> {
//!         if tx.sender().is_some_and(|s| s.domain_in("example.org")) {
//!             return Ok(Decision::Continue);
//!         }
//!         let subject = tx.header("Subject").map(|f| f.text()).unwrap_or_default();
//!         tx.set_header("Subject", format!("[external] {subject}"))?;
//!         tx.append_body("\r\n-- \r\nThis message came from outside.\r\n")?;
//!         Ok(Decision::Continue)
//!     }
//! }
//!
//! #[tokio::main(flavor = "current_thread")]
//! async fn main() -> Result<()> {
//!     let milter = Filtered::new(Tagger, Options::default());
//!     let listener = milterkit::bind("inet:7357@127.0.0.1").await?;
//!     milterkit::serve(listener, move || milter.clone()).await?;
//!     Ok(())
//! }
//! ```
//!
//! # `Filter` or `Milter`?
//!
//! | | [`Filter`] | [`Milter`] |
//! |---|---|---|
//! | you write | one function over the whole message | a method per stage |
//! | state | the [`Transaction`]; the filter value is shared by every connection (`&self`) | your own per-connection and per-message values |
//! | headers and body | collected for you; the body spooled past [`Options::memory_limit`] | as they come, one at a time |
//! | modifications | computed from your edits, with the right indexes for the MTA | yours to call at end of message, with the MTA's index rules to mind |
//! | early answers | at one decision point, plus [`Filter::check_rcpt`] | at any stage |
//! | cost | a copy of each header, the body kept until the end | nothing you do not do |
//!
//! Use `Filter` when the decision needs the message (content filters, signing, archiving) or
//! when you edit headers. Use `Milter` for answers as early as possible at many stages, for
//! streaming over a body you do not want to keep, or for full control of every reply.
//!
//! # Decision points
//!
//! [`Options::decide_at`] picks where [`Filter::decide`] runs ([`DecideAt`]). The layer asks the
//! MTA for the stages up to that point only (it does not send the others), and asks it not to
//! wait for replies before it (`SMFIP_NR_*`, where offered). Edits made before end of message
//! wait for it; an `Accept` with edits pending goes out as `Continue` and becomes `Accept` with
//! the modifications at end of message.
//!
//! # What the edits become
//!
//! Computed by [`milterkit_proto::message::header_modifications`] for headers (a changed value:
//! CHGHEADER; a removed field: CHGHEADER with an empty value, last first; a new field: ADDHEADER
//! at the end where the MTA appends it there, INSHEADER elsewhere), then CHGFROM, DELRCPT,
//! ADDRCPT or ADDRCPT_PAR, QUARANTINE, and the new body last. Which MTA's rules apply is found
//! from the `v` macro Postfix sends at CONNECT (anything else is taken as Sendmail), or set with
//! [`Options::mta`].

mod address;
mod field;
mod spool;
mod transaction;

use std::future::Future;
use std::io::Read;
use std::sync::Arc;

use bytes::Bytes;
pub use mail_parser;
use milterkit_proto::message::Mta;
use milterkit_proto::{
    Actions, Agreement, Decision, MacroLists, Macros, Offer, ProtocolFlags, Reply, Request, Stages,
};

pub use address::Address;
pub use field::{Client, Field};
pub use spool::{Body, BodyReader};
use transaction::{Conn, Part};
pub use transaction::{ReplaceError, State, Transaction};

use crate::milter::{Connect, Data, Eoh, Header, Helo, Mail, Rcpt};
use crate::{Eom, Milter, Result};

/// A filter over whole messages; [`Filtered`] serves it as a [`Milter`].
///
/// One value serves every connection (hence `&self` and `Sync`): keep shared configuration and
/// clients in it, per-message data in the [`Transaction`].
pub trait Filter: Send + Sync + 'static {
    /// The modifications the edits may need (`SMFIF_*`). The MTA must offer them all, or the
    /// connection is refused; an edit whose action is not here is refused when it is made.
    const ACTIONS: Actions = Actions::empty();

    /// Decides on the message (or, at the connect and HELO decision points, the connection),
    /// at the decision point of [`Options::decide_at`], editing `tx` as it likes.
    ///
    /// At [`DecideAt::Rcpt`] it runs after each accepted recipient: `Reject`, `Tempfail` or a
    /// reply refuse that recipient only.
    fn decide(&self, tx: &mut Transaction<'_>) -> impl Future<Output = Result<Decision>> + Send;

    /// Checks one recipient as it comes (RCPT), when the decision point is RCPT or later:
    /// `Reject`, `Tempfail` or a reply refuse this recipient only, and it is not added to the
    /// transaction; `Continue` (the default) takes it.
    fn check_rcpt(
        &self,
        tx: &Transaction<'_>,
        rcpt: &Address,
    ) -> impl Future<Output = Result<Decision>> + Send {
        let _ = (tx, rcpt);
        async { Ok(Decision::Continue) }
    }
}

/// Where [`Filter::decide`] runs: the stage whose reply it gives. Ordered as the stages come.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DecideAt {
    /// CONNECT: the client only; decides for the whole connection.
    Connect,
    /// HELO: the client and its HELO name.
    Helo,
    /// MAIL: the sender.
    Mail,
    /// Each RCPT: the sender and the recipients so far.
    Rcpt,
    /// DATA: the whole envelope.
    Data,
    /// End of headers: the envelope and the headers.
    Eoh,
    /// End of message: everything. The default.
    Eom,
}

/// What happens to a message past a limit of [`Options`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limit {
    /// Refuse the message: `552 5.3.4` for the body, `552 5.3.4` for the headers.
    Reject,
    /// Keep the beginning and decide with it ([`Body::truncated`],
    /// [`Transaction::headers_truncated`]); a truncated body cannot be replaced.
    Truncate,
    /// As `Truncate`, and ask the MTA to stop sending the body (SKIP, where the MTA offers it).
    Skip,
}

/// How a [`Filtered`] collects messages.
///
/// ```
/// use milterkit::filter::{DecideAt, Limit, Options};
/// let options = Options::default()
///     .decide_at(DecideAt::Eom)
///     .memory_limit(256 * 1024)
///     .max_body(50 << 20, Limit::Reject)
///     .max_headers(500, Limit::Truncate);
/// ```
#[derive(Debug, Clone)]
pub struct Options {
    decide_at: DecideAt,
    memory_limit: usize,
    max_body: Option<(u64, Limit)>,
    max_headers: Option<(usize, Limit)>,
    mta: Option<Mta>,
}

impl Default for Options {
    /// Decide at end of message; keep up to 1 MiB of body in memory; no size limits (the MTA's
    /// own apply: Postfix's `message_size_limit` and `header_size_limit`); the MTA's rules
    /// detected.
    fn default() -> Self {
        Options {
            decide_at: DecideAt::Eom,
            memory_limit: 1 << 20,
            max_body: None,
            max_headers: None,
            mta: None,
        }
    }
}

impl Options {
    /// Where [`Filter::decide`] runs.
    pub fn decide_at(mut self, at: DecideAt) -> Self {
        self.decide_at = at;
        self
    }

    /// How much of a body (incoming, or a replacement read with
    /// [`Transaction::replace_body_from`]) stays in memory before it goes to a temporary file.
    pub fn memory_limit(mut self, bytes: usize) -> Self {
        self.memory_limit = bytes;
        self
    }

    /// The largest body kept, and what happens past it.
    pub fn max_body(mut self, bytes: u64, limit: Limit) -> Self {
        self.max_body = Some((bytes, limit));
        self
    }

    /// The most header fields kept, and what happens past them (`Skip` is `Truncate` here).
    pub fn max_headers(mut self, fields: usize, limit: Limit) -> Self {
        self.max_headers = Some((fields, limit));
        self
    }

    /// Whose rules the modifications follow, instead of detecting it.
    pub fn mta(mut self, mta: Mta) -> Self {
        self.mta = Some(mta);
        self
    }

    /// The stages to ask for, and those of them not to answer.
    fn plan(&self) -> (Stages, Stages) {
        use DecideAt as At;
        let at = self.decide_at;
        let mut stages = Stages::CONNECT | Stages::EOM;
        let mut answered = Stages::EOM;
        let add = |stages: &mut Stages, s: Stages, wanted: bool| {
            if wanted {
                *stages |= s;
            }
        };
        add(&mut stages, Stages::HELO, at >= At::Helo);
        add(&mut stages, Stages::MAIL | Stages::RCPT, at >= At::Mail);
        add(&mut answered, Stages::RCPT, at >= At::Rcpt);
        add(&mut stages, Stages::DATA, at == At::Data);
        add(&mut stages, Stages::HEADER, at >= At::Eoh);
        add(&mut stages, Stages::EOH, at == At::Eoh);
        add(&mut stages, Stages::BODY, at == At::Eom);
        let stops_body = matches!(self.max_body, Some((_, Limit::Reject | Limit::Skip)));
        add(&mut answered, Stages::BODY, at == At::Eom && stops_body);
        answered |= match at {
            At::Connect => Stages::CONNECT,
            At::Helo => Stages::HELO,
            At::Mail => Stages::MAIL,
            At::Rcpt => Stages::RCPT,
            At::Data => Stages::DATA,
            At::Eoh => Stages::EOH,
            At::Eom => Stages::EOM,
        };
        (stages, stages - answered)
    }
}

/// A [`Filter`] served as a [`Milter`]: one value per connection, sharing the filter.
///
/// ```no_run
/// # use milterkit::filter::{Filter, Filtered, Options, Transaction};
/// # struct Tagger;
/// # impl Filter for Tagger {
/// #     async fn decide(&self, _: &mut Transaction<'_>) -> milterkit::Result<milterkit::Decision> { Ok(milterkit::Decision::Continue) }
/// # }
/// # async fn f(listener: milterkit::Listener) -> milterkit::Result<()> {
/// let milter = Filtered::new(Tagger, Options::default());
/// milterkit::serve(listener, move || milter.clone()).await?;
/// # Ok(()) }
/// ```
pub struct Filtered<F> {
    shared: Arc<(F, Options)>,
    conn: Conn,
}

impl<F> Clone for Filtered<F> {
    /// A value for a new connection, sharing the filter and the options.
    fn clone(&self) -> Self {
        Filtered {
            shared: Arc::clone(&self.shared),
            conn: fresh_conn(&self.shared.1),
        }
    }
}

fn fresh_conn(options: &Options) -> Conn {
    Conn {
        client: Client::default(),
        agreement: Arc::new(Agreement {
            version: 0,
            actions: Actions::empty(),
            protocol: ProtocolFlags::empty(),
            macros: MacroLists::new(),
        }),
        mta: options.mta.unwrap_or(Mta::Sendmail),
        memory_limit: options.memory_limit,
    }
}

impl<F: Filter> Filtered<F> {
    /// Serves `filter` with `options`.
    pub fn new(filter: F, options: Options) -> Self {
        let conn = fresh_conn(&options);
        Filtered {
            shared: Arc::new((filter, options)),
            conn,
        }
    }

    /// The filter.
    pub fn filter(&self) -> &F {
        &self.shared.0
    }

    fn options(&self) -> &Options {
        &self.shared.1
    }

    fn at(&self, point: DecideAt) -> bool {
        self.options().decide_at == point
    }

    /// Runs the filter at the decision point.
    async fn decide(&self, state: &mut State, macros: &Macros) -> Result<Decision> {
        if let Some(what) = state.over_limit {
            return Ok(Decision::Reply(Reply::new(552, "5.3.4", what)?));
        }
        let mut tx = Transaction {
            state,
            conn: &self.conn,
            macros,
        };
        let decision = self.shared.0.decide(&mut tx).await?;
        if self.options().decide_at < DecideAt::Eom && state.in_message {
            return Ok(match decision {
                Decision::Continue => {
                    state.decided = Some(Decision::Continue);
                    Decision::Continue
                }
                // The edits need end of message: accept there.
                Decision::Accept if state.edited() => {
                    state.decided = Some(Decision::Accept);
                    Decision::Continue
                }
                other => other,
            });
        }
        Ok(decision)
    }

    /// A connection-level decision: no message, no edits.
    async fn decide_connection(&self, macros: &Macros) -> Result<Decision> {
        let mut none = State::default();
        self.decide(&mut none, macros).await
    }
}

/// True for the decisions after which the message goes on (and edits are sent).
fn goes_on(d: &Decision) -> bool {
    matches!(d, Decision::Continue | Decision::Accept)
}

impl<F: Filter> Milter for Filtered<F> {
    type Message = State;
    const ACTIONS: Actions = F::ACTIONS;

    async fn negotiate(&mut self, offer: &Offer, request: &mut Request) -> Result<()> {
        let (stages, no_reply) = self.options().plan();
        request.stages = stages;
        request.no_reply = no_reply;
        if matches!(self.options().max_body, Some((_, Limit::Skip))) {
            request.options |= ProtocolFlags::SKIP;
        }
        if let Ok(agreement) = milterkit_proto::negotiate(offer, request) {
            self.conn.agreement = Arc::new(agreement);
        }
        Ok(())
    }

    async fn connect(&mut self, c: Connect<'_>) -> Result<Decision> {
        self.conn.client = Client {
            hostname: Bytes::copy_from_slice(&c.hostname()),
            address: c.ip(),
            family: Some(c.family()),
            port: c.port(),
            helo: None,
        };
        if self.options().mta.is_none() {
            let postfix = c
                .macro_value("v")
                .is_some_and(|v| v.starts_with(b"Postfix"));
            self.conn.mta = if postfix { Mta::Postfix } else { Mta::Sendmail };
        }
        if self.at(DecideAt::Connect) {
            return self.decide_connection(c.macros()).await;
        }
        Ok(Decision::Continue)
    }

    async fn helo(&mut self, h: Helo<'_>) -> Result<Decision> {
        self.conn.client.helo = Some(Bytes::copy_from_slice(&h.name()));
        if self.at(DecideAt::Helo) {
            return self.decide_connection(h.macros()).await;
        }
        Ok(Decision::Continue)
    }

    async fn mail(&mut self, state: &mut State, m: Mail<'_>) -> Result<Decision> {
        state.in_message = true;
        state.sender = Some(Address::from_wire(
            &m.address(),
            m.args().map(|a| a.as_bytes()),
        ));
        if self.at(DecideAt::Mail) {
            return self.decide(state, m.macros()).await;
        }
        Ok(Decision::Continue)
    }

    async fn rcpt(&mut self, state: &mut State, r: Rcpt<'_>) -> Result<Decision> {
        let rcpt = Address::from_wire(&r.address(), r.args().map(|a| a.as_bytes()));
        let tx = Transaction {
            state: &mut *state,
            conn: &self.conn,
            macros: r.macros(),
        };
        let checked = self.shared.0.check_rcpt(&tx, &rcpt).await?;
        if checked != Decision::Continue {
            return Ok(checked);
        }
        state.add_rcpt(rcpt);
        if !self.at(DecideAt::Rcpt) {
            return Ok(Decision::Continue);
        }
        let decision = self.decide(state, r.macros()).await?;
        if matches!(
            decision,
            Decision::Reject | Decision::Tempfail | Decision::Reply(_)
        ) {
            // Refused: this recipient only.
            state.rcpts.pop();
        }
        Ok(decision)
    }

    async fn data(&mut self, state: &mut State, d: Data<'_>) -> Result<Decision> {
        if self.at(DecideAt::Data) {
            return self.decide(state, d.macros()).await;
        }
        Ok(Decision::Continue)
    }

    async fn header(&mut self, state: &mut State, h: Header<'_>) -> Result<Decision> {
        match self.options().max_headers {
            Some((max, limit)) if state.headers.len() >= max => {
                state.headers_truncated = true;
                if limit == Limit::Reject {
                    state.over_limit = Some("too many header fields");
                }
            }
            _ => state.add_header(&h.name(), &h.value()),
        }
        Ok(Decision::Continue)
    }

    async fn eoh(&mut self, state: &mut State, e: Eoh<'_>) -> Result<Decision> {
        if self.at(DecideAt::Eoh) {
            return self.decide(state, e.macros()).await;
        }
        Ok(Decision::Continue)
    }

    async fn body(&mut self, state: &mut State, b: crate::Body<'_>) -> Result<Decision> {
        let mut chunk = b.chunk();
        if let Some((max, limit)) = self.options().max_body {
            let room = max.saturating_sub(state.body.len());
            if chunk.len() as u64 > room {
                chunk = &chunk[..usize::try_from(room).unwrap_or(chunk.len())];
                state.body.truncate();
                match limit {
                    Limit::Reject => {
                        state.over_limit = Some("message too big");
                        return Ok(Decision::Reply(Reply::new(
                            552,
                            "5.3.4",
                            "message too big",
                        )?));
                    }
                    Limit::Skip => {
                        state.body.push(chunk, self.conn.memory_limit)?;
                        return Ok(Decision::Skip);
                    }
                    Limit::Truncate => {}
                }
            }
        }
        state.body.push(chunk, self.conn.memory_limit)?;
        Ok(Decision::Continue)
    }

    async fn eom(&mut self, state: &mut State, eom: &mut Eom<'_>) -> Result<Decision> {
        state.body.finish();
        let decision = match state.decided.take() {
            Some(d) => d,
            None if self.at(DecideAt::Eom) => self.decide(state, eom.macros()).await?,
            None => Decision::Continue,
        };
        if goes_on(&decision) {
            for m in state.modifications(self.conn.mta) {
                eom.modify(m)?;
            }
            if let Some(parts) = &state.new_body {
                send_body(parts, &state.body, eom)?;
            }
        }
        Ok(decision)
    }
}

/// Sends a new body as REPLBODY packets: bytes as they are (the session cuts them into packets),
/// a body in a file read a packet at a time.
fn send_body(parts: &[Part], original: &Body, eom: &mut Eom<'_>) -> Result<()> {
    let mut sent = false;
    for part in parts {
        let body = match part {
            Part::Bytes(b) => {
                if !b.is_empty() {
                    eom.replace_body(b.clone())?;
                    sent = true;
                }
                continue;
            }
            Part::Original => original,
            Part::Spooled(body) => body,
        };
        if !body.is_spooled() {
            let b = body.to_bytes()?;
            if !b.is_empty() {
                eom.replace_body(b)?;
                sent = true;
            }
            continue;
        }
        let mut reader = body.reader();
        loop {
            // One packet's worth: the session cuts nothing further.
            let mut chunk = vec![0; milterkit_proto::frame::MILTER_MAX_DATA_SIZE];
            let n = reader.read(&mut chunk)?;
            if n == 0 {
                break;
            }
            chunk.truncate(n);
            eom.replace_body(chunk)?;
            sent = true;
        }
    }
    if !sent {
        // An empty new body is still a replacement.
        eom.replace_body(Bytes::new())?;
    }
    Ok(())
}
