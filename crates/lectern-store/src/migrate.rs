//! Schema migrations: moving a stopped node's store between the schema versions this build
//! knows, up or down, so that a binary can be rolled back across a schema change.
//!
//! The versions (`m/schema_version`):
//!
//! | version | layout |
//! | --- | --- |
//! | 1 | the layout of `lib.rs`, without the cluster's feature-flags document |
//! | 2 | version 1 plus the feature-flags document `flags/cluster` (`d/flags/cluster/…`, its heads digest `h/flags/cluster`, its sync states `y/{peer}/flags/cluster`), which builds of version 1 cannot read |
//!
//! Version 2 is the first change recorded here, and a small one: going up writes only the new
//! version (a version-1 store holds no flags document); going down is possible only without
//! the flags document, which version 1 cannot represent, so [`migrate`] refuses
//! ([`StoreError::MigrationBlocked`], naming the document) unless the caller accepts to discard
//! it ([`MigrateOptions::discard_flags`]; flags are replicated, so the other nodes keep them).
//! Each later version adds a step to [`STEPS`] both ways, or a refusal saying what blocks it.
//!
//! A migration is ONE sled batch (every step's writes and deletes, and the new version) applied
//! and fsynced at once, so a crash leaves either the old version or the new one; running it
//! again for the version the store already has writes nothing (idempotent). It takes the same
//! directory lock as a node, so it refuses a store a running node holds, and it never touches
//! the node id or the boot epoch.

use std::path::Path;

use crate::StoreError;
use crate::keys;
use crate::store::{SCHEMA_VERSION, StoreConfig, lock_dir, open_sled};

/// The oldest schema version this build can migrate to or from.
pub const SCHEMA_VERSION_MIN: u32 = 1;

/// The cluster's feature-flags document, new in version 2.
const FLAGS_DOC: &str = "flags/cluster";

/// What a caller allows a migration to do beyond moving data.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MigrateOptions {
    /// Going below version 2: delete the feature-flags document instead of refusing.
    pub discard_flags: bool,
}

/// What [`migrate`] did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migrated {
    /// The version the store had.
    pub from: u32,
    /// The version it has now.
    pub to: u32,
    /// Keys written or deleted besides the version (0 when `from == to`).
    pub keys_changed: usize,
}

/// The schema version of the store in `path` (which must exist and be a store), read under
/// the directory lock; nothing is written.
pub fn schema_version(path: &Path) -> Result<u32, StoreError> {
    let (_lock, db) = open_existing(path)?;
    read_version(path, &db)
}

/// Moves the stopped node's store in `path` to schema version `to`, one step at a time, as ONE
/// atomic, fsynced batch. See the module docs for what each step does and what blocks one.
pub fn migrate(path: &Path, to: u32, options: MigrateOptions) -> Result<Migrated, StoreError> {
    if !(SCHEMA_VERSION_MIN..=SCHEMA_VERSION).contains(&to) {
        return Err(StoreError::UnknownSchema {
            version: to,
            min: SCHEMA_VERSION_MIN,
            max: SCHEMA_VERSION,
        });
    }
    let (_lock, db) = open_existing(path)?;
    let from = read_version(path, &db)?;
    if from > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            path: path.to_owned(),
            found: from,
            supported: SCHEMA_VERSION,
        });
    }
    let mut batch = sled::Batch::default();
    let mut keys_changed = 0;
    let mut at = from;
    while at != to {
        let next = if to > at { at + 1 } else { at - 1 };
        keys_changed += step(&db, at, next, options, &mut batch)?;
        at = next;
    }
    if from != to {
        batch.insert(keys::META_SCHEMA_VERSION, &to.to_be_bytes());
        db.apply_batch(batch)?;
        db.flush()?;
    }
    Ok(Migrated {
        from,
        to,
        keys_changed,
    })
}

/// One step, `from` → `to` (adjacent versions): its writes go into `batch`; the number of keys.
fn step(
    db: &sled::Db,
    from: u32,
    to: u32,
    options: MigrateOptions,
    batch: &mut sled::Batch,
) -> Result<usize, StoreError> {
    match (from, to) {
        // A version-1 store holds no flags document: nothing moves.
        (1, 2) => Ok(0),
        (2, 1) => {
            let found = flags_keys(db)?;
            if found.is_empty() {
                return Ok(0);
            }
            if !options.discard_flags {
                return Err(StoreError::MigrationBlocked {
                    from,
                    to,
                    reason: format!(
                        "the store holds the feature-flags document {FLAGS_DOC} ({} keys), \
                         which schema version 1 cannot represent; the other nodes keep their \
                         copy, so discarding it here loses nothing the cluster needs: run again \
                         with --discard-flags",
                        found.len()
                    ),
                });
            }
            let n = found.len();
            for key in found {
                batch.remove(key);
            }
            Ok(n)
        }
        _ => Err(StoreError::UnknownSchema {
            version: to,
            min: SCHEMA_VERSION_MIN,
            max: SCHEMA_VERSION,
        }),
    }
}

/// Every key of the flags document: its snapshot and chunks, its heads digest, its sync
/// states with every peer.
fn flags_keys(db: &sled::Db) -> Result<Vec<sled::IVec>, StoreError> {
    let mut found = Vec::new();
    let doc_prefix = [keys::DOC_PREFIX, FLAGS_DOC.as_bytes(), b"/"].concat();
    for entry in db.scan_prefix(&doc_prefix) {
        let (key, _) = entry?;
        // `d/flags/cluster/s` and `d/flags/cluster/c/…`, not a doc named `flags/cluster/x`.
        if matches!(
            keys::parse_doc_key(&key),
            Ok(keys::DocKey::Snapshot(d) | keys::DocKey::Chunk(d)) if d == FLAGS_DOC
        ) {
            found.push(key);
        }
    }
    let heads = keys::heads_key(FLAGS_DOC);
    if db.get(&heads)?.is_some() {
        found.push(heads.into());
    }
    let suffix = [b"/", FLAGS_DOC.as_bytes()].concat();
    for entry in db.scan_prefix(b"y/") {
        let (key, _) = entry?;
        // `y/{peer}/flags/cluster`; peer ids hold no `/`, so the key has exactly one before it.
        if let Some(peer) = key
            .strip_prefix(b"y/".as_slice())
            .and_then(|rest| rest.strip_suffix(suffix.as_slice()))
            && !peer.is_empty()
            && !peer.contains(&b'/')
        {
            found.push(key);
        }
    }
    Ok(found)
}

/// Opens an existing store's database under the directory lock, without booting it (no node
/// id is made, no epoch bumped).
fn open_existing(path: &Path) -> Result<(std::fs::File, sled::Db), StoreError> {
    if !path.join("db").is_file() && !path.join("conf").is_file() {
        return Err(StoreError::NotAStore {
            path: path.to_owned(),
        });
    }
    let lock = lock_dir(path)?;
    let db = open_sled(path, &StoreConfig::default())?;
    Ok((lock, db))
}

fn read_version(path: &Path, db: &sled::Db) -> Result<u32, StoreError> {
    let value = db
        .get(keys::META_SCHEMA_VERSION)?
        .ok_or_else(|| StoreError::NotAStore {
            path: path.to_owned(),
        })?;
    let bytes: [u8; 4] = value.as_ref().try_into().map_err(|_| {
        keys::corrupt_key(
            keys::META_SCHEMA_VERSION,
            &format!("expected 4 bytes, found {}", value.len()),
        )
    })?;
    Ok(u32::from_be_bytes(bytes))
}
