//! Lectern's domain, free of IO: ids, roles, limits, the five replicated document kinds
//! (session, cohort, a user's inbox, a course and the cluster's feature flags), the commands that change them, the views clients read and the events
//! they receive.
//!
//! Everything here is a pure function of its inputs. The clock, ids and the automerge actor are
//! passed in by the caller (the hub), so the same code runs in a property test with a simulated
//! clock and in a node. A [`Replica`] is one automerge document plus the bookkeeping that makes
//! commands idempotent; [`Replica::apply`] validates, authorizes and applies a [`Command`] as ONE
//! automerge commit whose message is a small [`Envelope`] naming the command. Events for local
//! and remote changes alike are derived from those envelopes and the document's values, never
//! from a full `diff`.

// Grouped from the bottom up: a module uses only modules of its own group or of the groups
// above it, and no two modules use each other (no import circle).
// Plain data and rules: ids, limits, refusals, document shapes, resume tokens, roles.
mod auth;
mod feature;
mod ids;
pub mod limits;
mod reject;
mod resume;
mod schema;
// What commands carry, and the commands.
mod command;
mod notification;
mod outline;
// Reading and writing a document; what a change's commit says; what subscribers receive.
mod envelope;
mod event;
mod read;
mod view;
mod write;
// The command families, by document.
mod apply;
mod attendance;
mod chat;
mod cohort;
mod course;
mod flags;
mod inbox;
mod poll;
mod progress;
mod qa;
mod session;
// What is derived from documents: events, notification triggers, the live boards.
mod board;
mod derive;
mod trigger;
// One document and everything the hub does with it.
mod chunks;
mod replica;

pub use auth::{Caller, Role};
pub use board::{
    CohortActivity, Dashboard, DashboardPoll, InactiveStudent, Leaderboard, LeaderboardEntry,
    LeaderboardPlace, Online, PollSummary, PublicEntry, PublicLeaderboard, SessionSummary,
    StudentActivity, StudentScore,
};
pub use chunks::{SYNC_MESSAGE_INFLATED_BYTES_MAX, SYNC_MESSAGE_ROWS_MAX};
pub use command::{
    Command, CommandBody, PollChoice, PollKind, PollSpec, ProgressStatus, SessionState,
};
pub use envelope::Envelope;
pub use event::{Audience, Delivery, Event};
pub use feature::{Feature, FlagSet};
pub use ids::{
    CohortId, CommandId, CourseId, DocId, DocKind, IdError, LessonId, Millis, PollId, QuestionId,
    SessionId, UserId,
};
pub use limits::{
    COURSE_DESCRIPTION_LEN_MAX_CHARS, COURSE_LESSONS_MAX, COURSE_MODULES_MAX, LESSON_ASSETS_MAX,
};
pub use notification::{Channel, InboxPrefs, Notification, NotifyKind};
pub use outline::{CourseLesson, CourseModule, is_blob_hash};
pub use reject::{RejectCode, Rejection};
pub use replica::{Applied, LoadError, Replica, SyncError};
pub use resume::{ResumeError, ResumeToken};
pub use session::check_session_link;
pub use trigger::Trigger;
pub use view::{CohortAggregates, LessonAggregate, Listing};

/// Re-exported so that callers name the same automerge types the model uses.
pub use automerge;
