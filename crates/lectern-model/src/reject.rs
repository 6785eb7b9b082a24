//! Why a command was refused: a stable machine-readable code plus a sentence for humans.
//!
//! Codes are part of the client contract (`{ok: false, error: {code, message}}`); never rename
//! one. A refused command leaves the document unchanged.

use std::fmt;

use serde::Serialize;

/// Stable rejection codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectCode {
    /// The caller is not a member of the document's cohort.
    NotMember,
    /// The caller's role may not do this.
    Forbidden,
    /// The session or cohort does not exist (yet).
    DocNotFound,
    /// A create command for a document that exists.
    AlreadyExists,
    /// The question, poll, message or student named does not exist (or is hidden from the caller).
    NotFound,
    /// A required text is empty or blank.
    TextEmpty,
    /// A text is over its limit.
    TextTooLong,
    /// A vote on a closed poll.
    PollClosed,
    /// A poll option index or rating outside the poll's range.
    OptionOutOfRange,
    /// A vote whose shape does not fit the poll's kind.
    InvalidVote,
    /// A poll with too many or too few options, or a bad rating scale.
    InvalidPoll,
    /// A command id that was already applied to this document.
    DuplicateCommand,
    /// A command sent to a document of the other kind.
    WrongDocument,
    /// A per-document count limit is reached.
    LimitReached,
    /// Some other field is invalid (a score above its maximum, an empty update …).
    InvalidInput,
    /// The session has ended: no new questions, votes or chat.
    SessionEnded,
    /// The document could not be written; a bug or a corrupt document, never the client's fault.
    Internal,
    /// A session of another cohort named where only the document's own cohort's sessions may be
    /// (a `session.link`).
    WrongCohort,
    /// The feature is switched off by a feature flag (globally or for the cohort); the same
    /// command succeeds once an operator switches it on again.
    FeatureDisabled,
    /// No join code of this cohort has this key (a mistyped or made-up code).
    JoinCodeUnknown,
    /// The join code's expiry has passed.
    JoinCodeExpired,
    /// The join code let in as many newcomers as it was made for.
    JoinCodeUsedUp,
}

impl RejectCode {
    /// The code as sent to clients.
    pub fn as_str(self) -> &'static str {
        match self {
            RejectCode::NotMember => "not_member",
            RejectCode::Forbidden => "forbidden",
            RejectCode::DocNotFound => "doc_not_found",
            RejectCode::AlreadyExists => "already_exists",
            RejectCode::NotFound => "not_found",
            RejectCode::TextEmpty => "text_empty",
            RejectCode::TextTooLong => "text_too_long",
            RejectCode::PollClosed => "poll_closed",
            RejectCode::OptionOutOfRange => "option_out_of_range",
            RejectCode::InvalidVote => "invalid_vote",
            RejectCode::InvalidPoll => "invalid_poll",
            RejectCode::DuplicateCommand => "duplicate_command",
            RejectCode::WrongDocument => "wrong_document",
            RejectCode::LimitReached => "limit_reached",
            RejectCode::InvalidInput => "invalid_input",
            RejectCode::SessionEnded => "session_ended",
            RejectCode::Internal => "internal",
            RejectCode::WrongCohort => "wrong_cohort",
            RejectCode::FeatureDisabled => "feature_disabled",
            RejectCode::JoinCodeUnknown => "join_code_unknown",
            RejectCode::JoinCodeExpired => "join_code_expired",
            RejectCode::JoinCodeUsedUp => "join_code_used_up",
        }
    }
}

impl fmt::Display for RejectCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A refused command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, thiserror::Error)]
#[error("{code}: {message}")]
pub struct Rejection {
    /// Stable code.
    pub code: RejectCode,
    /// Human-readable explanation.
    pub message: String,
}

impl Rejection {
    /// A rejection with `code` and `message`.
    pub fn new(code: RejectCode, message: impl Into<String>) -> Self {
        Rejection {
            code,
            message: message.into(),
        }
    }

    pub(crate) fn not_found(what: &str, id: &str) -> Self {
        Rejection::new(RejectCode::NotFound, format!("no {what} {id}"))
    }
}

/// Validates a required text: trimmed, non-empty, at most `max_chars`.
pub(crate) fn check_text(field: &str, text: &str, max_chars: usize) -> Result<String, Rejection> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Err(Rejection::new(
            RejectCode::TextEmpty,
            format!("{field} is empty"),
        ));
    }
    let len = trimmed.chars().count();
    if len > max_chars {
        return Err(Rejection::new(
            RejectCode::TextTooLong,
            format!("{field} is {len} characters long, the limit is {max_chars}"),
        ));
    }
    Ok(trimmed.to_owned())
}
