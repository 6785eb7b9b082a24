//! Per-person quotas on a real node over HTTP: one student asking questions until refused
//! does not close the session to anyone else, and one student cannot grow the cohort's
//! progress with invented lessons past a course's worth. (The exact boundaries of every quota,
//! chat and visits included, are in `model::quotas`.)

use anyhow::Context;
use lectern_model::limits::{LESSONS_PER_STUDENT_MAX, QUESTIONS_PER_USER_PER_SESSION_MAX};
use lectern_node::DEMO_COHORT;
use serde_json::json;

use super::{Demo, within};

/// Kills: no per-person question quota at the gateway's model (the student's next question
/// accepted until the session's shared limit), a quota that refuses everyone once one
/// person is at it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_student_at_the_question_quota_leaves_the_session_open_to_others() -> anyhow::Result<()>
{
    within(async {
        let demo = Demo::start_with("quota-questions", |c| {
            c.limits.command_burst = 100_000;
            c.limits.commands_per_s = 100_000.0;
        })
        .await?;
        let (stu1, stu2) = (
            demo.token("student1", "student"),
            demo.token("student2", "student"),
        );
        // The demo session may already hold some of student1's questions: ask until refused.
        let mut over = None;
        for i in 0..=QUESTIONS_PER_USER_PER_SESSION_MAX {
            let r = demo
                .command(&stu1, "qa.ask", json!({"text": format!("question {i}?")}))
                .await?;
            if r.status != 200 {
                over = Some(r);
                break;
            }
        }
        let over = over.context("the per-person quota never refused a question")?;
        assert_eq!(
            over.error_code().as_deref(),
            Some("limit_reached"),
            "{}",
            over.text()
        );
        let view = demo.session_view().await?;
        let mine = view["questions"]
            .as_array()
            .context("the view lists questions")?
            .iter()
            .filter(|q| q["author"]["id"] == "student1")
            .count();
        assert_eq!(
            mine, QUESTIONS_PER_USER_PER_SESSION_MAX,
            "student1's questions"
        );
        let other = demo
            .command(&stu2, "qa.ask", json!({"text": "may I still ask?"}))
            .await?;
        assert_eq!(other.status, 200, "{}", other.text());
        Ok(())
    })
    .await
}

/// Kills: no lesson cap (invented lesson `LESSONS_PER_STUDENT_MAX + 1` accepted).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_student_cannot_invent_more_lessons_than_a_course_holds() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("quota-lessons", |c| {
            c.limits.command_burst = 100_000;
            c.limits.commands_per_s = 100_000.0;
        })
        .await?;
        let stu1 = demo.token("student1", "student");
        let progress = |lesson: String| {
            json!({"cohort": DEMO_COHORT, "lesson": lesson, "status": "in_progress"})
        };
        for i in 0..LESSONS_PER_STUDENT_MAX {
            let r = demo
                .http
                .post_json("/api/progress", Some(&stu1), &progress(format!("inv{i}")))
                .await?;
            anyhow::ensure!(r.status == 200, "lesson {i}: {} {}", r.status, r.text());
        }
        let over = demo
            .http
            .post_json("/api/progress", Some(&stu1), &progress("inv-over".into()))
            .await?;
        assert_eq!(
            over.error_code().as_deref(),
            Some("limit_reached"),
            "{}",
            over.text()
        );
        Ok(())
    })
    .await
}
