//! Poll commands of a session: create (single or multiple choice, rating, open text), vote,
//! close and reveal.
//!
//! A poll's options never change after creation, so a vote is checked against the poll's shape
//! and stored as one encoded string per voter (a register: voting again replaces the vote, and
//! a voter on two nodes at once still counts once).

use automerge::ObjId;
use automerge::transaction::Transaction;

use crate::command::{PollChoice, PollKind, PollSpec};
use crate::limits::{
    OPEN_TEXT_ANSWER_LEN_MAX_CHARS, POLL_OPTION_LEN_MAX_CHARS, POLL_OPTIONS_MAX, POLL_OPTIONS_MIN,
    POLL_QUESTION_LEN_MAX_CHARS, POLLS_PER_SESSION_MAX, RATING_SCALE_MAX, RATING_SCALE_MIN,
};
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection, check_text};
use crate::schema::POLLS;
use crate::view::{PollShape, poll_shape};
use crate::write::{Ctx, Target, check_count, map_or_new, put, put_map, root};

fn find_poll(tx: &Transaction<'_>, id: &str) -> Result<ObjId, Rejection> {
    let r = Reader::now(tx);
    r.root_map(POLLS)
        .and_then(|ps| r.map(&ps, id))
        .ok_or_else(|| Rejection::not_found("poll", id))
}

/// `poll.create` (staff): a new open poll.
pub(crate) fn create(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    spec: &PollSpec,
) -> Result<Target, Rejection> {
    let checked = check_poll(spec)?;
    let polls = root(tx, POLLS)?;
    check_count(ctx.counts, "poll.create", POLLS_PER_SESSION_MAX, "polls")?;
    let p = put_map(tx, &polls, ctx.id.as_str())?;
    put(tx, &p, "question", checked.question)?;
    put(tx, &p, "kind", spec.kind.as_str())?;
    // Options never change after creation: one JSON string, not a list object.
    let options = serde_json::to_string(&checked.options)
        .map_err(|e| Rejection::new(RejectCode::Internal, format!("encode options: {e}")))?;
    put(tx, &p, "options", options)?;
    if let Some(max) = spec.scale_max.filter(|_| spec.kind == PollKind::Rating) {
        put(tx, &p, "scale_max", i64::from(max))?;
    }
    put(tx, &p, "hide_results", spec.hide_results)?;
    put(tx, &p, "state", "open")?;
    put(tx, &p, "revealed", false)?;
    put(tx, &p, "at", ctx.now.as_i64())?;
    put(tx, &p, "by", ctx.user())?;
    put_map(tx, &p, "votes")?;
    Ok(Target::item(ctx.id.as_str()))
}

/// `poll.vote`: the caller's vote on an open poll, replacing any earlier one.
pub(crate) fn vote(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    poll: &str,
    choice: &PollChoice,
) -> Result<Target, Rejection> {
    let p = find_poll(tx, poll)?;
    let encoded = {
        let r = Reader::now(&*tx);
        if r.str(&p, "state").as_deref() != Some("open") {
            return Err(Rejection::new(
                RejectCode::PollClosed,
                format!("poll {poll} is closed"),
            ));
        }
        encode_vote(&poll_shape(&r, &p), choice)?
    };
    let votes = map_or_new(tx, &p, "votes")?;
    put(tx, &votes, ctx.user(), encoded)?;
    Ok(Target::item(poll))
}

/// `poll.close` (staff): no more votes.
pub(crate) fn close(tx: &mut Transaction<'_>, poll: &str) -> Result<Target, Rejection> {
    let p = find_poll(tx, poll)?;
    put(tx, &p, "state", "closed")?;
    Ok(Target::item(poll))
}

/// `poll.reveal` (staff): students see the results of a poll that hid them.
pub(crate) fn reveal(tx: &mut Transaction<'_>, poll: &str) -> Result<Target, Rejection> {
    let p = find_poll(tx, poll)?;
    put(tx, &p, "revealed", true)?;
    Ok(Target::item(poll))
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
fn encode_vote(shape: &PollShape, choice: &PollChoice) -> Result<String, Rejection> {
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
