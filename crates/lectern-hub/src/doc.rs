//! The writer task of one document: batch, apply, persist (group commit), then acknowledge and
//! publish.
//!
//! Reads queued behind writes run after the batch is durable, so nothing a reader, subscriber or
//! peer sees can be lost in a crash. If the store fails, the task drops its in-memory replica
//! (which may hold changes that never reached disk), fails the batch, and reloads from the store
//! on the next message.
//!
//! A document that is not in the store is held as its genesis only, and that is never written:
//! only a create command (`crate::creates_document`) or a peer's changes make it exist; reads of
//! a session or cohort that does not exist answer `doc_not_found`, other commands are refused
//! with it, and no sync state of it is persisted.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use automerge::ChangeHash;
use automerge::sync;
use lectern_model::{Caller, Command, DocId, Event, Replica, ResumeError, ResumeToken};
use lectern_store::Batch;
use tokio::sync::{mpsc, oneshot};
use tracing::{debug, warn};

use crate::rooms::Published;
use crate::{Acked, HubError, Inner, JoinStart, Joined, idle};

/// What a read runs on: the replica, or why there is none to read (the document does not
/// exist, or does not load).
pub(crate) type ReadOn<'a> = Result<&'a Replica, HubError>;

/// A read run on the writer task.
pub(crate) type ReadFn = Box<dyn FnOnce(ReadOn<'_>, &Arc<Inner>) + Send>;

/// Where a sync reply goes.
type SyncReply = oneshot::Sender<Result<Option<Vec<u8>>, HubError>>;

/// What a writer task is asked to do.
pub(crate) enum Msg {
    Command {
        caller: Caller,
        cmd: Command,
        reply: oneshot::Sender<Result<Acked, HubError>>,
    },
    Sync {
        peer: String,
        message: Vec<u8>,
        /// The peer may read the document but not write it (see [`crate::SyncAccess`]).
        read_only: bool,
        reply: SyncReply,
    },
    GenerateSync {
        peer: String,
        read_only: bool,
        reply: SyncReply,
    },
    Read(ReadFn),
    /// Rewrite the stored document as one snapshot now (its chunks folded in); answered
    /// after the store has it, with the stored bytes before and after.
    Compact {
        reply: oneshot::Sender<Result<Compacted, HubError>>,
    },
}

/// What a compaction did to a stored document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Compacted {
    /// Snapshot and chunk bytes before.
    pub bytes_before: u64,
    /// Snapshot bytes after (no chunks are left).
    pub bytes_after: u64,
}

impl Msg {
    /// Whether this message may start a writer for `doc` when the store does not hold it: a
    /// create command, a peer's sync (replication brings documents into being), and a read of
    /// an inbox (an empty inbox is its owner's normal state; nothing is written for it).
    pub(crate) fn may_start(&self, doc: &DocId) -> bool {
        match self {
            Msg::Command { cmd, .. } => crate::creates_document(doc, &cmd.body),
            Msg::Sync { .. } | Msg::GenerateSync { .. } => true,
            Msg::Read(_) => matches!(doc, DocId::Inbox(_)),
            Msg::Compact { .. } => false,
        }
    }
}

/// A loaded document and what the writer tracks about its storage.
struct Live {
    replica: Replica,
    /// Heads of everything on disk; the next chunk holds the changes after them.
    saved: Vec<ChangeHash>,
    next_chunk_seq: u64,
    snapshot_bytes: u64,
    chunk_bytes: u64,
    /// Per peer: the conversation (see `Hub::peer_connected`) the state belongs to, and the
    /// state.
    peers: HashMap<String, (u64, sync::State)>,
    /// For a document the store did not hold: the heads of its genesis (never written on its
    /// own). Empty for a document loaded from the store.
    fresh: Vec<ChangeHash>,
}

impl Live {
    /// Whether the document exists: it was stored, or something beyond its genesis was applied.
    fn exists(&self) -> bool {
        self.fresh.is_empty() || self.replica.doc().get_heads() != self.fresh
    }
}

