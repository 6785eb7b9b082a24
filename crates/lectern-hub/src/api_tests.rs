//! Unit tests of the hub's own API (`lib.rs`) that pin what the broader hub tests leave free:
//! the heads digest and the index built from it, the not-found test, and a new conversation
//! with a peer. Each names the mutation (found by cargo-mutants) it kills.

use automerge::ChangeHash;
use lectern_model::{RejectCode, Rejection, Role};
use lectern_store::Store;
use sha2::Digest;

use crate::test_support::{TempDir, ask, caller, cmd, create_session, session};
use crate::{Hub, HubConfig, HubError, heads_digest};

fn hub_at(dir: &TempDir) -> Hub {
    Hub::new(
        Store::open(dir.path()).expect("open store"),
        HubConfig::default(),
    )
}

/// The heads digest is the SHA-256 of the heads in sorted order: independent of their order,
/// different for different heads, and its own value for no heads.
///
/// Kills: `heads_digest` → `[0; 32]`, `[1; 32]`.
#[test]
fn the_heads_digest_is_the_sha256_of_the_sorted_heads() {
    let (h1, h2) = (ChangeHash([1; 32]), ChangeHash([2; 32]));
    let mut expected = sha2::Sha256::new();
    expected.update([1u8; 32]);
    expected.update([2u8; 32]);
    let expected: [u8; 32] = expected.finalize().into();
    assert_eq!(heads_digest(&[h2, h1]), expected);
    assert_eq!(heads_digest(&[h1, h2]), expected);
    assert_ne!(heads_digest(&[h1]), heads_digest(&[h2]));
    let empty: [u8; 32] = sha2::Sha256::new().finalize().into();
    assert_eq!(heads_digest(&[]), empty);
}

/// `heads_summary` lists every stored document with the digest of its current heads, sorted
/// by document id, without loading anything.
///
/// Kills: `Hub::heads_summary` → `vec![]`.
#[tokio::test]
async fn the_heads_summary_lists_every_document_with_its_digest() {
    let dir = TempDir::new("summary");
    let hub = hub_at(&dir);
    for id in ["s2", "s1"] {
        hub.execute(
            session(id),
            caller("ada", Role::Instructor),
            cmd(&format!("c-{id}"), create_session(id)),
        )
        .await
        .expect("create");
    }
    hub.execute(
        session("s2"),
        caller("sam", Role::Student),
        cmd("q", ask("?")),
    )
    .await
    .expect("ask");
    let mut expected = Vec::new();
    for id in ["s1", "s2"] {
        let heads = hub
            .read(session(id), |r| r.doc().get_heads())
            .await
            .expect("read");
        expected.push((session(id), heads_digest(&heads)));
    }
    assert_eq!(hub.heads_summary(), expected);
    hub.shutdown().await.expect("shutdown");
}

/// Only the not-found answer is not-found: another rejection or another error is not.
///
/// Kills: `HubError::is_not_found` → `true`.
#[test]
fn only_the_not_found_answer_is_not_found() {
    assert!(HubError::not_found(&session("s")).is_not_found());
    let other = HubError::Rejected(Rejection::new(RejectCode::DuplicateCommand, "again"));
    assert!(!other.is_not_found());
    assert!(!HubError::Overloaded("session/s".into()).is_not_found());
    assert!(!HubError::ShuttingDown.is_not_found());
}

/// A sync message generated twice without a reply is not repeated (automerge remembers it is
/// in flight), but a new conversation with the peer (`peer_connected`, after a reconnect) sends
/// it again: what was in flight on the old connection is forgotten.
///
/// Kills: `Hub::peer_connected` → `()`, and `+=` → `*=` in it (the epoch never changes; `-=`
/// underflows).
#[tokio::test]
async fn a_new_conversation_with_a_peer_forgets_what_was_in_flight() {
    let dir = TempDir::new("peer-epoch");
    let hub = hub_at(&dir);
    hub.execute(
        session("s"),
        caller("ada", Role::Instructor),
        cmd("create", create_session("s")),
    )
    .await
    .expect("create");
    let first = hub.generate_sync(session("s"), "b").await.expect("sync");
    assert!(first.is_some(), "a first message to a new peer");
    let again = hub.generate_sync(session("s"), "b").await.expect("sync");
    assert_eq!(again, None, "the same message again while it is in flight");
    hub.peer_connected("b");
    let after = hub.generate_sync(session("s"), "b").await.expect("sync");
    assert!(after.is_some(), "nothing sent after a reconnect");
    let again = hub.generate_sync(session("s"), "b").await.expect("sync");
    assert_eq!(again, None, "in flight on the new connection");
    hub.shutdown().await.expect("shutdown");
}
