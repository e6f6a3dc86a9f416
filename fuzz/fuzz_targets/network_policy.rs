#![no_main]
//! `cargo xtask fuzz` target; the body lives in `sensor::fuzzing::network_policy` so the corpus replay
//! test (`sensor/tests/fuzz_corpus.rs`) runs the very same code without libFuzzer.

libfuzzer_sys::fuzz_target!(|data: &[u8]| sensor::fuzzing::network_policy(data));
