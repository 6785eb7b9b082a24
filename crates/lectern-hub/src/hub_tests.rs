//! The hub with a real sled store: group commit, room fan-out, eviction and reload, remote
//! sync between two hubs, resume, compaction and large-document reload.

use std::time::Duration;

use lectern_model::{CommandBody, Millis, Replica, Role};
use lectern_store::{Batch, Store};

use crate::test_support::{TempDir, ask, caller, cmd, create_session, session};
use crate::{Hub, HubConfig, HubError, JoinStart};

fn hub_at(dir: &TempDir, config: HubConfig) -> Hub {
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

/// Delivers `first` from `from` to `to` and every reply back and forth until one side has
/// nothing more to say. Every generated message must be delivered: automerge's sync state
/// remembers what it sent.
async fn exchange(from: (&Hub, &str), to: (&Hub, &str), id: &str, first: Vec<u8>) {
    let (mut sender, mut receiver) = (from, to);
    let mut message = first;
    for _ in 0..100 {
        match receiver
            .0
            .receive_sync(session(id), sender.1, message)
            .await
            .expect("receive")
        {
            Some(reply) => {
                message = reply;
                std::mem::swap(&mut sender, &mut receiver);
            }
            None => return,
        }
    }
    panic!("sync did not quiesce");
}

/// Syncs two hubs until neither has anything to say.
async fn sync_pair(a: &Hub, a_name: &str, b: &Hub, b_name: &str, id: &str) {
    for _ in 0..10 {
        let mut quiet = true;
        if let Some(m) = a.generate_sync(session(id), b_name).await.expect("gen a") {
            quiet = false;
            exchange((a, a_name), (b, b_name), id, m).await;
        }
        if let Some(m) = b.generate_sync(session(id), a_name).await.expect("gen b") {
            quiet = false;
            exchange((b, b_name), (a, a_name), id, m).await;
        }
        if quiet {
            return;
        }
    }
    panic!("sync did not quiesce");
}

/// The next event, failing (not hanging) if none comes within 5 s.
async fn recv(
    rx: &mut tokio::sync::broadcast::Receiver<std::sync::Arc<crate::Published>>,
) -> std::sync::Arc<crate::Published> {
    tokio::time::timeout(Duration::from_secs(5), rx.recv())
        .await
        .expect("an event within 5 s")
        .expect("the room is open")
}

/// 400 concurrent commands share fsyncs (at least one, fewer than one each) and every one is on
/// disk after a reopen.
///
/// Kills: "skip the fsync" in `lectern-store` `commit::run` (zero fsyncs), "one fsync per batch"
/// (400), and a batch acknowledged but not written (fewer than 400 questions after the reopen).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_commands_share_fsyncs_and_all_ack() {
    let dir = TempDir::new("group-commit");
    let hub = hub_at(&dir, HubConfig::default());
    created(&hub, "s").await;
    let fsyncs_before = hub.store().stats().fsyncs;
    let mut tasks = Vec::new();
    for i in 0..400 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            let who = caller(&format!("u{i}"), Role::Student);
            hub.execute(session("s"), who, cmd(&format!("q{i}"), ask("why?")))
                .await
        }));
    }
    for t in tasks {
        t.await.expect("join").expect("every command acks");
    }
    let stats = hub.stats();
    let fsyncs = hub.store().stats().fsyncs;
    assert_eq!(stats.commands_applied, 401);
    assert!(
        stats.batches < 401,
        "{} batches for 401 commands",
        stats.batches
    );
    let fsyncs = fsyncs - fsyncs_before;
    // Nonzero: an ack without any fsync would be an ack of nothing durable.
    assert!(
        (1..400).contains(&fsyncs),
        "{fsyncs} fsyncs for 400 commands"
    );

    // What the group commit acknowledged is what a reopened store holds.
    hub.shutdown().await.expect("shutdown");
    drop(hub);
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    let store = loop {
        match Store::open(dir.path()) {
            Ok(store) => break store,
            Err(lectern_store::StoreError::Locked { .. })
                if std::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(error) => panic!("reopen: {error}"),
        }
    };
    let stored = store.load_doc("session/s").expect("load").expect("stored");
    let replica = Replica::load(session("s"), &stored.concat(), &[7; 24]).expect("replica");
    let view = replica
        .session_view(&caller("admin", Role::Admin), Millis(0))
        .expect("view");
    assert_eq!(
        view["questions"].as_array().map(Vec::len),
        Some(400),
        "after a reopen"
    );
}

