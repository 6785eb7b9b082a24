//! [`Store`]: opening the database, the node identity, reads, and synchronous commits.
//!
//! A `Store` is a cheap handle (`Arc` inside) to one open sled database in one directory. Opening
//! takes an exclusive lock on the directory, checks the schema version, creates the node id on
//! first use and bumps the boot epoch durably. Reads go straight to sled; writes go through a
//! [`Batch`], either synchronously ([`Store::commit`]) or via the group-commit thread
//! ([`Store::committer`], see [`crate::commit`]).

use std::fmt;
use std::fs::{File, OpenOptions, TryLockError};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, Instant};

use crate::StoreError;
use crate::batch::{self, Batch};
use crate::commit::{CommitHook, CommitThread, Committer, STAGE_BEFORE_APPLY, STAGE_BEFORE_FSYNC};
use crate::identity::{NodeId, NodeIdentity};
use crate::keys::{self, DocKey};

/// The schema version this build writes and opens; `lectern store migrate` moves a store
/// between it and the older versions of `migrate.rs`.
pub const SCHEMA_VERSION: u32 = 2;

/// The name of the lock file inside the store directory.
///
/// sled locks its own `db` file too, but reports a failure only as a generic I/O error; our
/// own lock turns "already open" into [`StoreError::Locked`].
const LOCK_FILE_NAME: &str = "lectern.lock";

/// A handle to the node-local store. Cloning is cheap; all clones share one database.
#[derive(Clone)]
pub struct Store {
    pub(crate) inner: Arc<Inner>,
}

/// Tuning of a [`Store`], with safe defaults.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoreConfig {
    /// The most memory sled's page cache may use. Default: 64 MiB.
    pub cache_capacity_bytes: u64,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            cache_capacity_bytes: 64 * 1024 * 1024,
        }
    }
}

/// Everything stored for one document, ready for `automerge::Automerge::load`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct StoredDoc {
    /// The latest snapshot (a saved document), if one was written.
    pub snapshot: Option<Vec<u8>>,
    /// The incremental chunks not yet folded into the snapshot, in ascending seq order.
    pub chunks: Vec<Vec<u8>>,
    /// One more than the highest stored chunk seq, or 0 when there are no chunks.
    pub next_chunk_seq: u64,
    /// Size of the snapshot in bytes (0 without one).
    pub snapshot_bytes: u64,
    /// Total size of the chunks in bytes.
    pub chunk_bytes: u64,
}

impl StoredDoc {
    /// The snapshot followed by the chunks: the byte string `automerge::Automerge::load`
    /// accepts (it reads concatenated documents and change chunks).
    pub fn concat(&self) -> Vec<u8> {
        let len = self.snapshot.as_ref().map_or(0, Vec::len)
            + self.chunks.iter().map(Vec::len).sum::<usize>();
        let mut bytes = Vec::with_capacity(len);
        if let Some(snapshot) = &self.snapshot {
            bytes.extend_from_slice(snapshot);
        }
        for chunk in &self.chunks {
            bytes.extend_from_slice(chunk);
        }
        bytes
    }
}

/// Counters of the store's write path, for tests, benches and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StoreStats {
    /// Batches applied (by [`Store::commit`] and by the commit thread).
    pub commits: u64,
    /// fsyncs (`db.flush()` calls) issued by the store.
    pub fsyncs: u64,
}

impl Store {
    /// Opens (or creates) the store in directory `path` with [`StoreConfig::default`].
    pub fn open(path: &Path) -> Result<Store, StoreError> {
        Store::open_with(path, StoreConfig::default())
    }

