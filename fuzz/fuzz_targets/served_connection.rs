//! A whole milterkit connection served in memory over arbitrary MTA input: never panics, always ends after EOF.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| milterkit::fuzzing::served_connection(data));
