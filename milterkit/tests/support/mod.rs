//! What the milterkit test binaries share: the scripted milter, a milter that holds messages until
//! a gate opens, a milter served in the background, hand-written commands, what an outcome sent.
// Each test binary uses part of it.
#![allow(dead_code)]

pub(crate) mod commands;
pub(crate) mod gate;
pub(crate) mod scripted;
pub(crate) mod served;

use milterkit::mta::Outcome;
use milterkit::proto::Sent;
use milterkit::Stage;

/// The stages of `out`'s steps whose commands were sent (not skipped), in order.
pub(crate) fn sent_stages(out: &Outcome) -> Vec<Stage> {
    out.steps
        .iter()
        .filter(|s| s.sent != Sent::Skipped)
        .map(|s| s.stage)
        .collect()
}