/// Who a writer task is.
pub(crate) struct Writer {
    pub(crate) inner: Arc<Inner>,
    pub(crate) doc: DocId,
    /// Its entry's id in the hub's table (see `loaded::Writer::id`).
    pub(crate) id: u64,
    /// Messages sent to it and not yet fully processed: lowered only once everything a batch
    /// does (the commit, the acks, the reads) is done, so an evictor that sees 0 under the
    /// hub's lock knows this task will not touch the store again.
    pub(crate) in_flight: Arc<AtomicUsize>,
}

/// Runs the writer task of `doc` until its inbox closes (shutdown or eviction) or it retires
/// (idle).
pub(crate) async fn run(writer: Writer, mut rx: mpsc::Receiver<Msg>, _alive: mpsc::Sender<()>) {
    let Writer {
        inner,
        doc,
        id,
        in_flight,
    } = writer;
    let mut live: Option<Live> = None;
    let batch_max = inner.config.batch_max_messages.max(1);
    loop {
        let first = match tokio::time::timeout(idle(&inner.config), rx.recv()).await {
            Ok(Some(m)) => m,
            Ok(None) => break,
            Err(_) => match retire(&inner, &doc, id, &rx) {
                Retire::Retired => {
                    inner.counters.evictions.fetch_add(1, Ordering::Relaxed);
                    debug!("evicted idle document");
                    break;
                }
                Retire::Evicted => break,
                Retire::Busy => continue,
            },
        };
        let mut batch = vec![first];
        while batch.len() < batch_max {
            match rx.try_recv() {
                Ok(m) => batch.push(m),
                Err(_) => break,
            }
        }
        let taken = batch.len();
        if live.is_none() {
            match load(&inner, &doc).await {
                Ok(l) => {
                    index_undigested(&inner, &doc, &l);
                    live = Some(l)
                }
                Err(e) => {
                    warn!(error = %e, "document does not load");
                    fail_all(&inner, batch, &e);
                    in_flight.fetch_sub(taken, Ordering::SeqCst);
                    continue;
                }
            }
        }
        if let Some(l) = live.as_mut()
            && !process(&inner, &doc, l, batch).await
        {
            // The store failed, or a peer's message panicked automerge: memory may hold changes
            // that are not on disk. Start over from the store with the next message.
            live = None;
        }
        in_flight.fetch_sub(taken, Ordering::SeqCst);
    }
}

/// What an idle writer found when it tried to retire.
enum Retire {
    /// It left the table: end the task.
    Retired,
    /// Its entry is gone already (evicted; a successor may run): end the task.
    Evicted,
    /// A message arrived meanwhile: keep going.
    Busy,
}

/// Retires the writer if its inbox is empty, under the hub's lock so no sender can race it.
fn retire(inner: &Inner, doc: &DocId, id: u64, rx: &mpsc::Receiver<Msg>) -> Retire {
    if let Some(hook) = &inner.config.before_retire {
        hook(doc);
    }
    let Ok(mut docs) = inner.docs.lock() else {
        return Retire::Busy;
    };
    if !rx.is_empty() {
        return Retire::Busy;
    }
    if docs.remove(doc, Some(id)) {
        Retire::Retired
    } else {
        Retire::Evicted
    }
}

/// A document stored without a heads digest gets one in the index once loaded (the next
/// batch that changes it stores one).
fn index_undigested(inner: &Inner, doc: &DocId, live: &Live) {
    let Ok(mut undigested) = inner.undigested.lock() else {
        return;
    };
    if undigested.remove(doc)
        && let Ok(mut heads) = inner.heads.lock()
    {
        heads.insert(doc.clone(), crate::heads_digest(&live.saved));
    }
}

