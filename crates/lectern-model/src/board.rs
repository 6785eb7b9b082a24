//! Read models for the live boards: a cohort's leaderboard (from progress scores, with students
//! who opted out anonymized) and the instructor dashboard's pieces (per-student activity from
//! the cohort, per-session summaries: who is present, open questions, poll participation).
//!
//! Pure functions of a document's current state; the gateway decides how often to compute them
//! and combines a cohort with its sessions.

use std::collections::BTreeMap;

use automerge::ReadDoc;
use serde_json::{Value, json};

use crate::ids::Millis;
use crate::read::Reader;
use crate::schema::{LEADERBOARD_ANONYMOUS, PROGRESS, QUESTIONS, ROSTER, SESSIONS};
use crate::view::{self, Poll, Question};

/// Students of a cohort: the roster's students plus anyone with progress (a roster may lag the
/// LMS), as (user, name).
fn students<D: ReadDoc>(r: &Reader<'_, D>) -> BTreeMap<String, String> {
    let mut out: BTreeMap<String, String> = view::roster(r)
        .into_iter()
        .filter(|e| e.role == "student")
        .map(|e| (e.user, e.name))
        .collect();
    if let Some(p) = r.root_map(PROGRESS) {
        for s in r.keys(&p) {
            out.entry(s.clone()).or_insert(s);
        }
    }
    out
}

/// The roster's students only, as (user, name): the leaderboard's people. Progress from
/// anyone else (a student the roster never had, with invented lessons) must not rank.
fn roster_students<D: ReadDoc>(r: &Reader<'_, D>) -> BTreeMap<String, String> {
    view::roster(r)
        .into_iter()
        .filter(|e| e.role == "student")
        .map(|e| (e.user, e.name))
        .collect()
}

fn anonymous<D: ReadDoc>(r: &Reader<'_, D>, user: &str) -> bool {
    r.root_map(ROSTER)
        .and_then(|ro| r.map(&ro, user))
        .and_then(|e| r.bool(&e, LEADERBOARD_ANONYMOUS))
        .unwrap_or(false)
}

/// The leaderboard: `(full, public)` of the roster's students. Both rank them by total score
/// (ties share a rank; within a tie, named students come before anonymous ones).
/// `full` (for staff) names everyone; `public` (for students) shows "Anonymous" without a user
/// id for those who opted out.
pub(crate) fn leaderboard<D: ReadDoc>(r: &Reader<'_, D>, cohort: &str) -> (Value, Value) {
    let mut rows: Vec<(i64, i64, u64, String, String, bool)> = roster_students(r)
        .into_iter()
        .map(|(user, name)| {
            let mut score = 0;
            let mut max = 0;
            let mut completed = 0;
            for p in view::student_lessons(r, &user).values() {
                if let (Some(s), Some(m)) = (p.score(), p.max()) {
                    score += s;
                    max += m;
                }
                completed += u64::from(p.completed());
            }
            let anon = anonymous(r, &user);
            (score, max, completed, user, name, anon)
        })
        .collect();
    // Within a tie, named students first (by user id), then the anonymous ones by what the
    // board shows of them: an anonymous row's place among named rows would otherwise betray
    // its user id (user-id order), and anonymous rows that look alike cannot betray anything
    // by their order among themselves.
    rows.sort_by(|a, b| {
        b.0.cmp(&a.0)
            .then_with(|| a.5.cmp(&b.5))
            .then_with(|| match a.5 {
                false => a.3.cmp(&b.3),
                true => {
                    b.1.cmp(&a.1)
                        .then_with(|| b.2.cmp(&a.2))
                        .then_with(|| a.3.cmp(&b.3))
                }
            })
    });
    let mut full = Vec::with_capacity(rows.len());
    let mut public = Vec::with_capacity(rows.len());
    let mut rank = 0;
    let mut last_score = None;
    for (i, (score, max, completed, user, name, anon)) in rows.into_iter().enumerate() {
        if last_score != Some(score) {
            rank = i + 1;
            last_score = Some(score);
        }
        full.push(
            json!({"rank": rank, "user": user, "name": name, "anonymous": anon,
                         "score": score, "maxScore": max, "completedLessons": completed}),
        );
        let (user, name) = if anon {
            (Value::Null, json!("Anonymous"))
        } else {
            (json!(user), json!(name))
        };
        public.push(json!({"rank": rank, "user": user, "name": name,
                           "score": score, "maxScore": max, "completedLessons": completed}));
    }
    (
        json!({"cohort": cohort, "entries": full}),
        json!({"cohort": cohort, "entries": public}),
    )
}

/// Per student: name and the time of their latest progress (`null` if none); and the cohort's
/// linked sessions, newest first.
pub(crate) fn cohort_activity<D: ReadDoc>(r: &Reader<'_, D>) -> Value {
    let students: Vec<Value> = students(r)
        .into_iter()
        .map(|(user, name)| {
            let last = view::student_lessons(r, &user)
                .values()
                .map(|p| p.at())
                .max()
                .filter(|at| *at > 0);
            json!({"user": user, "name": name, "lastProgressAt": last})
        })
        .collect();
    let mut sessions: Vec<(i64, String)> = r
        .root_map(SESSIONS)
        .map(|s| {
            r.keys(&s)
                .into_iter()
                .map(|k| {
                    let at = r.map(&s, &k).and_then(|e| r.int(&e, "at")).unwrap_or(0);
                    (at, k)
                })
                .collect()
        })
        .unwrap_or_default();
    sessions.sort_by(|a, b| b.cmp(a));
    let sessions: Vec<&str> = sessions.iter().map(|(_, s)| s.as_str()).collect();
    json!({"students": students, "sessions": sessions})
}

/// A session for the dashboard: who is present now, when each user was last seen, open
/// (visible, unanswered) questions, and every poll's voter count.
pub(crate) fn session_summary<D: ReadDoc>(r: &Reader<'_, D>, id: &str, now: Millis) -> Value {
    let title = view::session_meta(r)
        .map(|(_, m)| m["title"].clone())
        .unwrap_or(Value::Null);
    let (_, users) = view::attendance(r, None, Some(now));
    let present: Vec<Value> = users
        .as_array()
        .map(|u| {
            u.iter()
                .filter(|u| u["present"] == true)
                .map(|u| u["user"].clone())
                .collect()
        })
        .unwrap_or_default();
    let last_seen = view::last_seen(r);
    let open_questions = r
        .root_map(QUESTIONS)
        .map(|qs| {
            r.keys(&qs)
                .iter()
                .filter_map(|k| Question::read(r, k))
                .filter(|q| q.public() && q.answer_text().is_none())
                .count()
        })
        .unwrap_or(0);
    let polls: Vec<Value> = r
        .root_map(crate::schema::POLLS)
        .map(|ps| {
            r.keys(&ps)
                .iter()
                .filter_map(|k| Poll::read(r, k))
                .map(|p| json!({"id": p.id, "question": p.question, "open": p.is_open(), "voters": p.votes.len()}))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "id": id,
        "title": title,
        "present": present,
        "lastSeen": last_seen,
        "openQuestions": open_questions,
        "polls": polls,
    })
}
