//! Email: one graded quiz, one email with the right headers, however many nodes hold the
//! cohort; the RFC 8058 one-click unsubscribe; preferences and the daily digest; emails skipped
//! while the `email` feature flag is off.

use std::time::Duration;

use lectern_model::DocId;
use lectern_node::DEMO_COHORT;
use lectern_testkit::SmtpServer;
use serde_json::json;

use super::{NotifyNode, inbox, sync_pair};
use crate::gateway::within;

const WAIT: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graded_quiz_sends_exactly_one_email_even_when_three_nodes_hold_the_cohort() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let a = NotifyNode::start("notify-a", &smtp).await?;
        let b = NotifyNode::start("notify-b", &smtp).await?;
        let c = NotifyNode::start("notify-c", &smtp).await?;
        let cohort = DocId::Cohort(DEMO_COHORT.parse()?);
        // The three nodes share the cohort before the grade, as regions would.
        sync_pair((a.hub(), "node-a"), (b.hub(), "node-b"), &cohort).await?;
        sync_pair((a.hub(), "node-a"), (c.hub(), "node-c"), &cohort).await?;

        a.grade("student1", "quiz1", 8).await?;
        // The grade reaches the other two nodes through the sync entry point the mesh uses.
        sync_pair((a.hub(), "node-a"), (b.hub(), "node-b"), &cohort).await?;
        sync_pair((b.hub(), "node-b"), (c.hub(), "node-c"), &cohort).await?;
        let grade_on = |n: &NotifyNode| {
            let hub = n.hub().clone();
            let doc = cohort.clone();
            async move {
                let c = lectern_model::Caller {
                    user: "ada".parse()?,
                    name: "Ada".into(),
                    role: lectern_model::Role::Instructor,
                    cohorts: vec![DEMO_COHORT.parse()?],
                };
                let s = "student1".parse()?;
                let v = hub
                    .read(doc, move |r| r.student_progress(&c, &s))
                    .await?
                    .map_err(|r| anyhow::anyhow!("{r}"))?;
                anyhow::Ok(v)
            }
        };
        for n in [&b, &c] {
            let progress = grade_on(n).await?;
            anyhow::ensure!(
                progress.to_string().contains("\"score\":8"),
                "the grade replicated: {progress}"
            );
            // A replica never triggers: no job was ever queued on it (checked in its store,
            // where a job would have been committed with the change).
            let store = n.hub().store().clone();
            let pending = tokio::task::spawn_blocking(move || store.pending_jobs()).await??;
            anyhow::ensure!(pending.is_empty(), "a replica queued jobs: {pending:?}");
            anyhow::ensure!(n.node.jobs.stats().completed == 0);
        }

        let mails = smtp.wait_for_mails(1, WAIT).await?;
        let stats = a.jobs_idle().await?;
        anyhow::ensure!(
            stats.emails_sent == 1 && stats.inapp_delivered == 1,
            "{stats:?}"
        );
        for n in [&b, &c] {
            n.jobs_idle().await?;
        }
        let mails_now = smtp.mails();
        anyhow::ensure!(
            mails_now.len() == 1,
            "exactly one email: {}",
            mails_now.len()
        );
        let mail = &mails[0];
        assert_eq!(mail.rcpt_to, vec!["student1@example.test".to_owned()]);
        assert_eq!(mail.mail_from, "no-reply@lectern.test");
        assert_eq!(
            mail.header("Subject").as_deref(),
            Some("Your grade for quiz1 is ready")
        );
        assert_eq!(mail.header("To").as_deref(), Some("student1@example.test"));
        let message_id = mail.header("Message-ID").expect("a Message-ID");
        assert!(message_id.ends_with("@lectern.test>"), "{message_id}");
        assert_eq!(
            mail.header("List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        let unsubscribe = mail.header("List-Unsubscribe").expect("List-Unsubscribe");
        let base = format!(
            "<http://{}/api/notifications/unsubscribe?",
            a.node.http_addr
        );
        assert!(
            unsubscribe.starts_with(&base) && unsubscribe.contains("u=student1&k=grade&s="),
            "{unsubscribe}"
        );
        assert!(mail.body().contains("You scored 8 out of 10 on quiz1."));

        // In-app: in the student's inbox once.
        let view = inbox(&a, "student1").await?;
        assert_eq!(view["unread"], 1, "{view}");
        assert_eq!(view["items"][0]["kind"], "grade");

        // The one-click unsubscribe (RFC 8058): a POST of the link, no login.
        let path = unsubscribe
            .trim_start_matches('<')
            .trim_end_matches('>')
            .trim_start_matches(&format!("http://{}", a.node.http_addr));
        let page = a.http.get(path, None).await?;
        assert_eq!(page.status, 200, "{}", page.text());
        assert!(page.text().contains("<form method=post>"));
        let forged = a
            .http
            .send(
                "POST",
                &path.replace("u=student1", "u=student2"),
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(b"List-Unsubscribe=One-Click".to_vec()),
                WAIT,
            )
            .await?;
        assert_eq!(forged.status, 403, "{}", forged.text());
        assert_eq!(forged.error_code().as_deref(), Some("bad_signature"));
        let done = a
            .http
            .send(
                "POST",
                path,
                &[("content-type", "application/x-www-form-urlencoded")],
                Some(b"List-Unsubscribe=One-Click".to_vec()),
                WAIT,
            )
            .await?;
        assert_eq!(done.status, 200, "{}", done.text());
        let view = inbox(&a, "student1").await?;
        assert_eq!(view["prefs"]["kinds"]["grade"], "in_app", "{view}");

        // Clicking again changes nothing and writes nothing; clicking many times spends only
        // this user's links' bucket: another user's link still works. Kills: one shared
        // system bucket for every link; a command written per click.
        let heads = a
            .node
            .hub
            .doc_heads(&lectern_model::DocId::Inbox("student1".parse()?));
        let one_click = |path: String| {
            let http = &a.http;
            async move {
                http.send(
                    "POST",
                    &path,
                    &[("content-type", "application/x-www-form-urlencoded")],
                    Some(b"List-Unsubscribe=One-Click".to_vec()),
                    WAIT,
                )
                .await
            }
        };
        let mut statuses = Vec::new();
        for _ in 0..40 {
            statuses.push(one_click(path.to_owned()).await?.status);
        }
        assert!(
            statuses.contains(&429),
            "one link's clicks are rate limited: {statuses:?}"
        );
        assert_eq!(
            a.node
                .hub
                .doc_heads(&lectern_model::DocId::Inbox("student1".parse()?)),
            heads,
            "a repeated click wrote nothing"
        );
        let other = lectern_jobs::unsubscribe::link(
            "",
            &a.node.secret,
            &"student2".parse()?,
            Some(lectern_model::NotifyKind::Grade),
        );
        let theirs = one_click(other).await?;
        assert_eq!(theirs.status, 200, "{}", theirs.text());

        // The next grade reaches the inbox only.
        a.grade("student1", "quiz2", 9).await?;
        let stats = super::wait_jobs(&a.node, |s| {
            s.inapp_delivered == 2 && s.pending == 0 && s.running == 0
        })
        .await?;
        assert_eq!(stats.emails_sent, 1);
        assert_eq!(smtp.mails().len(), 1);
        assert_eq!(inbox(&a, "student1").await?["unread"], 2);

        for n in [a, b, c] {
            n.stop().await?;
        }
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn preferences_choose_the_channel_and_the_digest_batches_emails_into_one() {
    within(async {
        let smtp = SmtpServer::start().await?;
        // The digest goes out at a fixed hour (UTC): half a day from now, so that it is not due
        // while the test runs, whatever the time of day (at the default 07:00, a run crossing
        // 07:00:00 would send it early).
        let hour_now = crate::gateway::unix_now_s() / 3_600 % 24;
        let node = NotifyNode::start_with("notify-prefs", &smtp, |c| {
            c.notify.digest_hour_utc = (hour_now + 12) % 24;
        })
        .await?;
        let s1 = node.token("student1", "student");
        let s2 = node.token("student2", "student");
        // student1: announcements off entirely; student2: a digest to their own address.
        let r = node
            .http
            .send(
                "PUT",
                "/api/notifications/preferences",
                &[
                    ("content-type", "application/json"),
                    ("authorization", &format!("Bearer {s1}")),
                ],
                Some(json!({"kinds": {"announcement": "off"}}).to_string().into_bytes()),
                WAIT,
            )
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        let bad = node
            .http
            .post_json(
                "/api/notifications/preferences",
                Some(&s2),
                &json!({"email": "not an address"}),
            )
            .await?;
        assert_eq!(bad.status, 422, "{}", bad.text());
        assert_eq!(bad.error_code().as_deref(), Some("invalid_input"));
        let r = node
            .http
            .post_json(
                "/api/notifications/preferences",
                Some(&s2),
                &json!({"digest": true, "email": "linus@uni.example"}),
            )
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        let prefs = node
            .http
            .get("/api/notifications/preferences", Some(&s2))
            .await?
            .json()?;
        assert_eq!(prefs["digest"], true, "{prefs}");
        assert_eq!(prefs["email"], "linus@uni.example");

        let ada = node.token("ada", "instructor");
        for i in 0..3 {
            node.cohort_command(
                &ada,
                json!({"cmd": "announcement.post", "title": format!("Notice {i}"), "body": "Read this."}),
            )
            .await?;
        }
        // Three deliveries to student2 (in-app) and three digest email jobs waiting; nothing
        // for student1.
        let stats = super::wait_jobs(&node.node, |s| s.completed == 6 && s.running == 0).await?;
        assert_eq!(stats.inapp_delivered, 3, "{stats:?}");
        assert_eq!(stats.emails_sent, 0, "the digest waits: {stats:?}");
        assert_eq!(stats.pending, 3, "three digest emails queued: {stats:?}");
        assert_eq!(inbox(&node, "student1").await?["total"], 0);
        assert_eq!(inbox(&node, "student2").await?["total"], 3);
        let dir = node.stop().await?;

        // Restart with digests every millisecond: what is queued waits for the next digest as
        // configured now, so the three emails go out at once, as ONE digest.
        let node = NotifyNode::restart(dir, &smtp, |c| c.notify.digest_period_ms = 1).await?;
        let mails = smtp.wait_for_mails(1, WAIT).await?;
        let stats = node.jobs_idle().await?;
        assert_eq!(stats.completed, 3, "{stats:?}");
        assert_eq!(stats.emails_sent, 1, "{stats:?}");
        assert_eq!(smtp.mails().len(), 1);
        let digest = &mails[0];
        assert_eq!(digest.rcpt_to, vec!["linus@uni.example".to_owned()]);
        assert_eq!(
            digest.header("Subject").as_deref(),
            Some("Your Lectern digest: 3 notifications")
        );
        for i in 0..3 {
            assert!(digest.body().contains(&format!("Notice {i}")), "{}", digest.body());
        }
        let unsubscribe = digest.header("List-Unsubscribe").expect("List-Unsubscribe");
        assert!(unsubscribe.contains("u=student2&k=all&s="), "{unsubscribe}");
        assert_eq!(
            digest.header("List-Unsubscribe-Post").as_deref(),
            Some("List-Unsubscribe=One-Click")
        );
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_smtp_emails_are_written_to_the_outbox_as_eml_files() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start_with("notify-outbox", &smtp, |c| c.notify.smtp = None).await?;
        node.grade("student1", "quiz1", 10).await?;
        let stats = node.jobs_idle().await?;
        assert_eq!(stats.emails_sent, 1, "{stats:?}");
        assert!(smtp.mails().is_empty(), "nothing goes to SMTP");
        let outbox = node.node.hub.store().path().join("outbox");
        let files: Vec<std::path::PathBuf> = std::fs::read_dir(&outbox)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        assert_eq!(files.len(), 1, "{files:?}");
        let name = files[0].file_name().and_then(|n| n.to_str()).unwrap_or("");
        assert!(name.ends_with("_student1_email.eml"), "{name}");
        let eml = std::fs::read_to_string(&files[0])?;
        assert!(eml.contains("To: student1@example.test\r\n"), "{eml}");
        assert!(eml.contains("Subject: Your grade for quiz1 is ready\r\n"));
        assert!(eml.contains("List-Unsubscribe-Post: List-Unsubscribe=One-Click\r\n"));
        assert!(eml.contains("List-Unsubscribe: <http://"));
        // Live unsubscribe links and the store: the node's user only.
        use std::os::unix::fs::PermissionsExt;
        let mode = |p: &std::path::Path| -> anyhow::Result<u32> {
            Ok(std::fs::metadata(p)?.permissions().mode() & 0o777)
        };
        assert_eq!(mode(&files[0])?, 0o600, "the email file");
        assert_eq!(mode(&outbox)?, 0o700, "the outbox");
        assert_eq!(
            mode(node.node.hub.store().path())?,
            0o700,
            "the store directory"
        );
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsubscribe_links_are_rate_limited_per_user_and_write_nothing_when_nothing_changes() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start_with("notify-unsub-limit", &smtp, |c| {
            c.limits.command_burst = 5;
            c.limits.commands_per_s = 0.01;
        })
        .await?;
        let key = node.node.secret.clone();
        let path = |user: &str| -> anyhow::Result<String> {
            let user: lectern_model::UserId = user.parse()?;
            let link = lectern_jobs::unsubscribe::link("", &key, &user, None);
            Ok(link)
        };
        let post = |path: String| {
            let http = &node.http;
            async move {
                http.send(
                    "POST",
                    &path,
                    &[("content-type", "application/x-www-form-urlencoded")],
                    Some(b"List-Unsubscribe=One-Click".to_vec()),
                    WAIT,
                )
                .await
            }
        };
        let changes = |user: &str| {
            let doc = DocId::Inbox(user.parse().expect("a valid user id"));
            let hub = node.hub().clone();
            async move { anyhow::Ok(hub.read(doc, |r| r.change_count()).await?) }
        };
        let one = path("student1")?;
        let first = post(one.clone()).await?;
        assert_eq!(first.status, 200, "{}", first.text());
        let after_first = changes("student1").await?;
        assert!(after_first > 0, "the first click changed the preferences");
        // Clicked again (a mail scanner, an impatient user): nothing more is written, until the
        // user's own bucket is empty.
        let mut refused = 0;
        for _ in 0..10 {
            let r = post(one.clone()).await?;
            match r.status {
                200 => {}
                429 => {
                    assert_eq!(
                        r.error_code().as_deref(),
                        Some("rate_limited"),
                        "{}",
                        r.text()
                    );
                    refused += 1;
                }
                other => panic!("unexpected {other}: {}", r.text()),
            }
        }
        assert!(refused > 0, "student1's clicks are rate limited");
        assert_eq!(
            changes("student1").await?,
            after_first,
            "a repeated click wrote a change"
        );
        // Another user's link is not in student1's bucket.
        let two = post(path("student2")?).await?;
        assert_eq!(two.status, 200, "{}", two.text());
        let view = node
            .http
            .get(
                "/api/notifications/preferences",
                Some(&node.token("student2", "student")),
            )
            .await?
            .json()?;
        assert_eq!(view["kinds"]["grade"], "in_app", "{view}");
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

/// With the `email` feature switched off for the cohort, a grade's email job finishes without
/// sending (skipped, not held: switching email on again sends no backlog) while the in-app
/// notification arrives; switched on again, the next grade is emailed. Kills: a runner that
/// ignores the flag, one that holds the email and sends it once the flag is unset, one that
/// also drops the in-app notification.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_email_switched_off_the_email_is_skipped_and_the_in_app_notification_arrives() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start("notify-flag-email", &smtp).await?;
        let set = |body| {
            let hub = node.hub().clone();
            async move {
                let id = format!("flag-{}", rand_suffix());
                hub.execute(DocId::Flags, super::admin(), crate::support::cmd(&id, body))
                    .await
            }
        };
        let cohort: lectern_model::CohortId = DEMO_COHORT.parse()?;
        set(lectern_model::CommandBody::FlagSet {
            feature: lectern_model::Feature::Email,
            cohort: Some(cohort.clone()),
            enabled: false,
        })
        .await?;
        node.grade("student1", "quiz1", 10).await?;
        let stats = node.jobs_idle().await?;
        assert_eq!(stats.emails_sent, 0, "{stats:?}");
        assert!(smtp.mails().is_empty(), "no email while the flag is off");
        let items = inbox(&node, "student1").await?;
        assert_eq!(items["items"].as_array().map(Vec::len), Some(1), "{items}");

        set(lectern_model::CommandBody::FlagUnset {
            feature: lectern_model::Feature::Email,
            cohort: Some(cohort),
        })
        .await?;
        node.grade("student1", "quiz2", 9).await?;
        let stats = super::wait_jobs(&node.node, |s| s.emails_sent >= 1).await?;
        assert_eq!(
            stats.emails_sent, 1,
            "only the new grade's email: {stats:?}"
        );
        let mails = smtp.mails();
        assert_eq!(mails.len(), 1, "{mails:?}");
        assert!(
            mails[0].data.contains("quiz2") && !mails[0].data.contains("quiz1"),
            "the skipped email is not sent later"
        );
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

/// A suffix that keeps command ids apart within one test.
fn rand_suffix() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}