async fn load(inner: &Arc<Inner>, doc: &DocId) -> Result<Live, HubError> {
    let store = inner.store.clone();
    let key = doc.to_string();
    let id = doc.clone();
    let actor = inner.identity.actor_bytes();
    let hub_inner = inner.clone();
    tokio::task::spawn_blocking(move || {
        let stored = store
            .load_doc(&key)
            .map_err(|e| HubError::Store(e.to_string()))?;
        let Some(stored) = stored else {
            let replica = Replica::new(id, &actor);
            return Ok(Live {
                fresh: replica.doc().get_heads(),
                replica,
                saved: Vec::new(),
                next_chunk_seq: 0,
                snapshot_bytes: 0,
                chunk_bytes: 0,
                peers: HashMap::new(),
            });
        };
        let replica = Replica::load(id, &stored.concat(), &actor).map_err(|e| HubError::Load {
            doc: key.clone(),
            reason: e.to_string(),
        })?;
        if replica.id() == &DocId::Flags {
            hub_inner.set_flags(replica.flags());
        }
        hub_inner.counters.loads.fetch_add(1, Ordering::Relaxed);
        Ok(Live {
            saved: replica.doc().get_heads(),
            replica,
            next_chunk_seq: stored.next_chunk_seq,
            snapshot_bytes: stored.snapshot_bytes,
            chunk_bytes: stored.chunk_bytes,
            peers: HashMap::new(),
            fresh: Vec::new(),
        })
    })
    .await
    .map_err(|e| HubError::Store(format!("load task failed: {e}")))?
}

fn fail_all(inner: &Arc<Inner>, batch: Vec<Msg>, e: &HubError) {
    for m in batch {
        match m {
            Msg::Command { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
            Msg::Sync { reply, .. } | Msg::GenerateSync { reply, .. } => {
                let _ = reply.send(Err(e.clone()));
            }
            Msg::Read(f) => f(Err(e.clone()), inner),
            Msg::Compact { reply } => {
                let _ = reply.send(Err(e.clone()));
            }
        }
    }
}

/// The sync state of (`peer`, `doc`), loaded from the store on first use. A state from an
/// earlier conversation with `peer` is cut back to its persisted part (the shared heads): what it
/// says about messages in flight belonged to a connection that is gone.
///
/// With `read_only` the state becomes automerge's read-only one, for as long as the writer
/// keeps it (across the peer's reconnects too): the peer's changes are not applied, nothing is
/// asked of it, and its messages tell it so (it then sends none), while ours still carry our
/// changes to it. Only the persisted shared heads are stored, so the mode is set again by the
/// caller after a reload.
fn sync_state<'a>(
    inner: &Inner,
    doc: &DocId,
    peers: &'a mut HashMap<String, (u64, sync::State)>,
    peer: &str,
    read_only: bool,
) -> &'a mut sync::State {
    let epoch = inner
        .peer_epochs
        .lock()
        .ok()
        .and_then(|e| e.get(peer).copied())
        .unwrap_or(0);
    let entry = peers.entry(peer.to_owned()).or_insert_with(|| {
        let state = match inner.store.sync_state(peer, &doc.to_string()) {
            Ok(Some(bytes)) => sync::State::decode(&bytes).unwrap_or_else(|e| {
                warn!(peer, error = %e, "stored sync state does not decode; starting afresh");
                sync::State::new()
            }),
            Ok(None) => sync::State::new(),
            Err(e) => {
                warn!(peer, error = %e, "reading sync state failed; starting afresh");
                sync::State::new()
            }
        };
        (epoch, state)
    });
    if entry.0 != epoch {
        let was_read_only = entry.1.read_only;
        entry.1 = sync::State::decode(&entry.1.encode()).unwrap_or_else(|_| sync::State::new());
        entry.1.set_read_only(was_read_only);
        entry.0 = epoch;
    }
    if read_only && !entry.1.read_only {
        entry.1.set_read_only(true);
    }
    &mut entry.1
}

