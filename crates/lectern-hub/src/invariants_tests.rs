//! The invariants whose violation would lose or corrupt data for good, checked through the
//! store's fault seam (`lectern_store::CommitHook`) on a real hub over a real sled store: the
//! ordering gate (nothing is acknowledged, published, fed, sent to a peer or handed to the job
//! runner before its batch is fsynced) and the store-failure path (drop the replica, reload).

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use lectern_model::{CommandBody, Millis, Role, Trigger};
use lectern_store::{CommitHook, Store};
use tokio::sync::mpsc;

use crate::test_support::{TempDir, ask, caller, cmd, create_session, session};
use crate::{Hub, HubConfig, HubError, JobHook};

/// How long anything that should happen is waited for (a loaded 2-core machine is slow).
const EXPECT_WITHIN: Duration = Duration::from_secs(30);

/// How long something that must NOT happen while the commit is held is given to happen anyway.
/// In a correct build it cannot happen at all while the hook holds the commit thread, so this
/// only bounds how hard the test looks for a broken build.
const ABSENT_FOR: Duration = Duration::from_millis(700);

/// A commit hook the test drives: it can hold the next round before its fsync (reporting
/// that it arrived) and fail the next N batches before they are applied.
#[derive(Default)]
struct Faults {
    hold_next: Mutex<Option<(mpsc::UnboundedSender<()>, std::sync::mpsc::Receiver<()>)>>,
    fail_applies: AtomicU32,
}

impl CommitHook for Faults {
    fn before_apply(&self) -> bool {
        self.fail_applies
            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
            .is_err()
    }

    fn before_fsync(&self) -> bool {
        let held = self.hold_next.lock().expect("hold").take();
        if let Some((arrived, release)) = held {
            let _ = arrived.send(());
            // Blocks the commit thread (a slow disk) until the test releases it.
            let _ = release.recv();
        }
        true
    }
}

/// A job queue that enqueues one job per trigger and reports what it was handed as runnable.
struct Jobs {
    next: AtomicU64,
    ids: Mutex<Vec<String>>,
    runnable: mpsc::UnboundedSender<Vec<String>>,
}

impl JobHook for Jobs {
    fn jobs_for(&self, _trigger: &Trigger) -> Vec<(String, Vec<u8>)> {
        let id = format!("job{}", self.next.fetch_add(1, Ordering::SeqCst));
        self.ids.lock().expect("ids").push(id.clone());
        vec![(id, b"record".to_vec())]
    }

    fn enqueued(&self, jobs: Vec<(String, Vec<u8>)>) {
        let _ = self
            .runnable
            .send(jobs.into_iter().map(|(id, _)| id).collect());
    }
}

struct Rig {
    _dir: TempDir,
    hub: Hub,
    store: Store,
    faults: Arc<Faults>,
    jobs: Arc<Jobs>,
    runnable: mpsc::UnboundedReceiver<Vec<String>>,
}

async fn rig(tag: &str) -> Rig {
    let dir = TempDir::new(tag);
    let store = Store::open(dir.path()).expect("open store");
    let faults = Arc::new(Faults::default());
    store.set_commit_hook(Some(faults.clone()));
    let (tx, runnable) = mpsc::unbounded_channel();
    let jobs = Arc::new(Jobs {
        next: AtomicU64::new(0),
        ids: Mutex::new(Vec::new()),
        runnable: tx,
    });
    let config = HubConfig {
        jobs: Some(jobs.clone()),
        ..HubConfig::default()
    };
    let hub = Hub::new(store.clone(), config);
    hub.execute(
        session("s"),
        caller("ada", Role::Instructor),
        cmd("create", create_session("s")),
    )
    .await
    .expect("create");
    hub.execute(
        session("s"),
        caller("alice", Role::Student),
        cmd("q1", ask("What is durable?")),
    )
    .await
    .expect("ask");
    Rig {
        _dir: dir,
        hub,
        store,
        faults,
        jobs,
        runnable,
    }
}

