//! Commands: every frame that decodes as an MTA command re-encodes and decodes back to the same command.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| milterkit_proto::fuzzing::commands(data));
