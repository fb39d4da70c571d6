//! The order in which a milter accepts commands: libmilter's transition table, written once.
//!
//! Every rule here comes from libmilter's engine (`libmilter/engine.c` of Sendmail 8.17, the
//! library Postfix and Sendmail are tested against): its states `ST_*`, the sets of next states
//! `NX_*`, `trans_ok()` with the skip bits of `fix_stm()`, the fallback to `ST_HELO` in
//! `mi_engine()`, and the state changes after a decision. A milter that accepts exactly what
//! libmilter accepts never turns an MTA that libmilter serves into lost mail.
//!
//! What libmilter does with a command, and what [`MilterSession`](crate::MilterSession) does:
//!
//! | libmilter | milterkit |
//! |---|---|
//! | the new state is allowed after the current one (possibly skipping stages the MTA does not send) | the command is handled |
//! | not allowed, but allowed after HELO: the open transaction is aborted (`xxfi_abort`), then the command is handled | [`Event::Abort`](crate::Event::Abort) for an open message, then the command |
//! | allowed from neither: the command is dropped without a reply, the state becomes HELO | dropped the same way when the MTA waits for no reply (ABORT, QUIT_NC, no-reply stages); **closed** with [`ProtocolError::OutOfOrder`](crate::ProtocolError::OutOfOrder) when it waits for one |
//!
//! # Intended differences from libmilter
//! Each one only turns a libmilter hang into a clean close, or keeps the milter's own API whole;
//! the differential test (`interop/tests/order.rs`) excuses exactly these.
//! 1. **A dropped command that waits for a reply closes the connection.** libmilter sends nothing
//!    and waits for the next command while the MTA waits for the reply, until the MTA's command
//!    timeout (Postfix `milter_command_timeout`, 30 s; Sendmail `T=S:`); then the MTA applies its
//!    default action. milterkit closes at once, so the MTA applies it at once.
//! 2. **Nothing but OPTNEG and macros before negotiation.** libmilter falls back to HELO and runs
//!    HELO and MAIL callbacks with no agreement; milterkit closes (no MTA does this: both send
//!    OPTNEG first).
//! 3. **An open message ends with `abort`, also after UNKNOWN.** libmilter's UNKNOWN state counts
//!    as outside a transaction (`ST_IN_MAIL`), so a message interrupted after an UNKNOWN command
//!    (by MAIL, HELO, QUIT, QUIT_NC, the end of the connection or a dropped command) gets no
//!    `xxfi_abort`; milterkit hands the message state to the milter's abort handler whenever a
//!    message ends without end of message.
//! 4. **`abort` runs only for an open message.** libmilter calls `xxfi_abort` for an ABORT taken
//!    from its UNKNOWN state (or, with `SMFIP_NOUNKNOWN`/`SMFIP_NOMAIL`, after an earlier ABORT or
//!    a finished message) even when no message is open; milterkit has no message state to hand
//!    over and calls nothing.
//! 5. **A malformed HELO closes the connection.** libmilter answers a HELO without its trailing
//!    NUL with nothing (a hang, as in 1.).
//! 6. **A message may have no headers.** libmilter steps from DATA to the body or to end of
//!    message only when the milter asked for neither headers nor EOH; a message without headers
//!    sent to a milter that asked for no EOH (`SMFIP_NOEOH`) would hang there. milterkit steps
//!    over the headers state as if `SMFIP_NOHDRS` had been agreed.

use crate::command::Command;
use crate::response::Decision;
use crate::stage::{Stage, Stages};

