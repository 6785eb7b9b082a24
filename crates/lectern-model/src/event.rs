//! Events: what subscribers of a document are told after a change, and to whom.
//!
//! One event per applied command (but attendance, see `derive.rs`), on the node that applied it
//! and on every replica. This module holds only what an event is; `derive.rs` says which event
//! each command's change makes. An event has one payload per audience, so that the hub
//! serializes each payload once per event however many sockets receive it; a subscriber gets the
//! FIRST delivery whose audience matches it (see [`Event::payload_for`]).

use serde::Serialize;
use serde_json::Value;

use crate::resume::ResumeToken;

/// Who receives a payload.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Audience {
    /// Everyone subscribed to the document.
    All,
    /// TAs, instructors and admins.
    Staff,
    /// Non-staff subscribers, except one user (who gets another delivery).
    Students {
        /// The user excluded, if any.
        except: Option<String>,
    },
    /// One user.
    User(String),
}

impl Audience {
    /// Whether a subscriber (`user`, staff or not) is in this audience.
    pub fn matches(&self, user: &str, staff: bool) -> bool {
        match self {
            Audience::All => true,
            Audience::Staff => staff,
            Audience::Students { except } => !staff && except.as_deref() != Some(user),
            Audience::User(u) => u == user,
        }
    }
}

/// One payload for one audience.
#[derive(Debug, Clone, PartialEq)]
pub struct Delivery {
    /// Who gets it.
    pub audience: Audience,
    /// The JSON payload (the client-facing event argument).
    pub payload: Value,
}

impl Delivery {
    /// One payload for everyone.
    pub(crate) fn all(payload: Value) -> Vec<Delivery> {
        vec![Delivery {
            audience: Audience::All,
            payload,
        }]
    }
}

/// An event of a document.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Client-facing event name (`qa:new`, `poll:results` …).
    pub name: &'static str,
    /// Resume token: the document's heads right after the change.
    pub token: ResumeToken,
    /// Id of the command that caused it.
    pub command: String,
    /// Payloads by audience; the first match wins.
    pub deliveries: Vec<Delivery>,
}

impl Event {
    /// The payload a subscriber receives, if any.
    pub fn payload_for(&self, user: &str, staff: bool) -> Option<&Value> {
        self.deliveries
            .iter()
            .find(|d| d.audience.matches(user, staff))
            .map(|d| &d.payload)
    }
}
