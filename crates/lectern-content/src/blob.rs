//! The blob store: immutable, content-addressed files on the node's disk, beside the store.
//!
//! A blob is named by the SHA-256 of its bytes, so it can never be overwritten with other
//! content: publishing a new lesson version is a new blob. Layout under the store's directory:
//!
//! ```text
//! {dir}/{hh}/{hash}        the bytes (hh = the hash's first two hex digits)
//! {dir}/{hh}/{hash}.meta   JSON: content type, size, and the SHA-256 of each compressed variant
//! {dir}/{hh}/{hash}.gz     gzip of the bytes, for compressible types, when it saves space
//! {dir}/{hh}/{hash}.br     brotli of the bytes, likewise
//! {dir}/tmp/               files being written
//! {dir}/corrupt/           blobs that failed their hash check, kept for a human to look at
//! ```
//!
//! Every file is written to `tmp/`, fsynced and renamed into place, and the directory is
//! fsynced, so a crash leaves either the whole file or nothing. The bytes are renamed last: a
//! blob exists exactly when its bytes file does, and its metadata and variants are already
//! there by then.
//!
//! Every read from disk is verified: the bytes against their name, each variant against the
//! digest in the metadata. A blob that fails is moved to `corrupt/` and reads as absent (so a
//! caller fetches it again, from a peer). Verified blobs are kept in a memory cache bounded in
//! bytes (`cache_max_bytes`), so hot lesson assets are hashed once, not once per request.
//!
//! Blocking IO on purpose (like `lectern-store`): async callers use `spawn_blocking`.

use std::collections::HashMap;
use std::fmt;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// Largest blob accepted, in bytes, unless configured otherwise (a short lecture video).
pub const BLOB_MAX_BYTES_DEFAULT: u64 = 64 * 1024 * 1024;

/// Verified blobs kept in memory, in bytes, unless configured otherwise.
pub const CACHE_MAX_BYTES_DEFAULT: u64 = 256 * 1024 * 1024;

/// A variant is kept only when it is at most this share of the original (in percent): a
/// compressed copy that saves little costs disk and a second cache entry for nothing.
const VARIANT_KEEP_PERCENT: u64 = 90;

/// Longest content type accepted, in bytes.
const CONTENT_TYPE_LEN_MAX: usize = 127;

/// A blob's name: the SHA-256 of its bytes.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlobHash([u8; 32]);

impl BlobHash {
    /// The hash of `bytes`.
    pub fn of(bytes: &[u8]) -> BlobHash {
        BlobHash(Sha256::digest(bytes).into())
    }

    /// The raw digest.
    pub fn as_bytes(&self) -> &[u8; 32] {
        &self.0
    }

    /// The name made of a raw digest (what a peer asks for).
    pub fn from_bytes(digest: [u8; 32]) -> BlobHash {
        BlobHash(digest)
    }
}

impl fmt::Display for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for BlobHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BlobHash({self})")
    }
}

/// A string that is not 64 lowercase hex digits.
#[derive(Debug, thiserror::Error)]
#[error("a blob hash is 64 lowercase hex digits")]
pub struct BadBlobHash;

impl FromStr for BlobHash {
    type Err = BadBlobHash;

    fn from_str(s: &str) -> Result<BlobHash, BadBlobHash> {
        let s = s.as_bytes();
        if s.len() != 64 {
            return Err(BadBlobHash);
        }
        let mut out = [0u8; 32];
        for (i, pair) in s.chunks_exact(2).enumerate() {
            out[i] = (hex_digit(pair[0])? << 4) | hex_digit(pair[1])?;
        }
        Ok(BlobHash(out))
    }
}

fn hex_digit(c: u8) -> Result<u8, BadBlobHash> {
    match c {
        b'0'..=b'9' => Ok(c - b'0'),
        b'a'..=b'f' => Ok(c - b'a' + 10),
        _ => Err(BadBlobHash),
    }
}

/// What can go wrong storing or reading a blob.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    /// The blob is larger than `blob_max_bytes`.
    #[error("the blob is {size} bytes; at most {max} are allowed")]
    TooLarge {
        /// Its size.
        size: u64,
        /// The limit.
        max: u64,
    },
    /// The content type is not a `type/subtype` token pair.
    #[error("{0:?} is not a content type (type/subtype)")]
    BadContentType(String),
    /// Bytes offered under a hash they do not have (a peer's transfer, an upload).
    #[error("the bytes hash to {actual}, not {expected}")]
    HashMismatch {
        /// The name they were offered under.
        expected: BlobHash,
        /// What they hash to.
        actual: BlobHash,
    },
    /// The disk failed.
    #[error("blob store IO: {0}")]
    Io(#[from] io::Error),
}

