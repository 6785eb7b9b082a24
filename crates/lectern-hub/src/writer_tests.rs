//! Unit tests of the writer task (`doc.rs`) that pin what the broader hub tests leave free:
//! the batch size cap, the heads digest of a document stored without one, the answer for a
//! document that does not load, commands on a live writer of a document that does not exist,
//! what a writer keeps between batches (its sync states), and the compaction threshold. Each
//! names the mutation (found by cargo-mutants) it kills.

use std::future::Future;
use std::pin::pin;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use lectern_model::{CommandBody, DocId, Millis, Replica, Role};
use lectern_store::{Batch, Store};

use crate::test_support::{TempDir, ask, caller, cmd, create_session, session};
use crate::{Hub, HubConfig, HubError};

fn hub_with(dir: &TempDir, edit: impl FnOnce(&mut HubConfig)) -> Hub {
    let mut config = HubConfig {
        // Nothing retires by itself in these tests.
        doc_idle_ms: 600_000,
        ..HubConfig::default()
    };
    edit(&mut config);
    Hub::new(Store::open(dir.path()).expect("open store"), config)
}

async fn created(hub: &Hub, id: &str) {
    hub.execute(
        session(id),
        caller("ada", Role::Instructor),
        cmd(&format!("create-{id}"), create_session(id)),
    )
    .await
    .expect("create session");
}

/// Polls `fut` once: `None` if it is still waiting (its message is queued), else its result.
fn poll_once<T>(fut: impl Future<Output = T>) -> Option<T> {
    let mut fut = pin!(fut);
    match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

/// Blocks `id`'s writer inside a read until the returned sender is dropped; returns once the
/// writer is inside it.
async fn block_writer(hub: &Hub, id: &str) -> std::sync::mpsc::Sender<()> {
    let (started_tx, started) = tokio::sync::oneshot::channel();
    let (release, release_rx) = std::sync::mpsc::channel::<()>();
    let hub2 = hub.clone();
    let doc = session(id);
    tokio::spawn(async move {
        let _ = hub2
            .read(doc, move |_| {
                let _ = started_tx.send(());
                let _ = release_rx.recv();
            })
            .await;
    });
    started.await.expect("the writer runs the blocking read");
    release
}

/// Waits (up to 10 s) until `id` has applied every command of `ids`.
async fn applied_all(hub: &Hub, id: &str, ids: Vec<String>) {
    tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ids = ids.clone();
            let done = hub
                .read(session(id), move |r| {
                    ids.iter()
                        .all(|c| r.has_applied(&c.parse().expect("command id")))
                })
                .await
                .expect("read");
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the queued commands apply within 10 s");
}

/// A writer takes at most `batch_max_messages` messages per batch: five commands queued
/// behind a busy writer with a cap of 2 are committed in exactly three batches (2, 2, 1).
///
/// Kills: `batch.len() < batch_max` → `<=` in `doc::run` (batches of 3, 2).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_takes_at_most_batch_max_messages() {
    let dir = TempDir::new("batch-max");
    let hub = hub_with(&dir, |c| c.batch_max_messages = 2);
    created(&hub, "s").await;
    let release = block_writer(&hub, "s").await;
    let before = hub.stats().batches;
    let ids: Vec<String> = (0..5).map(|i| format!("q{i}")).collect();
    for id in &ids {
        let who = caller(&format!("u{id}"), Role::Student);
        let queued = poll_once(hub.execute(session("s"), who, cmd(id, ask("queued?"))));
        assert!(queued.is_none(), "{id} queues behind the busy writer");
    }
    drop(release);
    applied_all(&hub, "s", ids).await;
    assert_eq!(hub.stats().batches - before, 3, "{:?}", hub.stats());
    hub.shutdown().await.expect("shutdown");
}