/// A state of libmilter's engine (`ST_*`): the last command it took. The order is libmilter's:
/// `trans_ok()` skips forward through it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum State {
    /// `ST_INIT`: nothing yet.
    Init,
    /// `ST_OPTS`: OPTNEG.
    Opts,
    /// `ST_CONN`: CONNECT.
    Conn,
    /// `ST_HELO`: HELO, and where libmilter returns after a decision or a fallback.
    Helo,
    /// `ST_MAIL`.
    Mail,
    /// `ST_RCPT`.
    Rcpt,
    /// `ST_DATA`.
    Data,
    /// `ST_HDRS`: a header.
    Hdrs,
    /// `ST_EOHS`: end of headers.
    Eohs,
    /// `ST_BODY`: a body chunk.
    Body,
    /// `ST_ENDM`: end of message.
    Endm,
    /// `ST_QUIT`.
    Quit,
    /// `ST_ABRT`: ABORT.
    Abrt,
    /// `ST_UNKN`: UNKNOWN.
    Unkn,
    /// `ST_Q_NC`: QUIT_NC, a new session follows.
    QuitNc,
}

impl State {
    /// In libmilter's order, for `trans_ok()`'s step to the next state.
    const ALL: [State; 15] = [
        State::Init,
        State::Opts,
        State::Conn,
        State::Helo,
        State::Mail,
        State::Rcpt,
        State::Data,
        State::Hdrs,
        State::Eohs,
        State::Body,
        State::Endm,
        State::Quit,
        State::Abrt,
        State::Unkn,
        State::QuitNc,
    ];

    const fn bit(self) -> u16 {
        1 << self as u16
    }

    /// The states allowed after this one (`NX_*`), from a table built at compile time.
    const fn next(self) -> u16 {
        NEXT[self as usize]
    }

    /// The reply-bearing stage of this state's command.
    pub(crate) const fn stage(self) -> Option<Stage> {
        Some(match self {
            State::Conn => Stage::Connect,
            State::Helo => Stage::Helo,
            State::Mail => Stage::Mail,
            State::Rcpt => Stage::Rcpt,
            State::Data => Stage::Data,
            State::Hdrs => Stage::Header,
            State::Eohs => Stage::Eoh,
            State::Body => Stage::Body,
            State::Endm => Stage::Eom,
            State::Unkn => Stage::Unknown,
            _ => return None,
        })
    }

    /// `ST_IN_MAIL`: from MAIL up to (not including) end of message; libmilter calls `xxfi_abort`
    /// when it leaves such a state other than by end of message.
    pub(crate) const fn in_mail(self) -> bool {
        matches!(
            self,
            State::Mail | State::Rcpt | State::Data | State::Hdrs | State::Eohs | State::Body
        )
    }

    /// True for the states of a message's commands: taking one opens a message if none is open.
    pub(crate) const fn opens_message(self) -> bool {
        self.in_mail() || matches!(self, State::Endm)
    }

    /// The state a command moves to (`cm_next`); `None` for MACRO, which changes no state.
    pub(crate) fn of(cmd: &Command) -> Option<State> {
        Some(match cmd {
            Command::Optneg(_) => State::Opts,
            Command::Macro { .. } => return None,
            Command::Connect(_) => State::Conn,
            Command::Helo { .. } => State::Helo,
            Command::Mail(_) => State::Mail,
            Command::Rcpt(_) => State::Rcpt,
            Command::Data => State::Data,
            Command::Header { .. } => State::Hdrs,
            Command::Eoh => State::Eohs,
            Command::Body(_) => State::Body,
            Command::Eom { .. } => State::Endm,
            Command::Abort => State::Abrt,
            Command::Quit => State::Quit,
            Command::QuitNc => State::QuitNc,
            Command::Unknown { .. } => State::Unkn,
        })
    }

    /// Where the session stands, for an out-of-order error.
    pub(crate) const fn describe(self) -> &'static str {
        match self {
            State::Init => "before negotiation",
            State::Opts => "after OPTNEG",
            State::Conn => "after CONNECT",
            State::Helo => "at connection level (after HELO or a finished message)",
            State::Mail => "after MAIL",
            State::Rcpt => "after RCPT",
            State::Data => "after DATA",
            State::Hdrs => "after HEADER",
            State::Eohs => "after EOH",
            State::Body => "after BODY",
            State::Endm => "after end of message",
            State::Quit => "after QUIT",
            State::Abrt => "after ABORT",
            State::Unkn => "after UNKNOWN",
            State::QuitNc => "after QUIT_NC",
        }
    }
}

