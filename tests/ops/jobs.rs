//! `lectern jobs`: an email the mail server refused for good (5xx) is dead-lettered, listed,
//! shown, re-driven once the server accepts again and delivered exactly once; a job that is
//! running is refused as busy; a dropped job is never sent; each error has its exit code.

use std::time::Duration;

use lectern_testkit::{SmtpMode, SmtpServer};

use super::lectern;
use super::within;
use crate::notify::{NotifyNode, wait_jobs};

const ADMIN_TOKEN: &str = "an-admin-token-for-the-jobs-test";
const WAIT: Duration = Duration::from_secs(30);

/// A node mailing to `smtp` with the admin API on, and a long SMTP timeout (a held message
/// must not time out into a retry while the test looks at it).
async fn node(tag: &str, smtp: &SmtpServer) -> anyhow::Result<NotifyNode> {
    NotifyNode::start_with(tag, smtp, |c| {
        c.admin_token = Some(ADMIN_TOKEN.to_owned());
        if let Some(s) = c.notify.smtp.as_mut() {
            s.timeout_ms = 120_000;
        }
    })
    .await
}

/// `lectern [--json] jobs SUB --http ADDR --admin-token T ARGS…`.
async fn jobs(
    node: &NotifyNode,
    json: bool,
    sub: &str,
    args: &[&str],
) -> anyhow::Result<super::Run> {
    let http = node.node.http_addr.to_string();
    let mut all = Vec::new();
    if json {
        all.push("--json");
    }
    all.extend(["jobs", sub, "--http", &http, "--admin-token", ADMIN_TOKEN]);
    all.extend(args);
    lectern(&all).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_lettered_email_is_re_driven_with_lectern_jobs_retry_and_delivered_exactly_once() {
    within(async {
        let smtp = SmtpServer::start().await?;
        smtp.set_mode(SmtpMode::Permanent);
        let node = node("ops-jobs-retry", &smtp).await?;
        node.grade("student1", "quiz1", 7).await?;
        wait_jobs(&node.node, |s| s.dead == 1 && s.running == 0).await?;
        assert_eq!(smtp.attempts().len(), 1, "a 5xx is not retried");
        let gauge = |text: String, line: &str| text.lines().any(|l| l == line);
        let metrics = node.http.get("/metrics", None).await?.text();
        assert!(
            gauge(metrics.clone(), "lectern_jobs_dead_letters 1"),
            "{metrics}"
        );
        assert!(gauge(metrics, "lectern_emails_dead_total 1"));

        // Listed, with the reason, in JSON and as a table.
        let listed = jobs(&node, true, "list", &["--state", "dead"])
            .await?
            .expect_code(0)?
            .json()?;
        assert_eq!(listed["counts"]["dead"], 1, "{listed}");
        let job = &listed["jobs"][0];
        let id = job["id"].as_str().unwrap_or_default().to_owned();
        assert!(id.ends_with("/student1/email"), "{listed}");
        assert_eq!(job["state"], "dead");
        assert_eq!(job["kind"], "email");
        assert!(
            job["lastError"]
                .as_str()
                .unwrap_or_default()
                .contains("550"),
            "{job}"
        );
        let table = jobs(&node, false, "list", &[]).await?.expect_code(0)?;
        assert!(
            table.stdout.contains(&id) && table.stdout.contains("dead: 1"),
            "{table:?}"
        );
        let shown = jobs(&node, false, "show", &[&id])
            .await?
            .expect_code(0)?
            .json()?;
        assert_eq!(
            shown["job"]["record"]["job"]["to"], "student1@example.test",
            "{shown}"
        );

        // Re-driven while the server holds every message: the job is running, and an operator
        // who tries to drop or retry it meanwhile is told it is busy (exit 6).
        smtp.set_mode(SmtpMode::Accept);
        smtp.pause_after(0);
        let retried = jobs(&node, true, "retry", &[&id])
            .await?
            .expect_code(0)?
            .json()?;
        assert_eq!(retried["retried"][0]["state"], "queued", "{retried}");
        assert_eq!(retried["retried"][0]["attempts"], 0, "{retried}");
        smtp.wait_for_held(1, WAIT).await?;
        let busy = jobs(&node, true, "drop", &[&id])
            .await?
            .expect_code(6)?
            .json()?;
        assert_eq!(busy["error"]["code"], "job_running", "{busy}");
        let running = jobs(&node, true, "list", &["--state", "queued"])
            .await?
            .json()?;
        assert_eq!(running["jobs"][0]["state"], "running", "{running}");
        jobs(&node, false, "retry", &[&id]).await?.expect_code(6)?;
        smtp.resume();
        node.jobs_idle().await?;

        // Delivered once; the job is finished, so a second retry finds nothing (exit 5) and
        // sends nothing.
        let mails = smtp.wait_for_mails(1, WAIT).await?;
        assert_eq!(mails.len(), 1);
        assert_eq!(mails[0].rcpt_to, vec!["student1@example.test".to_owned()]);
        let again = jobs(&node, false, "retry", &[&id]).await?.expect_code(5)?;
        assert!(
            again.stderr.contains("jobs list"),
            "says what to do: {again:?}"
        );
        let store = node.hub().store().clone();
        let job_id = id.clone();
        assert!(tokio::task::spawn_blocking(move || store.job_done(&job_id)).await??);
        let listed = jobs(&node, true, "list", &[]).await?.json()?;
        assert_eq!(listed["counts"]["dead"], 0, "{listed}");
        assert_eq!(listed["counts"]["queued"], 0, "{listed}");
        assert_eq!(smtp.mails().len(), 1, "exactly once");
        assert_eq!(smtp.attempts().len(), 2, "the refusal and the delivery");
        let metrics = node.http.get("/metrics", None).await?.text();
        assert!(
            gauge(metrics.clone(), "lectern_jobs_dead_letters 0"),
            "{metrics}"
        );
        assert!(gauge(metrics, "lectern_notifications_emails_total 1"));
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_job_is_never_sent_and_each_error_has_its_exit_code() {
    within(async {
        let smtp = SmtpServer::start().await?;
        smtp.set_mode(SmtpMode::Permanent);
        let node = node("ops-jobs-drop", &smtp).await?;
        node.grade("student2", "quiz1", 3).await?;
        wait_jobs(&node.node, |s| s.dead == 1 && s.running == 0).await?;
        let listed = jobs(&node, true, "list", &[]).await?.json()?;
        let id = listed["jobs"][0]["id"]
            .as_str()
            .unwrap_or_default()
            .to_owned();

        let dropped = jobs(&node, true, "drop", &[&id])
            .await?
            .expect_code(0)?
            .json()?;
        assert_eq!(dropped["dropped"]["state"], "dead", "{dropped}");
        smtp.set_mode(SmtpMode::Accept);
        let gone = jobs(&node, true, "retry", &[&id])
            .await?
            .expect_code(5)?
            .json()?;
        assert_eq!(gone["error"]["code"], "job_not_found", "{gone}");
        jobs(&node, false, "show", &[&id]).await?.expect_code(5)?;
        let none = jobs(&node, false, "retry", &["--all-dead"])
            .await?
            .expect_code(0)?;
        assert!(none.stdout.contains("no dead letters"), "{none:?}");

        // A wrong token (4), a node without an admin API (4), no node at all (3).
        let http = node.node.http_addr.to_string();
        let wrong = lectern(&[
            "--json",
            "jobs",
            "list",
            "--http",
            &http,
            "--admin-token",
            "nope",
        ])
        .await?
        .expect_code(4)?;
        assert_eq!(wrong.json()?["error"]["code"], "unauthorized");
        let plain = NotifyNode::start("ops-jobs-noadmin", &smtp).await?;
        let off = lectern(&[
            "jobs",
            "list",
            "--http",
            &plain.node.http_addr.to_string(),
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .await?
        .expect_code(4)?;
        assert!(
            off.stderr.contains("admin_token"),
            "says what to set: {off:?}"
        );
        plain.stop().await?;
        let closed = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .to_string();
        lectern(&[
            "jobs",
            "list",
            "--http",
            &closed,
            "--admin-token",
            ADMIN_TOKEN,
        ])
        .await?
        .expect_code(3)?;
        // Bad usage is clap's 2.
        lectern(&["jobs", "retry"]).await?.expect_code(2)?;

        // Nothing was ever sent for the dropped job.
        assert!(smtp.mails().is_empty(), "{:?}", smtp.mails());
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}
