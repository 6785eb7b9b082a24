//! libFuzzer entry point of the `sio_packet` target: every input goes to
//! [`lectern_fuzz::sio_packet::run`], which holds the harness and its invariants.

#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| lectern_fuzz::sio_packet::run(data));
