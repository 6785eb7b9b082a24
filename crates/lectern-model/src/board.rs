//! The live boards: a cohort's leaderboard (from progress scores, with students who opted out
//! anonymized) and the instructor dashboard (per-student activity, lesson aggregates, who is
//! online, open questions and poll participation over the cohort's sessions).
//!
//! Two layers. Readers turn one document's current state into typed inputs
//! ([`StudentScore`]s, [`CohortActivity`], [`SessionSummary`]); pure functions turn typed inputs
//! into the typed boards clients receive ([`Leaderboard::rank`], [`Leaderboard::public`],
//! [`Leaderboard::place`], [`Dashboard::compute`]), serialized with serde under the field names
//! the clients read. The gateway decides how often to compute a board, reads the documents and
//! hands the pieces over; it reads no board field itself.

use std::collections::{BTreeMap, HashMap, HashSet};

use automerge::ReadDoc;
use serde::Serialize;

use crate::ids::{CohortId, Millis, SessionId};
use crate::read::Reader;
use crate::schema::{LEADERBOARD_ANONYMOUS, POLLS, PROGRESS, QUESTIONS, ROSTER, SESSIONS};
use crate::view::{self, LessonAggregate, Poll, Question};

/// Milliseconds in a day, for the dashboard's inactivity cut-off.
const DAY_MS: u64 = 86_400_000;

// ---------------------------------------------------------------------------------------------
// Leaderboard
// ---------------------------------------------------------------------------------------------

/// One student's totals over their lessons: what the leaderboard ranks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudentScore {
    /// The student's user id.
    pub user: String,
    /// Their name on the roster.
    pub name: String,
    /// They asked to be "Anonymous" to classmates (`leaderboard.privacy`).
    pub anonymous: bool,
    /// Sum of their scored lessons' scores.
    pub score: i64,
    /// Sum of those lessons' maximum scores.
    pub max_score: i64,
    /// Lessons they completed.
    pub completed_lessons: u64,
}

/// A row of the full leaderboard (staff see it): everyone named.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderboardEntry {
    /// 1-based; students with the same score share a rank.
    pub rank: usize,
    /// The student's user id.
    pub user: String,
    /// Their name.
    pub name: String,
    /// Whether classmates see them as "Anonymous".
    pub anonymous: bool,
    /// Total score.
    pub score: i64,
    /// Total of the maximum scores.
    pub max_score: i64,
    /// Lessons completed.
    pub completed_lessons: u64,
}

/// A cohort's leaderboard as staff see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Leaderboard {
    /// The cohort.
    pub cohort: CohortId,
    /// Rows, best first.
    pub entries: Vec<LeaderboardEntry>,
}

/// A row of the leaderboard students see: no user id, and "Anonymous", for those who opted out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PublicEntry {
    /// 1-based; students with the same score share a rank.
    pub rank: usize,
    /// The student's user id (`None` for an anonymous student).
    pub user: Option<String>,
    /// Their name, or "Anonymous".
    pub name: String,
    /// Total score.
    pub score: i64,
    /// Total of the maximum scores.
    pub max_score: i64,
    /// Lessons completed.
    pub completed_lessons: u64,
}

/// A cohort's leaderboard as students see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PublicLeaderboard {
    /// The cohort.
    pub cohort: CohortId,
    /// Rows, best first, in the same order as the full board's.
    pub entries: Vec<PublicEntry>,
}

/// One student's place on the leaderboard (`GET /api/cohorts/{id}/leaderboard/me`): every
/// field but `cohort`, `of` and `anonymous` is `None` for a user the board does not rank.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LeaderboardPlace {
    /// The cohort.
    pub cohort: CohortId,
    /// How many students the board ranks.
    pub of: usize,
    /// Their rank.
    pub rank: Option<usize>,
    /// Their total score.
    pub score: Option<i64>,
    /// Their total of maximum scores.
    pub max_score: Option<i64>,
    /// Their completed lessons.
    pub completed_lessons: Option<u64>,
    /// Whether classmates see them as "Anonymous".
    pub anonymous: bool,
}

/// What the public board shows of an anonymous student.
const ANONYMOUS_NAME: &str = "Anonymous";

