//! The leaderboard and instructor dashboard streams with a real SSE client: contents, opted-out
//! students anonymized, at most one update per interval and only when the board changed, and
//! `Last-Event-ID` resume.
//!
//! "At most once per interval" is checked on the boards' `publishedAt` stamps, which the server
//! takes from its ticker's schedule, not on when the test reads them: a board published in the
//! middle of a burst of commands and the next one an interval later can reach a reader that was
//! busy elsewhere a moment apart, or together.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;

use lectern_model::{Caller, Command, CommandBody, DocId, Role};
use lectern_node::{DEMO_COHORT, DEMO_SESSION};
use lectern_testkit::{SmtpServer, SseEvent, SseStream};
use serde_json::{Value, json};

use super::NotifyNode;
use crate::gateway::within;

const WAIT: Duration = Duration::from_secs(20);
const INTERVAL_MS: u64 = 300;

async fn open(
    node: &NotifyNode,
    path: &str,
    token: &str,
    last: Option<&str>,
) -> anyhow::Result<SseStream> {
    let auth = format!("Bearer {token}");
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(id) = last {
        headers.push(("last-event-id", id));
    }
    node.http
        .sse(path, &headers)
        .await?
        .map_err(|r| anyhow::anyhow!("{path} refused: {} {}", r.status, r.text()))
}

fn data(e: &SseEvent) -> anyhow::Result<Value> {
    Ok(serde_json::from_str(&e.data)?)
}

fn unix_now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// A board's `publishedAt`: present, and not in the future (the server shares this clock; a
/// second of slack for the stamp's rounding).
fn published_at(board: &Value) -> anyhow::Result<u64> {
    let at = board["publishedAt"]
        .as_u64()
        .with_context(|| format!("a board without publishedAt: {board}"))?;
    let now = unix_now_ms();
    anyhow::ensure!(
        at <= now + 1_000,
        "published at {at}, in the future of {now}"
    );
    Ok(at)
}

/// A board without its publication stamp: what changes when the board changes.
fn content(board: &Value) -> Value {
    let mut v = board.clone();
    if let Some(map) = v.as_object_mut() {
        map.remove("publishedAt");
    }
    v
}

/// Checks that `next` may follow `last` on a board stream: it changed something (a board is
/// only sent when it changed) and was published at least an interval after it.
fn follows(last: &Value, next: &Value) -> anyhow::Result<()> {
    anyhow::ensure!(
        content(next) != content(last),
        "an update that changes nothing: {next}"
    );
    let (before, at) = (published_at(last)?, published_at(next)?);
    anyhow::ensure!(
        at >= before + INTERVAL_MS,
        "two updates published {} ms apart, the interval is {INTERVAL_MS} ms: {last} then {next}",
        at.saturating_sub(before)
    );
    Ok(())
}

/// Reads `name` events until one satisfies `done`; each must follow the one before it (see
/// [`follows`]), the first `last`.
async fn until(
    stream: &mut SseStream,
    name: &str,
    last: &mut Value,
    done: impl Fn(&Value) -> bool,
) -> anyhow::Result<SseEvent> {
    loop {
        let e = stream.next_event(WAIT).await?;
        anyhow::ensure!(e.event == name, "expected {name}, got {e:?}");
        let v = data(&e)?;
        follows(last, &v)?;
        *last = v.clone();
        if done(&v) {
            return Ok(e);
        }
    }
}

