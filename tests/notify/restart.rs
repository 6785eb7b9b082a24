//! A node stopped in the middle of 1,000 notification jobs delivers each exactly once after it
//! starts again: every student gets one email (one Message-ID each, none twice) and one inbox
//! entry.

use std::collections::HashMap;
use std::time::Duration;

use lectern_model::DocId;
use lectern_testkit::SmtpServer;
use serde_json::json;

use super::{NotifyNode, add_students};
use crate::gateway::within;

const STUDENTS: usize = 1_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_in_the_middle_of_1000_notifications_delivers_each_exactly_once() {
    within(async {
        let smtp = SmtpServer::start().await?;
        // A slow mail server, so that the stop lands while most emails are still queued.
        smtp.set_delay(Duration::from_millis(2));
        let node = NotifyNode::start("notify-restart", &smtp).await?;
        let students = add_students(node.hub(), STUDENTS).await?;
        let ada = node.token("ada", "instructor");
        node.cohort_command(
            &ada,
            json!({"cmd": "announcement.post", "title": "Exam moved", "body": "The exam is on Friday."}),
        )
        .await?;
        // Stop once some emails went out: deliveries and emails are mid-flight.
        smtp.wait_for_mails(100, Duration::from_secs(60)).await?;
        let before = node.node.jobs.stats();
        let dir = node.stop().await?;
        let sent_before = smtp.mails().len();
        assert!(
            sent_before < STUDENTS + 2,
            "the stop came after everything was sent ({sent_before}); the test shows nothing"
        );

        let node = NotifyNode::restart(dir, &smtp, |_| {}).await?;
        let resumed = node.node.jobs.stats();
        assert!(resumed.pending > 0, "jobs were queued across the restart: {before:?} / {resumed:?}");
        // student1 and student2 of the demo are in the cohort too.
        let expected = STUDENTS + 2;
        smtp.wait_for_mails(expected, Duration::from_secs(60)).await?;
        node.jobs_idle().await?;
        let mails = smtp.mails();
        assert_eq!(mails.len(), expected, "one email per student, none twice");
        let mut per_rcpt: HashMap<String, usize> = HashMap::new();
        let mut per_id: HashMap<String, usize> = HashMap::new();
        for m in &mails {
            for r in &m.rcpt_to {
                *per_rcpt.entry(r.clone()).or_default() += 1;
            }
            *per_id
                .entry(m.header("Message-ID").unwrap_or_default())
                .or_default() += 1;
        }
        assert_eq!(per_rcpt.len(), expected);
        assert!(per_rcpt.values().all(|n| *n == 1));
        assert_eq!(per_id.len(), expected);
        for s in &students {
            assert_eq!(per_rcpt.get(&format!("{s}@example.test")), Some(&1), "{s}");
        }
        // In-app: exactly one entry in every inbox.
        for s in &students {
            let owner = s.clone();
            let caller = lectern_model::Caller {
                user: owner.clone(),
                name: String::new(),
                role: lectern_model::Role::Student,
                cohorts: vec![],
            };
            let view = node
                .hub()
                .read(DocId::Inbox(owner), move |r| r.inbox_view(&caller))
                .await?
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            assert_eq!(view["total"], 1, "{s}: {view}");
        }
        let store = node.hub().store().clone();
        let dead = tokio::task::spawn_blocking(move || store.dead_jobs()).await??;
        assert!(dead.is_empty(), "{dead:?}");
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}
