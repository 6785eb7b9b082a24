//! Unit tests against real sled stores in unique temporary directories.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use crate::{Batch, CHUNK_SEQ_MAX, NodeId, SCHEMA_VERSION, Store, StoreError};

/// A directory under the system temp dir, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(name: &str) -> TempDir {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let unique = NEXT.fetch_add(1, Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!(
            "lectern-store-test-{}-{name}-{unique}",
            std::process::id()
        ));
        // A leftover from a crashed run with the same pid would make the test flaky.
        let _ = std::fs::remove_dir_all(&path);
        TempDir(path)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

/// Opens the directory with sled alone, to plant what a store would never write. A store just
/// dropped can hold sled's lock for a moment (see `open_sled`), so this waits for it too.
fn raw_sled(path: &Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(3);
    loop {
        match sled::open(path) {
            Ok(db) => return db,
            Err(_) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(error) => panic!("raw sled open: {error}"),
        }
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn commit_one(store: &Store, build: impl FnOnce(&mut Batch)) {
    let mut batch = Batch::new();
    build(&mut batch);
    store.commit(batch).expect("commit");
}

#[test]
fn boot_epoch_increases_on_every_open_and_node_id_is_stable() {
    let dir = TempDir::new("epoch");
    let mut node_id = None;
    for expected_epoch in 1..=3 {
        let store = Store::open(dir.path()).expect("open");
        let identity = store.identity();
        assert_eq!(identity.boot_epoch, expected_epoch);
        assert_eq!(*node_id.get_or_insert(identity.node_id), identity.node_id);
        let actor = identity.actor_bytes();
        assert_eq!(actor[..16], identity.node_id.0);
        assert_eq!(actor[16..], expected_epoch.to_be_bytes());
    }
}

#[test]
fn second_open_of_a_locked_dir_is_refused() {
    let dir = TempDir::new("locked");
    let store = Store::open(dir.path()).expect("open");
    let error = Store::open(dir.path()).expect_err("second open must fail");
    assert!(matches!(error, StoreError::Locked { .. }), "{error}");
    assert!(error.to_string().contains("already open"), "{error}");
    drop(store);
    Store::open(dir.path()).expect("reopen after the first store is dropped");
}

#[test]
fn node_id_display_round_trips() {
    let id = NodeId([0x01, 0xab, 0xff, 0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 0xfe]);
    let text = id.to_string();
    assert_eq!(text, "01abff000102030405060708090a0bfe");
    assert_eq!(text.parse::<NodeId>(), Ok(id));
    assert_eq!(text.to_uppercase().parse::<NodeId>(), Ok(id));
    assert!("01ab".parse::<NodeId>().is_err());
    assert!("zz".repeat(16).parse::<NodeId>().is_err());
    assert!("é".repeat(16).parse::<NodeId>().is_err());
}

#[test]
fn chunks_load_in_seq_order_across_byte_boundaries() {
    let dir = TempDir::new("order");
    let store = Store::open(dir.path()).expect("open");
    // Inserted out of order; 256 and 1000 would sort before 3 in little-endian.
    let seqs = [1000u64, 3, 256, 0, 255, 70_000];
    commit_one(&store, |batch| {
        for seq in seqs {
            batch.append_chunk("session/a", seq, seq.to_string().into_bytes());
        }
    });

    let doc = store
        .load_doc("session/a")
        .expect("load")
        .expect("doc exists");
    let mut sorted = seqs;
    sorted.sort_unstable();
    let expected: Vec<Vec<u8>> = sorted
        .iter()
        .map(|seq| seq.to_string().into_bytes())
        .collect();
    assert_eq!(doc.chunks, expected);
    assert_eq!(doc.next_chunk_seq, 70_001);
    assert_eq!(doc.snapshot, None);
    assert_eq!(doc.snapshot_bytes, 0);
    assert_eq!(
        doc.chunk_bytes,
        expected.iter().map(|c| c.len() as u64).sum::<u64>()
    );
    assert_eq!(doc.concat(), expected.concat());
    assert_eq!(store.load_doc("session/none").expect("load"), None);
}

#[test]
fn put_snapshot_removes_only_chunks_below() {
    let dir = TempDir::new("snapshot");
    let store = Store::open(dir.path()).expect("open");
    commit_one(&store, |batch| {
        for seq in 0..6 {
            batch.append_chunk("doc", seq, vec![seq as u8]);
        }
        batch.append_chunk("other", 0, vec![100]);
    });
    commit_one(&store, |batch| {
        batch.put_snapshot("doc", b"SNAP".to_vec(), 4)
    });

    let doc = store.load_doc("doc").expect("load").expect("doc exists");
    assert_eq!(doc.snapshot.as_deref(), Some(&b"SNAP"[..]));
    assert_eq!(doc.chunks, vec![vec![4], vec![5]]);
    assert_eq!(doc.next_chunk_seq, 6);
    assert_eq!(doc.snapshot_bytes, 4);
    assert_eq!(doc.concat(), b"SNAP\x04\x05");
    let other = store
        .load_doc("other")
        .expect("load")
        .expect("other exists");
    assert_eq!(
        other.chunks,
        vec![vec![100]],
        "another doc's chunks are untouched"
    );

    // A snapshot also drops chunks appended earlier in the same batch, but not later ones.
    commit_one(&store, |batch| {
        batch.append_chunk("doc", 6, vec![6]);
        batch.put_snapshot("doc", b"SNAP2".to_vec(), 7);
        batch.append_chunk("doc", 7, vec![7]);
    });
    let doc = store.load_doc("doc").expect("load").expect("doc exists");
    assert_eq!(doc.snapshot.as_deref(), Some(&b"SNAP2"[..]));
    assert_eq!(doc.chunks, vec![vec![7]]);

    // Everything folded: the doc still exists through its snapshot.
    commit_one(&store, |batch| {
        batch.put_snapshot("doc", b"SNAP3".to_vec(), u64::MAX)
    });
    let doc = store.load_doc("doc").expect("load").expect("doc exists");
    assert!(doc.chunks.is_empty());
    assert_eq!(doc.next_chunk_seq, 0);
}

#[test]
fn doc_prefixes_do_not_leak_into_each_other() {
    let dir = TempDir::new("prefix");
    let store = Store::open(dir.path()).expect("open");
    // `session/a/c/xyzxyz` has a snapshot key that starts with the chunk prefix of `session/a`
    // and is exactly as long as one of its chunk keys.
    let docs = [
        "session/a",
        "session/ab",
        "session/a/b",
        "session/a/c/xyzxyz",
        "session/a/s",
    ];
    commit_one(&store, |batch| {
        for (i, doc) in docs.iter().enumerate() {
            batch.put_snapshot(doc, format!("snap {doc}").into_bytes(), 0);
            batch.append_chunk(doc, 0, vec![i as u8]);
            batch.append_chunk(doc, 300, vec![i as u8, 1]);
        }
    });
    for (i, doc) in docs.iter().enumerate() {
        let stored = store.load_doc(doc).expect("load").expect("doc exists");
        assert_eq!(
            stored.snapshot,
            Some(format!("snap {doc}").into_bytes()),
            "{doc}"
        );
        assert_eq!(
            stored.chunks,
            vec![vec![i as u8], vec![i as u8, 1]],
            "{doc}"
        );
    }

    // Dropping every chunk of `session/a` leaves the others alone.
    commit_one(&store, |batch| {
        batch.put_snapshot("session/a", b"new".to_vec(), u64::MAX)
    });
    for (i, doc) in docs.iter().enumerate().skip(1) {
        let stored = store.load_doc(doc).expect("load").expect("doc exists");
        assert_eq!(stored.chunks.len(), 2, "{doc} (#{i}) lost chunks");
    }

    let mut expected: Vec<String> = docs.iter().map(|d| d.to_string()).collect();
    expected.sort();
    assert_eq!(store.doc_ids().expect("doc ids"), expected);
}

#[test]
fn doc_ids_lists_docs_with_chunks_only_or_snapshot_only() {
    let dir = TempDir::new("doc-ids");
    let store = Store::open(dir.path()).expect("open");
    commit_one(&store, |batch| {
        batch.append_chunk("b", 1, vec![1]);
        batch.append_chunk("b", 2, vec![2]);
        batch.put_snapshot("a", vec![0], 0);
        batch.put_sync_state("peer", "c", vec![9]);
    });
    assert_eq!(store.doc_ids().expect("doc ids"), ["a", "b"]);
}

#[test]
fn sync_states_round_trip() {
    let dir = TempDir::new("sync");
    {
        let store = Store::open(dir.path()).expect("open");
        commit_one(&store, |batch| {
            batch.put_sync_state("peer1", "session/a", b"one".to_vec());
            batch.put_sync_state("peer1", "session/a/b", b"two".to_vec());
            batch.put_sync_state("peer2", "session/a", b"three".to_vec());
        });
        commit_one(&store, |batch| {
            batch.put_sync_state("peer1", "session/a", b"four".to_vec())
        });
    }
    let store = Store::open(dir.path()).expect("reopen");
    let state = |peer, doc| store.sync_state(peer, doc).expect("sync state");
    assert_eq!(state("peer1", "session/a").as_deref(), Some(&b"four"[..]));
    assert_eq!(state("peer1", "session/a/b").as_deref(), Some(&b"two"[..]));
    assert_eq!(state("peer2", "session/a").as_deref(), Some(&b"three"[..]));
    assert_eq!(state("peer3", "session/a"), None);
    assert!(
        store.doc_ids().expect("doc ids").is_empty(),
        "sync states are not docs"
    );
}

#[test]
fn invalid_ids_are_refused_and_the_batch_changes_nothing() {
    let dir = TempDir::new("invalid");
    let store = Store::open(dir.path()).expect("open");
    let mut batch = Batch::new();
    batch.append_chunk("good", 0, vec![1]);
    batch.put_sync_state("peer/with/slash", "good", vec![2]);
    assert_eq!(batch.len(), 2);
    let error = store.commit(batch).expect_err("a peer with '/' is refused");
    assert!(
        matches!(error, StoreError::InvalidId { kind: "peer", .. }),
        "{error}"
    );
    assert_eq!(
        store.load_doc("good").expect("load"),
        None,
        "nothing of the batch landed"
    );

    let mut batch = Batch::new();
    batch.append_chunk("good", CHUNK_SEQ_MAX + 1, vec![1]);
    let error = store
        .commit(batch)
        .expect_err("seq above the maximum is refused");
    assert!(
        matches!(error, StoreError::ChunkSeqTooLarge { .. }),
        "{error}"
    );

    for doc in ["", "nul\0doc"] {
        let mut batch = Batch::new();
        batch.put_snapshot(doc, vec![], 0);
        assert!(matches!(
            store.commit(batch),
            Err(StoreError::InvalidId { kind: "doc", .. })
        ));
        assert!(store.load_doc(doc).is_err());
    }
    assert!(Batch::new().is_empty());
}

#[test]
fn a_snapshot_batch_is_all_or_nothing_across_reopen() {
    let dir = TempDir::new("atomic");
    {
        let store = Store::open(dir.path()).expect("open");
        commit_one(&store, |batch| {
            for seq in 0..50 {
                batch.append_chunk("doc", seq, vec![seq as u8; 100]);
            }
        });
        commit_one(&store, |batch| {
            batch.put_snapshot("doc", b"SNAP".to_vec(), 50);
            batch.put_sync_state("peer", "doc", b"state".to_vec());
        });
    }
    let store = Store::open(dir.path()).expect("reopen");
    let doc = store.load_doc("doc").expect("load").expect("doc exists");
    assert_eq!(doc.snapshot.as_deref(), Some(&b"SNAP"[..]));
    assert!(doc.chunks.is_empty());
    assert_eq!(
        store.sync_state("peer", "doc").expect("sync").as_deref(),
        Some(&b"state"[..])
    );
}

#[test]
fn readers_never_see_half_a_snapshot_batch() {
    let dir = TempDir::new("consistent");
    let store = Store::open(dir.path()).expect("open");
    commit_one(&store, |batch| {
        batch.put_snapshot("doc", 0u64.to_be_bytes().to_vec(), 0)
    });
    // Invariant under test: the snapshot says how many chunks it folded (n), and exactly the
    // chunks n.. are present, so every load sees chunks starting at the snapshot's n.
    let (acks_tx, acks_rx) = mpsc::channel();
    let writer = {
        let store = store.clone();
        thread::spawn(move || {
            for n in 0..100u64 {
                commit_one(&store, |batch| {
                    batch.append_chunk("doc", n, n.to_be_bytes().to_vec())
                });
                let mut batch = Batch::new();
                batch.put_snapshot("doc", (n + 1).to_be_bytes().to_vec(), n + 1);
                let acks_tx = acks_tx.clone();
                store.committer().submit(batch, move |result| {
                    let _ = acks_tx.send(result.map_err(|e| e.to_string()));
                });
            }
        })
    };
    while !writer.is_finished() {
        let doc = store.load_doc("doc").expect("load").expect("doc exists");
        let folded = u64::from_be_bytes(doc.snapshot.expect("snapshot").try_into().expect("8 B"));
        if let Some(first) = doc.chunks.first() {
            assert_eq!(
                u64::from_be_bytes(first.as_slice().try_into().expect("8 B")),
                folded
            );
        }
    }
    writer.join().expect("writer");
    for _ in 0..100 {
        let ack = acks_rx.recv_timeout(Duration::from_secs(10)).expect("ack");
        ack.expect("snapshot batch commits");
    }
}

#[test]
fn committer_shares_fsyncs_between_concurrent_writers() {
    const THREADS: u64 = 8;
    const PER_THREAD: u64 = 200;
    let dir = TempDir::new("committer");
    let store = Store::open(dir.path()).expect("open");
    let before = store.stats();
    let (acks_tx, acks_rx) = mpsc::channel();

    let writers: Vec<_> = (0..THREADS)
        .map(|t| {
            let committer = store.committer();
            let acks_tx = acks_tx.clone();
            thread::spawn(move || {
                for seq in 0..PER_THREAD {
                    let mut batch = Batch::new();
                    batch.append_chunk(&format!("doc{t}"), seq, vec![t as u8]);
                    let acks_tx = acks_tx.clone();
                    committer.submit(batch, move |result| {
                        // The receiver outlives every callback; a failed send means the test
                        // already failed elsewhere.
                        let _ = acks_tx.send(result.map(|()| (t, seq)).map_err(|e| e.to_string()));
                    });
                }
            })
        })
        .collect();
    drop(acks_tx);
    for writer in writers {
        writer.join().expect("writer thread");
    }

    let mut acked = 0;
    while let Ok(ack) = acks_rx.recv_timeout(Duration::from_secs(10)) {
        ack.expect("every submission succeeds");
        acked += 1;
        if acked == THREADS * PER_THREAD {
            break;
        }
    }
    assert_eq!(acked, THREADS * PER_THREAD);

    let stats = store.stats();
    let commits = stats.commits - before.commits;
    let fsyncs = stats.fsyncs - before.fsyncs;
    assert_eq!(commits, THREADS * PER_THREAD);
    assert!(
        fsyncs < commits,
        "no fsync was shared: {fsyncs} fsyncs for {commits} commits"
    );
    for t in 0..THREADS {
        let doc = store
            .load_doc(&format!("doc{t}"))
            .expect("load")
            .expect("doc exists");
        assert_eq!(doc.chunks.len() as u64, PER_THREAD);
    }
}

#[test]
fn committer_reports_invalid_batches_individually() {
    let dir = TempDir::new("committer-errors");
    let store = Store::open(dir.path()).expect("open");
    let committer = store.committer();
    let (tx, rx) = mpsc::channel();
    for peer in ["ok", "bad/peer", "ok2"] {
        let mut batch = Batch::new();
        batch.put_sync_state(peer, "doc", vec![1]);
        let tx = tx.clone();
        committer.submit(batch, move |result| {
            let _ = tx.send((peer, result.is_ok()));
        });
    }
    let mut results: Vec<_> = (0..3).map(|_| rx.recv().expect("ack")).collect();
    results.sort();
    assert_eq!(results, [("bad/peer", false), ("ok", true), ("ok2", true)]);
}

#[test]
fn dropping_store_and_committers_releases_the_directory() {
    let dir = TempDir::new("release");
    let store = Store::open(dir.path()).expect("open");
    let committer = store.committer();
    let (tx, rx) = mpsc::channel();
    let mut batch = Batch::new();
    batch.append_chunk("doc", 0, vec![1]);
    committer.submit(batch, move |result| {
        let _ = tx.send(result.is_ok());
    });
    assert!(rx.recv().expect("ack"));
    drop(store);
    // The committer keeps the store open...
    assert!(matches!(
        Store::open(dir.path()),
        Err(StoreError::Locked { .. })
    ));
    drop(committer);
    // ...and once it is gone the thread has stopped and the directory is free.
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        store.load_doc("doc").expect("load").expect("doc").chunks,
        [vec![1]]
    );
}

#[test]
fn corrupt_boot_epoch_is_an_error_not_a_panic() {
    let dir = TempDir::new("corrupt-epoch");
    drop(Store::open(dir.path()).expect("open"));
    {
        let db = raw_sled(dir.path());
        db.insert(crate::keys::META_BOOT_EPOCH, &[1u8, 2, 3][..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let error = Store::open(dir.path()).expect_err("a 3-byte epoch is corrupt");
    assert!(matches!(error, StoreError::Corrupt { .. }), "{error}");
    assert!(error.to_string().contains("m/boot_epoch"), "{error}");
}

#[test]
fn newer_schema_is_refused() {
    let dir = TempDir::new("schema");
    drop(Store::open(dir.path()).expect("open"));
    {
        let db = raw_sled(dir.path());
        let newer = (SCHEMA_VERSION + 1).to_be_bytes();
        db.insert(crate::keys::META_SCHEMA_VERSION, &newer[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let error = Store::open(dir.path()).expect_err("newer schema");
    assert!(
        matches!(
            error,
            StoreError::NewerSchema { found, supported, .. }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION
        ),
        "{error}"
    );
}

/// Writes `version` as the store's schema version behind its back (a store of another build).
fn set_version(path: &Path, version: u32) {
    let db = raw_sled(path);
    db.insert(crate::keys::META_SCHEMA_VERSION, &version.to_be_bytes()[..])
        .expect("insert");
    db.flush().expect("flush");
}

#[test]
fn an_older_schema_is_refused_naming_the_migration() {
    let dir = TempDir::new("older-schema");
    drop(Store::open(dir.path()).expect("open"));
    set_version(dir.path(), 1);
    let error = Store::open(dir.path()).expect_err("older schema");
    assert!(
        matches!(error, StoreError::OlderSchema { found: 1, .. }),
        "{error}"
    );
    assert!(
        error.to_string().contains(&format!(
            "lectern store migrate --data-dir {} --to {SCHEMA_VERSION}",
            dir.path().display()
        )),
        "{error}"
    );
}

#[test]
fn migrating_down_removes_exactly_the_flags_document_and_up_again_changes_nothing() {
    use crate::migrate::{MigrateOptions, migrate, schema_version};
    let dir = TempDir::new("migrate");
    {
        let store = Store::open(dir.path()).expect("open");
        let mut b = Batch::new();
        for doc in ["flags/cluster", "session/s1", "flags/cluster/x"] {
            b.put_snapshot(doc, b"snapshot".to_vec(), 0);
            b.append_chunk(doc, 0, b"chunk".to_vec());
            b.put_heads(doc, [7; 32]);
            b.put_sync_state("peer-a", doc, b"state".to_vec());
        }
        store.commit(b).expect("commit");
    }
    let keep = MigrateOptions::default();
    // Blocked while the flags document is there; nothing written.
    let blocked = migrate(dir.path(), 1, keep).expect_err("the flags document blocks");
    assert!(
        matches!(&blocked, StoreError::MigrationBlocked { from: 2, to: 1, reason } if reason.contains("flags/cluster")),
        "{blocked}"
    );
    assert_eq!(schema_version(dir.path()).expect("version"), 2);
    let discard = MigrateOptions {
        discard_flags: true,
    };
    let down = migrate(dir.path(), 1, discard).expect("down");
    // Snapshot, chunk, heads digest and one sync state.
    assert_eq!((down.from, down.to, down.keys_changed), (2, 1, 4));
    let again = migrate(dir.path(), 1, keep).expect("again");
    assert_eq!((again.from, again.keys_changed), (1, 0));
    let up = migrate(dir.path(), 2, keep).expect("up");
    assert_eq!((up.from, up.to, up.keys_changed), (1, 2, 0));
    let store = Store::open(dir.path()).expect("open at version 2");
    assert_eq!(
        store.doc_ids().expect("ids"),
        vec!["flags/cluster/x".to_owned(), "session/s1".to_owned()],
        "a document whose id only starts like the flags document's is not touched"
    );
    assert_eq!(
        store.sync_state("peer-a", "flags/cluster").expect("read"),
        None
    );
    assert!(
        store
            .sync_state("peer-a", "session/s1")
            .expect("read")
            .is_some()
    );
    let heads: Vec<String> = store
        .heads_digests()
        .expect("heads")
        .into_iter()
        .map(|(d, _)| d)
        .collect();
    assert!(!heads.contains(&"flags/cluster".to_owned()), "{heads:?}");
    // An open store is not migrated under its node; an unknown version is refused.
    assert!(matches!(
        migrate(dir.path(), 1, discard),
        Err(StoreError::Locked { .. })
    ));
    drop(store);
    assert!(matches!(
        migrate(dir.path(), SCHEMA_VERSION + 1, keep),
        Err(StoreError::UnknownSchema { .. })
    ));
}

#[test]
fn corrupt_document_keys_are_errors() {
    let dir = TempDir::new("corrupt-keys");
    drop(Store::open(dir.path()).expect("open"));
    {
        let db = raw_sled(dir.path());
        db.insert(&b"d/doc/zzz"[..], &b"?"[..]).expect("insert");
        // A key inside the chunk range of `doc` with nine seq bytes.
        db.insert(&b"d/doc/c/\0\0\0\0\0\0\0\0\x01"[..], &b"?"[..])
            .expect("insert");
        db.flush().expect("flush");
    }
    let store = Store::open(dir.path()).expect("open");
    assert!(matches!(store.doc_ids(), Err(StoreError::Corrupt { .. })));
    assert!(matches!(
        store.load_doc("doc"),
        Err(StoreError::Corrupt { .. })
    ));
}

#[test]
fn jobs_enqueue_once_by_id_complete_and_dead_letter_durably() {
    let dir = TempDir::new("jobs");
    {
        let store = Store::open(dir.path()).expect("open");
        commit_one(&store, |b| {
            b.append_chunk("cohort/c1", 0, b"chunk".to_vec());
            b.enqueue_job("a", b"first".to_vec());
            b.enqueue_job("b", b"b".to_vec());
            b.enqueue_job("c", b"c".to_vec());
            // A second enqueue of the same id in the same batch changes nothing.
            b.enqueue_job("a", b"second".to_vec());
        });
        commit_one(&store, |b| b.enqueue_job("a", b"third".to_vec()));
        let pending = store.pending_jobs().expect("pending");
        assert_eq!(
            pending,
            vec![
                ("a".to_owned(), b"first".to_vec()),
                ("b".to_owned(), b"b".to_vec()),
                ("c".to_owned(), b"c".to_vec()),
            ]
        );
        commit_one(&store, |b| {
            b.complete_job("a", 1_000);
            b.update_job("b", b"b, attempt 2".to_vec());
            b.dead_letter_job("c", b"c: smtp down".to_vec());
            // Updating a job that is not queued does not resurrect it.
            b.update_job("zz", b"ghost".to_vec());
        });
        // Finished and dead jobs are never enqueued again.
        commit_one(&store, |b| {
            b.enqueue_job("a", b"again".to_vec());
            b.enqueue_job("c", b"again".to_vec());
        });
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        store.pending_jobs().expect("pending"),
        vec![("b".to_owned(), b"b, attempt 2".to_vec())]
    );
    assert_eq!(
        store.dead_jobs().expect("dead"),
        vec![("c".to_owned(), b"c: smtp down".to_vec())]
    );
    assert!(store.job_done("a").expect("done"));
    assert!(store.job_pending("b").expect("pending"));
    assert!(!store.job_pending("a").expect("pending"));
    assert!(!store.job_done("b").expect("done"));
    // Jobs do not show up as documents.
    assert_eq!(store.doc_ids().expect("docs"), vec!["cohort/c1".to_owned()]);
}

#[test]
fn finished_job_markers_are_pruned_by_age_and_nothing_else_is() {
    let dir = TempDir::new("job-markers");
    let store = Store::open(dir.path()).expect("open");
    commit_one(&store, |b| {
        for id in ["old", "new", "queued", "dead"] {
            b.enqueue_job(id, id.as_bytes().to_vec());
        }
    });
    commit_one(&store, |b| {
        b.complete_job("old", 1_000);
        b.complete_job("new", 5_000);
        b.dead_letter_job("dead", b"dead: reason".to_vec());
    });
    // A marker from before markers had a time: as old as can be.
    store
        .inner
        .shared
        .db
        .insert(b"j/d/legacy", b"")
        .expect("write a legacy marker");

    assert_eq!(
        store.prune_job_markers(1_000).expect("prune"),
        1,
        "only the legacy one"
    );
    assert!(store.job_done("old").expect("done"));
    assert_eq!(store.prune_job_markers(5_000).expect("prune"), 1);
    assert!(!store.job_done("old").expect("done"), "pruned");
    assert!(
        store.job_done("new").expect("done"),
        "kept: finished at the cutoff"
    );
    assert_eq!(store.prune_job_markers(5_000).expect("prune"), 0);
    // Queued and dead-lettered jobs are untouched.
    assert_eq!(
        store.pending_jobs().expect("pending"),
        vec![("queued".to_owned(), b"queued".to_vec())]
    );
    assert_eq!(store.dead_jobs().expect("dead").len(), 1);
    // Once its marker is gone, a finished id can be queued again: what the retention is for.
    commit_one(&store, |b| b.enqueue_job("old", b"again".to_vec()));
    assert!(store.job_pending("old").expect("pending"));
    commit_one(&store, |b| b.enqueue_job("new", b"again".to_vec()));
    assert!(!store.job_pending("new").expect("pending"), "still marked");
}

#[test]
fn an_operator_requeues_a_dead_letter_once_and_drops_jobs_for_good() {
    let dir = TempDir::new("job-operator");
    let store = Store::open(dir.path()).expect("open");
    commit_one(&store, |b| {
        for id in ["dead", "queued", "done"] {
            b.enqueue_job(id, id.as_bytes().to_vec());
        }
    });
    commit_one(&store, |b| {
        b.dead_letter_job("dead", b"dead: 550".to_vec());
        b.complete_job("done", 1_000);
    });
    assert_eq!(
        store.dead_job("dead").expect("dead"),
        Some(b"dead: 550".to_vec())
    );
    assert_eq!(store.queued_job("dead").expect("queued"), None);
    // Requeued: out of the dead letters, back in the queue with the new record. A second
    // requeue in a later batch (a racing retry) and a requeue of a job that is not dead change
    // nothing.
    commit_one(&store, |b| {
        b.requeue_dead_job("dead", b"dead, again".to_vec())
    });
    commit_one(&store, |b| {
        b.requeue_dead_job("dead", b"twice".to_vec());
        b.requeue_dead_job("done", b"resurrected".to_vec());
        b.requeue_dead_job("queued", b"replaced".to_vec());
    });
    assert_eq!(store.dead_job("dead").expect("dead"), None);
    assert_eq!(
        store.pending_jobs().expect("pending"),
        vec![
            ("dead".to_owned(), b"dead, again".to_vec()),
            ("queued".to_owned(), b"queued".to_vec()),
        ]
    );
    // Dropped: gone from the queue and the dead letters, and never enqueued again.
    commit_one(&store, |b| {
        b.drop_job("queued", 2_000);
        b.dead_letter_job("dead", b"dead: 550 again".to_vec());
    });
    commit_one(&store, |b| b.drop_job("dead", 3_000));
    commit_one(&store, |b| {
        b.enqueue_job("queued", b"again".to_vec());
        b.enqueue_job("dead", b"again".to_vec());
    });
    assert!(store.pending_jobs().expect("pending").is_empty());
    assert!(store.dead_jobs().expect("dead").is_empty());
    assert!(store.job_done("queued").expect("done"));
    assert!(store.job_done("dead").expect("done"));
}

/// A fault-injection hook driven by the test: it can fail the next N batches before they are
/// applied, fail the next N rounds before their fsync, or hold a round at its fsync until the
/// test releases it (telling the test when a round arrived there).
#[derive(Default)]
struct TestHook {
    fail_applies: std::sync::Mutex<u32>,
    fail_fsyncs: std::sync::Mutex<u32>,
    /// While set, a round entering `before_fsync` reports on `arrived` and waits on `release`.
    gate: std::sync::Mutex<Option<(mpsc::Sender<()>, mpsc::Receiver<()>)>>,
}

impl TestHook {
    fn take(counter: &std::sync::Mutex<u32>) -> bool {
        let mut left = counter.lock().expect("hook counter");
        if *left > 0 {
            *left -= 1;
            true
        } else {
            false
        }
    }
}

impl crate::CommitHook for TestHook {
    fn before_apply(&self) -> bool {
        !TestHook::take(&self.fail_applies)
    }

    fn before_fsync(&self) -> bool {
        if let Some((arrived, release)) = self.gate.lock().expect("hook gate").take() {
            let _ = arrived.send(());
            // Blocks the commit thread, as a slow disk would, until the test says go.
            let _ = release.recv();
        }
        !TestHook::take(&self.fail_fsyncs)
    }
}

fn install_hook(store: &Store) -> std::sync::Arc<TestHook> {
    let hook = std::sync::Arc::new(TestHook::default());
    store.set_commit_hook(Some(hook.clone()));
    hook
}

/// While a round is held before its fsync, no `done` callback of it has run and no fsync was
/// counted; released, the callback runs with `Ok` and the fsync is counted.
///
/// Kills the mutation "run the round's callbacks before the fsync" in `commit::run` (and
/// "skip the fsync": the counter would not move).
#[test]
fn committer_calls_back_only_after_the_round_is_fsynced() {
    let dir = TempDir::new("hook-gate");
    let store = Store::open(dir.path()).expect("open");
    let hook = install_hook(&store);
    let (arrived_tx, arrived_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    *hook.gate.lock().expect("gate") = Some((arrived_tx, release_rx));
    let fsyncs_before = store.stats().fsyncs;

    let (done_tx, done_rx) = mpsc::channel();
    let mut batch = Batch::new();
    batch.append_chunk("doc", 0, b"held".to_vec());
    store.committer().submit(batch, move |result| {
        let _ = done_tx.send(result.map_err(|e| e.to_string()));
    });

    arrived_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the round reaches the hook before its fsync");
    // The commit thread is parked in the hook: whatever has not happened yet cannot happen
    // until it is released, so checking now is not a race.
    assert!(
        matches!(done_rx.try_recv(), Err(mpsc::TryRecvError::Empty)),
        "a callback ran before its round was fsynced"
    );
    assert_eq!(
        store.stats().fsyncs,
        fsyncs_before,
        "fsynced before the hook let it"
    );

    release_tx.send(()).expect("release");
    let result = done_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the callback runs once released");
    assert_eq!(result, Ok(()));
    assert_eq!(store.stats().fsyncs, fsyncs_before + 1);
    let doc = store.load_doc("doc").expect("load").expect("doc");
    assert_eq!(doc.chunks, vec![b"held".to_vec()]);
}

/// A batch failed before apply gives its caller `Injected` and leaves nothing on disk, while
/// the next batch commits; the synchronous `Store::commit` obeys the hook too.
///
/// Kills the mutations "ignore `before_apply`" and "report Ok for a batch that failed" in
/// `commit::run`.
#[test]
fn a_batch_failed_before_apply_is_not_written_and_its_caller_gets_the_error() {
    let dir = TempDir::new("hook-fail-apply");
    let store = Store::open(dir.path()).expect("open");
    let hook = install_hook(&store);
    *hook.fail_applies.lock().expect("counter") = 1;

    let submit = |seq: u64| {
        let (tx, rx) = mpsc::channel();
        let mut batch = Batch::new();
        batch.append_chunk("doc", seq, vec![seq as u8]);
        store.committer().submit(batch, move |result| {
            let _ = tx.send(result);
        });
        rx.recv_timeout(Duration::from_secs(30)).expect("callback")
    };
    assert!(matches!(
        submit(0),
        Err(StoreError::Injected {
            stage: "before apply"
        })
    ));
    assert!(
        store.load_doc("doc").expect("load").is_none(),
        "a failed batch was applied"
    );
    submit(1).expect("the next batch commits");
    assert_eq!(
        store.load_doc("doc").expect("load").expect("doc").chunks,
        vec![vec![1]]
    );

    *hook.fail_applies.lock().expect("counter") = 1;
    let mut batch = Batch::new();
    batch.append_chunk("other", 0, vec![9]);
    assert!(matches!(
        store.commit(batch),
        Err(StoreError::Injected { .. })
    ));
    assert!(store.load_doc("other").expect("load").is_none());
}

/// A round whose fsync is failed gives EVERY batch of the round the error and issues no fsync;
/// without the hook the store commits again and what was acknowledged survives a reopen.
///
/// Kills the mutations "ignore `before_fsync`" and "fail only the first batch of a failed
/// round" in `commit::run`.
#[test]
fn a_failed_fsync_fails_every_batch_of_its_round() {
    let dir = TempDir::new("hook-fail-fsync");
    {
        let store = Store::open(dir.path()).expect("open");
        let hook = install_hook(&store);
        let (arrived_tx, arrived_rx) = mpsc::channel();
        let (release_tx, release_rx) = mpsc::channel();
        *hook.gate.lock().expect("gate") = Some((arrived_tx, release_rx));
        *hook.fail_fsyncs.lock().expect("counter") = 1;

        // The first batch holds the thread at the gate; the next two queue behind it and form
        // the second round, which is let through.
        let (done_tx, done_rx) = mpsc::channel();
        let committer = store.committer();
        for seq in 0..3u64 {
            let mut batch = Batch::new();
            batch.append_chunk("doc", seq, vec![seq as u8]);
            let done_tx = done_tx.clone();
            committer.submit(batch, move |result| {
                let _ = done_tx.send((seq, result.map_err(|e| e.to_string())));
            });
            if seq == 0 {
                arrived_rx
                    .recv_timeout(Duration::from_secs(30))
                    .expect("gate");
            }
        }
        let fsyncs_before = store.stats().fsyncs;
        release_tx.send(()).expect("release");
        let first = done_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("first");
        assert_eq!(first.0, 0);
        assert!(
            first.1.is_err(),
            "the failed round's batch was acknowledged"
        );
        for _ in 0..2 {
            let (seq, result) = done_rx.recv_timeout(Duration::from_secs(30)).expect("next");
            assert!(
                result.is_ok(),
                "batch {seq} of a healthy round failed: {result:?}"
            );
        }
        assert_eq!(
            store.stats().fsyncs,
            fsyncs_before + 1,
            "one fsync, for the healthy round"
        );

        *hook.fail_fsyncs.lock().expect("counter") = 1;
        let mut batch = Batch::new();
        batch.append_chunk("sync", 0, vec![1]);
        assert!(matches!(
            store.commit(batch),
            Err(StoreError::Injected {
                stage: "before fsync"
            })
        ));
        store.set_commit_hook(None);
        let mut batch = Batch::new();
        batch.append_chunk("after", 0, vec![7]);
        store.commit(batch).expect("commits without the hook");
    }
    let store = Store::open(dir.path()).expect("reopen");
    let doc = store.load_doc("doc").expect("load").expect("doc");
    // Batch 0 was applied before its round failed, so it may or may not be on disk (as after a
    // real fsync failure); the acknowledged ones must be.
    assert!(
        doc.chunks.contains(&vec![1]) && doc.chunks.contains(&vec![2]),
        "an acknowledged batch is missing after a reopen: {:?}",
        doc.chunks
    );
    assert_eq!(
        store.load_doc("after").expect("load").expect("doc").chunks,
        vec![vec![7]]
    );
}

/// A hook that overrides nothing lets every batch and round through, on both commit paths.
///
/// Kills the cargo-mutants mutations "`CommitHook::before_apply` / `before_fsync` default ->
/// false".
#[test]
fn a_hook_with_the_default_methods_changes_nothing() {
    struct Passive;
    impl crate::CommitHook for Passive {}
    let dir = TempDir::new("hook-default");
    let store = Store::open(dir.path()).expect("open");
    store.set_commit_hook(Some(std::sync::Arc::new(Passive)));
    commit_one(&store, |b| b.append_chunk("doc", 0, vec![1]));
    let (tx, rx) = mpsc::channel();
    let mut batch = Batch::new();
    batch.append_chunk("doc", 1, vec![2]);
    store.committer().submit(batch, move |result| {
        let _ = tx.send(result.map_err(|e| e.to_string()));
    });
    assert_eq!(
        rx.recv_timeout(Duration::from_secs(30)).expect("callback"),
        Ok(())
    );
    let doc = store.load_doc("doc").expect("load").expect("doc");
    assert_eq!(doc.chunks, vec![vec![1], vec![2]]);
}

/// Dropping the store while a round is held before its fsync waits for that round: the drop
/// returns only after the round's callback ran, and the store then reopens with the batch in
/// it (the commit thread no longer holds the database).
///
/// Kills `CommitThread::stop` replaced by `()` and its `==` changed to `!=` (either way the
/// drop no longer joins the commit thread, and returns while the round is still held).
#[test]
fn dropping_the_store_waits_for_the_round_in_flight() {
    let dir = TempDir::new("drop-joins");
    let store = Store::open(dir.path()).expect("open");
    let hook = install_hook(&store);
    let (arrived_tx, arrived_rx) = mpsc::channel();
    let (release_tx, release_rx) = mpsc::channel();
    *hook.gate.lock().expect("gate") = Some((arrived_tx, release_rx));
    drop(hook);

    let (done_tx, done_rx) = mpsc::channel();
    let mut batch = Batch::new();
    batch.append_chunk("doc", 0, b"in flight".to_vec());
    store.committer().submit(batch, move |result| {
        let _ = done_tx.send(result.map_err(|e| e.to_string()));
    });
    arrived_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the round reaches the hook before its fsync");

    let (dropped_tx, dropped_rx) = mpsc::channel();
    let dropper = thread::spawn(move || {
        drop(store);
        let _ = dropped_tx.send(());
    });
    // The round is parked in the hook, so a drop that waits for it cannot have returned; one
    // that does not wait returns at once. Half a second only bounds how long we look.
    assert!(
        matches!(
            dropped_rx.recv_timeout(Duration::from_millis(500)),
            Err(mpsc::RecvTimeoutError::Timeout)
        ),
        "the store was dropped while its commit thread still held a round"
    );
    release_tx.send(()).expect("release");
    dropped_rx
        .recv_timeout(Duration::from_secs(30))
        .expect("the drop returns once the round is done");
    assert_eq!(
        done_rx
            .try_recv()
            .expect("the callback ran before the drop returned"),
        Ok(())
    );
    dropper.join().expect("dropper");

    let store = Store::open(dir.path()).expect("reopen right after the drop");
    let doc = store.load_doc("doc").expect("load").expect("doc");
    assert_eq!(doc.chunks, vec![b"in flight".to_vec()]);
}

/// A batch knows its size and shows its operations (not their bytes) in `Debug`; heads
/// digests put in a batch are listed by `heads_digests` after a reopen.
///
/// Kills `Batch::is_empty` always `true`, `Batch::put_heads` doing nothing, and the `Debug`
/// impl printing nothing.
#[test]
fn a_batch_reports_its_size_and_operations_and_stores_heads() {
    let mut batch = Batch::new();
    batch.append_chunk("doc", 3, vec![0; 10]);
    batch.put_heads("doc", [7; 32]);
    batch.put_heads("other", [9; 32]);
    assert!(!batch.is_empty());
    assert_eq!(batch.len(), 3);
    let shown = format!("{batch:?}");
    assert!(
        shown.contains(r#"append_chunk("doc", 3, 10 B)"#)
            && shown.contains(r#"put_heads("other")"#),
        "{shown}"
    );

    let dir = TempDir::new("heads");
    {
        let store = Store::open(dir.path()).expect("open");
        store.commit(batch).expect("commit");
    }
    let store = Store::open(dir.path()).expect("reopen");
    assert_eq!(
        store.heads_digests().expect("digests"),
        vec![("doc".to_owned(), [7; 32]), ("other".to_owned(), [9; 32])]
    );
}

/// A committer shows up in logs by name (its fields, a channel and the store, are left out).
///
/// Kills `<impl Debug for Committer>::fmt` writing nothing.
#[test]
fn a_committer_is_named_in_debug_output() {
    let dir = TempDir::new("committer-debug");
    let store = Store::open(dir.path()).expect("open");
    assert_eq!(format!("{:?}", store.committer()), "Committer { .. }");
}