/// A stored blob, verified, with its compressed variants.
#[derive(Debug)]
pub struct Blob {
    /// Its name.
    pub hash: BlobHash,
    /// The content type it was stored with.
    pub content_type: String,
    /// The bytes.
    pub body: Bytes,
    /// The gzip variant, if the type is compressible and it saved space.
    pub gzip: Option<Bytes>,
    /// The brotli variant, likewise.
    pub br: Option<Bytes>,
}

impl Blob {
    fn cost(&self) -> u64 {
        let len = |b: &Option<Bytes>| b.as_ref().map_or(0, |b| b.len() as u64);
        self.body.len() as u64 + len(&self.gzip) + len(&self.br)
    }
}

/// Limits of a [`BlobStore`].
#[derive(Debug, Clone, Copy)]
pub struct BlobLimits {
    /// Largest blob accepted, in bytes.
    pub blob_max_bytes: u64,
    /// Verified blobs kept in memory, in bytes.
    pub cache_max_bytes: u64,
}

impl Default for BlobLimits {
    fn default() -> Self {
        BlobLimits {
            blob_max_bytes: BLOB_MAX_BYTES_DEFAULT,
            cache_max_bytes: CACHE_MAX_BYTES_DEFAULT,
        }
    }
}

/// Counters of a [`BlobStore`], for `/metrics`.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct BlobStats {
    /// Reads answered from the memory cache.
    pub cache_hits: u64,
    /// Reads that went to disk (and were verified there).
    pub disk_reads: u64,
    /// Blobs that failed verification and were moved aside.
    pub corrupt: u64,
    /// Conditional requests answered `304 Not Modified` (the client's copy is current; no
    /// read at all), counted by the HTTP routes through [`BlobStore::count_not_modified`].
    pub not_modified: u64,
    /// Blobs brought from peers (on a first request or by a prefetch), verified and stored.
    pub pulled: u64,
    /// Pulls no peer could answer.
    pub pull_failures: u64,
}

/// The metadata file beside a blob.
#[derive(Debug, Serialize, Deserialize)]
struct Meta {
    #[serde(rename = "type")]
    content_type: String,
    size: u64,
    /// Hex SHA-256 of the gzip variant, if stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gzip: Option<String>,
    /// Hex SHA-256 of the brotli variant, if stored.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    br: Option<String>,
}

/// Content-addressed blobs in one directory. Cheap to share (`Arc`); every method blocks.
#[derive(Debug)]
pub struct BlobStore {
    dir: PathBuf,
    limits: BlobLimits,
    cache: Mutex<Cache>,
    /// Blobs brought from peers (see [`crate::pull`]).
    pub(crate) pull: crate::pull::Pull,
}

impl BlobStore {
    /// Opens (creating) the store in `dir` (mode 0700), clearing files a crash left half
    /// written.
    pub fn open(dir: &Path, limits: BlobLimits) -> Result<BlobStore, BlobError> {
        create_private_dir(dir)?;
        let tmp = dir.join("tmp");
        if tmp.exists() {
            fs::remove_dir_all(&tmp)?;
        }
        create_private_dir(&tmp)?;
        Ok(BlobStore {
            dir: dir.to_path_buf(),
            limits,
            cache: Mutex::new(Cache::default()),
            pull: crate::pull::Pull::default(),
        })
    }

    /// The store's limits.
    pub fn limits(&self) -> BlobLimits {
        self.limits
    }

    /// Stores `bytes` as `content_type` and returns its hash. Storing bytes the store holds
    /// already changes nothing (the first content type stays).
    pub fn put(&self, bytes: &[u8], content_type: &str) -> Result<BlobHash, BlobError> {
        let hash = BlobHash::of(bytes);
        self.put_as(hash, bytes, content_type)?;
        Ok(hash)
    }

    /// Stores `bytes` under `expected`, refusing bytes that do not hash to it (what a peer or
    /// an uploader says a blob is, checked before anything is written).
    pub fn put_verified(
        &self,
        expected: BlobHash,
        bytes: &[u8],
        content_type: &str,
    ) -> Result<(), BlobError> {
        let actual = BlobHash::of(bytes);
        if actual != expected {
            return Err(BlobError::HashMismatch { expected, actual });
        }
        self.put_as(expected, bytes, content_type)
    }

