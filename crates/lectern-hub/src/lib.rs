//! The live documents of a node.
//!
//! The hub owns every loaded [`Replica`]: one writer task per active document, fed by a bounded
//! inbox. A writer task takes everything queued in its inbox as one batch, applies the commands
//! and remote sync messages in order, writes one incremental chunk for the whole batch, hands it
//! to the store's group-commit thread (one fsync covers the queued commands of every document)
//! and only then acknowledges, publishes events to the document's room and tells the change feed.
//! So an acknowledged command is on disk, and no peer or subscriber ever sees a change that a
//! crash could take back. A document with an empty inbox for `doc_idle_ms` is dropped from memory
//! and reloaded from the store on demand.
//!
//! Memory: at most `docs_loaded_max` documents are loaded; a load that finds the hub full evicts
//! the least recently used document with nothing in flight and nobody following it, and is
//! refused only when none can go. Each user is charged for the documents their commands and
//! joins touch, at most `docs_loaded_per_user_max` at once, so one user cannot take the room
//! everyone else needs (`loaded.rs`).
//!
//! Rooms: each document has a broadcast channel of [`Published`] events whose payloads are
//! serialized once per audience; gateways filter by audience per connection. A subscriber that
//! falls behind the channel's capacity gets `Lagged` and resumes by token.
//!
//! Jobs: a [`JobHook`] in the config turns the triggers of commands accepted HERE into job
//! records that ride in the same store batch as the command's chunk, so a notification is
//! enqueued if and only if its command is durable. Remote changes never trigger.
//!
//! Only this crate mutates a live document (an ARCHITECTURE.md invariant).
//!
//! Documents come into being only by a create command ([`creates_document`]: `session.create`,
//! `cohort.create`, and the inbox commands `inbox.push` / `inbox.prefs`) or by a peer's
//! changes. A read, join or any other command naming a document this node does not store is
//! answered `doc_not_found` without starting a writer, and nothing is written: no genesis
//! change, no sync state, no change-feed item, so nothing reaches a peer either. (A hostile
//! client naming random ids would otherwise fill the store, and through the mesh every peer's,
//! with empty documents.)
//!
//! For the mesh: [`Hub::changes`] announces every durable change with its [`Origin`] (a command
//! accepted here, or a peer's sync message); [`Hub::heads_summary`] lists a digest of every
//! document's heads (kept in memory and in the store, so no document is loaded to build it);
//! [`Hub::receive_sync`] / [`Hub::generate_sync`] run automerge's sync protocol with one
//! persisted `sync::State` per (peer, document); [`Hub::peer_connected`] starts a new
//! conversation with a peer while keeping what the persisted states say it already has.

mod doc;
mod loaded;
mod rooms;

// The hub's tests with a real sled store (the writers, group commit, the ordering gate, the
// loaded-document limits): here rather than in the `lectern-tests` binary, so that a change to
// the hub (or a mutant of it) rebuilds this crate alone.
#[cfg(test)]
mod api_tests;
#[cfg(test)]
mod hostile_tests;
#[cfg(test)]
mod hub_tests;
#[cfg(test)]
mod invariants_tests;
#[cfg(test)]
mod test_support;
#[cfg(test)]
mod writer_tests;

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lectern_model::{
    Caller, Command, CommandBody, DocId, FlagSet, Millis, RejectCode, Rejection, Replica,
    ResumeToken, Role, SyncError, Trigger, UserId,
};
use lectern_store::{NodeIdentity, Store};
use serde_json::Value;
use tokio::sync::{broadcast, mpsc, oneshot};
use tracing::Instrument;

pub use rooms::{Encoding, Published};

/// Where a durable change came from.
///
/// Side effects (notifications, emails, jobs) must be triggered only on the node that accepted
/// the command, i.e. from [`Hub::execute`]'s acknowledgement or a [`Origin::Local`] change,
/// never from a [`Origin::Remote`] one: every replica sees every change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The change holds at least one command accepted on this node.
    Local,
    /// The change came only from peers' sync messages.
    Remote,
}

/// One durable change of a document, as announced on [`Hub::changes`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    /// The document.
    pub doc: DocId,
    /// Where the change came from.
    pub origin: Origin,
    /// The digest of the document's heads after it (see [`heads_digest`]).
    pub heads: [u8; 32],
}

/// A 32-byte digest of a set of heads: SHA-256 over the sorted change hashes. Equal digests
/// mean (but for a SHA-256 collision) equal documents; the empty set has its own digest.
pub fn heads_digest(heads: &[automerge::ChangeHash]) -> [u8; 32] {
    use sha2::Digest;
    let mut sorted: Vec<&automerge::ChangeHash> = heads.iter().collect();
    sorted.sort();
    let mut hasher = sha2::Sha256::new();
    for head in sorted {
        hasher.update(head.0);
    }
    hasher.finalize().into()
}

