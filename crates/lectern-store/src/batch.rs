//! [`Batch`]: a list of writes that the store applies all together or not at all.
//!
//! A batch is built without touching the database; [`apply`] turns it into one `sled::Batch`
//! (scanning for the chunks a snapshot replaces at that moment) and hands it to
//! `Db::apply_batch`, which makes it atomic, also across a crash. Durability is separate: the
//! caller fsyncs afterwards, once per batch ([`crate::Store::commit`]) or once per group of
//! batches ([`crate::Committer`]).

use std::collections::BTreeMap;
use std::fmt;

use crate::StoreError;
use crate::keys;
use crate::store::Shared;

/// Writes to apply atomically: chunk appends, snapshots (which drop the chunks they replace),
/// sync states and job queue changes. Operations take effect in the order they were added.
#[derive(Default)]
pub struct Batch {
    ops: Vec<Op>,
}

impl Batch {
    /// An empty batch.
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Stores `bytes` as chunk `seq` of `doc`, replacing any chunk with the same seq.
    ///
    /// `seq` must be at most [`crate::CHUNK_SEQ_MAX`]; otherwise applying the batch fails.
    pub fn append_chunk(&mut self, doc: &str, seq: u64, bytes: Vec<u8>) {
        self.ops.push(Op::AppendChunk {
            doc: doc.to_owned(),
            seq,
            bytes,
        });
    }

    /// Stores `bytes` as the snapshot of `doc` and removes every chunk of `doc` with
    /// `seq < chunks_below`, including chunks appended earlier in this batch.
    ///
    /// The chunks to remove are looked up when the batch is applied, so a snapshot covers
    /// exactly what was on disk below `chunks_below` at that moment.
    pub fn put_snapshot(&mut self, doc: &str, bytes: Vec<u8>, chunks_below: u64) {
        self.ops.push(Op::PutSnapshot {
            doc: doc.to_owned(),
            bytes,
            chunks_below,
        });
    }

    /// Stores the automerge sync state `bytes` of (`peer`, `doc`).
    ///
    /// `peer` must not contain `/`; otherwise applying the batch fails.
    pub fn put_sync_state(&mut self, peer: &str, doc: &str, bytes: Vec<u8>) {
        self.ops.push(Op::PutSyncState {
            peer: peer.to_owned(),
            doc: doc.to_owned(),
            bytes,
        });
    }

    /// Stores `digest`, a summary of `doc`'s current heads, for the mesh's anti-entropy: a peer
    /// compares digests to find the documents that differ without loading any of them.
    pub fn put_heads(&mut self, doc: &str, digest: [u8; 32]) {
        self.ops.push(Op::PutHeads {
            doc: doc.to_owned(),
            digest,
        });
    }

    /// Queues job `id` with the record `bytes`, unless a job with this id is already queued,
    /// finished or dead-lettered: enqueueing is idempotent by job id, so a trigger replayed
    /// after a crash never runs a job twice.
    pub fn enqueue_job(&mut self, id: &str, bytes: Vec<u8>) {
        self.ops.push(Op::EnqueueJob {
            id: id.to_owned(),
            bytes,
        });
    }

    /// Replaces the record of queued job `id` (its attempts and next run time after a failure).
    /// Does nothing if the job is no longer queued.
    pub fn update_job(&mut self, id: &str, bytes: Vec<u8>) {
        self.ops.push(Op::UpdateJob {
            id: id.to_owned(),
            bytes,
        });
    }

    /// Removes job `id` from the queue and records it as finished at `finished_at_ms` (Unix
    /// ms), so that it is never enqueued or run again while the marker is kept (see
    /// [`crate::Store::prune_job_markers`]).
    pub fn complete_job(&mut self, id: &str, finished_at_ms: u64) {
        self.ops.push(Op::CompleteJob {
            id: id.to_owned(),
            finished_at_ms,
        });
    }

    /// Removes job `id` from the queue and keeps `bytes` (the record with its last error) among
    /// the dead-lettered jobs.
    pub fn dead_letter_job(&mut self, id: &str, bytes: Vec<u8>) {
        self.ops.push(Op::DeadLetterJob {
            id: id.to_owned(),
            bytes,
        });
    }

