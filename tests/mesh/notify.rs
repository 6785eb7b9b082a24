//! Issue 5's rule over a real mesh: a graded quiz accepted on one node sends exactly one email,
//! though three nodes replicating over QUIC all hold the cohort and the grade (jobs are
//! triggered only where the command was accepted, never by changes that arrive from a peer).

use std::time::Duration;

use lectern_model::{DocId, Role};
use lectern_node::DEMO_COHORT;
use lectern_testkit::{Http, SmtpServer};
use serde_json::json;

use super::{Cluster, demo_caller, token, within};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grade_replicated_to_three_nodes_over_quic_sends_exactly_one_email() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let mail_to = |c: &mut lectern_node::Config| crate::notify::mail_to(c, &smtp);
        let mut cluster = Cluster::new("mesh-notify")?;
        let a = cluster.start_with("a", vec![], true, mail_to).await?;
        let b = cluster
            .start_with("b", vec![cluster.peer(a)], false, mail_to)
            .await?;
        let c = cluster
            .start_with("c", vec![cluster.peer(a), cluster.peer(b)], false, mail_to)
            .await?;
        let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
        cluster
            .converged(&cohort, &[a, b, c], Duration::from_secs(10))
            .await?;

        // The instructor grades on A, over REST.
        let http = Http::new(cluster.node(a).http_addr);
        let resp = http
            .post_json(
                &format!("/api/cohorts/{DEMO_COHORT}/commands"),
                Some(&token("ada", "instructor")),
                &json!({"cmd": "progress.update", "student": "student1", "lesson": "quiz1",
                        "status": "completed", "score": 8, "max_score": 10}),
            )
            .await?;
        anyhow::ensure!(resp.status == 200, "{} {}", resp.status, resp.text());

        // The grade reaches B and C over the mesh.
        cluster
            .converged(&cohort, &[a, b, c], Duration::from_secs(10))
            .await?;
        for i in [b, c] {
            let viewer = demo_caller("ada", Role::Instructor);
            let student = "student1".parse()?;
            let progress = cluster
                .node(i)
                .hub
                .read(cohort.clone(), move |r| {
                    r.student_progress(&viewer, &student)
                })
                .await?
                .map_err(|r| anyhow::anyhow!("{r}"))?;
            anyhow::ensure!(
                progress.to_string().contains("\"score\":8"),
                "node {i} holds the grade: {progress}"
            );
        }

        // A sends the one email; its runner then goes idle.
        let mails = smtp.wait_for_mails(1, Duration::from_secs(30)).await?;
        let stats_a = crate::notify::wait_jobs(cluster.node(a), |s| {
            s.pending == 0 && s.running == 0 && s.emails_sent >= 1
        })
        .await?;
        anyhow::ensure!(stats_a.emails_sent == 1, "A: {stats_a:?}");
        // B and C hold the replicated grade but never queued a job for it: a job is committed
        // in the same batch as the command that triggers it, so there is nothing to wait for.
        for i in [b, c] {
            let store = cluster.node(i).hub.store().clone();
            let pending = tokio::task::spawn_blocking(move || store.pending_jobs()).await??;
            anyhow::ensure!(pending.is_empty(), "node {i} queued jobs: {pending:?}");
            let stats = cluster.node(i).jobs.stats();
            anyhow::ensure!(
                stats.completed == 0 && stats.emails_sent == 0 && stats.running == 0,
                "node {i} ran jobs: {stats:?}"
            );
        }
        anyhow::ensure!(smtp.mails().len() == 1, "emails: {}", smtp.mails().len());
        assert_eq!(
            mails[0].rcpt_to,
            vec![format!("student1@{}", crate::notify::EMAIL_DOMAIN)]
        );
        assert_eq!(
            mails[0].header("Subject").as_deref(),
            Some("Your grade for quiz1 is ready")
        );
        assert!(mails[0].header("List-Unsubscribe").is_some());
        cluster.stop_all().await
    })
    .await
    .expect("one email for a grade held by three nodes");
}