impl Leaderboard {
    /// Ranks `students` by total score, best first; ties share a rank. Within a tie, named
    /// students come first (by user id), then the anonymous ones by what the board shows of
    /// them: an anonymous row's place among named rows would otherwise betray its user id
    /// (user-id order), and anonymous rows that look alike cannot betray anything by their
    /// order among themselves.
    pub fn rank(cohort: CohortId, mut students: Vec<StudentScore>) -> Leaderboard {
        students.sort_by(|a, b| {
            b.score
                .cmp(&a.score)
                .then_with(|| a.anonymous.cmp(&b.anonymous))
                .then_with(|| match a.anonymous {
                    false => a.user.cmp(&b.user),
                    true => b
                        .max_score
                        .cmp(&a.max_score)
                        .then_with(|| b.completed_lessons.cmp(&a.completed_lessons))
                        .then_with(|| a.user.cmp(&b.user)),
                })
        });
        let mut rank = 0;
        let mut last_score = None;
        let entries = students
            .into_iter()
            .enumerate()
            .map(|(i, s)| {
                if last_score != Some(s.score) {
                    rank = i + 1;
                    last_score = Some(s.score);
                }
                LeaderboardEntry {
                    rank,
                    user: s.user,
                    name: s.name,
                    anonymous: s.anonymous,
                    score: s.score,
                    max_score: s.max_score,
                    completed_lessons: s.completed_lessons,
                }
            })
            .collect();
        Leaderboard { cohort, entries }
    }

    /// The board students see: the same rows, anonymous students without a user id.
    pub fn public(&self) -> PublicLeaderboard {
        let entries = self
            .entries
            .iter()
            .map(|e| PublicEntry {
                rank: e.rank,
                user: (!e.anonymous).then(|| e.user.clone()),
                name: if e.anonymous {
                    ANONYMOUS_NAME.to_owned()
                } else {
                    e.name.clone()
                },
                score: e.score,
                max_score: e.max_score,
                completed_lessons: e.completed_lessons,
            })
            .collect();
        PublicLeaderboard {
            cohort: self.cohort.clone(),
            entries,
        }
    }

    /// `user`'s place on this board.
    pub fn place(&self, user: &str) -> LeaderboardPlace {
        let me = self.entries.iter().find(|e| e.user == user);
        LeaderboardPlace {
            cohort: self.cohort.clone(),
            of: self.entries.len(),
            rank: me.map(|e| e.rank),
            score: me.map(|e| e.score),
            max_score: me.map(|e| e.max_score),
            completed_lessons: me.map(|e| e.completed_lessons),
            anonymous: me.is_some_and(|e| e.anonymous),
        }
    }
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

/// The totals of the roster's students, read from a cohort document.
pub(crate) fn student_scores<D: ReadDoc>(r: &Reader<'_, D>) -> Vec<StudentScore> {
    roster_students(r)
        .into_iter()
        .map(|(user, name)| {
            let mut score = 0;
            let mut max_score = 0;
            let mut completed_lessons = 0;
            for p in view::student_lessons(r, &user).values() {
                if let (Some(s), Some(m)) = (p.score(), p.max()) {
                    score += s;
                    max_score += m;
                }
                completed_lessons += u64::from(p.completed());
            }
            let anonymous = anonymous(r, &user);
            StudentScore {
                user,
                name,
                anonymous,
                score,
                max_score,
                completed_lessons,
            }
        })
        .collect()
}

// ---------------------------------------------------------------------------------------------
// Dashboard inputs, read from one document each
// ---------------------------------------------------------------------------------------------

/// A student of the cohort and the time of their latest progress.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StudentActivity {
    /// The student's user id.
    pub user: String,
    /// Their name (their user id if the roster does not list them).
    pub name: String,
    /// Their latest progress update (ms), `None` if they have none.
    pub last_progress_at: Option<i64>,
}

/// The cohort's half of the dashboard: its students and its linked sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CohortActivity {
    /// The roster's students plus anyone with progress (a roster may lag the LMS), by user id.
    pub students: Vec<StudentActivity>,
    /// The linked sessions, newest link first.
    pub sessions: Vec<SessionId>,
}

/// A poll of a session, for the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PollSummary {
    /// The poll's id.
    pub id: String,
    /// Its question.
    pub question: String,
    /// Whether it still takes votes.
    pub open: bool,
    /// How many voted.
    pub voters: u64,
}

/// A session's half of the dashboard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionSummary {
    /// The session.
    pub id: SessionId,
    /// Users with an open visit now, by user id.
    pub present: Vec<String>,
    /// When each user was last seen: the latest of their joins and leaves (ms).
    pub last_seen: BTreeMap<String, i64>,
    /// Visible questions without an answer.
    pub open_questions: u64,
    /// Every poll, by id.
    pub polls: Vec<PollSummary>,
}

