//! The cohort document's commands: one place that checks a command against the cohort
//! (created? may this caller run it?) and dispatches it: `cohort.create`, the roster, a
//! student's leaderboard privacy, announcements, session links, the course link and join codes
//! (a newcomer let in while the cohort's issuer cannot be reached) are here; progress is in
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
    ID_LEN_MAX_BYTES, JOIN_CODE_KEY_LEN_CHARS, JOIN_CODE_TTL_MAX_MS, JOIN_CODE_USES_MAX,
    JOIN_CODES_PER_COHORT_MAX, JOINS_PER_COHORT_MAX, TITLE_LEN_MAX_CHARS,
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
        | CohortCourse { .. }
        | JoinCodeCreate { .. } => Some(Needs::Instructor),
        // The node redeems a code for a newcomer who has no token yet: as an admin.
        JoinCodeRedeem { .. } => Some(Needs::Admin),
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
        JoinCodeCreate {
            key,
            session,
            role,
            expires_at,
            uses_max,
        } => join_code_create(tx, ctx, key, session, *role, *expires_at, *uses_max),
        JoinCodeRedeem { key, user, name } => join_code_redeem(tx, ctx, key, user, name),
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

/// The key in the cohort's `meta` map under which a join code lives: one map per code, made by
/// the one command that creates it, so no two nodes race to create it.
pub(crate) fn join_code_field(key: &str) -> String {
    format!("join_code/{key}")
}

/// A join code's key: exactly [`JOIN_CODE_KEY_LEN_CHARS`] lowercase hex digits.
fn check_join_key(key: &str) -> Result<(), Rejection> {
    if key.len() == JOIN_CODE_KEY_LEN_CHARS
        && key
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        Ok(())
    } else {
        Err(Rejection::new(
            RejectCode::InvalidInput,
            format!("a join code key is {JOIN_CODE_KEY_LEN_CHARS} lowercase hex digits"),
        ))
    }
}

/// `join_code.create` (instructor): a code for one of the cohort's sessions, with the role it
/// grants, its expiry and how many it lets in.
fn join_code_create(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    key: &str,
    session: &SessionId,
    role: Role,
    expires_at: u64,
    uses_max: u32,
) -> Result<Target, Rejection> {
    check_join_key(key)?;
    if !matches!(role, Role::Student | Role::Ta) {
        return Err(Rejection::new(
            RejectCode::InvalidInput,
            "a join code grants the student or the TA role",
        ));
    }
    if expires_at <= ctx.now.0 || expires_at > ctx.now.0.saturating_add(JOIN_CODE_TTL_MAX_MS) {
        return Err(Rejection::new(
            RejectCode::InvalidInput,
            format!(
                "a join code expires after now and at most {} h ahead",
                JOIN_CODE_TTL_MAX_MS / 3_600_000
            ),
        ));
    }
    if uses_max == 0 || uses_max > JOIN_CODE_USES_MAX {
        return Err(Rejection::new(
            RejectCode::InvalidInput,
            format!("a join code lets in 1 to {JOIN_CODE_USES_MAX} newcomers"),
        ));
    }
    let r = Reader::now(&*tx);
    let listed = r
        .root_map(SESSIONS)
        .and_then(|s| r.map(&s, session.as_str()))
        .is_some();
    if !listed {
        return Err(Rejection::not_found(
            "session of this cohort",
            session.as_str(),
        ));
    }
    let m = root(tx, META)?;
    let field = join_code_field(key);
    if Reader::now(&*tx).map(&m, &field).is_some() {
        return Err(Rejection::new(
            RejectCode::AlreadyExists,
            "this join code exists already",
        ));
    }
    check_count(
        ctx.counts,
        "join_code.create",
        JOIN_CODES_PER_COHORT_MAX,
        "join codes",
    )?;
    let code = put_map(tx, &m, &field)?;
    put(tx, &code, "session", session.as_str())?;
    put(tx, &code, "role", role.as_str())?;
    put(
        tx,
        &code,
        "expires_at",
        i64::try_from(expires_at).unwrap_or(i64::MAX),
    )?;
    put(tx, &code, "uses_max", i64::from(uses_max))?;
    put(tx, &code, "by", ctx.user())?;
    put(tx, &code, "by_name", ctx.caller.display_name())?;
    put(tx, &code, "at", ctx.now.as_i64())?;
    put_map(tx, &code, "uses")?;
    Ok(Target::default())
}

/// `join_code.redeem` (the node, for a newcomer): the code must exist, be unexpired and have
/// room; the newcomer joins the roster with the code's role, the entry naming the code, its
/// session and its maker, and the code counts the use.
fn join_code_redeem(
    tx: &mut Transaction<'_>,
    ctx: &Ctx<'_>,
    key: &str,
    user: &UserId,
    name: &str,
) -> Result<Target, Rejection> {
    check_join_key(key)?;
    let name = check_text("name", name, DISPLAY_NAME_LEN_MAX_CHARS)?;
    let m = root(tx, META)?;
    let r = Reader::now(&*tx);
    let code = r
        .map(&m, &join_code_field(key))
        .ok_or_else(|| Rejection::new(RejectCode::JoinCodeUnknown, "no such join code"))?;
    let expires_at = r.int(&code, "expires_at").unwrap_or(0);
    if ctx.now.as_i64() >= expires_at {
        return Err(Rejection::new(
            RejectCode::JoinCodeExpired,
            "this join code has expired: ask your teacher for a new one",
        ));
    }
    let uses = r
        .map(&code, "uses")
        .ok_or_else(|| Rejection::new(RejectCode::Internal, "a join code without its uses"))?;
    let used = r.keys(&uses).len();
    let uses_max = usize::try_from(r.int(&code, "uses_max").unwrap_or(0)).unwrap_or(0);
    if used >= uses_max {
        return Err(Rejection::new(
            RejectCode::JoinCodeUsedUp,
            "this join code let in as many as it was made for",
        ));
    }
    let role = r
        .str(&code, "role")
        .and_then(|s| Role::parse(&s))
        .filter(|role| matches!(role, Role::Student | Role::Ta))
        .ok_or_else(|| Rejection::new(RejectCode::Internal, "a join code without its role"))?;
    let session = r.str(&code, "session").unwrap_or_default();
    let by = r.str(&code, "by").unwrap_or_default();
    let roster = root(tx, ROSTER)?;
    if Reader::now(&*tx).map(&roster, user.as_str()).is_some() {
        return Err(Rejection::new(
            RejectCode::AlreadyExists,
            "this user is on the roster already",
        ));
    }
    check_count(
        ctx.counts,
        "join_code.redeem",
        JOINS_PER_COHORT_MAX,
        "newcomers let in by join codes",
    )?;
    put(tx, &uses, user.as_str(), ctx.now.as_i64())?;
    let e = put_map(tx, &roster, user.as_str())?;
    put(tx, &e, "role", role.as_str())?;
    put(tx, &e, "name", name)?;
    put(tx, &e, "removed", false)?;
    put(tx, &e, "at", ctx.now.as_i64())?;
    put(tx, &e, "via_code", key)?;
    put(tx, &e, "via_session", session.as_str())?;
    put(tx, &e, "via_by", by.as_str())?;
    Ok(Target::item(user.as_str()))
}
