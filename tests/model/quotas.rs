//! Per-person quotas: one student cannot use up a session's shared limits (questions, chat,
//! attendance visits) or grow a cohort's progress with invented lessons. Each quota is checked
//! at its exact boundary (the last one accepted, the next refused `limit_reached` without a
//! trace), for another student (still served), for staff (not held to it), and after a reload
//! from the saved bytes (the counts come from the document, not from memory of the commands).

use lectern_model::limits::*;
use lectern_model::{Caller, CommandBody, ProgressStatus, RejectCode, Replica};

use super::{NOW, cmd, instructor, lid, live_cohort, live_session, ok, refused, student, uid};

/// Applies `n` commands made by `body(i)` as `who`, each with a fresh id.
fn fill(r: &mut Replica, who: &Caller, tag: &str, n: usize, body: impl Fn(usize) -> CommandBody) {
    for i in 0..n {
        ok(
            r,
            who,
            &cmd(&format!("{tag}-{}-{i}", who.user), body(i)),
            NOW,
        );
    }
}

fn ask(i: usize) -> CommandBody {
    CommandBody::QaAsk {
        text: format!("question {i}?"),
        anonymous: false,
    }
}

fn chat(i: usize) -> CommandBody {
    CommandBody::ChatSend {
        text: format!("message {i}"),
    }
}

/// Kills: no per-person check (the 101st question accepted), `>=` → `>` (one more
/// accepted), a check that counts everyone's questions as one person's (stu2 refused), staff
/// held to it, counts lost on reload.
#[test]
fn one_student_asks_at_most_the_per_person_quota_and_others_still_can() {
    let mut r = live_session(&[0xa1; 16]);
    let (stu1, stu2, ins) = (student("stu1"), student("stu2"), instructor());
    fill(&mut r, &stu1, "q", QUESTIONS_PER_USER_PER_SESSION_MAX, ask);
    let over = cmd("q-over", ask(0));
    assert_eq!(refused(&mut r, &stu1, &over, NOW), RejectCode::LimitReached);
    // Reloaded from its bytes, the replica counts the same.
    let mut r = Replica::load(super::session_doc(), &r.save(), &[0xa2; 16])
        .expect("the saved session loads");
    assert_eq!(refused(&mut r, &stu1, &over, NOW), RejectCode::LimitReached);
    ok(&mut r, &stu2, &cmd("q-stu2", ask(1)), NOW);
    fill(
        &mut r,
        &ins,
        "q-ins",
        QUESTIONS_PER_USER_PER_SESSION_MAX + 1,
        ask,
    );
}

/// Kills: no per-person chat check, `>=` → `>`.
#[test]
fn one_student_sends_at_most_the_per_person_chat_quota() {
    let mut r = live_session(&[0xa3; 16]);
    let (stu1, stu2) = (student("stu1"), student("stu2"));
    fill(
        &mut r,
        &stu1,
        "m",
        CHAT_MESSAGES_PER_USER_PER_SESSION_MAX,
        chat,
    );
    assert_eq!(
        refused(&mut r, &stu1, &cmd("m-over", chat(0)), NOW),
        RejectCode::LimitReached
    );
    ok(&mut r, &stu2, &cmd("m-stu2", chat(1)), NOW);
}

/// Kills: no per-person visit check, `>=` → `>`.
#[test]
fn one_students_visits_are_recorded_up_to_the_per_person_quota() {
    let mut r = live_session(&[0xa4; 16]);
    let (stu1, stu2) = (student("stu1"), student("stu2"));
    fill(&mut r, &stu1, "v", VISITS_PER_USER_PER_SESSION_MAX, |_| {
        CommandBody::AttendanceJoin
    });
    assert_eq!(
        refused(
            &mut r,
            &stu1,
            &cmd("v-over", CommandBody::AttendanceJoin),
            NOW
        ),
        RejectCode::LimitReached
    );
    ok(
        &mut r,
        &stu2,
        &cmd("v-stu2", CommandBody::AttendanceJoin),
        NOW,
    );
}

/// Kills: no lesson cap (an invented lesson past the cap accepted), `>=` → `>`, a cap that
/// refuses updates of a lesson the student already has, a cap counted across students.
#[test]
fn a_student_has_progress_in_at_most_a_courses_worth_of_lessons() {
    let mut c = live_cohort(&[0xa5; 16]);
    let progress = |who: &str, lesson: String| CommandBody::ProgressUpdate {
        student: uid(who),
        lesson: lid(&lesson),
        status: Some(ProgressStatus::InProgress),
        score: None,
        max_score: None,
    };
    let stu1 = student("stu1");
    fill(&mut c, &stu1, "p", LESSONS_PER_STUDENT_MAX, |i| {
        progress("stu1", format!("l{i}"))
    });
    assert_eq!(
        refused(
            &mut c,
            &stu1,
            &cmd("p-over", progress("stu1", "invented".into())),
            NOW
        ),
        RejectCode::LimitReached
    );
    // A lesson already there can still change; another student has lessons of their own.
    let done = CommandBody::ProgressUpdate {
        student: uid("stu1"),
        lesson: lid("l0"),
        status: Some(ProgressStatus::Completed),
        score: None,
        max_score: None,
    };
    ok(&mut c, &stu1, &cmd("p-l0-done", done), NOW);
    ok(
        &mut c,
        &student("stu2"),
        &cmd("p-stu2", progress("stu2", "l0".into())),
        NOW,
    );
}