fn answer(id: &str) -> lectern_model::Command {
    cmd(
        id,
        CommandBody::QaAnswer {
            question: "q1".parse().expect("question id"),
            text: "fsynced".into(),
        },
    )
}

async fn within<T>(what: &str, f: impl std::future::Future<Output = T>) -> T {
    tokio::time::timeout(EXPECT_WITHIN, f)
        .await
        .unwrap_or_else(|_| panic!("{what} did not happen within {EXPECT_WITHIN:?}"))
}

/// The ordering gate. With the commit of an answer held before its fsync: no ack, no room
/// event, no change-feed item, no peer frame and no runnable job, while the answer's job IS
/// already in the held batch (committed atomically with the command). Released: the job is
/// runnable before the ack, the room event before the feed item, the feed item before the peer
/// frame.
///
/// Kills: "call the commit callbacks before the fsync" (`lectern-store` `commit::run`), "publish
/// to the room / send on the feed / answer reads before the commit" and "enqueue the jobs in a
/// later batch than their command" (`lectern-hub` `doc::process`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nothing_leaves_the_writer_before_its_batch_is_fsynced() {
    let mut rig = rig("ordering-gate").await;
    let hub = rig.hub.clone();
    let mut room = hub
        .join(session("s"), caller("ada", Role::Instructor), None)
        .await
        .expect("join")
        .events;
    let mut feed = hub.changes();
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let (release, release_rx) = std::sync::mpsc::channel();
    *rig.faults.hold_next.lock().expect("hold") = Some((arrived_tx, release_rx));

    let acked = tokio::spawn({
        let hub = hub.clone();
        async move {
            hub.execute(session("s"), caller("ada", Role::Instructor), answer("a1"))
                .await
        }
    });
    within("the answer's round reaching the fsync", arrived.recv()).await;
    // The peer asks only now, so its frame can only come from the writer after the held batch.
    let frame = tokio::spawn({
        let hub = hub.clone();
        async move { hub.generate_sync(session("s"), "peer-b").await }
    });

    // The held batch holds the command AND its job: one atomic batch.
    let job = rig
        .jobs
        .ids
        .lock()
        .expect("ids")
        .last()
        .cloned()
        .expect("a job");
    assert!(
        rig.store.job_pending(&job).expect("read"),
        "the job is not in its command's batch"
    );

    assert!(
        tokio::time::timeout(ABSENT_FOR, room.recv()).await.is_err(),
        "a room event before the fsync"
    );
    assert!(!acked.is_finished(), "an ack before the fsync");
    assert!(
        feed.try_recv().is_err(),
        "a change-feed item before the fsync"
    );
    assert!(!frame.is_finished(), "a peer frame before the fsync");
    assert!(
        rig.runnable.try_recv().is_err(),
        "a runnable job before the fsync"
    );

    release.send(()).expect("release");
    let ack = within("the ack", acked)
        .await
        .expect("task")
        .expect("answer");
    assert!(ack.event.is_some());
    let runnable = rig
        .runnable
        .try_recv()
        .expect("the job is runnable by the time of the ack");
    assert_eq!(runnable, vec![job]);
    let change = within("the feed item", feed.recv()).await.expect("feed");
    assert_eq!(change.doc, session("s"));
    let event = room
        .try_recv()
        .expect("the room event comes before the feed item");
    assert_eq!(event.name, "qa:updated");
    let frame = within("the peer frame", frame)
        .await
        .expect("task")
        .expect("sync");
    assert!(frame.is_some(), "the peer is told about the answer");
}

