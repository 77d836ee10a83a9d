//! Fuzz target `network_file`: see `tests/src/fuzz.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::network_file(data));