/// A document in the store without a heads digest (written by a tool, or restored) is served,
/// and its digest joins the heads index once a writer loads it (so anti-entropy sees it).
///
/// Kills: `doc::index_undigested` → `()`.
#[tokio::test]
async fn a_document_stored_without_a_heads_digest_gets_one_once_loaded() {
    let dir = TempDir::new("undigested");
    let mut replica = Replica::new(session("s"), &[5u8; 24]);
    replica
        .apply(
            &caller("ada", Role::Instructor),
            &cmd("create", create_session("s")),
            Millis(1),
        )
        .expect("create");
    let heads = replica.doc().get_heads();
    let store = Store::open(dir.path()).expect("open store");
    let mut batch = Batch::new();
    batch.put_snapshot("session/s", replica.save(), 0);
    store.commit(batch).expect("commit");
    let hub = Hub::new(store, HubConfig::default());
    assert_eq!(
        hub.doc_heads(&session("s")),
        None,
        "stored without a digest"
    );
    let token = hub
        .read(session("s"), |r| r.token())
        .await
        .expect("a stored document is served without a digest");
    assert_eq!(token, replica.token());
    assert_eq!(
        hub.doc_heads(&session("s")),
        Some(crate::heads_digest(&heads)),
        "the loaded document's digest is indexed"
    );
    hub.shutdown().await.expect("shutdown");
}

/// A stored document whose bytes do not load answers every message with the load error
/// (`internal`), and the hub keeps serving other documents.
///
/// Kills: `doc::fail_all` → `()` (the callers would get `shutting_down`).
#[tokio::test]
async fn a_document_that_does_not_load_answers_the_load_error() {
    let dir = TempDir::new("no-load");
    let store = Store::open(dir.path()).expect("open store");
    let mut batch = Batch::new();
    batch.put_snapshot("session/bad", b"not an automerge document".to_vec(), 0);
    store.commit(batch).expect("commit");
    let hub = Hub::new(store, HubConfig::default());
    let read = hub.read(session("bad"), |r| r.token()).await;
    assert!(
        matches!(&read, Err(HubError::Load { doc, .. }) if doc == "session/bad"),
        "{read:?}"
    );
    let ask = hub
        .execute(
            session("bad"),
            caller("sam", Role::Student),
            cmd("q", ask("?")),
        )
        .await
        .expect_err("a command on a document that does not load");
    assert!(matches!(ask, HubError::Load { .. }), "{ask:?}");
    assert_eq!(ask.code(), "internal");
    created(&hub, "good").await;
    hub.shutdown().await.expect("shutdown");
}

/// A writer running for an inbox that does not exist (its owner read it: an empty inbox) still
/// refuses every command but the creating ones with `doc_not_found`, and writes nothing.
///
/// Kills: the guard `!live.exists() && !creates_document(..)` → `false` in `doc::process` (the
/// command would reach the model with the genesis inbox).
#[tokio::test]
async fn a_live_writer_of_an_absent_inbox_refuses_other_commands() {
    let dir = TempDir::new("absent-inbox");
    let hub = hub_with(&dir, |_| {});
    let inbox = DocId::Inbox("kim".parse().expect("user id"));
    let kim = caller("kim", Role::Student);
    let me = kim.clone();
    hub.read(inbox.clone(), move |r| r.inbox_view(&me).map(|_| ()))
        .await
        .expect("read")
        .expect("the owner reads their empty inbox");
    assert_eq!(hub.loaded_docs(), 1, "the inbox read runs on a writer");
    for (i, body) in [
        CommandBody::InboxRead {
            notifications: vec![],
        },
        CommandBody::InboxRead {
            notifications: vec!["n1".parse().expect("id")],
        },
    ]
    .into_iter()
    .enumerate()
    {
        let err = hub
            .execute(inbox.clone(), kim.clone(), cmd(&format!("r{i}"), body))
            .await
            .expect_err("refused");
        assert!(err.is_not_found(), "{err:?}");
    }
    assert_eq!(hub.stats().commands_rejected, 2);
    assert_eq!(hub.store().doc_ids().expect("ids"), Vec::<String>::new());
    hub.shutdown().await.expect("shutdown");
}

/// Commands the model refuses are counted as rejected, and only they.
///
/// Kills: `rejected += 1` → `*=` for a model rejection in `doc::process` (the count stays 0).
#[tokio::test]
async fn refused_commands_are_counted() {
    let dir = TempDir::new("rejected");
    let hub = hub_with(&dir, |_| {});
    created(&hub, "s").await;
    let sam = caller("sam", Role::Student);
    hub.execute(session("s"), sam.clone(), cmd("q1", ask("once")))
        .await
        .expect("ask");
    for _ in 0..2 {
        let dup = hub
            .execute(session("s"), sam.clone(), cmd("q1", ask("once")))
            .await
            .expect_err("a duplicate");
        assert_eq!(dup.code(), "duplicate_command");
    }
    let stats = hub.stats();
    assert_eq!((stats.commands_applied, stats.commands_rejected), (2, 2));
    hub.shutdown().await.expect("shutdown");
}