    /// Opens (or creates) the store in directory `path`.
    ///
    /// Creates the node id on first open, then increments the boot epoch and fsyncs it before
    /// returning, so that every process start gets a fresh epoch. Fails with
    /// [`StoreError::Locked`] if the directory is already open, here or in another process, and
    /// with [`StoreError::NewerSchema`] if a newer lectern wrote it.
    pub fn open_with(path: &Path, config: StoreConfig) -> Result<Store, StoreError> {
        // Owner only: the store holds every class's content and the node's secrets beside it
        // (sled's files are made under the umask; the directory keeps others out of them).
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(path)
                .map_err(|source| StoreError::Io {
                    action: format!("create the store directory {}", path.display()),
                    source,
                })?;
            // A directory that already existed (made by hand, or by an older lectern) too.
            use std::os::unix::fs::PermissionsExt;
            if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o700)) {
                tracing::warn!(path = %path.display(), error = %e, "could not make the store directory private");
            }
        }
        let lock_file = lock_dir(path)?;
        let db = open_sled(path, &config)?;
        let identity = boot(path, &db)?;
        tracing::debug!(path = %path.display(), node = %identity.node_id, boot_epoch = identity.boot_epoch, "opened store");

        let shared = Arc::new(Shared {
            db,
            apply_lock: RwLock::new(()),
            commits: AtomicU64::new(0),
            fsyncs: AtomicU64::new(0),
            hook: RwLock::new(None),
        });
        Ok(Store {
            inner: Arc::new(Inner {
                commit_thread: Mutex::new(None),
                shared,
                identity,
                path: path.to_owned(),
                _lock_file: lock_file,
            }),
        })
    }

    /// This process's identity: the node id and the boot epoch of this open.
    pub fn identity(&self) -> NodeIdentity {
        self.inner.identity
    }

    /// The directory the store lives in.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Everything stored for `doc`, or `None` if it has neither a snapshot nor chunks.
    ///
    /// Reads are consistent with batches: a concurrent [`Batch::put_snapshot`] is seen either
    /// entirely or not at all.
    pub fn load_doc(&self, doc: &str) -> Result<Option<StoredDoc>, StoreError> {
        keys::validate_doc(doc)?;
        let shared = &self.inner.shared;
        let _reading = shared.read_lock();

        let snapshot = shared
            .db
            .get(keys::snapshot_key(doc))?
            .map(|bytes| bytes.to_vec());
        let prefix_len = keys::chunk_prefix(doc).len();
        let mut chunks = Vec::new();
        let mut next_chunk_seq = 0;
        for entry in shared.db.range(keys::chunk_range(doc, u64::MAX)) {
            let (key, value) = entry?;
            next_chunk_seq = keys::chunk_seq(prefix_len, &key)? + 1;
            chunks.push(value.to_vec());
        }
        if snapshot.is_none() && chunks.is_empty() {
            return Ok(None);
        }
        Ok(Some(StoredDoc {
            snapshot_bytes: snapshot.as_ref().map_or(0, |s| s.len() as u64),
            chunk_bytes: chunks.iter().map(|c| c.len() as u64).sum(),
            snapshot,
            chunks,
            next_chunk_seq,
        }))
    }

    /// Every doc that has a snapshot or chunks, sorted and without duplicates.
    pub fn doc_ids(&self) -> Result<Vec<String>, StoreError> {
        let db = &self.inner.shared.db;
        let mut docs: Vec<String> = Vec::new();
        let mut cursor = keys::DOC_PREFIX.to_vec();
        // One lookup per doc rather than one step per chunk: after a doc's first chunk key,
        // jump past all of its chunks.
        loop {
            let Some(entry) = db.range(cursor.as_slice()..).next() else {
                break;
            };
            let (key, _) = entry?;
            if !key.starts_with(keys::DOC_PREFIX) {
                break;
            }
            let doc = match keys::parse_doc_key(&key)? {
                DocKey::Snapshot(doc) => {
                    cursor = key.to_vec();
                    cursor.push(0);
                    doc
                }
                DocKey::Chunk(doc) => {
                    cursor = keys::after_chunks(doc);
                    doc
                }
            };
            if docs.last().map(String::as_str) != Some(doc) {
                docs.push(doc.to_owned());
            }
        }
        // Keys sort by bytes, so `a/s` comes after `a/b/s` and a doc can reappear later.
        docs.sort_unstable();
        docs.dedup();
        Ok(docs)
    }

    /// Every document's heads digest (see [`crate::Batch::put_heads`]), sorted by doc id.
    /// A value of the wrong length is corruption.
    pub fn heads_digests(&self) -> Result<Vec<(String, [u8; 32])>, StoreError> {
        let mut out = Vec::new();
        for entry in self.inner.shared.db.scan_prefix(keys::HEADS_PREFIX) {
            let (key, value) = entry?;
            let doc = std::str::from_utf8(&key[keys::HEADS_PREFIX.len()..])
                .map_err(|_| keys::corrupt_key(&key, "the doc id in the key is not UTF-8"))?;
            let digest: [u8; 32] = value
                .as_ref()
                .try_into()
                .map_err(|_| keys::corrupt_key(&key, "a heads digest must be 32 bytes"))?;
            out.push((doc.to_owned(), digest));
        }
        Ok(out)
    }

    /// The persisted automerge sync state of (`peer`, `doc`), if any.
    pub fn sync_state(&self, peer: &str, doc: &str) -> Result<Option<Vec<u8>>, StoreError> {
        keys::validate_peer(peer)?;
        keys::validate_doc(doc)?;
        let value = self.inner.shared.db.get(keys::sync_state_key(peer, doc))?;
        Ok(value.map(|bytes| bytes.to_vec()))
    }

    /// Every queued job as (id, record), in id order: what a job runner resumes after a restart.
    pub fn pending_jobs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.jobs_under(keys::JOB_QUEUE_PREFIX)
    }

    /// Every dead-lettered job as (id, record), in id order.
    pub fn dead_jobs(&self) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        self.jobs_under(keys::JOB_DEAD_PREFIX)
    }

    /// How many finished jobs are remembered (their markers not yet pruned).
    pub fn finished_jobs(&self) -> Result<usize, StoreError> {
        let mut n = 0;
        for entry in self.inner.shared.db.scan_prefix(keys::JOB_DONE_PREFIX) {
            entry?;
            n += 1;
        }
        Ok(n)
    }

    /// Whether job `id` finished (see [`Batch::complete_job`]).
    pub fn job_done(&self, id: &str) -> Result<bool, StoreError> {
        keys::validate_job(id)?;
        let key = keys::job_key(keys::JOB_DONE_PREFIX, id);
        Ok(self.inner.shared.db.contains_key(key)?)
    }

    /// Forgets the markers of jobs that finished before `finished_before_ms` (Unix ms): a
    /// marker only has to outlive every way its job could be enqueued again, and kept forever
    /// they would grow the store by one key per notification. A marker without a time (written
    /// before markers had one) counts as finished at 0. Returns how many were removed. Not
    /// fsynced: a marker that reappears after a crash is only pruned again.
    pub fn prune_job_markers(&self, finished_before_ms: u64) -> Result<usize, StoreError> {
        let db = &self.inner.shared.db;
        let mut batch = sled::Batch::default();
        let mut removed = 0;
        for entry in db.scan_prefix(keys::JOB_DONE_PREFIX) {
            let (key, value) = entry?;
            let finished_at = <[u8; 8]>::try_from(value.as_ref())
                .map(u64::from_be_bytes)
                .unwrap_or(0);
            if finished_at < finished_before_ms {
                batch.remove(key);
                removed += 1;
            }
        }
        if removed > 0 {
            db.apply_batch(batch)?;
        }
        Ok(removed)
    }

    /// Whether job `id` is queued (neither finished nor dead-lettered nor unknown).
    pub fn job_pending(&self, id: &str) -> Result<bool, StoreError> {
        keys::validate_job(id)?;
        let key = keys::job_key(keys::JOB_QUEUE_PREFIX, id);
        Ok(self.inner.shared.db.contains_key(key)?)
    }

    /// The record of queued job `id`, if it is queued.
    pub fn queued_job(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        keys::validate_job(id)?;
        let key = keys::job_key(keys::JOB_QUEUE_PREFIX, id);
        Ok(self.inner.shared.db.get(key)?.map(|v| v.to_vec()))
    }

    /// The record of dead-lettered job `id`, if it is dead-lettered.
    pub fn dead_job(&self, id: &str) -> Result<Option<Vec<u8>>, StoreError> {
        keys::validate_job(id)?;
        let key = keys::job_key(keys::JOB_DEAD_PREFIX, id);
        Ok(self.inner.shared.db.get(key)?.map(|v| v.to_vec()))
    }

    fn jobs_under(&self, prefix: &[u8]) -> Result<Vec<(String, Vec<u8>)>, StoreError> {
        let mut jobs = Vec::new();
        for entry in self.inner.shared.db.scan_prefix(prefix) {
            let (key, value) = entry?;
            jobs.push((keys::job_id(prefix, &key)?, value.to_vec()));
        }
        Ok(jobs)
    }

    /// Applies `batch` atomically, then fsyncs. Blocks for the whole fsync; prefer
    /// [`Store::committer`] where many writers commit at once.
    pub fn commit(&self, batch: Batch) -> Result<(), StoreError> {
        let shared = &self.inner.shared;
        shared.hook_before_apply()?;
        batch::apply(shared, batch)?;
        shared.hook_before_fsync()?;
        Ok(shared.fsync()?)
    }

    /// Installs (or with `None` removes) a fault-injection hook on every commit path of this
    /// store and its committers: [`Store::commit`] and the group-commit thread. Without a hook
    /// (the production case) the commit path is unchanged but for one uncontended read lock.
    pub fn set_commit_hook(&self, hook: Option<Arc<dyn CommitHook>>) {
        *self
            .inner
            .shared
            .hook
            .write()
            .unwrap_or_else(PoisonError::into_inner) = hook;
    }

    /// A handle to this store's group-commit thread, starting the thread on first use.
    pub fn committer(&self) -> Committer {
        Committer::new(self)
    }

    /// The size of the database files in bytes.
    pub fn size_on_disk(&self) -> Result<u64, StoreError> {
        Ok(self.inner.shared.db.size_on_disk()?)
    }

    /// Writes every applied batch to disk and fsyncs.
    pub fn flush(&self) -> Result<(), StoreError> {
        Ok(self.inner.shared.fsync()?)
    }

    /// The write-path counters since this store was opened.
    pub fn stats(&self) -> StoreStats {
        let shared = &self.inner.shared;
        StoreStats {
            commits: shared.commits.load(Ordering::Relaxed),
            fsyncs: shared.fsyncs.load(Ordering::Relaxed),
        }
    }
}

