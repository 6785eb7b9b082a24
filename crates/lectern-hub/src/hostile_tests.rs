//! Hostile requests against a bare hub's document lifecycle: reads, joins, views, long-polls,
//! streams and commands naming documents that do not exist answer `doc_not_found` and write
//! nothing (nothing in the store, on the change feed, to peers), and only the create commands
//! bring a document into being; and the loaded-document limits: LRU eviction, the per-user
//! cap, `docs_loaded_max`, a full writer inbox, one writer per document under eviction and
//! retirement. (The same requests over a real node's HTTP, SSE and Socket.IO and on a
//! two-node cluster are in the `lectern-tests` binary, `hub_hostile`.)

use std::time::Duration;

use lectern_model::{Caller, CommandBody, DocId, Millis, PollChoice, Replica, Role, UserId};
use lectern_store::Store;
use tokio::sync::broadcast::error::TryRecvError;

use crate::test_support::{TempDir, ask, caller, cmd, create_session, session};
use crate::{Hub, HubConfig, HubError};

fn hub_at(dir: &TempDir) -> Hub {
    Hub::new(
        Store::open(dir.path()).expect("open store"),
        HubConfig::default(),
    )
}

fn cohort(id: &str) -> DocId {
    DocId::Cohort(id.parse().expect("valid cohort id"))
}

fn inbox(user: &str) -> DocId {
    DocId::Inbox(user.parse::<UserId>().expect("valid user id"))
}

fn assert_not_found<T: std::fmt::Debug>(what: &str, r: Result<T, HubError>) {
    match r {
        Err(e) => assert_eq!(e.code(), "doc_not_found", "{what}: {e:?}"),
        Ok(v) => panic!("{what}: answered {v:?} for a document that does not exist"),
    }
}

/// Nothing of `hub`'s store names a document: no snapshot or chunk, no heads digest.
fn assert_store_empty(hub: &Hub) {
    assert_eq!(
        hub.store().doc_ids().expect("doc ids"),
        Vec::<String>::new(),
        "no document was written"
    );
    assert!(hub.heads_summary().is_empty(), "no heads digest was kept");
}