/// One failing batch: its caller gets an error and nothing is emitted (no event, no feed item,
/// no job); the writer drops its replica and reloads it from disk (the failed answer is gone
/// from what readers see), and a retry under the same command id applies exactly once.
///
/// Kills: "keep the replica after a store failure" (`doc::process` returning true on error, or
/// the writer not reloading): the view would show an answer that is not on disk, and the retry
/// would be taken for a duplicate and never persisted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_is_not_emitted_and_the_writer_reloads_from_disk() {
    let mut rig = rig("store-failure").await;
    let hub = &rig.hub;
    let mut room = hub
        .join(session("s"), caller("ada", Role::Instructor), None)
        .await
        .expect("join")
        .events;
    let mut feed = hub.changes();
    let jobs_before = rig.store.pending_jobs().expect("jobs").len();

    rig.faults.fail_applies.store(1, Ordering::SeqCst);
    let failed = hub
        .execute(session("s"), caller("ada", Role::Instructor), answer("a1"))
        .await;
    assert!(matches!(failed, Err(HubError::Store(_))), "{failed:?}");

    let admin = caller("admin", Role::Admin);
    let view = {
        let admin = admin.clone();
        hub.read(session("s"), move |r| r.session_view(&admin, Millis(0)))
            .await
            .expect("read")
            .expect("view")
    };
    assert!(
        view["questions"][0]["answer"].is_null(),
        "the replica still holds the failed answer: {view}"
    );
    assert!(
        room.try_recv().is_err(),
        "a failed batch published an event"
    );
    assert!(
        feed.try_recv().is_err(),
        "a failed batch reached the change feed"
    );
    assert!(
        rig.runnable.try_recv().is_err(),
        "a failed batch's job became runnable"
    );
    assert_eq!(rig.store.pending_jobs().expect("jobs").len(), jobs_before);

    let retried = hub
        .execute(session("s"), caller("ada", Role::Instructor), answer("a1"))
        .await
        .expect("the retry applies");
    assert!(
        retried.event.is_some(),
        "the retry was taken for a duplicate"
    );
    let again = hub
        .execute(session("s"), caller("ada", Role::Instructor), answer("a1"))
        .await;
    assert!(
        matches!(&again, Err(HubError::Rejected(r)) if r.code == lectern_model::RejectCode::DuplicateCommand),
        "the same command id applied twice: {again:?}"
    );
    assert_eq!(
        within("the event", room.recv()).await.expect("room").name,
        "qa:updated"
    );
    assert_eq!(
        rig.runnable.try_recv().expect("one runnable job").len(),
        1,
        "the retry's job"
    );
    assert!(
        rig.runnable.try_recv().is_err(),
        "a second job for one command id"
    );

    // What was acknowledged is on disk: a fresh hub over the reopened store sees it.
    let Rig {
        hub, store, _dir, ..
    } = rig;
    hub.shutdown().await.expect("shutdown");
    drop((hub, store, room, feed));
    // The writer tasks let go of the store just after shutdown returns; wait for the lock.
    let deadline = std::time::Instant::now() + EXPECT_WITHIN;
    let store = loop {
        match Store::open(_dir.path()) {
            Ok(store) => break store,
            Err(lectern_store::StoreError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("reopen: {error}"),
        }
    };
    let hub = Hub::new(store, HubConfig::default());
    let view = hub
        .read(session("s"), move |r| r.session_view(&admin, Millis(0)))
        .await
        .expect("read")
        .expect("view");
    assert_eq!(view["questions"][0]["answer"]["text"], "fsynced", "{view}");
}

/// How long the writer-retirement stress runs.
const STRESS_FOR: Duration = Duration::from_secs(4);

