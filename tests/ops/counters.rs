//! The counters behind the weekly checklist move when the thing they count happens, on a real
//! node over real sockets: a resume and a refused resume on each transport (long-poll, SSE, the
//! lean WebSocket and socketioxide's polling, by `session:join` and by Connection State
//! Recovery), document loads from the store after a restart, and content answered `304` or
//! read from the cache. A counter that stays at zero (or a label in the wrong place) fails here.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context;
use lectern_gateway::auth::mint;
use lectern_node::{Config, DEMO_COHORT, DEMO_SESSION};
use lectern_testkit::{Client, Http, Transport};
use serde_json::json;

use crate::gateway::{claims, unix_now_s, within};
use crate::support::TempDir;

/// A resume token no node ever issued: well formed (32 zero bytes), heads nobody has.
fn unknown_token() -> String {
    "A".repeat(43)
}

/// Every sample of a scrape, by its name with labels (`name{a="b"}`).
fn samples(scrape: &str) -> BTreeMap<String, f64> {
    scrape
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (name, value) = l.rsplit_once(' ')?;
            Some((name.to_owned(), value.parse().ok()?))
        })
        .collect()
}

async fn scrape(http: &Http) -> anyhow::Result<BTreeMap<String, f64>> {
    let resp = http.get("/metrics", None).await?;
    anyhow::ensure!(resp.status == 200, "/metrics: {}", resp.status);
    Ok(samples(&resp.text()))
}

/// How much each of `series` went up between two scrapes (a missing series is an error).
fn rises(
    before: &BTreeMap<String, f64>,
    after: &BTreeMap<String, f64>,
    series: &[&str],
) -> anyhow::Result<Vec<f64>> {
    series
        .iter()
        .map(|s| {
            let b = before
                .get(*s)
                .with_context(|| format!("{s} not exported"))?;
            let a = after.get(*s).with_context(|| format!("{s} not exported"))?;
            Ok(a - b)
        })
        .collect()
}

