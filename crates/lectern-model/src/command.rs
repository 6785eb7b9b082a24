//! Typed commands: what a client asks the model to do to one document.
//!
//! A [`Command`] carries a client-chosen [`CommandId`]; the model applies a command id at most
//! once per document, so a client that lost an ack may simply retry. Things a command creates
//! (a question, a poll, a chat message) take the command id as their own id, so a retry also
//! names the same item. The serde form (`{"id": …, "cmd": "qa.ask", …}`) is what clients, tests
//! and benchmarks write.

use serde::{Deserialize, Serialize};

use crate::Role;
use crate::feature::Feature;
use crate::ids::{
    CohortId, CommandId, CourseId, DocKind, LessonId, PollId, QuestionId, SessionId, UserId,
};
use crate::notification::{Channel, NotifyKind};
use crate::outline::{CourseLesson, CourseModule};

/// A command with its idempotency id.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Command {
    /// Client-chosen id; a retry with the same id is applied once.
    pub id: CommandId,
    /// What to do.
    #[serde(flatten)]
    pub body: CommandBody,
}

/// Lifecycle of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionState {
    /// Running: every command is accepted.
    Live,
    /// Over: the session reads as before, new questions, votes and chat are refused.
    Ended,
}

/// The kind of a poll.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollKind {
    /// Pick one option.
    Single,
    /// Pick one or more options.
    Multiple,
    /// Pick a number on a 1..=scale_max scale.
    Rating,
    /// Free text, shown as a word cloud.
    OpenText,
}

impl PollKind {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            PollKind::Single => "single",
            PollKind::Multiple => "multiple",
            PollKind::Rating => "rating",
            PollKind::OpenText => "open_text",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<PollKind> {
        match s {
            "single" => Some(PollKind::Single),
            "multiple" => Some(PollKind::Multiple),
            "rating" => Some(PollKind::Rating),
            "open_text" => Some(PollKind::OpenText),
            _ => None,
        }
    }
}

/// What a poll asks, as given to `poll.create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PollSpec {
    /// The question shown above the options.
    pub question: String,
    /// Kind of answer.
    pub kind: PollKind,
    /// Option labels (single and multiple choice only).
    #[serde(default)]
    pub options: Vec<String>,
    /// Top of the scale (rating only).
    #[serde(default)]
    pub scale_max: Option<u32>,
    /// Hide results from students until the poll is revealed.
    #[serde(default)]
    pub hide_results: bool,
}

/// A vote; its shape must match the poll's kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum PollChoice {
    /// Single choice: an option index.
    Single(u32),
    /// Multiple choice: distinct option indexes.
    Multiple(Vec<u32>),
    /// Rating: 1..=scale_max.
    Rating(u32),
    /// Open text.
    Text(String),
}

/// A student's status on a lesson.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ProgressStatus {
    /// Not opened yet.
    NotStarted,
    /// Opened, not finished.
    InProgress,
    /// Finished.
    Completed,
}

impl ProgressStatus {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            ProgressStatus::NotStarted => "not_started",
            ProgressStatus::InProgress => "in_progress",
            ProgressStatus::Completed => "completed",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<ProgressStatus> {
        match s {
            "not_started" => Some(ProgressStatus::NotStarted),
            "in_progress" => Some(ProgressStatus::InProgress),
            "completed" => Some(ProgressStatus::Completed),
            _ => None,
        }
    }
}

