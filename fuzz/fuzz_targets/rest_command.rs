//! libFuzzer entry point of the `rest_command` target: every input goes to
//! [`lectern_fuzz::rest_command::run`], which holds the harness and its invariants.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lectern_fuzz::rest_command::run(data));
