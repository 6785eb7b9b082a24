//! Validating, authorizing and applying one command inside one automerge transaction.
//!
//! [`apply`] runs inside `Automerge::transact_with`: it reads what it must check, refuses with a
//! [`Rejection`] (the transaction is then rolled back, so a refused command leaves no trace) or
//! writes and returns the [`Target`] that goes into the commit's envelope.

use automerge::transaction::{Transactable, Transaction};
use automerge::{ObjId, ObjType, ReadDoc, ScalarValue};

use crate::Caller;
use crate::auth::{Needs, authorize};
use crate::command::{Command, CommandBody, PollChoice, PollKind, PollSpec, SessionState};
use crate::ids::{CohortId, DocId, Millis};
use crate::limits::*;
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection, check_text};
use crate::schema::*;

/// What a command touched, recorded in its envelope so that events can be derived from the
/// commit alone (on this node and on every replica).
#[derive(Debug, Clone, Default)]
pub(crate) struct Target {
    /// The item: question, poll, message, user, student … (None for document-wide commands).
    pub(crate) target: Option<String>,
    /// The lesson, for progress.
    pub(crate) lesson: Option<String>,
}

impl Target {
    fn item(id: &str) -> Target {
        Target {
            target: Some(id.to_owned()),
            lesson: None,
        }
    }
}

/// Applies `cmd` to the document behind `tx`, or refuses it.
pub(crate) fn apply(
    tx: &mut Transaction<'_>,
    doc_id: &DocId,
    caller: &Caller,
    cmd: &Command,
    now: Millis,
    counts: &Counts,
) -> Result<Target, Rejection> {
    match doc_id {
        DocId::Session(_) => apply_session(tx, caller, cmd, now, counts),
        DocId::Cohort(cohort) => apply_cohort(tx, cohort, caller, cmd, now, counts),
        DocId::Inbox(owner) => crate::notify::apply_inbox(tx, owner, caller, cmd, now, counts),
        DocId::Course(_) => crate::course::apply_course(tx, caller, cmd, now),
    }
}

fn internal(e: automerge::AutomergeError) -> Rejection {
    Rejection::new(RejectCode::Internal, format!("document write failed: {e}"))
}

pub(crate) fn put(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
    value: impl Into<ScalarValue>,
) -> Result<(), Rejection> {
    tx.put(obj, key, value).map_err(internal)
}

pub(crate) fn put_map(
    tx: &mut Transaction<'_>,
    obj: &ObjId,
    key: &str,
) -> Result<ObjId, Rejection> {
    tx.put_object(obj, key, ObjType::Map).map_err(internal)
}

pub(crate) fn root(tx: &Transaction<'_>, key: &str) -> Result<ObjId, Rejection> {
    Reader::now(tx).root_map(key).ok_or_else(|| {
        Rejection::new(
            RejectCode::Internal,
            format!("document has no top-level `{key}` map"),
        )
    })
}

/// How many commands of each kind the document holds (from its envelopes), in all and per
/// user for the kinds with a per-user quota, kept by the replica so that a limit check costs a
/// hash lookup, not a walk of the map it limits.
#[derive(Debug, Default)]
pub(crate) struct Counts {
    by_command: std::collections::HashMap<String, usize>,
    /// `(command, user)` → count, for [`PER_USER_QUOTA_COMMANDS`] only.
    by_user: std::collections::HashMap<(String, String), usize>,
}

/// The commands counted per user (each has a per-user quota in a session).
const PER_USER_QUOTA_COMMANDS: [&str; 3] = ["qa.ask", "chat.send", "attendance.join"];

impl Counts {
    /// Counts one command `cmd` by `user`.
    pub(crate) fn count(&mut self, cmd: String, user: &str) {
        if PER_USER_QUOTA_COMMANDS.contains(&cmd.as_str()) {
            *self
                .by_user
                .entry((cmd.clone(), user.to_owned()))
                .or_default() += 1;
        }
        *self.by_command.entry(cmd).or_default() += 1;
    }