#[tokio::test]
async fn reads_joins_and_commands_on_absent_documents_start_nothing_and_write_nothing() {
    let dir = TempDir::new("ghost-hub");
    let hub = hub_at(&dir);
    let mut feed = hub.changes();
    let student = caller("sam", Role::Student);
    let ada = caller("ada", Role::Instructor);
    for i in 0..20 {
        let s = session(&format!("ghost{i}"));
        assert_not_found("read", hub.read(s.clone(), |r| r.token()).await);
        assert_not_found(
            "session view",
            hub.read(s.clone(), {
                let c = student.clone();
                move |r| r.session_view(&c, Millis(0))
            })
            .await,
        );
        assert_not_found("join", hub.join(s.clone(), student.clone(), None).await);
        assert_not_found(
            "ask",
            hub.execute(s.clone(), student.clone(), cmd(&format!("a{i}"), ask("hi")))
                .await,
        );
        let vote = CommandBody::PollVote {
            poll: "p1".parse().expect("valid poll id"),
            choice: PollChoice::Single(0),
        };
        assert_not_found(
            "vote",
            hub.execute(s.clone(), student.clone(), cmd(&format!("v{i}"), vote))
                .await,
        );
        assert_not_found(
            "attendance",
            hub.execute(
                s,
                student.clone(),
                cmd(&format!("j{i}"), CommandBody::AttendanceJoin),
            )
            .await,
        );
        let c = cohort(&format!("gc{i}"));
        assert_not_found("cohort read", hub.read(c.clone(), |r| r.token()).await);
        assert_not_found(
            "leaderboard",
            hub.read(c.clone(), |r| r.leaderboard().map(|_| ())).await,
        );
        let privacy = CommandBody::LeaderboardPrivacy { anonymous: true };
        assert_not_found(
            "cohort command",
            hub.execute(c, ada.clone(), cmd(&format!("p{i}"), privacy))
                .await,
        );
        // An inbox command other than the creating ones.
        let read_all = CommandBody::InboxRead {
            notifications: vec![],
        };
        let me = caller(&format!("u{i}"), Role::Student);
        assert_not_found(
            "inbox.read",
            hub.execute(inbox(&format!("u{i}")), me, cmd(&format!("r{i}"), read_all))
                .await,
        );
    }
    assert_eq!(
        hub.loaded_docs(),
        0,
        "no writer is started for a session or cohort that does not exist"
    );
    // A create command a caller may not send (a student creating a session) is refused and
    // leaves nothing behind either.
    let refused = hub
        .execute(
            session("ghost-create"),
            student.clone(),
            cmd("c0", create_session("mine")),
        )
        .await
        .expect_err("a student may not create a session");
    assert_eq!(refused.code(), "forbidden");
    // An inbox that does not exist yet reads as empty for its owner, and is not written.
    let me = caller("u1", Role::Student);
    let view = hub
        .read(inbox("u1"), move |r| r.inbox_view(&me))
        .await
        .expect("an empty inbox reads");
    assert!(view.is_ok(), "the owner reads their empty inbox: {view:?}");
    let joined = hub
        .join(inbox("u1"), caller("u1", Role::Student), None)
        .await
        .expect("the owner follows their empty inbox");
    drop(joined);
    // A peer's sync about a document this node lacks writes neither it nor a sync state.
    let empty = Replica::new(session("ghost-sync"), &[7; 16]);
    let mut state = lectern_model::automerge::sync::State::new();
    let hello = empty
        .generate_sync_message(&mut state)
        .expect("a first sync message");
    hub.receive_sync(session("ghost-sync"), "peer", hello)
        .await
        .expect("a sync message about nothing is accepted");
    hub.generate_sync(session("ghost-sync2"), "peer")
        .await
        .expect("a sync message is made");
    assert!(
        hub.store()
            .sync_state("peer", "session/ghost-sync")
            .expect("read")
            .is_none(),
        "no sync state is kept for a document that does not exist"
    );
    // A writer already running for an absent document (started by the sync above) answers
    // reads and commands the same way.
    assert_not_found(
        "read on a live writer",
        hub.read(session("ghost-sync2"), |r| r.token()).await,
    );
    assert_not_found(
        "ask on a live writer",
        hub.execute(
            session("ghost-sync2"),
            student.clone(),
            cmd("a-live", ask("hi")),
        )
        .await,
    );
    assert_store_empty(&hub);
    assert!(
        matches!(feed.try_recv(), Err(TryRecvError::Empty)),
        "nothing was announced on the change feed"
    );
    hub.shutdown().await.expect("shutdown");
    drop(hub);
    // Reopened from disk: still nothing.
    let again = hub_at(&dir);
    assert_store_empty(&again);
    again.shutdown().await.expect("shutdown");
}

#[tokio::test]
async fn create_commands_and_inbox_pushes_create_documents() {
    let dir = TempDir::new("ghost-create");
    let hub = hub_at(&dir);
    let ada = caller("ada", Role::Instructor);
    let student = caller("sam", Role::Student);
    // A create and a command sent at once (one writer batch): the second sees the first.
    let (created, asked) = tokio::join!(
        hub.execute(session("s"), ada.clone(), cmd("c1", create_session("s"))),
        hub.execute(session("s"), student.clone(), cmd("q1", ask("first?"))),
    );
    created.expect("session.create creates the session");
    asked.expect("a command after the create in the same batch applies");
    let admin = caller("root", Role::Admin);
    hub.execute(
        cohort("c9"),
        admin.clone(),
        cmd(
            "k1",
            CommandBody::CohortCreate {
                course: "Course".into(),
                title: "Cohort".into(),
                home_region: String::new(),
            },
        ),
    )
    .await
    .expect("cohort.create creates the cohort");
    let push = CommandBody::InboxPush {
        notification: "n1".parse().expect("valid id"),
        kind: lectern_model::NotifyKind::Announcement,
        title: "Hello".into(),
        body: "Body".into(),
        link: String::new(),
        cohort: None,
    };
    hub.execute(inbox("sam"), admin.clone(), cmd("n1", push))
        .await
        .expect("the job runner's push creates the inbox");
    let prefs = CommandBody::InboxPrefs {
        kinds: Default::default(),
        digest: Some(true),
        email: None,
    };
    hub.execute(
        inbox("kim"),
        caller("kim", Role::Student),
        cmd("pr1", prefs),
    )
    .await
    .expect("an owner's preferences create their inbox");
    assert_eq!(
        hub.store().doc_ids().expect("doc ids"),
        vec!["cohort/c9", "inbox/kim", "inbox/sam", "session/s"],
    );
    let view = hub
        .read(session("s"), {
            let c: Caller = student.clone();
            move |r| r.session_view(&c, Millis(0))
        })
        .await
        .expect("read")
        .expect("the student reads the created session");
    assert!(view.to_string().contains("first?"), "{view}");
    hub.shutdown().await.expect("shutdown");
}