    /// Whether the blob's bytes are on disk (not verified: [`BlobStore::get`] does that).
    pub fn contains(&self, hash: BlobHash) -> bool {
        self.path(hash, "").is_file()
    }

    /// The blob if the memory cache holds it (verified when it was read), without touching
    /// the disk: what an async caller tries before it hands [`BlobStore::get`] to a blocking
    /// thread.
    pub fn cached(&self, hash: BlobHash) -> Option<Arc<Blob>> {
        self.lock_cache().get(hash)
    }

    /// The blob, verified, or `None` when it is absent or failed verification (then it has
    /// been moved to `corrupt/` and a caller may fetch it again).
    pub fn get(&self, hash: BlobHash) -> Result<Option<Arc<Blob>>, BlobError> {
        if let Some(blob) = self.cached(hash) {
            return Ok(Some(blob));
        }
        let Some(blob) = self.read_verified(hash)? else {
            return Ok(None);
        };
        let blob = Arc::new(blob);
        self.lock_cache()
            .insert(Arc::clone(&blob), self.limits.cache_max_bytes);
        Ok(Some(blob))
    }

    /// Counts a request answered `304 Not Modified` (see [`BlobStats::not_modified`]).
    pub fn count_not_modified(&self) {
        self.lock_cache().stats.not_modified += 1;
    }

    /// The store's counters.
    pub fn stats(&self) -> BlobStats {
        let mut stats = self.lock_cache().stats;
        stats.pulled = self.pull.pulled.load(std::sync::atomic::Ordering::Relaxed);
        stats.pull_failures = self
            .pull
            .pull_failures
            .load(std::sync::atomic::Ordering::Relaxed);
        stats
    }

    fn lock_cache(&self) -> std::sync::MutexGuard<'_, Cache> {
        // A panic while holding this lock leaves a consistent cache (every mutation is one
        // map operation), so a poisoned lock is still usable.
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn put_as(&self, hash: BlobHash, bytes: &[u8], content_type: &str) -> Result<(), BlobError> {
        let size = bytes.len() as u64;
        if size > self.limits.blob_max_bytes {
            return Err(BlobError::TooLarge {
                size,
                max: self.limits.blob_max_bytes,
            });
        }
        let content_type = normalize_content_type(content_type)?;
        if self.contains(hash) {
            return Ok(());
        }
        let shard = self.dir.join(shard_name(hash));
        create_private_dir(&shard)?;
        let mut meta = Meta {
            content_type: content_type.clone(),
            size,
            gzip: None,
            br: None,
        };
        if is_compressible(&content_type) {
            let keep = |v: &[u8]| (v.len() as u64) * 100 <= size * VARIANT_KEEP_PERCENT;
            let gz = gzip(bytes)?;
            if keep(&gz) {
                self.write_atomic(&self.path(hash, ".gz"), &gz)?;
                meta.gzip = Some(BlobHash::of(&gz).to_string());
            }
            let br = brotli_compress(bytes)?;
            if keep(&br) {
                self.write_atomic(&self.path(hash, ".br"), &br)?;
                meta.br = Some(BlobHash::of(&br).to_string());
            }
        }
        let meta = serde_json::to_vec(&meta).map_err(io::Error::other)?;
        self.write_atomic(&self.path(hash, ".meta"), &meta)?;
        // Last: from here on the blob exists.
        self.write_atomic(&self.path(hash, ""), bytes)?;
        fsync_dir(&shard)?;
        Ok(())
    }

    fn read_verified(&self, hash: BlobHash) -> Result<Option<Blob>, BlobError> {
        let body = match fs::read(self.path(hash, "")) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        self.lock_cache().stats.disk_reads += 1;
        if BlobHash::of(&body) != hash {
            self.quarantine(hash, "its bytes do not match its name")?;
            return Ok(None);
        }
        let meta: Option<Meta> = fs::read(self.path(hash, ".meta"))
            .ok()
            .and_then(|m| serde_json::from_slice(&m).ok());
        let Some(meta) = meta.filter(|m| m.size == body.len() as u64) else {
            self.quarantine(hash, "its metadata is missing or does not match")?;
            return Ok(None);
        };
        let gzip = self.read_variant(hash, ".gz", meta.gzip.as_deref())?;
        let br = self.read_variant(hash, ".br", meta.br.as_deref())?;
        let (Some(gzip), Some(br)) = (gzip, br) else {
            self.quarantine(hash, "a compressed variant does not match its digest")?;
            return Ok(None);
        };
        Ok(Some(Blob {
            hash,
            content_type: meta.content_type,
            body: Bytes::from(body),
            gzip,
            br,
        }))
    }

