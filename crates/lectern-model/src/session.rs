//! The session document's commands: one place that checks a command against the session
//! (created? ended? may this caller run it?) and dispatches it to its family (Q&A in `qa.rs`,
//! polls in `poll.rs`, chat and broadcasts in `chat.rs`, attendance in `attendance.rs`); the
//! session's own state (`session.create`, `session.update`) is here.
//!
//! Every function runs inside the command's automerge transaction: a refusal rolls it back, so
//! a refused command leaves no trace.

use automerge::ReadDoc;
use automerge::transaction::Transaction;

use crate::auth::{Caller, Needs, authorize};
use crate::command::{Command, CommandBody, SessionState};
use crate::ids::{CohortId, Millis};
use crate::limits::TITLE_LEN_MAX_CHARS;
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection, check_text};
use crate::schema::META;
use crate::write::{Counts, Ctx, Target, put, root, wrong_document};
use crate::{attendance, chat, poll, qa};

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

fn already_exists() -> Rejection {
    Rejection::new(RejectCode::AlreadyExists, "this session already exists")
}

/// Applies `cmd` to a session document, or refuses it.
pub(crate) fn apply_session(
    tx: &mut Transaction<'_>,
    caller: &Caller,
    cmd: &Command,
    now: Millis,
    counts: &Counts,
) -> Result<Target, Rejection> {
    let ctx = Ctx {
        caller,
        id: &cmd.id,
        now,
        counts,
    };
    let meta = session_meta(tx);
    if let CommandBody::SessionCreate {
        cohort,
        title,
        moderation,
    } = &cmd.body
    {
        if meta.is_some() {
            return Err(already_exists());
        }
        return create(tx, &ctx, cohort, title, *moderation);
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
    dispatch(tx, &ctx, &cmd.body)
}

/// Runs a checked command of a created session in its family.
fn dispatch(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    body: &CommandBody,
) -> Result<Target, Rejection> {
    use CommandBody::*;
    match body {
        // Only a session that exists gets here, and it exists once.
        SessionCreate { .. } => Err(already_exists()),
        SessionUpdate {
            title,
            moderation,
            state,
        } => update(tx, title.as_deref(), *moderation, *state),
        QaAsk { text, anonymous } => qa::ask(tx, ctx, text, *anonymous),
        QaUpvote { question } => qa::vote(tx, ctx, question.as_str(), true),
        QaUnvote { question } => qa::vote(tx, ctx, question.as_str(), false),
        QaAnswer { question, text } => qa::answer(tx, ctx, question.as_str(), text),
        QaPin { question, pinned } => qa::pin(tx, ctx, question.as_str(), *pinned),
        QaDismiss { question } => qa::dismiss(tx, ctx, question.as_str()),
        QaApprove { question } => qa::moderate(tx, ctx, question.as_str(), true),
        QaReject { question } => qa::moderate(tx, ctx, question.as_str(), false),
        PollCreate(spec) => poll::create(tx, ctx, spec),
        PollVote { poll, choice } => poll::vote(tx, ctx, poll.as_str(), choice),
        PollClose { poll } => poll::close(tx, poll.as_str()),
        PollReveal { poll } => poll::reveal(tx, poll.as_str()),
        ChatSend { text } => chat::send(tx, ctx, text),
        ChatDelete { message } => chat::delete(tx, message.as_str()),
        BroadcastSend { text } => chat::broadcast(tx, ctx, text),
        AttendanceJoin => attendance::join(tx, ctx),
        AttendanceLeave => attendance::leave(tx, ctx),
        _ => Err(wrong_document()),
    }
}

/// `session.create`: the session's meta, live.
fn create(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    cohort: &CohortId,
    title: &str,
    moderation: bool,
) -> Result<Target, Rejection> {
    authorize(ctx.caller, cohort, Needs::Instructor)?;
    let title = check_text("title", title, TITLE_LEN_MAX_CHARS)?;
    let m = root(tx, META)?;
    put(tx, &m, "cohort", cohort.as_str())?;
    put(tx, &m, "title", title)?;
    put(tx, &m, "moderation", moderation)?;
    put(tx, &m, "state", "live")?;
    put(tx, &m, "created_at", ctx.now.as_i64())?;
    put(tx, &m, "created_by", ctx.user())?;
    Ok(Target::default())
}

/// `session.update`: a new title, moderation or state (at least one).
fn update(
    tx: &mut Transaction<'_>,
    title: Option<&str>,
    moderation: Option<bool>,
    state: Option<SessionState>,
) -> Result<Target, Rejection> {
    if title.is_none() && moderation.is_none() && state.is_none() {
        return Err(Rejection::new(
            RejectCode::InvalidInput,
            "an update must change the title, moderation or state",
        ));
    }
    let title = title
        .map(|t| check_text("title", t, TITLE_LEN_MAX_CHARS))
        .transpose()?;
    let m = root(tx, META)?;
    if let Some(title) = title {
        put(tx, &m, "title", title)?;
    }
    if let Some(moderation) = moderation {
        put(tx, &m, "moderation", moderation)?;
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