/// Fails everything a batch was going to answer (its applied commands, sync replies and
/// compactions, and the messages not yet processed) with `e`: nothing of it is persisted.
fn fail_batch(
    inner: &Arc<Inner>,
    e: &HubError,
    acks: Vec<(oneshot::Sender<Result<Acked, HubError>>, Acked)>,
    sync_replies: Vec<(String, SyncReply)>,
    compactions: Vec<oneshot::Sender<Result<Compacted, HubError>>>,
    rest: Vec<Msg>,
) {
    for (reply, _) in acks {
        let _ = reply.send(Err(e.clone()));
    }
    for (_, reply) in sync_replies {
        let _ = reply.send(Err(e.clone()));
    }
    for reply in compactions {
        let _ = reply.send(Err(e.clone()));
    }
    fail_all(inner, rest, e);
}

/// Processes one batch. Returns false if the store failed or a peer's sync message panicked
/// automerge (the replica must be reloaded).
async fn process(inner: &Arc<Inner>, doc: &DocId, live: &mut Live, batch: Vec<Msg>) -> bool {
    let now = (inner.config.clock)();
    let mut acks: Vec<(oneshot::Sender<Result<Acked, HubError>>, Acked)> = Vec::new();
    let mut events: Vec<Arc<Published>> = Vec::new();
    let mut sync_replies: Vec<(String, SyncReply)> = Vec::new();
    let mut dirty_peers: HashSet<String> = HashSet::new();
    let mut deferred: Vec<Msg> = Vec::new();
    let mut rejected = 0u64;
    let mut jobs: Vec<(String, Vec<u8>)> = Vec::new();
    let mut compactions: Vec<oneshot::Sender<Result<Compacted, HubError>>> = Vec::new();

    let mut batch = batch.into_iter();
    // Set when a peer's sync message panicked automerge: the replica may be half-changed.
    let mut poisoned = false;
    for msg in batch.by_ref() {
        match msg {
            Msg::Compact { reply } if !live.exists() || live.saved.is_empty() => {
                let _ = reply.send(Err(HubError::not_found(doc)));
            }
            Msg::Compact { reply } => compactions.push(reply),
            Msg::Command { cmd, reply, .. }
                if !live.exists() && !crate::creates_document(doc, &cmd.body) =>
            {
                rejected += 1;
                let _ = reply.send(Err(HubError::not_found(doc)));
            }
            Msg::Command { cmd, reply, .. }
                if cmd.body.feature().is_some_and(|f| {
                    !inner
                        .flags()
                        .enabled(f, live.replica.flag_cohort().as_ref())
                }) =>
            {
                rejected += 1;
                let cohort = live.replica.flag_cohort();
                let refusal = cmd
                    .body
                    .feature()
                    .map(|f| inner.flags().check(f, cohort.as_ref()));
                let rejection = match refusal {
                    Some(Err(r)) => r,
                    // The flag changed between the two looks: refuse all the same, once.
                    _ => lectern_model::Rejection::new(
                        lectern_model::RejectCode::FeatureDisabled,
                        "this feature is switched off by the operators",
                    ),
                };
                let _ = reply.send(Err(HubError::Rejected(rejection)));
            }
            Msg::Command { caller, cmd, reply } => match live.replica.apply(&caller, &cmd, now) {
                Ok(applied) => {
                    if let Some(hook) = &inner.config.jobs
                        && let Some(trigger) = live.replica.trigger_for(&caller, &cmd, now)
                    {
                        jobs.extend(hook.jobs_for(&trigger));
                    }
                    let event = applied
                        .event
                        .as_ref()
                        .map(|e| Arc::new(Published::from_event(doc, e)));
                    if let Some(e) = &event {
                        events.push(e.clone());
                    }
                    let ack = Acked {
                        token: applied.token,
                        event,
                    };
                    acks.push((reply, ack));
                }
                Err(rejection) => {
                    rejected += 1;
                    let _ = reply.send(Err(HubError::Rejected(rejection)));
                }
            },
            Msg::Sync {
                peer,
                message,
                read_only,
                reply,
            } => {
                let state = sync_state(inner, doc, &mut live.peers, &peer, read_only);
                let followed = inner.rooms.has_subscribers(doc);
                match live
                    .replica
                    .receive_sync_message_with(state, &message, followed)
                {
                    Ok(remote) => {
                        inner.counters.sync_messages.fetch_add(1, Ordering::Relaxed);
                        events.extend(
                            remote
                                .iter()
                                .map(|e: &Event| Arc::new(Published::from_event(doc, e))),
                        );
                        dirty_peers.insert(peer.clone());
                        sync_replies.push((peer, reply));
                    }
                    Err(e @ lectern_model::SyncError::Panicked(_)) => {
                        tracing::error!(
                            peer,
                            error = %e,
                            "a peer's sync message panicked automerge; the document is loaded \
                             again from the store"
                        );
                        let _ = reply.send(Err(HubError::Sync(e)));
                        poisoned = true;
                        break;
                    }
                    Err(e) => {
                        warn!(peer, error = %e, "refused a sync message");
                        let _ = reply.send(Err(HubError::Sync(e)));
                    }
                }
            }
            other => deferred.push(other),
        }
    }
    if poisoned {
        // Nothing of this batch is persisted or acknowledged: its commands and messages fail
        // with a retryable error, and the writer starts over from the store.
        let e = HubError::Store("the document was reloaded; retry".into());
        deferred.extend(batch);
        fail_batch(inner, &e, acks, sync_replies, compactions, deferred);
        return false;
    }
    inner
        .counters
        .commands_rejected
        .fetch_add(rejected, Ordering::Relaxed);

    let heads = live.replica.doc().get_heads();
    // A genesis alone is not a document: it is never written, announced or sent.
    let changed = heads != live.saved && live.exists();
    // Sync states are kept only for documents in the store: a peer cannot make this node write
    // one for a document that does not exist.
    if !changed && live.saved.is_empty() {
        dirty_peers.clear();
    }
    let compact = !compactions.is_empty();
    let bytes_before = live.snapshot_bytes + live.chunk_bytes;
    if changed || !dirty_peers.is_empty() || compact {
        let mut batch = storage_batch(inner, doc, live, changed, &dirty_peers, compact);
        for (id, record) in &jobs {
            batch.enqueue_job(id, record.clone());
        }
        let (tx, rx) = oneshot::channel();
        inner.committer.submit(batch, move |r| {
            let _ = tx.send(r);
        });
        let result = match rx.await {
            Ok(r) => r.map_err(|e| HubError::Store(e.to_string())),
            Err(_) => Err(HubError::Store("the commit thread stopped".into())),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "persisting a batch failed; nothing in it is acknowledged");
            fail_batch(inner, &e, acks, sync_replies, compactions, deferred);
            return false;
        }
        inner.counters.batches.fetch_add(1, Ordering::Relaxed);
        live.saved = heads.clone();
        if let Some(hook) = &inner.config.jobs
            && !jobs.is_empty()
        {
            hook.enqueued(jobs);
        }
    }
    // The heads index first, so that when `execute` returns, `Hub::doc_heads` already shows the
    // acknowledged state (a caller comparing replicas never sees the pre-ack heads).
    let digest = crate::heads_digest(&heads);
    if changed && let Ok(mut index) = inner.heads.lock() {
        index.insert(doc.clone(), digest);
    }
    // Before the ack: once `flag.set` returns, this node already answers by the new flag.
    if changed && *doc == DocId::Flags {
        inner.set_flags(live.replica.flags());
    }

    let local = !acks.is_empty();
    inner
        .counters
        .commands_applied
        .fetch_add(acks.len() as u64, Ordering::Relaxed);
    for (reply, ack) in acks {
        let _ = reply.send(Ok(ack));
    }
    for reply in compactions {
        let _ = reply.send(Ok(Compacted {
            bytes_before,
            bytes_after: live.snapshot_bytes + live.chunk_bytes,
        }));
    }
    if changed {
        inner.rooms.publish(doc, events);
        let origin = if !local {
            crate::Origin::Remote
        } else {
            crate::Origin::Local
        };
        let _ = inner.feed.send(crate::Change {
            doc: doc.clone(),
            origin,
            heads: digest,
        });
    }
    for (peer, reply) in sync_replies {
        // A read-only state stays so (set when its message was received).
        let state = sync_state(inner, doc, &mut live.peers, &peer, false);
        let _ = reply.send(Ok(live.replica.generate_sync_message(state)));
    }
    for msg in deferred {
        match msg {
            Msg::GenerateSync {
                peer,
                read_only,
                reply,
            } => {
                let state = sync_state(inner, doc, &mut live.peers, &peer, read_only);
                let _ = reply.send(Ok(live.replica.generate_sync_message(state)));
            }
            // A session or cohort that does not exist has nothing to read; an inbox that does
            // not exist yet reads as empty.
            Msg::Read(f) if !live.exists() && !matches!(doc, DocId::Inbox(_)) => {
                f(Err(HubError::not_found(doc)), inner)
            }
            Msg::Read(f) => f(Ok(&live.replica), inner),
            Msg::Command { .. } | Msg::Sync { .. } | Msg::Compact { .. } => {
                unreachable!("only reads are deferred")
            }
        }
    }
    true
}

