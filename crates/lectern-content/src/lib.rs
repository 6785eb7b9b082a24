//! Lectern's course content: lesson bodies and their assets (images, PDFs, audio, video) as
//! immutable, content-addressed blobs on each node's disk, served over HTTP the way a CDN
//! origin should serve immutable files.
//!
//! * [`blob`]: the blob store (SHA-256 names, atomic fsynced writes, verification on every
//!   read from disk, gzip and brotli variants made once, a byte-bounded memory cache).
//! * [`http`]: `GET /content/{sha256}[.ext]` (immutable caching, `ETag`, `304`, `Range`/`206`,
//!   content negotiation, `nosniff`).
//! * [`markdown`]: lesson Markdown to sanitized HTML (pulldown-cmark, then ammonia), asset
//!   URLs resolved to their blobs.
//! * [`pull`]: blobs this node lacks, brought from its peers on a first request or ahead of
//!   time, only those its courses name.
//! * [`package`]: a folder of lessons and assets with a `course.toml`, read and checked whole
//!   into the blobs to publish.
//!
//! Nothing here knows documents or the hub: a course document references blobs by hash, and
//! whoever publishes a lesson stores its blobs first.

pub mod blob;
pub mod http;
pub mod markdown;
pub mod package;
pub mod pull;
#[cfg(test)]
mod test_dir;

pub use blob::{Blob, BlobError, BlobHash, BlobLimits, BlobStats, BlobStore};
pub use http::{Encoding, choose_encoding, routes};
pub use package::{Package, PackageError};
pub use pull::{BlobPeers, FetchFuture, PeerBlob, PrefetchReport};
