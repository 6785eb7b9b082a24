//! The shape of the two document kinds: key names and the deterministic genesis change.
//!
//! Session document (`session/{id}`):
//! ```text
//! meta        {cohort, title, moderation, state, created_at, created_by}
//! questions   {qid: {text, author, author_name, anonymous, status, at, pinned,
//!                    answer, answer_by, answer_by_name, answer_at, voters: {user: bool}}}
//! polls       {pid: {question, kind, options (JSON list), scale_max, hide_results, state,
//!                    revealed, at, by, votes: {user: encoded choice}}}
//! chat        {mid: {text, author, author_name, at, deleted}}
//! broadcasts  {bid: {text, by, by_name, at}}
//! attendance  {"{user}/{visit}": {user, name, join_at, leave_at}}
//! ```
//! Cohort document (`cohort/{id}`):
//! ```text
//! meta          {course, title, home_region, created_at, course_id,
//!                "join_code/{key}": {session, role, expires_at, uses_max, by, by_name, at,
//!                                    uses: {user: at}}}
//! roster        {user: {role, name, removed, at, lb_anonymous,
//!                       via_code, via_session, via_by (a newcomer let in by a join code)}}
//! progress      {student: {"{lesson}/status", "{lesson}/score", "{lesson}/max", "{lesson}/at"}}
//! announcements {aid: {title, body, by, by_name, at}}
//! sessions      {sid: {title, at}}
//! ```
//! Course document (`course/{id}`): see `course.rs`.
//!
//! Flags document (`flags/cluster`, one per cluster): see `flags.rs`.
//!
//! Inbox document (`inbox/{user}`):
//! ```text
//! items   {nid: {kind, title, body, link, cohort, at, read}}
//! prefs   {"kind/{kind}": "in_app" | "email" | "off", digest: bool, email: address}
//! ```
//! Why this shape (docs/dependencies.md has the costs): every question, poll and student has its own map object,
//! because remote-apply cost grows with the history of the touched object; votes are a voters
//! map keyed by user (an automerge Counter would count one voter twice when they vote on two
//! nodes at once); a nested map that two nodes might create concurrently (a student's progress
//! map) is read by merging every conflicting copy, so neither node's writes are lost.
//!
//! The top-level maps are created by a genesis change that is byte-for-byte the same on every
//! node (fixed actor, time 0), so it has the same hash everywhere and merges as one change: two
//! nodes that both start a document never race to create `questions`.

use automerge::transaction::{CommitOptions, Transactable};
use automerge::{ActorId, Automerge, ObjType, ROOT};

use crate::ids::DocKind;

pub(crate) const META: &str = "meta";
pub(crate) const QUESTIONS: &str = "questions";
pub(crate) const POLLS: &str = "polls";
pub(crate) const CHAT: &str = "chat";
pub(crate) const BROADCASTS: &str = "broadcasts";
pub(crate) const ATTENDANCE: &str = "attendance";
pub(crate) const ROSTER: &str = "roster";
pub(crate) const PROGRESS: &str = "progress";
pub(crate) const ANNOUNCEMENTS: &str = "announcements";
pub(crate) const SESSIONS: &str = "sessions";
pub(crate) const ITEMS: &str = "items";
pub(crate) const PREFS: &str = "prefs";
pub(crate) const FLAGS: &str = "flags";

/// The key in a roster entry that hides the student's name on leaderboards.
pub(crate) const LEADERBOARD_ANONYMOUS: &str = "lb_anonymous";

/// Question status values.
pub(crate) const Q_VISIBLE: &str = "visible";
pub(crate) const Q_PENDING: &str = "pending";
pub(crate) const Q_REJECTED: &str = "rejected";
pub(crate) const Q_DISMISSED: &str = "dismissed";

/// The message of the genesis change; it names no command.
pub(crate) const GENESIS_MESSAGE: &str = r#"{"c":"genesis"}"#;

/// The top-level maps of a document kind.
pub(crate) fn top_level(kind: DocKind) -> &'static [&'static str] {
    match kind {
        DocKind::Session => &[META, QUESTIONS, POLLS, CHAT, BROADCASTS, ATTENDANCE],
        DocKind::Cohort => &[META, ROSTER, PROGRESS, ANNOUNCEMENTS, SESSIONS],
        DocKind::Inbox => &[ITEMS, PREFS],
        DocKind::Course => &[META],
        DocKind::Flags => &[META, FLAGS],
    }
}

/// Builds the genesis document of `kind`: identical bytes and hash on every node.
pub(crate) fn genesis(kind: DocKind) -> Automerge {
    let actor = match kind {
        DocKind::Session => ActorId::from(b"lectern-genesis-session".as_slice()),
        DocKind::Cohort => ActorId::from(b"lectern-genesis-cohort".as_slice()),
        DocKind::Inbox => ActorId::from(b"lectern-genesis-inbox".as_slice()),
        DocKind::Course => ActorId::from(b"lectern-genesis-course".as_slice()),
        DocKind::Flags => ActorId::from(b"lectern-genesis-flags".as_slice()),
    };
    let mut doc = Automerge::new().with_actor(actor);
    let mut tx = doc.transaction();
    for key in top_level(kind) {
        // Invariant: putting a map on ROOT of a fresh document cannot fail.
        tx.put_object(ROOT, *key, ObjType::Map)
            .expect("put a top-level map on a fresh document");
    }
    tx.commit_with(
        CommitOptions::default()
            .with_message(GENESIS_MESSAGE.to_owned())
            .with_time(0),
    );
    doc
}