#[tokio::test]
async fn room_subscribers_get_events_and_double_upvote_counts_once() {
    let dir = TempDir::new("rooms");
    let hub = hub_at(&dir, HubConfig::default());
    created(&hub, "s").await;
    let alice = caller("alice", Role::Student);
    let bob = caller("bob", Role::Student);
    let mut joined = hub
        .join(session("s"), bob.clone(), None)
        .await
        .expect("join");
    assert!(matches!(joined.start, JoinStart::Snapshot { .. }));
    hub.execute(
        session("s"),
        alice.clone(),
        cmd("q1", ask("What is a CRDT?")),
    )
    .await
    .expect("ask");
    for n in 0..2 {
        let r = hub
            .execute(
                session("s"),
                bob.clone(),
                cmd(
                    &format!("up{n}"),
                    CommandBody::QaUpvote {
                        question: "q1".parse().unwrap(),
                    },
                ),
            )
            .await
            .expect("upvote");
        assert!(r.event.is_some());
    }
    let first = recv(&mut joined.events).await;
    assert_eq!(first.name, "qa:new");
    let payload: serde_json::Value =
        serde_json::from_str(first.payload_for("bob", false).expect("bob sees it")).unwrap();
    assert_eq!(payload["question"], "What is a CRDT?");
    let mut counts = Vec::new();
    for _ in 0..2 {
        let e = recv(&mut joined.events).await;
        assert_eq!(e.name, "qa:upvoted");
        let p: serde_json::Value =
            serde_json::from_str(e.payload_for("bob", false).unwrap()).unwrap();
        counts.push(p["count"].as_u64().unwrap());
    }
    assert_eq!(
        counts,
        vec![1, 1],
        "the same user upvoting twice counts once"
    );
}

#[tokio::test]
async fn non_member_cannot_join() {
    let dir = TempDir::new("join-auth");
    let hub = hub_at(&dir, HubConfig::default());
    created(&hub, "s").await;
    let mut outsider = caller("eve", Role::Student);
    outsider.cohorts = vec!["other".parse().unwrap()];
    let err = hub
        .join(session("s"), outsider, None)
        .await
        .expect_err("refused");
    assert_eq!(err.code(), "not_member");
}