/// libmilter's `next_states[]`: the states allowed after each state (`NX_*`), indexed by state.
const NEXT: [u16; 15] = {
    use State::*;
    const fn set(states: &[State]) -> u16 {
        let mut bits = 0;
        let mut i = 0;
        while i < states.len() {
            bits |= states[i].bit();
            i += 1;
        }
        bits
    }
    let mut t = [0; 15];
    t[Init as usize] = set(&[Opts]);
    t[Opts as usize] = set(&[Conn, Unkn]);
    t[Conn as usize] = set(&[Helo, Mail, Unkn]);
    t[Helo as usize] = set(&[Helo, Mail, Unkn]);
    t[Mail as usize] = set(&[Rcpt, Abrt, Unkn]);
    t[Rcpt as usize] = set(&[Hdrs, Eohs, Data, Body, Endm, Rcpt, Abrt, Unkn]);
    t[Data as usize] = set(&[Eohs, Hdrs, Abrt]);
    t[Hdrs as usize] = set(&[Eohs, Hdrs, Abrt]);
    t[Eohs as usize] = set(&[Body, Endm, Abrt]);
    t[Body as usize] = set(&[Endm, Body, Abrt]);
    t[Endm as usize] = set(&[Quit, Mail, Unkn, QuitNc]);
    t[Quit as usize] = 0;
    t[Abrt as usize] = 0;
    t[Unkn as usize] = set(&[Helo, Mail, Rcpt, Abrt, Data, Body, Unkn, Quit, QuitNc]);
    t[QuitNc as usize] = set(&[Conn, Unkn]);
    t
};

/// `trans_ok()`: `to` may follow `from`, directly or by stepping over states whose stage the MTA
/// does not send (`skip`, the agreement's `SMFIP_NO*` stages). The headers state is also stepped
/// over when the MTA sends headers: a message may have none (intended difference 6).
fn reachable(from: State, to: State, skip: Stages) -> bool {
    let mut s = from;
    loop {
        if s.next() & to.bit() != 0 {
            return true;
        }
        let Some(&n) = State::ALL.get(s as usize + 1) else {
            return false;
        };
        // `fix_stm()` marks a state skippable when its stage's `SMFIP_NO*` bit is set (EOM has
        // none, so its state is never stepped over).
        match n.stage() {
            Some(stage) if skip.has(stage) || n == State::Hdrs => s = n,
            _ => return false,
        }
    }
}

/// What libmilter does with a command in a state (`mi_engine()`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Admit {
    /// Allowed after the current state: handled.
    Direct,
    /// Not allowed after the current state but after HELO: libmilter aborts an open transaction
    /// (if its state was in one) and handles the command from HELO.
    FromHelo,
    /// Allowed from neither: libmilter drops the command without a callback or a reply, and its
    /// state becomes HELO (after an abort if it was in a transaction).
    Ignored,
}

/// What libmilter does with a command moving to `to` in state `from`.
pub(crate) fn admit(from: State, to: State, skip: Stages) -> Admit {
    if reachable(from, to, skip) {
        Admit::Direct
    } else if reachable(State::Helo, to, skip) {
        Admit::FromHelo
    } else {
        Admit::Ignored
    }
}

