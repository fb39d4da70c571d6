//! What the milterkit test binaries share: the scripted milter, a milter served in the background,
//! hand-written commands.
// Each test binary uses part of it.
#![allow(dead_code)]

pub(crate) mod commands;
pub(crate) mod scripted;
pub(crate) mod served;