    /// Moves dead-lettered job `id` back into the queue with the record `bytes` (an operator's
    /// re-drive, `lectern jobs retry`). Does nothing unless the job is dead-lettered, so a
    /// retry racing another retry, or a job that finished meanwhile, queues nothing twice.
    pub fn requeue_dead_job(&mut self, id: &str, bytes: Vec<u8>) {
        self.ops.push(Op::RequeueDeadJob {
            id: id.to_owned(),
            bytes,
        });
    }

    /// Forgets job `id`, queued or dead-lettered, and records it as finished at `dropped_at_ms`
    /// (an operator's `lectern jobs drop`): the marker keeps a replayed trigger from queuing it
    /// again, exactly as for a job that ran.
    pub fn drop_job(&mut self, id: &str, dropped_at_ms: u64) {
        self.ops.push(Op::DropJob {
            id: id.to_owned(),
            dropped_at_ms,
        });
    }

    /// True when the batch holds no operation.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// The number of operations in the batch.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
}

impl fmt::Debug for Batch {
    // The payloads can be megabytes; show what the batch does, not its bytes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut list = f.debug_list();
        for op in &self.ops {
            match op {
                Op::AppendChunk { doc, seq, bytes } => list.entry(&format_args!(
                    "append_chunk({doc:?}, {seq}, {} B)",
                    bytes.len()
                )),
                Op::PutSnapshot {
                    doc,
                    bytes,
                    chunks_below,
                } => list.entry(&format_args!(
                    "put_snapshot({doc:?}, {} B, below {chunks_below})",
                    bytes.len()
                )),
                Op::PutSyncState { peer, doc, bytes } => list.entry(&format_args!(
                    "put_sync_state({peer:?}, {doc:?}, {} B)",
                    bytes.len()
                )),
                Op::PutHeads { doc, .. } => list.entry(&format_args!("put_heads({doc:?})")),
                Op::EnqueueJob { id, bytes } => {
                    list.entry(&format_args!("enqueue_job({id:?}, {} B)", bytes.len()))
                }
                Op::UpdateJob { id, bytes } => {
                    list.entry(&format_args!("update_job({id:?}, {} B)", bytes.len()))
                }
                Op::CompleteJob { id, .. } => list.entry(&format_args!("complete_job({id:?})")),
                Op::DeadLetterJob { id, bytes } => {
                    list.entry(&format_args!("dead_letter_job({id:?}, {} B)", bytes.len()))
                }
                Op::RequeueDeadJob { id, bytes } => {
                    list.entry(&format_args!("requeue_dead_job({id:?}, {} B)", bytes.len()))
                }
                Op::DropJob { id, .. } => list.entry(&format_args!("drop_job({id:?})")),
            };
        }
        list.finish()
    }
}

enum Op {
    AppendChunk {
        doc: String,
        seq: u64,
        bytes: Vec<u8>,
    },
    PutSnapshot {
        doc: String,
        bytes: Vec<u8>,
        chunks_below: u64,
    },
    PutSyncState {
        peer: String,
        doc: String,
        bytes: Vec<u8>,
    },
    PutHeads {
        doc: String,
        digest: [u8; 32],
    },
    EnqueueJob {
        id: String,
        bytes: Vec<u8>,
    },
    UpdateJob {
        id: String,
        bytes: Vec<u8>,
    },
    CompleteJob {
        id: String,
        finished_at_ms: u64,
    },
    DeadLetterJob {
        id: String,
        bytes: Vec<u8>,
    },
    RequeueDeadJob {
        id: String,
        bytes: Vec<u8>,
    },
    DropJob {
        id: String,
        dropped_at_ms: u64,
    },
}

