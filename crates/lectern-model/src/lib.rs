//! Lectern's domain, free of IO: ids, roles, limits, the three replicated document kinds
//! (session, cohort and a user's inbox), the commands that change them, the views clients read and the events
//! they receive.
//!
//! Everything here is a pure function of its inputs. The clock, ids and the automerge actor are
//! passed in by the caller (the hub), so the same code runs in a property test with a simulated
//! clock and in a node. A [`Replica`] is one automerge document plus the bookkeeping that makes
//! commands idempotent; [`Replica::apply`] validates, authorizes and applies a [`Command`] as ONE
//! automerge commit whose message is a small [`Envelope`] naming the command. Events for local
//! and remote changes alike are derived from those envelopes and the document's values, never
//! from a full `diff`.

mod apply;
mod auth;
mod board;
mod command;
mod event;
mod ids;
pub mod limits;
mod notify;
mod read;
mod reject;
mod replica;
mod resume;
mod schema;
mod view;

pub use apply::check_session_link;
pub use auth::{Caller, Role};
pub use command::{
    Command, CommandBody, PollChoice, PollKind, PollSpec, ProgressStatus, SessionState,
};
pub use event::{Audience, Delivery, Event};
pub use ids::{
    CohortId, CommandId, DocId, DocKind, IdError, LessonId, Millis, PollId, QuestionId, SessionId,
    UserId,
};
pub use notify::{Channel, InboxPrefs, Notification, NotifyKind, Trigger};
pub use reject::{RejectCode, Rejection};
pub use replica::{Applied, Envelope, LoadError, Replica, SyncError};
pub use resume::{ResumeError, ResumeToken};

/// Re-exported so that callers name the same automerge types the model uses.
pub use automerge;