fn entry<'a>(board: &'a Value, rank_of: &str) -> Option<&'a Value> {
    board["entries"]
        .as_array()?
        .iter()
        .find(|e| e["user"] == rank_of || (rank_of == "Anonymous" && e["name"] == "Anonymous"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaderboard_streams_changes_at_most_once_per_interval_anonymizes_and_resumes() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start_with("boards-lb", &smtp, |c| {
            c.notify.leaderboard_interval_ms = INTERVAL_MS;
        })
        .await?;
        let path = format!("/api/stream/leaderboard/{DEMO_COHORT}");
        let s1 = node.token("student1", "student");
        let s2 = node.token("student2", "student");
        let ada = node.token("ada", "instructor");
        let mut student = open(&node, &path, &s1, None).await?;
        let mut staff = open(&node, &path, &ada, None).await?;
        let state = student.next_event(WAIT).await?;
        assert_eq!(state.event, "state");
        let board = data(&state)?["state"].clone();
        assert_eq!(
            board["entries"].as_array().map(Vec::len),
            Some(2),
            "{board}"
        );
        published_at(&board)?;
        let staff_state = staff.next_event(WAIT).await?;
        assert_eq!(staff_state.event, "state");
        let staff_board = data(&staff_state)?["state"].clone();

        // student2 hides their name, then both are graded in a burst of commands.
        node.cohort_command(
            &s2,
            json!({"cmd": "leaderboard.privacy", "anonymous": true}),
        )
        .await?;
        for (lesson, s1_score, s2_score) in [("q1", 5, 9), ("q2", 6, 10), ("q3", 7, 10)] {
            node.grade("student1", lesson, s1_score).await?;
            node.grade("student2", lesson, s2_score).await?;
        }
        let mut seen = board.clone();
        let e = until(&mut student, "leaderboard", &mut seen, |b| {
            entry(b, "Anonymous").is_some_and(|e| e["score"] == 29)
                && entry(b, "student1").is_some_and(|e| e["score"] == 18)
        })
        .await?;
        let b = data(&e)?;
        let anon = entry(&b, "Anonymous").expect("student2, anonymized");
        assert_eq!(anon["rank"], 1);
        assert_eq!(anon["user"], Value::Null);
        assert!(!b.to_string().contains("student2"), "{b}");
        let me = entry(&b, "student1").expect("student1");
        assert_eq!(me["rank"], 2);
        assert_eq!(me["maxScore"], 30);
        // Staff see the name.
        let mut staff_seen = staff_board;
        let se = until(&mut staff, "leaderboard", &mut staff_seen, |b| {
            entry(b, "student2").is_some_and(|e| e["score"] == 29)
        })
        .await?;
        assert_eq!(
            entry(&data(&se)?, "student2").expect("named")["name"],
            "Linus"
        );

        // Each finds their own place on the board the stream last published, anonymized or
        // not; staff are not on it; another cohort's member may not look.
        let me_path = format!("/api/cohorts/{DEMO_COHORT}/leaderboard/me");
        let me = |token: String| {
            let (http, path) = (&node.http, me_path.clone());
            async move {
                let r = http.get(&path, Some(&token)).await?;
                anyhow::ensure!(r.status == 200, "{} {}", r.status, r.text());
                r.json()
            }
        };
        let linus = me(s2.clone()).await?;
        assert_eq!(
            (
                &linus["rank"],
                &linus["of"],
                &linus["score"],
                &linus["anonymous"]
            ),
            (&json!(1), &json!(2), &json!(29), &json!(true)),
            "{linus}"
        );
        assert!(linus["publishedAt"].as_u64().is_some(), "{linus}");
        let grace = me(s1.clone()).await?;
        assert_eq!(
            (&grace["rank"], &grace["maxScore"], &grace["anonymous"]),
            (&json!(2), &json!(30), &json!(false)),
            "{grace}"
        );
        let staff_me = me(ada.clone()).await?;
        assert_eq!(
            (&staff_me["rank"], &staff_me["of"]),
            (&Value::Null, &json!(2))
        );
        let outsider = lectern_gateway::auth::mint(
            &node.node.secret,
            &crate::gateway::claims(
                "eve",
                "student",
                &["other-cohort"],
                crate::gateway::unix_now_s() + 600,
            ),
        )?;
        let refused = node.http.get(&me_path, Some(&outsider)).await?;
        assert_eq!(refused.status, 403, "{}", refused.text());
        assert_eq!(refused.error_code().as_deref(), Some("not_member"));

        // A change that does not move the board sends nothing; the next one that does is the
        // next event (so nothing was sent for the first).
        node.cohort_command(
            &ada,
            json!({"cmd": "announcement.post", "title": "Hi", "body": "No scores here."}),
        )
        .await?;
        node.grade("student1", "q4", 10).await?;
        let e = until(&mut student, "leaderboard", &mut seen, |_| true).await?;
        assert_eq!(
            entry(&data(&e)?, "student1").expect("student1")["score"],
            28
        );
        let last_id = e.id.clone().expect("an id");
        drop(student);

        // Resume with the latest id: nothing until the board changes.
        let mut resumed = open(&node, &path, &s1, Some(&last_id)).await?;
        node.grade("student1", "q5", 3).await?;
        let e = resumed.next_event(WAIT).await?;
        assert_eq!(
            e.event, "leaderboard",
            "no state for a client that is current: {e:?}"
        );
        let b = data(&e)?;
        follows(&seen, &b)?;
        assert_eq!(entry(&b, "student1").expect("student1")["score"], 31);
        drop(resumed);
        // Resume with an old id: the current board at once.
        let mut behind = open(&node, &path, &s1, Some(&last_id)).await?;
        let e = behind.next_event(WAIT).await?;
        assert_eq!(e.event, "state");
        let current = data(&e)?["state"].clone();
        assert_eq!(entry(&current, "student1").expect("student1")["score"], 31);
        assert_eq!(
            current["publishedAt"], b["publishedAt"],
            "the current board, as it was published"
        );

        // Non-members are refused.
        let outsider = lectern_gateway::auth::mint(
            &node.node.secret,
            &crate::gateway::claims(
                "eve",
                "student",
                &["other"],
                crate::gateway::unix_now_s() + 60,
            ),
        )?;
        let refused = node
            .http
            .sse(&path, &[("authorization", &format!("Bearer {outsider}"))])
            .await?;
        let r = refused.err().expect("refused");
        assert_eq!(r.status, 403);
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

fn student(user: &str) -> Caller {
    Caller {
        user: user.parse().expect("an id"),
        name: user.to_owned(),
        role: Role::Student,
        cohorts: vec![DEMO_COHORT.parse().expect("an id")],
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_instructor_dashboard_shows_the_class_live_to_staff_only_and_resumes() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start_with("boards-dash", &smtp, |c| {
            c.notify.dashboard_interval_ms = INTERVAL_MS;
            c.notify.inactive_days = 1;
        })
        .await?;
        let path = format!("/api/stream/instructor/{DEMO_COHORT}");
        let s1 = node.token("student1", "student");
        let refused = node
            .http
            .sse(&path, &[("authorization", &format!("Bearer {s1}"))])
            .await?
            .err()
            .expect("a student is refused");
        assert_eq!(refused.status, 403);
        assert_eq!(refused.error_code().as_deref(), Some("forbidden"));

        let ada = node.token("ada", "instructor");
        let mut dash = open(&node, &path, &ada, None).await?;
        let state = dash.next_event(WAIT).await?;
        assert_eq!(state.event, "state");
        let d = data(&state)?["state"].clone();
        assert_eq!(d["students"], 2, "{d}");
        assert_eq!(d["online"]["count"], 0);
        assert_eq!(d["openQuestions"], 2, "the demo's two questions: {d}");
        assert_eq!(d["polls"][0]["voters"], 0);
        assert_eq!(d["inactive"].as_array().map(Vec::len), Some(2));
        published_at(&d)?;

        // The class happens: student1 joins the session and gets a grade, the instructor
        // answers a question, student2 votes.
        let session = DocId::Session(DEMO_SESSION.parse()?);
        let hub = node.hub();
        let run = |who: Caller, id: &str, body: CommandBody| {
            let cmd = Command {
                id: id.parse().expect("an id"),
                body,
            };
            let doc = session.clone();
            async move { hub.execute(doc, who, cmd).await }
        };
        run(
            student("student1"),
            "dash-join",
            CommandBody::AttendanceJoin,
        )
        .await?;
        node.grade("student1", "q1", 4).await?;
        let ada_caller = Caller {
            role: Role::Instructor,
            ..student("ada")
        };
        // The instructor is present too: counted apart from the students.
        run(
            ada_caller.clone(),
            "dash-ada-join",
            CommandBody::AttendanceJoin,
        )
        .await?;
        run(
            ada_caller,
            "dash-answer",
            CommandBody::QaAnswer {
                question: "demo-q1".parse()?,
                text: "Clocks drift.".into(),
            },
        )
        .await?;
        run(
            student("student2"),
            "dash-vote",
            CommandBody::PollVote {
                poll: "demo-poll".parse()?,
                choice: lectern_model::PollChoice::Rating(4),
            },
        )
        .await?;
        let mut seen = d.clone();
        let e = until(&mut dash, "dashboard", &mut seen, |d| {
            d["online"]["count"] == 1
                && d["online"]["staff"] == 1
                && d["openQuestions"] == 1
                && d["polls"][0]["voters"] == 1
                && d["inactive"].as_array().map(Vec::len) == Some(1)
        })
        .await?;
        let d = data(&e)?;
        assert_eq!(d["online"]["users"], json!(["student1"]));
        assert_eq!(d["online"]["staff"], 1, "{d}");
        assert_eq!(d["polls"][0]["participationPct"], 50.0);
        assert_eq!(d["inactive"][0]["user"], "student2", "{d}");
        let q1 = d["lessons"]
            .as_array()
            .and_then(|l| l.iter().find(|l| l["lesson"] == "q1"))
            .expect("lesson q1");
        assert_eq!(q1["completed"], 1);
        assert_eq!(q1["notStarted"], 1);
        let last_id = e.id.clone().expect("an id");
        drop(dash);

        // Resume: current → nothing until a change; the change arrives as an update.
        let mut resumed = open(&node, &path, &ada, Some(&last_id)).await?;
        run(
            student("student1"),
            "dash-leave",
            CommandBody::AttendanceLeave,
        )
        .await?;
        let e = resumed.next_event(WAIT).await?;
        assert_eq!(e.event, "dashboard", "{e:?}");
        let d = data(&e)?;
        follows(&seen, &d)?;
        assert_eq!(d["online"]["count"], 0);
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cohort_links_only_its_own_sessions_and_its_dashboard_never_shows_another_cohorts() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start_with("boards-xcohort", &smtp, |c| {
            c.notify.dashboard_interval_ms = INTERVAL_MS;
        })
        .await?;
        let hub = node.hub();
        // Cohort B's session, with a student present and an open question.
        let other: lectern_model::CohortId = "other".parse()?;
        let b_session = DocId::Session("other-s1".parse()?);
        let b = |user: &str, role: Role| Caller {
            user: user.parse().expect("an id"),
            name: user.to_owned(),
            role,
            cohorts: vec![other.clone()],
        };
        let cmd = |id: &str, body: CommandBody| Command {
            id: id.parse().expect("an id"),
            body,
        };
        let b_bodies = [
            (
                b("grace", Role::Instructor),
                cmd(
                    "b-create",
                    CommandBody::SessionCreate {
                        cohort: other.clone(),
                        title: "B only".into(),
                        moderation: false,
                    },
                ),
            ),
            (
                b("bob", Role::Student),
                cmd("b-join", CommandBody::AttendanceJoin),
            ),
            (
                b("bob", Role::Student),
                cmd(
                    "b-ask",
                    CommandBody::QaAsk {
                        text: "B's secret question".into(),
                        anonymous: false,
                    },
                ),
            ),
        ];
        for (who, c) in b_bodies {
            hub.execute(b_session.clone(), who, c).await?;
        }

        // Cohort A's instructor links B's session through the gateway: refused, nothing written.
        let ada = node.token("ada", "instructor");
        let refused = node
            .http
            .post_json(
                &format!("/api/cohorts/{DEMO_COHORT}/commands"),
                Some(&ada),
                &json!({"cmd": "session.link", "session": "other-s1", "title": "stolen"}),
            )
            .await?;
        assert!(
            refused.status >= 400,
            "{} {}",
            refused.status,
            refused.text()
        );
        assert_eq!(refused.error_code().as_deref(), Some("wrong_cohort"));
        let view = node
            .http
            .get(&format!("/api/cohorts/{DEMO_COHORT}"), Some(&ada))
            .await?
            .json()?;
        assert!(!view.to_string().contains("other-s1"), "{view}");
        // A session that does not exist cannot be linked either.
        let absent = node
            .http
            .post_json(
                &format!("/api/cohorts/{DEMO_COHORT}/commands"),
                Some(&ada),
                &json!({"cmd": "session.link", "session": "nowhere", "title": "ghost"}),
            )
            .await?;
        assert_eq!(absent.error_code().as_deref(), Some("doc_not_found"));

        // The same link written past the gateway (a peer or an older node): A's dashboard
        // still counts only A's sessions.
        let ada_caller = Caller {
            role: Role::Instructor,
            ..student("ada")
        };
        hub.execute(
            DocId::Cohort(DEMO_COHORT.parse()?),
            ada_caller,
            cmd(
                "a-link-b",
                CommandBody::SessionLink {
                    session: "other-s1".parse()?,
                    title: "stolen".into(),
                },
            ),
        )
        .await?;
        let mut dash = open(
            &node,
            &format!("/api/stream/instructor/{DEMO_COHORT}"),
            &ada,
            None,
        )
        .await?;
        let state = dash.next_event(WAIT).await?;
        assert_eq!(state.event, "state");
        let d = data(&state)?["state"].clone();
        assert_eq!(d["openQuestions"], 2, "only the demo's two questions: {d}");
        assert_eq!(d["online"]["count"], 0, "{d}");
        assert!(!d.to_string().contains("other-s1"), "{d}");
        assert!(!d.to_string().contains("bob"), "{d}");
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leaderboard_lists_only_roster_students_and_ties_do_not_betray_the_anonymous() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start("boards-lb-roster", &smtp).await?;
        let s1 = node.token("student1", "student");
        // student1 hides their name; both roster students tie. In user-id order student1
        // ("Anonymous") would come first, telling everyone who it is.
        node.cohort_command(
            &s1,
            json!({"cmd": "leaderboard.privacy", "anonymous": true}),
        )
        .await?;
        node.grade("student1", "q1", 7).await?;
        node.grade("student2", "q1", 7).await?;
        // A student of the cohort's token who is not on the roster reports invented lessons.
        let intruder = node.token("intruder", "student");
        for lesson in ["invented-1", "invented-2"] {
            node.cohort_command(
                &intruder,
                json!({"cmd": "progress.update", "student": "intruder", "lesson": lesson,
                       "status": "completed"}),
            )
            .await?;
        }

        let path = format!("/api/stream/leaderboard/{DEMO_COHORT}");
        for token in [&s1, &node.token("ada", "instructor")] {
            let mut stream = open(&node, &path, token, None).await?;
            let state = stream.next_event(WAIT).await?;
            assert_eq!(state.event, "state");
            let board = data(&state)?["state"].clone();
            let entries = board["entries"].as_array().cloned().unwrap_or_default();
            assert_eq!(entries.len(), 2, "only the roster's students: {board}");
            assert!(!board.to_string().contains("intruder"), "{board}");
            assert_eq!(
                entries[0]["name"], "Linus",
                "the named student first: {board}"
            );
            assert!(
                entries[1]["anonymous"] == true || entries[1]["name"] == "Anonymous",
                "the anonymous student second: {board}"
            );
            assert_eq!(
                (&entries[0]["rank"], &entries[1]["rank"]),
                (&json!(1), &json!(1))
            );
        }
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}
