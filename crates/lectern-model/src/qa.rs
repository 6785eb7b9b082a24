//! Q&A commands of a session: ask, vote, answer, pin, dismiss, and moderation (approve or
//! reject a question waiting in the queue of a moderated session).
//!
//! The session's checks (created, not ended, the caller's role) ran before these
//! (`session.rs`); what is left is the question's own: its text, the session's limits, and
//! whether the caller may see the question they act on.

use automerge::transaction::Transaction;
use automerge::{ObjId, ScalarValue};

use crate::auth::Caller;
use crate::limits::{
    ANSWER_LEN_MAX_CHARS, QUESTION_LEN_MAX_CHARS, QUESTIONS_PER_SESSION_MAX,
    QUESTIONS_PER_USER_PER_SESSION_MAX,
};
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection, check_text};
use crate::schema::{META, Q_DISMISSED, Q_PENDING, Q_REJECTED, Q_VISIBLE, QUESTIONS};
use crate::write::{Ctx, Target, check_count, check_user_count, map_or_new, put, put_map, root};

/// Every copy of a question the caller may act on ([`Reader::copies`]: the one that reads
/// first; more than one only if two nodes applied its `qa.ask` before they met). Staff see
/// every question; a student sees visible ones and their own. A change of a field is written
/// to each copy, so that it is the field's last write in every copy (`Question::read` reads
/// each field from the copy that wrote it last; automerge makes no operation for a value a copy
/// already holds, so writing the reading copy alone could leave an older write on another copy
/// last).
fn find_question(tx: &Transaction<'_>, id: &str, caller: &Caller) -> Result<Vec<ObjId>, Rejection> {
    let r = Reader::now(tx);
    let copies = r
        .root_map(QUESTIONS)
        .map(|qs| r.copies(&qs, id))
        .unwrap_or_default();
    let q = copies
        .first()
        .ok_or_else(|| Rejection::not_found("question", id))?;
    if !caller.role.is_staff() {
        let visible = status(&r, &copies).as_deref() == Some(Q_VISIBLE);
        let own = r.str(q, "author").as_deref() == Some(caller.user.as_str());
        if !(visible || own) {
            return Err(Rejection::not_found("question", id));
        }
    }
    Ok(copies)
}

/// A question's status: its last write in any copy.
fn status<D: automerge::ReadDoc>(r: &Reader<'_, D>, copies: &[ObjId]) -> Option<String> {
    r.latest(copies, "status").and_then(|c| r.str(c, "status"))
}

/// Sets `key` to `value` on every copy of a question.
fn put_each(
    tx: &mut Transaction<'_>,
    copies: &[ObjId],
    key: &str,
    value: impl Into<ScalarValue> + Clone,
) -> Result<(), Rejection> {
    for copy in copies {
        put(tx, copy, key, value.clone())?;
    }
    Ok(())
}

/// `qa.ask`: a new question, waiting for moderation if the session is moderated.
pub(crate) fn ask(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    text: &str,
    anonymous: bool,
) -> Result<Target, Rejection> {
    let text = check_text("question", text, QUESTION_LEN_MAX_CHARS)?;
    let questions = root(tx, QUESTIONS)?;
    check_count(ctx.counts, "qa.ask", QUESTIONS_PER_SESSION_MAX, "questions")?;
    check_user_count(
        ctx.counts,
        "qa.ask",
        ctx.caller,
        QUESTIONS_PER_USER_PER_SESSION_MAX,
        "questions",
    )?;
    let moderated = {
        let r = Reader::now(&*tx);
        let m = root(tx, META)?;
        r.bool(&m, "moderation").unwrap_or(false)
    };
    // Staff questions skip the queue: they are the moderators.
    let status = if moderated && !ctx.caller.role.is_staff() {
        Q_PENDING
    } else {
        Q_VISIBLE
    };
    let q = put_map(tx, &questions, ctx.id.as_str())?;
    put(tx, &q, "text", text)?;
    put(tx, &q, "author", ctx.user())?;
    put(tx, &q, "author_name", ctx.caller.display_name())?;
    put(tx, &q, "anonymous", anonymous)?;
    put(tx, &q, "status", status)?;
    put(tx, &q, "at", ctx.now.as_i64())?;
    put(tx, &q, "pinned", false)?;
    put_map(tx, &q, "voters")?;
    Ok(Target::item(ctx.id.as_str()))
}

/// `qa.upvote` (`up`) and `qa.unvote`.
pub(crate) fn vote(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    question: &str,
    up: bool,
) -> Result<Target, Rejection> {
    // Votes go to the copy that reads; the voters of every copy are merged when read.
    let copies = find_question(tx, question, ctx.caller)?;
    let voters = map_or_new(tx, &copies[0], "voters")?;
    // A vote is a register per user, true or false: upvote and unvote are both
    // idempotent, and a user voting on two nodes at once still counts once.
    put(tx, &voters, ctx.user(), up)?;
    Ok(Target::item(question))
}

/// `qa.answer` (staff).
pub(crate) fn answer(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    question: &str,
    text: &str,
) -> Result<Target, Rejection> {
    let text = check_text("answer", text, ANSWER_LEN_MAX_CHARS)?;
    let q = find_question(tx, question, ctx.caller)?;
    put_each(tx, &q, "answer", text)?;
    put_each(tx, &q, "answer_by", ctx.user())?;
    put_each(tx, &q, "answer_by_name", ctx.caller.display_name())?;
    put_each(tx, &q, "answer_at", ctx.now.as_i64())?;
    Ok(Target::item(question))
}

/// `qa.pin` (staff): pins or unpins.
pub(crate) fn pin(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    question: &str,
    pinned: bool,
) -> Result<Target, Rejection> {
    let q = find_question(tx, question, ctx.caller)?;
    put_each(tx, &q, "pinned", pinned)?;
    Ok(Target::item(question))
}

/// `qa.dismiss` (staff): hides the question from students (and unpins it).
pub(crate) fn dismiss(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    question: &str,
) -> Result<Target, Rejection> {
    let q = find_question(tx, question, ctx.caller)?;
    put_each(tx, &q, "status", Q_DISMISSED)?;
    put_each(tx, &q, "pinned", false)?;
    Ok(Target::item(question))
}

/// `qa.approve` (`approve`) and `qa.reject` (staff): only a question waiting for moderation.
pub(crate) fn moderate(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    question: &str,
    approve: bool,
) -> Result<Target, Rejection> {
    let q = find_question(tx, question, ctx.caller)?;
    if status(&Reader::now(&*tx), &q).as_deref() != Some(Q_PENDING) {
        return Err(Rejection::new(
            RejectCode::InvalidInput,
            format!("question {question} is not waiting for moderation"),
        ));
    }
    let to = if approve { Q_VISIBLE } else { Q_REJECTED };
    put_each(tx, &q, "status", to)?;
    Ok(Target::item(question))
}
