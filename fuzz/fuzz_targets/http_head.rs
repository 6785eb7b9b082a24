//! libFuzzer entry point of the `http_head` target: every input goes to
//! [`lectern_fuzz::http_head::run`], which holds the harness and its invariants.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lectern_fuzz::http_head::run(data));
