//! Server-sent events with a real HTTP client (hyper's, through lectern-testkit): a session
//! stream opened with `?access_token=` starts with `event: state`, then carries the events of
//! commands posted over REST, each with `id:` = the resume token the REST ack returned; a client
//! that drops mid-class and reconnects with `Last-Event-ID` gets exactly the events it missed:
//! none lost, none duplicated, none extra. Keep-alive comments flow. The progress stream of a
//! student gets the `progress` events an instructor posts for them, and only theirs; a student
//! may not open a classmate's. A stream ends with `token_expired` when its token does.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use anyhow::{Context, ensure};
use lectern_gateway::{AuthConfig, Gateway, GatewayConfig};
use lectern_hub::{Hub, HubConfig};
use lectern_testkit::{Http, SseEvent, SseItem, SseStream};
use serde_json::{Value, json};

use super::{Demo, claims, unix_now_s, within};
use crate::support::TempDir;

/// How long a test waits for one event on a stream.
const EVENT_WAIT: Duration = Duration::from_secs(10);

async fn open(http: &Http, path: &str, headers: &[(&str, &str)]) -> anyhow::Result<SseStream> {
    match http.sse(path, headers).await? {
        Ok(s) => Ok(s),
        Err(resp) => anyhow::bail!("GET {path}: {} {}", resp.status, resp.text()),
    }
}

/// Posts `(name, id, body)` commands; their acks' tokens, in order.
async fn post_all(
    demo: &Demo,
    token: &str,
    cmds: &[(&str, &str, Value)],
) -> anyhow::Result<Vec<String>> {
    let mut tokens = Vec::new();
    for (name, id, body) in cmds {
        let mut body = body.clone();
        body["id"] = json!(id);
        let ack = demo.command_ok(token, name, body).await?;
        ensure!(ack["id"] == *id, "ack of {id}: {ack}");
        tokens.push(ack["token"].as_str().context("ack token")?.to_owned());
    }
    Ok(tokens)
}

