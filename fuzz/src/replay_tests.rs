//! Every committed corpus input (`fuzz/corpus/<target>/`, the seeds and what fuzzing kept, and
//! any crash fixed since) replayed through its harness on a normal build, so a regression
//! fails `cargo test` without a fuzzer.

use std::path::{Path, PathBuf};

use crate::TARGETS;

fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target);
    let mut inputs: Vec<(PathBuf, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a corpus entry").path();
            let bytes = std::fs::read(&path).expect("a corpus file");
            (path, bytes)
        })
        .collect();
    inputs.sort();
    inputs
}

fn replay(target: &str, run: impl Fn(&[u8])) {
    let inputs = corpus(target);
    assert!(!inputs.is_empty(), "{target} has no corpus");
    for (path, bytes) in inputs {
        let outcome = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| run(&bytes)));
        assert!(outcome.is_ok(), "{target}: {} fails", path.display());
    }
}

#[test]
fn every_target_has_a_corpus_and_a_test() {
    for target in TARGETS {
        assert!(!corpus(target).is_empty(), "{target} has no corpus");
    }
    let this = include_str!("replay_tests.rs");
    for target in TARGETS {
        assert!(
            this.contains(&format!("fn {target}_corpus_replays()")),
            "{target} has no replay test"
        );
    }
}

#[test]
fn ws_frame_corpus_replays() {
    replay("ws_frame", crate::ws_frame::run);
}

#[test]
fn sio_packet_corpus_replays() {
    replay("sio_packet", crate::sio_packet::run);
}

#[test]
fn http_head_corpus_replays() {
    replay("http_head", crate::http_head::run);
}

#[test]
fn peer_frame_corpus_replays() {
    replay("peer_frame", crate::peer_frame::run);
}

#[test]
fn hub_sync_corpus_replays() {
    let fixture = crate::hub_sync::Fixture::new();
    replay("hub_sync", |data| fixture.run(data));
}

#[test]
fn rest_command_corpus_replays() {
    replay("rest_command", crate::rest_command::run);
}

#[test]
fn jwt_corpus_replays() {
    replay("jwt", crate::jwt::run);
}
