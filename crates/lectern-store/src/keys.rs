//! The key layout of the one sled keyspace, and the validation of the ids that go into it.
//!
//! Everything lives in sled's default tree under short prefixes (`d/` documents, `y/` sync
//! states, `m/` metadata, `j/` jobs), so that a single `sled::Batch` can touch all of it atomically. The
//! functions here are the only place that builds or parses keys; the rest of the crate never
//! formats a key by hand.
//!
//! Doc ids may contain `/`, which makes prefixes ambiguous in general: the snapshot key of doc
//! `a/c/xxxxxx` starts with the chunk prefix `d/a/c/` of doc `a`. The layout stays unambiguous
//! because doc ids never contain NUL and chunk sequence numbers are capped at
//! [`CHUNK_SEQ_MAX`] (`2^56 - 1`): the first of the eight big-endian seq bytes of every chunk
//! key is therefore `0x00`, a byte no doc id can put there. Every parser below checks it.

use crate::StoreError;

/// The largest chunk sequence number a [`crate::Batch`] accepts: `2^56 - 1`.
///
/// Capping the sequence number keeps the first byte of every chunk key's big-endian seq at
/// zero, which is what keeps chunk keys apart from the keys of docs whose ids contain `/c/`.
/// At one chunk per microsecond it lasts more than two thousand years.
pub const CHUNK_SEQ_MAX: u64 = (1 << 56) - 1;

/// The longest doc or peer id the store accepts, in bytes.
pub const ID_LEN_MAX_BYTES: usize = 1024;

/// Metadata key of the 16-byte node id.
pub(crate) const META_NODE_ID: &[u8] = b"m/node_id";
/// Metadata key of the boot epoch (u64, big-endian).
pub(crate) const META_BOOT_EPOCH: &[u8] = b"m/boot_epoch";
/// Metadata key of the schema version (u32, big-endian).
pub(crate) const META_SCHEMA_VERSION: &[u8] = b"m/schema_version";

/// Prefix of every pending job (`j/q/{job}`): the job queue.
pub(crate) const JOB_QUEUE_PREFIX: &[u8] = b"j/q/";
/// Prefix of every finished job's marker (`j/d/{job}`): what makes enqueueing idempotent.
pub(crate) const JOB_DONE_PREFIX: &[u8] = b"j/d/";
/// Prefix of every dead-lettered job (`j/x/{job}`).
pub(crate) const JOB_DEAD_PREFIX: &[u8] = b"j/x/";

/// Prefix of every document key (snapshots and chunks).
pub(crate) const DOC_PREFIX: &[u8] = b"d/";

const SEQ_LEN_BYTES: usize = 8;
const CHUNK_INFIX: &[u8] = b"/c/";
const SNAPSHOT_SUFFIX: &[u8] = b"/s";

/// `d/{doc}/s`
pub(crate) fn snapshot_key(doc: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(DOC_PREFIX.len() + doc.len() + SNAPSHOT_SUFFIX.len());
    key.extend_from_slice(DOC_PREFIX);
    key.extend_from_slice(doc.as_bytes());
    key.extend_from_slice(SNAPSHOT_SUFFIX);
    key
}

/// `d/{doc}/c/`, the prefix shared by every chunk key of `doc`.
pub(crate) fn chunk_prefix(doc: &str) -> Vec<u8> {
    let mut key =
        Vec::with_capacity(DOC_PREFIX.len() + doc.len() + CHUNK_INFIX.len() + SEQ_LEN_BYTES);
    key.extend_from_slice(DOC_PREFIX);
    key.extend_from_slice(doc.as_bytes());
    key.extend_from_slice(CHUNK_INFIX);
    key
}

/// `d/{doc}/c/` + `seq` as 8 big-endian bytes.
///
/// `seq` may be anything up to and including `CHUNK_SEQ_MAX + 1`; the latter is used only as an
/// exclusive upper bound of range scans.
pub(crate) fn chunk_key(doc: &str, seq: u64) -> Vec<u8> {
    let mut key = chunk_prefix(doc);
    key.extend_from_slice(&seq.to_be_bytes());
    key
}

/// The key range that holds exactly the chunks of `doc` with `seq < below`.
pub(crate) fn chunk_range(doc: &str, below: u64) -> std::ops::Range<Vec<u8>> {
    chunk_key(doc, 0)..chunk_key(doc, below.min(CHUNK_SEQ_MAX + 1))
}

/// Parses the seq out of a key found in `chunk_range(doc, _)`, or explains why it is not one.
pub(crate) fn chunk_seq(prefix_len: usize, key: &[u8]) -> Result<u64, StoreError> {
    let seq_bytes: [u8; SEQ_LEN_BYTES] = key
        .get(prefix_len..)
        .and_then(|tail| tail.try_into().ok())
        .ok_or_else(|| corrupt_key(key, "a chunk key must end in exactly 8 sequence bytes"))?;
    let seq = u64::from_be_bytes(seq_bytes);
    if seq > CHUNK_SEQ_MAX {
        return Err(corrupt_key(
            key,
            "chunk sequence number is above CHUNK_SEQ_MAX",
        ));
    }
    Ok(seq)
}

/// `y/{peer}/{doc}`
pub(crate) fn sync_state_key(peer: &str, doc: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(2 + peer.len() + 1 + doc.len());
    key.extend_from_slice(b"y/");
    key.extend_from_slice(peer.as_bytes());
    key.push(b'/');
    key.extend_from_slice(doc.as_bytes());
    key
}

