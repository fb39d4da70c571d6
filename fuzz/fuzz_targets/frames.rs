//! Frame decoding: whole and split input give the same frames, which re-encode to their own bytes, within the size limit.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| milterkit_proto::fuzzing::frames(data));
