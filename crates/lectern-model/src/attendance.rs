//! Attendance commands of a session: a visit starts with `attendance.join` and ends with
//! `attendance.leave`.
//!
//! Visits are keyed `{user}/{visit}` so that one user's visits are one range scan, and a leave
//! closes every open visit of the caller (a user connected from two tabs, or on two nodes,
//! has two).

use automerge::ObjId;
use automerge::transaction::Transaction;

use crate::limits::{VISITS_PER_SESSION_MAX, VISITS_PER_USER_PER_SESSION_MAX};
use crate::read::Reader;
use crate::reject::{RejectCode, Rejection};
use crate::schema::ATTENDANCE;
use crate::write::{Ctx, Target, check_count, check_user_count, put, put_map, root};

/// `attendance.join`: a new open visit of the caller.
pub(crate) fn join(tx: &mut Transaction<'_>, ctx: &Ctx<'_>) -> Result<Target, Rejection> {
    let user = ctx.user();
    let att = root(tx, ATTENDANCE)?;
    check_count(
        ctx.counts,
        "attendance.join",
        VISITS_PER_SESSION_MAX,
        "visits",
    )?;
    check_user_count(
        ctx.counts,
        "attendance.join",
        ctx.caller,
        VISITS_PER_USER_PER_SESSION_MAX,
        "visits",
    )?;
    // Keyed `{user}/{visit}` so one user's visits are one range scan.
    let v = put_map(tx, &att, &format!("{user}/{}", ctx.id))?;
    put(tx, &v, "user", user)?;
    put(tx, &v, "name", ctx.caller.display_name())?;
    put(tx, &v, "join_at", ctx.now.as_i64())?;
    Ok(Target::item(user))
}

/// `attendance.leave`: closes the caller's open visits (refused if there is none).
pub(crate) fn leave(tx: &mut Transaction<'_>, ctx: &Ctx<'_>) -> Result<Target, Rejection> {
    let user = ctx.user();
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
        put(tx, &v, "leave_at", ctx.now.as_i64())?;
    }
    Ok(Target::item(user))
}
