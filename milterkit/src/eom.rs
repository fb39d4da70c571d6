//! [`Eom`]: the end-of-message context, where a milter modifies the message.

use std::sync::atomic::{AtomicU32, Ordering};

use bytes::Bytes;
use milterkit_proto::{Actions, Agreement, Macros, MilterSession, MisuseError, Modification};
use tokio::sync::Notify;

use crate::meter::ModificationCounts;
use crate::milter::Text;

/// Progress requests from a handler to whoever drives it (the connection loop writes a
/// `SMFIR_PROGRESS` at once; the harness counts them).
#[derive(Debug, Default)]
pub(crate) struct Progress {
    pub(crate) notify: Notify,
    pub(crate) count: AtomicU32,
}

/// The end-of-message context handed to [`Milter::eom`](crate::Milter::eom): every modification
/// of libmilter, checked against what was negotiated when it is called, and sent in call order
/// before the decision (a replacement body goes last, as one run, which Postfix requires).
///
/// Header values fold with `"\n"` plus a space or tab; a `"\r\n"` is turned into `"\n"` (the MTA
/// adds the CR; a CRLF would come out as CR CR LF in Postfix).
#[derive(Debug)]
pub struct Eom<'a> {
    pub(crate) session: &'a mut MilterSession,
    pub(crate) body: Vec<Bytes>,
    pub(crate) progress: &'a Progress,
    /// What was made, for the metrics.
    pub(crate) counts: ModificationCounts,
}

fn b(v: impl AsRef<[u8]>) -> Bytes {
    Bytes::copy_from_slice(v.as_ref())
}

/// Header values use LF line ends on the wire.
pub(crate) fn header_value(v: impl AsRef<[u8]>) -> Bytes {
    let v = v.as_ref();
    if !v.windows(2).any(|w| w == b"\r\n") {
        return b(v);
    }
    let mut out = Vec::with_capacity(v.len());
    for (i, &c) in v.iter().enumerate() {
        if !(c == b'\r' && v.get(i + 1) == Some(&b'\n')) {
            out.push(c);
        }
    }
    out.into()
}

impl<'a> Eom<'a> {
    pub(crate) fn new(session: &'a mut MilterSession, progress: &'a Progress) -> Self {
        Eom {
            session,
            body: Vec::new(),
            progress,
            counts: ModificationCounts::default(),
        }
    }

    pub(crate) fn modify(&mut self, m: Modification) -> Result<(), MisuseError> {
        let kind = ModificationCounts::index(&m);
        self.session.modify(m)?;
        self.counts.bump(kind);
        Ok(())
    }

    /// Appends a header at the end of the header block (`smfi_addheader`; needs
    /// [`Actions::ADD_HEADER`]).
    #[doc(alias = "smfi_addheader")]
    pub fn add_header(
        &mut self,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), MisuseError> {
        self.modify(Modification::AddHeader {
            name: b(name),
            value: header_value(value),
        })
    }

    /// Inserts a header at `index` among all the headers the MTA stores, 0 being the top
    /// (`smfi_insheader`; needs [`Actions::ADD_HEADER`]). Postfix counts its own `Received:`,
    /// which the milter never saw; only 0 (top) and a large index (end) mean the same everywhere.
    #[doc(alias = "smfi_insheader")]
    pub fn insert_header(
        &mut self,
        index: u32,
        name: impl AsRef<[u8]>,
        value: impl AsRef<[u8]>,
    ) -> Result<(), MisuseError> {
        self.modify(Modification::InsertHeader {
            index,
            name: b(name),
            value: header_value(value),
        })
    }

    /// Changes the `index`-th (1-based) header called `name` (`smfi_chgheader`; needs
    /// [`Actions::CHANGE_HEADER`]). An index past the last such header adds the header.
    #[doc(alias = "smfi_chgheader")]
    pub fn change_header(
        &mut self,
        name: impl AsRef<[u8]>,
        index: u32,
        value: impl AsRef<[u8]>,
    ) -> Result<(), MisuseError> {
        let value = header_value(value);
        if value.is_empty() {
            return Err(MisuseError::Invalid {
                what: "change header",
                reason: "empty value deletes: use delete_header",
            });
        }
        self.modify(Modification::ChangeHeader {
            index,
            name: b(name),
            value,
        })
    }

    /// Deletes the `index`-th (1-based) header called `name` (`smfi_chgheader` with no value;
    /// needs [`Actions::CHANGE_HEADER`]). Postfix renumbers after a delete, Sendmail does not:
    /// delete duplicates from the highest index down.
    pub fn delete_header(&mut self, name: impl AsRef<[u8]>, index: u32) -> Result<(), MisuseError> {
        self.modify(Modification::ChangeHeader {
            index,
            name: b(name),
            value: Bytes::new(),
        })
    }

