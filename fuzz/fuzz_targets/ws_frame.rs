//! libFuzzer entry point of the `ws_frame` target: every input goes to
//! [`lectern_fuzz::ws_frame::run`], which holds the harness and its invariants.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lectern_fuzz::ws_frame::run(data));
