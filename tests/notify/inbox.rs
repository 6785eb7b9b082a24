//! The in-app side: `/api/stream/notifications` with a real SSE client (state with the unread
//! count, live `notification` events, `Last-Event-ID` resume), marking read over REST, and who
//! may touch an inbox.

use std::time::Duration;

use lectern_testkit::SmtpServer;
use serde_json::{Value, json};

use super::{NotifyNode, inbox};
use crate::gateway::within;

const WAIT: Duration = Duration::from_secs(20);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_notification_stream_shows_new_notifications_with_the_unread_count_and_resumes() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start("notify-sse", &smtp).await?;
        let token = node.token("student1", "student");
        let auth = format!("Bearer {token}");
        let mut stream = node
            .http
            .sse("/api/stream/notifications", &[("authorization", &auth)])
            .await?
            .map_err(|r| anyhow::anyhow!("refused: {} {}", r.status, r.text()))?;
        let state = stream.next_event(WAIT).await?;
        assert_eq!(state.event, "state");
        let data: Value = serde_json::from_str(&state.data)?;
        assert_eq!(data["state"]["unread"], 0, "{data}");

        node.grade("student1", "quiz1", 6).await?;
        let e = stream.next_event(WAIT).await?;
        assert_eq!(e.event, "notification");
        let n: Value = serde_json::from_str(&e.data)?;
        assert_eq!(n["kind"], "grade");
        assert_eq!(n["title"], "Your grade for quiz1 is ready");
        assert_eq!(n["unread"], 1);
        let last_id = e.id.clone().expect("events carry an id");
        drop(stream);

        // Missed while away: a second grade, then everything marked read.
        node.grade("student1", "quiz2", 7).await?;
        super::wait_jobs(&node.node, |s| s.inapp_delivered == 2).await?;
        let r = node
            .http
            .post_json("/api/notifications/read", Some(&token), &json!({}))
            .await?;
        assert_eq!(r.status, 200, "{}", r.text());
        assert_eq!(inbox(&node, "student1").await?["unread"], 0);

        let mut resumed = node
            .http
            .sse(
                "/api/stream/notifications",
                &[("authorization", &auth), ("last-event-id", &last_id)],
            )
            .await?
            .map_err(|r| anyhow::anyhow!("refused: {} {}", r.status, r.text()))?;
        let e = resumed.next_event(WAIT).await?;
        assert_eq!(e.event, "notification", "the missed one first: {e:?}");
        let n: Value = serde_json::from_str(&e.data)?;
        assert_eq!(n["title"], "Your grade for quiz2 is ready");
        assert_eq!(n["unread"], 2);
        let e = resumed.next_event(WAIT).await?;
        assert_eq!(e.event, "notifications:read");
        assert_eq!(serde_json::from_str::<Value>(&e.data)?["unread"], 0);
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_the_owner_reads_an_inbox_and_nobody_pushes_into_one() {
    within(async {
        let smtp = SmtpServer::start().await?;
        let node = NotifyNode::start("notify-authz", &smtp).await?;
        let ada = node.token("ada", "instructor");
        // Marking an unknown notification read is a 404 with a stable code.
        let s1 = node.token("student1", "student");
        let r = node
            .http
            .post_json("/api/notifications/read", Some(&s1), &json!({"ids": ["nope"]}))
            .await?;
        assert_eq!(r.status, 404, "{}", r.text());
        let r = node
            .http
            .post_json("/api/notifications/read", Some(&s1), &json!({"ids": "nope"}))
            .await?;
        assert_eq!(r.status, 422, "{}", r.text());
        // Without a token: 401.
        let r = node.http.get("/api/notifications", None).await?;
        assert_eq!(r.status, 401);
        // An instructor cannot push into a student's inbox through the cohort command route
        // (inbox commands do not apply to a cohort)...
        let r = node
            .http
            .post_json(
                "/api/cohorts/demo-cohort/commands",
                Some(&ada),
                &json!({"cmd": "inbox.push", "notification": "n1", "kind": "grade", "title": "x", "body": "y"}),
            )
            .await?;
        assert_eq!(r.status, 422, "{}", r.text());
        // ...and a forged unsubscribe link does nothing.
        let r = node
            .http
            .send(
                "POST",
                "/api/notifications/unsubscribe?u=student1&k=grade&s=AAAA",
                &[],
                Some(Vec::new()),
                WAIT,
            )
            .await?;
        assert_eq!(r.status, 403);
        node.stop().await?;
        Ok(())
    })
    .await
    .unwrap();
}