#[tokio::test]
async fn idle_documents_are_evicted_and_reloaded_intact() {
    let dir = TempDir::new("evict");
    let config = HubConfig {
        doc_idle_ms: 30,
        ..HubConfig::default()
    };
    let hub = hub_at(&dir, config);
    created(&hub, "s").await;
    hub.execute(
        session("s"),
        caller("a", Role::Student),
        cmd("q1", ask("kept?")),
    )
    .await
    .expect("ask");
    assert_eq!(hub.loaded_docs(), 1);
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while hub.loaded_docs() > 0 {
        assert!(std::time::Instant::now() < deadline, "never evicted");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(hub.stats().evictions >= 1);
    // Created in memory, never loaded from the store until now.
    let loads = hub.stats().loads;
    assert_eq!(loads, 0, "{:?}", hub.stats());
    let admin = caller("admin", Role::Admin);
    let view = hub
        .read(session("s"), move |r| r.session_view(&admin, Millis(0)))
        .await
        .expect("read")
        .expect("view");
    assert_eq!(view["questions"][0]["question"], "kept?");
    assert_eq!(hub.stats().loads, 1, "the reload is counted");
    // A retried command is still recognised after the reload.
    let again = hub
        .execute(
            session("s"),
            caller("a", Role::Student),
            cmd("q1", ask("kept?")),
        )
        .await
        .expect_err("duplicate");
    assert_eq!(again.code(), "duplicate_command");
}

#[tokio::test]
async fn two_hubs_converge_through_sync_and_remote_changes_become_events() {
    let (da, db) = (TempDir::new("sync-a"), TempDir::new("sync-b"));
    let a = hub_at(&da, HubConfig::default());
    let b = hub_at(&db, HubConfig::default());
    created(&a, "s").await;
    sync_pair(&a, "A", &b, "B", "s").await;
    let bob = caller("bob", Role::Student);
    let mut joined = b.join(session("s"), bob, None).await.expect("join on B");
    let mut feed = b.changes();
    let mut feed_a = a.changes();
    a.execute(
        session("s"),
        caller("alice", Role::Student),
        cmd("q1", ask("from A")),
    )
    .await
    .expect("ask on A");
    let local = feed_a.recv().await.expect("A's feed");
    assert_eq!(
        local.origin,
        crate::Origin::Local,
        "a command accepted here is announced as local (side effects run here)"
    );
    sync_pair(&a, "A", &b, "B", "s").await;
    let e = recv(&mut joined.events).await;
    assert_eq!(e.name, "qa:new");
    assert!(e.payload_for("bob", false).unwrap().contains("from A"));
    let change = feed.recv().await.expect("feed");
    assert_eq!(change.doc, session("s"));
    assert_eq!(
        change.origin,
        crate::Origin::Remote,
        "a peer's change is announced as remote (no side effects on this node)"
    );
    assert_eq!(Some(change.heads), b.doc_heads(&session("s")));
    let heads_a = a.read(session("s"), |r| r.token()).await.unwrap();
    let heads_b = b.read(session("s"), |r| r.token()).await.unwrap();
    assert_eq!(heads_a, heads_b);
    // B persisted its sync state with A, so a reconnect does not resend history.
    assert!(b.store().sync_state("A", "session/s").unwrap().is_some());
    // Retrying the command on B after it replicated is refused as a duplicate.
    let dup = b
        .execute(
            session("s"),
            caller("alice", Role::Student),
            cmd("q1", ask("from A")),
        )
        .await
        .expect_err("duplicate across nodes");
    assert_eq!(dup.code(), "duplicate_command");
}

#[tokio::test]
async fn garbage_sync_message_is_refused_and_the_document_keeps_serving() {
    let dir = TempDir::new("garbage");
    let hub = hub_at(&dir, HubConfig::default());
    created(&hub, "s").await;
    for junk in [vec![], vec![0x42; 7], vec![0xff; 300]] {
        let err = hub
            .receive_sync(session("s"), "peer", junk)
            .await
            .expect_err("refused");
        assert!(matches!(err, HubError::Sync(_)), "{err:?}");
        assert_eq!(err.code(), "bad_sync_message");
    }
    hub.execute(
        session("s"),
        caller("a", Role::Student),
        cmd("q1", ask("still here?")),
    )
    .await
    .expect("still serving");
}

#[tokio::test]
async fn resume_token_replays_exactly_the_missed_events() {
    let dir = TempDir::new("resume");
    let hub = hub_at(&dir, HubConfig::default());
    created(&hub, "s").await;
    let alice = caller("alice", Role::Student);
    let first = hub
        .join(session("s"), alice.clone(), None)
        .await
        .expect("join");
    let JoinStart::Snapshot { token, .. } = first.start else {
        panic!("expected a snapshot")
    };
    let mut live = Vec::new();
    for i in 0..3 {
        let ack = hub
            .execute(
                session("s"),
                alice.clone(),
                cmd(&format!("q{i}"), ask("missed?")),
            )
            .await
            .expect("ask");
        live.push(ack.event.expect("event").token.to_string());
    }
    let again = hub
        .join(session("s"), alice.clone(), Some(token))
        .await
        .expect("rejoin");
    let JoinStart::Replay { events, .. } = again.start else {
        panic!("expected a replay")
    };
    let replayed: Vec<String> = events.iter().map(|e| e.token.to_string()).collect();
    assert_eq!(replayed, live);

    // A token from a document this node never saw: a snapshot, with the reason.
    let other = Replica::new(session("elsewhere"), &[7u8; 24]);
    let mut other = other;
    other
        .apply(
            &caller("ada", Role::Instructor),
            &cmd("c", create_session("x")),
            Millis(1),
        )
        .expect("create elsewhere");
    let rejoin = hub
        .join(session("s"), alice, Some(other.token()))
        .await
        .expect("join");
    match rejoin.start {
        JoinStart::Snapshot { resume_refused, .. } => {
            assert_eq!(resume_refused, Some("unknown_heads"))
        }
        JoinStart::Replay { .. } => panic!("replayed from unknown heads"),
    }
}

#[tokio::test]
async fn compaction_keeps_content_and_heads() {
    let dir = TempDir::new("compact");
    let config = HubConfig {
        compact_min_bytes: 2_000,
        ..HubConfig::default()
    };
    let admin = caller("admin", Role::Admin);
    let (heads, view) = {
        let hub = hub_at(&dir, config);
        created(&hub, "s").await;
        for i in 0..300 {
            hub.execute(
                session("s"),
                caller(&format!("u{}", i % 7), Role::Student),
                cmd(&format!("q{i}"), ask(&format!("question number {i}"))),
            )
            .await
            .expect("ask");
        }
        assert!(hub.stats().compactions >= 1, "no compaction happened");
        let a = admin.clone();
        let out = hub
            .read(session("s"), move |r| {
                (r.token(), r.session_view(&a, Millis(5)).unwrap())
            })
            .await
            .unwrap();
        hub.shutdown().await.expect("shutdown");
        out
    };
    let store = Store::open(dir.path()).expect("reopen");
    let stored = store.load_doc("session/s").unwrap().unwrap();
    assert!(stored.snapshot.is_some());
    assert!(
        stored.chunks.len() < 300,
        "{} chunks left after compaction",
        stored.chunks.len()
    );
    let replica = Replica::load(session("s"), &stored.concat(), &[3u8; 24]).expect("load");
    assert_eq!(replica.token(), heads);
    assert_eq!(replica.session_view(&admin, Millis(5)).unwrap(), view);
}

/// Kills: a compaction that only says it did (chunks left in the store), one that loses a
/// change, one on a document the store does not hold (it would create it).
#[tokio::test]
async fn an_asked_compaction_leaves_one_snapshot_with_everything() {
    let dir = TempDir::new("compact-now");
    let admin = caller("admin", Role::Admin);
    let (heads, view, compacted) = {
        // Never compacts on its own here: every change is a chunk until asked.
        let hub = hub_at(
            &dir,
            HubConfig {
                compact_min_bytes: u64::MAX,
                ..HubConfig::default()
            },
        );
        created(&hub, "s").await;
        for i in 0..20 {
            hub.execute(
                session("s"),
                caller("u1", Role::Student),
                cmd(&format!("q{i}"), ask(&format!("question {i}"))),
            )
            .await
            .expect("ask");
        }
        let before = hub.store().load_doc("session/s").unwrap().unwrap();
        assert!(before.chunks.len() >= 20, "{} chunks", before.chunks.len());
        let compacted = hub.compact(session("s")).await.expect("compact");
        assert!(
            matches!(hub.compact(session("nope")).await, Err(e) if e.code() == "doc_not_found"),
            "a document not stored is not compacted (nor created)"
        );
        assert!(hub.store().load_doc("session/nope").unwrap().is_none());
        let a = admin.clone();
        let out = hub
            .read(session("s"), move |r| {
                (r.token(), r.session_view(&a, Millis(5)).unwrap())
            })
            .await
            .unwrap();
        hub.shutdown().await.expect("shutdown");
        (out.0, out.1, compacted)
    };
    let store = Store::open(dir.path()).expect("reopen");
    let stored = store.load_doc("session/s").unwrap().unwrap();
    assert!(stored.snapshot.is_some());
    assert!(stored.chunks.is_empty(), "{} chunks", stored.chunks.len());
    assert_eq!(compacted.bytes_after, stored.concat().len() as u64);
    assert!(compacted.bytes_before > 0);
    let replica = Replica::load(session("s"), &stored.concat(), &[3u8; 24]).expect("load");
    assert_eq!(replica.token(), heads);
    assert_eq!(replica.session_view(&admin, Millis(5)).unwrap(), view);
}

#[tokio::test]
async fn a_twenty_thousand_change_document_reloads() {
    let dir = TempDir::new("20k");
    let admin = caller("admin", Role::Admin);
    let mut replica = Replica::new(session("big"), &[1u8; 24]);
    replica
        .apply(&admin, &cmd("create", create_session("big")), Millis(1))
        .unwrap();
    for i in 0..20_000u64 {
        // 400 people: one person's questions and chat are capped per session.
        let who = caller(&format!("u{}", i % 400), Role::Student);
        let body = if i % 4 == 0 {
            ask(&format!("q {i}"))
        } else {
            CommandBody::ChatSend {
                text: format!("chat {i}"),
            }
        };
        replica
            .apply(&who, &cmd(&format!("c{i}"), body), Millis(i))
            .unwrap();
    }
    let heads = replica.token();
    let store = Store::open(dir.path()).unwrap();
    let mut batch = Batch::new();
    batch.put_snapshot("session/big", replica.save(), 0);
    store.commit(batch).unwrap();
    let hub = Hub::new(store, HubConfig::default());
    let (count, token) = hub
        .read(session("big"), |r| (r.change_count(), r.token()))
        .await
        .expect("the hub loads it");
    assert!(count > 20_000, "{count} changes");
    assert_eq!(token, heads);
    // And it still takes commands.
    let chat = CommandBody::ChatSend {
        text: "after reload".into(),
    };
    hub.execute(session("big"), admin, cmd("after", chat))
        .await
        .expect("command after reload");
}

/// A peer's sync state is persisted from the first sync that brings a document to this node:
/// after one full exchange, B has stored its state with A.
///
/// Kills: `!changed && live.saved.is_empty()` → `||` in `doc::process` (a batch that brings
/// a document into being, or changes nothing, would drop its peers' sync states).
#[tokio::test]
async fn the_first_sync_of_a_document_persists_the_peers_state() {
    let (da, db) = (TempDir::new("first-sync-a"), TempDir::new("first-sync-b"));
    let a = hub_at(&da, HubConfig::default());
    let b = hub_at(&db, HubConfig::default());
    created(&a, "s").await;
    sync_pair(&a, "A", &b, "B", "s").await;
    assert_eq!(b.doc_heads(&session("s")), a.doc_heads(&session("s")));
    assert!(
        b.store()
            .sync_state("A", "session/s")
            .expect("read")
            .is_some(),
        "B keeps no sync state with A"
    );
}

/// Failover: a client resuming on B with a token from A, which is ahead, waits (up to
/// `resume_wait_ms`) for A's changes to reach B, and then gets exactly the events it missed;
/// the wait ends as soon as they arrive, and a token B knows needs no wait at all.
///
/// Kills, in `Hub::join`: `!behind` → `behind`, `>=` → `<` and `now + wait` → `now - wait`
/// (no wait: a snapshot at once); `!behind || …` → `&&`, the match guard
/// `change.doc != doc` → `true` and `!=` → `==` (the join waits out the whole 30 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resume_from_a_node_ahead_waits_for_its_changes() {
    let (da, db) = (TempDir::new("wait-a"), TempDir::new("wait-b"));
    let a = hub_at(&da, HubConfig::default());
    let b = hub_at(
        &db,
        HubConfig {
            resume_wait_ms: 30_000,
            ..HubConfig::default()
        },
    );
    created(&a, "s").await;
    created(&a, "other").await;
    sync_pair(&a, "A", &b, "B", "s").await;
    sync_pair(&a, "A", &b, "B", "other").await;
    let alice = caller("alice", Role::Student);
    let seen = a
        .execute(session("s"), alice.clone(), cmd("q1", ask("seen")))
        .await
        .expect("ask on A")
        .token;
    // A token B knows: answered at once (well inside the 30 s wait).
    sync_pair(&a, "A", &b, "B", "s").await;
    let known = tokio::time::timeout(
        Duration::from_secs(10),
        b.join(session("s"), alice.clone(), Some(seen.clone())),
    )
    .await
    .expect("a known token is answered at once")
    .expect("join");
    assert!(matches!(known.start, JoinStart::Replay { ref events, .. } if events.is_empty()));
    // A moves ahead of B: q2 on A only. The client saw it there.
    let ahead = a
        .execute(session("s"), alice.clone(), cmd("q2", ask("seen on A")))
        .await
        .expect("ask on A")
        .token;
    a.execute(session("s"), alice.clone(), cmd("q3", ask("missed")))
        .await
        .expect("ask on A");
    let mut join = Box::pin(b.join(session("s"), alice.clone(), Some(ahead)));
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut join)
            .await
            .is_err(),
        "B answered a token it lacks without waiting"
    );
    // Another document changing on B (seen by the waiting join before the one it waits for)
    // neither ends the wait nor stops it from seeing its own document's change.
    a.execute(session("other"), alice.clone(), cmd("o1", ask("elsewhere")))
        .await
        .expect("ask on A");
    sync_pair(&a, "A", &b, "B", "other").await;
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut join)
            .await
            .is_err(),
        "another document's change ended the wait"
    );
    sync_pair(&a, "A", &b, "B", "s").await;
    let joined = tokio::time::timeout(Duration::from_secs(10), join)
        .await
        .expect("the wait ends when the changes arrive, not at its deadline")
        .expect("join");
    let JoinStart::Replay { events, .. } = joined.start else {
        panic!("expected a replay, got {:?}", joined.start)
    };
    let names: Vec<&str> = events.iter().map(|e| e.name).collect();
    assert_eq!(names, vec!["qa:new"], "exactly the missed q3");
}