/// Every command, by document kind.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd")]
pub enum CommandBody {
    // ---- session documents ----
    /// Create the session (instructor or admin of `cohort`).
    #[serde(rename = "session.create")]
    SessionCreate {
        /// Cohort the session belongs to.
        cohort: CohortId,
        /// Title.
        title: String,
        /// Questions wait for approval before students see them.
        #[serde(default)]
        moderation: bool,
    },
    /// Change title, moderation or state (instructor or admin).
    #[serde(rename = "session.update")]
    SessionUpdate {
        /// New title.
        #[serde(default)]
        title: Option<String>,
        /// New moderation setting.
        #[serde(default)]
        moderation: Option<bool>,
        /// New state.
        #[serde(default)]
        state: Option<SessionState>,
    },
    /// Ask a question (any member).
    #[serde(rename = "qa.ask")]
    QaAsk {
        /// The question.
        text: String,
        /// Hide the author from classmates (staff still see it).
        #[serde(default)]
        anonymous: bool,
    },
    /// Upvote a question; one vote per user.
    #[serde(rename = "qa.upvote")]
    QaUpvote {
        /// The question.
        question: QuestionId,
    },
    /// Take one's upvote back.
    #[serde(rename = "qa.unvote")]
    QaUnvote {
        /// The question.
        question: QuestionId,
    },
    /// Answer a question (staff).
    #[serde(rename = "qa.answer")]
    QaAnswer {
        /// The question.
        question: QuestionId,
        /// The answer.
        text: String,
    },
    /// Pin or unpin a question (staff).
    #[serde(rename = "qa.pin")]
    QaPin {
        /// The question.
        question: QuestionId,
        /// Pin (true) or unpin (false).
        #[serde(default = "yes")]
        pinned: bool,
    },
    /// Dismiss a question (staff).
    #[serde(rename = "qa.dismiss")]
    QaDismiss {
        /// The question.
        question: QuestionId,
    },
    /// Approve a question waiting in the moderation queue (staff).
    #[serde(rename = "qa.approve")]
    QaApprove {
        /// The question.
        question: QuestionId,
    },
    /// Reject a question waiting in the moderation queue (staff).
    #[serde(rename = "qa.reject")]
    QaReject {
        /// The question.
        question: QuestionId,
    },
    /// Create a poll (staff).
    #[serde(rename = "poll.create")]
    PollCreate(PollSpec),
    /// Vote, or change one's vote (any member).
    #[serde(rename = "poll.vote")]
    PollVote {
        /// The poll.
        poll: PollId,
        /// The vote.
        choice: PollChoice,
    },
    /// Close a poll to votes (staff).
    #[serde(rename = "poll.close")]
    PollClose {
        /// The poll.
        poll: PollId,
    },
    /// Reveal a poll's results to students (staff).
    #[serde(rename = "poll.reveal")]
    PollReveal {
        /// The poll.
        poll: PollId,
    },
    /// Send a chat message (any member).
    #[serde(rename = "chat.send")]
    ChatSend {
        /// The message.
        text: String,
    },
    /// Delete a chat message (staff).
    #[serde(rename = "chat.delete")]
    ChatDelete {
        /// Id of the message (the id of the command that sent it).
        message: CommandId,
    },
    /// Broadcast to the whole session (instructor or admin).
    #[serde(rename = "broadcast.send")]
    BroadcastSend {
        /// The broadcast.
        text: String,
    },
    /// The caller joined the session (a connection opened).
    #[serde(rename = "attendance.join")]
    AttendanceJoin,
    /// The caller left the session (their last connection closed).
    #[serde(rename = "attendance.leave")]
    AttendanceLeave,

    // ---- cohort documents ----
    /// Create the cohort (admin).
    #[serde(rename = "cohort.create")]
    CohortCreate {
        /// Course title.
        course: String,
        /// Cohort title.
        title: String,
        /// The region whose node is the cohort's home.
        #[serde(default)]
        home_region: String,
    },
    /// Add or update a roster entry (instructor or admin).
    #[serde(rename = "roster.add")]
    RosterAdd {
        /// The member.
        user: UserId,
        /// Their role in the cohort.
        role: Role,
        /// Display name.
        name: String,
    },
    /// Remove a roster entry (instructor or admin).
    #[serde(rename = "roster.remove")]
    RosterRemove {
        /// The member.
        user: UserId,
    },
    /// Record progress on a lesson. A student may set the status of their own lessons; staff
    /// may set any student's status and score.
    #[serde(rename = "progress.update")]
    ProgressUpdate {
        /// The student.
        student: UserId,
        /// The lesson.
        lesson: LessonId,
        /// New status.
        #[serde(default)]
        status: Option<ProgressStatus>,
        /// Score (staff only).
        #[serde(default)]
        score: Option<u32>,
        /// Maximum score (staff only; required with a score).
        #[serde(default)]
        max_score: Option<u32>,
    },
    /// Post an announcement to the cohort (instructor or admin).
    #[serde(rename = "announcement.post")]
    AnnouncementPost {
        /// Title.
        title: String,
        /// Body.
        body: String,
    },
    /// List a session in the cohort's session index (instructor or admin).
    #[serde(rename = "session.link")]
    SessionLink {
        /// The session.
        session: SessionId,
        /// Its title.
        title: String,
    },

    /// Link the cohort to the course it follows (instructor or admin): the course its students
    /// read and record progress against. Linking again replaces the link.
    #[serde(rename = "cohort.course")]
    CohortCourse {
        /// The course.
        course: CourseId,
    },

    /// Show or hide the caller's name on the cohort's leaderboard (any member on the roster,
    /// for themselves).
    #[serde(rename = "leaderboard.privacy")]
    LeaderboardPrivacy {
        /// Appear as "Anonymous" to other students.
        anonymous: bool,
    },