mod limits {
    //! Loaded documents: LRU eviction instead of refusal, the per-user cap, the exact
    //! boundaries of `docs_loaded_max` and of a writer's inbox (`Overloaded`), and one writer
    //! per document while writers are evicted and retire under load.

    use std::collections::{HashMap, HashSet};
    use std::future::Future;
    use std::pin::pin;
    use std::task::{Context, Poll, Waker};

    use super::*;

    fn hub_with(dir: &TempDir, edit: impl FnOnce(&mut HubConfig)) -> Hub {
        let mut config = HubConfig {
            // Nothing retires by itself in these tests unless they say so.
            doc_idle_ms: 600_000,
            ..HubConfig::default()
        };
        edit(&mut config);
        Hub::new(Store::open(dir.path()).expect("open store"), config)
    }

    /// Creates sessions `s0`…`s{n-1}` as an admin (charged to nobody), retrying while a small
    /// hub is full of writers still finishing (an ack reaches its caller just before its
    /// writer counts the batch done).
    async fn sessions(hub: &Hub, n: usize) {
        for i in 0..n {
            let create = || {
                hub.execute(
                    session(&format!("s{i}")),
                    caller("root", Role::Admin),
                    cmd(&format!("create{i}"), create_session("s")),
                )
            };
            tokio::time::timeout(Duration::from_secs(10), async {
                loop {
                    match create().await {
                        Ok(_) => break,
                        Err(HubError::TooManyDocs(_)) => tokio::task::yield_now().await,
                        Err(e) => panic!("create s{i}: {e}"),
                    }
                }
            })
            .await
            .unwrap_or_else(|_| panic!("s{i} is created within 10 s"));
        }
    }

