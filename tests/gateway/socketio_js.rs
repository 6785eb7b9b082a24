//! The official JS client (`socket.io-client` from npm, run by Node.js) runs a whole class
//! against an in-process demo node, over the websocket transport (the node's lean transport),
//! over polling, and with the client's default transports (polling upgraded to websocket):
//! `tests/js/class.mjs` drives two students and an instructor and prints one JSON summary,
//! which this module checks field by field.
//!
//! The npm package is installed by `scripts/setup`; without it this test fails (it does not
//! skip), saying so, because a skipped real-client test would hide a broken contract.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{Context, bail};
use serde_json::{Value, json};

use super::{Demo, within};

/// How long the script may run (it has its own 50 s timeout inside).
const SCRIPT_TIMEOUT: Duration = Duration::from_secs(75);

fn js_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("js")
}

/// Runs `class.mjs` against a fresh demo node over `transport`; its summary.
async fn run_class(transport: &str) -> anyhow::Result<Value> {
    let dir = js_dir();
    if !dir
        .join("node_modules/socket.io-client/package.json")
        .is_file()
    {
        bail!(
            "{} has no socket.io-client: run scripts/setup (it runs `npm ci --prefix tests/js`) \
             before the tests",
            dir.join("node_modules").display()
        );
    }
    let demo = Demo::start("sio-js").await?;
    let url = format!("http://{}", demo.node.http_addr);
    let args = [
        dir.join("class.mjs").display().to_string(),
        url,
        demo.session.clone(),
        transport.to_owned(),
        demo.token("student1", "student"),
        demo.token("student2", "student"),
        demo.token("ada", "instructor"),
    ];
    let child = Command::new("node")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("run `node` (Node.js 20 must be on PATH; see scripts/setup)")?;
    let pid = child.id();
    let output = tokio::task::spawn_blocking(move || child.wait_with_output());
    let output = match tokio::time::timeout(SCRIPT_TIMEOUT, output).await {
        Ok(joined) => joined
            .context("join the waiting thread")?
            .context("wait for node")?,
        Err(_) => {
            // The child we spawned, by its id.
            let pid = i32::try_from(pid).context("pid fits an i32")?;
            #[allow(unsafe_code)]
            // SAFETY: kill(2) with a pid we spawned and a valid signal has no memory effects.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
            }
            bail!("class.mjs did not finish within {SCRIPT_TIMEOUT:?}");
        }
    };
    demo.stop().await?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    let line = stdout
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .with_context(|| {
            format!(
                "class.mjs printed no summary (status {}); stdout: {stdout}; stderr: {stderr}",
                output.status
            )
        })?;
    let summary: Value =
        serde_json::from_str(line).with_context(|| format!("parse the summary {line}"))?;
    if !output.status.success() {
        bail!(
            "class.mjs failed ({}): {summary}; stderr: {stderr}",
            output.status
        );
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