/// Reads `n` events; each must be named `names[i]`, carry `id:` = `tokens[i]` and be about
/// command `ids[i]`.
async fn expect_events(
    stream: &mut SseStream,
    names: &[&str],
    ids: &[&str],
    tokens: &[String],
) -> anyhow::Result<Vec<SseEvent>> {
    let mut got = Vec::new();
    for ((name, id), token) in names.iter().zip(ids).zip(tokens) {
        let e = stream.next_event(EVENT_WAIT).await?;
        assert_eq!(
            (e.event.as_str(), e.id.as_deref()),
            (*name, Some(token.as_str())),
            "event for command {id}: {e:?}"
        );
        assert_eq!(e.json()?["id"], *id, "payload of {id}: {e:?}");
        got.push(e);
    }
    Ok(got)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_resume_with_last_event_id_loses_and_duplicates_nothing() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("sse-resume").await?;
        let student = demo.token("student1", "student");
        let other = demo.token("student2", "student");
        let inst = demo.token("ada", "instructor");
        let path = format!(
            "/api/stream/sessions/{}?access_token={student}",
            demo.session
        );

        let mut stream = open(&demo.http, &path, &[]).await?;
        let state = stream.next_event(EVENT_WAIT).await?;
        assert_eq!(state.event, "state");
        let data = state.json()?;
        assert!(data["state"].is_object(), "{data}");
        assert!(data["resumeRefused"].is_null(), "{data}");
        let start = state.id.clone().context("the state event has an id")?;
        assert_eq!(
            Some(start.as_str()),
            demo.session_view().await?["token"].as_str(),
            "the state's id is the session's current token"
        );

        // Live: three commands by others, over REST.
        let before: [(&str, &str, Value); 3] = [
            ("qa.ask", "sse-q1", json!({"text": "first"})),
            ("chat.send", "sse-c1", json!({"text": "hi"})),
            ("broadcast.send", "sse-b1", json!({"text": "listen"})),
        ];
        let by: [&str; 3] = [&other, &other, &inst];
        let mut tokens = Vec::new();
        for (cmd, who) in before.iter().zip(by) {
            tokens.extend(post_all(&demo, who, std::slice::from_ref(cmd)).await?);
        }
        let names = ["qa:new", "chat:message", "broadcast"];
        let seen = expect_events(
            &mut stream,
            &names,
            &["sse-q1", "sse-c1", "sse-b1"],
            &tokens,
        )
        .await?;
        let last = seen.last().and_then(|e| e.id.clone()).context("last id")?;

        // Drop mid-class; the class goes on.
        drop(stream);
        let missed: [(&str, &str, Value); 3] = [
            ("qa.ask", "sse-q2", json!({"text": "second"})),
            ("qa.upvote", "sse-u2", json!({"question": "sse-q1"})),
            ("chat.send", "sse-c2", json!({"text": "are you there?"})),
        ];
        let missed_tokens = post_all(&demo, &other, &missed).await?;

        // Reconnect with Last-Event-ID: exactly the three missed events, then live again.
        let mut stream = open(&demo.http, &path, &[("last-event-id", &last)]).await?;
        let missed_names = ["qa:new", "qa:upvoted", "chat:message"];
        for (name, token) in missed_names.iter().zip(&missed_tokens) {
            let e = stream.next_event(EVENT_WAIT).await?;
            assert_eq!(
                (e.event.as_str(), e.id.as_deref()),
                (*name, Some(token.as_str())),
                "a missed event: {e:?}"
            );
        }
        let marker = post_all(
            &demo,
            &other,
            &[("chat.send", "sse-c3", json!({"text": "marker"}))],
        )
        .await?;
        let next = stream.next_event(EVENT_WAIT).await?;
        assert_eq!(
            (next.event.as_str(), next.id.as_deref()),
            ("chat:message", Some(marker[0].as_str())),
            "after the replay comes the next live event, nothing in between"
        );
        drop(stream);

        // A token this node never issued: a fresh state, saying why.
        let unknown = "A".repeat(43);
        let mut stream = open(&demo.http, &path, &[("last-event-id", &unknown)]).await?;
        let e = stream.next_event(EVENT_WAIT).await?;
        assert_eq!(e.event, "state");
        assert_eq!(e.json()?["resumeRefused"], "unknown_heads");
        drop(stream);
        // A malformed one is a client error.
        let resp = demo
            .http
            .sse(&path, &[("last-event-id", "not a token")])
            .await?;
        let resp = resp.err().context("a malformed Last-Event-ID is refused")?;
        assert_eq!(
            (resp.status, resp.error_code().as_deref()),
            (400, Some("bad_token"))
        );
        demo.stop().await
    })
    .await
}

/// A gateway with a 1 s keep-alive (the node's configuration keeps the 15 s default), in front
/// of a hub with the demo class; what stops it.
struct ShortKeepalive {
    addr: SocketAddr,
    secret: Vec<u8>,
    gateway: Gateway,
    hub: Hub,
    server: tokio::task::JoinHandle<std::io::Result<()>>,
    _dir: TempDir,
}

impl ShortKeepalive {
    async fn start() -> anyhow::Result<ShortKeepalive> {
        let dir = TempDir::new("sse-keepalive");
        let path = dir.path().to_path_buf();
        let store =
            tokio::task::spawn_blocking(move || lectern_store::Store::open(&path)).await??;
        let hub = Hub::new(store, HubConfig::default());
        lectern_node::seed_demo(&hub).await?;
        let secret = b"keepalive-test-secret-0123456789".to_vec();
        let mut config = GatewayConfig::new(AuthConfig {
            hs256_secret: secret.clone(),
            ..AuthConfig::default()
        });
        config.keepalive_s = 1;
        let (gateway, router) =
            Gateway::new(hub.clone(), config).map_err(|e| anyhow::anyhow!("{e}"))?;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let server = tokio::spawn(async move { axum::serve(listener, router).await });
        Ok(ShortKeepalive {
            addr,
            secret,
            gateway,
            hub,
            server,
            _dir: dir,
        })
    }

