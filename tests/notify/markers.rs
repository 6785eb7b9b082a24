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

/// A short retention, two generations of markers half a retention apart: the sweep that forgets
/// the older ones keeps every younger one. Kills: a sweep that forgets markers regardless of
/// their age (`finished_at < finished_before_ms` → `true` in `Store::prune_job_markers`), and
/// one that forgets none (the older generation is never seen gone).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sweep_forgets_the_markers_past_their_retention_and_keeps_the_younger_ones()
-> anyhow::Result<()> {
    /// The retention, ms: sweeps run every quarter of it (2 s), and the younger markers are
    /// still a half-retention (4 s) from expiring when the older ones go.
    const KEPT_MS: u64 = 8_000;
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start_with("markers-sweep", &smtp, |c| {
            c.notify.finished_jobs_kept_ms = KEPT_MS;
        })
        .await?;
        node.grade("student1", "quiz1", 9).await?;
        let first = node.jobs_idle().await?;
        let older = finished(&node).await?;
        anyhow::ensure!(
            older as u64 == first.completed && older >= 2,
            "{older} markers for {first:?}"
        );
        // Half a retention later, a second generation.
        tokio::time::sleep(Duration::from_millis(KEPT_MS / 2)).await;
        node.grade("student2", "quiz1", 8).await?;
        let second = node.jobs_idle().await?;
        let younger = (second.completed - first.completed) as usize;
        anyhow::ensure!(younger >= 2, "{first:?} then {second:?}");
        anyhow::ensure!(
            finished(&node).await? == older + younger,
            "both generations kept within their retention"
        );
        // The sweep that forgets the older generation (one retention after it finished, within
        // a sweep period) leaves exactly the younger one.
        let deadline = tokio::time::Instant::now() + Duration::from_millis(3 * KEPT_MS);
        let left = loop {
            let n = finished(&node).await?;
            if n <= younger {
                break n;
            }
            anyhow::ensure!(
                tokio::time::Instant::now() < deadline,
                "{n} markers still there; the older {older} were never forgotten"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        };
        anyhow::ensure!(
            left == younger,
            "the sweep left {left} markers; the {younger} younger ones must stay"
        );
        node.stop().await?;
        Ok(())
    })
    .await
}