pub use doc::Compacted;
use doc::Msg;

/// Hub settings; every default is safe for a production node.
#[derive(Clone)]
pub struct HubConfig {
    /// Commands and sync messages queued per document before callers get `overloaded`.
    /// Default 4096.
    pub inbox_capacity: usize,
    /// Most messages one writer batch takes from its inbox (so one batch cannot starve acks).
    /// Default 1024.
    pub batch_max_messages: usize,
    /// A document with nothing queued for this long is dropped from memory. Default 60 s.
    pub doc_idle_ms: u64,
    /// Documents held in memory at once. A load that finds the hub full evicts the least
    /// recently used document that has nothing queued or in progress and nobody following it;
    /// only when none can go is it refused (`overloaded`). Default 20,000 (about 20 KiB each
    /// when idle: a replica, a writer task and its inbox).
    pub docs_loaded_max: usize,
    /// Loaded documents one user may hold at once: a document is charged to every user whose
    /// command or join touched it while loaded (not to an admin, the node itself or a peer).
    /// A user at the cap who touches another document evicts their own least recently used one
    /// that is idle and unfollowed; if none is, the request is refused with
    /// `too_many_documents`, and nobody else is affected. Default 64 (a student needs a
    /// session or two, their cohort and their inbox).
    pub docs_loaded_per_user_max: usize,
    /// Events buffered per room; a subscriber further behind gets `Lagged`. Default 4096.
    pub room_capacity: usize,
    /// Events buffered per inbox room (one per user with an open notification stream; the
    /// slots are allocated up front, 4096 would cost ≈ 160 KB per user). Default 64.
    pub inbox_room_capacity: usize,
    /// Compact a document when its chunks outweigh its snapshot and this many bytes.
    /// Default 256 KiB.
    pub compact_min_bytes: u64,
    /// Capacity of the change feed the mesh consumes. Default 65,536.
    pub feed_capacity: usize,
    /// A join whose resume token names heads this node does not have yet (the client comes from
    /// another node that is ahead) waits this long for the mesh to bring them before it falls
    /// back to a snapshot. Default 0 (a node without peers has nobody to wait for); a node with
    /// a mesh sets it.
    pub resume_wait_ms: u64,
    /// The clock; tests pass a fake one. Default: system time.
    pub clock: Arc<dyn Fn() -> Millis + Send + Sync>,
    /// Turns the triggers of commands accepted on this node into jobs that are committed in
    /// the same atomic batch as the command. Default: none (no jobs).
    pub jobs: Option<Arc<dyn JobHook>>,
    /// A fault seam for tests: runs on an idle writer's task after its idle time ran out and
    /// before it takes the hub's lock to retire, so a test can send to it in between (the race
    /// the empty-inbox check under the lock exists for). Default: none.
    pub before_retire: Option<RetireHook>,
}

/// See [`HubConfig::before_retire`].
pub type RetireHook = Arc<dyn Fn(&DocId) + Send + Sync>;

/// What the hub asks of a job queue (lectern-jobs implements it).
///
/// Called only for commands this node accepted (`execute`), never for changes that arrived by
/// `receive_sync`: a replica never triggers, so an event is notified once however many nodes
/// hold its document.
pub trait JobHook: Send + Sync {
    /// The jobs `trigger` enqueues, as (job id, record). Runs on the document's writer task,
    /// so it must be quick (encode, no IO).
    fn jobs_for(&self, trigger: &Trigger) -> Vec<(String, Vec<u8>)>;
    /// The jobs of a batch are durable (called after the fsync, before the acks).
    fn enqueued(&self, jobs: Vec<(String, Vec<u8>)>);
}

impl Default for HubConfig {
    fn default() -> Self {
        HubConfig {
            inbox_capacity: 4096,
            batch_max_messages: 1024,
            doc_idle_ms: 60_000,
            docs_loaded_max: 20_000,
            docs_loaded_per_user_max: 64,
            room_capacity: 4096,
            inbox_room_capacity: 64,
            compact_min_bytes: 256 * 1024,
            feed_capacity: 65_536,
            resume_wait_ms: 0,
            clock: Arc::new(system_now),
            jobs: None,
            before_retire: None,
        }
    }
}

/// Milliseconds since the Unix epoch from the system clock.
pub fn system_now() -> Millis {
    let ms = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0);
    Millis(u64::try_from(ms).unwrap_or(u64::MAX))
}

