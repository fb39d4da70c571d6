//! What the milterkit test binaries share: the scripted milter, a milter served in the background.
// Each test binary uses part of it.
#![allow(dead_code)]

pub(crate) mod scripted;
pub(crate) mod served;