/// Writers retire under load: with a 1 ms idle timeout, 12 tasks send commands and reads to six
/// documents for several seconds, pausing about a millisecond between calls so that writers
/// keep retiring while new messages arrive. Every call is answered with success; after a
/// reopen every acknowledged question is there, and every actor's changes form one chain
/// (sequence numbers 1..=n, none reused: two writers of one document would reuse them).
///
/// Kills: "retire without checking that the inbox is empty" (`retire` in `lectern-hub`
/// `doc.rs`): a message queued to a retiring writer is dropped unanswered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writers_retire_under_load_without_losing_or_forking_anything() {
    const TASKS: usize = 12;
    const DOCS: [&str; 6] = ["s0", "s1", "s2", "s3", "s4", "s5"];
    let dir = TempDir::new("retire-stress");
    let store = Store::open(dir.path()).expect("open store");
    let hub = Hub::new(
        store.clone(),
        HubConfig {
            doc_idle_ms: 1,
            ..HubConfig::default()
        },
    );
    for doc in DOCS {
        hub.execute(
            session(doc),
            caller("ada", Role::Instructor),
            cmd(&format!("create-{doc}"), create_session(doc)),
        )
        .await
        .expect("create");
    }
    let deadline = tokio::time::Instant::now() + STRESS_FOR;
    let tasks: Vec<_> = (0..TASKS)
        .map(|t| {
            let hub = hub.clone();
            tokio::spawn(async move {
                let mut acked: Vec<(usize, String)> = Vec::new();
                let mut reads = 0u64;
                let mut i = 0usize;
                while tokio::time::Instant::now() < deadline {
                    let d = t % DOCS.len();
                    let id = format!("t{t}-{i}");
                    hub.execute(
                        session(DOCS[d]),
                        // A new person every 50 asks: one person's are capped per session.
                        caller(&format!("u{t}-{}", i / 50), Role::Student),
                        cmd(&id, ask(&id)),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("command {id} was not applied: {e:?}"));
                    acked.push((d, id));
                    // About the idle timeout: the writer is often retiring as the next one comes.
                    tokio::time::sleep(Duration::from_micros(900 + 40 * t as u64)).await;
                    hub.read(session(DOCS[(d + 1) % DOCS.len()]), |r| r.token())
                        .await
                        .unwrap_or_else(|e| panic!("a read was not answered: {e:?}"));
                    reads += 1;
                    i += 1;
                    tokio::time::sleep(Duration::from_micros(1000)).await;
                }
                (acked, reads)
            })
        })
        .collect();
    let mut acked: Vec<(usize, String)> = Vec::new();
    let mut reads = 0;
    for task in tasks {
        let (a, r) = within("a stress task", task).await.expect("task");
        acked.extend(a);
        reads += r;
    }
    assert!(
        acked.len() >= 100 && reads >= 100,
        "too little load: {} commands",
        acked.len()
    );
    assert!(
        hub.stats().evictions >= 10,
        "writers barely retired: {:?}",
        hub.stats()
    );
    hub.shutdown().await.expect("shutdown");
    drop((hub, store));

    let reopen_deadline = std::time::Instant::now() + EXPECT_WITHIN;
    let store = loop {
        match Store::open(dir.path()) {
            Ok(store) => break store,
            Err(lectern_store::StoreError::Locked { .. })
                if std::time::Instant::now() < reopen_deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("reopen: {error}"),
        }
    };
    for (d, doc) in DOCS.iter().enumerate() {
        let stored = store
            .load_doc(&session(doc).to_string())
            .expect("load")
            .expect("stored");
        let am = automerge::Automerge::load(&stored.concat()).expect("the stored doc loads");
        let mut chains: std::collections::HashMap<automerge::ActorId, Vec<u64>> =
            std::collections::HashMap::new();
        for change in am.get_changes(&[]) {
            chains
                .entry(change.actor_id().clone())
                .or_default()
                .push(change.seq());
        }
        for (actor, mut seqs) in chains {
            seqs.sort_unstable();
            let expected: Vec<u64> = (1..=seqs.len() as u64).collect();
            assert_eq!(
                seqs, expected,
                "actor {actor} of {doc} does not form one chain"
            );
        }
        let replica = lectern_model::Replica::load(session(doc), &stored.concat(), &[9; 24])
            .expect("replica");
        let view = replica
            .session_view(&caller("admin", Role::Admin), Millis(0))
            .expect("view");
        let ids: std::collections::HashSet<&str> = view["questions"]
            .as_array()
            .expect("questions")
            .iter()
            .filter_map(|q| q["id"].as_str())
            .collect();
        for (_, id) in acked.iter().filter(|(ad, _)| *ad == d) {
            assert!(
                ids.contains(id.as_str()),
                "acked {id} is missing from {doc} after a reopen"
            );
        }
    }
}