impl fmt::Debug for Store {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Store")
            .field("path", &self.inner.path)
            .field("identity", &self.inner.identity)
            .finish_non_exhaustive()
    }
}

/// The state behind every [`Store`] clone and [`Committer`].
pub(crate) struct Inner {
    /// Declared first: its thread must be gone before the database closes.
    pub(crate) commit_thread: Mutex<Option<CommitThread>>,
    pub(crate) shared: Arc<Shared>,
    identity: NodeIdentity,
    path: PathBuf,
    /// Held, never read: the exclusive lock on the directory lasts as long as this file is open.
    /// Declared after `shared` so that the lock outlives the database.
    _lock_file: File,
}

impl Drop for Inner {
    fn drop(&mut self) {
        let thread = self
            .commit_thread
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(thread) = thread {
            // Every Committer holds an `Arc<Inner>`, so no sender is left once the channel's
            // own sender goes here; the thread finishes its round and exits.
            thread.stop();
        }
    }
}

/// What the commit thread shares with the store: the database and the write-path state.
pub(crate) struct Shared {
    pub(crate) db: sled::Db,
    /// Writers (batch application) exclude readers that need a consistent view of a doc.
    apply_lock: RwLock<()>,
    commits: AtomicU64,
    fsyncs: AtomicU64,
    /// The fault-injection hook, if a test installed one.
    hook: RwLock<Option<Arc<dyn CommitHook>>>,
}

