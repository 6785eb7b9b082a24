//! Who is calling, and what their role lets them do.
//!
//! Authorization is decided here, once, for every transport: the gateway turns a verified token
//! into a [`Caller`] and the model decides. Membership comes from the token's cohort claim; an
//! admin is a member of every cohort.

use serde::{Deserialize, Serialize};

use crate::ids::{CohortId, UserId};
use crate::reject::{RejectCode, Rejection};

/// A caller's role, from the `role` claim of their token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Role {
    /// Takes part: asks, votes, chats.
    Student,
    /// Teaching assistant: moderates and answers.
    Ta,
    /// Runs the cohort: everything a TA does plus broadcasts, roster and announcements.
    Instructor,
    /// Operates the platform: everything, in every cohort.
    Admin,
}

impl Role {
    /// TAs, instructors and admins: the people who moderate and see who asked what.
    pub fn is_staff(self) -> bool {
        !matches!(self, Role::Student)
    }

    /// Instructors and admins.
    pub fn is_instructor(self) -> bool {
        matches!(self, Role::Instructor | Role::Admin)
    }

    /// The role's name as it appears in tokens and documents.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Student => "student",
            Role::Ta => "ta",
            Role::Instructor => "instructor",
            Role::Admin => "admin",
        }
    }

    /// Parses a role name as written by [`Role::as_str`].
    pub fn parse(s: &str) -> Option<Role> {
        match s {
            "student" => Some(Role::Student),
            "ta" => Some(Role::Ta),
            "instructor" => Some(Role::Instructor),
            "admin" => Some(Role::Admin),
            _ => None,
        }
    }
}

/// An authenticated caller: what the gateway knows after verifying a token.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Caller {
    /// The user id (`sub`).
    pub user: UserId,
    /// Display name (`name`), shown with what they write.
    pub name: String,
    /// Role (`role`).
    pub role: Role,
    /// Cohorts the token grants (`cohorts`).
    pub cohorts: Vec<CohortId>,
}

impl Caller {
    /// Whether the caller belongs to `cohort` (admins belong to every cohort).
    pub fn is_member(&self, cohort: &CohortId) -> bool {
        self.role == Role::Admin || self.cohorts.iter().any(|c| c == cohort)
    }

    /// Whether the caller is staff of `cohort`.
    pub fn is_staff_of(&self, cohort: &CohortId) -> bool {
        self.is_member(cohort) && self.role.is_staff()
    }

    /// The display name, cut to the stored limit.
    pub(crate) fn display_name(&self) -> String {
        let name = self.name.trim();
        let name = if name.is_empty() {
            self.user.as_str()
        } else {
            name
        };
        name.chars()
            .take(crate::limits::DISPLAY_NAME_LEN_MAX_CHARS)
            .collect()
    }
}

/// What a command needs of the caller, beyond membership.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Needs {
    /// Any member of the cohort.
    Member,
    /// A TA, instructor or admin of the cohort.
    Staff,
    /// An instructor or admin of the cohort.
    Instructor,
    /// An admin.
    Admin,
}

/// Checks membership, then the role; the two failures have distinct codes.
pub(crate) fn authorize(caller: &Caller, cohort: &CohortId, needs: Needs) -> Result<(), Rejection> {
    if !caller.is_member(cohort) {
        return Err(Rejection::new(
            RejectCode::NotMember,
            format!("you are not a member of cohort {cohort}"),
        ));
    }
    let ok = match needs {
        Needs::Member => true,
        Needs::Staff => caller.role.is_staff(),
        Needs::Instructor => caller.role.is_instructor(),
        Needs::Admin => caller.role == Role::Admin,
    };
    if ok {
        Ok(())
    } else {
        let who = match needs {
            Needs::Member => "a member",
            Needs::Staff => "a TA, instructor or admin",
            Needs::Instructor => "an instructor or admin",
            Needs::Admin => "an admin",
        };
        Err(Rejection::new(
            RejectCode::Forbidden,
            format!("only {who} may do this"),
        ))
    }
}
