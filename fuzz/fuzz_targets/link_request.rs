//! Fuzz target `link_request`: see `tests/src/fuzz.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::link_request(data));