/// A batch that changes nothing (reads, a sync message generated) commits nothing: no store
/// batch, no fsync.
///
/// Kills: `changed || !dirty_peers.is_empty()` → `changed || dirty_peers.is_empty()` in
/// `doc::process` (an empty batch committed for every read).
#[tokio::test]
async fn reads_and_generated_sync_messages_commit_nothing() {
    let dir = TempDir::new("read-only");
    let hub = hub_with(&dir, |_| {});
    created(&hub, "s").await;
    let (batches, fsyncs) = (hub.stats().batches, hub.store().stats().fsyncs);
    for _ in 0..3 {
        hub.read(session("s"), |r| r.token()).await.expect("read");
    }
    let message = hub.generate_sync(session("s"), "peer").await.expect("sync");
    assert!(message.is_some(), "a first message to a new peer");
    assert_eq!(hub.stats().batches, batches, "{:?}", hub.stats());
    assert_eq!(hub.store().stats().fsyncs, fsyncs);
    hub.shutdown().await.expect("shutdown");
}

/// The compaction threshold, exactly: a document's chunks are folded into a snapshot only
/// once they weigh MORE than `max(snapshot, compact_min_bytes)`. The chunk sizes are measured
/// on a first hub that never compacts (also: no compaction below the threshold), then a second
/// hub's threshold is set to the first two chunks' total: the second command stays a chunk,
/// the third compacts.
///
/// Kills, in `doc::storage_batch`: `>` → `<` (every batch compacts), `>` → `>=` and `+` → `*`
/// (the second command compacts).
#[tokio::test]
async fn a_document_is_compacted_exactly_past_its_threshold() {
    async fn step(hub: &Hub, i: usize) -> (u64, lectern_store::StoredDoc) {
        let (who, body) = if i == 0 {
            (caller("ada", Role::Instructor), create_session("s"))
        } else {
            (caller("sam", Role::Student), ask("how big?"))
        };
        hub.execute(session("s"), who, cmd(&format!("c{i}"), body))
            .await
            .expect("command");
        let stored = hub
            .store()
            .load_doc("session/s")
            .expect("load")
            .expect("stored");
        (hub.stats().compactions, stored)
    }
    let fixed = |c: &mut HubConfig| c.clock = std::sync::Arc::new(|| Millis(1_700_000_000_000));
    let first_dir = TempDir::new("compact-measure");
    let first = hub_with(&first_dir, |c| {
        fixed(c);
        c.compact_min_bytes = u64::MAX / 4;
    });
    let mut sizes = Vec::new();
    for i in 0..3 {
        let (compactions, stored) = step(&first, i).await;
        assert_eq!(compactions, 0, "compacted below the threshold");
        assert!(stored.snapshot.is_none());
        sizes = stored.chunks.iter().map(|c| c.len() as u64).collect();
    }
    assert_eq!(sizes.len(), 3, "{sizes:?}");
    first.shutdown().await.expect("shutdown");

    let dir = TempDir::new("compact-exact");
    let hub = hub_with(&dir, |c| {
        fixed(c);
        c.compact_min_bytes = sizes[0] + sizes[1];
    });
    let (compactions, stored) = step(&hub, 0).await;
    assert_eq!(compactions, 0);
    let (compactions, stored_2) = step(&hub, 1).await;
    let lens: Vec<u64> = stored_2.chunks.iter().map(|c| c.len() as u64).collect();
    if compactions == 0 {
        assert_eq!(
            lens,
            sizes[..2],
            "the chunks are as big as on the first hub"
        );
    }
    assert_eq!(
        compactions,
        0,
        "compacted at exactly the threshold ({} bytes)",
        sizes[0] + sizes[1]
    );
    let (compactions, stored_3) = step(&hub, 2).await;
    assert_eq!(compactions, 1, "not compacted past the threshold");
    assert!(stored_3.snapshot.is_some() && stored_3.chunks.is_empty());
    drop(stored);
    hub.shutdown().await.expect("shutdown");
}