fn demo_config(dir: &TempDir) -> anyhow::Result<Config> {
    Ok(Config {
        data_dir: dir.path().to_path_buf(),
        http: "127.0.0.1:0".parse()?,
        demo: true,
        ..Config::default()
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resumes_refused_resumes_loads_and_content_revalidations_are_counted() {
    within(async {
        let dir = TempDir::new("ops-counters");
        // First life: the demo class is created in memory; nothing is loaded from the store.
        let first = lectern_node::start(demo_config(&dir)?).await?;
        let loads = samples(
            &Http::new(first.http_addr)
                .get("/metrics", None)
                .await?
                .text(),
        )
        .get("lectern_documents_loads_total")
        .copied()
        .context("lectern_documents_loads_total")?;
        assert_eq!(loads, 0.0, "a fresh node loaded documents");
        first.stop().await?;
        // Second life: seeding the demo again finds its documents on disk and loads them.
        let node = lectern_node::start(demo_config(&dir)?).await?;
        let http = Http::new(node.http_addr);
        let start = scrape(&http).await?;
        let loads = start["lectern_documents_loads_total"];
        assert!(
            loads >= 2.0,
            "the cohort and the session were loaded: {loads}"
        );

        let student = mint(
            &node.secret,
            &claims("student1", "student", &[DEMO_COHORT], unix_now_s() + 3600),
        )?;
        let events = format!("/api/sessions/{DEMO_SESSION}/events");
        let first = http.get(&events, Some(&student)).await?.json()?;
        let token = first["token"].as_str().context("a token")?.to_owned();
        let offset = |t: &str| format!("{DEMO_SESSION}~{t}");

        let before = scrape(&http).await?;
        // Long-poll: a poll from a token this node has, one from a token it has not.
        let poll = http
            .get(&format!("{events}?since={token}&wait=0"), Some(&student))
            .await?
            .json()?;
        assert!(poll["events"].is_array(), "{poll}");
        let poll = http
            .get(
                &format!("{events}?since={}&wait=0", unknown_token()),
                Some(&student),
            )
            .await?
            .json()?;
        assert_eq!(poll["resumeRefused"], "unknown_heads", "{poll}");

        // SSE: Last-Event-ID the node has, one it has not, and one that does not parse.
        let stream = format!("/api/stream/sessions/{DEMO_SESSION}");
        let auth = format!("Bearer {student}");
        for id in [token.clone(), unknown_token()] {
            let opened = http
                .sse(&stream, &[("authorization", &auth), ("last-event-id", &id)])
                .await?;
            // The join (and its count) is done before the stream's head is sent.
            let _open =
                opened.map_err(|r| anyhow::anyhow!("SSE refused: {} {}", r.status, r.text()))?;
        }
        let bad = http
            .sse(
                &stream,
                &[("authorization", &auth), ("last-event-id", "not a token")],
            )
            .await?;
        assert_eq!(bad.err().context("refused")?.status, 400);

        // The lean WebSocket: a recovery from a token the node has; one whose offset does not
        // parse (connects afresh).
        let ws = Client::connect(
            node.http_addr,
            Transport::WebSocket,
            json!({"token": student, "pid": "counted-pid", "offset": offset(&token)}),
            "ws recovered",
        )
        .await?;
        ws.disconnect().await;
        let ws = Client::connect(
            node.http_addr,
            Transport::WebSocket,
            json!({"token": student, "pid": "counted-pid", "offset": "no~token~here"}),
            "ws bad offset",
        )
        .await?;
        ws.disconnect().await;
        // Polling (socketioxide): a recovery from a token the node has not; a `session:join`
        // from one it has.
        let polling = Client::connect(
            node.http_addr,
            Transport::Polling,
            json!({"token": student, "pid": "counted-pid", "offset": offset(&unknown_token())}),
            "polling refused",
        )
        .await?;
        polling.disconnect().await;
        let mut polling = Client::connect(
            node.http_addr,
            Transport::Polling,
            json!({"token": student}),
            "polling join",
        )
        .await?;
        let ack = polling
            .call("session:join", vec![json!(DEMO_SESSION), json!(token)])
            .await?;
        assert_eq!(ack["ok"], true, "{ack}");
        assert!(ack["events"].is_array(), "a replay: {ack}");
        polling.disconnect().await;

        // Content: the demo lesson's HTML read twice (disk, then memory), then revalidated.
        let course = http.get("/api/courses/demo-course", None).await?.json()?;
        let html = course["modules"][0]["lessons"][0]["html"]
            .as_str()
            .context("a rendered lesson")?
            .to_owned();
        let path = format!("/content/{html}.html");
        for _ in 0..2 {
            assert_eq!(http.get(&path, None).await?.status, 200);
        }
        let etag = format!("\"{html}\"");
        let revalidated = http
            .send(
                "GET",
                &path,
                &[("if-none-match", &etag)],
                None,
                Duration::from_secs(10),
            )
            .await?;
        assert_eq!(revalidated.status, 304);

        let after = scrape(&http).await?;
        let series = [
            "lectern_resumes_total{transport=\"longpoll\"}",
            "lectern_resumes_refused_total{transport=\"longpoll\",reason=\"unknown_heads\"}",
            "lectern_resumes_total{transport=\"sse\"}",
            "lectern_resumes_refused_total{transport=\"sse\",reason=\"unknown_heads\"}",
            "lectern_resumes_refused_total{transport=\"sse\",reason=\"bad_token\"}",
            "lectern_resumes_total{transport=\"websocket\"}",
            "lectern_resumes_refused_total{transport=\"websocket\",reason=\"bad_token\"}",
            "lectern_resumes_refused_total{transport=\"socketio\",reason=\"unknown_heads\"}",
            "lectern_resumes_total{transport=\"socketio\"}",
            "lectern_reconnects_total{transport=\"longpoll\"}",
            "lectern_reconnects_total{transport=\"sse\"}",
            "lectern_reconnects_total{transport=\"websocket\"}",
            "lectern_reconnects_total{transport=\"socketio\"}",
            "lectern_content_not_modified_total",
        ];
        let got = rises(&before, &after, &series)?;
        let want = [
            1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 2.0, 3.0, 2.0, 2.0, 1.0,
        ];
        let wrong: Vec<String> = series
            .iter()
            .zip(got.iter().zip(want))
            .filter(|(_, (g, w))| *g != w)
            .map(|(s, (g, w))| format!("{s}: +{g}, expected +{w}"))
            .collect();
        assert!(wrong.is_empty(), "{wrong:#?}");
        // Two reads: the first from disk or from the cache seeding filled, the second from the
        // cache.
        let reads = rises(
            &before,
            &after,
            &[
                "lectern_content_reads_total{from=\"disk\"}",
                "lectern_content_reads_total{from=\"memory\"}",
            ],
        )?;
        assert!(
            reads[0] + reads[1] == 2.0 && reads[1] >= 1.0,
            "content reads (disk, memory): {reads:?}"
        );
        // Nothing else was refused, and no refusal went to a reason it does not have.
        let refused_total = |m: &BTreeMap<String, f64>| -> f64 {
            m.iter()
                .filter(|(k, _)| k.starts_with("lectern_resumes_refused_total"))
                .map(|(_, v)| v)
                .sum()
        };
        assert_eq!(refused_total(&after) - refused_total(&before), 5.0);
        node.stop().await
    })
    .await
    .unwrap();
}
