//! What a notification is: its kind, the channel it goes by, a user's preferences, and the
//! notification itself as jobs carry it and inboxes hold it.
//!
//! Plain data, below the commands that carry it (`inbox.push`, `inbox.prefs`) and the code that
//! stores it (`inbox.rs`) or decides who gets it (`trigger.rs`).

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::ids::{CohortId, CommandId, Millis};

/// What a notification is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum NotifyKind {
    /// A quiz or assignment was scored: the grade is ready.
    Grade,
    /// An instructor posted an announcement to the cohort.
    Announcement,
    /// Staff answered my question.
    Answer,
    /// A poll I voted in closed.
    PollClosed,
}

impl NotifyKind {
    /// Every kind.
    pub const ALL: [NotifyKind; 4] = [
        NotifyKind::Grade,
        NotifyKind::Announcement,
        NotifyKind::Answer,
        NotifyKind::PollClosed,
    ];

    /// The kind's name, as in preferences and unsubscribe links.
    pub fn as_str(self) -> &'static str {
        match self {
            NotifyKind::Grade => "grade",
            NotifyKind::Announcement => "announcement",
            NotifyKind::Answer => "answer",
            NotifyKind::PollClosed => "poll_closed",
        }
    }

    /// Parses a name written by [`NotifyKind::as_str`].
    pub fn parse(s: &str) -> Option<NotifyKind> {
        NotifyKind::ALL.into_iter().find(|k| k.as_str() == s)
    }

    /// The channel a user who never chose gets: email for what matters or is rare (grades,
    /// announcements), in-app only for what is frequent (answers, closed polls), so that
    /// nobody is flooded with mail by default.
    pub fn default_channel(self) -> Channel {
        match self {
            NotifyKind::Grade | NotifyKind::Announcement => Channel::Email,
            NotifyKind::Answer | NotifyKind::PollClosed => Channel::InApp,
        }
    }

    /// Whether its email goes to many recipients at once (bulk mail in RFC 8058's sense).
    pub fn bulk(self) -> bool {
        matches!(self, NotifyKind::Announcement)
    }
}

/// Where a kind of notification goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Channel {
    /// The in-app inbox only.
    InApp,
    /// The inbox and an email.
    Email,
    /// Nowhere.
    Off,
}

impl Channel {
    /// The channel's name as stored.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::InApp => "in_app",
            Channel::Email => "email",
            Channel::Off => "off",
        }
    }

    /// Parses a name written by [`Channel::as_str`].
    pub(crate) fn parse(s: &str) -> Option<Channel> {
        match s {
            "in_app" => Some(Channel::InApp),
            "email" => Some(Channel::Email),
            "off" => Some(Channel::Off),
            _ => None,
        }
    }
}

/// A user's notification preferences, as stored in their inbox.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InboxPrefs {
    /// Channels the user chose, per kind; other kinds use [`NotifyKind::default_channel`].
    pub kinds: BTreeMap<NotifyKind, Channel>,
    /// Batch this user's emails into one daily digest.
    pub digest: bool,
    /// The address the user gave, if any.
    pub email: Option<String>,
}

impl InboxPrefs {
    /// The channel for `kind`.
    pub fn channel(&self, kind: NotifyKind) -> Channel {
        self.kinds
            .get(&kind)
            .copied()
            .unwrap_or_else(|| kind.default_channel())
    }

    /// As JSON, every kind spelled out.
    pub fn to_json(&self) -> Value {
        let kinds: serde_json::Map<String, Value> = NotifyKind::ALL
            .iter()
            .map(|k| (k.as_str().to_owned(), json!(self.channel(*k).as_str())))
            .collect();
        json!({"kinds": kinds, "digest": self.digest, "email": self.email})
    }
}

/// A notification, as carried by jobs and pushed into inboxes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Notification {
    /// Unique over the cluster: derived from the hash of the change that triggered it.
    pub id: CommandId,
    /// What it is about.
    pub kind: NotifyKind,
    /// Title (also the email's subject).
    pub title: String,
    /// Body text.
    pub body: String,
    /// A path in the client that shows what it is about.
    pub link: String,
    /// The cohort it comes from.
    pub cohort: Option<CohortId>,
    /// When the triggering command was applied.
    pub at: Millis,
}
