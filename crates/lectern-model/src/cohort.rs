//! The cohort document's commands: one place that checks a command against the cohort
//! (created? may this caller run it?) and dispatches it: `cohort.create`, the roster, a
//! student's leaderboard privacy, announcements, session links and the course link are here; progress is in
//! `progress.rs`.
//!
//! Every function runs inside the command's automerge transaction: a refusal rolls it back, so
//! a refused command leaves no trace.

use automerge::transaction::Transaction;

use crate::auth::{Caller, Needs, Role, authorize};
use crate::command::{Command, CommandBody};
use crate::ids::{CohortId, CourseId, Millis, SessionId, UserId};
use crate::limits::{
    ANNOUNCEMENT_LEN_MAX_CHARS, ANNOUNCEMENTS_PER_COHORT_MAX, DISPLAY_NAME_LEN_MAX_CHARS,
    ID_LEN_MAX_BYTES, TITLE_LEN_MAX_CHARS,
};
use crate::progress;
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection, check_text};
use crate::schema::{ANNOUNCEMENTS, LEADERBOARD_ANONYMOUS, META, ROSTER, SESSIONS};
use crate::write::{
    Counts, Ctx, Target, check_count, map_or_new, put, put_map, root, wrong_document,
};

fn cohort_exists(tx: &Transaction<'_>) -> bool {
    let r = Reader::now(tx);
    r.root_map(META).and_then(|m| r.str(&m, "title")).is_some()
}

/// The role a command of a created cohort needs (`None`: not a cohort command).
fn cohort_needs(body: &CommandBody) -> Option<Needs> {
    use CommandBody::*;
    match body {
        RosterAdd { .. }
        | RosterRemove { .. }
        | AnnouncementPost { .. }
        | SessionLink { .. }
        | CohortCourse { .. } => Some(Needs::Instructor),
        ProgressUpdate { .. } | LeaderboardPrivacy { .. } => Some(Needs::Member),
        _ => None,
    }
}

/// Applies `cmd` to the document of `cohort`, or refuses it.
pub(crate) fn apply_cohort(
    tx: &mut Transaction<'_>,
    cohort: &CohortId,
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
        return create(tx, &ctx, course, title, home_region);
    }
    if !cohort_exists(tx) {
        return Err(Rejection::new(
            RejectCode::DocNotFound,
            "no such cohort (it was never created)",
        ));
    }
    let Some(needs) = cohort_needs(&cmd.body) else {
        return Err(wrong_document());
    };
    authorize(caller, cohort, needs)?;
    dispatch(tx, &ctx, &cmd.body)
}

/// Runs a checked command of a created cohort.
fn dispatch(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    body: &CommandBody,
) -> Result<Target, Rejection> {
    use CommandBody::*;
    match body {
        RosterAdd { user, role, name } => roster_add(tx, ctx, user, *role, name),
        RosterRemove { user } => roster_remove(tx, ctx, user),
        ProgressUpdate {
            student,
            lesson,
            status,
            score,
            max_score,
        } => progress::update(tx, ctx, student, lesson, *status, *score, *max_score),
        AnnouncementPost { title, body } => announce(tx, ctx, title, body),
        LeaderboardPrivacy { anonymous } => privacy(tx, ctx, *anonymous),
        SessionLink { session, title } => link(tx, ctx, session, title),
        CohortCourse { course } => link_course(tx, course),
        _ => Err(wrong_document()),
    }
}

/// `cohort.create` (admin): the cohort's meta.
fn create(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    course: &str,
    title: &str,
    home_region: &str,
) -> Result<Target, Rejection> {
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
    put(tx, &m, "created_at", ctx.now.as_i64())?;
    Ok(Target::default())
}

/// `roster.add` (instructor): adds or updates a member (and restores a removed one).
fn roster_add(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    user: &UserId,
    role: Role,
    name: &str,
) -> Result<Target, Rejection> {
    let name = check_text("name", name, DISPLAY_NAME_LEN_MAX_CHARS)?;
    let roster = root(tx, ROSTER)?;
    let e = map_or_new(tx, &roster, user.as_str())?;
    put(tx, &e, "role", role.as_str())?;
    put(tx, &e, "name", name)?;
    put(tx, &e, "removed", false)?;
    put(tx, &e, "at", ctx.now.as_i64())?;
    Ok(Target::item(user.as_str()))
}

/// `roster.remove` (instructor): flags the member removed.
fn roster_remove(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    user: &UserId,
) -> Result<Target, Rejection> {
    let roster = root(tx, ROSTER)?;
    let e = Reader::now(&*tx)
        .map(&roster, user.as_str())
        .ok_or_else(|| Rejection::not_found("roster entry", user.as_str()))?;
    put(tx, &e, "removed", true)?;
    put(tx, &e, "at", ctx.now.as_i64())?;
    Ok(Target::item(user.as_str()))
}

/// `announcement.post` (instructor).
fn announce(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    title: &str,
    body: &str,
) -> Result<Target, Rejection> {
    let title = check_text("title", title, TITLE_LEN_MAX_CHARS)?;
    let body = check_text("body", body, ANNOUNCEMENT_LEN_MAX_CHARS)?;
    let anns = root(tx, ANNOUNCEMENTS)?;
    check_count(
        ctx.counts,
        "announcement.post",
        ANNOUNCEMENTS_PER_COHORT_MAX,
        "announcements",
    )?;
    let a = put_map(tx, &anns, ctx.id.as_str())?;
    put(tx, &a, "title", title)?;
    put(tx, &a, "body", body)?;
    put(tx, &a, "by", ctx.user())?;
    put(tx, &a, "by_name", ctx.caller.display_name())?;
    put(tx, &a, "at", ctx.now.as_i64())?;
    Ok(Target::item(ctx.id.as_str()))
}

/// `cohort.course` (instructor): the course the cohort follows. Whether that course exists
/// lives in another document: the gateway checks it before it runs the command.
fn link_course(tx: &mut Transaction<'_>, course: &CourseId) -> Result<Target, Rejection> {
    let m = root(tx, META)?;
    put(tx, &m, "course_id", course.as_str())?;
    Ok(Target::default())
}

/// `leaderboard.privacy`: a member on the roster hides (or shows) their name on leaderboards.
fn privacy(tx: &mut Transaction<'_>, ctx: &Ctx<'_>, anonymous: bool) -> Result<Target, Rejection> {
    let roster = root(tx, ROSTER)?;
    let e = Reader::now(&*tx).map(&roster, ctx.user()).ok_or_else(|| {
        Rejection::new(RejectCode::NotFound, "you are not on this cohort's roster")
    })?;
    put(tx, &e, LEADERBOARD_ANONYMOUS, anonymous)?;
    Ok(Target::item(ctx.user()))
}

/// `session.link` (instructor): lists a session of this cohort (see
/// [`check_session_link`](crate::check_session_link), which the gateway asks first).
fn link(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    session: &SessionId,
    title: &str,
) -> Result<Target, Rejection> {
    let title = check_text("title", title, TITLE_LEN_MAX_CHARS)?;
    let sessions = root(tx, SESSIONS)?;
    let s = map_or_new(tx, &sessions, session.as_str())?;
    put(tx, &s, "title", title)?;
    put(tx, &s, "at", ctx.now.as_i64())?;
    Ok(Target::item(session.as_str()))
}
