//! Bad input on every transport of a running node, and after each case another client is
//! still served. REST: malformed JSON (400 `malformed_json`), wrong types (422
//! `invalid_command`), a body that is not an object (400), an oversized body (413), an unknown
//! route (404), all as JSON errors. Socket.IO over WebSocket and polling: wrong argument types,
//! unknown events, unreadable packets, text over the model's limit and packets over the
//! transport's limit get an error ack or a clean disconnect of that client only. Rate limit:
//! past the burst a user gets 429 `rate_limited` and everyone else is served.

use anyhow::Context;
use lectern_testkit::{Client, Transport};
use serde_json::{Value, json};

use super::{Demo, ack_code, within};

/// One more command by someone else succeeds: the node is still serving.
async fn still_serving(demo: &Demo, what: &str) -> anyhow::Result<()> {
    let other = demo.token("student2", "student");
    let r = demo
        .command(
            &other,
            "chat.send",
            json!({"text": format!("still here after {what}")}),
        )
        .await?;
    assert_eq!(r.status, 200, "after {what}: {}", r.text());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rest_refuses_bad_bodies_and_routes_with_json_errors() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("bad-rest", |c| c.limits.command_burst = 1000).await?;
        let student = demo.token("student1", "student");
        let s = demo.session.clone();
        let ask = format!("/api/sessions/{s}/commands/qa.ask");
        let generic = format!("/api/sessions/{s}/commands");
        let big = format!("{{\"text\": \"{}\"}}", "x".repeat(17 * 1024));
        let cases: Vec<(&str, &str, Vec<u8>, u16, &str)> = vec![
            (
                "malformed JSON",
                ask.as_str(),
                b"{\"text\": ".to_vec(),
                400,
                "malformed_json",
            ),
            (
                "not JSON at all",
                ask.as_str(),
                b"text=hello".to_vec(),
                400,
                "malformed_json",
            ),
            (
                "a number for text",
                ask.as_str(),
                br#"{"text": 12}"#.to_vec(),
                422,
                "invalid_command",
            ),
            (
                "a string for a flag",
                ask.as_str(),
                br#"{"text": "q", "anonymous": "yes"}"#.to_vec(),
                422,
                "invalid_command",
            ),
            (
                "a missing field",
                ask.as_str(),
                b"{}".to_vec(),
                422,
                "invalid_command",
            ),
            (
                "an array body",
                ask.as_str(),
                b"[1, 2]".to_vec(),
                400,
                "bad_request",
            ),
            (
                "an unknown command",
                generic.as_str(),
                br#"{"cmd": "qa.nope"}"#.to_vec(),
                422,
                "invalid_command",
            ),
            (
                "an oversized body",
                ask.as_str(),
                big.into_bytes(),
                413,
                "payload_too_large",
            ),
        ];
        for (what, path, body, status, code) in cases {
            let r = demo.http.post_raw(path, Some(&student), body).await?;
            assert_eq!(r.status, status, "{what}: {}", r.text());
            assert_eq!(
                r.error_code().as_deref(),
                Some(code),
                "{what}: {}",
                r.text()
            );
            still_serving(&demo, what).await?;
        }
        for (method, path) in [
            ("GET", "/api/nope"),
            ("POST", "/api/sessions/x/commands/a/b"),
            ("GET", "/nope"),
        ] {
            let auth = format!("Bearer {student}");
            let r = demo
                .http
                .send(
                    method,
                    path,
                    &[("authorization", &auth)],
                    None,
                    lectern_testkit::http::REQUEST_TIMEOUT,
                )
                .await?;
            assert_eq!(
                (r.status, r.error_code().as_deref()),
                (404, Some("not_found")),
                "{method} {path}: {}",
                r.text()
            );
        }
        // An id that is not an id, in the path of a view, a stream and a long-poll.
        for path in [
            "/api/sessions/bad%20id",
            "/api/stream/sessions/bad%20id",
            "/api/sessions/bad%20id/events",
        ] {
            let r = demo.http.get(path, Some(&student)).await?;
            assert_eq!(
                (r.status, r.error_code().as_deref()),
                (400, Some("bad_request")),
                "{path}: {}",
                r.text()
            );
        }
        still_serving(&demo, "bad routes").await?;
        demo.stop().await
    })
    .await
}

