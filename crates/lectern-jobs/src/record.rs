//! The job records kept in the store's queue: what to do, how often it was tried, when it runs
//! next and why it last failed. JSON, so an operator can read a dead letter.
//!
//! Job ids are derived from the notification id (unique over the cluster, from the hash of the
//! triggering change) and the recipient, so every step has one id whatever node or restart runs
//! it, and the store's idempotent enqueue turns a replayed step into a no-op:
//! `{nid}` fans out, `{nid}/{user}` delivers to one user, `{nid}/{user}/email` emails them.

use lectern_model::{Notification, UserId};
use serde::{Deserialize, Serialize};

/// One queued job.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id (see the module docs).
    pub id: String,
    /// Attempts that failed so far.
    pub attempts: u32,
    /// Not before this time (ms since the Unix epoch).
    pub run_at_ms: u64,
    /// Why the last attempt failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Since when (ms since the Unix epoch) an email job has been parked because its mail
    /// server could not be reached; `None` when it is not parked. A parked job's failures do
    /// not count as attempts until it has been parked for `park_unreachable_ms`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parked_since_ms: Option<u64>,
    /// What to do.
    pub job: Job,
}

/// What a job does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Job {
    /// Deliver a notification to many recipients in-app, a chunk at a time, leaving their
    /// email jobs (and a delivery job for each recipient whose push failed).
    Fanout {
        /// The notification.
        notification: Notification,
        /// Who gets it.
        recipients: Vec<UserId>,
    },
    /// Deliver a notification to one user: their inbox, and an email job if they want email.
    Deliver {
        /// The notification.
        notification: Notification,
        /// The recipient.
        user: UserId,
    },
    /// Email a notification to one user (alone, or in their next digest).
    Email {
        /// The notification.
        notification: Notification,
        /// The recipient.
        user: UserId,
        /// Their address.
        to: String,
        /// Wait for the user's daily digest instead of sending alone.
        digest: bool,
    },
}

impl JobRecord {
    /// A fresh job due at `run_at_ms`.
    pub fn new(id: String, run_at_ms: u64, job: Job) -> JobRecord {
        JobRecord {
            id,
            attempts: 0,
            run_at_ms,
            last_error: None,
            parked_since_ms: None,
            job,
        }
    }

    /// The record as stored.
    pub fn encode(&self) -> Vec<u8> {
        // Invariant: a record of strings, numbers and ids always serializes.
        serde_json::to_vec(self).expect("serialize a job record")
    }

    /// A stored record, or why it does not read.
    pub fn decode(bytes: &[u8]) -> Result<JobRecord, String> {
        serde_json::from_slice(bytes).map_err(|e| format!("the job record does not read: {e}"))
    }

    /// What kind of job it is: `fanout`, `deliver` or `email`.
    pub fn kind(&self) -> &'static str {
        match &self.job {
            Job::Fanout { .. } => "fanout",
            Job::Deliver { .. } => "deliver",
            Job::Email { .. } => "email",
        }
    }

    /// The notification the job carries.
    pub fn notification(&self) -> &Notification {
        match &self.job {
            Job::Fanout { notification, .. }
            | Job::Deliver { notification, .. }
            | Job::Email { notification, .. } => notification,
        }
    }

    /// The recipient of a delivery or email job.
    pub fn user(&self) -> Option<&UserId> {
        match &self.job {
            Job::Fanout { .. } => None,
            Job::Deliver { user, .. } | Job::Email { user, .. } => Some(user),
        }
    }
}

/// The id of the fan-out of notification `nid`.
pub fn fanout_id(notification: &Notification) -> String {
    notification.id.to_string()
}

/// The id of the delivery of a notification to `user`.
pub fn deliver_id(notification: &Notification, user: &UserId) -> String {
    format!("{}/{user}", notification.id)
}

/// The id of the email of a notification to `user`.
pub fn email_id(notification: &Notification, user: &UserId) -> String {
    format!("{}/{user}/email", notification.id)
}
