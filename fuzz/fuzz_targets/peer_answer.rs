//! Fuzz target `peer_answer`: see `tests/src/fuzz.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::peer_answer(data));
