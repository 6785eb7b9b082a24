//! Join codes (`join_code.create`, `join_code.redeem`) in the cohort document: what a code may
//! grant and for how long, that an unknown, expired or used-up code lets nobody in and changes
//! nothing, and that a redemption is a roster entry naming the code's session and maker, seen
//! by the cohort's staff and replicated with the cohort.

use lectern_model::limits::{JOIN_CODE_TTL_MAX_MS, JOIN_CODE_USES_MAX};
use lectern_model::{CommandBody, Millis, RejectCode, Replica, Role, SessionId};

use super::{NOW, admin, cmd, cohort_doc, heads, instructor, live_cohort, ok, refused, uid};

const KEY: &str = "00112233445566778899aabbccddeeff";

fn s1() -> SessionId {
    SessionId::new("s1").expect("valid id")
}

/// A cohort listing session `s1`.
fn cohort() -> Replica {
    let mut r = live_cohort(&[0xc0; 16]);
    let link = CommandBody::SessionLink {
        session: s1(),
        title: "Lecture 1".into(),
    };
    ok(&mut r, &instructor(), &cmd("link", link), NOW);
    r
}

fn create(key: &str, role: Role, expires_at: u64, uses_max: u32) -> CommandBody {
    CommandBody::JoinCodeCreate {
        key: key.into(),
        session: s1(),
        role,
        expires_at,
        uses_max,
    }
}

fn redeem(key: &str, user: &str) -> CommandBody {
    CommandBody::JoinCodeRedeem {
        key: key.into(),
        user: uid(user),
        name: format!("New {user}"),
    }
}

/// Kills: a code granting instructor or admin, one living longer than the maximum or already
/// expired, one for a session the cohort does not list, a malformed key, or `uses_max` of 0 or
/// past the maximum, accepted.
#[test]
fn a_code_grants_student_or_ta_for_a_bounded_time_and_a_listed_session() {
    let mut r = cohort();
    let later = NOW.0 + 3_600_000;
    let bad = [
        ("instructor", create(KEY, Role::Instructor, later, 5)),
        ("admin", create(KEY, Role::Admin, later, 5)),
        (
            "too long",
            create(KEY, Role::Student, NOW.0 + JOIN_CODE_TTL_MAX_MS + 1, 5),
        ),
        ("expired", create(KEY, Role::Student, NOW.0, 5)),
        ("no uses", create(KEY, Role::Student, later, 0)),
        (
            "too many uses",
            create(KEY, Role::Student, later, JOIN_CODE_USES_MAX + 1),
        ),
        ("short key", create("0011", Role::Student, later, 5)),
        (
            "upper-case key",
            create(&KEY.to_uppercase(), Role::Student, later, 5),
        ),
    ];
    for (i, (what, body)) in bad.into_iter().enumerate() {
        let before = heads(&r);
        let code = refused(&mut r, &instructor(), &cmd(&format!("bad{i}"), body), NOW);
        assert_eq!(code, RejectCode::InvalidInput, "{what}");
        assert_eq!(heads(&r), before, "{what} changed the document");
    }
    let other = CommandBody::JoinCodeCreate {
        key: KEY.into(),
        session: SessionId::new("s-elsewhere").expect("valid id"),
        role: Role::Student,
        expires_at: later,
        uses_max: 5,
    };
    assert_eq!(
        refused(&mut r, &instructor(), &cmd("other", other), NOW),
        RejectCode::NotFound
    );
    ok(
        &mut r,
        &instructor(),
        &cmd("ta-code", create(KEY, Role::Ta, later, 5)),
        NOW,
    );
    assert_eq!(
        refused(
            &mut r,
            &instructor(),
            &cmd("again", create(KEY, Role::Student, later, 5)),
            NOW
        ),
        RejectCode::AlreadyExists
    );
}

/// Kills: an unknown, expired or used-up code letting someone in (or writing anything), a
/// redemption that does not reach the roster with the code's role, or a roster entry that
/// hides which code's session and maker let the newcomer in.
#[test]
fn a_redemption_joins_the_roster_until_the_code_expires_or_is_used_up() {
    let mut r = cohort();
    let expires = NOW.0 + 60_000;
    ok(
        &mut r,
        &instructor(),
        &cmd("code", create(KEY, Role::Ta, expires, 2)),
        NOW,
    );
    let unknown = "ffeeddccbbaa99887766554433221100";
    let before = heads(&r);
    assert_eq!(
        refused(&mut r, &admin(), &cmd("r0", redeem(unknown, "new0")), NOW),
        RejectCode::JoinCodeUnknown
    );
    ok(&mut r, &admin(), &cmd("r1", redeem(KEY, "new1")), NOW);
    ok(
        &mut r,
        &admin(),
        &cmd("r2", redeem(KEY, "new2")),
        Millis(NOW.0 + 1),
    );
    let before_full = heads(&r);
    assert_ne!(before, before_full);
    assert_eq!(
        refused(
            &mut r,
            &admin(),
            &cmd("r3", redeem(KEY, "new3")),
            Millis(NOW.0 + 2)
        ),
        RejectCode::JoinCodeUsedUp
    );
    assert_eq!(heads(&r), before_full, "a refused redemption wrote");

    let mut fresh = cohort();
    ok(
        &mut fresh,
        &instructor(),
        &cmd("code", create(KEY, Role::Student, expires, 2)),
        NOW,
    );
    assert_eq!(
        refused(
            &mut fresh,
            &admin(),
            &cmd("late", redeem(KEY, "late1")),
            Millis(expires)
        ),
        RejectCode::JoinCodeExpired
    );

    let view = r.cohort_view(&instructor()).expect("the staff's view");
    let roster = view["roster"].as_array().expect("a roster for staff");
    let entry = roster
        .iter()
        .find(|e| e["user"] == "new1")
        .expect("the newcomer is on the roster");
    assert_eq!(entry["role"], "ta");
    assert_eq!(entry["joined"]["session"], "s1");
    assert_eq!(entry["joined"]["by"], instructor().user.as_str());
    // A replica elsewhere (the region, once the uplink is back) sees the same.
    let region = Replica::load(cohort_doc(), &r.save(), &[0xc1; 16]).expect("it loads");
    let seen = region.cohort_view(&instructor()).expect("the staff's view");
    assert_eq!(seen["roster"], view["roster"]);
}
