//! [`PeerFrame`]: the messages regional nodes exchange over the QUIC mesh.
//!
//! The mesh replicates automerge documents with automerge's own sync protocol ([`PeerFrame::Sync`]
//! carries its messages untouched) and adds what automerge does not have: a handshake, a cheap
//! summary of document heads to find out which docs need syncing at all, and ephemeral messages
//! (presence and the like) that are relayed but never persisted, in the manner of
//! automerge-repo's `ephemeral` messages.

use serde::{Deserialize, Serialize};

/// The version of the peer protocol this build speaks; sent in [`PeerFrame::Hello`].
pub const PROTOCOL_VERSION: u32 = 1;

/// The TLS ALPN protocol id of the peer mesh.
pub const ALPN: &[u8] = b"lectern/1";

/// One message between two nodes, sent as one frame (see [`crate::encode_frame`]).
///
/// New variants go at the end: bincode encodes the variant by its index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum PeerFrame {
    /// The first frame in each direction of a connection.
    Hello {
        /// The sender's node id (32 lowercase hex characters): the identity of its store, under
        /// which peers persist their sync states with it.
        node_id: String,
        /// The sender's cluster name: the id its certificate was issued for
        /// (`lectern cluster issue-node --id`), which peers dial it by.
        name: String,
        /// The sender's region, as configured.
        region: String,
        /// The sender's [`PROTOCOL_VERSION`].
        protocol_version: u32,
    },
    /// One automerge sync message for one document.
    Sync {
        /// The document id, e.g. `session/abc`.
        doc: String,
        /// The encoded `automerge::sync::Message`.
        message: Vec<u8>,
    },
    /// The sender's current heads of every document it holds, hashed, so that the receiver can
    /// start syncing only the documents whose hash differs.
    HeadsSummary {
        /// (doc id, hash of the doc's sorted heads).
        docs: Vec<(String, [u8; 32])>,
    },
    /// A message relayed to a document's subscribers and never persisted (presence, cursors).
    Ephemeral {
        /// The document id the message belongs to.
        doc: String,
        /// Who sent it (a node or client id), for de-duplication.
        sender: String,
        /// Increases with every ephemeral message of `sender`; receivers drop repeats.
        counter: u64,
        /// The opaque payload.
        payload: Vec<u8>,
    },
    /// The last frame before the sender closes the connection.
    Bye {
        /// Why the sender is closing, for the peer's log.
        reason: String,
    },
}
