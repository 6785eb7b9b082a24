//! Who this node is: a node id that never changes and a boot epoch that changes on every start.
//!
//! The pair becomes the automerge actor id of the process ([`NodeIdentity::actor_bytes`]).
//! Reusing an actor across process starts would reuse automerge sequence numbers, and the
//! replicas would never converge (`DuplicateSeqNumber`), so the store bumps the epoch and fsyncs
//! it before [`crate::Store::open`] returns.

use std::fmt;
use std::str::FromStr;

/// A node's permanent 16-byte id, drawn at random the first time its store is opened.
///
/// Displays as 32 lowercase hex characters; [`FromStr`] parses that back (either case).
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(pub [u8; 16]);

/// The identity of this process: the node id plus the boot epoch of this start.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeIdentity {
    /// The node's permanent id.
    pub node_id: NodeId,
    /// Incremented and fsynced on every open of the store; the first start has epoch 1.
    pub boot_epoch: u64,
}

impl NodeIdentity {
    /// The automerge actor id of this process: the node id followed by the boot epoch in
    /// big-endian, so that every start of every node writes under a fresh actor.
    pub fn actor_bytes(&self) -> [u8; 24] {
        let mut actor = [0u8; 24];
        actor[..16].copy_from_slice(&self.node_id.0);
        actor[16..].copy_from_slice(&self.boot_epoch.to_be_bytes());
        actor
    }
}

/// Why a string is not a [`NodeId`].
#[derive(thiserror::Error, Debug, Clone, PartialEq, Eq)]
#[error("a node id is 32 hex characters, but got {input:?}")]
pub struct ParseNodeIdError {
    /// The rejected input (truncated to 64 characters).
    pub input: String,
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in self.0 {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = ParseNodeIdError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let error = || ParseNodeIdError {
            input: s.chars().take(64).collect(),
        };
        let hex = s.as_bytes();
        if hex.len() != 32 {
            return Err(error());
        }
        let mut id = [0u8; 16];
        for (byte, pair) in id.iter_mut().zip(hex.chunks_exact(2)) {
            let high = hex_value(pair[0]).ok_or_else(error)?;
            let low = hex_value(pair[1]).ok_or_else(error)?;
            *byte = high << 4 | low;
        }
        Ok(NodeId(id))
    }
}

fn hex_value(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}