/// Why the hub could not do what was asked.
#[derive(Debug, Clone, thiserror::Error)]
pub enum HubError {
    /// The model refused the command (the client's fault; carries a stable code).
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The document's inbox is full; retry later.
    #[error("document {0} is overloaded; retry later")]
    Overloaded(String),
    /// The node holds as many documents as it may, and none of them can be evicted.
    #[error("too many documents loaded ({0}); retry later")]
    TooManyDocs(usize),
    /// The caller's requests hold as many loaded documents as one user may
    /// (`docs_loaded_per_user_max`), and none of them can be evicted.
    #[error("you hold {0} loaded documents, the most one user may; leave one first")]
    TooManyDocsForUser(usize),
    /// The hub is shutting down.
    #[error("the node is shutting down")]
    ShuttingDown,
    /// A peer's sync message was refused.
    #[error(transparent)]
    Sync(#[from] SyncError),
    /// The store failed; nothing was acknowledged.
    #[error("storage failed: {0}")]
    Store(String),
    /// The stored document does not load.
    #[error("document {doc} does not load: {reason}")]
    Load {
        /// The document.
        doc: String,
        /// Why.
        reason: String,
    },
}

impl HubError {
    /// The answer for a document this node does not store: `doc_not_found`, the model's code
    /// for a session or cohort that was never created, so clients see one code for both.
    pub fn not_found(doc: &DocId) -> HubError {
        HubError::Rejected(Rejection::new(
            RejectCode::DocNotFound,
            format!("no such document: {doc}"),
        ))
    }

    /// Whether this is the answer for a document that does not exist (see
    /// [`HubError::not_found`]).
    pub fn is_not_found(&self) -> bool {
        matches!(self, HubError::Rejected(r) if r.code == RejectCode::DocNotFound)
    }

    /// A stable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            HubError::Rejected(r) => r.code.as_str(),
            HubError::Overloaded(_) => "overloaded",
            HubError::TooManyDocs(_) => "overloaded",
            HubError::TooManyDocsForUser(_) => "too_many_documents",
            HubError::ShuttingDown => "shutting_down",
            HubError::Sync(_) => "bad_sync_message",
            HubError::Store(_) | HubError::Load { .. } => "internal",
        }
    }
}

/// An acknowledged (durable) command.
#[derive(Debug, Clone)]
pub struct Acked {
    /// The document's heads after the command: the resume token.
    pub token: ResumeToken,
    /// The event published for it.
    pub event: Option<Arc<Published>>,
}

/// What a peer may do to a document through automerge's sync.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SyncAccess {
    /// Read and write: its changes are applied (the default).
    ReadWrite,
    /// Read only: it receives this node's changes; its own are never applied, and its sync
    /// state says so (automerge's read-only sync, so an honest peer stops sending them). Once a
    /// writer has seen a peer read-only for a document, that peer stays so until the document
    /// is unloaded.
    ReadOnly,
}

/// Where a joining subscriber starts.
#[derive(Debug)]
pub enum JoinStart {
    /// The full state as of `token`.
    Snapshot {
        /// The view.
        state: Value,
        /// Its heads.
        token: ResumeToken,
        /// Why a resume was not possible, if one was asked for (`unknown_heads` …).
        resume_refused: Option<&'static str>,
    },
    /// The events since the client's token, in order.
    Replay {
        /// The events.
        events: Vec<Arc<Published>>,
        /// The heads after the last of them.
        token: ResumeToken,
    },
}

/// A subscription that starts consistently: nothing is published between the start and the
/// first event the receiver yields.
#[derive(Debug)]
pub struct Joined {
    /// How to start.
    pub start: JoinStart,
    /// Events after the start.
    pub events: broadcast::Receiver<Arc<Published>>,
}

/// Counters for metrics and tests.
#[derive(Debug, Clone, Default)]
pub struct HubStats {
    /// Commands applied and acknowledged.
    pub commands_applied: u64,
    /// Commands refused by the model.
    pub commands_rejected: u64,
    /// Writer batches that reached the store.
    pub batches: u64,
    /// Remote sync messages applied.
    pub sync_messages: u64,
    /// Documents in memory now.
    pub docs_loaded: usize,
    /// Stored documents read from the store into memory (a writer starting on a document that
    /// exists on disk; one that does not exist yet is not counted).
    pub loads: u64,
    /// Documents dropped from memory for being idle.
    pub evictions: u64,
    /// Idle documents dropped to make room for a load (the hub was full, or the user at their
    /// cap).
    pub evictions_lru: u64,
    /// Loads refused because the caller held `docs_loaded_per_user_max` documents.
    pub refused_per_user: u64,
    /// Loads refused because the hub was full and nothing could be evicted.
    pub refused_full: u64,
    /// Documents compacted.
    pub compactions: u64,
}