impl Shared {
    /// Serializes batch application against other batches and against `load_doc`.
    pub(crate) fn write_lock(&self) -> RwLockWriteGuard<'_, ()> {
        // The guarded data is `()`, so a panic elsewhere cannot have left it inconsistent.
        self.apply_lock
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn read_lock(&self) -> RwLockReadGuard<'_, ()> {
        self.apply_lock
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn count_commit(&self) {
        self.commits.fetch_add(1, Ordering::Relaxed);
    }

    fn hook(&self) -> Option<Arc<dyn CommitHook>> {
        self.hook
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Asks the hook, if any, whether the next batch may be applied.
    pub(crate) fn hook_before_apply(&self) -> Result<(), StoreError> {
        match self.hook() {
            Some(hook) if !hook.before_apply() => Err(StoreError::Injected {
                stage: STAGE_BEFORE_APPLY,
            }),
            _ => Ok(()),
        }
    }

    /// Asks the hook, if any, whether the round may be fsynced (it may also block here).
    pub(crate) fn hook_before_fsync(&self) -> Result<(), StoreError> {
        match self.hook() {
            Some(hook) if !hook.before_fsync() => Err(StoreError::Injected {
                stage: STAGE_BEFORE_FSYNC,
            }),
            _ => Ok(()),
        }
    }

    /// One `db.flush()`: writes sled's buffers and fsyncs.
    pub(crate) fn fsync(&self) -> sled::Result<()> {
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.db.flush()?;
        Ok(())
    }
}

/// Takes the exclusive lock on the store directory, or explains who has it.
pub(crate) fn lock_dir(path: &Path) -> Result<File, StoreError> {
    let lock_path = path.join(LOCK_FILE_NAME);
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|source| StoreError::Io {
            action: format!("open the lock file {}", lock_path.display()),
            source,
        })?;
    match file.try_lock() {
        Ok(()) => Ok(file),
        Err(TryLockError::WouldBlock) => Err(StoreError::Locked {
            path: path.to_owned(),
        }),
        Err(TryLockError::Error(source)) => Err(StoreError::Io {
            action: format!("lock {}", lock_path.display()),
            source,
        }),
    }
}