/// Sets `feature` globally on `hub`'s flags document, as the operator's `flag.set` does.
async fn flag_set(hub: &Hub, id: &str, feature: lectern_model::Feature, enabled: bool) {
    hub.execute(
        lectern_model::DocId::Flags,
        caller("operator", Role::Admin),
        cmd(
            id,
            CommandBody::FlagSet {
                feature,
                cohort: None,
                enabled,
            },
        ),
    )
    .await
    .expect("flag.set");
}

/// Syncs the flags document between a region hub, which holds the classroom read-only, and a
/// classroom hub, until neither has anything to say.
async fn sync_flags_read_only(region: &Hub, classroom: &Hub) {
    use crate::SyncAccess::{ReadOnly, ReadWrite};
    let flags = || lectern_model::DocId::Flags;
    for _ in 0..10 {
        let mut quiet = true;
        // (message, whether it goes to the region)
        let mut next = Vec::new();
        if let Some(m) = region
            .generate_sync_as(flags(), "classroom", ReadOnly)
            .await
            .expect("gen region")
        {
            next.push((m, false));
        }
        if let Some(m) = classroom
            .generate_sync_as(flags(), "region", ReadWrite)
            .await
            .expect("gen classroom")
        {
            next.push((m, true));
        }
        for (first, mut to_region) in next {
            quiet = false;
            let mut message = Some(first);
            let mut steps = 0;
            while let Some(m) = message.take() {
                steps += 1;
                assert!(steps < 100, "sync did not quiesce");
                message = if to_region {
                    region
                        .receive_sync_as(flags(), "classroom", m, ReadOnly)
                        .await
                        .expect("region receives")
                } else {
                    classroom
                        .receive_sync_as(flags(), "region", m, ReadWrite)
                        .await
                        .expect("classroom receives")
                };
                to_region = !to_region;
            }
        }
        if quiet {
            return;
        }
    }
    panic!("sync did not quiesce");
}