#[derive(Default)]
struct Counters {
    commands_applied: AtomicU64,
    commands_rejected: AtomicU64,
    batches: AtomicU64,
    sync_messages: AtomicU64,
    loads: AtomicU64,
    evictions: AtomicU64,
    evictions_lru: AtomicU64,
    refused_per_user: AtomicU64,
    refused_full: AtomicU64,
    compactions: AtomicU64,
}

impl Inner {
    fn flags(&self) -> Arc<FlagSet> {
        match self.flags.read() {
            Ok(f) => f.clone(),
            Err(poisoned) => poisoned.into_inner().clone(),
        }
    }

    fn set_flags(&self, flags: FlagSet) {
        let flags = Arc::new(flags);
        match self.flags.write() {
            Ok(mut f) => *f = flags,
            Err(poisoned) => *poisoned.into_inner() = flags,
        }
    }
}

struct Inner {
    store: Store,
    committer: lectern_store::Committer,
    identity: NodeIdentity,
    config: HubConfig,
    docs: Mutex<loaded::Loaded>,
    rooms: rooms::Rooms,
    feed: broadcast::Sender<Change>,
    /// The heads digest of every stored document (seeded from the store, updated after every
    /// durable batch).
    heads: Mutex<HeadsIndex>,
    /// Documents the store holds without a heads digest (written by a tool, or restored): they
    /// exist all the same. A writer that loads one puts its digest into `heads`.
    undigested: Mutex<std::collections::HashSet<DocId>>,
    /// Per peer, a counter bumped by [`Hub::peer_connected`]; a writer holding a sync state of
    /// an older conversation resets it to what was persisted.
    peer_epochs: Mutex<HashMap<String, u64>>,
    counters: Counters,
    /// The cluster's feature flags as the `flags/cluster` document last read (set when its
    /// writer loads it and after every durable batch that changed it, local or remote), so a
    /// command's feature check costs a lock and a map lookup, not a document read.
    flags: std::sync::RwLock<Arc<FlagSet>>,
    closing: AtomicBool,
    /// Every writer task holds a clone; shutdown waits for all of them to be dropped.
    alive: Mutex<Option<mpsc::Sender<()>>>,
    all_done: tokio::sync::Mutex<mpsc::Receiver<()>>,
}

/// The heads digest of every stored document, with the courses' also kept apart: the catalog
/// lists them on every request, and courses are a few among many documents.
#[derive(Default)]
struct HeadsIndex {
    all: HashMap<DocId, [u8; 32]>,
    courses: std::collections::BTreeMap<DocId, [u8; 32]>,
}

impl HeadsIndex {
    fn insert(&mut self, doc: DocId, digest: [u8; 32]) {
        if matches!(doc, DocId::Course(_)) {
            self.courses.insert(doc.clone(), digest);
        }
        self.all.insert(doc, digest);
    }

    fn get(&self, doc: &DocId) -> Option<&[u8; 32]> {
        self.all.get(doc)
    }

    fn contains_key(&self, doc: &DocId) -> bool {
        self.all.contains_key(doc)
    }
}

impl FromIterator<(DocId, [u8; 32])> for HeadsIndex {
    fn from_iter<I: IntoIterator<Item = (DocId, [u8; 32])>>(iter: I) -> Self {
        let mut index = HeadsIndex::default();
        for (doc, digest) in iter {
            index.insert(doc, digest);
        }
        index
    }
}

/// The live documents of one node. Cheap to clone.
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
}