/// Prefix of every heads-digest key.
pub(crate) const HEADS_PREFIX: &[u8] = b"h/";

/// `h/{doc}`
pub(crate) fn heads_key(doc: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(HEADS_PREFIX.len() + doc.len());
    key.extend_from_slice(HEADS_PREFIX);
    key.extend_from_slice(doc.as_bytes());
    key
}

/// `prefix` + `job`: a job's key under one of the three job prefixes.
pub(crate) fn job_key(prefix: &[u8], job: &str) -> Vec<u8> {
    let mut key = Vec::with_capacity(prefix.len() + job.len());
    key.extend_from_slice(prefix);
    key.extend_from_slice(job.as_bytes());
    key
}

/// The job id of a key found under `prefix`.
pub(crate) fn job_id(prefix: &[u8], key: &[u8]) -> Result<String, StoreError> {
    let id = key
        .strip_prefix(prefix)
        .ok_or_else(|| corrupt_key(key, "a job key must start with its prefix"))?;
    String::from_utf8(id.to_vec()).map_err(|_| corrupt_key(key, "the job id is not UTF-8"))
}

/// Checks a job id before it becomes part of a key.
pub(crate) fn validate_job(job: &str) -> Result<(), StoreError> {
    validate_id("job", job, false)
}

/// What a key under [`DOC_PREFIX`] belongs to.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum DocKey<'a> {
    /// `d/{doc}/s`
    Snapshot(&'a str),
    /// `d/{doc}/c/{seq}`
    Chunk(&'a str),
}

/// Classifies a key that starts with [`DOC_PREFIX`]; anything else under `d/` is corruption.
pub(crate) fn parse_doc_key(key: &[u8]) -> Result<DocKey<'_>, StoreError> {
    let body = key
        .strip_prefix(DOC_PREFIX)
        .ok_or_else(|| corrupt_key(key, "a document key must start with d/"))?;
    let doc_bytes = if body.len() >= CHUNK_INFIX.len() + SEQ_LEN_BYTES
        && body[body.len() - SEQ_LEN_BYTES] == 0
        && body[..body.len() - SEQ_LEN_BYTES].ends_with(CHUNK_INFIX)
    {
        // The NUL test above is what separates chunk keys from snapshot keys (module docs).
        let doc = &body[..body.len() - SEQ_LEN_BYTES - CHUNK_INFIX.len()];
        return doc_str(key, doc).map(DocKey::Chunk);
    } else if let Some(doc) = body.strip_suffix(SNAPSHOT_SUFFIX) {
        doc
    } else {
        return Err(corrupt_key(
            key,
            "a document key must end in /s or /c/ and a sequence number",
        ));
    };
    doc_str(key, doc_bytes).map(DocKey::Snapshot)
}

/// The first key after every chunk key of `doc`, skipping no other doc's keys.
///
/// Chunk keys of `doc` all start with `d/{doc}/c/\0`; keys of docs named `{doc}/c/…` continue
/// with a byte ≥ 1, so scanning may resume at `d/{doc}/c/\x01`.
pub(crate) fn after_chunks(doc: &str) -> Vec<u8> {
    let mut key = chunk_prefix(doc);
    key.push(1);
    key
}

/// Checks a doc id before it becomes part of a key.
pub(crate) fn validate_doc(doc: &str) -> Result<(), StoreError> {
    validate_id("doc", doc, false)
}

/// Checks a peer id before it becomes part of a key. Peer ids may not contain `/`, or
/// `(peer a, doc b/c)` and `(peer a/b, doc c)` would share a key.
pub(crate) fn validate_peer(peer: &str) -> Result<(), StoreError> {
    validate_id("peer", peer, true)
}

/// Checks a chunk sequence number before it becomes part of a key.
pub(crate) fn validate_seq(doc: &str, seq: u64) -> Result<(), StoreError> {
    if seq > CHUNK_SEQ_MAX {
        return Err(StoreError::ChunkSeqTooLarge {
            doc: doc.to_owned(),
            seq,
            max: CHUNK_SEQ_MAX,
        });
    }
    Ok(())
}

/// Renders a raw key for an error message: printable ASCII as is, other bytes escaped.
pub(crate) fn display_key(key: &[u8]) -> String {
    key.escape_ascii().to_string()
}

/// A [`StoreError::Corrupt`] for `key`.
pub(crate) fn corrupt_key(key: &[u8], reason: &str) -> StoreError {
    StoreError::Corrupt {
        key: display_key(key),
        reason: reason.to_owned(),
    }
}

fn validate_id(kind: &'static str, id: &str, forbid_slash: bool) -> Result<(), StoreError> {
    let reason = if id.is_empty() {
        "it is empty"
    } else if id.len() > ID_LEN_MAX_BYTES {
        "it is longer than ID_LEN_MAX_BYTES"
    } else if id.contains('\0') {
        "it contains a NUL character"
    } else if forbid_slash && id.contains('/') {
        "it contains '/'"
    } else {
        return Ok(());
    };
    Err(StoreError::InvalidId {
        kind,
        id: id.to_owned(),
        reason,
    })
}

fn doc_str<'a>(key: &[u8], doc: &'a [u8]) -> Result<&'a str, StoreError> {
    let doc = std::str::from_utf8(doc)
        .map_err(|_| corrupt_key(key, "the doc id in the key is not UTF-8"))?;
    if doc.is_empty() || doc.contains('\0') {
        return Err(corrupt_key(
            key,
            "the doc id in the key is empty or contains NUL",
        ));
    }
    Ok(doc)
}