/// The store batch for everything the batch changed: one incremental chunk (or, when chunks
/// outweigh the snapshot or `force_compact` asks, a fresh snapshot replacing them) and the
/// touched peers' sync states.
fn storage_batch(
    inner: &Inner,
    doc: &DocId,
    live: &mut Live,
    changed: bool,
    dirty_peers: &HashSet<String>,
    force_compact: bool,
) -> Batch {
    let key = doc.to_string();
    let mut batch = Batch::new();
    if changed || force_compact {
        if changed {
            batch.put_heads(&key, crate::heads_digest(&live.replica.doc().get_heads()));
        }
        let chunk = live.replica.save_after(&live.saved);
        let chunk_len = chunk.len() as u64;
        let compact = force_compact
            || live.chunk_bytes + chunk_len
                > live.snapshot_bytes.max(inner.config.compact_min_bytes);
        if compact {
            let snapshot = live.replica.save();
            live.snapshot_bytes = snapshot.len() as u64;
            live.chunk_bytes = 0;
            batch.put_snapshot(&key, snapshot, live.next_chunk_seq);
            inner.counters.compactions.fetch_add(1, Ordering::Relaxed);
        } else {
            batch.append_chunk(&key, live.next_chunk_seq, chunk);
            live.next_chunk_seq += 1;
            live.chunk_bytes += chunk_len;
        }
    }
    for peer in dirty_peers {
        if let Some((_, state)) = live.peers.get(peer) {
            batch.put_sync_state(peer, &key, state.encode());
        }
    }
    batch
}

