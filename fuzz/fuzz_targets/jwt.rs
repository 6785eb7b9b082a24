//! libFuzzer entry point of the `jwt` target: every input goes to
//! [`lectern_fuzz::jwt::run`], which holds the harness and its invariants.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lectern_fuzz::jwt::run(data));
