//! [`PeerFrame`]: the messages regional nodes exchange over the QUIC mesh.
//!
//! The mesh replicates automerge documents with automerge's own sync protocol ([`PeerFrame::Sync`]
//! carries its messages untouched) and adds what automerge does not have: a handshake, a hash
//! tree of document heads to find out which docs need syncing at all (bytes in proportion to
//! the differences, not to the documents), and ephemeral messages
//! (presence and the like) that are relayed but never persisted, in the manner of
//! automerge-repo's `ephemeral` messages.

use serde::{Deserialize, Serialize};

/// The version of the peer protocol this build speaks; sent in [`PeerFrame::Hello`].
pub const PROTOCOL_VERSION: u32 = 3;

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
    /// One node of the sender's hash tree of document heads (anti-entropy): the documents
    /// whose id hash starts with `prefix`, summed per child or listed. The receiver answers a
    /// node whose children differ from its own with its own nodes for those children, and
    /// starts syncing the documents a listed node shows different; equal subtrees cost nothing.
    DigestNode {
        /// Where in the tree: the first bytes of the documents' id hashes (empty: the root).
        prefix: Vec<u8>,
        /// What the sender holds there.
        content: DigestContent,
        /// Set on a root sent to start anti-entropy over (after the first round: a share
        /// policy that admits new documents, a change feed that lagged): the receiver answers
        /// with its own root, then the round goes on as the first one did.
        resync: bool,
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
    /// The certificate revocation lists the sender holds (DER), sent after the hello and
    /// whenever it learns a new one: the cluster shares revocations this way. A receiver keeps
    /// only lists the cluster CA signed.
    Revocations {
        /// The lists, DER-encoded.
        crls: Vec<Vec<u8>>,
    },
    /// The last frame before the sender closes the connection.
    Bye {
        /// Why the sender is closing, for the peer's log.
        reason: String,
    },
}

/// What a [`PeerFrame::DigestNode`] says of the documents under its prefix.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum DigestContent {
    /// Many documents: for each of the 256 values of the next byte of the id hash, a wrapping
    /// sum of 64-bit hashes of (doc id, heads digest) of the documents there.
    Children(Vec<u64>),
    /// Few documents: each doc id with the first 16 bytes of its heads digest.
    Leaves(Vec<(String, [u8; 16])>),
}