/// Applies `batch` atomically (without fsync) and counts it in the store's stats.
///
/// Every id is validated before anything is written, so an invalid batch changes nothing.
pub(crate) fn apply(shared: &Shared, batch: Batch) -> Result<(), StoreError> {
    for op in &batch.ops {
        match op {
            Op::AppendChunk { doc, seq, .. } => {
                keys::validate_doc(doc)?;
                keys::validate_seq(doc, *seq)?;
            }
            Op::PutSnapshot { doc, .. } | Op::PutHeads { doc, .. } => keys::validate_doc(doc)?,
            Op::PutSyncState { peer, doc, .. } => {
                keys::validate_peer(peer)?;
                keys::validate_doc(doc)?;
            }
            Op::EnqueueJob { id, .. }
            | Op::UpdateJob { id, .. }
            | Op::CompleteJob { id, .. }
            | Op::DeadLetterJob { id, .. }
            | Op::RequeueDeadJob { id, .. }
            | Op::DropJob { id, .. } => keys::validate_job(id)?,
        }
    }

    // Held from the chunk scan until the batch is in the tree, so that no other batch can add a
    // chunk below `chunks_below` in between, and so that `load_doc` never sees half of it.
    let _writing = shared.write_lock();

    // Ordered, so that a snapshot can also drop the chunks appended earlier in this batch.
    let mut writes: BTreeMap<Vec<u8>, Option<Vec<u8>>> = BTreeMap::new();
    for op in batch.ops {
        match op {
            Op::AppendChunk { doc, seq, bytes } => {
                writes.insert(keys::chunk_key(&doc, seq), Some(bytes));
            }
            Op::PutSnapshot {
                doc,
                bytes,
                chunks_below,
            } => {
                let range = keys::chunk_range(&doc, chunks_below);
                for entry in shared.db.range(range.clone()) {
                    let (key, _) = entry?;
                    writes.insert(key.to_vec(), None);
                }
                for value in writes.range_mut(range).map(|(_, value)| value) {
                    *value = None;
                }
                writes.insert(keys::snapshot_key(&doc), Some(bytes));
            }
            Op::PutSyncState { peer, doc, bytes } => {
                writes.insert(keys::sync_state_key(&peer, &doc), Some(bytes));
            }
            Op::PutHeads { doc, digest } => {
                writes.insert(keys::heads_key(&doc), Some(digest.to_vec()));
            }
            Op::EnqueueJob { id, bytes } => {
                let queued = keys::job_key(keys::JOB_QUEUE_PREFIX, &id);
                let known = |key: Vec<u8>| -> Result<bool, StoreError> {
                    Ok(match writes.get(&key) {
                        Some(value) => value.is_some(),
                        None => shared.db.contains_key(&key)?,
                    })
                };
                if !known(queued.clone())?
                    && !known(keys::job_key(keys::JOB_DONE_PREFIX, &id))?
                    && !known(keys::job_key(keys::JOB_DEAD_PREFIX, &id))?
                {
                    writes.insert(queued, Some(bytes));
                }
            }
            Op::UpdateJob { id, bytes } => {
                let queued = keys::job_key(keys::JOB_QUEUE_PREFIX, &id);
                let present = match writes.get(&queued) {
                    Some(value) => value.is_some(),
                    None => shared.db.contains_key(&queued)?,
                };
                if present {
                    writes.insert(queued, Some(bytes));
                }
            }
            Op::CompleteJob { id, finished_at_ms } => {
                writes.insert(keys::job_key(keys::JOB_QUEUE_PREFIX, &id), None);
                writes.insert(
                    keys::job_key(keys::JOB_DONE_PREFIX, &id),
                    Some(finished_at_ms.to_be_bytes().to_vec()),
                );
            }
            Op::DeadLetterJob { id, bytes } => {
                writes.insert(keys::job_key(keys::JOB_QUEUE_PREFIX, &id), None);
                writes.insert(keys::job_key(keys::JOB_DEAD_PREFIX, &id), Some(bytes));
            }
            Op::RequeueDeadJob { id, bytes } => {
                let dead = keys::job_key(keys::JOB_DEAD_PREFIX, &id);
                let present = match writes.get(&dead) {
                    Some(value) => value.is_some(),
                    None => shared.db.contains_key(&dead)?,
                };
                if present {
                    writes.insert(dead, None);
                    writes.insert(keys::job_key(keys::JOB_QUEUE_PREFIX, &id), Some(bytes));
                }
            }
            Op::DropJob { id, dropped_at_ms } => {
                writes.insert(keys::job_key(keys::JOB_QUEUE_PREFIX, &id), None);
                writes.insert(keys::job_key(keys::JOB_DEAD_PREFIX, &id), None);
                writes.insert(
                    keys::job_key(keys::JOB_DONE_PREFIX, &id),
                    Some(dropped_at_ms.to_be_bytes().to_vec()),
                );
            }
        }
    }

    let mut sled_batch = sled::Batch::default();
    for (key, value) in writes {
        match value {
            Some(value) => sled_batch.insert(key, value),
            None => sled_batch.remove(key),
        }
    }
    shared.db.apply_batch(sled_batch)?;
    shared.count_commit();
    Ok(())
}