/// Builds a consistent start for a subscriber; runs on the writer task, so no event can be
/// published between reading the start and subscribing.
pub(crate) fn join(
    replica: &Replica,
    inner: &Arc<Inner>,
    doc: &DocId,
    caller: &Caller,
    since: Option<ResumeToken>,
) -> Result<Joined, HubError> {
    replica.authorize_read(caller)?;
    let events = inner.rooms.subscribe(doc);
    let token = replica.token();
    let mut refused = None;
    if let Some(since) = since {
        match replica.events_since(&since) {
            Ok(replayed) => {
                let replayed = replayed
                    .iter()
                    .map(|e| Arc::new(Published::from_event(doc, e)))
                    .collect();
                return Ok(Joined {
                    start: JoinStart::Replay {
                        events: replayed,
                        token,
                    },
                    events,
                });
            }
            Err(e) => {
                debug!(error = %e, "resume refused; sending a snapshot");
                refused = Some(match e {
                    ResumeError::Malformed(_) => "bad_token",
                    ResumeError::UnknownHeads(_) => "unknown_heads",
                    ResumeError::TooFarBehind(_) => "too_far_behind",
                });
            }
        }
    }
    let state = replica.join_view(caller, (inner.config.clock)())?;
    Ok(Joined {
        start: JoinStart::Snapshot {
            state,
            token,
            resume_refused: refused,
        },
        events,
    })
}
