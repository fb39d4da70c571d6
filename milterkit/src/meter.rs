//! What serving counts into [`Metrics`](crate::metrics::Metrics) when the `metrics` feature is
//! on. Without the feature every type here is empty and every call does nothing: no clock is read
//! and nothing is counted.

use std::time::Instant;

use milterkit_proto::{Modification, Stage};

use crate::Config;

/// The metrics a dispatcher counts into, if any.
#[derive(Debug, Clone, Default)]
pub(crate) struct Meter {
    #[cfg(feature = "metrics")]
    metrics: Option<crate::metrics::Metrics>,
}

/// Modifications made at one end of message, by kind (counted once the decision went out).
#[derive(Debug, Default, Clone, Copy)]
pub(crate) struct ModificationCounts(#[cfg(feature = "metrics")] [u32; KINDS.len()]);

/// Label values of `milter_modifications`, in the order of [`ModificationCounts::index`].
#[cfg(feature = "metrics")]
const KINDS: [&str; 9] = [
    "add_header",
    "insert_header",
    "change_header",
    "change_from",
    "add_rcpt",
    "add_rcpt_par",
    "delete_rcpt",
    "replace_body",
    "quarantine",
];

#[cfg(feature = "metrics")]
impl Meter {
    pub(crate) fn new(config: &Config) -> Self {
        Meter {
            metrics: config.metrics.clone(),
        }
    }

    /// When a handler starts, if handlers are timed.
    pub(crate) fn start(&self) -> Option<Instant> {
        self.metrics.is_some().then(Instant::now)
    }

    /// A handler of `stage` that started at `started` (from [`Meter::start`]) is done.
    pub(crate) fn handler(&self, stage: &'static str, started: Option<Instant>) {
        if let (Some(m), Some(t)) = (&self.metrics, started) {
            m.handler(stage, t);
        }
    }

    /// A message began.
    pub(crate) fn message(&self) {
        if let Some(m) = &self.metrics {
            m.message();
        }
    }

    /// `decision` (its name) went out at `stage`.
    pub(crate) fn decision(&self, stage: Stage, decision: &'static str) {
        if let Some(m) = &self.metrics {
            m.decision(stage, decision);
        }
    }

    /// The fail-safe decision went out at `stage`.
    pub(crate) fn fail_safe(&self, stage: Stage) {
        if let Some(m) = &self.metrics {
            m.fail_safe(stage);
        }
    }

    /// An end of message's modifications went out.
    pub(crate) fn modifications(&self, counts: &ModificationCounts) {
        if let Some(m) = &self.metrics {
            for (kind, n) in KINDS.iter().zip(counts.0) {
                if n > 0 {
                    m.modifications(kind, n);
                }
            }
        }
    }
}

#[cfg(feature = "metrics")]
impl ModificationCounts {
    pub(crate) const REPLACE_BODY: usize = 7;

    /// The index of `m`'s kind in [`KINDS`].
    pub(crate) fn index(m: &Modification) -> usize {
        match m {
            Modification::AddHeader { .. } => 0,
            Modification::InsertHeader { .. } => 1,
            Modification::ChangeHeader { .. } => 2,
            Modification::ChangeFrom { .. } => 3,
            Modification::AddRcpt { .. } => 4,
            Modification::AddRcptPar { .. } => 5,
            Modification::DeleteRcpt { .. } => 6,
            Modification::ReplaceBody { .. } => 7,
            Modification::Quarantine { .. } => 8,
            // A kind this version does not know is not counted.
            _ => KINDS.len(),
        }
    }

    /// The `kind` label of `m` (`add_header` …; `other` for a kind this version does not know).
    #[cfg(feature = "chain")]
    pub(crate) fn kind(m: &Modification) -> &'static str {
        KINDS.get(Self::index(m)).copied().unwrap_or("other")
    }

    /// One more modification of kind `kind` (from [`ModificationCounts::index`]).
    pub(crate) fn bump(&mut self, kind: usize) {
        if let Some(n) = self.0.get_mut(kind) {
            *n = n.saturating_add(1);
        }
    }
}

// Without metrics: the same calls, doing nothing.
#[cfg(not(feature = "metrics"))]
impl Meter {
    pub(crate) fn new(_: &Config) -> Self {
        Meter {}
    }

    pub(crate) fn start(&self) -> Option<Instant> {
        None
    }

    pub(crate) fn handler(&self, _: &'static str, _: Option<Instant>) {}

    pub(crate) fn message(&self) {}

    pub(crate) fn decision(&self, _: Stage, _: &'static str) {}

    pub(crate) fn fail_safe(&self, _: Stage) {}

    pub(crate) fn modifications(&self, _: &ModificationCounts) {}
}

#[cfg(not(feature = "metrics"))]
impl ModificationCounts {
    pub(crate) const REPLACE_BODY: usize = 0;

    pub(crate) fn index(_: &Modification) -> usize {
        0
    }

    pub(crate) fn bump(&mut self, _: usize) {}
}