/// A peer held read-only for a document (a scoped classroom node for the cluster's flags)
/// receives the document's changes, but its own are never taken, and the exchange ends.
/// Kills: a read-only peer's changes applied; a read-only peer starved of ours; a sync that
/// ping-pongs over changes that are refused.
#[tokio::test]
async fn a_read_only_peer_gets_the_flags_and_its_own_changes_to_them_are_not_taken() {
    use lectern_model::Feature;
    let (dir_r, dir_c) = (TempDir::new("ro-region"), TempDir::new("ro-classroom"));
    let region = hub_at(&dir_r, HubConfig::default());
    let classroom = hub_at(&dir_c, HubConfig::default());
    flag_set(&region, "region-chat-off", Feature::Chat, false).await;
    flag_set(&classroom, "classroom-polls-off", Feature::Polls, false).await;

    sync_flags_read_only(&region, &classroom).await;
    assert!(
        !classroom.flags().enabled(Feature::Chat, None),
        "reached it"
    );
    assert!(
        region.flags().enabled(Feature::Polls, None),
        "the read-only peer's change was taken"
    );
    assert!(!region.flags().enabled(Feature::Chat, None));

    // A later change of the region's reaches it too; the classroom's still does not come up.
    flag_set(&region, "region-board-off", Feature::Leaderboard, false).await;
    sync_flags_read_only(&region, &classroom).await;
    assert!(!classroom.flags().enabled(Feature::Leaderboard, None));
    assert!(region.flags().enabled(Feature::Polls, None));

    // The same exchange read-write (the control): the classroom's change is taken.
    let (dir_o, open) = {
        let d = TempDir::new("ro-open-region");
        let h = hub_at(&d, HubConfig::default());
        (d, h)
    };
    flag_set(&open, "open-chat-off", Feature::Chat, false).await;
    for _ in 0..10 {
        sync_pair_flags(&open, &classroom).await;
    }
    assert!(
        !open.flags().enabled(Feature::Polls, None),
        "read-write takes it"
    );
    drop(dir_o);
}

/// Syncs the flags document both ways, read-write.
async fn sync_pair_flags(a: &Hub, b: &Hub) {
    let flags = || lectern_model::DocId::Flags;
    for (from, to, from_name, to_name) in [(a, b, "a", "b"), (b, a, "b", "a")] {
        let Some(mut message) = from.generate_sync(flags(), to_name).await.expect("gen") else {
            continue;
        };
        let (mut sender, mut receiver) = ((from, from_name), (to, to_name));
        for _ in 0..100 {
            match receiver
                .0
                .receive_sync(flags(), sender.1, message)
                .await
                .expect("receive")
            {
                Some(reply) => {
                    message = reply;
                    std::mem::swap(&mut sender, &mut receiver);
                }
                None => break,
            }
        }
    }
}
