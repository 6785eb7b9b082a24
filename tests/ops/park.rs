//! An SMTP server that cannot be reached (its port refuses connections: no reply at all, not a
//! 5xx) parks email jobs instead of dead-lettering them: far more failed probes than
//! `attempts_max` allows, no dead letter, `lectern jobs list` shows them parked; when the
//! server is back on the same address, every email goes out exactly once. A parking period
//! that ends (compressed through configuration) dead-letters them with the reason, and
//! `lectern jobs retry --all-dead` sends them once the server is back.

use std::time::Duration;

use lectern_testkit::SmtpServer;

use super::lectern;
use super::within;
use crate::notify::{NotifyNode, wait_jobs};

const ADMIN_TOKEN: &str = "an-admin-token-for-the-park-test";
const WAIT: Duration = Duration::from_secs(60);
const STUDENTS: [&str; 3] = ["student1", "student2", "student3"];

async fn list(node: &NotifyNode) -> anyhow::Result<serde_json::Value> {
    let http = node.node.http_addr.to_string();
    lectern(&[
        "--json",
        "jobs",
        "list",
        "--http",
        &http,
        "--admin-token",
        ADMIN_TOKEN,
    ])
    .await?
    .expect_code(0)?
    .json()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn emails_wait_parked_while_the_mail_server_is_unreachable_and_go_out_once_when_it_is_back() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let addr = smtp.addr();
        let node = NotifyNode::start_with("ops-park", &smtp, |c| {
            c.admin_token = Some(ADMIN_TOKEN.to_owned());
            c.notify.attempts_max = 2;
            c.notify.backoff_base_ms = 20;
            c.notify.park_probe_max_ms = 100;
        })
        .await?;
        smtp.stop();
        for (i, student) in STUDENTS.iter().enumerate() {
            node.grade(student, &format!("quiz{i}"), 6).await?;
        }
        // Many more failed tries than attempts_max = 2, and nothing dead-lettered.
        let stats = wait_jobs(&node.node, |s| s.parked == 3 && s.retried >= 8).await?;
        assert_eq!(stats.dead, 0, "{stats:?}");
        assert_eq!(stats.inapp_delivered, 3, "in-app is not held up: {stats:?}");
        let metrics = node.http.get("/metrics", None).await?.text();
        assert!(
            metrics.lines().any(|l| l == "lectern_jobs_parked 3"),
            "{metrics}"
        );
        assert!(
            metrics.lines().any(|l| l
                .starts_with("lectern_email_failures_total{reason=\"unreachable\"}")
                && !l.ends_with(" 0")),
            "{metrics}"
        );
        let listed = list(&node).await?;
        assert_eq!(listed["counts"]["parked"], 3, "{listed}");
        assert_eq!(listed["counts"]["dead"], 0, "{listed}");
        for job in listed["jobs"].as_array().into_iter().flatten() {
            assert!(
                job["state"] == "parked" || job["state"] == "running",
                "{job}"
            );
            assert_eq!(job["attempts"], 0, "parked tries spend no attempt: {job}");
        }
        let parked = listed["jobs"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|j| j["lastError"].is_string())
            .cloned()
            .unwrap_or_default();
        assert!(
            parked["lastError"]
                .as_str()
                .unwrap_or_default()
                .starts_with("SMTP:"),
            "{parked}"
        );

        // The server is back on its address: every parked email goes out, once.
        let smtp = SmtpServer::start_on(addr).await?;
        let mails = smtp.wait_for_mails(3, WAIT).await?;
        node.jobs_idle().await?;
        let mut to: Vec<String> = mails.iter().flat_map(|m| m.rcpt_to.clone()).collect();
        to.sort();
        let want: Vec<String> = STUDENTS
            .iter()
            .map(|s| format!("{s}@example.test"))
            .collect();
        assert_eq!(to, want);
        let stats = wait_jobs(&node.node, |s| s.parked == 0).await?;
        assert_eq!(stats.dead, 0, "{stats:?}");
        assert_eq!(stats.emails_sent, 3, "{stats:?}");
        assert_eq!(smtp.mails().len(), 3, "exactly once each");
        let listed = list(&node).await?;
        assert_eq!(listed["counts"]["queued"], 0, "{listed}");
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_parking_period_that_ends_dead_letters_with_the_reason_and_retry_all_dead_sends_them() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let addr = smtp.addr();
        let node = NotifyNode::start_with("ops-park-expiry", &smtp, |c| {
            c.admin_token = Some(ADMIN_TOKEN.to_owned());
            c.notify.attempts_max = 50;
            c.notify.backoff_base_ms = 20;
            c.notify.park_probe_max_ms = 50;
            // 72 h compressed to 400 ms.
            c.notify.park_unreachable_ms = 400;
        })
        .await?;
        smtp.stop();
        node.grade("student1", "quiz1", 9).await?;
        node.grade("student2", "quiz1", 8).await?;
        let stats = wait_jobs(&node.node, |s| s.dead == 2 && s.running == 0).await?;
        assert!(
            stats.retried < 50,
            "the period, not the attempts, ended it: {stats:?}"
        );
        let listed = list(&node).await?;
        assert_eq!(listed["counts"]["dead"], 2, "{listed}");
        for job in listed["jobs"].as_array().into_iter().flatten() {
            let reason = job["lastError"].as_str().unwrap_or_default();
            assert!(reason.contains("unreachable"), "{job}");
        }

        let smtp = SmtpServer::start_on(addr).await?;
        let http = node.node.http_addr.to_string();
        let retried = lectern(&[
            "--json",
            "jobs",
            "retry",
            "--all-dead",
            "--http",
            &http,
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .await?
        .expect_code(0)?
        .json()?;
        assert_eq!(
            retried["retried"].as_array().map(Vec::len),
            Some(2),
            "{retried}"
        );
        smtp.wait_for_mails(2, WAIT).await?;
        node.jobs_idle().await?;
        assert_eq!(smtp.mails().len(), 2);
        assert_eq!(list(&node).await?["counts"]["dead"], 0);
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}
