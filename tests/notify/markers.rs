//! Finished-job markers: kept for the configured retention (they keep a finished job from being
//! queued again), then forgotten, so the store does not grow by a key per notification.

use std::time::Duration;

use lectern_testkit::SmtpServer;

use super::NotifyNode;
use crate::gateway::within;

/// How many finished jobs `node`'s store remembers.
async fn finished(node: &NotifyNode) -> anyhow::Result<usize> {
    let store = node.hub().store().clone();
    Ok(tokio::task::spawn_blocking(move || store.finished_jobs()).await??)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn finished_job_markers_are_kept_for_their_retention_then_forgotten() -> anyhow::Result<()> {
    within(async {
        let smtp = SmtpServer::start().await?;
        // The default retention (30 days) keeps them.
        let kept = NotifyNode::start("markers-kept", &smtp).await?;
        kept.grade("student1", "quiz1", 9).await?;
        let stats = kept.jobs_idle().await?;
        anyhow::ensure!(stats.completed >= 2, "grade, delivery, email: {stats:?}");
        let n = finished(&kept).await?;
        anyhow::ensure!(
            n as u64 == stats.completed,
            "one marker per finished job: {n} vs {stats:?}"
        );
        kept.stop().await?;

        // A retention of zero: each sweep (every 100 ms) forgets every marker it finds.
        let pruned = NotifyNode::start_with("markers-pruned", &smtp, |c| {
            c.notify.finished_jobs_kept_ms = 0;
        })
        .await?;
        pruned.grade("student1", "quiz1", 9).await?;
        let stats = pruned.jobs_idle().await?;
        anyhow::ensure!(stats.completed >= 2, "{stats:?}");
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let n = finished(&pruned).await?;
            if n == 0 {
                break;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{n} markers still there"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Forgetting them changed nothing delivered: one email, one inbox item.
        anyhow::ensure!(smtp.mails().len() == 2, "one email per node's grade");
        pruned.stop().await?;
        Ok(())
    })
    .await
}
