//! SMTP down: email jobs retry with exponential backoff, then are dead-lettered with the
//! reason; the in-app notification arrives regardless.

use std::time::Duration;

use lectern_jobs::JobRecord;
use lectern_testkit::{SmtpMode, SmtpServer};

use super::{NotifyNode, inbox, wait_jobs};
use crate::gateway::within;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_that_refuses_gets_retries_with_backoff_then_a_dead_letter() {
    within(async {
        let smtp = SmtpServer::start().await?;
        smtp.set_mode(SmtpMode::Transient);
        let node = NotifyNode::start_with("notify-451", &smtp, |c| {
            c.notify.attempts_max = 5;
            c.notify.backoff_base_ms = 100;
        })
        .await?;
        node.grade("student1", "quiz1", 7).await?;
        // In-app is not held up by email.
        wait_jobs(&node.node, |s| s.inapp_delivered == 1).await?;
        assert_eq!(inbox(&node, "student1").await?["unread"], 1);

        let stats = wait_jobs(&node.node, |s| s.dead == 1 && s.running == 0).await?;
        assert_eq!(stats.retried, 4, "{stats:?}");
        assert_eq!(stats.emails_sent, 0);
        // `/metrics` shows the runner's counters.
        let metrics = node.http.get("/metrics", None).await?.text();
        for line in [
            "lectern_jobs_dead_total 1",
            "lectern_jobs_retried_total 4",
            "lectern_jobs_pending 0",
            "lectern_notifications_inapp_total 1",
            "lectern_notifications_emails_total 0",
        ] {
            assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
        }
        let attempts = smtp.attempts();
        assert_eq!(attempts.len(), 5, "one MAIL FROM per attempt");
        // Each wait at least its backoff, which doubles from the base: 100, 200, 400, 800 ms.
        // These floors are what proves the growth (a constant or linear delay from the base
        // falls short of them); no upper bound or ratio between gaps is checked, since a
        // stall of the machine can stretch any one wait.
        let gaps: Vec<Duration> = attempts.windows(2).map(|w| w[1] - w[0]).collect();
        for (i, gap) in gaps.iter().enumerate() {
            let floor = Duration::from_millis(100 << i);
            assert!(
                *gap >= floor,
                "retry {i} came after {gap:?}, before {floor:?}: {gaps:?}"
            );
        }

        let store = node.hub().store().clone();
        let dead = tokio::task::spawn_blocking(move || store.dead_jobs()).await??;
        assert_eq!(dead.len(), 1, "{dead:?}");
        let record = JobRecord::decode(&dead[0].1).map_err(anyhow::Error::msg)?;
        assert!(record.id.ends_with("/student1/email"), "{}", record.id);
        assert_eq!(record.attempts, 5);
        let reason = record.last_error.unwrap_or_default();
        assert!(
            reason.contains("451"),
            "the reason names the reply: {reason}"
        );
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mail_server_that_is_gone_dead_letters_with_the_reason_and_in_app_still_works() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start_with("notify-down", &smtp, |c| {
            c.notify.attempts_max = 3;
            c.notify.backoff_base_ms = 20;
            // Parking off: an unreachable server then spends attempts like a 4xx (parking is
            // tested in tests/ops/park.rs).
            c.notify.park_unreachable_ms = 0;
        })
        .await?;
        smtp.stop();
        node.grade("student2", "quiz1", 5).await?;
        let stats = wait_jobs(&node.node, |s| {
            s.dead == 1 && s.running == 0 && s.pending == 0
        })
        .await?;
        assert_eq!(stats.inapp_delivered, 1, "{stats:?}");
        assert_eq!(stats.retried, 2, "{stats:?}");
        assert_eq!(inbox(&node, "student2").await?["unread"], 1);
        let store = node.hub().store().clone();
        let dead = tokio::task::spawn_blocking(move || store.dead_jobs()).await??;
        let record = JobRecord::decode(&dead[0].1).map_err(anyhow::Error::msg)?;
        assert_eq!(record.attempts, 3);
        let reason = record.last_error.unwrap_or_default();
        assert!(reason.starts_with("SMTP:"), "{reason}");

        // A permanent refusal (5xx) is not retried.
        let smtp = SmtpServer::start().await?;
        smtp.set_mode(SmtpMode::Permanent);
        let dir = node.stop().await?;
        let node = NotifyNode::restart(dir, &smtp, |c| c.notify.attempts_max = 5).await?;
        node.grade("student1", "quiz9", 1).await?;
        let stats = wait_jobs(&node.node, |s| {
            s.dead == 1 && s.running == 0 && s.pending == 0
        })
        .await?;
        assert_eq!(stats.retried, 0, "{stats:?}");
        assert_eq!(smtp.attempts().len(), 1);
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}
