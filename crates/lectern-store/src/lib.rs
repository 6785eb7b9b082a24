//! Lectern's durable node-local state: automerge document chunks and snapshots, per-peer sync
//! states, and the node's identity, kept in one sled database per node.
//!
//! Everything lives in ONE sled keyspace (the default tree), separated by key prefixes:
//!
//! | key | value |
//! | --- | --- |
//! | `d/{doc}/s` | the document's snapshot (a saved automerge document) |
//! | `d/{doc}/c/` + seq as 8 big-endian bytes | an incremental chunk |
//! | `y/{peer}/{doc}` | the persisted automerge sync state of (peer, doc) |
//! | `h/{doc}` | a 32-byte digest of the document's heads (the mesh's anti-entropy summary) |
//! | `m/node_id`, `m/boot_epoch`, `m/schema_version` | 16 random bytes, u64 BE, u32 BE |
//! | `j/q/{job}`, `j/d/{job}`, `j/x/{job}` | a queued job's record, a finished job's marker (its finish time, u64 BE ms; pruned after a retention), a dead-lettered job's record |
//!
//! Jobs share the keyspace so that a command's document chunk and the jobs it triggers land in
//! ONE atomic batch: a crash can lose neither one without the other.
//!
//! One keyspace rather than one sled tree per kind, because a `sled::Batch` applied with
//! `Db::apply_batch` is atomic only within one tree: a snapshot that replaces chunks, together
//! with the sync states of the same round, must land all at once or not at all, and atomicity
//! across trees would need sled transactions (slower, with retry closures). Big-endian seqs make
//! byte order equal numeric order, so a prefix scan returns chunks in seq order; see
//! the private `keys` module for how doc ids containing `/` stay apart.
//!
//! Writes are [`Batch`]es. [`Store::commit`] applies one and fsyncs; [`Committer::submit`] hands
//! one to a group-commit thread that shares one fsync among every batch queued at the time.
//! The crate is blocking on purpose (sled is): async callers wrap reads in `spawn_blocking` and
//! use the committer's callback to wake a task.
//!
//! Schema versions and the migrations between them (`lectern store migrate`): [`migrate`].
//!
//! Architecture invariant: nothing outside this crate names a sled type. sled 0.34 calls itself
//! beta and announces an on-disk format change, so it must stay replaceable.
//!
//! Architecture invariant: nothing read from disk can panic the process; a value of the wrong
//! shape is a [`StoreError::Corrupt`].

mod batch;
mod commit;
mod error;
mod identity;
mod keys;
pub mod migrate;
mod store;

pub use batch::Batch;
pub use commit::{CommitHook, Committer, ROUND_REQUESTS_MAX};
pub use error::StoreError;
pub use identity::{NodeId, NodeIdentity, ParseNodeIdError};
pub use keys::{CHUNK_SEQ_MAX, ID_LEN_MAX_BYTES};
pub use store::{SCHEMA_VERSION, Store, StoreConfig, StoreStats, StoredDoc};

#[cfg(test)]
mod tests;
