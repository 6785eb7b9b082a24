//! Lectern's fuzz targets: one harness per decoder a stranger can reach (a client's WebSocket
//! frames, Engine.IO and Socket.IO packets, request heads on the lean path, REST command
//! bodies and JWTs; a peer's frames and automerge sync messages). Each `run` takes any bytes,
//! feeds them to the product's own decoder and asserts what must hold for every input: no
//! panic, the same result whether the bytes arrive whole or in pieces, a decode → encode →
//! decode round trip where there is an encoder, errors with a stable code, and allocation
//! bounded by the input's size ([`alloc`]). A broken invariant panics, which libFuzzer reports
//! as a crash with the input that caused it.
//!
//! The harnesses live here, not in the fuzz binaries (`fuzz_targets/`), so that a normal
//! `cargo test --workspace` replays every committed corpus input through them
//! (`replay_tests.rs`); the binaries, built by `scripts/fuzz` with coverage instrumentation and
//! the `libfuzzer` feature, only hand libFuzzer's inputs to `run`.

pub mod alloc;
pub mod http_head;
pub mod hub_sync;
pub mod jwt;
pub mod peer_frame;
pub mod rest_command;
pub mod sio_packet;
pub mod ws_frame;

#[cfg(test)]
mod replay_tests;

/// The fuzz targets, by the name of their binary and corpus directory (`fuzz/corpus/<name>`).
pub const TARGETS: &[&str] = &[
    "ws_frame",
    "sio_packet",
    "http_head",
    "peer_frame",
    "hub_sync",
    "rest_command",
    "jwt",
];