    /// `Some(None)`: no variant; `Some(Some(bytes))`: verified; `None`: it fails its digest.
    #[allow(clippy::option_option)]
    fn read_variant(
        &self,
        hash: BlobHash,
        ext: &str,
        digest: Option<&str>,
    ) -> Result<Option<Option<Bytes>>, BlobError> {
        let Some(digest) = digest else {
            return Ok(Some(None));
        };
        let bytes = match fs::read(self.path(hash, ext)) {
            Ok(b) => b,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        if BlobHash::of(&bytes).to_string() != digest {
            return Ok(None);
        }
        Ok(Some(Some(Bytes::from(bytes))))
    }

    /// Moves every file of `hash` to `corrupt/`, so it reads as absent and can be fetched again.
    fn quarantine(&self, hash: BlobHash, why: &str) -> Result<(), BlobError> {
        tracing::error!(blob = %hash, "blob failed verification ({why}); moved to corrupt/");
        self.lock_cache().stats.corrupt += 1;
        let corrupt = self.dir.join("corrupt");
        create_private_dir(&corrupt)?;
        // The bytes first: once they are gone the blob is absent, whatever else remains.
        for ext in ["", ".meta", ".gz", ".br"] {
            let from = self.path(hash, ext);
            match fs::rename(&from, corrupt.join(format!("{hash}{ext}"))) {
                Ok(()) => {}
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(e.into()),
            }
        }
        Ok(())
    }

    fn path(&self, hash: BlobHash, ext: &str) -> PathBuf {
        self.dir.join(shard_name(hash)).join(format!("{hash}{ext}"))
    }

    /// Writes `bytes` to a fresh file in `tmp/`, fsyncs it and renames it to `to`.
    fn write_atomic(&self, to: &Path, bytes: &[u8]) -> Result<(), BlobError> {
        let tmp = self
            .dir
            .join("tmp")
            .join(format!("{:016x}", rand::random::<u64>()));
        let result = (|| {
            let mut f = private_file(&tmp)?;
            f.write_all(bytes)?;
            f.sync_all()?;
            fs::rename(&tmp, to)
        })();
        if result.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        Ok(result?)
    }
}

/// `type/subtype` (parameters kept, lowercased type), or an error.
fn normalize_content_type(ct: &str) -> Result<String, BlobError> {
    let ct = ct.trim();
    let bad = || BlobError::BadContentType(ct.chars().take(CONTENT_TYPE_LEN_MAX).collect());
    if ct.is_empty() || ct.len() > CONTENT_TYPE_LEN_MAX || !ct.is_ascii() {
        return Err(bad());
    }
    let essence = ct.split(';').next().unwrap_or_default().trim();
    let Some((ty, sub)) = essence.split_once('/') else {
        return Err(bad());
    };
    let token = |s: &str| {
        !s.is_empty()
            && s.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"!#$&-^_.+".contains(&b))
    };
    if !token(ty) || !token(sub) || ct.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad());
    }
    let rest = &ct[essence.len()..];
    Ok(format!("{}{}", essence.to_ascii_lowercase(), rest))
}

/// Whether compressing this type pays: text and the structured text formats. Images, audio,
/// video and PDFs are compressed already.
pub fn is_compressible(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or_default()
        .trim()
        .to_ascii_lowercase();
    essence.starts_with("text/")
        || matches!(
            essence.as_str(),
            "application/json"
                | "application/javascript"
                | "application/xml"
                | "image/svg+xml"
                | "application/wasm"
        )
}

fn gzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    gzip_at(bytes, 9)
}

fn brotli_compress(bytes: &[u8]) -> io::Result<Vec<u8>> {
    // Quality 11 (the best) once at publish time: every later download is smaller.
    brotli_at(bytes, 11)
}

pub(crate) fn gzip_at(bytes: &[u8], level: u32) -> io::Result<Vec<u8>> {
    let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(level.min(9)));
    enc.write_all(bytes)?;
    enc.finish()
}

pub(crate) fn brotli_at(bytes: &[u8], quality: u32) -> io::Result<Vec<u8>> {
    let params = brotli::enc::BrotliEncoderParams {
        quality: quality.min(11) as i32,
        ..Default::default()
    };
    let mut out = Vec::new();
    brotli::BrotliCompress(&mut io::Cursor::new(bytes), &mut out, &params)?;
    Ok(out)
}