    fn of(&self, cmd: &str) -> usize {
        self.by_command.get(cmd).copied().unwrap_or(0)
    }

    fn of_user(&self, cmd: &str, user: &str) -> usize {
        self.by_user
            .get(&(cmd.to_owned(), user.to_owned()))
            .copied()
            .unwrap_or(0)
    }
}

pub(crate) fn check_count(
    counts: &Counts,
    cmd: &str,
    max: usize,
    what: &str,
) -> Result<(), Rejection> {
    let n = counts.of(cmd);
    if n >= max {
        return Err(Rejection::new(
            RejectCode::LimitReached,
            format!("this document already holds {n} {what}, the limit is {max}"),
        ));
    }
    Ok(())
}

/// Refuses `user`'s next `cmd` once they have `max` of them here: one person cannot use up a
/// session's shared limit (staff are not held to it).
fn check_user_count(
    counts: &Counts,
    cmd: &str,
    caller: &Caller,
    max: usize,
    what: &str,
) -> Result<(), Rejection> {
    if caller.role.is_staff() {
        return Ok(());
    }
    let n = counts.of_user(cmd, caller.user.as_str());
    if n >= max {
        return Err(Rejection::new(
            RejectCode::LimitReached,
            format!("you already have {n} {what} here, the limit per person is {max}"),
        ));
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Session documents
// ---------------------------------------------------------------------------------------------

struct SessionMeta {
    cohort: CohortId,
    ended: bool,
}

fn session_meta(tx: &Transaction<'_>) -> Option<SessionMeta> {
    let r = Reader::now(tx);
    let meta = r.root_map(META)?;
    let cohort = CohortId::new(r.str(&meta, "cohort")?).ok()?;
    let ended = r.str(&meta, "state").as_deref() == Some("ended");
    Some(SessionMeta { cohort, ended })
}

/// The cohort recorded in a session document's meta (`None` before `session.create`).
pub(crate) fn session_cohort<D: ReadDoc>(doc: &D) -> Option<CohortId> {
    let r = Reader::now(doc);
    let meta = r.root_map(META)?;
    CohortId::new(r.str(&meta, "cohort")?).ok()
}

/// Whether a session whose document names `owner` as its cohort may be linked into `cohort`'s
/// document: only a session that exists and is of the same cohort, so a link can never widen
/// what a cohort's staff read (the dashboard) or what the share policy sends to a classroom node.
/// The cohort document cannot see the session's, so whoever holds both (the gateway, before
/// running `session.link`) asks this.
pub fn check_session_link(cohort: &CohortId, owner: Option<&CohortId>) -> Result<(), Rejection> {
    match owner {
        None => Err(Rejection::new(
            RejectCode::DocNotFound,
            "no such session to link",
        )),
        Some(o) if o == cohort => Ok(()),
        Some(_) => Err(Rejection::new(
            RejectCode::WrongCohort,
            "the session belongs to another cohort",
        )),
    }
}

fn session_needs(body: &CommandBody) -> Needs {
    use CommandBody::*;
    match body {
        SessionCreate { .. } | SessionUpdate { .. } | BroadcastSend { .. } => Needs::Instructor,
        QaAnswer { .. }
        | QaPin { .. }
        | QaDismiss { .. }
        | QaApprove { .. }
        | QaReject { .. }
        | PollCreate(_)
        | PollClose { .. }
        | PollReveal { .. }
        | ChatDelete { .. } => Needs::Staff,
        _ => Needs::Member,
    }
}

/// Commands a session that has ended refuses.
fn refused_when_ended(body: &CommandBody) -> bool {
    use CommandBody::*;
    matches!(
        body,
        QaAsk { .. }
            | QaUpvote { .. }
            | QaUnvote { .. }
            | PollCreate(_)
            | PollVote { .. }
            | ChatSend { .. }
    )
}

fn apply_session(
    tx: &mut Transaction<'_>,
    caller: &Caller,
    cmd: &Command,
    now: Millis,
    counts: &Counts,
) -> Result<Target, Rejection> {
    let meta = session_meta(tx);
    if let CommandBody::SessionCreate {
        cohort,
        title,
        moderation,
    } = &cmd.body
    {
        if meta.is_some() {
            return Err(Rejection::new(
                RejectCode::AlreadyExists,
                "this session already exists",
            ));
        }
        authorize(caller, cohort, Needs::Instructor)?;
        let title = check_text("title", title, TITLE_LEN_MAX_CHARS)?;
        let m = root(tx, META)?;
        put(tx, &m, "cohort", cohort.as_str())?;
        put(tx, &m, "title", title)?;
        put(tx, &m, "moderation", *moderation)?;
        put(tx, &m, "state", "live")?;
        put(tx, &m, "created_at", now.as_i64())?;
        put(tx, &m, "created_by", caller.user.as_str())?;
        return Ok(Target::default());
    }
    let Some(meta) = meta else {
        return Err(Rejection::new(
            RejectCode::DocNotFound,
            "no such session (it was never created)",
        ));
    };
    authorize(caller, &meta.cohort, session_needs(&cmd.body))?;
    if meta.ended && refused_when_ended(&cmd.body) {
        return Err(Rejection::new(
            RejectCode::SessionEnded,
            "this session has ended",
        ));
    }
    let staff = caller.role.is_staff();
    let user = caller.user.as_str();
    match &cmd.body {
        CommandBody::SessionCreate { .. } => unreachable!("handled above"),
        CommandBody::SessionUpdate {
            title,
            moderation,
            state,
        } => {
            if title.is_none() && moderation.is_none() && state.is_none() {
                return Err(Rejection::new(
                    RejectCode::InvalidInput,
                    "an update must change the title, moderation or state",
                ));
            }
            let title = title
                .as_deref()
                .map(|t| check_text("title", t, TITLE_LEN_MAX_CHARS))
                .transpose()?;
            let m = root(tx, META)?;
            if let Some(title) = title {
                put(tx, &m, "title", title)?;
            }
            if let Some(moderation) = moderation {
                put(tx, &m, "moderation", *moderation)?;
            }
            if let Some(state) = state {
                let s = match state {
                    SessionState::Live => "live",
                    SessionState::Ended => "ended",
                };
                put(tx, &m, "state", s)?;
            }
            Ok(Target::default())
        }
        CommandBody::QaAsk { text, anonymous } => {
            let text = check_text("question", text, QUESTION_LEN_MAX_CHARS)?;
            let questions = root(tx, QUESTIONS)?;
            check_count(counts, "qa.ask", QUESTIONS_PER_SESSION_MAX, "questions")?;
            check_user_count(
                counts,
                "qa.ask",
                caller,
                QUESTIONS_PER_USER_PER_SESSION_MAX,
                "questions",
            )?;
            let moderated = {
                let r = Reader::now(&*tx);
                let m = root(tx, META)?;
                r.bool(&m, "moderation").unwrap_or(false)
            };
            // Staff questions skip the queue: they are the moderators.
            let status = if moderated && !staff {
                Q_PENDING
            } else {
                Q_VISIBLE
            };
            let q = put_map(tx, &questions, cmd.id.as_str())?;
            put(tx, &q, "text", text)?;
            put(tx, &q, "author", user)?;
            put(tx, &q, "author_name", caller.display_name())?;
            put(tx, &q, "anonymous", *anonymous)?;
            put(tx, &q, "status", status)?;
            put(tx, &q, "at", now.as_i64())?;
            put(tx, &q, "pinned", false)?;
            put_map(tx, &q, "voters")?;
            Ok(Target::item(cmd.id.as_str()))
        }
        CommandBody::QaUpvote { question } | CommandBody::QaUnvote { question } => {
            let q = find_question(tx, question.as_str(), caller)?;
            let voters = Reader::now(&*tx).map(&q, "voters");
            let voters = match voters {
                Some(v) => v,
                None => put_map(tx, &q, "voters")?,
            };
            // A vote is a register per user, true or false: upvote and unvote are both
            // idempotent, and a user voting on two nodes at once still counts once.
            let up = matches!(cmd.body, CommandBody::QaUpvote { .. });
            put(tx, &voters, user, up)?;
            Ok(Target::item(question.as_str()))
        }
        CommandBody::QaAnswer { question, text } => {
            let text = check_text("answer", text, ANSWER_LEN_MAX_CHARS)?;
            let q = find_question(tx, question.as_str(), caller)?;
            put(tx, &q, "answer", text)?;
            put(tx, &q, "answer_by", user)?;
            put(tx, &q, "answer_by_name", caller.display_name())?;
            put(tx, &q, "answer_at", now.as_i64())?;
            Ok(Target::item(question.as_str()))
        }
        CommandBody::QaPin { question, pinned } => {
            let q = find_question(tx, question.as_str(), caller)?;
            put(tx, &q, "pinned", *pinned)?;
            Ok(Target::item(question.as_str()))
        }
        CommandBody::QaDismiss { question } => {
            let q = find_question(tx, question.as_str(), caller)?;
            put(tx, &q, "status", Q_DISMISSED)?;
            put(tx, &q, "pinned", false)?;
            Ok(Target::item(question.as_str()))
        }
        CommandBody::QaApprove { question } | CommandBody::QaReject { question } => {
            let q = find_question(tx, question.as_str(), caller)?;
            let status = Reader::now(&*tx).str(&q, "status");
            if status.as_deref() != Some(Q_PENDING) {
                return Err(Rejection::new(
                    RejectCode::InvalidInput,
                    format!("question {question} is not waiting for moderation"),
                ));
            }
            let to = if matches!(cmd.body, CommandBody::QaApprove { .. }) {
                Q_VISIBLE
            } else {
                Q_REJECTED
            };
            put(tx, &q, "status", to)?;
            Ok(Target::item(question.as_str()))
        }
        CommandBody::PollCreate(spec) => {
            let checked = check_poll(spec)?;
            let polls = root(tx, POLLS)?;
            check_count(counts, "poll.create", POLLS_PER_SESSION_MAX, "polls")?;
            let p = put_map(tx, &polls, cmd.id.as_str())?;
            put(tx, &p, "question", checked.question)?;
            put(tx, &p, "kind", spec.kind.as_str())?;
            // Options never change after creation: one JSON string, not a list object.
            let options = serde_json::to_string(&checked.options).map_err(|e| {
                Rejection::new(RejectCode::Internal, format!("encode options: {e}"))
            })?;
            put(tx, &p, "options", options)?;
            if let Some(max) = spec.scale_max.filter(|_| spec.kind == PollKind::Rating) {
                put(tx, &p, "scale_max", i64::from(max))?;
            }
            put(tx, &p, "hide_results", spec.hide_results)?;
            put(tx, &p, "state", "open")?;
            put(tx, &p, "revealed", false)?;
            put(tx, &p, "at", now.as_i64())?;
            put(tx, &p, "by", user)?;
            put_map(tx, &p, "votes")?;
            Ok(Target::item(cmd.id.as_str()))
        }
        CommandBody::PollVote { poll, choice } => {
            let p = find_poll(tx, poll.as_str())?;
            let r = Reader::now(&*tx);
            if r.str(&p, "state").as_deref() != Some("open") {
                return Err(Rejection::new(
                    RejectCode::PollClosed,
                    format!("poll {poll} is closed"),
                ));
            }
            let info = crate::view::poll_shape(&r, &p);
            let encoded = encode_vote(&info, choice)?;
            let votes = r.map(&p, "votes");
            let votes = match votes {
                Some(v) => v,
                None => put_map(tx, &p, "votes")?,
            };
            put(tx, &votes, user, encoded)?;
            Ok(Target::item(poll.as_str()))
        }
        CommandBody::PollClose { poll } => {
            let p = find_poll(tx, poll.as_str())?;
            put(tx, &p, "state", "closed")?;
            Ok(Target::item(poll.as_str()))
        }
        CommandBody::PollReveal { poll } => {
            let p = find_poll(tx, poll.as_str())?;
            put(tx, &p, "revealed", true)?;
            Ok(Target::item(poll.as_str()))
        }
        CommandBody::ChatSend { text } => {
            let text = check_text("message", text, CHAT_LEN_MAX_CHARS)?;
            let chat = root(tx, CHAT)?;
            check_count(
                counts,
                "chat.send",
                CHAT_MESSAGES_PER_SESSION_MAX,
                "chat messages",
            )?;
            check_user_count(
                counts,
                "chat.send",
                caller,
                CHAT_MESSAGES_PER_USER_PER_SESSION_MAX,
                "chat messages",
            )?;
            let m = put_map(tx, &chat, cmd.id.as_str())?;
            put(tx, &m, "text", text)?;
            put(tx, &m, "author", user)?;
            put(tx, &m, "author_name", caller.display_name())?;
            put(tx, &m, "at", now.as_i64())?;
            put(tx, &m, "deleted", false)?;
            Ok(Target::item(cmd.id.as_str()))
        }
        CommandBody::ChatDelete { message } => {
            let chat = root(tx, CHAT)?;
            let m = Reader::now(&*tx)
                .map(&chat, message.as_str())
                .ok_or_else(|| Rejection::not_found("chat message", message.as_str()))?;
            put(tx, &m, "deleted", true)?;
            Ok(Target::item(message.as_str()))
        }
        CommandBody::BroadcastSend { text } => {
            let text = check_text("broadcast", text, BROADCAST_LEN_MAX_CHARS)?;
            let b = root(tx, BROADCASTS)?;
            check_count(
                counts,
                "broadcast.send",
                BROADCASTS_PER_SESSION_MAX,
                "broadcasts",
            )?;
            let m = put_map(tx, &b, cmd.id.as_str())?;
            put(tx, &m, "text", text)?;
            put(tx, &m, "by", user)?;
            put(tx, &m, "by_name", caller.display_name())?;
            put(tx, &m, "at", now.as_i64())?;
            Ok(Target::item(cmd.id.as_str()))
        }
        CommandBody::AttendanceJoin => {
            let att = root(tx, ATTENDANCE)?;
            check_count(counts, "attendance.join", VISITS_PER_SESSION_MAX, "visits")?;
            check_user_count(
                counts,
                "attendance.join",
                caller,
                VISITS_PER_USER_PER_SESSION_MAX,
                "visits",
            )?;
            // Keyed `{user}/{visit}` so one user's visits are one range scan.
            let v = put_map(tx, &att, &format!("{user}/{}", cmd.id))?;
            put(tx, &v, "user", user)?;
            put(tx, &v, "name", caller.display_name())?;
            put(tx, &v, "join_at", now.as_i64())?;
            Ok(Target::item(user))
        }
        CommandBody::AttendanceLeave => {
            let att = root(tx, ATTENDANCE)?;
            let open: Vec<ObjId> = {
                let r = Reader::now(&*tx);
                r.keys_under(&att, user)
                    .iter()
                    .filter_map(|k| r.map(&att, k))
                    .filter(|v| r.int(v, "leave_at").is_none())
                    .collect()
            };
            if open.is_empty() {
                return Err(Rejection::new(
                    RejectCode::NotFound,
                    "you have not joined this session",
                ));
            }
            for v in open {
                put(tx, &v, "leave_at", now.as_i64())?;
            }
            Ok(Target::item(user))
        }
        _ => Err(wrong_document()),
    }
}

fn wrong_document() -> Rejection {
    Rejection::new(
        RejectCode::WrongDocument,
        "this command does not apply to this kind of document",
    )
}

/// A question the caller may act on: staff see every question; a student sees visible ones
/// and their own.
fn find_question(tx: &Transaction<'_>, id: &str, caller: &Caller) -> Result<ObjId, Rejection> {
    let r = Reader::now(tx);
    let q = r
        .root_map(QUESTIONS)
        .and_then(|qs| r.map(&qs, id))
        .ok_or_else(|| Rejection::not_found("question", id))?;
    if !caller.role.is_staff() {
        let visible = r.str(&q, "status").as_deref() == Some(Q_VISIBLE);
        let own = r.str(&q, "author").as_deref() == Some(caller.user.as_str());
        if !(visible || own) {
            return Err(Rejection::not_found("question", id));
        }
    }
    Ok(q)
}

fn find_poll(tx: &Transaction<'_>, id: &str) -> Result<ObjId, Rejection> {
    let r = Reader::now(tx);
    r.root_map(POLLS)
        .and_then(|ps| r.map(&ps, id))
        .ok_or_else(|| Rejection::not_found("poll", id))
}

struct CheckedPoll {
    question: String,
    options: Vec<String>,
}

fn check_poll(spec: &PollSpec) -> Result<CheckedPoll, Rejection> {
    let question = check_text("poll question", &spec.question, POLL_QUESTION_LEN_MAX_CHARS)?;
    let invalid = |m: String| Rejection::new(RejectCode::InvalidPoll, m);
    let options = match spec.kind {
        PollKind::Single | PollKind::Multiple => {
            let n = spec.options.len();
            if !(POLL_OPTIONS_MIN..=POLL_OPTIONS_MAX).contains(&n) {
                return Err(invalid(format!(
                    "a choice poll has {POLL_OPTIONS_MIN} to {POLL_OPTIONS_MAX} options, not {n}"
                )));
            }
            spec.options
                .iter()
                .map(|o| check_text("poll option", o, POLL_OPTION_LEN_MAX_CHARS))
                .collect::<Result<Vec<_>, _>>()?
        }
        PollKind::Rating => {
            let max = spec.scale_max.unwrap_or(0);
            if !(RATING_SCALE_MIN..=RATING_SCALE_MAX).contains(&max) {
                return Err(invalid(format!(
                    "a rating poll needs scale_max from {RATING_SCALE_MIN} to {RATING_SCALE_MAX}"
                )));
            }
            if !spec.options.is_empty() {
                return Err(invalid("a rating poll has no options".into()));
            }
            Vec::new()
        }
        PollKind::OpenText => {
            if !spec.options.is_empty() {
                return Err(invalid("an open-text poll has no options".into()));
            }
            Vec::new()
        }
    };
    Ok(CheckedPoll { question, options })
}

/// Checks a vote against the poll and encodes it as the string stored in `votes`.
fn encode_vote(shape: &crate::view::PollShape, choice: &PollChoice) -> Result<String, Rejection> {
    let out_of_range = |i: u32| {
        Rejection::new(
            RejectCode::OptionOutOfRange,
            format!("option {i} is out of range for this poll"),
        )
    };
    let n = u32::try_from(shape.options.len()).unwrap_or(u32::MAX);
    match (shape.kind, choice) {
        (PollKind::Single, PollChoice::Single(i)) => {
            if *i >= n {
                return Err(out_of_range(*i));
            }
            Ok(i.to_string())
        }
        (PollKind::Multiple, PollChoice::Multiple(list)) => {
            if list.is_empty() {
                return Err(Rejection::new(
                    RejectCode::InvalidVote,
                    "pick at least one option",
                ));
            }
            let mut sorted = list.clone();
            sorted.sort_unstable();
            sorted.dedup();
            if sorted.len() != list.len() {
                return Err(Rejection::new(
                    RejectCode::InvalidVote,
                    "an option is picked twice",
                ));
            }
            if let Some(bad) = sorted.iter().find(|i| **i >= n) {
                return Err(out_of_range(*bad));
            }
            Ok(sorted
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","))
        }
        (PollKind::Rating, PollChoice::Rating(v)) => {
            if *v < 1 || *v > shape.scale_max {
                return Err(out_of_range(*v));
            }
            Ok(v.to_string())
        }
        (PollKind::OpenText, PollChoice::Text(t)) => {
            check_text("answer", t, OPEN_TEXT_ANSWER_LEN_MAX_CHARS)
        }
        (kind, _) => Err(Rejection::new(
            RejectCode::InvalidVote,
            format!("this is a {} poll; the vote does not fit it", kind.as_str()),
        )),
    }
}

// ---------------------------------------------------------------------------------------------
// Cohort documents
// ---------------------------------------------------------------------------------------------

fn cohort_exists(tx: &Transaction<'_>) -> bool {
    let r = Reader::now(tx);
    r.root_map(META).and_then(|m| r.str(&m, "title")).is_some()
}

fn apply_cohort(
    tx: &mut Transaction<'_>,
    cohort: &CohortId,
    caller: &Caller,
    cmd: &Command,
    now: Millis,
    counts: &Counts,
) -> Result<Target, Rejection> {
    if let CommandBody::CohortCreate {
        course,
        title,
        home_region,
    } = &cmd.body
    {
        if cohort_exists(tx) {
            return Err(Rejection::new(
                RejectCode::AlreadyExists,
                "this cohort already exists",
            ));
        }
        authorize(caller, cohort, Needs::Admin)?;
        let course = check_text("course", course, TITLE_LEN_MAX_CHARS)?;
        let title = check_text("title", title, TITLE_LEN_MAX_CHARS)?;
        if home_region.chars().count() > ID_LEN_MAX_BYTES {
            return Err(Rejection::new(
                RejectCode::TextTooLong,
                "home_region is too long",
            ));
        }
        let m = root(tx, META)?;
        put(tx, &m, "course", course)?;
        put(tx, &m, "title", title)?;
        put(tx, &m, "home_region", home_region.trim())?;
        put(tx, &m, "created_at", now.as_i64())?;
        return Ok(Target::default());
    }
    if !cohort_exists(tx) {
        return Err(Rejection::new(
            RejectCode::DocNotFound,
            "no such cohort (it was never created)",
        ));
    }
    match &cmd.body {
        CommandBody::RosterAdd { user, role, name } => {
            authorize(caller, cohort, Needs::Instructor)?;
            let name = check_text("name", name, DISPLAY_NAME_LEN_MAX_CHARS)?;
            let roster = root(tx, ROSTER)?;
            let existing = Reader::now(&*tx).map(&roster, user.as_str());
            let e = match existing {
                Some(e) => e,
                None => put_map(tx, &roster, user.as_str())?,
            };
            put(tx, &e, "role", role.as_str())?;
            put(tx, &e, "name", name)?;
            put(tx, &e, "removed", false)?;
            put(tx, &e, "at", now.as_i64())?;
            Ok(Target::item(user.as_str()))
        }
        CommandBody::RosterRemove { user } => {
            authorize(caller, cohort, Needs::Instructor)?;
            let roster = root(tx, ROSTER)?;
            let e = Reader::now(&*tx)
                .map(&roster, user.as_str())
                .ok_or_else(|| Rejection::not_found("roster entry", user.as_str()))?;
            put(tx, &e, "removed", true)?;
            put(tx, &e, "at", now.as_i64())?;
            Ok(Target::item(user.as_str()))
        }
        CommandBody::ProgressUpdate {
            student,
            lesson,
            status,
            score,
            max_score,
        } => {
            authorize(caller, cohort, Needs::Member)?;
            let staff = caller.role.is_staff();
            if !staff && (student != &caller.user || score.is_some() || max_score.is_some()) {
                return Err(Rejection::new(
                    RejectCode::Forbidden,
                    "a student may only set the status of their own lessons",
                ));
            }
            if status.is_none() && score.is_none() {
                return Err(Rejection::new(
                    RejectCode::InvalidInput,
                    "a progress update needs a status or a score",
                ));
            }
            match (score, max_score) {
                (Some(s), Some(m)) if s <= m && *m <= SCORE_MAX_POINTS && *m > 0 => {}
                (None, None) => {}
                _ => {
                    return Err(Rejection::new(
                        RejectCode::InvalidInput,
                        format!(
                            "a score needs a max_score from 1 to {SCORE_MAX_POINTS} and must not exceed it"
                        ),
                    ));
                }
            }
            let progress = root(tx, PROGRESS)?;
            let existing = Reader::now(&*tx).map(&progress, student.as_str());
            let p = match existing {
                Some(p) => p,
                None => put_map(tx, &progress, student.as_str())?,
            };
            let l = lesson.as_str();
            // A student's lessons are bounded like a course's: nobody can grow a cohort's
            // progress (and its aggregates, the dashboard) with invented lessons.
            let (known, lessons) = {
                let r = Reader::now(&*tx);
                let keys = r.keys(&p);
                let at = format!("{l}/at");
                let lessons = keys.iter().filter(|k| k.ends_with("/at")).count();
                (keys.contains(&at), lessons)
            };
            if !known && lessons >= LESSONS_PER_STUDENT_MAX {
                return Err(Rejection::new(
                    RejectCode::LimitReached,
                    format!(
                        "{student} already has progress in {lessons} lessons, the limit is {LESSONS_PER_STUDENT_MAX}"
                    ),
                ));
            }
            if let Some(status) = status {
                put(tx, &p, &format!("{l}/status"), status.as_str())?;
            }
            if let (Some(s), Some(m)) = (score, max_score) {
                put(tx, &p, &format!("{l}/score"), i64::from(*s))?;
                put(tx, &p, &format!("{l}/max"), i64::from(*m))?;
            }
            put(tx, &p, &format!("{l}/at"), now.as_i64())?;
            Ok(Target {
                target: Some(student.as_str().to_owned()),
                lesson: Some(l.to_owned()),
            })
        }
        CommandBody::AnnouncementPost { title, body } => {
            authorize(caller, cohort, Needs::Instructor)?;
            let title = check_text("title", title, TITLE_LEN_MAX_CHARS)?;
            let body = check_text("body", body, ANNOUNCEMENT_LEN_MAX_CHARS)?;
            let anns = root(tx, ANNOUNCEMENTS)?;
            check_count(
                counts,
                "announcement.post",
                ANNOUNCEMENTS_PER_COHORT_MAX,
                "announcements",
            )?;
            let a = put_map(tx, &anns, cmd.id.as_str())?;
            put(tx, &a, "title", title)?;
            put(tx, &a, "body", body)?;
            put(tx, &a, "by", caller.user.as_str())?;
            put(tx, &a, "by_name", caller.display_name())?;
            put(tx, &a, "at", now.as_i64())?;
            Ok(Target::item(cmd.id.as_str()))
        }
        CommandBody::LeaderboardPrivacy { anonymous } => {
            authorize(caller, cohort, Needs::Member)?;
            let roster = root(tx, ROSTER)?;
            let e = Reader::now(&*tx)
                .map(&roster, caller.user.as_str())
                .ok_or_else(|| {
                    Rejection::new(RejectCode::NotFound, "you are not on this cohort's roster")
                })?;
            put(tx, &e, crate::board::LEADERBOARD_ANONYMOUS, *anonymous)?;
            Ok(Target::item(caller.user.as_str()))
        }
        CommandBody::SessionLink { session, title } => {
            authorize(caller, cohort, Needs::Instructor)?;
            let title = check_text("title", title, TITLE_LEN_MAX_CHARS)?;
            let sessions = root(tx, SESSIONS)?;
            let existing = Reader::now(&*tx).map(&sessions, session.as_str());
            let s = match existing {
                Some(s) => s,
                None => put_map(tx, &sessions, session.as_str())?,
            };
            put(tx, &s, "title", title)?;
            put(tx, &s, "at", now.as_i64())?;
            Ok(Target::item(session.as_str()))
        }
        _ => Err(wrong_document()),
    }
}