/// Students of a cohort: the roster's students plus anyone with progress (a roster may lag the
/// LMS), as (user, name).
fn students<D: ReadDoc>(r: &Reader<'_, D>) -> BTreeMap<String, String> {
    let mut out = roster_students(r);
    if let Some(p) = r.root_map(PROGRESS) {
        for s in r.keys(&p) {
            out.entry(s.clone()).or_insert(s);
        }
    }
    out
}

/// Reads a cohort document's activity (see [`CohortActivity`]).
pub(crate) fn cohort_activity<D: ReadDoc>(r: &Reader<'_, D>) -> CohortActivity {
    let students = students(r)
        .into_iter()
        .map(|(user, name)| {
            let last_progress_at = view::student_lessons(r, &user)
                .values()
                .map(|p| p.at())
                .max()
                .filter(|at| *at > 0);
            StudentActivity {
                user,
                name,
                last_progress_at,
            }
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
    // A key that is no session id (only a hostile peer writes one) links nothing.
    let sessions = sessions
        .into_iter()
        .filter_map(|(_, s)| s.parse().ok())
        .collect();
    CohortActivity { students, sessions }
}

/// Reads a session document's summary (see [`SessionSummary`]).
pub(crate) fn session_summary<D: ReadDoc>(r: &Reader<'_, D>, id: &SessionId) -> SessionSummary {
    let mut present: Vec<String> = view::present_users(r).into_iter().collect();
    present.sort();
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
    let polls = r
        .root_map(POLLS)
        .map(|ps| {
            r.keys(&ps)
                .iter()
                .filter_map(|k| Poll::read(r, k))
                .map(|p| PollSummary {
                    open: p.is_open(),
                    voters: p.votes.len() as u64,
                    id: p.id,
                    question: p.question,
                })
                .collect()
        })
        .unwrap_or_default();
    SessionSummary {
        id: id.clone(),
        present,
        last_seen: view::last_seen(r),
        open_questions: open_questions as u64,
        polls,
    }
}

// ---------------------------------------------------------------------------------------------
// Dashboard
// ---------------------------------------------------------------------------------------------

/// Who is online in the cohort's sessions.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Online {
    /// The cohort's students present in a session now.
    pub count: usize,
    /// Their user ids, sorted.
    pub users: Vec<String>,
    /// Anyone else present (staff), as a count only.
    pub staff: usize,
}

/// A poll on the dashboard: its session, its voters and what share of the cohort voted.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DashboardPoll {
    /// The session it was asked in.
    pub session: SessionId,
    /// The poll's id.
    pub poll: String,
    /// Its question.
    pub question: String,
    /// Whether it still takes votes.
    pub open: bool,
    /// How many voted.
    pub voters: u64,
    /// Voters per student of the cohort, in percent, one decimal.
    pub participation_pct: f64,
}

/// A student with no progress and no session visit for the dashboard's number of days.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct InactiveStudent {
    /// The student's user id.
    pub user: String,
    /// Their name.
    pub name: String,
    /// Their latest progress or session visit (ms), `None` if never.
    pub last_active_at: Option<i64>,
}

/// The instructor dashboard of a cohort.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Dashboard {
    /// The cohort.
    pub cohort: CohortId,
    /// Its students (the roster's and anyone with progress).
    pub students: u64,
    /// Who is in a session now.
    pub online: Online,
    /// Per-lesson aggregates.
    pub lessons: Vec<LessonAggregate>,
    /// Completed (student, lesson) pairs over all pairs, in percent.
    pub completion_rate: f64,
    /// Visible unanswered questions over the sessions read.
    pub open_questions: u64,
    /// Every poll of the sessions read, session by session.
    pub polls: Vec<DashboardPoll>,
    /// The inactivity threshold, in days.
    pub inactive_days: u64,
    /// Students inactive for that long.
    pub inactive: Vec<InactiveStudent>,
}

/// `part` of `whole` in percent, one decimal (0 when there is no whole).
fn percent(part: u64, whole: u64) -> f64 {
    if whole == 0 {
        0.0
    } else {
        (part as f64 * 1000.0 / whole as f64).round() / 10.0
    }
}

