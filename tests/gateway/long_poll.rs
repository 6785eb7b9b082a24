//! The long-poll route, the last fallback of the degradation order:
//! `GET /api/sessions/{id}/events?since=TOKEN&wait=S` returns the events after `since`; when
//! there are none yet it holds the request and returns the first events posted meanwhile, or an
//! empty list after about `wait` seconds. Without `since` it returns the state and its token.

use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use serde_json::json;

use super::{Demo, within};

/// How many long-polls the node is holding now, from `/metrics`.
async fn held(demo: &Demo) -> anyhow::Result<u64> {
    let m = demo.http.get("/metrics", None).await?.text();
    Ok(m.lines()
        .find_map(|l| l.strip_prefix("lectern_connections{transport=\"longpoll\"} "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0))
}

/// Waits until the node holds a long-poll (it has subscribed, so an event posted now is
/// delivered live rather than replayed).
async fn until_held(demo: &Demo) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    while held(demo).await? == 0 {
        ensure!(Instant::now() < deadline, "the long-poll never arrived");
        tokio::task::yield_now().await;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn long_poll_returns_events_posted_while_it_waits() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("long-poll").await?;
        let student = demo.token("student1", "student");
        let other = demo.token("student2", "student");
        let path = format!("/api/sessions/{}/events", demo.session);

        // No `since`: the state and its token.
        let first = demo.http.get(&path, Some(&student)).await?;
        ensure!(first.status == 200, "{} {}", first.status, first.text());
        let first = first.json()?;
        assert!(first["state"].is_object(), "{first}");
        let token = first["token"].as_str().context("token")?.to_owned();

        // Start the request, then post: the held request returns the event.
        let started = Instant::now();
        let http = demo.http;
        let url = format!("{path}?since={token}&wait=30");
        let waiting = tokio::spawn({
            let student = student.clone();
            async move { http.get(&url, Some(&student)).await }
        });
        until_held(&demo).await?;
        let ack = demo
            .command_ok(&other, "qa.ask", json!({"id": "lp-q1", "text": "anyone?"}))
            .await?;
        let resp = waiting.await??;
        let elapsed = started.elapsed();
        ensure!(resp.status == 200, "{} {}", resp.status, resp.text());
        let body = resp.json()?;
        let events = body["events"].as_array().context("events")?;
        assert_eq!(events.len(), 1, "{body}");
        assert_eq!(events[0]["event"], "qa:new");
        assert_eq!(events[0]["data"]["id"], "lp-q1");
        assert_eq!(events[0]["token"], ack["token"]);
        assert_eq!(body["token"], ack["token"], "the next `since`");
        assert!(
            elapsed < Duration::from_secs(20),
            "it waited out its time: {elapsed:?}"
        );
        assert_eq!(held(&demo).await?, 0, "the long-poll is no longer held");

        // Events already there are returned at once.
        let ack2 = demo
            .command_ok(&other, "chat.send", json!({"id": "lp-c1", "text": "hello"}))
            .await?;
        let since = ack["token"].as_str().context("token")?;
        let body = demo
            .http
            .get(&format!("{path}?since={since}&wait=5"), Some(&student))
            .await?
            .json()?;
        let tokens: Vec<_> = body["events"]
            .as_array()
            .context("events")?
            .iter()
            .map(|e| e["token"].clone())
            .collect();
        assert_eq!(tokens, [ack2["token"].clone()]);

        // Nothing new: an empty list after about `wait`.
        let since = ack2["token"].as_str().context("token")?;
        let started = Instant::now();
        let resp = demo
            .http
            .get(&format!("{path}?since={since}&wait=2"), Some(&student))
            .await?;
        let elapsed = started.elapsed();
        let body = resp.json()?;
        assert_eq!(body["events"], json!([]), "{body}");
        assert_eq!(body["token"], since);
        assert!(
            elapsed >= Duration::from_millis(1900) && elapsed < Duration::from_secs(10),
            "an empty long-poll took {elapsed:?} for wait=2"
        );

        // A malformed `since` is a client error.
        let r = demo
            .http
            .get(&format!("{path}?since=nope"), Some(&student))
            .await?;
        assert_eq!(
            (r.status, r.error_code().as_deref()),
            (400, Some("bad_token")),
            "{}",
            r.text()
        );
        demo.stop().await
    })
    .await
}
