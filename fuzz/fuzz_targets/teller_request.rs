//! Fuzz target `teller_request`: see `tests/src/fuzz.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::teller_request(data));