    /// Changes the envelope sender (`smfi_chgfrom`; needs [`Actions::CHANGE_FROM`]).
    #[doc(alias = "smfi_chgfrom")]
    pub fn change_from(&mut self, sender: impl AsRef<[u8]>) -> Result<(), MisuseError> {
        self.modify(Modification::ChangeFrom {
            sender: b(sender),
            args: None,
        })
    }

    /// Changes the envelope sender with ESMTP parameters in one space-separated string, such as
    /// `"RET=HDRS ENVID=x"` (Postfix honours RET and ENVID; Sendmail parses them as MAIL
    /// parameters).
    pub fn change_from_with_args(
        &mut self,
        sender: impl AsRef<[u8]>,
        args: impl AsRef<[u8]>,
    ) -> Result<(), MisuseError> {
        self.modify(Modification::ChangeFrom {
            sender: b(sender),
            args: Some(b(args)),
        })
    }

    /// Adds a recipient (`smfi_addrcpt`; needs [`Actions::ADD_RCPT`]).
    #[doc(alias = "smfi_addrcpt")]
    pub fn add_rcpt(&mut self, rcpt: impl AsRef<[u8]>) -> Result<(), MisuseError> {
        self.modify(Modification::AddRcpt { rcpt: b(rcpt) })
    }

    /// Adds a recipient with ESMTP parameters such as `"NOTIFY=NEVER"` (`smfi_addrcpt_par`; needs
    /// [`Actions::ADD_RCPT_PAR`]).
    #[doc(alias = "smfi_addrcpt_par")]
    pub fn add_rcpt_with_args(
        &mut self,
        rcpt: impl AsRef<[u8]>,
        args: impl AsRef<[u8]>,
    ) -> Result<(), MisuseError> {
        self.modify(Modification::AddRcptPar {
            rcpt: b(rcpt),
            args: Some(b(args)),
        })
    }

    /// Removes a recipient, named exactly as in its RCPT (`smfi_delrcpt`; needs
    /// [`Actions::DELETE_RCPT`]).
    #[doc(alias = "smfi_delrcpt")]
    pub fn delete_rcpt(&mut self, rcpt: impl AsRef<[u8]>) -> Result<(), MisuseError> {
        self.modify(Modification::DeleteRcpt { rcpt: b(rcpt) })
    }

    /// Replaces the body (`smfi_replacebody`; needs [`Actions::CHANGE_BODY`]): each call appends
    /// to the new body. Any size; it is sent in 65,535-byte chunks after the other modifications.
    /// Use CRLF line ends.
    #[doc(alias = "smfi_replacebody")]
    pub fn replace_body(&mut self, chunk: impl Into<Bytes>) -> Result<(), MisuseError> {
        if !self.agreement().actions.contains(Actions::CHANGE_BODY) {
            return Err(MisuseError::NotNegotiated {
                what: "replace body",
                needs: Actions::CHANGE_BODY,
            });
        }
        self.body.push(chunk.into());
        Ok(())
    }

    /// Quarantines the message with a reason (`smfi_quarantine`; needs
    /// [`Actions::QUARANTINE`]). Postfix puts it on hold and keeps 100 bytes of the reason.
    #[doc(alias = "smfi_quarantine")]
    pub fn quarantine(&mut self, reason: impl AsRef<[u8]>) -> Result<(), MisuseError> {
        self.modify(Modification::Quarantine { reason: b(reason) })
    }

    /// Tells the MTA to keep waiting (`smfi_progress`). Long handlers need not call it: progress
    /// goes out on its own every [`Config::progress_interval`](crate::Config::progress_interval).
    #[doc(alias = "smfi_progress")]
    pub async fn progress(&mut self) {
        self.progress.count.fetch_add(1, Ordering::Relaxed);
        self.progress.notify.notify_one();
        tokio::task::yield_now().await;
    }

    /// What was negotiated with the MTA.
    pub fn agreement(&self) -> &Agreement {
        // The session answers OPTNEG before any message, so an agreement exists at EOM.
        self.session.agreement().unwrap_or(&EMPTY_AGREEMENT)
    }

    /// Every macro in effect at end of message.
    pub fn macros(&self) -> &Macros {
        self.session.macros()
    }

    /// The value of macro `name` in effect (`smfi_getsymval`).
    pub fn macro_value(&self, name: &str) -> Option<Text<'_>> {
        self.session.macros().get(name).map(Text::new)
    }

    /// Sends the buffered replacement body into the session, as one run.
    pub(crate) fn finish(&mut self) -> Result<(), MisuseError> {
        if !self.body.is_empty() {
            self.counts.bump(ModificationCounts::REPLACE_BODY);
        }
        for chunk in std::mem::take(&mut self.body) {
            self.session.modify(Modification::ReplaceBody { chunk })?;
        }
        Ok(())
    }
}

static EMPTY_AGREEMENT: Agreement = Agreement {
    version: 0,
    actions: Actions::empty(),
    protocol: milterkit_proto::ProtocolFlags::empty(),
    macros: milterkit_proto::MacroLists::new(),
};