impl Hub {
    /// A hub over `store`. Must be called inside a tokio runtime.
    pub fn new(store: Store, config: HubConfig) -> Hub {
        let (feed, _) = broadcast::channel(config.feed_capacity.max(1));
        let (alive, all_done) = mpsc::channel(1);
        let heads = match store.heads_digests() {
            Ok(list) => list
                .into_iter()
                .filter_map(|(doc, digest)| DocId::parse(&doc).ok().map(|d| (d, digest)))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "reading the heads digests failed; anti-entropy starts empty");
                HeadsIndex::default()
            }
        };
        let undigested = match store.doc_ids() {
            Ok(ids) => ids
                .into_iter()
                .filter_map(|d| DocId::parse(&d).ok())
                .filter(|d| !heads.contains_key(d))
                .collect(),
            Err(e) => {
                tracing::error!(error = %e, "listing the stored documents failed");
                std::collections::HashSet::new()
            }
        };
        let inner = Inner {
            heads: Mutex::new(heads),
            undigested: Mutex::new(undigested),
            peer_epochs: Mutex::new(HashMap::new()),
            committer: store.committer(),
            identity: store.identity(),
            rooms: rooms::Rooms::new(config.room_capacity, config.inbox_room_capacity),
            store,
            config,
            docs: Mutex::new(loaded::Loaded::default()),
            feed,
            counters: Counters::default(),
            flags: std::sync::RwLock::new(Arc::new(FlagSet::new())),
            closing: AtomicBool::new(false),
            alive: Mutex::new(Some(alive)),
            all_done: tokio::sync::Mutex::new(all_done),
        };
        Hub {
            inner: Arc::new(inner),
        }
    }

    /// The cluster's feature flags as this node knows them now (every feature on until the
    /// flags document is loaded: call [`Hub::load_flags`] at start).
    pub fn flags(&self) -> Arc<FlagSet> {
        self.inner.flags()
    }

    /// Loads the stored flags document, if any, so that [`Hub::flags`] holds its flags from
    /// now on (later changes, local or from peers, update them as they are made durable).
    pub async fn load_flags(&self) -> Result<(), HubError> {
        if !self.stored(&DocId::Flags) {
            return Ok(());
        }
        // Loading the document's writer sets the flags; the read only makes it load.
        self.read(DocId::Flags, |_| ()).await
    }

    /// This node's identity (and so its automerge actor for this process).
    pub fn identity(&self) -> &NodeIdentity {
        &self.inner.identity
    }

    /// The store under the hub.
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// Applies `cmd` to `doc` as `caller`; returns once it is on disk.
    ///
    /// On a document this node does not store, only a create command ([`creates_document`])
    /// runs; any other is refused with [`HubError::not_found`] and nothing is written.
    pub async fn execute(
        &self,
        doc: DocId,
        caller: Caller,
        cmd: Command,
    ) -> Result<Acked, HubError> {
        let (reply, rx) = oneshot::channel();
        let owner = charged(&caller);
        self.send(&doc, owner, Msg::Command { caller, cmd, reply })?;
        rx.await.map_err(|_| HubError::ShuttingDown)?
    }

    /// Runs `f` on the document on its writer task (after every command queued before it).
    ///
    /// A session or cohort this node does not store answers [`HubError::not_found`] and starts
    /// no writer; an inbox that does not exist yet reads as empty (it is its owner's, and
    /// nothing is written).
    pub async fn read<T, F>(&self, doc: DocId, f: F) -> Result<T, HubError>
    where
        T: Send + 'static,
        F: FnOnce(&Replica) -> T + Send + 'static,
    {
        let (reply, rx) = oneshot::channel();
        let job: doc::ReadFn = Box::new(move |replica: doc::ReadOn<'_>, _: &Arc<Inner>| {
            let _ = reply.send(replica.map(f));
        });
        self.send(&doc, None, Msg::Read(job))?;
        rx.await.map_err(|_| HubError::ShuttingDown)?
    }

    /// Rewrites a stored document as one snapshot now, its chunks folded in (`lectern docs
    /// compact`), after everything queued before it; returns once the store has it. A document
    /// this node does not store is [`HubError::not_found`].
    pub async fn compact(&self, doc: DocId) -> Result<Compacted, HubError> {
        let (reply, rx) = oneshot::channel();
        self.send(&doc, None, Msg::Compact { reply })?;
        rx.await.map_err(|_| HubError::ShuttingDown)?
    }

    /// Subscribes `caller` to `doc`: a snapshot (or, with `since`, the events after it) and a
    /// receiver of every later event, with no gap and no overlap.
    ///
    /// A token with heads this node does not have yet waits up to `resume_wait_ms` for them to
    /// arrive from a peer (failover: the client's previous node was ahead), so the client gets
    /// exactly the events it missed rather than a snapshot.
    pub async fn join(
        &self,
        doc: DocId,
        caller: Caller,
        since: Option<ResumeToken>,
    ) -> Result<Joined, HubError> {
        let wait = Duration::from_millis(self.inner.config.resume_wait_ms);
        if since.is_none() || wait.is_zero() {
            return self.join_once(doc, caller, since).await;
        }
        let deadline = tokio::time::Instant::now() + wait;
        // Subscribed before the first attempt, so a change in between is not missed.
        let mut feed = self.changes();
        loop {
            let joined = self
                .join_once(doc.clone(), caller.clone(), since.clone())
                .await?;
            let behind = matches!(
                joined.start,
                JoinStart::Snapshot {
                    resume_refused: Some("unknown_heads"),
                    ..
                }
            );
            if !behind || tokio::time::Instant::now() >= deadline {
                return Ok(joined);
            }
            // Wait for this document to change (or the deadline), then try again.
            loop {
                match tokio::time::timeout_at(deadline, feed.recv()).await {
                    Ok(Ok(change)) if change.doc != doc => continue,
                    Ok(Ok(_)) | Ok(Err(broadcast::error::RecvError::Lagged(_))) | Err(_) => break,
                    Ok(Err(broadcast::error::RecvError::Closed)) => return Ok(joined),
                }
            }
        }
    }

    async fn join_once(
        &self,
        doc: DocId,
        caller: Caller,
        since: Option<ResumeToken>,
    ) -> Result<Joined, HubError> {
        let (reply, rx) = oneshot::channel();
        let doc_id = doc.clone();
        let owner = charged(&caller);
        let job: doc::ReadFn = Box::new(move |replica: doc::ReadOn<'_>, inner: &Arc<Inner>| {
            let result =
                replica.and_then(|replica| doc::join(replica, inner, &doc_id, &caller, since));
            let _ = reply.send(result);
        });
        self.send(&doc, owner, Msg::Read(job))?;
        rx.await.map_err(|_| HubError::ShuttingDown)?
    }

    /// Applies a peer's sync message to `doc`; returns the reply to send back, if any.
    pub async fn receive_sync(
        &self,
        doc: DocId,
        peer: &str,
        message: Vec<u8>,
    ) -> Result<Option<Vec<u8>>, HubError> {
        self.receive_sync_as(doc, peer, message, SyncAccess::ReadWrite)
            .await
    }

    /// [`Hub::receive_sync`] for a peer with `access` to `doc`: with
    /// [`SyncAccess::ReadOnly`] the changes the message carries are not applied (its heads,
    /// needs and bloom filter still are, so the peer keeps receiving this node's changes).
    pub async fn receive_sync_as(
        &self,
        doc: DocId,
        peer: &str,
        message: Vec<u8>,
        access: SyncAccess,
    ) -> Result<Option<Vec<u8>>, HubError> {
        let (reply, rx) = oneshot::channel();
        self.send(
            &doc,
            None,
            Msg::Sync {
                peer: peer.to_owned(),
                message,
                read_only: access == SyncAccess::ReadOnly,
                reply,
            },
        )?;
        rx.await.map_err(|_| HubError::ShuttingDown)?
    }

    /// The next sync message for `peer` about `doc`, if there is anything to say.
    pub async fn generate_sync(&self, doc: DocId, peer: &str) -> Result<Option<Vec<u8>>, HubError> {
        self.generate_sync_as(doc, peer, SyncAccess::ReadWrite)
            .await
    }

    /// [`Hub::generate_sync`] for a peer with `access` to `doc` (a read-only peer is told so
    /// and asked for nothing).
    pub async fn generate_sync_as(
        &self,
        doc: DocId,
        peer: &str,
        access: SyncAccess,
    ) -> Result<Option<Vec<u8>>, HubError> {
        let (reply, rx) = oneshot::channel();
        let peer = peer.to_owned();
        let read_only = access == SyncAccess::ReadOnly;
        self.send(
            &doc,
            None,
            Msg::GenerateSync {
                peer,
                read_only,
                reply,
            },
        )?;
        rx.await.map_err(|_| HubError::ShuttingDown)?
    }

    /// Every document changed on this node (by a command or a peer), after it is durable.
    /// A receiver that lags should fall back to a full heads comparison.
    pub fn changes(&self) -> broadcast::Receiver<Change> {
        self.inner.feed.subscribe()
    }

    /// The heads digest of every document this node stores, sorted by doc id. Built from
    /// memory: no document is loaded.
    pub fn heads_summary(&self) -> Vec<(DocId, [u8; 32])> {
        let mut list: Vec<(DocId, [u8; 32])> = self
            .inner
            .heads
            .lock()
            .map(|h| h.all.iter().map(|(d, h)| (d.clone(), *h)).collect())
            .unwrap_or_default();
        list.sort_unstable();
        list
    }

    /// The heads digests of the first `max` courses this node stores, sorted by id: what the
    /// catalog lists, without a walk over every document.
    pub fn course_heads(&self, max: usize) -> Vec<(DocId, [u8; 32])> {
        self.inner
            .heads
            .lock()
            .map(|h| {
                h.courses
                    .iter()
                    .take(max)
                    .map(|(d, h)| (d.clone(), *h))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The heads digest of `doc`, if this node stores it.
    pub fn doc_heads(&self, doc: &DocId) -> Option<[u8; 32]> {
        self.inner.heads.lock().ok()?.get(doc).copied()
    }

    /// Starts a new conversation with `peer`: every sync state with it drops what it assumed
    /// about messages in flight on the previous connection and keeps only the persisted part
    /// (the heads both sides had in common), so a reconnect neither resends history nor waits
    /// for a reply that will never come.
    pub fn peer_connected(&self, peer: &str) {
        if let Ok(mut epochs) = self.inner.peer_epochs.lock() {
            *epochs.entry(peer.to_owned()).or_insert(0) += 1;
        }
    }

    /// Counters.
    pub fn stats(&self) -> HubStats {
        let c = &self.inner.counters;
        HubStats {
            commands_applied: c.commands_applied.load(Ordering::Relaxed),
            commands_rejected: c.commands_rejected.load(Ordering::Relaxed),
            batches: c.batches.load(Ordering::Relaxed),
            sync_messages: c.sync_messages.load(Ordering::Relaxed),
            docs_loaded: self.loaded_docs(),
            loads: c.loads.load(Ordering::Relaxed),
            evictions: c.evictions.load(Ordering::Relaxed),
            evictions_lru: c.evictions_lru.load(Ordering::Relaxed),
            refused_per_user: c.refused_per_user.load(Ordering::Relaxed),
            refused_full: c.refused_full.load(Ordering::Relaxed),
            compactions: c.compactions.load(Ordering::Relaxed),
        }
    }

    /// How many `Hub` handles exist (this one included). The store closes when the last one
    /// goes, so a node that must release its data directory waits for this to reach 1.
    pub fn handles(&self) -> usize {
        Arc::strong_count(&self.inner)
    }

    /// Documents in memory now.
    pub fn loaded_docs(&self) -> usize {
        self.inner.docs.lock().map(|d| d.len()).unwrap_or(0)
    }

    /// Stops accepting work, lets every writer task finish what is queued, and flushes the
    /// store.
    pub async fn shutdown(&self) -> Result<(), HubError> {
        self.inner.closing.store(true, Ordering::SeqCst);
        // Dropping the senders lets each writer drain its inbox and end.
        if let Ok(mut docs) = self.inner.docs.lock() {
            docs.clear();
        }
        if let Ok(mut alive) = self.inner.alive.lock() {
            alive.take();
        }
        let mut done = self.inner.all_done.lock().await;
        // Ends when every writer task has dropped its `alive` clone.
        while done.recv().await.is_some() {}
        let store = self.inner.store.clone();
        tokio::task::spawn_blocking(move || store.flush())
            .await
            .map_err(|e| HubError::Store(e.to_string()))?
            .map_err(|e| HubError::Store(e.to_string()))
    }

    /// Queues `msg` for `doc`'s writer task, starting it if needed (charged to `owner`, the
    /// user whose request it is, if any). The lookup, the start, the send and any eviction
    /// happen under one lock, and a writer only retires or is evicted under that lock with
    /// nothing queued: so no message is ever sent to a writer that is going away, and there is
    /// never more than one writer per document (two would reuse automerge sequence numbers).
    fn send(&self, doc: &DocId, owner: Option<UserId>, msg: Msg) -> Result<(), HubError> {
        if self.inner.closing.load(Ordering::SeqCst) {
            return Err(HubError::ShuttingDown);
        }
        let mut docs = self
            .inner
            .docs
            .lock()
            .map_err(|_| HubError::Store("hub lock poisoned".into()))?;
        let mut msg = msg;
        for _ in 0..2 {
            // A user's first request to a document charges it to them: make room under their
            // cap first (evicting one of their own idle documents, or refusing them alone).
            let charge = owner.as_ref().filter(|u| !docs.is_charged(doc, u));
            if let Some(user) = charge {
                self.make_room_for_user(&mut docs, user)?;
            }
            let (tx, in_flight) = match docs.touch(doc) {
                Some(w) => (w.tx.clone(), w.in_flight.clone()),
                None => {
                    // No writer: ask the heads index (every stored document, kept with each
                    // durable batch) whether the document exists, so a request naming a random
                    // id costs one lookup and starts nothing.
                    if !msg.may_start(doc) && !self.stored(doc) {
                        return Err(HubError::not_found(doc));
                    }
                    self.make_room(&mut docs)?;
                    let alive = self
                        .inner
                        .alive
                        .lock()
                        .ok()
                        .and_then(|a| a.clone())
                        .ok_or(HubError::ShuttingDown)?;
                    let (tx, rx) = mpsc::channel(self.inner.config.inbox_capacity.max(1));
                    let in_flight = Arc::new(AtomicUsize::new(0));
                    let id = docs.insert(doc.clone(), tx.clone(), in_flight.clone());
                    let span = tracing::info_span!("doc", doc = %doc);
                    let writer = doc::Writer {
                        inner: self.inner.clone(),
                        doc: doc.clone(),
                        id,
                        in_flight: in_flight.clone(),
                    };
                    tokio::spawn(doc::run(writer, rx, alive).instrument(span));
                    (tx, in_flight)
                }
            };
            match tx.try_send(msg) {
                Ok(()) => {
                    in_flight.fetch_add(1, Ordering::SeqCst);
                    if let Some(user) = charge {
                        docs.charge(doc, user);
                    }
                    return Ok(());
                }
                Err(mpsc::error::TrySendError::Full(_)) => {
                    return Err(HubError::Overloaded(doc.to_string()));
                }
                // Only a writer that died abnormally leaves a closed sender in the map.
                Err(mpsc::error::TrySendError::Closed(m)) => {
                    docs.remove(doc, None);
                    msg = m;
                }
            }
        }
        Err(HubError::Store(format!("writer for {doc} keeps failing")))
    }

    /// Keeps `user` under `docs_loaded_per_user_max` before a document is charged to them, by
    /// evicting the least recently used of their documents that is idle and unfollowed.
    fn make_room_for_user(&self, docs: &mut loaded::Loaded, user: &UserId) -> Result<(), HubError> {
        let max = self.inner.config.docs_loaded_per_user_max.max(1);
        let counters = &self.inner.counters;
        let followed = |d: &DocId| self.inner.rooms.has_subscribers(d);
        while docs.held_by(user) >= max {
            if !docs.evict_users(user, followed) {
                counters.refused_per_user.fetch_add(1, Ordering::Relaxed);
                return Err(HubError::TooManyDocsForUser(docs.held_by(user)));
            }
            counters.evictions_lru.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Before a new writer starts: keeps the hub under `docs_loaded_max` by evicting the least
    /// recently used document that is idle and unfollowed.
    fn make_room(&self, docs: &mut loaded::Loaded) -> Result<(), HubError> {
        let counters = &self.inner.counters;
        let followed = |d: &DocId| self.inner.rooms.has_subscribers(d);
        while docs.len() >= self.inner.config.docs_loaded_max.max(1) {
            if !docs.evict_lru(followed) {
                counters.refused_full.fetch_add(1, Ordering::Relaxed);
                return Err(HubError::TooManyDocs(docs.len()));
            }
            counters.evictions_lru.fetch_add(1, Ordering::Relaxed);
        }
        Ok(())
    }
}

impl Hub {
    /// Whether this node stores `doc` (its heads digest is in the index, or it was stored
    /// without one).
    fn stored(&self, doc: &DocId) -> bool {
        // One lock at a time (a writer takes `undigested` before `heads`).
        let indexed = match self.inner.heads.lock() {
            Ok(h) => h.contains_key(doc),
            Err(_) => true,
        };
        indexed
            || match self.inner.undigested.lock() {
                Ok(u) => u.contains(doc),
                Err(_) => true,
            }
    }
}

/// Whether `body` may bring document `doc` into being: `session.create` for a session,
/// `cohort.create` for a cohort, `course.create` for a course, `flag.set` for the flags document, and for an inbox the job runner's `inbox.push` and its owner's
/// `inbox.prefs` (an inbox is keyed by an authenticated user, who may set preferences before
/// any notification; the model lets only the owner or an admin write it, so a caller can
/// create at most their own). Every other command needs the document to exist.
pub fn creates_document(doc: &DocId, body: &CommandBody) -> bool {
    matches!(
        (doc, body),
        (DocId::Session(_), CommandBody::SessionCreate { .. })
            | (DocId::Cohort(_), CommandBody::CohortCreate { .. })
            | (DocId::Course(_), CommandBody::CourseCreate { .. })
            | (DocId::Flags, CommandBody::FlagSet { .. })
            | (
                DocId::Inbox(_),
                CommandBody::InboxPush { .. } | CommandBody::InboxPrefs { .. }
            )
    )
}

/// The user a request's loads are charged to: none for an admin (the node's own job runner
/// and operators act as admins and may touch any number of documents).
fn charged(caller: &Caller) -> Option<UserId> {
    (caller.role != Role::Admin).then(|| caller.user.clone())
}

/// How long a writer waits on an empty inbox before it retires.
fn idle(config: &HubConfig) -> Duration {
    Duration::from_millis(config.doc_idle_ms.max(1))
}