    /// Make a join code for one of the cohort's sessions (instructor or admin), for a newcomer
    /// who arrives while the node cannot reach the cohort's issuer (a classroom offline): who
    /// redeems it before `expires_at` joins the roster with `role` (student or TA). Only the
    /// code's keyed hash (`key`) is stored, never the code.
    #[serde(rename = "join_code.create")]
    JoinCodeCreate {
        /// The code's keyed hash: [`JOIN_CODE_KEY_LEN_CHARS`](crate::limits::JOIN_CODE_KEY_LEN_CHARS)
        /// lowercase hex digits.
        key: String,
        /// The session the code lets newcomers into; the cohort must list it.
        session: SessionId,
        /// The role it grants: student or TA.
        role: Role,
        /// When it stops letting anyone in, ms since the Unix epoch (at most
        /// [`JOIN_CODE_TTL_MAX_MS`](crate::limits::JOIN_CODE_TTL_MAX_MS) ahead).
        expires_at: u64,
        /// How many newcomers it lets in.
        uses_max: u32,
    },
    /// Let a newcomer in with a join code (the node, as an admin, for whoever presents the
    /// code): a roster entry for `user` with the code's role that records the code, its session
    /// and who made it, so the cohort's staff and the region see who came in and how.
    #[serde(rename = "join_code.redeem")]
    JoinCodeRedeem {
        /// The code's keyed hash.
        key: String,
        /// The newcomer's (fresh) user id.
        user: UserId,
        /// Their display name.
        name: String,
    },

    // ---- course documents ----
    /// Create the course (an instructor or admin).
    #[serde(rename = "course.create")]
    CourseCreate {
        /// Title.
        title: String,
        /// Description shown in the catalog.
        #[serde(default)]
        description: String,
    },
    /// Publish a new version of the course's outline (its creator or an admin).
    #[serde(rename = "course.publish")]
    CoursePublish {
        /// New title.
        #[serde(default)]
        title: Option<String>,
        /// New description.
        #[serde(default)]
        description: Option<String>,
        /// The whole outline of the new version.
        modules: Vec<CourseModule>,
    },
    /// Add or replace one lesson of the published outline (its creator or an admin), leaving
    /// the others as they are: a lesson whose id the outline has is replaced where it stands;
    /// a new one is appended to module `module`, and `module` one past the last starts a new
    /// module titled `module_title`. A new version, like a publication.
    #[serde(rename = "course.lesson")]
    CourseLessonPut {
        /// The module (0-based) a new lesson is appended to.
        #[serde(default)]
        module: usize,
        /// The title of the module a new lesson starts.
        #[serde(default)]
        module_title: Option<String>,
        /// The lesson (boxed: every command is as large as its largest kind).
        lesson: Box<CourseLesson>,
    },

    // ---- inbox documents ----
    /// Put a notification into the inbox (the node's job runner, as an admin).
    #[serde(rename = "inbox.push")]
    InboxPush {
        /// The notification's id (the same in every inbox it reaches).
        notification: CommandId,
        /// What it is about.
        kind: NotifyKind,
        /// Title.
        title: String,
        /// Body.
        body: String,
        /// Where the client can show the thing it is about (a path).
        #[serde(default)]
        link: String,
        /// The cohort it comes from.
        #[serde(default)]
        cohort: Option<CohortId>,
    },
    /// Mark notifications read (the inbox's owner); an empty list marks every one.
    #[serde(rename = "inbox.read")]
    InboxRead {
        /// The notifications; empty means all.
        #[serde(default)]
        notifications: Vec<CommandId>,
    },
    /// Change notification preferences (the inbox's owner, or an admin for an unsubscribe).
    #[serde(rename = "inbox.prefs")]
    InboxPrefs {
        /// Channel per kind of notification; kinds not named keep their setting.
        #[serde(default)]
        kinds: std::collections::BTreeMap<NotifyKind, Channel>,
        /// Batch emails into one daily digest.
        #[serde(default)]
        digest: Option<bool>,
        /// The address emails go to (empty clears it).
        #[serde(default)]
        email: Option<String>,
    },

    // ---- the flags document ----
    /// Switch a feature on or off, for one cohort or (no cohort) globally (an admin).
    #[serde(rename = "flag.set")]
    FlagSet {
        /// The feature.
        feature: Feature,
        /// The cohort; none sets the global flag.
        #[serde(default)]
        cohort: Option<CohortId>,
        /// On (true) or off (false).
        enabled: bool,
    },
    /// Forget a feature's flag, for one cohort or (no cohort) the global one (an admin): the
    /// cohort then follows the global flag, and without one the feature is on.
    #[serde(rename = "flag.unset")]
    FlagUnset {
        /// The feature.
        feature: Feature,
        /// The cohort; none unsets the global flag.
        #[serde(default)]
        cohort: Option<CohortId>,
    },
}

