//! Lectern's regional mesh: nodes replicate their automerge documents to each other over QUIC
//! with mutual TLS.
//!
//! * [`session`]: the sans-IO core of one peer connection (handshake, anti-entropy, coalesced
//!   pushes, ephemeral frames), tested without sockets.
//! * [`digest`]: the hash tree anti-entropy compares, so its bytes follow the differences.
//! * [`blobs`]: content blobs between nodes, each request on a QUIC stream of its own,
//!   verified against its hash.
//! * [`tls`]: the cluster CA, node certificates, and rustls configs that refuse any peer
//!   without a certificate of the cluster CA.
//! * [`driver`]: the thin tokio + quinn layer: one endpoint per node, a dial loop per configured
//!   peer (jittered exponential backoff), one bidirectional stream per connection carrying
//!   length-prefixed [`lectern_wire::PeerFrame`]s, and the hub calls the core asks for.
//!
//! The hub keeps one persisted `automerge::sync::State` per (peer, document), so a reconnect
//! resumes from what the peer already has; the mesh decides only *which* documents to sync and
//! *when*.
//!
//! Architecture invariant: this crate knows QUIC and nothing of HTTP; only `lectern-node` knows
//! both. It never mutates a document itself: every change goes through the hub.

pub mod blobs;
pub mod digest;
pub mod driver;
pub mod session;
pub mod tls;

pub use blobs::{BlobFetchError, BlobSource, FetchedBlob};
pub use driver::{
    EphemeralIn, HANDSHAKES_MAX_DEFAULT, Mesh, MeshConfig, MeshStatus, PeerAddr, PeerStatus,
    TLS_RELOAD_MS_DEFAULT,
};
pub use session::{Output, PeerInfo, PeerScopes, Session, SessionConfig, ShareFilter, share_all};
pub use tls::{ClusterCa, NodeCert, NodeTls};

/// QUIC keep-alive on a peer connection, so a quiet link is not taken for a dead one.
pub const KEEP_ALIVE_INTERVAL_MS: u64 = 1_000;

/// By default, a peer silent for this long is dead: its connection closes, its presence
/// expires, and the dial loop starts reconnecting.
pub const IDLE_TIMEOUT_MS: u64 = 5_000;