    async fn stop(self) -> anyhow::Result<()> {
        self.gateway.shutdown().await;
        self.server.abort();
        self.hub.shutdown().await?;
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sse_sends_keepalive_comments() -> anyhow::Result<()> {
    within(async {
        let node = ShortKeepalive::start().await?;
        let c = claims(
            "student1",
            "student",
            &[lectern_node::DEMO_COHORT],
            unix_now_s() + 600,
        );
        let token = lectern_gateway::auth::mint(&node.secret, &c)?;
        let http = Http::new(node.addr);
        let path = format!("/api/stream/sessions/{}", lectern_node::DEMO_SESSION);
        let auth = format!("Bearer {token}");
        // The token by header this time.
        let mut stream = open(&http, &path, &[("authorization", &auth)]).await?;
        assert_eq!(stream.next_event(EVENT_WAIT).await?.event, "state");
        // An idle stream: two keep-alive comments, each within a few keep-alive intervals.
        let started = Instant::now();
        let mut comments = 0;
        while comments < 2 {
            match stream.next_item(Duration::from_secs(5)).await? {
                Some(SseItem::Comment(_)) => comments += 1,
                Some(SseItem::Event(e)) => anyhow::bail!("an idle stream sent an event: {e:?}"),
                None => anyhow::bail!("the stream ended"),
            }
        }
        assert!(
            started.elapsed() < Duration::from_secs(8),
            "{:?}",
            started.elapsed()
        );
        drop(stream);
        node.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn progress_stream_carries_a_students_own_progress_only() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("sse-progress").await?;
        let student = demo.token("student1", "student");
        let classmate = demo.token("student2", "student");
        let inst = demo.token("ada", "instructor");

        // The path a plain `new EventSource('/api/stream/progress/' + id)` opens.
        let path = format!("/api/stream/progress/student1?access_token={student}");
        let mut stream = open(&demo.http, &path, &[]).await?;
        let state = stream.next_event(EVENT_WAIT).await?;
        assert_eq!(state.event, "state");

        let post = |student: &str, lesson: &str, score: u32| {
            let body = json!({"student": student, "lesson": lesson, "status": "completed", "score": score, "maxScore": 10});
            let http = demo.http;
            let inst = inst.clone();
            async move {
                let resp = http.post_json("/api/progress", Some(&inst), &body).await?;
                ensure!(resp.status == 200, "POST /api/progress: {} {}", resp.status, resp.text());
                let ack = resp.json()?;
                anyhow::Ok(ack["token"].as_str().context("ack token")?.to_owned())
            }
        };
        let t1 = post("student1", "lesson-1", 8).await?;
        let e = stream.next_event(EVENT_WAIT).await?;
        assert_eq!((e.event.as_str(), e.id.as_deref()), ("progress", Some(t1.as_str())));
        let p = e.json()?;
        assert_eq!(p["student"], "student1", "{p}");
        assert_eq!(p["lesson"], "lesson-1", "{p}");
        assert_eq!(p["score"], 8, "{p}");
        // The same update unnamed, for a plain EventSource's `onmessage` (which never sees
        // named events), with the same id.
        let m = stream.next_event(EVENT_WAIT).await?;
        assert_eq!((m.event.as_str(), m.id.as_deref()), ("message", Some(t1.as_str())));
        assert_eq!(m.json()?, p);

        // A classmate's progress does not reach this stream: the next event is student1's.
        post("student2", "lesson-1", 3).await?;
        let t3 = post("student1", "lesson-2", 9).await?;
        let e = stream.next_event(EVENT_WAIT).await?;
        assert_eq!((e.event.as_str(), e.id.as_deref()), ("progress", Some(t3.as_str())), "{e:?}");
        let m = stream.next_event(EVENT_WAIT).await?;
        assert_eq!((m.event.as_str(), m.id.as_deref()), ("message", Some(t3.as_str())), "{m:?}");

        // A student may not follow a classmate's progress; the instructor may.
        let resp = demo
            .http
            .sse(&format!("/api/stream/progress/student1?access_token={classmate}"), &[])
            .await?
            .err()
            .context("a classmate's progress stream is refused")?;
        assert_eq!((resp.status, resp.error_code().as_deref()), (403, Some("forbidden")));
        let mut staff = open(&demo.http, &format!("/api/stream/progress/student2?access_token={inst}"), &[]).await?;
        assert_eq!(staff.next_event(EVENT_WAIT).await?.event, "state");
        drop(staff);
        drop(stream);
        demo.stop().await
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_ends_with_token_expired_when_its_token_expires() -> anyhow::Result<()> {
    within(async {
        let demo = Demo::start("sse-expiry").await?;
        // Valid now (expiry is checked with leeway at the handshake), over in two seconds.
        let token = demo.mint(&claims(
            "student1",
            "student",
            &["demo-cohort"],
            unix_now_s() + 2,
        ));
        let path = format!("/api/stream/sessions/{}?access_token={token}", demo.session);
        let mut stream = open(&demo.http, &path, &[]).await?;
        let first = stream.next_event(EVENT_WAIT).await?;
        assert_eq!(first.event, "state");
        let started = Instant::now();
        let last = stream.next_event(EVENT_WAIT).await?;
        assert_eq!(last.event, "error", "{last:?}");
        assert_eq!(last.json()?["code"], "token_expired");
        // Two seconds after the mint at most, plus a loaded machine's slack; nothing else
        // would end it (keep-alives every 15 s, the stream otherwise open for good).
        assert!(
            started.elapsed() <= Duration::from_secs(10),
            "ended late: {:?}",
            started.elapsed()
        );
        // And the stream is over.
        assert!(
            stream.next_item(EVENT_WAIT).await?.is_none(),
            "the stream went on"
        );
        demo.stop().await
    })
    .await
}

/// How long `eventsource.mjs` may run (it has its own 60 s timeout inside).
const BROWSER_SCRIPT_TIMEOUT: Duration = Duration::from_secs(80);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plain_browser_eventsource_receives_progress_through_onmessage() -> anyhow::Result<()> {
    within(async {
        let js = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("js");
        ensure!(
            js.join("node_modules/playwright-core/package.json")
                .is_file(),
            "{} has no playwright-core: run scripts/setup before the tests",
            js.display()
        );
        let demo = Demo::start("sse-eventsource").await?;
        let args = [
            js.join("eventsource.mjs").display().to_string(),
            format!("http://{}", demo.node.http_addr),
            "student1".to_owned(),
            demo.token("student1", "student"),
            demo.token("ada", "instructor"),
            lectern_node::DEMO_COHORT.to_owned(),
        ];
        let run = tokio::task::spawn_blocking(move || {
            std::process::Command::new("node")
                .args(&args)
                .stdin(std::process::Stdio::null())
                .output()
        });
        let output = tokio::time::timeout(BROWSER_SCRIPT_TIMEOUT, run)
            .await
            .context("eventsource.mjs did not finish")???;
        let stdout = String::from_utf8_lossy(&output.stdout);
        let stderr = String::from_utf8_lossy(&output.stderr);
        let summary = stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .find_map(|v| v.get("summary").cloned())
            .with_context(|| format!("no summary; stderr:\n{stderr}"))?;
        ensure!(
            output.status.success() && summary.get("error").is_none(),
            "eventsource.mjs failed: {summary:#}\nstderr:\n{stderr}"
        );
        // Each update, once, in order, with its resume token as the event id.
        let posted: Vec<(Value, Value)> = summary["posted"]
            .as_array()
            .context("posted")?
            .iter()
            .map(|p| (p["lesson"].clone(), p["token"].clone()))
            .collect();
        let received: Vec<(Value, Value)> = summary["received"]
            .as_array()
            .context("received")?
            .iter()
            .map(|m| {
                assert_eq!(m["student"], "student1", "{m}");
                (m["lesson"].clone(), m["id"].clone())
            })
            .collect();
        assert_eq!(posted.len(), 3, "{summary}");
        assert_eq!(received, posted, "{summary}");
        demo.stop().await
    })
    .await
}