fn yes() -> bool {
    true
}

impl CommandBody {
    /// The command's name, as written in commit envelopes (`qa.ask` …).
    pub fn name(&self) -> &'static str {
        match self {
            CommandBody::SessionCreate { .. } => "session.create",
            CommandBody::SessionUpdate { .. } => "session.update",
            CommandBody::QaAsk { .. } => "qa.ask",
            CommandBody::QaUpvote { .. } => "qa.upvote",
            CommandBody::QaUnvote { .. } => "qa.unvote",
            CommandBody::QaAnswer { .. } => "qa.answer",
            CommandBody::QaPin { .. } => "qa.pin",
            CommandBody::QaDismiss { .. } => "qa.dismiss",
            CommandBody::QaApprove { .. } => "qa.approve",
            CommandBody::QaReject { .. } => "qa.reject",
            CommandBody::PollCreate(_) => "poll.create",
            CommandBody::PollVote { .. } => "poll.vote",
            CommandBody::PollClose { .. } => "poll.close",
            CommandBody::PollReveal { .. } => "poll.reveal",
            CommandBody::ChatSend { .. } => "chat.send",
            CommandBody::ChatDelete { .. } => "chat.delete",
            CommandBody::BroadcastSend { .. } => "broadcast.send",
            CommandBody::AttendanceJoin => "attendance.join",
            CommandBody::AttendanceLeave => "attendance.leave",
            CommandBody::CohortCreate { .. } => "cohort.create",
            CommandBody::RosterAdd { .. } => "roster.add",
            CommandBody::RosterRemove { .. } => "roster.remove",
            CommandBody::ProgressUpdate { .. } => "progress.update",
            CommandBody::AnnouncementPost { .. } => "announcement.post",
            CommandBody::SessionLink { .. } => "session.link",
            CommandBody::LeaderboardPrivacy { .. } => "leaderboard.privacy",
            CommandBody::CohortCourse { .. } => "cohort.course",
            CommandBody::JoinCodeCreate { .. } => "join_code.create",
            CommandBody::JoinCodeRedeem { .. } => "join_code.redeem",
            CommandBody::CourseCreate { .. } => "course.create",
            CommandBody::CoursePublish { .. } => "course.publish",
            CommandBody::CourseLessonPut { .. } => "course.lesson",
            CommandBody::InboxPush { .. } => "inbox.push",
            CommandBody::InboxRead { .. } => "inbox.read",
            CommandBody::InboxPrefs { .. } => "inbox.prefs",
            CommandBody::FlagSet { .. } => "flag.set",
            CommandBody::FlagUnset { .. } => "flag.unset",
        }
    }

    /// The kind of document the command applies to.
    pub fn doc_kind(&self) -> DocKind {
        match self {
            CommandBody::CohortCreate { .. }
            | CommandBody::RosterAdd { .. }
            | CommandBody::RosterRemove { .. }
            | CommandBody::ProgressUpdate { .. }
            | CommandBody::AnnouncementPost { .. }
            | CommandBody::SessionLink { .. }
            | CommandBody::LeaderboardPrivacy { .. }
            | CommandBody::CohortCourse { .. }
            | CommandBody::JoinCodeCreate { .. }
            | CommandBody::JoinCodeRedeem { .. } => DocKind::Cohort,
            CommandBody::InboxPush { .. }
            | CommandBody::InboxRead { .. }
            | CommandBody::InboxPrefs { .. } => DocKind::Inbox,
            CommandBody::CourseCreate { .. }
            | CommandBody::CoursePublish { .. }
            | CommandBody::CourseLessonPut { .. } => DocKind::Course,
            CommandBody::FlagSet { .. } | CommandBody::FlagUnset { .. } => DocKind::Flags,
            _ => DocKind::Session,
        }
    }

    /// The feature a command belongs to, which a feature flag can switch off (None: always on).
    pub fn feature(&self) -> Option<Feature> {
        match self {
            CommandBody::ChatSend { .. } | CommandBody::ChatDelete { .. } => Some(Feature::Chat),
            CommandBody::PollCreate(_)
            | CommandBody::PollVote { .. }
            | CommandBody::PollClose { .. }
            | CommandBody::PollReveal { .. } => Some(Feature::Polls),
            CommandBody::LeaderboardPrivacy { .. } => Some(Feature::Leaderboard),
            _ => None,
        }
    }
}