/// How long [`open_sled`] waits for sled's own lock once ours is held. Generous: the wait ends
/// as soon as sled's lock is free, and only a starved machine (sled's background thread not
/// scheduled) comes near it; running out means a restart fails with `Locked`.
const SLED_LOCK_WAIT: Duration = Duration::from_secs(15);

/// Opens sled under our lock. A `sled::Db` that was just dropped can keep sled's file lock for a
/// moment, because sled's background pool still holds its file while it finishes a log write or
/// a segment truncation. Holding `lectern.lock` means no other lectern has the directory, so a
/// lock failure here is that tail: retry for [`SLED_LOCK_WAIT`] before reporting it.
pub(crate) fn open_sled(path: &Path, config: &StoreConfig) -> Result<sled::Db, StoreError> {
    let deadline = Instant::now() + SLED_LOCK_WAIT;
    let mut pause = Duration::from_millis(5);
    loop {
        let opened = sled::Config::new()
            .path(path)
            .cache_capacity(config.cache_capacity_bytes)
            .open()
            .map_err(|error| locked_or_sled(path, error));
        match opened {
            Err(StoreError::Locked { .. }) if Instant::now() < deadline => {
                std::thread::sleep(pause);
                pause = (pause * 2).min(Duration::from_millis(100));
            }
            other => return other,
        }
    }
}

/// sled reports its own lock failure as a generic I/O error; recognise it anyway, in case
/// something other than lectern holds sled's lock.
fn locked_or_sled(path: &Path, error: sled::Error) -> StoreError {
    match &error {
        sled::Error::Io(io) if io.to_string().contains("could not acquire lock") => {
            StoreError::Locked {
                path: path.to_owned(),
            }
        }
        _ => StoreError::Sled(error),
    }
}

/// Checks the schema, creates the node id if missing, bumps the boot epoch, and fsyncs.
fn boot(path: &Path, db: &sled::Db) -> Result<NodeIdentity, StoreError> {
    let mut meta = sled::Batch::default();

    match db.get(keys::META_SCHEMA_VERSION)? {
        None => meta.insert(keys::META_SCHEMA_VERSION, &SCHEMA_VERSION.to_be_bytes()),
        Some(value) => {
            let found = u32::from_be_bytes(fixed(keys::META_SCHEMA_VERSION, &value)?);
            if found > SCHEMA_VERSION {
                return Err(StoreError::NewerSchema {
                    path: path.to_owned(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            if found != 0 && found < SCHEMA_VERSION {
                return Err(StoreError::OlderSchema {
                    path: path.to_owned(),
                    found,
                    supported: SCHEMA_VERSION,
                });
            }
            if found == 0 {
                return Err(keys::corrupt_key(
                    keys::META_SCHEMA_VERSION,
                    "schema version 0 was never written by lectern",
                ));
            }
        }
    }

    let node_id = match db.get(keys::META_NODE_ID)? {
        Some(value) => NodeId(fixed(keys::META_NODE_ID, &value)?),
        None => {
            let node_id = NodeId(rand::random());
            meta.insert(keys::META_NODE_ID, &node_id.0);
            node_id
        }
    };

    let previous_epoch = match db.get(keys::META_BOOT_EPOCH)? {
        Some(value) => u64::from_be_bytes(fixed(keys::META_BOOT_EPOCH, &value)?),
        None => 0,
    };
    let boot_epoch = previous_epoch
        .checked_add(1)
        .ok_or_else(|| keys::corrupt_key(keys::META_BOOT_EPOCH, "the boot epoch is at u64::MAX"))?;
    meta.insert(keys::META_BOOT_EPOCH, &boot_epoch.to_be_bytes());

    db.apply_batch(meta)?;
    // The epoch must be durable before anything is written under it (see `identity`).
    db.flush()?;
    Ok(NodeIdentity {
        node_id,
        boot_epoch,
    })
}

/// A fixed-size metadata value, or [`StoreError::Corrupt`] if its length is wrong.
fn fixed<const N: usize>(key: &[u8], value: &[u8]) -> Result<[u8; N], StoreError> {
    value
        .try_into()
        .map_err(|_| keys::corrupt_key(key, &format!("expected {N} bytes, found {}", value.len())))
}