async fn socketio_bad_input(transport: Transport) -> anyhow::Result<()> {
    // The rate limit has its own test; here it would only get in the way.
    let demo = Demo::start_with("bad-sio", |c| c.limits.command_burst = 1000).await?;
    let s = demo.session.clone();
    let mut bad = demo
        .sio(transport, &demo.token("student1", "student"), "bad")
        .await?;
    let mut good = demo
        .sio(transport, &demo.token("student2", "student"), "good")
        .await?;
    let ack = good.call("session:join", vec![json!(s)]).await?;
    assert_eq!(ack["ok"], true, "{ack}");
    let mut n = 0;
    let mut serve = async |good: &mut Client, what: &str| -> anyhow::Result<()> {
        n += 1;
        let ack = good
            .call(
                "chat:send",
                vec![json!(s), json!(format!("still here {n}"))],
            )
            .await?;
        assert_eq!(ack["ok"], true, "after {what}: {ack}");
        Ok(())
    };

    let wrong: Vec<(&str, Vec<Value>, &str)> = vec![
        (
            "qa:ask",
            vec![json!(12345), json!({"nope": true})],
            "bad_request",
        ),
        ("qa:ask", vec![json!(s)], "bad_request"),
        ("qa:ask", vec![json!(s), json!(["a list"])], "bad_request"),
        (
            "qa:ask",
            vec![json!(s), json!("q"), json!("not options")],
            "bad_request",
        ),
        (
            "qa:ask",
            vec![json!(s), json!("q"), json!({"anonymous": "yes"})],
            "bad_request",
        ),
        ("qa:upvote", vec![json!(s), json!(42)], "bad_request"),
        (
            "qa:upvote",
            vec![json!(s), json!("no such question")],
            "bad_request",
        ),
        (
            "qa:upvote",
            vec![json!(s), json!("nosuchquestion")],
            "not_found",
        ),
        (
            "poll:vote",
            vec![json!(s), json!("nosuchpoll"), json!(0)],
            "not_found",
        ),
        (
            "poll:create",
            vec![json!(s), json!("not a poll")],
            "bad_request",
        ),
        ("session:join", vec![json!(42)], "bad_request"),
        ("session:join", vec![json!(s), json!(7)], "bad_request"),
        (
            "session:join",
            vec![json!(s), json!("not a token")],
            "bad_token",
        ),
        ("qa:nope", vec![json!(s)], "unknown_event"),
        ("", vec![], "unknown_event"),
        (
            "qa:ask",
            vec![json!(s), json!("x".repeat(501))],
            "text_too_long",
        ),
    ];
    for (event, args, code) in wrong {
        let what = format!("{event}{args:?}");
        let what = &what[..what.len().min(80)];
        let ack = bad.call(event, args).await?;
        assert_eq!(ack_code(&ack), code, "{what}");
        serve(&mut good, what).await?;
    }
    // A vote that does not fit the poll: the demo's poll is a rating poll.
    let view = demo.session_view().await?;
    let poll = view["polls"]
        .as_array()
        .and_then(|p| p.first())
        .and_then(|p| p["id"].as_str())
        .context("the demo has a poll")?
        .to_owned();
    let ack = bad
        .call("poll:vote", vec![json!(s), json!(poll), json!("five")])
        .await?;
    assert_eq!(ack_code(&ack), "invalid_vote");
    serve(&mut good, "a vote of the wrong kind").await?;

    // Packets no conforming client sends: each on a fresh connection, followed by a good
    // command on the same connection. The server handles a connection's packets in order, so
    // the command either succeeds (the bad packet was dropped) or fails because the server
    // closed the connection; it never hangs, and nobody else notices.
    for raw in [
        "42[not json",
        "42{\"a\": 1}",
        "42[]",
        "42[12]",
        "49[\"x\"]",
        "4",
        "9",
        "40{oops",
    ] {
        let mut bad = demo
            .sio(transport, &demo.token("student1", "student"), raw)
            .await?;
        bad.send_raw(raw.to_owned())?;
        match bad
            .call("chat:send", vec![json!(s), json!("after a bad packet")])
            .await
        {
            Ok(ack) => assert_eq!(ack["ok"], true, "{raw}: {ack}"),
            Err(e) => assert!(
                bad.is_closed(),
                "{raw}: neither served nor disconnected: {e:#}"
            ),
        }
        serve(&mut good, raw).await?;
    }

    // Over the transport's payload limit (16 KiB): an error ack or a clean disconnect.
    let mut big = demo
        .sio(transport, &demo.token("student1", "student"), "big")
        .await?;
    // A question the model would accept, padded past the limit with an option nobody reads:
    // only the transport's limit can refuse it.
    let padded = json!({"anonymous": false, "padding": "x".repeat(20 * 1024)});
    match big
        .call("qa:ask", vec![json!(s), json!("padded"), padded])
        .await
    {
        Ok(ack) => assert_eq!(ack["ok"], false, "an oversized packet was accepted: {ack}"),
        Err(e) => {
            let reason = big.closed(std::time::Duration::from_secs(5)).await;
            assert!(reason.is_ok(), "neither an ack nor a disconnect: {e:#}");
        }
    }
    serve(&mut good, "an oversized packet").await?;
    let ack = good
        .call("qa:ask", vec![json!(s), json!("and a question")])
        .await?;
    assert_eq!(ack["ok"], true, "{ack}");
    good.wait_for("its own question", |e| {
        e.name == "qa:new" && e.data()["id"] == ack["id"]
    })
    .await?;

    // A fresh client is served too.
    let mut fresh = demo
        .sio(transport, &demo.token("student1", "student"), "fresh")
        .await?;
    let ack = fresh.call("session:join", vec![json!(s)]).await?;
    assert_eq!(ack["ok"], true, "{ack}");
    for c in [fresh, good] {
        c.disconnect().await;
    }
    drop(big);
    demo.stop().await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_bad_input_gets_error_acks_over_websocket() -> anyhow::Result<()> {
    within(socketio_bad_input(Transport::WebSocket)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socketio_bad_input_gets_error_acks_over_polling() -> anyhow::Result<()> {
    within(socketio_bad_input(Transport::Polling)).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_past_the_rate_limit_is_refused_and_others_are_served() -> anyhow::Result<()> {
    within(async {
        // A refill so slow (one command in 1,000 s) that the burst alone decides, however
        // long the machine takes over the requests below.
        let demo = Demo::start_with("rate-limit", |c| {
            c.limits.command_burst = 5;
            c.limits.commands_per_s = 0.001;
        })
        .await?;
        let s = demo.session.clone();
        let student = demo.token("student1", "student");
        let sends = (0..12).map(|i| {
            let demo = &demo;
            let student = student.clone();
            async move {
                demo.command(&student, "chat.send", json!({"text": format!("spam {i}")}))
                    .await
            }
        });
        let results = futures_join_all(sends).await?;
        let ok = results.iter().filter(|r| r.status == 200).count();
        let limited: Vec<_> = results.iter().filter(|r| r.status == 429).collect();
        assert_eq!(ok + limited.len(), results.len(), "only 200s and 429s");
        assert_eq!(ok, 5, "{ok} of 12 accepted with a burst of 5");
        for r in &limited {
            assert_eq!(
                r.error_code().as_deref(),
                Some("rate_limited"),
                "{}",
                r.text()
            );
        }
        // The same user over Socket.IO is limited too.
        let mut c = demo.sio(Transport::WebSocket, &student, "spammer").await?;
        let ack = c
            .call("chat:send", vec![json!(s), json!("one more")])
            .await?;
        assert_eq!(ack_code(&ack), "rate_limited");
        c.disconnect().await;
        // Everyone else is served.
        still_serving(&demo, "a burst").await?;
        let inst = demo.token("ada", "instructor");
        demo.command_ok(&inst, "broadcast.send", json!({"text": "calm down"}))
            .await?;
        demo.stop().await
    })
    .await
}

/// Runs the futures concurrently, in order of their results.
async fn futures_join_all<T>(
    futures: impl Iterator<Item = impl std::future::Future<Output = anyhow::Result<T>>>,
) -> anyhow::Result<Vec<T>> {
    let mut set = Vec::new();
    for f in futures {
        set.push(f);
    }
    let results = futures_util::future::join_all(set).await;
    results.into_iter().collect()
}

/// Every route, the notification and board routes included, refuses a body past the payload
/// limit with 413 `payload_too_large`, and no response carries the internal error-code header
/// (the shared middleware is applied once every router is merged).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_refuses_an_oversized_body_and_hides_internal_headers() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start_with("big-body", |c| c.limits.command_burst = 1000).await?;
        let student = demo.token("student1", "student");
        let auth = format!("Bearer {student}");
        let s = demo.session.clone();
        let c = super::DEMO_COHORT;
        let big = format!("{{\"text\": \"{}\"}}", "x".repeat(20 * 1024)).into_bytes();
        let routes: Vec<(&str, String)> = vec![
            ("GET", "/".into()),
            ("GET", "/readyz".into()),
            ("GET", format!("/api/sessions/{s}")),
            ("POST", format!("/api/sessions/{s}/commands")),
            ("POST", format!("/api/sessions/{s}/commands/qa.ask")),
            ("GET", format!("/api/sessions/{s}/events")),
            ("GET", format!("/api/cohorts/{c}")),
            ("POST", format!("/api/cohorts/{c}/commands")),
            ("GET", format!("/api/cohorts/{c}/aggregates")),
            ("GET", format!("/api/cohorts/{c}/progress/student1")),
            ("POST", "/api/progress".into()),
            ("GET", format!("/api/stream/sessions/{s}")),
            ("GET", "/api/stream/progress/student1".into()),
            ("GET", "/api/notifications".into()),
            ("POST", "/api/notifications/read".into()),
            ("GET", "/api/notifications/preferences".into()),
            ("PUT", "/api/notifications/preferences".into()),
            ("POST", "/api/notifications/preferences".into()),
            ("POST", "/api/notifications/unsubscribe?token=x".into()),
            ("GET", format!("/api/stream/leaderboard/{c}")),
            ("GET", format!("/api/stream/instructor/{c}")),
            ("GET", format!("/api/cohorts/{c}/leaderboard/me")),
            ("GET", "/static/nope.js".into()),
            ("POST", "/api/nope".into()),
        ];
        for (method, path) in &routes {
            let r = demo
                .http
                .send(
                    method,
                    path,
                    &[
                        ("authorization", auth.as_str()),
                        ("content-type", "application/json"),
                    ],
                    Some(big.clone()),
                    lectern_testkit::http::REQUEST_TIMEOUT,
                )
                .await?;
            assert_eq!(
                (r.status, r.error_code().as_deref()),
                (413, Some("payload_too_large")),
                "{method} {path}: {}",
                r.text()
            );
            assert_eq!(r.header("x-lectern-error"), None, "{method} {path}");
        }
        // Errors of the merged routers reach the client without the internal header too.
        for (method, path, body) in [
            ("POST", "/api/notifications/read", b"{\"ids\": ".to_vec()),
            ("PUT", "/api/notifications/preferences", b"[".to_vec()),
        ] {
            let r = demo
                .http
                .send(
                    method,
                    path,
                    &[
                        ("authorization", auth.as_str()),
                        ("content-type", "application/json"),
                    ],
                    Some(body),
                    lectern_testkit::http::REQUEST_TIMEOUT,
                )
                .await?;
            assert!(r.status >= 400, "{method} {path}: {}", r.text());
            assert_eq!(r.header("x-lectern-error"), None, "{method} {path}");
        }
        still_serving(&demo, "oversized bodies").await?;
        demo.stop().await
    })
    .await
}

/// A join, an SSE stream and a board view each take a token from the same per-user bucket as a
/// command: with a burst of 3 and a negligible refill, the command after those three is
/// refused. Kills: dropping `limiter.command` from the Socket.IO join (`sio::join`), from an
/// SSE open (`sse.rs`) or from `leaderboard_me` (`boards.rs`): the command is then accepted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn joins_streams_and_views_take_a_token_each() -> anyhow::Result<()> {
    within(async {
        // One token in 1,000 s: only the burst decides, however slow the machine.
        let demo = Demo::start_with("rate-kinds", |c| {
            c.limits.command_burst = 3;
            c.limits.commands_per_s = 0.001;
        })
        .await?;
        let s = demo.session.clone();
        let student = demo.token("student1", "student");
        // 1. A join.
        let mut c = demo.sio(Transport::WebSocket, &student, "joiner").await?;
        let ack = c.call("session:join", vec![json!(s)]).await?;
        assert_eq!(ack["ok"], true, "{ack}");
        // 2. A stream.
        let path = format!("/api/stream/sessions/{s}?access_token={student}");
        let stream = match demo.http.sse(&path, &[]).await? {
            Ok(stream) => stream,
            Err(resp) => anyhow::bail!("GET {path}: {} {}", resp.status, resp.text()),
        };
        // 3. A view.
        let view = demo
            .http
            .get(
                &format!("/api/cohorts/{}/leaderboard/me", lectern_node::DEMO_COHORT),
                Some(&student),
            )
            .await?;
        assert_ne!(view.status, 429, "the view had a token: {}", view.text());
        // The bucket is empty: the next command is refused.
        let r = demo
            .command(&student, "chat.send", json!({"text": "a fourth request"}))
            .await?;
        assert_eq!(r.status, 429, "{}", r.text());
        assert_eq!(
            r.error_code().as_deref(),
            Some("rate_limited"),
            "{}",
            r.text()
        );
        drop(stream);
        c.disconnect().await;
        demo.stop().await
    })
    .await
}
