//! Fuzz target `scenario_file`: see `tests/src/fuzz.rs`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| tests::fuzz::scenario_file(data));
