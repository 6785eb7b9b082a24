//! libFuzzer entry point of the `hub_sync` target: every input goes to
//! [`lectern_fuzz::hub_sync::run`], which holds the harness and its invariants.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lectern_fuzz::hub_sync::run(data));