impl Dashboard {
    /// The dashboard of `cohort` at `now`, from its aggregates, its activity and the summaries
    /// of the sessions to count (the caller picks them: the cohort's newest, of this cohort
    /// only). A student is inactive when neither progress nor a session visit is newer than
    /// `inactive_days`.
    pub fn compute(
        cohort: CohortId,
        aggregates: view::CohortAggregates,
        activity: &CohortActivity,
        sessions: &[SessionSummary],
        inactive_days: u64,
        now: Millis,
    ) -> Dashboard {
        let students = aggregates.students;
        let mut present: HashSet<&str> = HashSet::new();
        let mut last_seen: HashMap<&str, i64> = HashMap::new();
        let mut open_questions = 0;
        let mut polls = Vec::new();
        for s in sessions {
            present.extend(s.present.iter().map(String::as_str));
            for (u, t) in &s.last_seen {
                let e = last_seen.entry(u.as_str()).or_insert(*t);
                *e = (*e).max(*t);
            }
            open_questions += s.open_questions;
            polls.extend(s.polls.iter().map(|p| DashboardPoll {
                session: s.id.clone(),
                poll: p.id.clone(),
                question: p.question.clone(),
                open: p.open,
                voters: p.voters,
                participation_pct: percent(p.voters, students),
            }));
        }
        let inactive_ms = inactive_days.saturating_mul(DAY_MS) as i64;
        let cutoff = now.as_i64() - inactive_ms;
        let inactive = activity
            .students
            .iter()
            .filter_map(|s| {
                let last = [s.last_progress_at, last_seen.get(s.user.as_str()).copied()]
                    .into_iter()
                    .flatten()
                    .max();
                match last {
                    Some(t) if t >= cutoff => None,
                    _ => Some(InactiveStudent {
                        user: s.user.clone(),
                        name: s.name.clone(),
                        last_active_at: last,
                    }),
                }
            })
            .collect();
        // Online now: the cohort's students; staff (and anyone else present) only as a count.
        let roster: HashSet<&str> = activity.students.iter().map(|s| s.user.as_str()).collect();
        let (mut users, others): (Vec<&str>, Vec<&str>) =
            present.into_iter().partition(|u| roster.contains(u));
        users.sort_unstable();
        Dashboard {
            cohort,
            students,
            online: Online {
                count: users.len(),
                users: users.into_iter().map(str::to_owned).collect(),
                staff: others.len(),
            },
            lessons: aggregates.lessons,
            completion_rate: aggregates.completion_rate,
            open_questions,
            polls,
            inactive_days,
            inactive,
        }
    }
}

#[cfg(test)]
mod tests {
    //! The boards' pure functions, typed in and typed out.

    use super::*;
    use serde_json::json;

    fn cohort() -> CohortId {
        CohortId::new("c1").unwrap()
    }

    fn score(user: &str, anonymous: bool, score: i64, max: i64, done: u64) -> StudentScore {
        StudentScore {
            user: user.to_owned(),
            name: user.to_uppercase(),
            anonymous,
            score,
            max_score: max,
            completed_lessons: done,
        }
    }

    #[test]
    fn ties_share_a_rank_and_named_students_lead_a_tie() {
        let board = Leaderboard::rank(
            cohort(),
            vec![
                score("zed", false, 5, 10, 1),
                score("amy", true, 9, 10, 2),
                score("bob", false, 9, 10, 2),
                score("cat", false, 9, 10, 1),
                score("dan", false, 1, 10, 0),
            ],
        );
        let order: Vec<(&str, usize)> = board
            .entries
            .iter()
            .map(|e| (e.user.as_str(), e.rank))
            .collect();
        assert_eq!(
            order,
            [("bob", 1), ("cat", 1), ("amy", 1), ("zed", 4), ("dan", 5)]
        );
    }

    #[test]
    fn anonymous_rows_in_a_tie_are_ordered_by_what_the_board_shows() {
        // "aaa" sorts before "zzz" by user id, but the board shows neither id: the row with
        // more points possible comes first, whatever the ids.
        let board = Leaderboard::rank(
            cohort(),
            vec![score("aaa", true, 3, 5, 0), score("zzz", true, 3, 9, 0)],
        );
        let users: Vec<&str> = board.entries.iter().map(|e| e.user.as_str()).collect();
        assert_eq!(users, ["zzz", "aaa"]);
    }

    #[test]
    fn the_public_board_hides_who_opted_out() {
        let board = Leaderboard::rank(
            cohort(),
            vec![score("amy", true, 9, 10, 2), score("bob", false, 4, 10, 1)],
        );
        let public = serde_json::to_value(board.public()).unwrap();
        assert_eq!(
            public,
            json!({"cohort": "c1", "entries": [
                {"rank": 1, "user": null, "name": "Anonymous", "score": 9, "maxScore": 10,
                 "completedLessons": 2},
                {"rank": 2, "user": "bob", "name": "BOB", "score": 4, "maxScore": 10,
                 "completedLessons": 1},
            ]})
        );
        let full = serde_json::to_value(&board).unwrap();
        assert_eq!(full["entries"][0]["user"], "amy");
        assert_eq!(full["entries"][0]["name"], "AMY");
        assert_eq!(full["entries"][0]["anonymous"], true);
    }

