//! The envelope: the small commit message every command's change carries, naming the command,
//! its id, its caller and what it touched.
//!
//! Replicas derive events from `get_changes_meta` and these envelopes, never from a diff, so an
//! envelope is all a node needs to tell subscribers what a peer's change was about. It is also
//! what carries a command id to other replicas and across a reload (idempotency), and what the
//! per-kind counts behind every limit are rebuilt from.

use serde::{Deserialize, Serialize};

/// The commit message of every command: small, so that replicas can derive events from
/// `get_changes_meta` without a diff.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// Command name (`qa.ask` …).
    pub c: String,
    /// Command id.
    pub i: String,
    /// Caller's user id.
    pub u: String,
    /// Target item, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub t: Option<String>,
    /// Lesson, for progress.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub l: Option<String>,
}

impl Envelope {
    /// The envelope in a change's message, if it holds one.
    pub(crate) fn parse(message: Option<&str>) -> Option<Envelope> {
        serde_json::from_str(message?).ok()
    }

    /// The item an event reads: two changes with the same key touch the same state.
    pub(crate) fn item_key(&self) -> (&str, Option<&str>) {
        let family = self.c.split('.').next().unwrap_or("");
        match self.c.as_str() {
            "session.create" | "session.update" | "cohort.create" => ("meta", None),
            // An inbox event carries the unread count, which every inbox command changes.
            "inbox.push" | "inbox.read" | "inbox.prefs" => ("inbox", None),
            // It writes the caller's roster entry.
            "leaderboard.privacy" => ("roster", self.t.as_deref()),
            _ => (family, self.t.as_deref()),
        }
    }
}