    /// Polls `fut` once: `None` if it is still waiting (its message is queued), else its result.
    fn poll_once<T>(fut: impl Future<Output = T>) -> Option<T> {
        let mut fut = pin!(fut);
        match fut.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
            Poll::Ready(v) => Some(v),
            Poll::Pending => None,
        }
    }

    /// Reads session `id`, retrying while the hub is full of writers still finishing (an ack
    /// reaches its caller just before its writer counts the batch done).
    async fn read_when_room(hub: &Hub, id: &str) {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                match hub.read(session(id), |r| r.token()).await {
                    Ok(_) => break,
                    Err(HubError::TooManyDocs(_)) => tokio::task::yield_now().await,
                    Err(e) => panic!("read {id}: {e}"),
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{id} loads within 10 s"));
    }

    /// Blocks `doc`'s writer inside a read until the returned sender is dropped or sent to;
    /// returns once the writer is inside it.
    async fn block_writer(hub: &Hub, id: &str) -> std::sync::mpsc::Sender<()> {
        // Loaded first (retrying while the hub is full of writers still finishing), so the
        // blocking read goes to a running writer.
        read_when_room(hub, id).await;
        let doc = session(id);
        let (started_tx, started) = tokio::sync::oneshot::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let hub2 = hub.clone();
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

    /// Kills: evicting a document that someone follows, or refusing instead of evicting.
    #[tokio::test]
    async fn a_full_hub_evicts_idle_documents_instead_of_refusing() {
        let dir = TempDir::new("lru");
        let hub = hub_with(&dir, |c| c.docs_loaded_max = 4);
        sessions(&hub, 10).await;
        assert!(hub.loaded_docs() <= 4, "{} loaded", hub.loaded_docs());
        for round in 0..2 {
            for i in 0..10 {
                hub.read(session(&format!("s{i}")), |r| r.token())
                    .await
                    .unwrap_or_else(|e| panic!("round {round}: read s{i}: {e}"));
                assert!(hub.loaded_docs() <= 4, "{} loaded", hub.loaded_docs());
            }
        }
        let stats = hub.stats();
        assert_eq!(stats.refused_full, 0);
        assert!(stats.evictions_lru >= 16, "{stats:?}");
        hub.shutdown().await.expect("shutdown");
    }

    /// The exact boundary of `docs_loaded_max`: with every loaded document followed, the next
    /// load is refused `overloaded`; once one is left, the load evicts it. Kills: `>=` turned
    /// into `>` in the full check, evicting followed documents.
    #[tokio::test]
    async fn docs_loaded_max_refuses_only_when_every_document_is_followed_or_busy() {
        let dir = TempDir::new("full");
        let hub = hub_with(&dir, |c| c.docs_loaded_max = 3);
        sessions(&hub, 5).await;
        let mut followers = Vec::new();
        for i in 0..3 {
            let who = caller(&format!("u{i}"), Role::Student);
            followers.push(
                hub.join(session(&format!("s{i}")), who, None)
                    .await
                    .expect("a join under the limit"),
            );
        }
        assert_eq!(hub.loaded_docs(), 3);
        let err = hub
            .join(session("s3"), caller("u3", Role::Student), None)
            .await
            .expect_err("the fourth document does not fit");
        assert!(matches!(err, HubError::TooManyDocs(3)), "{err:?}");
        assert_eq!(err.code(), "overloaded");
        assert_eq!(hub.stats().refused_full, 1);
        // One subscriber leaves: its document may go.
        drop(followers.remove(0));
        let joined = hub
            .join(session("s3"), caller("u3", Role::Student), None)
            .await
            .expect("the load evicts the unfollowed document");
        assert_eq!(hub.loaded_docs(), 3);
        // The followed ones stayed: their subscribers still get events.
        hub.execute(
            session("s1"),
            caller("u1", Role::Student),
            cmd("after", ask("still live?")),
        )
        .await
        .expect("a command on a followed document");
        let e = tokio::time::timeout(Duration::from_secs(5), followers[0].events.recv())
            .await
            .expect("an event within 5 s")
            .expect("the room is open");
        assert_eq!(e.name, "qa:new");
        drop(joined);
        hub.shutdown().await.expect("shutdown");
    }

    /// Kills: evicting a writer with work in flight (two writers for one document).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_busy_writer_is_never_evicted() {
        let dir = TempDir::new("busy");
        let hub = hub_with(&dir, |c| c.docs_loaded_max = 1);
        sessions(&hub, 2).await;
        let release = block_writer(&hub, "s0").await;
        let err = hub
            .read(session("s1"), |r| r.token())
            .await
            .expect_err("the only loaded writer is busy");
        assert!(matches!(err, HubError::TooManyDocs(1)), "{err:?}");
        drop(release);
        // Once it is done, it may go.
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if hub.read(session("s1"), |r| r.token()).await.is_ok() {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("s1 loads once s0's writer is idle");
        hub.shutdown().await.expect("shutdown");
    }

    /// A message sent to a writer after its idle time ran out but before it took the hub's lock
    /// to retire is served, not lost: the writer sees its inbox is not empty and stays. Kills:
    /// retiring without the empty-inbox check under the lock.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_writer_retiring_while_a_message_arrives_serves_it() {
        type Gate = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);
        let dir = TempDir::new("retire-race");
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let gate: std::sync::Mutex<Option<Gate>> =
            std::sync::Mutex::new(Some((entered_tx, release_rx)));
        let target = session("s0");
        let hub = hub_with(&dir, |c| {
            c.doc_idle_ms = 20;
            c.before_retire = Some(std::sync::Arc::new(move |doc: &DocId| {
                if *doc != target {
                    return;
                }
                let taken = gate.lock().ok().and_then(|mut g| g.take());
                if let Some((entered, release)) = taken {
                    let _ = entered.send(());
                    let _ = release.recv_timeout(Duration::from_secs(30));
                }
            }));
        });
        sessions(&hub, 1).await;
        tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("join")
            .expect("the idle writer reaches its retirement");
        let mut read = Box::pin(hub.read(session("s0"), |r| r.token()));
        assert!(
            poll_once(read.as_mut()).is_none(),
            "the read is queued to the retiring writer"
        );
        release_tx.send(()).expect("release");
        let token = tokio::time::timeout(Duration::from_secs(10), read)
            .await
            .expect("answered within 10 s");
        assert!(token.is_ok(), "the read is served: {token:?}");
        hub.shutdown().await.expect("shutdown");
    }

    /// A writer evicted while it was on its way to retire does not remove its successor:
    /// the retiring writer checks the table's entry is still its own. Kills: retiring by
    /// document alone (the successor, busy, would lose its entry, and the next message would
    /// start a second writer for the document).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_evicted_writer_retiring_late_leaves_its_successor_in_place() {
        type Gate = (std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>);
        let dir = TempDir::new("retire-evicted");
        let (entered_tx, entered_rx) = std::sync::mpsc::channel::<()>();
        let (release_tx, release_rx) = std::sync::mpsc::channel::<()>();
        let gate: std::sync::Mutex<Option<Gate>> =
            std::sync::Mutex::new(Some((entered_tx, release_rx)));
        // The sessions first, on a hub without limits.
        let setup = hub_with(&dir, |_| {});
        sessions(&setup, 2).await;
        setup.shutdown().await.expect("shutdown");
        drop(setup);
        let target = session("s0");
        let hub = hub_with(&dir, |c| {
            c.doc_idle_ms = 20;
            c.docs_loaded_max = 1;
            c.before_retire = Some(std::sync::Arc::new(move |doc: &DocId| {
                if *doc != target {
                    return;
                }
                let taken = gate.lock().ok().and_then(|mut g| g.take());
                if let Some((entered, release)) = taken {
                    let _ = entered.send(());
                    let _ = release.recv_timeout(Duration::from_secs(30));
                }
            }));
        });
        // s0's first writer is held on its way to retire.
        read_when_room(&hub, "s0").await;
        tokio::task::spawn_blocking(move || entered_rx.recv_timeout(Duration::from_secs(30)))
            .await
            .expect("join")
            .expect("s0's idle writer reaches its retirement");
        // Loading s1 evicts that writer (idle, unfollowed); a blocked read starts its
        // successor, which stays busy.
        read_when_room(&hub, "s1").await;
        let release_b = block_writer(&hub, "s0").await;
        assert_eq!(hub.loaded_docs(), 1);
        let evictions = hub.stats().evictions;
        let handles = hub.handles();
        release_tx.send(()).expect("release the first writer");
        // The first writer's task ends (it held a handle of the hub).
        tokio::time::timeout(Duration::from_secs(10), async {
            while hub.handles() >= handles {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the first writer ends");
        assert_eq!(hub.loaded_docs(), 1, "the successor keeps its entry");
        assert_eq!(
            hub.stats().evictions,
            evictions,
            "the evicted writer did not count itself as retired"
        );
        drop(release_b);
        hub.shutdown().await.expect("shutdown");
    }

    /// The exact boundary of a writer's inbox: with the writer busy, `inbox_capacity`
    /// messages queue and the next is refused `overloaded`; the queued ones all apply. Kills:
    /// an unbounded inbox, an off-by-one in the capacity.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_writer_inbox_refuses_exactly_past_its_capacity() {
        let dir = TempDir::new("inbox");
        let hub = hub_with(&dir, |c| c.inbox_capacity = 4);
        sessions(&hub, 1).await;
        let release = block_writer(&hub, "s0").await;
        let sam = caller("sam", Role::Student);
        for i in 0..4 {
            let queued = poll_once(hub.execute(
                session("s0"),
                sam.clone(),
                cmd(&format!("q{i}"), ask("queued")),
            ));
            assert!(queued.is_none(), "message {i} queues: {queued:?}");
        }
        let refused = poll_once(hub.execute(session("s0"), sam.clone(), cmd("q4", ask("no"))))
            .expect("refused at once");
        let err = refused.expect_err("the fifth does not fit");
        assert!(matches!(err, HubError::Overloaded(_)), "{err:?}");
        assert_eq!(err.code(), "overloaded");
        drop(release);
        // The inbox drains once the writer is free; until then a read is refused like the rest.
        let applied = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                let r = hub
                    .read(session("s0"), |r| {
                        (0..5)
                            .map(|i| r.has_applied(&format!("q{i}").parse().expect("id")))
                            .collect::<Vec<bool>>()
                    })
                    .await;
                match r {
                    Ok(v) => break v,
                    Err(HubError::Overloaded(_)) => tokio::task::yield_now().await,
                    Err(e) => panic!("read after the queue drained: {e}"),
                }
            }
        })
        .await
        .expect("the inbox drains");
        assert_eq!(applied, vec![true, true, true, true, false]);
        hub.shutdown().await.expect("shutdown");
    }

    /// One user holding documents cannot make another user's join fail: the user's own cap
    /// stops them (`too_many_documents`), their idle documents make room for their next, and
    /// everyone else joins. Kills: no per-user cap, charging only the user who loaded a
    /// document (joins of documents others loaded would then pin without limit).
    #[tokio::test]
    async fn one_user_loading_many_documents_cannot_make_another_users_join_fail() {
        let dir = TempDir::new("per-user");
        let hub = hub_with(&dir, |c| {
            c.docs_loaded_max = 8;
            c.docs_loaded_per_user_max = 3;
        });
        sessions(&hub, 12).await;
        // Touch every session as an admin, so the hostile user's joins find some loaded by
        // someone else.
        for i in 0..12 {
            hub.read(session(&format!("s{i}")), |r| r.token())
                .await
                .expect("read");
        }
        let mal = caller("mal", Role::Student);
        let mut held = Vec::new();
        let mut refused = 0;
        for i in 0..12 {
            match hub.join(session(&format!("s{i}")), mal.clone(), None).await {
                Ok(j) => held.push((i, j)),
                Err(e) => {
                    assert!(matches!(e, HubError::TooManyDocsForUser(3)), "{e:?}");
                    assert_eq!(e.code(), "too_many_documents");
                    refused += 1;
                }
            }
        }
        assert_eq!(held.len(), 3, "exactly the cap of joins holds");
        assert_eq!(refused, 9);
        let mal_ask = hub
            .execute(session("s11"), mal.clone(), cmd("m1", ask("more?")))
            .await
            .expect_err("a command on a fourth document is refused too");
        assert_eq!(mal_ask.code(), "too_many_documents");
        // Everyone else: five other users join five other sessions, all while mal holds three.
        let mut others = Vec::new();
        for (n, i) in (3..8).enumerate() {
            let who = caller(&format!("u{n}"), Role::Student);
            others.push(
                hub.join(session(&format!("s{i}")), who, None)
                    .await
                    .unwrap_or_else(|e| panic!("u{n}'s join of s{i} failed: {e}")),
            );
        }
        assert!(hub.loaded_docs() <= 8);
        assert_eq!(hub.stats().refused_full, 0);
        // Mal leaves one: their next document takes its place.
        let (left, joined) = held.remove(0);
        drop(joined);
        hub.join(session("s9"), mal.clone(), None)
            .await
            .unwrap_or_else(|e| panic!("after leaving s{left}, mal joins another: {e}"));
        hub.shutdown().await.expect("shutdown");
    }

    /// Many concurrent commands over more documents than may be loaded, with writers evicted
    /// and retiring (a 1 ms idle time) all the while: every acknowledged command is on disk
    /// after a reopen, and every actor's changes form one chain (no sequence number used twice,
    /// none skipped). Kills: evicting or retiring a writer with work queued or in flight.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_evicted_and_retired_under_load_keep_one_writer_per_document() {
        let dir = TempDir::new("evict-stress");
        let hub = hub_with(&dir, |c| {
            c.docs_loaded_max = 2;
            c.doc_idle_ms = 1;
        });
        let docs = 5;
        sessions(&hub, docs).await;
        let mut tasks = Vec::new();
        let (writers, commands) = (8, 60);
        for t in 0..writers {
            let hub = hub.clone();
            tasks.push(tokio::spawn(async move {
                let mut acked = Vec::new();
                for n in 0..commands {
                    let s = (t + n) % docs;
                    let id = format!("t{t}n{n}");
                    let who = caller(&format!("w{t}"), Role::Student);
                    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
                    loop {
                        let r = hub
                            .execute(session(&format!("s{s}")), who.clone(), cmd(&id, ask("x")))
                            .await;
                        match r {
                            Ok(_) => {
                                acked.push((s, id));
                                break;
                            }
                            Err(HubError::TooManyDocs(_)) | Err(HubError::Overloaded(_))
                                if tokio::time::Instant::now() < deadline =>
                            {
                                tokio::task::yield_now().await
                            }
                            Err(e) => panic!("{id} on s{s}: {e}"),
                        }
                    }
                    // Reads between commands, so writers start, go idle and are evicted.
                    let _ = hub
                        .read(session(&format!("s{}", (s + 2) % docs)), |r| r.token())
                        .await;
                }
                acked
            }));
        }
        let mut acked = Vec::new();
        for t in tasks {
            acked.extend(t.await.expect("task"));
        }
        assert_eq!(
            acked.len(),
            writers * commands,
            "every command was acknowledged in the end"
        );
        let stats = hub.stats();
        assert!(
            stats.evictions_lru + stats.evictions > 10,
            "writers came and went: {stats:?}"
        );
        hub.shutdown().await.expect("shutdown");
        drop(hub);
        let store = Store::open(dir.path()).expect("reopen");
        let mut by_doc: HashMap<usize, Vec<String>> = HashMap::new();
        for (s, id) in acked {
            by_doc.entry(s).or_default().push(id);
        }
        for s in 0..docs {
            let key = format!("session/s{s}");
            let stored = store.load_doc(&key).expect("load").expect("stored");
            let replica =
                Replica::load(session(&format!("s{s}")), &stored.concat(), &[9; 16]).expect("load");
            for id in by_doc.get(&s).into_iter().flatten() {
                assert!(
                    replica.has_applied(&id.parse().expect("id")),
                    "{id} acked on {key} but not on disk"
                );
            }
            let mut chains: HashMap<Vec<u8>, Vec<u64>> = HashMap::new();
            for change in replica.doc().get_changes(&[]) {
                chains
                    .entry(change.actor_id().to_bytes().to_vec())
                    .or_default()
                    .push(change.seq());
            }
            for (actor, mut seqs) in chains {
                seqs.sort_unstable();
                let unique: HashSet<u64> = seqs.iter().copied().collect();
                assert_eq!(
                    unique.len(),
                    seqs.len(),
                    "{key}: a sequence number reused by {actor:?}"
                );
                assert_eq!(
                    seqs,
                    (1..=seqs.len() as u64).collect::<Vec<_>>(),
                    "{key}: one chain per actor"
                );
            }
        }
    }
}

