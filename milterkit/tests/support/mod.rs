//! What the milterkit test binaries share: the scripted milter.
// Each test binary uses part of it.
#![allow(dead_code)]

pub(crate) mod scripted;
