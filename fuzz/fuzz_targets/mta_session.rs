//! MTA session driven through a fixed transaction with arbitrary milter replies: never panics, never sends past a pending reply.
#![no_main]
libfuzzer_sys::fuzz_target!(|data: &[u8]| milterkit_proto::fuzzing::mta_session(data));
