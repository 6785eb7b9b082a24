//! The progress command of a cohort: `progress.update`, a student's status and score in one
//! lesson.
//!
//! A student sets only the status of their own lessons; staff set anyone's, and scores. Each
//! student's lessons are bounded like a course's, so nobody can grow a cohort's progress (and
//! its aggregates, the dashboard) with invented lessons.

use automerge::transaction::Transaction;

use crate::command::ProgressStatus;
use crate::ids::{LessonId, UserId};
use crate::limits::{LESSONS_PER_STUDENT_MAX, SCORE_MAX_POINTS};
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection};
use crate::schema::PROGRESS;
use crate::write::{Ctx, Target, map_or_new, put, root};

/// Refuses what the caller may not set, or an update that sets nothing or a score out of range.
fn check(
    ctx: &Ctx<'_>,
    student: &UserId,
    status: Option<ProgressStatus>,
    score: Option<u32>,
    max_score: Option<u32>,
) -> Result<(), Rejection> {
    let staff = ctx.caller.role.is_staff();
    if !staff && (student != &ctx.caller.user || score.is_some() || max_score.is_some()) {
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
        (Some(s), Some(m)) if s <= m && m <= SCORE_MAX_POINTS && m > 0 => Ok(()),
        (None, None) => Ok(()),
        _ => Err(Rejection::new(
            RejectCode::InvalidInput,
            format!(
                "a score needs a max_score from 1 to {SCORE_MAX_POINTS} and must not exceed it"
            ),
        )),
    }
}

/// `progress.update`: the caller was authorized as a member of the cohort.
pub(crate) fn update(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    student: &UserId,
    lesson: &LessonId,
    status: Option<ProgressStatus>,
    score: Option<u32>,
    max_score: Option<u32>,
) -> Result<Target, Rejection> {
    check(ctx, student, status, score, max_score)?;
    let progress = root(tx, PROGRESS)?;
    let p = map_or_new(tx, &progress, student.as_str())?;
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
        put(tx, &p, &format!("{l}/score"), i64::from(s))?;
        put(tx, &p, &format!("{l}/max"), i64::from(m))?;
    }
    put(tx, &p, &format!("{l}/at"), ctx.now.as_i64())?;
    Ok(Target {
        target: Some(student.as_str().to_owned()),
        lesson: Some(l.to_owned()),
    })
}