    #[test]
    fn a_place_is_found_by_user_and_empty_for_a_stranger() {
        let board = Leaderboard::rank(
            cohort(),
            vec![score("amy", true, 9, 10, 2), score("bob", false, 4, 10, 1)],
        );
        let amy = board.place("amy");
        assert_eq!((amy.of, amy.rank, amy.score), (2, Some(1), Some(9)));
        assert!(amy.anonymous);
        assert_eq!(
            serde_json::to_value(board.place("eve")).unwrap(),
            json!({"cohort": "c1", "of": 2, "rank": null, "score": null, "maxScore": null,
                   "completedLessons": null, "anonymous": false})
        );
    }

    fn student(user: &str, last_progress_at: Option<i64>) -> StudentActivity {
        StudentActivity {
            user: user.to_owned(),
            name: user.to_uppercase(),
            last_progress_at,
        }
    }

    fn session(id: &str, present: &[&str], seen: &[(&str, i64)], polls: &[u64]) -> SessionSummary {
        SessionSummary {
            id: SessionId::new(id).unwrap(),
            present: present.iter().map(|s| s.to_string()).collect(),
            last_seen: seen.iter().map(|(u, t)| (u.to_string(), *t)).collect(),
            open_questions: 2,
            polls: polls
                .iter()
                .enumerate()
                .map(|(i, v)| PollSummary {
                    id: format!("p{i}"),
                    question: "Q?".to_owned(),
                    open: i == 0,
                    voters: *v,
                })
                .collect(),
        }
    }

    fn aggregates(students: u64) -> view::CohortAggregates {
        view::CohortAggregates {
            cohort: cohort(),
            students,
            lessons: Vec::new(),
            completion_rate: 12.5,
        }
    }

    const DAY: i64 = DAY_MS as i64;

    fn at_day(day: i64) -> Millis {
        Millis((day * DAY) as u64)
    }

    #[test]
    fn the_dashboard_sums_sessions_and_finds_the_inactive() {
        let now = at_day(100);
        let activity = CohortActivity {
            students: vec![
                student("amy", Some(99 * DAY)),
                student("bob", Some(10 * DAY)),
                student("cat", None),
                student("dan", None),
            ],
            sessions: Vec::new(),
        };
        let sessions = [
            session("s1", &["amy", "ta"], &[("dan", 98 * DAY)], &[3, 1]),
            session("s2", &["cat"], &[("bob", 20 * DAY), ("dan", 50 * DAY)], &[]),
        ];
        let d = Dashboard::compute(cohort(), aggregates(3), &activity, &sessions, 7, now);
        assert_eq!(d.students, 3);
        assert_eq!(d.open_questions, 4);
        assert_eq!(d.online.users, ["amy", "cat"]);
        assert_eq!((d.online.count, d.online.staff), (2, 1));
        let pcts: Vec<f64> = d.polls.iter().map(|p| p.participation_pct).collect();
        assert_eq!(pcts, [100.0, 33.3]);
        assert_eq!(d.polls[0].session.as_str(), "s1");
        // bob's latest is a visit 80 days ago; cat never did anything; dan was seen 2 days ago
        // (the latest of two sessions), amy made progress yesterday.
        let inactive: Vec<(&str, Option<i64>)> = d
            .inactive
            .iter()
            .map(|s| (s.user.as_str(), s.last_active_at))
            .collect();
        assert_eq!(inactive, [("bob", Some(20 * DAY)), ("cat", None)]);
    }

    #[test]
    fn the_dashboard_keeps_the_field_names_clients_read() {
        let activity = CohortActivity {
            students: vec![student("amy", None)],
            sessions: Vec::new(),
        };
        let sessions = [session("s1", &[], &[], &[1])];
        let d = Dashboard::compute(cohort(), aggregates(0), &activity, &sessions, 7, at_day(1));
        assert_eq!(
            serde_json::to_value(&d).unwrap(),
            json!({
                "cohort": "c1", "students": 0,
                "online": {"count": 0, "users": [], "staff": 0},
                "lessons": [], "completionRate": 12.5, "openQuestions": 2,
                "polls": [{"session": "s1", "poll": "p0", "question": "Q?", "open": true,
                           "voters": 1, "participationPct": 0.0}],
                "inactiveDays": 7,
                "inactive": [{"user": "amy", "name": "AMY", "lastActiveAt": null}],
            })
        );
    }
}