fn shard_name(hash: BlobHash) -> String {
    format!("{:02x}", hash.0[0])
}

fn create_private_dir(dir: &Path) -> io::Result<()> {
    use std::os::unix::fs::DirBuilderExt;
    match fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
    {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(e),
    }
}

fn private_file(path: &Path) -> io::Result<File> {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
}

fn fsync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// Verified blobs in memory, least recently used evicted first, bounded in bytes.
#[derive(Debug, Default)]
struct Cache {
    entries: HashMap<BlobHash, (Arc<Blob>, u64)>,
    bytes: u64,
    tick: u64,
    stats: BlobStats,
}

impl Cache {
    fn get(&mut self, hash: BlobHash) -> Option<Arc<Blob>> {
        self.tick += 1;
        let tick = self.tick;
        let (blob, used) = self.entries.get_mut(&hash)?;
        *used = tick;
        self.stats.cache_hits += 1;
        Some(Arc::clone(blob))
    }

    fn insert(&mut self, blob: Arc<Blob>, max_bytes: u64) {
        let cost = blob.cost();
        if cost > max_bytes / 4 {
            // One huge blob would push out the whole hot set: serve it from disk each time.
            return;
        }
        self.tick += 1;
        if let Some((old, _)) = self.entries.insert(blob.hash, (blob, self.tick)) {
            self.bytes -= old.cost();
        }
        self.bytes += cost;
        while self.bytes > max_bytes {
            // O(entries) per eviction; the cache holds at most a few thousand blobs.
            let Some(oldest) = self
                .entries
                .iter()
                .min_by_key(|(_, (_, used))| *used)
                .map(|(h, _)| *h)
            else {
                break;
            };
            if let Some((old, _)) = self.entries.remove(&oldest) {
                self.bytes -= old.cost();
            }
        }
    }
}

/// Decompresses a gzip body (tests and peers checking a variant).
pub fn gunzip(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(bytes).read_to_end(&mut out)?;
    Ok(out)
}