/// A peer's sync message that panics automerge's change parser (found by the `hub_sync` fuzz
/// target; the input is kept in its corpus, less the harness's first byte here) is refused
/// with `bad_sync_message`, on a stored document and on one this node does not hold; the
/// writer starts over from the store, so the stored document keeps its heads, takes the next
/// command, and the other still does not exist. Kills: a panic that ends the writer task (the
/// next command would fail), a half-applied replica kept in memory.
#[tokio::test]
async fn a_sync_message_that_panics_automerge_is_refused_and_the_document_reloaded() {
    const CRASH: &[u8] = include_bytes!(
        "../../../fuzz/corpus/hub_sync/crash-1b3dc66ce1610b92ff1ba24e4ab9563e822c9944"
    );
    let dir = TempDir::new("panicking-sync");
    let hub = hub_at(&dir);
    let ada = caller("ada", Role::Instructor);
    let stored = session("stored");
    hub.execute(stored.clone(), ada.clone(), cmd("mk", create_session("S")))
        .await
        .expect("created");
    let before = hub.doc_heads(&stored);
    for doc in [stored.clone(), session("never-seen")] {
        let refused = hub
            .receive_sync(doc.clone(), "peer-a", CRASH[1..].to_vec())
            .await;
        match refused {
            Err(e) => assert_eq!(e.code(), "bad_sync_message", "{doc}: {e:?}"),
            Ok(r) => panic!("{doc}: the message was taken: {r:?}"),
        }
    }
    assert_eq!(
        hub.doc_heads(&stored),
        before,
        "the stored document kept its heads"
    );
    assert_eq!(hub.doc_heads(&session("never-seen")), None);
    hub.execute(
        stored.clone(),
        caller("sam", Role::Student),
        cmd("q", ask("still here?")),
    )
    .await
    .expect("the writer takes the next command");
    assert_ne!(hub.doc_heads(&stored), before);
}