/// The state after the milter answered `decision` to the command that moved to `state`
/// (`mi_engine()` after `sendreply()`): ACCEPT returns to HELO; REJECT, TEMPFAIL and DISCARD (and
/// so a custom reply) return to HELO except at RCPT and UNKNOWN (`CT_IGNO`: only that recipient
/// or that command is refused); anything else keeps the state.
pub(crate) fn after_decision(state: State, decision: &Decision) -> State {
    let ignorable = matches!(state, State::Rcpt | State::Unkn);
    match decision {
        Decision::Accept => State::Helo,
        Decision::Reject
        | Decision::Tempfail
        | Decision::Discard
        | Decision::Reply(_)
        | Decision::Shutdown
            if !ignorable =>
        {
            State::Helo
        }
        _ => state,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use State::*;

    const NONE: Stages = Stages::empty();

    /// `(from, to, stages the MTA does not send, what libmilter does)`, each row a rule of
    /// libmilter's engine.
    const TRANSITIONS: &[(State, State, Stages, Admit)] = &[
        // A message without DATA: headers, body and end of message follow RCPT directly.
        (Rcpt, Hdrs, NONE, Admit::Direct),
        (Rcpt, Body, NONE, Admit::Direct),
        (Rcpt, Endm, NONE, Admit::Direct),
        // After DATA only headers and EOH, unless EOH is not sent (a message may have no headers).
        (Data, Body, NONE, Admit::Ignored),
        (Data, Body, Stages::EOH, Admit::Direct),
        (Data, Endm, Stages::EOH, Admit::Direct),
        (Data, Endm, NONE, Admit::Ignored),
        // MAIL and HELO inside a message: from HELO, after an abort.
        (Rcpt, Mail, NONE, Admit::FromHelo),
        (Body, Helo, NONE, Admit::FromHelo),
        (Endm, Mail, NONE, Admit::Direct),
        (Endm, Helo, NONE, Admit::FromHelo),
        // RCPT without MAIL: dropped unless MAIL is not sent; UNKNOWN leads to RCPT.
        (Helo, Rcpt, NONE, Admit::Ignored),
        (Helo, Rcpt, Stages::MAIL, Admit::Direct),
        (Unkn, Rcpt, NONE, Admit::Direct),
        // Headers and end of message do not follow UNKNOWN; DATA does.
        (Unkn, Hdrs, NONE, Admit::Ignored),
        (Unkn, Endm, NONE, Admit::Ignored),
        (Unkn, Data, NONE, Admit::Direct),
        // A second CONNECT or OPTNEG is dropped; QUIT_NC leads to CONNECT.
        (Conn, Conn, NONE, Admit::Ignored),
        (Helo, Opts, NONE, Admit::Ignored),
        (QuitNc, Conn, NONE, Admit::Direct),
        // QUIT is taken only after a message or UNKNOWN.
        (Endm, Quit, NONE, Admit::Direct),
        (Unkn, Quit, NONE, Admit::Direct),
        (Helo, Quit, NONE, Admit::Ignored),
        (Rcpt, Quit, NONE, Admit::Ignored),
        // After ABORT only stepping over UNKNOWN leads on.
        (Abrt, Mail, NONE, Admit::FromHelo),
        (Abrt, Rcpt, Stages::UNKNOWN, Admit::Direct),
    ];

    #[test]
    fn every_transition_is_libmilters() {
        for &(from, to, skip, admitted) in TRANSITIONS {
            assert_eq!(admit(from, to, skip), admitted, "{from:?} -> {to:?}");
        }
    }

    #[test]
    fn decisions_return_to_helo_except_refusals_at_rcpt_and_unknown() {
        for (state, decision, after) in [
            (Mail, Decision::Reject, Helo),
            (Rcpt, Decision::Reject, Rcpt),
            (Rcpt, Decision::Discard, Rcpt),
            (Rcpt, Decision::Accept, Helo),
            (Unkn, Decision::Tempfail, Unkn),
            (Body, Decision::Skip, Body),
            (Hdrs, Decision::Continue, Hdrs),
            (Conn, Decision::Accept, Helo),
        ] {
            assert_eq!(
                after_decision(state, &decision),
                after,
                "{decision:?} at {state:?}"
            );
        }
    }
}
