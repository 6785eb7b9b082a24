//! Identifier newtypes and the time type.
//!
//! Every id that reaches a document key is validated once, at construction: 1 to
//! [`ID_LEN_MAX_BYTES`](crate::limits::ID_LEN_MAX_BYTES) bytes of `[A-Za-z0-9_-]`. That keeps
//! document keys, storage keys (`d/{doc}/…`) and composite keys (`{student}/{lesson}`) free of
//! separators, so no id can impersonate another.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::ID_LEN_MAX_BYTES;

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdError {
    /// The id is the empty string.
    #[error("id is empty")]
    Empty,
    /// The id is longer than [`ID_LEN_MAX_BYTES`].
    #[error("id is {len} bytes long, the limit is {ID_LEN_MAX_BYTES}")]
    TooLong {
        /// Length of the rejected id in bytes.
        len: usize,
    },
    /// The id contains a character outside `[A-Za-z0-9_-]`.
    #[error("id contains {ch:?}; ids use only letters, digits, '-' and '_'")]
    BadChar {
        /// The first offending character.
        ch: char,
    },
}

/// Checks that `s` is a valid id (see the module docs).
pub fn validate_id(s: &str) -> Result<(), IdError> {
    if s.is_empty() {
        return Err(IdError::Empty);
    }
    if s.len() > ID_LEN_MAX_BYTES {
        return Err(IdError::TooLong { len: s.len() });
    }
    if let Some(ch) = s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        return Err(IdError::BadChar { ch });
    }
    Ok(())
}

macro_rules! id_type {
    ($(#[$doc:meta])* $name:ident) => {
        $(#[$doc])*
        #[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
        #[serde(try_from = "String", into = "String")]
        pub struct $name(String);

        impl $name {
            /// Validates and wraps `s`.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                validate_id(&s)?;
                Ok(Self(s))
            }

            /// The id as a string slice.
            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl TryFrom<String> for $name {
            type Error = IdError;
            fn try_from(s: String) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl From<$name> for String {
            fn from(id: $name) -> String {
                id.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl std::str::FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }
    };
}

id_type!(
    /// A user (student, TA, instructor or admin), as named by the `sub` claim of their token.
    UserId
);
id_type!(
    /// A cohort: one run of a course with its roster.
    CohortId
);
id_type!(
    /// A live session of a cohort.
    SessionId
);
id_type!(
    /// A client-chosen command id; a command retried with the same id is applied once.
    CommandId
);
id_type!(
    /// A question in a session; it is the id of the command that asked it.
    QuestionId
);
id_type!(
    /// A poll in a session; it is the id of the command that created it.
    PollId
);
id_type!(
    /// A lesson of a course.
    LessonId
);
id_type!(
    /// A course: its title, description and published outline of lessons.
    CourseId
);

/// Milliseconds since the Unix epoch. The model never reads a clock: callers pass `now`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    /// The value as a signed integer, the representation stored in documents.
    pub fn as_i64(self) -> i64 {
        i64::try_from(self.0).unwrap_or(i64::MAX)
    }
}

/// The kinds of replicated documents this crate knows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocKind {
    /// `session/{id}`: a live class.
    Session,
    /// `cohort/{id}`: roster, progress, announcements.
    Cohort,
    /// `inbox/{user}`: one user's in-app notifications, read marks and notification preferences.
    Inbox,
    /// `course/{id}`: a course's title, description and published outline.
    Course,
    /// `flags/cluster`: the cluster's feature flags (one document).
    Flags,
}

/// The name of the one flags document (`flags/cluster`).
const FLAGS_DOC_NAME: &str = "cluster";

/// The id of a replicated document; its string form (`session/{id}`, `cohort/{id}`) is the key
/// used in storage and on the wire.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum DocId {
    /// A session document.
    Session(SessionId),
    /// A cohort document.
    Cohort(CohortId),
    /// A user's inbox document.
    Inbox(UserId),
    /// A course document.
    Course(CourseId),
    /// The one feature-flags document of the cluster, `flags/cluster`.
    Flags,
}

impl DocId {
    /// The kind of document this id names.
    pub fn kind(&self) -> DocKind {
        match self {
            DocId::Session(_) => DocKind::Session,
            DocId::Cohort(_) => DocKind::Cohort,
            DocId::Inbox(_) => DocKind::Inbox,
            DocId::Course(_) => DocKind::Course,
            DocId::Flags => DocKind::Flags,
        }
    }

    /// Parses `session/{id}`, `cohort/{id}`, `inbox/{user}`, `course/{id}` or `flags/cluster`.
    pub fn parse(s: &str) -> Result<DocId, IdError> {
        match s.split_once('/') {
            Some(("session", id)) => Ok(DocId::Session(SessionId::new(id)?)),
            Some(("cohort", id)) => Ok(DocId::Cohort(CohortId::new(id)?)),
            Some(("inbox", id)) => Ok(DocId::Inbox(UserId::new(id)?)),
            Some(("course", id)) => Ok(DocId::Course(CourseId::new(id)?)),
            Some(("flags", FLAGS_DOC_NAME)) => Ok(DocId::Flags),
            _ => Err(IdError::BadChar { ch: '/' }),
        }
    }
}

impl fmt::Display for DocId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DocId::Session(id) => write!(f, "session/{id}"),
            DocId::Cohort(id) => write!(f, "cohort/{id}"),
            DocId::Inbox(id) => write!(f, "inbox/{id}"),
            DocId::Course(id) => write!(f, "course/{id}"),
            DocId::Flags => write!(f, "flags/{FLAGS_DOC_NAME}"),
        }
    }
}