/// Decompresses a brotli body (tests and peers checking a variant).
pub fn unbrotli(bytes: &[u8]) -> io::Result<Vec<u8>> {
    let mut out = Vec::new();
    brotli::BrotliDecompress(&mut io::Cursor::new(bytes), &mut out)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::test_dir::TestDir as Dir;

    fn lesson() -> Vec<u8> {
        "# Lesson\n\nSome text that repeats. "
            .repeat(200)
            .into_bytes()
    }

    #[test]
    fn a_stored_blob_reads_back_verified_with_its_variants() {
        let dir = Dir::new("put");
        let store = BlobStore::open(&dir.0, BlobLimits::default()).unwrap();
        let bytes = lesson();
        let hash = store.put(&bytes, "text/markdown; charset=utf-8").unwrap();
        assert_eq!(hash, BlobHash::of(&bytes));
        assert_eq!(hash.to_string().parse::<BlobHash>().unwrap(), hash);
        let blob = store.get(hash).unwrap().expect("stored");
        assert_eq!(&blob.body[..], &bytes[..]);
        assert_eq!(blob.content_type, "text/markdown; charset=utf-8");
        assert_eq!(gunzip(blob.gzip.as_ref().unwrap()).unwrap(), bytes);
        assert_eq!(unbrotli(blob.br.as_ref().unwrap()).unwrap(), bytes);
        // Nothing half-written is left behind.
        assert_eq!(fs::read_dir(dir.0.join("tmp")).unwrap().count(), 0);
    }

    #[test]
    fn incompressible_types_get_no_variants() {
        let dir = Dir::new("png");
        let store = BlobStore::open(&dir.0, BlobLimits::default()).unwrap();
        let hash = store.put(&lesson(), "image/png").unwrap();
        let blob = store.get(hash).unwrap().unwrap();
        assert!(blob.gzip.is_none() && blob.br.is_none());
    }

    #[test]
    fn a_corrupted_blob_is_refused_and_moved_aside() {
        let dir = Dir::new("corrupt");
        let store = BlobStore::open(&dir.0, BlobLimits::default()).unwrap();
        let hash = store.put(b"the real bytes", "text/plain").unwrap();
        fs::write(store.path(hash, ""), b"other bytes!!!").unwrap();
        // A fresh store, so the read goes to disk.
        let store = BlobStore::open(&dir.0, BlobLimits::default()).unwrap();
        assert!(store.get(hash).unwrap().is_none());
        assert_eq!(store.stats().corrupt, 1);
        assert!(!store.contains(hash));
        assert!(dir.0.join("corrupt").join(hash.to_string()).is_file());
        // It can be stored again (fetched from a peer) and then reads fine.
        store.put(b"the real bytes", "text/plain").unwrap();
        assert!(store.get(hash).unwrap().is_some());
    }

    #[test]
    fn a_corrupted_variant_fails_the_blob() {
        let dir = Dir::new("variant");
        let store = BlobStore::open(&dir.0, BlobLimits::default()).unwrap();
        let hash = store.put(&lesson(), "text/markdown").unwrap();
        fs::write(store.path(hash, ".br"), b"garbage").unwrap();
        let store = BlobStore::open(&dir.0, BlobLimits::default()).unwrap();
        assert!(store.get(hash).unwrap().is_none());
        assert_eq!(store.stats().corrupt, 1);
    }

    #[test]
    fn put_verified_refuses_bytes_under_another_name() {
        let dir = Dir::new("verify");
        let store = BlobStore::open(&dir.0, BlobLimits::default()).unwrap();
        let claimed = BlobHash::of(b"what the peer promised");
        let err = store
            .put_verified(claimed, b"what it sent", "text/plain")
            .unwrap_err();
        assert!(matches!(err, BlobError::HashMismatch { .. }), "{err}");
        assert!(!store.contains(claimed));
    }

    #[test]
    fn limits_and_bad_input_are_refused() {
        let dir = Dir::new("limits");
        let limits = BlobLimits {
            blob_max_bytes: 10,
            ..BlobLimits::default()
        };
        let store = BlobStore::open(&dir.0, limits).unwrap();
        assert!(matches!(
            store.put(&[0; 11], "image/png"),
            Err(BlobError::TooLarge { size: 11, max: 10 })
        ));
        assert!(store.put(&[0; 10], "image/png").is_ok());
        for bad in ["", "png", "text/", "te xt/plain", "text/plain\r\nx: y"] {
            assert!(
                matches!(store.put(b"x", bad), Err(BlobError::BadContentType(_))),
                "{bad:?}"
            );
        }
        for bad in ["", "ab", &"A".repeat(64), &"g".repeat(64), &"a".repeat(65)] {
            assert!(bad.parse::<BlobHash>().is_err(), "{bad:?}");
        }
    }

    #[test]
    fn the_cache_stays_within_its_byte_budget_and_serves_hits() {
        let dir = Dir::new("cache");
        let limits = BlobLimits {
            cache_max_bytes: 4000,
            ..BlobLimits::default()
        };
        let store = BlobStore::open(&dir.0, limits).unwrap();
        let hashes: Vec<BlobHash> = (0..10u8)
            .map(|i| store.put(&[i; 900], "image/png").unwrap())
            .collect();
        for h in &hashes {
            store.get(*h).unwrap().unwrap();
        }
        assert!(store.lock_cache().bytes <= 4000);
        // The newest are cached: reading them again touches no disk.
        let before = store.stats();
        store.get(hashes[9]).unwrap().unwrap();
        let after = store.stats();
        assert_eq!(after.cache_hits, before.cache_hits + 1);
        assert_eq!(after.disk_reads, before.disk_reads);
        // The oldest were evicted: reading one goes to disk.
        store.get(hashes[0]).unwrap().unwrap();
        assert_eq!(store.stats().disk_reads, after.disk_reads + 1);
    }

    #[test]
    fn a_crash_mid_write_leaves_no_blob_and_open_clears_tmp() {
        let dir = Dir::new("crash");
        let store = BlobStore::open(&dir.0, BlobLimits::default()).unwrap();
        // What a crash between the metadata and the bytes leaves: metadata and a temp file.
        let hash = BlobHash::of(b"never finished");
        fs::create_dir_all(dir.0.join(shard_name(hash))).unwrap();
        fs::write(store.path(hash, ".meta"), b"{}").unwrap();
        fs::write(dir.0.join("tmp").join("0123"), b"half").unwrap();
        let store = BlobStore::open(&dir.0, BlobLimits::default()).unwrap();
        assert!(!store.contains(hash));
        assert!(store.get(hash).unwrap().is_none());
        assert_eq!(fs::read_dir(dir.0.join("tmp")).unwrap().count(), 0);
        // Storing it for real then works.
        store.put(b"never finished", "text/plain").unwrap();
        assert!(store.get(hash).unwrap().is_some());
    }
}
