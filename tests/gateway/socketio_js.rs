//! The official JS client (`socket.io-client` from npm, run by Node.js) runs a whole class
//! against an in-process demo node, over the websocket transport (the node's lean transport),
//! over polling, and with the client's default transports (polling upgraded to websocket):
//! `tests/js/class.mjs` drives two students and an instructor and prints one JSON summary,
//! which this module checks field by field.
//!
//! The npm package is installed by `scripts/setup`; without it this test fails (it does not
//! skip), saying so, because a skipped real-client test would hide a broken contract.

use std::time::Duration;

use anyhow::bail;
use serde_json::{Value, json};

use super::{Demo, within};
use crate::support::run_js;

/// How long the script may run (it has its own 50 s timeout inside).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(75);

/// Runs `class.mjs` against a fresh demo node over `transport`; its summary.
async fn run_class(transport: &str) -> anyhow::Result<Value> {
    let demo = Demo::start("sio-js").await?;
    let args = [
        format!("http://{}", demo.node.http_addr),
        demo.session.clone(),
        transport.to_owned(),
        demo.token("student1", "student"),
        demo.token("student2", "student"),
        demo.token("ada", "instructor"),
    ];
    let ran = run_js("class.mjs", &args, &[], SCRIPT_TIMEOUT).await;
    demo.stop().await?;
    let (summary, ok) = ran?;
    if !ok {
        bail!("class.mjs failed: {summary}");
    }
    Ok(summary)
}

/// What a correct node makes the script print when run with `transport`: the transport the
/// clients end on, and the node's transport serving them (a client that opens on WebSocket gets
/// the lean transport; polling, and polling upgraded to WebSocket, stay on socketioxide).
fn expected(transport: &str) -> Value {
    let q = "How do I...?";
    let (ends_on, connections) = match transport {
        "websocket" => ("websocket", json!({"websocket": 3, "socketio": 0})),
        "polling" => ("polling", json!({"websocket": 0, "socketio": 3})),
        _ => ("websocket", json!({"websocket": 0, "socketio": 3})),
    };
    json!({
        "transport": ends_on,
        "connections": connections,
        "joined": [true, true, true],
        "joinToken": true,
        "ask": true,
        "qaNewText": [q, q, q],
        "qaNewHasToken": true,
        "upvoteAcks": [true, true, true],
        // The second upvote by the same student is acknowledged but counted once.
        "upvoteCounts": [1, 1, 2],
        "answer": true,
        "answerText": "Like this.",
        "pollCreate": true,
        "votes": [true, true],
        // Hidden results reach staff only until the reveal.
        "studentSawHiddenResults": false,
        "close": true,
        "lateVote": "poll_closed",
        "reveal": true,
        "revealedCounts": [1, 1],
        "badTypes": "bad_request",
        "unknownEvent": "unknown_event",
        "forbidden": "forbidden",
        "tooLong": "text_too_long",
        "stillServing": true,
        "rejoin": "already_joined",
    })
}

/// Compares field by field first, so a failure names the field.
fn check(summary: &Value, transport: &str) {
    let want = expected(transport);
    let (Some(got), Some(want_map)) = (summary.as_object(), want.as_object()) else {
        panic!("the summary is not an object: {summary}");
    };
    for (field, value) in want_map {
        assert_eq!(got.get(field), Some(value), "field {field} of {summary}");
    }
    assert_eq!(
        summary, &want,
        "the summary has fields the test does not know"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_client_runs_a_class_over_websocket() -> anyhow::Result<()> {
    let summary = within(run_class("websocket")).await?;
    check(&summary, "websocket");
    Ok(())
}

/// socket.io-client's default: it opens on polling and upgrades to WebSocket (socketioxide's
/// upgrade path, not the lean transport).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_client_runs_a_class_with_default_transports_upgrading() -> anyhow::Result<()> {
    let summary = within(run_class("default")).await?;
    check(&summary, "default");
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn official_js_client_runs_a_class_over_polling() -> anyhow::Result<()> {
    let summary = within(run_class("polling")).await?;
    check(&summary, "polling");
    Ok(())
}
