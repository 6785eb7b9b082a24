//! The one error type of the store, [`StoreError`].
//!
//! Callers branch on the case (a locked directory or a newer schema stops a node at start-up
//! with a message for the operator; corruption means a human must look), so it is a `thiserror`
//! enum rather than an opaque error. sled's own error stays inside [`StoreError::Sled`] so that
//! no other crate needs to name a sled type.

use std::path::PathBuf;

/// Everything that can go wrong in the store.
#[derive(thiserror::Error, Debug)]
#[non_exhaustive]
pub enum StoreError {
    /// sled reported an error (I/O failure, on-disk corruption detected by sled, …).
    #[error("the sled database failed: {0}")]
    Sled(#[from] sled::Error),

    /// A value or key read from disk does not have the shape this crate writes.
    #[error("the stored entry at key {key} is corrupt: {reason}")]
    Corrupt {
        /// The key, printable ASCII kept and other bytes escaped.
        key: String,
        /// What is wrong with it.
        reason: String,
    },

    /// Another process, or another open `Store` in this process, holds the directory.
    #[error(
        "the store at {} is already open in another process or in this one; \
         stop the other lectern node or choose another data directory",
        path.display()
    )]
    Locked {
        /// The store directory.
        path: PathBuf,
    },

    /// The directory was written by a newer build of lectern.
    #[error(
        "the store at {} has schema version {found}, but this build supports only up to \
         version {supported}; run a newer lectern build, or, to roll back, migrate it down with \
         the newer build's `lectern store migrate --data-dir {} --to {supported}`",
        path.display(),
        path.display()
    )]
    NewerSchema {
        /// The store directory.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The newest version this build can read.
        supported: u32,
    },

    /// The directory was written at an older schema version: a node does not migrate on its
    /// own (a rollback must stay possible), the operator runs the migration.
    #[error(
        "the store at {} has schema version {found}, older than this build's {supported}; \
         with the node stopped, run `lectern store migrate --data-dir {} --to {supported}`",
        path.display(),
        path.display()
    )]
    OlderSchema {
        /// The store directory.
        path: PathBuf,
        /// The version found on disk.
        found: u32,
        /// The version this build opens.
        supported: u32,
    },

    /// A migration to a version this build does not know.
    #[error("schema version {version} is unknown to this build, which knows {min} to {max}")]
    UnknownSchema {
        /// The version asked for.
        version: u32,
        /// The oldest version this build migrates to.
        min: u32,
        /// The newest (its own).
        max: u32,
    },

    /// A migration step would lose data the target version cannot represent.
    #[error("cannot migrate from schema version {from} to {to}: {reason}")]
    MigrationBlocked {
        /// The step's starting version.
        from: u32,
        /// The step's target version.
        to: u32,
        /// What blocks it, and what to do.
        reason: String,
    },

    /// A directory with no lectern store in it.
    #[error("{} holds no lectern store (no sled database with a schema version)", path.display())]
    NotAStore {
        /// The directory.
        path: PathBuf,
    },

    /// A file-system operation outside sled failed (creating or locking the directory).
    #[error("could not {action}: {source}")]
    Io {
        /// What was being attempted, as a verb phrase ("create directory /x").
        action: String,
        /// The underlying error.
        source: std::io::Error,
    },

    /// A doc or peer id cannot be stored (empty, too long, contains NUL, or a peer id with `/`).
    #[error("the {kind} id {id:?} cannot be stored because {reason}")]
    InvalidId {
        /// `"doc"` or `"peer"`.
        kind: &'static str,
        /// The offending id.
        id: String,
        /// Why it was refused.
        reason: &'static str,
    },

    /// A chunk sequence number is above [`crate::CHUNK_SEQ_MAX`].
    #[error("chunk sequence number {seq} of doc {doc:?} is above the maximum {max}")]
    ChunkSeqTooLarge {
        /// The doc the chunk belongs to.
        doc: String,
        /// The refused sequence number.
        seq: u64,
        /// [`crate::CHUNK_SEQ_MAX`].
        max: u64,
    },

    /// A [`crate::CommitHook`] failed the batch on purpose (fault injection in tests); the
    /// batch is treated exactly like one whose write or fsync failed.
    #[error("an injected fault failed the commit {stage}")]
    Injected {
        /// Where the fault struck: `"before apply"` or `"before fsync"`.
        stage: &'static str,
    },

    /// The group-commit thread is gone (it could not be started), so the batch was not applied.
    #[error("the store's commit thread is not running, so the batch was not applied")]
    CommitterStopped,
}
