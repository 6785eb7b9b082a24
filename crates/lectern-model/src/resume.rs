//! Resume tokens: a document's heads, as a client carries them between connections.
//!
//! A token is the base64url (no padding) of the concatenated 32-byte change hashes, sorted. Any
//! node holding every one of those changes can replay exactly the events after it; a node
//! missing one reports [`ResumeError::UnknownHeads`] so the caller syncs first or sends a fresh
//! snapshot, never a silent replay from zero.

use std::fmt;

use automerge::ChangeHash;
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;

use crate::limits::TOKEN_HEADS_MAX;

/// A document's heads as an opaque client token.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ResumeToken(Vec<ChangeHash>);

impl ResumeToken {
    /// A token for `heads` (sorted, deduplicated).
    pub fn from_heads(mut heads: Vec<ChangeHash>) -> Self {
        heads.sort_unstable();
        heads.dedup();
        ResumeToken(heads)
    }

    /// The heads.
    pub fn heads(&self) -> &[ChangeHash] {
        &self.0
    }

    /// Parses a token as written by `Display`.
    pub fn parse(s: &str) -> Result<Self, ResumeError> {
        let bytes = URL_SAFE_NO_PAD
            .decode(s.trim())
            .map_err(|_| ResumeError::Malformed("not base64url".into()))?;
        if bytes.is_empty() || bytes.len() % 32 != 0 {
            return Err(ResumeError::Malformed(
                "length is not a positive multiple of 32 bytes".into(),
            ));
        }
        if bytes.len() / 32 > TOKEN_HEADS_MAX {
            return Err(ResumeError::Malformed(format!(
                "more than {TOKEN_HEADS_MAX} heads"
            )));
        }
        let heads = bytes
            .chunks_exact(32)
            .map(|c| {
                let mut h = [0u8; 32];
                h.copy_from_slice(c);
                ChangeHash(h)
            })
            .collect();
        Ok(Self::from_heads(heads))
    }
}

impl fmt::Display for ResumeToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut bytes = Vec::with_capacity(self.0.len() * 32);
        for h in &self.0 {
            bytes.extend_from_slice(&h.0);
        }
        f.write_str(&URL_SAFE_NO_PAD.encode(bytes))
    }
}

/// Why events cannot be replayed from a token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResumeError {
    /// The token does not parse.
    #[error("malformed resume token: {0}")]
    Malformed(String),
    /// This node does not have every change the token names: it is behind the node that
    /// issued the token (sync first) or the token belongs to another document.
    #[error("resume token names {} change(s) this node does not have", .0.len())]
    UnknownHeads(Vec<String>),
    /// More events since the token than one replay carries; take a fresh snapshot.
    #[error("{0} events since this token, more than one replay carries; take a fresh snapshot")]
    TooFarBehind(usize),
}

impl ResumeError {
    /// Stable code for clients.
    pub fn code(&self) -> &'static str {
        match self {
            ResumeError::Malformed(_) => "bad_token",
            ResumeError::UnknownHeads(_) => "unknown_heads",
            ResumeError::TooFarBehind(_) => "too_far_behind",
        }
    }
}
