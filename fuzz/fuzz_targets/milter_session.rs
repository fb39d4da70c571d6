//! Milter session fed arbitrary MTA input in pieces: never panics, and everything it sends decodes as responses.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| milterkit_proto::fuzzing::milter_session(data));
