//! Responses: every frame that decodes as a milter response re-encodes to identical bytes.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| milterkit_proto::fuzzing::responses(data));
